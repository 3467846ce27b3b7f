"""Tests of `slm.bench` (companion 07b): the figures `slm bench` reports are measured, never asserted, so these tests
check that the timers run and that their figures hang together (the CLI tests run the whole report)."""
from pathlib import Path

import pytest
import torch

import slm.bench
from slm.bench import bench_generation, generation_speed, matvec_floor
from slm.config import ModelConfig, load_config
from slm.model import GPT

torch.set_num_threads(1)
TINY = Path(__file__).parent.parent / "configs" / "tiny.yaml"


def tiny_model(seed=0):
    "A random GPT small enough for tests: vocab 99, context 16, 2 layers, d_model 32 (eval mode)."
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=99, context_length=16, n_layers=2, d_model=32, n_heads=4, d_ff=64, dropout=0.0)
    return GPT(cfg).eval()


def test_generation_speed_runs():
    model = tiny_model()
    assert generation_speed(model, n_new=8, use_cache=True) > 0
    assert generation_speed(model, n_new=8, use_cache=False, batch_size=2) > 0


def test_bench_does_not_time_emulated_bfloat16(monkeypatch):
    """On a device without bfloat16 matmul kernels `run_bench` skips bfloat16 training (with the reason and its measured
    peak) and sets no target for it (decision D25)."""
    monkeypatch.setattr(slm.bench, "has_fast_bfloat16", lambda device: False)
    cfg = load_config(TINY)
    out = slm.bench.run_bench(cfg, steps=1, gen_batches=(), tokenizer=False, compile_modes=(False,))
    bf = out["training"]["bfloat16"]
    assert "tokens_per_s" not in bf and bf["skipped"].startswith("no bfloat16 matmul kernels on this cpu (matmul peak ")
    assert f"{out['matmul_peak_gflops']['bfloat16']:.1f} GFLOP/s" in bf["skipped"]
    assert out["training"]["float32"]["tokens_per_s"] > 0
    assert list(out["targets_met"]) == ["training float32: mfu >= 0.65"]


def test_matvec_floor_times_every_linear_and_refuses_a_model_without_one():
    assert matvec_floor(tiny_model(), repeats=3) > 0
    with pytest.raises(ValueError, match="has no nn.Linear layers"):
        matvec_floor(torch.nn.Sequential(torch.nn.ReLU()))


def test_bench_generation_figures_hang_together():
    """The speed-up and the share of the floor are the ratios of the figures reported beside them; the floor is for one
    row only."""
    cfg = load_config(TINY)
    g = bench_generation(cfg, n_new=8, batch_size=1, repeats=1)
    assert g["kv_cache_speedup"] == g["kv_cache_tokens_per_s"] / g["no_cache_tokens_per_s"]
    assert g["share_of_floor"] == g["kv_cache_tokens_per_s"] / g["matvec_floor_tokens_per_s"]
    g2 = bench_generation(cfg, n_new=8, batch_size=2, repeats=1)
    assert g2["batch_size"] == 2 and "matvec_floor_tokens_per_s" not in g2 and g2["kv_cache_tokens_per_s"] > 0
