"""scripts/demo.py in a real browser (headless Chromium driven by Playwright):
upload a real frame from the repository, wait for the result, and check what
the page shows and serves against `predict_depth` on the same image; a bad
upload gets a message on the page; the GLB of the 3D view holds the depth
map's surface.

Chromium comes from the system (Debian: apt-get install chromium); `.ci/run`
installs it and sets PERCDEPTH_REQUIRE_BROWSER=1, so there a missing browser
fails the test instead of skipping it."""

import base64
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

import percdepth_jax
from percdepth_jax import depth_outputs
from percdepth_jax.data.camera import nyu_intrinsics
from tests.helpers import REPO, block_import, env, save_toy_model

FRAME = REPO / "docs" / "images" / "predict" / "nyu_rgb.jpg"


def _chromium() -> str:
  for name in ("chromium", "chromium-browser", "google-chrome"):
    path = shutil.which(name)
    if path:
      return path
  message = "no Chromium on this machine (Debian/Ubuntu: apt-get install chromium)"
  if os.environ.get("PERCDEPTH_REQUIRE_BROWSER"):
    pytest.fail(message)
  pytest.skip(message)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  """The demo on a toy model, started as a user starts it."""
  checkpoint = save_toy_model(tmp_path_factory.mktemp("demo") / "toy")
  port = _free_port()
  log = tmp_path_factory.mktemp("demo_log") / "demo.log"
  with open(log, "w") as out:
    process = subprocess.Popen(
        [sys.executable, "scripts/demo.py", "--checkpoint", str(checkpoint), "--port", str(port)],
        cwd=REPO, env=env(), stdout=out, stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{port}"
  deadline = time.time() + 180
  while True:
    try:
      urllib.request.urlopen(url, timeout=5)
      break
    except OSError:
      if process.poll() is not None or time.time() > deadline:
        process.kill()
        pytest.fail(f"the demo did not start:\n{log.read_text()}")
      time.sleep(1)
  yield url, checkpoint, log
  process.terminate()
  process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
  from playwright.sync_api import sync_playwright
  executable = _chromium()
  with sync_playwright() as playwright:
    browser = playwright.chromium.launch(
        executable_path=executable,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run"])
    yield browser
    browser.close()


@pytest.fixture
def page(server, browser):
  """A fresh page of the demo (a new visitor)."""
  page = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
  page.console = []
  page.on("console", lambda message: page.console.append(f"{message.type}: {message.text}"))
  page.server_log = server[2]
  page.goto(server[0], wait_until="networkidle", timeout=120_000)
  page.wait_for_selector("#estimate")
  yield page
  page.close()


def _estimate(page, path, attempts=4):
  """Uploads `path` and starts the estimate."""
  _upload(page, path, attempts)
  page.click("#estimate")


def _upload(page, path, attempts=4):
  """Uploads `path`. On a loaded machine a file set before the page's
  scripts listen leaves the file box empty, and an upload can take a while
  (the box then shows its progress and has no file input); a user would
  wait, or drop the file again if the box is empty, and so does this."""
  from playwright.sync_api import TimeoutError as PlaywrightTimeout
  file_input = page.locator("#photo input[type=file]")
  # The uploaded file's row: its download link (the name itself is drawn as
  # separate stem and extension spans, which a text match does not see).
  file_shown = page.locator(f'#photo a[download="{path.name}"]')
  for _ in range(attempts):
    if file_input.count():
      file_input.set_input_files(str(path))
    try:
      file_shown.wait_for(timeout=60_000)
      break
    except PlaywrightTimeout:
      continue
  else:
    pytest.fail(f"the page never showed the uploaded {path.name}; browser console:\n"
                + "\n".join(page.console) + f"\ndemo log:\n{page.server_log.read_text()}")


def test_upload_shows_and_serves_predict_depths_result(server, page, tmp_path):
  """The page names the model; after uploading the real frame it shows the
  colour map of `predict_depth` on that image, the hover readout gives the
  depth of the pixel under the pointer to the millimetre, the .npy download equals
  `predict_depth`'s array, and the 3D view draws. A screenshot is saved."""
  _, checkpoint, _ = server
  model = percdepth_jax.load_model(checkpoint)
  image = np.asarray(Image.open(FRAME).convert("RGB"))
  expected = percdepth_jax.predict_depth(model, image[None])[0]

  assert "densenet_tiny encoder" in page.inner_text("body")
  _estimate(page, FRAME)
  shown = page.locator("#depth-view img.depth-map")
  shown.wait_for(timeout=180_000)
  assert "640x480 pixels" in page.inner_text("#status")

  src = shown.get_attribute("src")
  colour = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))
  with page.expect_download() as download:
    page.locator('#downloads a[href$="nyu_rgb.npy"]').click()
  served = np.load(download.value.path())
  np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(colour, depth_outputs.colorize(served))

  box = shown.bounding_box()
  canvas_width = colour.shape[1]
  for u, v in ((100, 50), (600, 400)):
    page.mouse.move(box["x"] + (u + 0.5) * box["width"] / canvas_width,
                    box["y"] + (v + 0.5) * box["height"] / 480)
    # The pointer lands on whole CSS pixels (~2 image pixels each here):
    # the readout names the pixel it read, next to the one aimed at.
    readout = page.inner_text("#depth-view .depth-readout")
    metres, pixel = readout.split(" m at pixel ")
    read_u, read_v = (int(c) for c in pixel.strip("()").split(", "))
    assert abs(read_u - u) <= 2 and abs(read_v - v) <= 2, readout
    assert metres == f"{round(served[read_v, read_u] * 1000) / 1000:.3f}", readout

  assert page.locator("#mesh canvas").count() == 1
  page.wait_for_timeout(1000)  # let the 3D view draw before the picture
  page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
  assert Image.open(tmp_path / "demo.png").size[0] == 1400


