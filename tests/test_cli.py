"""End-to-end tests of the `slm` console script. Each test runs the command's `main(argv)` in this process (what the
console script calls) and checks what it prints and its exit status; a subprocess only where the process is what is
tested: the console script itself, `python -m slm`, what `--help` imports, and output to a log file."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import slm
from conftest import TINY_CONFIG, TINY_STEPS, copy_run, slm_in_process as run_in

ROOT = Path(__file__).resolve().parent.parent
SLM = shutil.which("slm", path=str(Path(sys.executable).parent)) or "slm"


def run(*args, cwd=ROOT, env=None):
    "Run `slm ARGS` in a subprocess, as a user would; returns the CompletedProcess (text mode)."
    return subprocess.run([SLM, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_help_and_version():
    r = run("--help")
    assert r.returncode == 0 and "corpus" in r.stdout
    r = run_in("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"slm {slm.__version__}"


def test_no_command_prints_help_and_fails():
    r = run_in()
    assert r.returncode == 2 and "COMMAND" in r.stdout


def test_corpus_builtin_shakespeare():
    r = run_in("corpus", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["source"] == "shakespeare"
    assert rep["characters"] > 4_000_000 and rep["unk_count"] == 0
    assert rep["train_tokens"] + rep["val_tokens"] == rep["characters"]
    assert abs(rep["val_tokens"] / rep["characters"] - 0.05) < 1e-3
    assert rep["windows_per_epoch"] == (rep["train_tokens"] - 256 - 1) // 256 + 1
    assert "THESEUS:" in rep["sample_window"]


def test_corpus_human_output_names_every_statistic():
    r = run_in("corpus")
    assert r.returncode == 0, r.stderr
    for label in ("characters:", "distinct characters:", "unknown (<UNK>):", "train tokens:", "val tokens:",
                  "windows per epoch:", "sample window:"):
        assert label in r.stdout


def test_corpus_own_text_with_unicode_folding(tmp_path):
    text = "“Curly quotes” and café — and plain text.\n" * 200
    f = tmp_path / "mine.txt"
    f.write_text(text, encoding="utf-8")
    env = {"SLM_CACHE_DIR": str(tmp_path / "cache")}
    refused = run_in("corpus", "--json", "--set", f"data.source={f}", "--set", "model.context_length=32", env=env)
    assert refused.returncode == 2 and "above data.max_unk_rate 0.05" in refused.stderr and "data.fold_unicode: true" in refused.stderr
    plain = json.loads(run_in("corpus", "--json", "--set", f"data.source={f}", "--set", "model.context_length=32",
                              "--set", "data.max_unk_rate=null", env=env).stdout)
    folded = json.loads(run_in("corpus", "--json", "--set", f"data.source={f}", "--set", "model.context_length=32",
                               "--set", "data.fold_unicode=true", env=env).stdout)
    assert plain["unk_count"] == 4 * 200            # “ ” é — and nothing else is outside ASCII
    assert folded["unk_count"] == 0


def test_corpus_folder_and_glob(tmp_path):
    (tmp_path / "a.txt").write_text("first file\n" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second file\n" * 100)
    env = {"SLM_CACHE_DIR": str(tmp_path / "cache")}
    folder = json.loads(run_in("corpus", "--json", "--set", f"data.source={tmp_path}", "--set", "model.context_length=16", env=env).stdout)
    glob = json.loads(run_in("corpus", "--json", "--set", f"data.source={tmp_path}/*.txt", "--set", "model.context_length=16", env=env).stdout)
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
    r = run_in("corpus", cfg)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("slm: error:") and "bad.yaml" in lines[0] and key in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_unknown_key_suggests_close_match(tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("training:\n  bach_size: 8\n")
    r = run_in("corpus", cfg)
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
    r = run_in("corpus", "--set", f"data.source={source}", env={"SLM_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and expect in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_bad_override_is_rejected(tmp_path):
    r = run_in("corpus", "--set", "model.n_heads=0")
    assert r.returncode == 2 and "n_heads" in r.stderr and "--set" in r.stderr
    r = run_in("corpus", "--set", "nonsense")
    assert r.returncode == 2 and "nonsense" in r.stderr


def test_missing_config_file():
    r = run_in("corpus", "no-such-config.yaml")
    assert r.returncode == 2 and "no-such-config.yaml" in r.stderr and "Traceback" not in r.stderr


# ---- train / generate / chat / bench: one tiny run shared by the tests below ----

def test_train_writes_a_complete_run_and_prints_a_sample(tiny_train):
    r, run_dir = tiny_train
    assert r.returncode == 0, r.stderr
    for name in ("config.yaml", "manifest.json", "metrics.jsonl", "tokenizer.json", "loss_curve.png"):
        assert (run_dir / name).is_file(), name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for key in ("run_id", "git_commit", "config_hash", "hook_list", "device"):
        assert key in manifest
    steps = [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 12
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.pt"))[-1].startswith("step-")
    assert "validation loss (estimate over up to" in r.stdout and "nats/char" in r.stdout and "bits/char" in r.stdout
    assert "sample (temperature" in r.stdout


def test_generate_is_reproducible_with_a_seed(tiny_run):
    run_dir = tiny_run
    a = run_in("generate", run_dir, "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "7")
    b = run_in("generate", run_dir, "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "7")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.startswith("ROMEO:") and len(a.stdout.rstrip("\n")) >= len("ROMEO:")
    g = run_in("generate", run_dir, "--prompt", "ROMEO:", "--max-new-tokens", "30", "--temperature", "0")
    assert g.returncode == 0 and g.stdout == run_in("generate", run_dir, "--prompt", "ROMEO:", "--max-new-tokens", "30",
                                                  "--temperature", "0", "--seed", "99").stdout   # greedy ignores the seed


@pytest.mark.parametrize("opts, word", [
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "1.5"], "top_p"),
    (["--top-p", "0"], "top_p"),
    (["--top-k", "0"], "top_k"),
    (["--max-new-tokens", "-5"], "max_new_tokens"),
])
def test_generate_bad_sampling_option_is_one_line(tiny_run, opts, word):
    run_dir = tiny_run
    r = run_in("generate", run_dir, "--prompt", "A", *opts)
    assert r.returncode == 2 and word in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_generate_from_missing_or_corrupt_checkpoint(tiny_run, tmp_path):
    r = run_in("generate", tmp_path / "nope")
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint at all")
    r = run_in("generate", bad)
    assert r.returncode == 2 and "broken.pt" in r.stderr and "Traceback" not in r.stderr


def test_chat_session(tiny_run):
    run_dir = tiny_run
    script = "Good morrow\n/set temperature=0.5\n/set top_p=2\n/show\n/help\nAnd you?\n/quit\n"
    r = run_in("chat", run_dir, "--seed", "1", "--max-new-tokens", "20", stdin=script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("HAMLET: ") == 2                           # two replies
    assert "temperature=0.5" in r.stdout                              # /set took effect, /show shows it
    assert "error: top_p must be" in r.stdout                         # a bad /set is refused, the chat goes on
    assert "/quit" in r.stdout                                        # /help listed the commands


def test_chat_ends_cleanly_on_end_of_input(tiny_run):
    run_dir = tiny_run
    r = run_in("chat", run_dir, stdin="")
    assert r.returncode == 0 and "Traceback" not in r.stderr


def test_train_resume_continues_the_run(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path / "run")
    cfg = run_dir / "config.yaml"
    text = cfg.read_text().replace("max_steps: 12", "max_steps: 14")
    assert text != cfg.read_text()
    cfg.write_text(text)
    r = run_in("train", "--resume", run_dir, "--no-progress")
    assert r.returncode == 0, r.stderr
    steps = [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 14 and steps == sorted(steps)


def test_train_usage_errors(tmp_path):
    r = run_in("train")
    assert r.returncode == 2 and "CONFIG" in r.stderr
    r = run_in("train", "--resume", tmp_path / "no-run")
    assert r.returncode == 2 and "no-run" in r.stderr and "Traceback" not in r.stderr


def test_bench_prints_json_figures():
    r = run_in("bench", TINY_CONFIG, "--steps", "2", "--gen-batch", "1,2", "--compile", "no")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out["matmul_peak_gflops"]) == {"float32", "bfloat16"} and out["matmul_peak_gflops"]["float32"] > 0
    assert sorted(out["training"]) == ["bfloat16", "float32"]
    import torch
    from slm.training import has_fast_bfloat16
    timed = ["float32", "bfloat16"] if has_fast_bfloat16(torch.device("cpu")) else ["float32"]   # emulated bfloat16 is not timed (D25)
    if "bfloat16" not in timed: assert "no bfloat16 matmul kernels" in out["training"]["bfloat16"]["skipped"]
    for d in timed:
        tr = out["training"][d]
        assert tr["dtype"] == d and tr["compile"] is False and tr["tokens_per_s"] > 0
        assert tr["mfu"] == tr["gflops"] / out["matmul_peak_gflops"][d]
        assert abs(tr["gflops"] - out["model"]["flops_per_token"] * tr["tokens_per_s"] / 1e9) < 1e-6 * tr["gflops"]
    gen = out["generation"]
    assert gen["new_tokens"] == 256 and [gen[k]["batch_size"] for k in ("batch_1", "batch_2")] == [1, 2]
    assert all(gen[k]["kv_cache_speedup"] > 0 and gen[k]["compile"] is False for k in ("batch_1", "batch_2"))
    g1 = gen["batch_1"]      # one sequence: the matrix-vector floor, which the whole decode loop cannot beat
    assert 0 < g1["kv_cache_tokens_per_s"] < g1["matvec_floor_tokens_per_s"] and g1["share_of_floor"] < 1
    assert "matvec_floor_tokens_per_s" not in gen["batch_2"]
    assert out["tokenizer"]["encode_MB_per_s"] > 0
    assert len(out["targets_met"]) == len(timed) + 1 and all(isinstance(v, bool) for v in out["targets_met"].values())


@pytest.mark.expensive   # torch.compile
def test_bench_times_the_compiled_step_and_decode_loop():
    r = run_in("bench", TINY_CONFIG, "--steps", "2", "--dtype", "float32", "--compile", "yes", "--gen-batch", "1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    (tr,) = out["training"].values()
    assert list(out["training"]) == ["float32+compile"] and tr["compile"] is True and tr["dtype"] == "float32"
    assert tr["mfu"] == tr["gflops"] / out["matmul_peak_gflops"]["float32"] and tr["tokens_per_s"] > 0
    g = out["generation"]["batch_1+compile"]      # the compiled decode loop: cached only, against the same floor
    assert list(out["generation"]) == ["new_tokens", "batch_1+compile"] and g["compile"] is True and "no_cache_tokens_per_s" not in g
    assert g["kv_cache_tokens_per_s"] > 0 and g["share_of_floor"] == g["kv_cache_tokens_per_s"] / g["matvec_floor_tokens_per_s"]
    assert list(out["targets_met"]) == ["training float32+compile: mfu >= 0.65", "generation batch_1+compile: kv_cache_tokens_per_s >= 1500"]


def test_bench_ingest_prints_build_speed_and_memory():
    r = run_in("bench", "--ingest", "--ingest-sizes", "1")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["MB"] == 1 and row["MB_per_s"] > 0 and row["peak_rss_MB"] > 0 and row["builtin_peak_rss_MB"] > 0


def test_bench_rejects_bad_batch_sizes():
    r = run_in("bench", "--gen-batch", "1,x", "--skip-generation")
    assert r.returncode == 2 and "1,x" in r.stderr and "Traceback" not in r.stderr


def test_evaluate_prints_the_table_with_three_baselines(tiny_run, tmp_path):
    run_dir = tiny_run
    r = run_in("evaluate", run_dir)
    assert r.returncode == 0, r.stderr
    for word in ("nats/char", "bits/char", "perplexity", "bigram", "unigram", "uniform"):
        assert word in r.stdout, word
    text = tmp_path / "play.txt"
    text.write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n")
    r = run_in("evaluate", run_dir, "--data", text, "--json")
    assert r.returncode == 0, r.stderr
    assert "play.txt" in r.stdout


def test_evaluate_and_compare_errors_are_one_line(tiny_run, tmp_path):
    run_dir = tiny_run
    short = tmp_path / "short.txt"
    short.write_text("A")
    for args in (("evaluate", tmp_path / "no-run"), ("evaluate", run_dir, "--data", short),
                 ("evaluate", run_dir, "--data", tmp_path / "missing.txt"), ("compare", run_dir, tmp_path / "no-run")):
        r = run_in(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    r = run_in("evaluate", run_dir, "--batch-size", "0")        # an argparse usage error: usage lines, then the error
    assert r.returncode == 2 and "--batch-size: must be >= 1, got 0" in r.stderr.splitlines()[-1]


def test_compare_two_runs(tiny_run, tmp_path):
    run_dir = tiny_run
    other = tmp_path / "runs"
    r = run_in("train", TINY_CONFIG, "--no-progress", *TINY_STEPS, "--set", f"checkpoint.runs_dir={other}",
            "--set", "training.lr=0.003", "--set", "other.run_name=lr3e-3")
    assert r.returncode == 0, r.stderr
    png = tmp_path / "curves.png"
    r = run_in("compare", run_dir, other / "lr3e-3", "--plot", png)
    assert r.returncode == 0, r.stderr
    assert "training.lr" in r.stdout and "lr3e-3" in r.stdout and png.stat().st_size > 0


def test_no_progress_bar_when_stderr_is_a_log(tmp_path):
    "Without a terminal (CI logs, `2> file`) `slm train` draws no tqdm bar, but still prints its evaluation lines."
    r = run("train", TINY_CONFIG, *TINY_STEPS, "--set", f"checkpoint.runs_dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert "step/s" not in r.stderr + r.stdout and "it/s" not in r.stderr
    assert "validation loss (estimate over up to" in r.stdout


def test_help_answers_quickly_without_torch():
    "`slm --help` only builds the argument parser: no chapter module, and no torch, is imported."
    code = "import sys; from slm.__main__ import build_parser; build_parser(); print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('slm.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "['slm.__main__']", out
    r = run("--help")
    assert r.returncode == 0 and "train" in r.stdout


def test_python_m_slm_runs_the_command():
    r = subprocess.run([sys.executable, "-m", "slm", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("slm ")
