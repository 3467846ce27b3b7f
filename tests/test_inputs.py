"""Inputs a user can get wrong, and long-running commands, tried as a user meets them: through the `slm` command.
Each wrong input gives one line on stderr, a non-zero exit and loses nothing (the command's `main(argv)`, run in this
process); long commands show their output as it is produced and stop cleanly on Ctrl-C or SIGTERM (a real process,
signals and a pseudo-terminal: there the process is what is tested)."""
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import copy_run as _copy_tree, slm_in_process

ROOT = Path(__file__).resolve().parent.parent
SLM = shutil.which("slm", path=str(Path(sys.executable).parent)) or "slm"
TINY = ROOT / "configs" / "tiny.yaml"


def env_for(tmp_path) -> dict:
    return {**os.environ, "SLM_CACHE_DIR": str(tmp_path / "cache"), "PYTHONWARNINGS": "default"}


def run(tmp_path, *args):
    "`slm ARGS` in this process, with its own token-cache folder under `tmp_path`."
    return slm_in_process(*args, env={"SLM_CACHE_DIR": str(tmp_path / "cache")})


def one_line(r, rc=2) -> str:
    "The single stderr line of a failed command, after checking the exit status and that there is no traceback."
    assert r.returncode == rc, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def tree(path: Path) -> dict:
    "Every file under `path` with its bytes: what 'nothing was written or lost' compares."
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    return _copy_tree(run_dir, tmp_path / "run")


# ------------------------------------------------------------------------------- refused before training

@pytest.mark.parametrize("d_model, expect", [(10**9, "too big for any machine: "), (2**17, "GB of weights, gradients and optimizer state")])
def test_a_model_too_big_is_one_line_naming_the_keys(tmp_path, d_model, expect):
    r = run(tmp_path, "train", TINY, "--set", f"model.d_model={d_model}", "--set", f"checkpoint.runs_dir={tmp_path / 'runs'}")
    line = one_line(r)
    assert expect in line and f"model.d_model={d_model}" in line and "training.batch_size=" in line
    assert not any((tmp_path / "runs").iterdir())                  # no run folder was started