def test_bad_upload_gets_a_message_on_the_page(page, tmp_path):
  """A file that is not an image gets a message naming it, not a traceback."""
  bad = tmp_path / "holiday.jpg"
  bad.write_bytes(b"not a picture at all")
  _estimate(page, bad)
  page.wait_for_selector("#status :text('Could not use this photo')", timeout=60_000)
  status = page.inner_text("#status")
  assert "holiday.jpg" in status and "cannot decode" in status
  assert "Traceback" not in page.inner_text("body")


def test_two_uploads_at_once_both_get_results(server, browser, tmp_path):
  """Two visitors start an estimate at the same moment: the page states
  that one photo is processed at a time, the later request shows its place
  in the queue while the first runs (Gradio's "queue: 1/1"), and both get
  their own result (each status names its photo's size)."""
  from percdepth_jax import demo
  big = tmp_path / "big.png"  # a size nothing compiled yet: the first request runs for seconds
  Image.open(FRAME).convert("RGB").resize((1184, 888)).save(big)
  small = REPO / "docs" / "images" / "predict" / "synthetic_rgb.png"
  pages = []
  for path in (big, small):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.console, page.server_log = [], server[2]
    page.goto(server[0], wait_until="networkidle", timeout=120_000)
    page.wait_for_selector("#estimate")
    _upload(page, path)
    pages.append(page)
  assert demo.BUSY_NOTE in pages[0].inner_text("#about")
  for page in pages:
    page.click("#estimate")
  queued, deadline = False, time.time() + 180
  while not all(page.locator("#depth-view img.depth-map").count() for page in pages):
    assert time.time() < deadline, [page.inner_text("body") for page in pages]
    queued = queued or any("queue: 1/1" in page.inner_text("body") for page in pages)
    time.sleep(0.05)
  assert queued
  assert "1184x888 pixels" in pages[0].inner_text("#status")
  width, height = Image.open(small).size
  assert f"{width}x{height} pixels" in pages[1].inner_text("#status")
  for page in pages:
    page.close()


