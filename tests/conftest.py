"""Fixtures shared by the test files: one tiny trained run, and the browser for the pages.

`tiny_run` is the suite's one trained model: configs/tiny.yaml for 12 steps, trained once per test process
(`slm train`'s own code path, in-process) and shared read-only by every test file that needs a run folder.
A test that changes a run copies it first (`copy_run`)."""
import contextlib
import io
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"
TINY_STEPS = ["--set", "training.max_steps=12", "--set", "eval.eval_interval=6", "--set", "checkpoint.interval=6",
              "--set", "eval.eval_batches=2", "--set", "eval.sample_length=20"]


def slm_in_process(*args, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `slm ARGS` in this process (the console script's `main(argv)`); returns its exit status, stdout and stderr.
    As in a new process: argparse's exit is the exit status, warnings are shown (Python's default filter) through the
    command's own format, and `stdin` (a string) is what the command reads as its standard input."""
    from slm.__main__ import main
    out, err, saved = io.StringIO(), io.StringIO(), dict(os.environ)
    os.environ.update(env or {})
    show = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
        warnings.formatwarning(message, category, filename, lineno, line))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(), \
                _stdin(stdin):
            warnings.simplefilter("default")
            warnings.showwarning = show
            try: code = main([str(a) for a in args])
            except SystemExit as e: code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.environ.clear(); os.environ.update(saved)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _stdin(text: str | None):
    "`sys.stdin` reads `text` inside the block (unchanged if None)."
    if text is None:
        yield
        return
    saved, sys.stdin = sys.stdin, io.StringIO(text)
    try: yield
    finally: sys.stdin = saved


@pytest.fixture(scope="session")
def tiny_train(tmp_path_factory):
    "`slm train configs/tiny.yaml` for 12 steps (checkpoints at 6 and 12): (CompletedProcess, run folder). Read-only."
    d = tmp_path_factory.mktemp("tiny-run")
    r = slm_in_process("train", TINY_CONFIG, "--no-progress", *TINY_STEPS, "--set", f"checkpoint.runs_dir={d}",
                       "--set", "other.run_name=tiny")
    assert r.returncode == 0, r.stderr
    return r, d / "tiny"


@pytest.fixture(scope="session")
def tiny_run(tiny_train) -> Path:
    "The run folder of `tiny_train` (read-only: copy it with `copy_run` before changing anything)."
    return tiny_train[1]


def copy_run(run_dir: Path, dst: Path) -> Path:
    "A copy of `run_dir` at `dst` (which must not exist yet), for a test that changes a run folder."
    shutil.copytree(run_dir, dst)
    return dst


@pytest.fixture(scope="session")
def browser():
    "Headless Debian Chromium through chromedriver; skips only where chromium is not installed."
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver); .ci/run installs it")
    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromium is installed but chromedriver is not: apt-get install chromium-driver"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-dev-shm-usage", "--window-size=1400,1000", "--hide-scrollbars"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(driver_path))
    yield drv
    drv.quit()