def test_a_corpus_outside_the_vocabulary_is_refused(tmp_path):
    (tmp_path / "zh.txt").write_text("你好世界。" * 4000)
    r = run(tmp_path, "train", TINY, "--set", f"data.source={tmp_path / 'zh.txt'}", "--set", f"checkpoint.runs_dir={tmp_path / 'runs'}")
    line = one_line(r)
    assert "100.00% of 20,000 tokens are <UNK>" in line and "data.max_unk_rate 0.05" in line and "fold_unicode" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_few_unknown_characters_are_reported_once(tmp_path):
    text = ("To be, or not to be: that is the question. " * 40 + "\u00e9t\u00e9 ") * 10     # about 1 % <UNK>
    (tmp_path / "fr.txt").write_text(text)
    r = run(tmp_path, "train", TINY, "--no-progress", "--set", f"data.source={tmp_path / 'fr.txt'}", "--set", "training.max_steps=2",
            "--set", "eval.eval_interval=2", "--set", "eval.eval_batches=1", "--set", f"checkpoint.runs_dir={tmp_path / 'runs'}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("are <UNK>") == 1
    assert f"corpus: {text.count(chr(0xe9)) / len(text):.2%} of its {len(text):,} tokens are <UNK>" in r.stdout


def test_a_runs_folder_under_a_file_is_one_line_and_touches_nothing(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    r = run(tmp_path, "train", TINY, "--set", f"checkpoint.runs_dir={tmp_path / 'notes.txt' / 'runs'}")
    line = one_line(r)
    assert line == (f"slm: error: checkpoint.runs_dir: {tmp_path / 'notes.txt' / 'runs'}: cannot write run folders there "
                    f"({tmp_path / 'notes.txt'} is a file, not a folder)")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_resume_checks_it_can_write_the_run_folder(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path)
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "metrics.jsonl").mkdir()
    before = tree(run_dir)
    line = one_line(run(tmp_path, "train", "--resume", run_dir, "--no-progress"))
    assert line == f"slm: error: cannot resume {run_dir}: {run_dir / 'metrics.jsonl'} cannot be written"
    assert tree(run_dir) == before


def test_resume_with_a_damaged_manifest_is_one_line(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path)
    (run_dir / "manifest.json").write_text("{broken")
    before = tree(run_dir)
    line = one_line(run(tmp_path, "train", "--resume", run_dir, "--no-progress"))
    assert f"{run_dir / 'manifest.json'}: not valid JSON" in line and "delete it" in line
    assert tree(run_dir) == before


def test_resume_when_no_checkpoint_reads(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path)
    for p in (run_dir / "checkpoints").glob("*.pt"): p.write_bytes(b"junk\n")
    r = run(tmp_path, "train", "--resume", run_dir, "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    *warns, err = r.stderr.strip().splitlines()
    assert all(w.startswith("slm: warning: skipping ") for w in warns) and warns      # one line per broken file
    assert err.startswith("slm: error: no readable checkpoint: ") and "not a PyTorch file" in err


@pytest.mark.parametrize("args, expect", [
    (["evaluate", "RUN", "--batch-size", "0"], "slm evaluate: error: argument --batch-size: must be >= 1, got 0 (see slm evaluate --help)"),
    (["bench", "--threads", "-1"], "slm bench: error: argument --threads: must be >= 1, got -1 (see slm bench --help)"),
    (["generate", "RUN", "--top-k", "x"], "slm generate: error: argument --top-k: invalid int value: 'x' (see slm generate --help)"),
])
def test_command_line_mistakes_are_one_line(tiny_run, tmp_path, args, expect):
    assert one_line(run(tmp_path, *[str(tiny_run) if a == "RUN" else a for a in args])) == expect


def test_warnings_are_one_line_without_source(tiny_run, tmp_path):
    r = run(tmp_path, "generate", tiny_run, "--prompt", "ROM\u00c9O:", "--max-new-tokens", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slm: warning: ") and "<UNK>" in lines[0], r.stderr


# ------------------------------------------------------------------------------- long-running commands

def read_until(proc, stream, needle: str, timeout: float = 120) -> str:
    "Read `stream` of the running `proc` until `needle` appears; fails if the process ends first or time runs out."
    buf, t0 = b"", time.monotonic()
    while needle.encode() not in buf:
        assert time.monotonic() - t0 < timeout, f"{needle!r} did not appear; got {buf[-500:]!r}"
        ready, _, _ = select.select([stream], [], [], 0.5)
        if ready:
            chunk = os.read(stream.fileno(), 65536)
            assert chunk or proc.poll() is None, f"the process ended before {needle!r}: {buf[-500:]!r}"
            buf += chunk
    return buf.decode(errors="replace")


def read_some(proc, stream, timeout: float = 60) -> str:
    "The next bytes `stream` of the running `proc` gives (at least one)."
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready and proc.poll() is None, "no output while the process runs"
    return os.read(stream.fileno(), 65536).decode(errors="replace")


def test_training_output_reaches_a_pipe_and_sigterm_saves_a_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.Popen([SLM, "train", TINY, "--no-progress", "--set", "training.max_steps=100000", "--set", "eval.eval_interval=5",
                             "--set", "eval.eval_batches=1", "--set", "checkpoint.interval=5", "--set", f"checkpoint.runs_dir={runs}",
                             "--set", "other.run_name=term"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_for(tmp_path))
    try:
        seen = read_until(proc, proc.stdout, "step 10:")        # an evaluation line, read while the run goes on
        assert proc.poll() is None and "step 5:" in seen
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None: proc.kill()
    out = seen + out.decode()
    assert proc.returncode == 143, err
    assert "SIGTERM: finishing this step and saving a checkpoint" in out, out
    assert f"training stopped by SIGTERM at step " in err.decode() and f"resume with: slm train --resume {runs / 'term'}" in err.decode()
    assert json.loads((runs / "term" / "manifest.json").read_text())["status"] == "interrupted"
    assert not list((runs / "term" / "checkpoints").glob(".staged-*"))


def test_generation_streams_and_stops_on_ctrl_c(tiny_run, tmp_path):
    proc = subprocess.Popen([SLM, "generate", tiny_run, "--prompt", "ROMEO:", "--max-new-tokens", str(10**13)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_for(tmp_path), preexec_fn=_sigint_default)
    try:
        text = read_until(proc, proc.stdout, "ROMEO:")
        while len(text) < 300: text += read_some(proc, proc.stdout)      # the continuation arrives while it is generated
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == 130 and err.decode().strip() == "slm: interrupted", err
    assert text.startswith("ROMEO:") and rest.endswith(b"\n")       # what was printed stays, the line is ended


def _sigint_default():
    """In the child: SIGINT back to its default, as for a command typed at a terminal. A test run started in the
    background (`pytest … &` in a script) has SIGINT ignored, children inherit that, and Python then installs no
    KeyboardInterrupt handler: Ctrl-C would do nothing, as it rightly does for a background job."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Terminal:
    "The controlling side of a pseudo-terminal: `expect(text)` reads until `text` and returns what came up to it."
    def __init__(self, fd: int, proc): self.fd, self.proc, self.buf = fd, proc, b""

    def expect(self, text: str, timeout: float = 120) -> str:
        t0 = time.monotonic()
        while text.encode() not in self.buf:
            assert time.monotonic() - t0 < timeout, f"{text!r} did not appear; got {self.buf[-500:]!r}"
            if select.select([self.fd], [], [], 0.5)[0]:
                try: chunk = os.read(self.fd, 65536)
                except OSError: chunk = b""                            # the other side closed
                assert chunk, f"the terminal closed before {text!r}: {self.buf[-500:]!r}"
                self.buf += chunk
        i = self.buf.index(text.encode()) + len(text)
        seen, self.buf = self.buf[:i], self.buf[i:]
        return seen.decode(errors="replace")

    def send(self, data: bytes): os.write(self.fd, data)


def _own_terminal():
    "In the child: a new session whose controlling terminal is its stdin, so Ctrl-C on it sends SIGINT, as in a real terminal."
    import fcntl
    import termios
    _sigint_default()
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_chat_edits_lines_keeps_history_and_clears_on_ctrl_c(tiny_run, tmp_path):
    "In a pseudo-terminal: Ctrl-C clears the line, the Up arrow recalls the last line, Ctrl-D leaves; the history is saved."
    history = tmp_path / "state" / "history"
    main_fd, sub_fd = os.openpty()
    proc = subprocess.Popen([SLM, "chat", tiny_run, "--max-new-tokens", "5", "--seed", "1", "--history", history],
                            stdin=sub_fd, stdout=sub_fd, stderr=sub_fd, env={**env_for(tmp_path), "TERM": "xterm"},
                            preexec_fn=_own_terminal)
    os.close(sub_fd)
    term = Terminal(main_fd, proc)
    try:
        term.expect("YOU> ")
        term.send(b"first words\r")
        term.expect("HAMLET: "); term.expect("YOU> ")
        term.send(b"half a thought"); term.expect("half a thought")  # typed and echoed: readline is waiting for keys
        time.sleep(0.5)     # as a person pauses: CPython's readline loop sees a signal only while it waits in select()
        term.send(b"\x03")                                           # Ctrl-C at the prompt
        assert "^C" in term.expect("YOU> ") and proc.poll() is None
        term.send(b"\x1b[A\r")                                       # Up arrow, Enter: the last line again
        assert "first words" in term.expect("HAMLET: ")
        term.expect("YOU> ")
        term.send(b"\x04")                                            # Ctrl-D
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None: proc.kill()
        os.close(main_fd)
    assert history.read_text().splitlines() == ["first words"]        # the cleared line is not kept; a repeat is kept once
