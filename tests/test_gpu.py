"""The CUDA path: training in bfloat16 with TF32 and fused AdamW, exact resume, KV-cache generation, the benchmark's
MFU against the GPU's own peak, and data parallel over NCCL. Marked `gpu`; skipped where torch sees no CUDA device.

    .venv/bin/pytest -m gpu tests/test_gpu.py -p no:nbval
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TINY = ROOT / "configs" / "tiny.yaml"
GPU = ["--set", "other.device=cuda", "--set", "other.dtype=bfloat16", "--set", "eval.eval_interval=10", "--set", "checkpoint.interval=10",
       "--set", "eval.sample_length=0"]


def slm(tmp_path, *args, launcher=None):
    r = subprocess.run([*(launcher or [str(BIN / "slm")]), *map(str, args)], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "SLM_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_on_cuda_and_exact_resume(tmp_path):
    runs = tmp_path / "runs"
    slm(tmp_path, "train", TINY, "--no-progress", *GPU, "--set", "training.max_steps=20", "--set", f"checkpoint.runs_dir={runs}",
        "--set", "other.run_name=full")
    slm(tmp_path, "train", TINY, "--no-progress", *GPU, "--set", "training.max_steps=10", "--set", f"checkpoint.runs_dir={runs}",
        "--set", "other.run_name=half")
    cfg = runs / "half" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("max_steps: 10", "max_steps: 20"))
    slm(tmp_path, "train", "--resume", runs / "half", "--no-progress")
    m = json.loads((runs / "full" / "manifest.json").read_text())
    assert m["device"].startswith("cuda") and m["status"] == "finished"
    a, b = metrics(runs / "full"), metrics(runs / "half")
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]      # the CUDA random states are restored too
    assert a[-1]["val_loss"] < a[0]["val_loss"]


def test_kv_cache_generation_matches_on_cuda():
    from slm.config import ModelConfig
    from slm.generation import generate
    from slm.model import GPT
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=99, context_length=64, n_layers=2, d_model=64, n_heads=4, d_ff=256, dropout=0.0)).cuda()
    idx = torch.randint(0, 99, (2, 5), device="cuda")
    a = generate(model, idx, 80, temperature=0, use_cache=True)
    b = generate(model, idx, 80, temperature=0, use_cache=False)
    assert torch.equal(a, b) and a.device.type == "cuda"


def test_bench_reports_mfu_against_the_gpu_peak(tmp_path):
    out = json.loads(slm(tmp_path, "bench", TINY, "--set", "other.device=cuda", "--steps", "3", "--gen-batch", "1").stdout)
    assert out["device"].startswith("cuda")
    for d in ("float32", "bfloat16"):
        tr = out["training"][d]
        assert tr["mfu"] == tr["gflops"] / out["matmul_peak_gflops"][d] and 0 < tr["mfu"] < 1.5


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="data parallel over NCCL needs two GPUs")
def test_data_parallel_over_nccl(tmp_path):
    runs = tmp_path / "runs"
    slm(tmp_path, "train", TINY, "--no-progress", *GPU, "--set", "training.max_steps=10", "--set", f"checkpoint.runs_dir={runs}",
        "--set", "other.run_name=nccl", launcher=[str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "slm"])
    m = json.loads((runs / "nccl" / "manifest.json").read_text())
    assert m["world_size"] == 2 and m["status"] == "finished"
