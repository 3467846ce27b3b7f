"""End-to-end tests of the `slm` console script, run as a user runs it (a subprocess)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import slm

ROOT = Path(__file__).resolve().parent.parent
SLM = shutil.which("slm", path=str(Path(sys.executable).parent)) or "slm"


def run(*args, cwd=ROOT, env=None):
    "Run `slm ARGS` in a subprocess; returns the CompletedProcess (text mode)."
    return subprocess.run([SLM, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_help_and_version():
    r = run("--help")
    assert r.returncode == 0 and "corpus" in r.stdout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"slm {slm.__version__}"


def test_no_command_prints_help_and_fails():
    r = run()
    assert r.returncode == 2 and "COMMAND" in r.stdout


def test_corpus_builtin_shakespeare():
    r = run("corpus", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["source"] == "shakespeare"
    assert rep["characters"] > 4_000_000 and rep["unk_count"] == 0
    assert rep["train_tokens"] + rep["val_tokens"] == rep["characters"]
    assert abs(rep["val_tokens"] / rep["characters"] - 0.05) < 1e-3
    assert rep["windows_per_epoch"] == (rep["train_tokens"] - 256 - 1) // 256 + 1
    assert "THESEUS:" in rep["sample_window"]


def test_corpus_human_output_names_every_statistic():
    r = run("corpus")
    assert r.returncode == 0, r.stderr
    for label in ("characters:", "distinct characters:", "unknown (<UNK>):", "train tokens:", "val tokens:",
                  "windows per epoch:", "sample window:"):
        assert label in r.stdout


def test_corpus_own_text_with_unicode_folding(tmp_path):
    text = "“Curly quotes” and café — and plain text.\n" * 200
    f = tmp_path / "mine.txt"
    f.write_text(text, encoding="utf-8")
    env = {"SLM_CACHE_DIR": str(tmp_path / "cache")}
    plain = json.loads(run("corpus", "--json", "--set", f"data.source={f}", "--set", "model.context_length=32", env=env).stdout)
    folded = json.loads(run("corpus", "--json", "--set", f"data.source={f}", "--set", "model.context_length=32",
                            "--set", "data.fold_unicode=true", env=env).stdout)
    assert plain["unk_count"] == 4 * 200            # “ ” é — and nothing else is outside ASCII
    assert folded["unk_count"] == 0


def test_corpus_folder_and_glob(tmp_path):
    (tmp_path / "a.txt").write_text("first file\n" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second file\n" * 100)
    env = {"SLM_CACHE_DIR": str(tmp_path / "cache")}
    folder = json.loads(run("corpus", "--json", "--set", f"data.source={tmp_path}", "--set", "model.context_length=16", env=env).stdout)
    glob = json.loads(run("corpus", "--json", "--set", f"data.source={tmp_path}/*.txt", "--set", "model.context_length=16", env=env).stdout)
    assert folder["characters"] == 1100 + 1 + 1200   # both files, joined by a newline
    assert glob["characters"] == 1100                 # only the top-level file


@pytest.mark.parametrize("yaml_text, key", [
    ("model:\n  d_modle: 128\n", "d_modle"),            # unknown key
    ("model:\n  n_layers: four\n", "n_layers"),         # wrong type
    ("model:\n  d_model: 250\n  n_heads: 4\n", "d_model"),   # not divisible
    ("model:\n  dropout: 1.5\n", "dropout"),            # out of range
    ("training:\n  lr: -0.001\n", "lr"),                # negative lr
])
def test_bad_config_one_clear_line(tmp_path, yaml_text, key):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    r = run("corpus", cfg)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("slm: error:") and "bad.yaml" in lines[0] and key in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_unknown_key_suggests_close_match(tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("training:\n  bach_size: 8\n")
    r = run("corpus", cfg)
    assert r.returncode == 2 and "training.bach_size" in r.stderr and "did you mean 'batch_size'" in r.stderr


@pytest.mark.parametrize("source, expect", [
    ("does/not/exist.txt", "no such file or folder"),
    ("EMPTY", "corpus is empty"),
    ("BINARY", "binary file"),
    ("SHORT", "fewer than context_length + 1"),
])
def test_bad_corpus_one_clear_line(tmp_path, source, expect):
    files = {"EMPTY": b"", "BINARY": b"\x89PNG\r\n\x1a\n\x00\x00binary", "SHORT": b"too short\n"}
    if source in files:
        (tmp_path / "f.txt").write_bytes(files[source])
        source = tmp_path / "f.txt"
    r = run("corpus", "--set", f"data.source={source}", env={"SLM_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and expect in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_bad_override_is_rejected(tmp_path):
    r = run("corpus", "--set", "model.n_heads=0")
    assert r.returncode == 2 and "n_heads" in r.stderr and "--set" in r.stderr
    r = run("corpus", "--set", "nonsense")
    assert r.returncode == 2 and "nonsense" in r.stderr


def test_missing_config_file():
    r = run("corpus", "no-such-config.yaml")
    assert r.returncode == 2 and "no-such-config.yaml" in r.stderr and "Traceback" not in r.stderr