def test_oversized_upload_is_refused_by_the_page(page, tmp_path):
  """A file over the demo's upload limit (40 MB) is refused in the browser
  with Gradio's message naming it; nothing is estimated."""
  from percdepth_jax import demo
  assert demo.MAX_FILE_SIZE == "40mb"
  huge = tmp_path / "huge.jpg"
  huge.write_bytes(b"\xff\xd8" + bytes(41 * 2**20))
  page.locator("#photo input[type=file]").set_input_files(str(huge))
  page.wait_for_selector("text=exceed the maximum allowed size", timeout=60_000)
  assert "huge.jpg" in page.inner_text("body")
  assert page.locator('#photo a[download="huge.jpg"]').count() == 0


def _read_glb(path):
  """Positions, colours and triangles of a GLB, read by the glTF 2.0 layout."""
  data = path.read_bytes()
  magic, version, length = struct.unpack_from("<4sII", data, 0)
  assert (magic, version, length) == (b"glTF", 2, len(data))
  json_length, kind = struct.unpack_from("<I4s", data, 12)
  assert kind == b"JSON"
  gltf = json.loads(data[20:20 + json_length])
  bin_length, kind = struct.unpack_from("<I4s", data, 20 + json_length)
  assert kind == b"BIN\0"
  binary = data[28 + json_length:28 + json_length + bin_length]
  dtypes = {5126: np.float32, 5125: np.uint32}
  widths = {"VEC3": 3, "SCALAR": 1}

  def accessor(i):
    a = gltf["accessors"][i]
    view = gltf["bufferViews"][a["bufferView"]]
    array = np.frombuffer(binary, dtypes[a["componentType"]], a["count"] * widths[a["type"]],
                          view["byteOffset"])
    return array.reshape(a["count"], -1) if a["type"] != "SCALAR" else array

  primitive = gltf["meshes"][0]["primitives"][0]
  return (accessor(primitive["attributes"]["POSITION"]),
          accessor(primitive["attributes"]["COLOR_0"]),
          accessor(primitive["indices"]).reshape(-1, 3))


def test_glb_holds_the_depth_surface(tmp_path):
  """The 3D view's GLB: vertices are the camera-frame points of every pixel
  (glTF axes: y up, z towards the viewer), colours the pixels' in linear
  light, and no triangle spans a depth jump (a plane of 2 m next to one of
  4 m: the cells across the step stay open)."""
  depth = np.full((12, 16), 2.0, np.float32)
  depth[:, 8:] = 4.0
  rgb = np.random.RandomState(0).randint(0, 256, (12, 16, 3)).astype(np.uint8)
  k = tuple(float(v) for v in nyu_intrinsics(12, 16))
  depth_outputs.write_glb(tmp_path / "x.glb", depth, rgb, k)
  positions, colours, triangles = _read_glb(tmp_path / "x.glb")
  fx, fy, cx, cy = k
  v, u = np.mgrid[0:12, 0:16]
  expected = np.stack([(u - cx) * depth / fx, -(v - cy) * depth / fy, -depth], -1)
  np.testing.assert_allclose(positions, expected.reshape(-1, 3), rtol=1e-6)
  srgb = rgb.reshape(-1, 3) / 255.0
  linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
  np.testing.assert_allclose(colours, linear, rtol=1e-6)
  # 11 rows x 15 columns of cells, minus the column across the step, 2 each.
  assert len(triangles) == 2 * 11 * 14
  z = positions[:, 2][triangles]
  assert np.all(z.max(axis=1) == z.min(axis=1))


def test_bad_start_exits_2_with_a_message(tmp_path, capsys, monkeypatch):
  """A checkpoint that does not exist, and a machine without Gradio: exit 2
  with a line naming the problem (and the extra to install)."""
  from percdepth_jax.commands import demo
  assert demo.main(["--checkpoint", str(tmp_path / "nothing")]) == 2
  err = capsys.readouterr().err
  assert "does not exist" in err and "Traceback" not in err
  block_import(monkeypatch, "gradio")
  assert demo.main(["--checkpoint", str(tmp_path / "nothing")]) == 2
  assert '.[demo]' in capsys.readouterr().err
