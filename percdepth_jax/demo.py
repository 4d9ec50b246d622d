"""The browser demo: a photo in, depth out (colour map with a hover readout
in metres, a 3D view, the files predict.py writes).

It runs what scripts/predict.py runs (`read_photo`, `predict_depth` with flip
averaging, `depth_outputs.write_prediction`); Gradio (the `demo` extra) only
draws the page. `scripts/demo.py` starts it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import pathlib
import tempfile
from typing import Any

import numpy as np
from PIL import Image

from percdepth_jax import depth_outputs, model_io, storage
from percdepth_jax.data.camera import parse_intrinsics
from percdepth_jax.data.photos import PHOTO_SUFFIXES, read_photo
from percdepth_jax.errors import UserInputError
from percdepth_jax.inference import TRAIN, Resolution, predict_depth, run_size

DEMO_EXTRA_HINT = 'pip install -e ".[demo]"'
# One prediction at a time: it already uses every core (two would share
# them and hold two photos' buffers); the others wait in a queue this long.
CONCURRENCY = 1
QUEUE_SIZE = 8
# Uploads larger than this are refused by the page before they are sent (a
# 48 MP JPEG is 10-25 MB); decoding has its own pixel cap (decode.MAX_PIXELS).
MAX_FILE_SIZE = "40mb"
BUSY_NOTE = (f"One photo is processed at a time; up to {QUEUE_SIZE} more wait in line, "
             "and the status shows your place while you wait. When the line is full, "
             "try again in a minute.")

# Runs once per page load on the depth view's element: the readout follows
# the pointer over the picture part of the colour map, reading the depth in
# millimetres shipped with the image (uint16, little-endian, base64).
_HOVER_JS = """
element.addEventListener('mousemove', (event) => {
  const img = event.target.closest('img.depth-map');
  const out = element.querySelector('.depth-readout');
  if (!img || !out) return;
  const width = +img.dataset.width, height = +img.dataset.height;
  const rect = img.getBoundingClientRect();
  const u = Math.floor((event.clientX - rect.left) / rect.width * +img.dataset.canvasWidth);
  const v = Math.floor((event.clientY - rect.top) / rect.height * height);
  if (u < 0 || u >= width || v < 0 || v >= height) { out.textContent = out.dataset.idle; return; }
  if (!img._mm) {
    const bytes = Uint8Array.from(atob(img.dataset.depthMm), (c) => c.charCodeAt(0));
    img._mm = new Uint16Array(bytes.buffer);
  }
  out.textContent = `${(img._mm[v * width + u] / 1000).toFixed(3)} m at pixel (${u}, ${v})`;
});
"""
_IDLE = "Hover over the depth map to read the depth in metres."


def describe(checkpoint: str) -> str:
  """Markdown: which model is loaded and what it was trained on."""
  directory, which = storage.split_checkpoint_spec(checkpoint)
  meta = storage.read_model_json(directory)
  config = meta["config"]
  lines = [f"**Model** `{checkpoint}`: {config.get('encoder')} encoder, decoder width "
           f"{config.get('decoder_width')}, target {config.get('target')}."]
  run = directory / storage.CONFIG_JSON
  if run.is_file():
    recorded = json.loads(run.read_text())
    data = recorded.get("data", {})
    lines.append(f"Trained here ({which} checkpoint) on `{data.get('train')}` at "
                 f"{data.get('height')}x{data.get('width')}, {recorded.get('num_steps')} "
                 f"steps; evaluated on `{data.get('eval')}`.")
  elif meta.get("source"):
    source = meta["source"]
    lines.append(f"Converted from `{source.get('file')}` ({source.get('format')} weights).")
  return "  \n".join(lines)


def depth_view_html(depth_m_HxW: np.ndarray, colour_HxWx3: np.ndarray) -> str:
  """The colour map (with its bar) and the hover readout."""
  height, width = depth_m_HxW.shape
  png = io.BytesIO()
  Image.fromarray(colour_HxWx3).save(png, format="PNG")
  mm = np.clip(np.round(np.nan_to_num(depth_m_HxW) * 1000.0), 0, 65535).astype("<u2")
  return (
      f'<img class="depth-map" alt="depth map" style="width:100%;cursor:crosshair" '
      f'src="data:image/png;base64,{base64.b64encode(png.getvalue()).decode()}" '
      f'data-width="{width}" data-height="{height}" data-canvas-width="{colour_HxWx3.shape[1]}" '
      f'data-depth-mm="{base64.b64encode(mm.tobytes()).decode()}">'
      f'<p class="depth-readout" data-idle="{html.escape(_IDLE)}">{html.escape(_IDLE)}</p>')


class DepthDemo:
  """The model and what one request does, without the page (testable alone)."""

  def __init__(self, checkpoint: str, resolution: Resolution = TRAIN):
    self.checkpoint = checkpoint
    self.resolution = resolution
    self.model = model_io.load_model(checkpoint)
    self.description = describe(checkpoint)
    self.out_root = pathlib.Path(tempfile.mkdtemp(prefix="percdepth_demo_"))

  def predict(self, photo_path: str | None, flip: bool = True,
              intrinsics: str = "") -> dict[str, Any]:
    """One upload -> {"rgb", "depth", "paths", "notes", "network_size"};
    UserInputError for anything wrong with the input."""
    if not photo_path:
      raise UserInputError("no photo: upload or drop one, or pick an example.")
    name = pathlib.Path(photo_path).name
    photo = read_photo(photo_path, name)
    k = parse_intrinsics(intrinsics)
    depth = predict_depth(self.model, photo.rgb[None], flip=flip,
                          resolution=self.resolution)[0]
    network_size = run_size(self.model, *photo.rgb.shape[:2], self.resolution)
    # One folder per request: Gradio serves requests on several threads.
    out_dir = pathlib.Path(tempfile.mkdtemp(dir=self.out_root))
    paths = depth_outputs.write_prediction(out_dir / pathlib.Path(name).stem, depth, photo.rgb,
                                           intrinsics=k, ply=True, glb=True)
    return {"rgb": photo.rgb, "depth": depth, "paths": paths, "notes": photo.notes,
            "network_size": network_size}


def import_gradio():
  """Gradio, or a UserInputError naming the extra that brings it."""
  try:
    import gradio
  except ImportError:
    raise UserInputError(f"the demo needs Gradio, which is not installed: {DEMO_EXTRA_HINT}.") \
        from None
  return gradio


def build_app(demo: DepthDemo, examples: list[str]):
  """The Gradio page around `demo`."""
  gr = import_gradio()

  def run(photo_path, flip, intrinsics):
    try:
      result = demo.predict(photo_path, flip, intrinsics)
    except UserInputError as e:
      return None, "", None, None, f"**Could not use this photo.** {e}"
    depth, paths = result["depth"], result["paths"]
    colour = np.asarray(Image.open(paths["color_png"]).convert("RGB"))
    net_h, net_w = result["network_size"]
    status = (f"{depth.shape[1]}x{depth.shape[0]} pixels (network at {net_w}x{net_h}), "
              f"depth {depth.min():.2f}-{depth.max():.2f} m, flip averaging "
              f"{'on' if flip else 'off'}.")
    if result["notes"]:
      status += "  \n" + "; ".join(result["notes"]).capitalize() + "."
    downloads = [str(paths[k]) for k in ("npy", "depth_png", "ply")]
    return result["rgb"], depth_view_html(depth, colour), str(paths["glb"]), downloads, status

  with gr.Blocks(title="percdepth-jax depth demo") as app:
    gr.Markdown("# Monocular depth\n" + demo.description + "  \n" + BUSY_NOTE,
                elem_id="about")
    with gr.Row():
      with gr.Column(scale=1):
        photo = gr.File(label="Photo (drop or click)", file_types=list(PHOTO_SUFFIXES),
                        type="filepath", elem_id="photo")
        flip = gr.Checkbox(value=True, label="Flip averaging (test-time augmentation)")
        intrinsics = gr.Textbox(label="Intrinsics fx,fy,cx,cy in pixels (empty: NYU's, scaled)",
                                elem_id="intrinsics")
        button = gr.Button("Estimate depth", variant="primary", elem_id="estimate")
        if examples:
          gr.Examples(examples=[[e] for e in examples], inputs=[photo], label="Examples")
      with gr.Column(scale=2):
        status = gr.Markdown(elem_id="status")
        with gr.Row():
          rgb = gr.Image(label="Photo as the network saw it", interactive=False, elem_id="rgb")
          depth_view = gr.HTML(js_on_load=_HOVER_JS, elem_id="depth-view")
        mesh = gr.Model3D(label="3D view (drag to turn)", clear_color=(1, 1, 1, 1),
                          elem_id="mesh")
        downloads = gr.File(label="Downloads: .npy metres, 16-bit mm PNG, .ply points",
                            file_count="multiple", interactive=False, elem_id="downloads")
    button.click(run, inputs=[photo, flip, intrinsics],
                 outputs=[rgb, depth_view, mesh, downloads, status],
                 concurrency_limit=CONCURRENCY)
  # A waiting request shows its place in the queue on the outputs.
  return app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
