"""A training workdir that cannot be corrupted: one writer at a time (a
second run exits 2 naming the holder; a dead run's lock is taken over),
unreadable checkpoints set aside with the run resumed from the newest that
restores (and readers falling back without moving anything), and a full
disk stopping the run cleanly with the same command resuming afterwards.

Training runs use configs/tiny.py for a few steps, through scripts/train.py
in subprocesses (as users run it) or in process where a write must fail on
purpose.
"""

import errno
import json
import logging
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import pytest

from percdepth_jax.errors import UserInputError
from percdepth_jax.training import workdir_lock
from tests.helpers import REPO
from tests.test_training import (TINY, _checkpoint_steps, _env, _train, _train_cmd,
                                 _train_lines)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 400) -> None:
  """Waits until `condition()` while `proc` runs; fails with its output if it ends first."""
  deadline = time.time() + timeout
  while not condition():
    if proc.poll() is not None:
      pytest.fail(f"the run ended before {what}: {proc.stderr.read()[-3000:]}")
    assert time.time() < deadline, f"timed out waiting for {what}"
    time.sleep(0.2)


def _lock_record(workdir: pathlib.Path) -> dict | None:
  path = workdir / "train.lock"
  try:
    text = path.read_text().strip()
    return json.loads(text) if text else None
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def _truncate(directory: pathlib.Path) -> int:
  """Cuts every file under `directory` to half its size, as a partial copy or
  a failing disk leaves them; returns how many files."""
  files = [p for p in directory.rglob("*") if p.is_file()]
  for p in files:
    os.truncate(p, p.stat().st_size // 2)
  return len(files)


def _steps_logged(workdir: pathlib.Path) -> list[int]:
  return [r["step"] for r in _train_lines(workdir)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 3-step tiny run (checkpoints 2 and 3, best 3), copied by each test
  that damages it."""
  workdir = tmp_path_factory.mktemp("trained") / "w"
  _train(workdir, "--config.num_steps=3")
  assert _checkpoint_steps(workdir) == [2, 3]
  return workdir


def _copy(trained: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  workdir = tmp_path / "w"
  shutil.copytree(trained, workdir)
  return workdir


# One writer per workdir.

def test_second_run_exits_2_naming_the_holder_and_the_first_finishes(tmp_path):
  """Two runs on one workdir: once the first holds the lock, the second exits
  2 while the first still runs, naming its pid, host and the lock file, with
  no traceback; the first finishes with exit 0, every step logged exactly
  once in metrics.jsonl, and the lock record cleared."""
  workdir = tmp_path / "busy"
  steps = 24
  first = subprocess.Popen(_train_cmd(workdir, f"--config.num_steps={steps}"), cwd=REPO,
                           env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  try:
    _wait_for(lambda: (_lock_record(workdir) or {}).get("pid") == first.pid, first,
              "the first run took the lock")
    started = time.time()
    second = _train(workdir, f"--config.num_steps={steps}", expect=2)
    assert first.poll() is None, "the first run ended before the second was refused"
    assert f"{workdir} is being trained by another run" in second.stderr
    assert f"pid {first.pid} on host {socket.gethostname()}" in second.stderr
    assert str(workdir / "train.lock") in second.stderr
    assert "Traceback" not in second.stderr
    assert time.time() - started < 120  # refused before its own checks and compilation
    out, err = first.communicate(timeout=600)
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == 0, err[-3000:]
  assert _steps_logged(workdir) == list(range(1, steps + 1))
  assert _lock_record(workdir) is None


def test_lock_refuses_a_second_holder_and_takes_over_a_dead_ones_record(tmp_path):
  """In process: while one lock object holds the workdir, another is refused
  with the holder named; a record left by a process that no longer exists
  on this host (the file not locked) is taken over with a log line naming
  it; a clean release leaves the file empty."""
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  dead_pid = int(dead.stdout)
  (tmp_path / "train.lock").write_text(json.dumps(
      {"host": socket.gethostname(), "pid": dead_pid, "started": "earlier",
       "command": "python scripts/train.py ..."}))
  logged = []
  with workdir_lock.WorkdirLock(tmp_path, log=logged.append) as lock:
    lock.acquire()
    assert len(logged) == 1 and f"pid {dead_pid} on host {socket.gethostname()}" in logged[0]
    assert "ended without releasing it" in logged[0]
    assert _lock_record(tmp_path)["pid"] == os.getpid()
    with pytest.raises(UserInputError, match=f"pid {os.getpid()} on host"):
      workdir_lock.WorkdirLock(tmp_path).acquire()
  assert _lock_record(tmp_path) is None
  workdir_lock.WorkdirLock(tmp_path).acquire()  # free again


def test_a_killed_run_does_not_block_the_next(tmp_path):
  """kill -9 during a run: the OS drops its lock, so the same command runs
  (exit 0), says it took over the dead run's record, resumes from the last
  complete checkpoint and logs every step once."""
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(_train_cmd(workdir, "--config.num_steps=400"), cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: (workdir / "checkpoints" / "2").is_dir(), proc, "checkpoint 2")
  proc.kill()
  proc.wait(timeout=60)
  assert _lock_record(workdir)["pid"] == proc.pid  # left behind by kill -9
  result = _train(workdir, "--config.num_steps=5")
  assert f"pid {proc.pid}" in result.stdout and "takes it over" in result.stdout
  assert "resuming" in result.stdout
  assert _steps_logged(workdir) == [1, 2, 3, 4, 5]


# Unreadable checkpoints.

def test_truncated_latest_checkpoint_is_set_aside_and_the_run_resumes(trained, tmp_path):
  """The latest checkpoint's files cut in half: the re-run names it with the
  reason, moves it (all its files) to unreadable/, resumes from step 2
  saying so, and logs each step once."""
  workdir = _copy(trained, tmp_path)
  num_files = _truncate(workdir / "checkpoints" / "3")
  result = _train(workdir, "--config.num_steps=4")
  assert f"checkpoint {workdir / 'checkpoints' / '3'} cannot be restored (" in result.stdout
  assert f"resuming {workdir} from step 2, the newest checkpoint that restores" in result.stdout
  moved = list((workdir / "unreadable").iterdir())
  assert [p.name.split("-")[:2] for p in moved] == [["checkpoints", "3"]]
  assert len([p for p in moved[0].rglob("*") if p.is_file()]) == num_files
  assert _checkpoint_steps(workdir) == [3, 4]  # step 3 trained again
  assert _steps_logged(workdir) == [1, 2, 3, 4]


def test_no_readable_checkpoint_exits_2_and_moves_nothing(trained, tmp_path):
  """Every checkpoint damaged: exit 2 with each one named with its reason, no
  traceback, and nothing moved."""
  workdir = _copy(trained, tmp_path)
  for step in (2, 3):
    _truncate(workdir / "checkpoints" / str(step))
  result = _train(workdir, "--config.num_steps=4", expect=2)
  assert f"no checkpoint in {workdir / 'checkpoints'} can be restored" in result.stderr
  for step in (2, 3):
    assert f"{workdir / 'checkpoints' / str(step)} (" in result.stderr
  assert "Traceback" not in result.stderr
  assert _checkpoint_steps(workdir) == [2, 3] and not (workdir / "unreadable").exists()


@pytest.mark.parametrize("damaged", ["3", "3/model"])
def test_unreadable_best_is_set_aside_by_the_run(trained, tmp_path, damaged):
  """A damaged best/ checkpoint (all its files, which Orbax fails to list, or
  only its weights): the re-run moves it aside with a log line and writes a
  new best at its final evaluation, which DIR:best loads."""
  from percdepth_jax.model_io import load_model_with_step
  workdir = _copy(trained, tmp_path)
  _truncate(workdir / "best" / damaged)
  result = _train(workdir, "--config.num_steps=4")
  assert f"checkpoint {workdir / 'best' / '3'} cannot be restored (" in result.stdout
  assert [p.name.split("-")[:2] for p in (workdir / "unreadable").iterdir()] == [["best", "3"]]
  assert load_model_with_step(f"{workdir}:best")[1] == 4


def test_readers_fall_back_without_moving_anything(trained, tmp_path, caplog, capsys):
  """load_model on a workdir whose latest checkpoint is damaged loads the one
  before and says so (a warning naming both), moving nothing; a damaged
  DIR:best is a clear error (evaluate.py: exit 2, the path and the fix, no
  traceback); all checkpoints damaged is a UserInputError listing them."""
  from percdepth_jax.commands import evaluate
  from percdepth_jax.model_io import load_model_with_step
  workdir = _copy(trained, tmp_path)
  _truncate(workdir / "checkpoints" / "3")
  with caplog.at_level(logging.WARNING):
    _, step = load_model_with_step(workdir)
  assert step == 2
  assert f"checkpoint {workdir / 'checkpoints' / '3'} cannot be read" in caplog.text
  assert "loaded step 2" in caplog.text
  assert _checkpoint_steps(workdir) == [2, 3] and not (workdir / "unreadable").exists()

  _truncate(workdir / "best" / "3")
  code = evaluate.main(["--checkpoint", f"{workdir}:best", "--data", "synthetic:2:9",
                        "--height", "64", "--width", "64",
                        "--output", str(tmp_path / "eval.json")])
  err = capsys.readouterr().err
  assert code == 2, err
  assert f"no best checkpoint of {workdir} can be read: {workdir / 'best' / '3'} (" in err
  assert "Traceback" not in err and not (tmp_path / "eval.json").exists()

  _truncate(workdir / "checkpoints" / "2")
  with pytest.raises(UserInputError, match="no latest checkpoint of .* can be read"):
    load_model_with_step(workdir)
  assert (workdir / "best" / "3").is_dir()


def test_readers_work_while_a_run_trains(tmp_path):
  """load_model (what evaluate.py, predict.py and export.py call) on a
  workdir being trained, checkpointing every step, keeping 2: each load
  returns a complete checkpoint, never a half-written one or an error."""
  from percdepth_jax.model_io import load_model_with_step
  workdir = tmp_path / "training"
  proc = subprocess.Popen(_train_cmd(workdir, "--config.num_steps=400"), cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for(lambda: (workdir / "checkpoints" / "2").is_dir(), proc, "checkpoint 2")
    steps = [load_model_with_step(workdir)[1] for _ in range(6)]
    assert proc.poll() is None, "the run ended while it was read"
  finally:
    proc.kill()
    proc.wait(timeout=60)
  assert all(step >= 2 for step in steps) and steps == sorted(steps), steps


# A full disk.

class _FullFile:
  """A file whose writes fail as on a full disk."""

  def __init__(self, f):
    self._f = f

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._f.close()

  def write(self, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("write", ["checkpoint", "metrics"])
def test_full_disk_stops_the_run_and_the_same_command_resumes(tmp_path, monkeypatch, capsys,
                                                             write):
  """In process, a write that fails with ENOSPC from step 3 on (Orbax's save
  of the step-3 checkpoint, or the metrics.jsonl line of step 3): exit 1
  with one message naming the path, the free space and how to resume;
  checkpoints 1 and 2 intact. With the failure gone, the same command
  resumes from step 2 and finishes with every step logged once."""
  import orbax.checkpoint as ocp
  from percdepth_jax.commands import train
  workdir = tmp_path / "full"
  # A config file, not --config.* overrides: absl cannot define those twice
  # in one process.
  config = tmp_path / "four_steps.py"
  config.write_text(f"import runpy\n\ndef get_config():\n"
                    f"  c = runpy.run_path({TINY!r})['get_config']()\n"
                    "  c.num_steps, c.keep_checkpoints = 4, 3\n  return c\n")
  argv = [f"--config={config}", f"--workdir={workdir}"]
  if write == "checkpoint":
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
      if step >= 3 and pathlib.Path(str(self.directory)).name == "checkpoints":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as Orbax raises it
      return real_save(self, step, *args, **kwargs)
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    named = workdir / "checkpoints"
  else:
    real_open = pathlib.Path.open

    def open_(self, mode="r", *args, **kwargs):
      f = real_open(self, mode, *args, **kwargs)
      if self.name == "metrics.jsonl" and mode == "a" and len(_train_lines(workdir)) >= 2:
        return _FullFile(f)
      return f
    monkeypatch.setattr(pathlib.Path, "open", open_)
    named = workdir / "metrics.jsonl"

  assert train.main(argv) == 1
  err = capsys.readouterr().err
  message = [line for line in err.splitlines() if line.startswith("error: ")]
  assert len(message) == 1, err[-3000:]
  assert f"no space left on the device writing {named}" in message[0]
  assert " free of " in message[0] and "re-run the same command to resume" in message[0]
  assert "the checkpoints up to step 2 are intact" in message[0]
  assert _checkpoint_steps(workdir) == [1, 2]
  assert _lock_record(workdir) is None  # released on the way out

  monkeypatch.undo()
  assert train.main(argv) == 0
  assert f"resuming {workdir} from step 2" in capsys.readouterr().out
  assert _steps_logged(workdir) == [1, 2, 3, 4]


def _can_mount_tmpfs() -> bool:
  probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                         capture_output=True) if shutil.which("unshare") else None
  return probe is not None and probe.returncode == 0


# .ci/run sets PERCDEPTH_REQUIRE_TMPFS=1: there the test fails rather than skips.
@pytest.mark.skipif(sys.platform != "linux" or (
    not _can_mount_tmpfs() and not os.environ.get("PERCDEPTH_REQUIRE_TMPFS")),
                    reason="needs `unshare -rm` to mount a small tmpfs")
def test_full_tmpfs_stops_the_run_and_the_same_command_resumes(tmp_path):
  """A real full disk: the workdir on a 900 KiB tmpfs (a few checkpoints of
  the tiny model do not fit). The run exits 1 with the message naming a path
  in the workdir and the free space, its complete checkpoints intact; after
  the tmpfs grows (space is back) the same command exits 0, resuming from
  the newest complete checkpoint without finding any unreadable one, and
  every step is logged once."""
  mnt, out = tmp_path / "mnt", tmp_path / "out"
  mnt.mkdir()
  out.mkdir()
  command = " ".join(_train_cmd(mnt / "w", "--config.num_steps=4"))
  script = f"""
mount -t tmpfs -o size=900k tmpfs {mnt}
{command} > {out}/first.out 2> {out}/first.err; echo $? > {out}/first.rc
ls {mnt}/w/checkpoints > {out}/after_first.txt
mount -o remount,size=64m {mnt}
{command} > {out}/second.out 2> {out}/second.err; echo $? > {out}/second.rc
cp -r {mnt}/w {out}/w
"""
  subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=_env(), check=True,
                 timeout=900)
  read = lambda name: (out / name).read_text()
  assert read("first.rc").strip() == "1", read("first.err")[-3000:]
  message = [l for l in read("first.err").splitlines() if l.startswith("error: ")]
  assert len(message) == 1 and f"no space left on the device writing {mnt / 'w'}" in message[0]
  assert " free of " in message[0]
  complete = sorted(int(n) for n in read("after_first.txt").split() if n.isdigit())
  assert read("second.rc").strip() == "0", read("second.err")[-3000:]
  if complete:
    assert f"resuming {mnt / 'w'} from step {complete[-1]}\n" in read("second.out")
  assert "cannot be restored" not in read("second.out")
  assert _steps_logged(out / "w") == [1, 2, 3, 4]


def test_tensorstore_no_space_is_a_full_disk():
  """Orbax's array writer (TensorStore) reports ENOSPC as a ValueError with
  the OS error code in its text; it counts as a full disk, naming the file
  (the text below is the one a full tmpfs gave)."""
  from percdepth_jax.training import disk_full
  text = ('RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/2.orbax-checkpoint-tmp'
          '/train/_sharding": Failed writing: "/w/checkpoints/2/_sharding.__lock": Failed to '
          "write 32023 bytes to file 5: No space left on device [os_error_code='28']")
  try:
    try:
      raise ValueError(text)
    except ValueError as inner:
      raise RuntimeError("save failed") from inner
  except RuntimeError as outer:
    found = disk_full.no_space_error(outer)
  assert found.errno == errno.ENOSPC
  assert found.filename == "/w/checkpoints/2.orbax-checkpoint-tmp/train/_sharding"
  assert disk_full.no_space_error(ValueError("RESOURCE_EXHAUSTED: out of memory")) is None
