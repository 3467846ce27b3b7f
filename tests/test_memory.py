"""Chapter 09: persistent Q-K memory, the NIAH probe, passkey prompts, spike telemetry and rollback, Muon."""
import json
import math

import pytest
import torch

from slm.config import ConfigError, config_from_dict
from slm.hooks import build_optimizer
from slm.memory import (Muon, QKMemory, SpikeDetector, capacity_sweep, expected_cosine, inject_lr_spike, model_memories,
                        muon_groups, muon_lr_factor, newton_schulz, niah_probe, passkey_prompt, passkey_test, probe_model)
from slm.model import GPT
from slm.tokenizer import CharTokenizer
from slm.training import list_checkpoints, make_optimizer, param_groups, read_jsonl, train

# ---- the memory --------------------------------------------------------------------------------------------------


def test_reset_gives_the_persistent_state():
    torch.manual_seed(0)
    m = QKMemory(8, n_heads=2, n_persistent=3)
    M_p, n_p = m.persistent_state()
    m.reset(4).write(torch.randn(4, 2, 5, 8))
    m.reset(4)
    assert torch.equal(m.norm_sum, n_p.expand(4, 2))                 # norm_sum == norm_persistent after reset (D2-1)
    assert torch.equal(m.M, M_p.expand(4, 2, 8, 8))
    assert torch.allclose(n_p, torch.diagonal(M_p, dim1=-2, dim2=-1).sum(-1), atol=1e-5)
    empty = QKMemory(8).reset(2)
    assert torch.equal(empty.norm_sum, torch.zeros(2, 1))
    assert torch.equal(empty.read(torch.randn(2, 1, 3, 8)), torch.zeros(2, 1, 3, 8))   # an empty memory reads as zero


def test_read_scale_stays_bounded_as_keys_accrue():
    torch.manual_seed(0)
    m = QKMemory(16, n_persistent=4).reset(1)
    q = torch.randn(1, 1, 1, 16)
    ratios, raw = [], []
    with torch.no_grad():
        for _ in range(300):
            m.write(torch.randn(1, 1, 1, 16) * 3)
            ratios.append((m.read(q).norm() / q.norm()).item())
            raw.append(((q @ m.M).norm() / q.norm()).item())
    assert max(ratios) <= 1.0 + 1e-6                               # ‖M q‖ <= λ_max ‖q‖ <= trace(M) ‖q‖ = norm_sum ‖q‖
    assert raw[-1] > 50 * raw[0]                                   # without the denominator it grows with the keys


def test_write_read_matches_naive_and_causal_projection():
    torch.manual_seed(0)
    m = QKMemory(6, n_heads=2, n_persistent=2)
    q, k = torch.randn(3, 2, 7, 6), torch.randn(3, 2, 7, 6)
    m.reset(3)
    stepwise = torch.cat([m.write(k[:, :, t:t + 1]).read(q[:, :, t:t + 1]) for t in range(7)], dim=2)
    assert torch.allclose(m.project_causal(q, k), stepwise, atol=1e-5)
    assert torch.allclose(m.project_causal(q[:, :, 4:], k), stepwise[:, :, 4:], atol=1e-5)
    P = m.persistent.detach()[0]
    M = P.T @ P + k[0, 0].T @ k[0, 0]
    assert torch.allclose(stepwise[0, 0, -1], M @ q[0, 0, -1] / (P.pow(2).sum() + k[0, 0].pow(2).sum()), atol=1e-5)


def test_memory_errors():
    m = QKMemory(4)
    with pytest.raises(RuntimeError, match="reset"): m.read(torch.randn(1, 1, 1, 4))
    m.reset(2)
    with pytest.raises(ValueError, match=r"expected shape \(B=2, H=1, T, d_k=4\)"): m.write(torch.randn(2, 1, 3, 5))
    with pytest.raises(ValueError, match="d_k >= 1"): QKMemory(0)


def test_memory_in_attention_is_off_by_default_and_consistent_with_a_kv_cache():
    base = dict(vocab_size=99, context_length=16, n_layers=2, d_model=16, n_heads=2, d_ff=32, dropout=0.0)
    torch.manual_seed(0); a = GPT(config_from_dict({"model": base}).model)
    torch.manual_seed(0); b = GPT(config_from_dict({"model": base}).model)
    idx = torch.randint(0, 99, (2, 16))
    assert model_memories(a) == [] and torch.equal(a(idx)[0], b(idx)[0])
    m = GPT(config_from_dict({"model": {**base, "qk_memory": True, "qk_memory_slots": 3}}).model).eval()
    assert len(model_memories(m)) == 2 and m.num_params() == a.num_params() + 2 * 2 * 3 * 8
    full = m(idx)[0]
    cache = m.new_kv_cache(2)
    parts = [m(idx[:, :10], kv_cache=cache)[0]] + [m(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(10, 16)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-4)
    full.sum().backward()
    assert all(mm.persistent.grad is not None for mm in model_memories(m))


# ---- probes ------------------------------------------------------------------------------------------------------


def test_niah_probe_passes_with_100_keys_in_256_dims():
    r = niah_probe(256, n_haystack=100)
    assert r.passed and r.accuracy >= 0.8 and r.n_keys == 100
    assert r.accuracy > r.cue_only > r.absent                      # the memory improves the cue; without the needle it cannot
    assert abs(r.cue_only - 0.8) < 0.03
    small = niah_probe(32, n_haystack=100)
    assert not small.passed                                        # 100 keys overfill a 32-dim memory


def test_capacity_sweep_follows_the_estimate():
    rows = capacity_sweep(32, ratios=(0.25, 1, 4), trials=16)
    assert [r["n_keys"] for r in rows] == [8, 32, 128]
    for r in rows:
        assert abs(r["cosine"] - r["estimate"]) < 0.04
        assert r["recall_at_1"] > r["chance_recall"]
    assert rows[0]["cosine"] > rows[-1]["cosine"]
    assert expected_cosine(0, 64) == 1.0


def test_probe_model_fields():
    m = GPT(config_from_dict({"model": dict(context_length=16, n_layers=1, d_model=128, n_heads=2, d_ff=32)}).model)
    r = probe_model(m)
    assert set(r) == {"niah_accuracy", "niah_min", "niah_pass", "probe_s"} and r["niah_pass"]


def test_passkey_prompt_and_test_shapes():
    p = passkey_prompt(100, 0.5, "12345")
    assert len(p) == 100 and "The pass key is 12345." in p and p.endswith("The pass key is ")
    assert passkey_prompt(100, 1.0, "1").index("The pass key is 1.") > passkey_prompt(100, 0.0, "1").index("The pass key is 1.")
    with pytest.raises(ValueError, match="too short"): passkey_prompt(30, 0.5, "12345")
    m = GPT(config_from_dict({"model": dict(context_length=96, n_layers=1, d_model=16, n_heads=2, d_ff=32)}).model)
    grid = passkey_test(m, CharTokenizer(), lengths=(80, 90), depths=(0.0, 1.0), trials=2)
    assert grid.shape == (2, 2) and ((grid >= 0) & (grid <= 1)).all()
    with pytest.raises(ValueError, match="context length"): passkey_test(m, CharTokenizer(), lengths=(95,))


# ---- telemetry ---------------------------------------------------------------------------------------------------


def test_spike_detector():
    sd = SpikeDetector(threshold=0.05, decay=0.9, warmup=2)
    assert not sd.update(3.0)["spike"]
    assert not sd.update(3.0 + math.log(1.2))["spike"]             # in warmup: not flagged
    sd.update(3.0)
    r = sd.update(math.log(sd.ema * 1.06))
    assert r["spike"] and abs(r["ppl_delta"] - 0.06) < 1e-9
    ema = sd.ema
    assert sd.update(float("nan"))["spike"] and sd.ema == ema        # a spike does not move the EMA
    s2 = SpikeDetector(); s2.load_state_dict(sd.state_dict()); assert s2.state_dict() == sd.state_dict()
    assert not SpikeDetector(threshold=0, warmup=0).update(1.0)["spike"]


def _tiny(tmp_path, **training):
    return config_from_dict({
        "model": dict(context_length=32, n_layers=1, d_model=32, n_heads=2, d_ff=64, dropout=0.0),
        "training": dict(batch_size=4, max_steps=60, lr=3e-3, **training),
        "eval": dict(eval_interval=60, eval_batches=2, log_interval=5, sample_length=0, probe_interval=20),
        "checkpoint": dict(interval=10, keep_last=3, runs_dir=str(tmp_path)),
        "other": dict(device="cpu", num_threads=1)})


def test_lr_spike_is_rolled_back_and_recorded(tmp_path):
    with inject_lr_spike(at_step=43, factor=300) as fired:
        res = train(_tiny(tmp_path), progress=False, quiet=True)
    assert fired == [43] and res.rollbacks == 1 and res.steps == 60
    recs = read_jsonl(res.run_dir)
    rb = [r for r in recs if "rollback" in r]
    assert len(rb) == 1 and rb[0]["rollback"]["to_step"] == 30 and rb[0]["rollback"]["from_step"] in (45, 50)
    assert any(r.get("spike") for r in recs)
    assert {"ppl", "ppl_ema", "ppl_delta", "spike"} <= set(recs[1])
    assert [r["step"] for r in recs if "niah_accuracy" in r] == [0, 20, 40, 40, 60] or \
        [r["step"] for r in recs if "niah_accuracy" in r][:3] == [0, 20, 40]
    man = json.loads((res.run_dir / "manifest.json").read_text())
    assert man["rollbacks"] == 1 and man["probe"]["probes"] >= 3 and res.probe_overhead is not None
    assert [p.name for p in list_checkpoints(res.run_dir)][-1] == "step-0000060.pt"


def test_nan_loss_rolls_back_or_raises(tmp_path):
    with inject_lr_spike(at_step=25, factor=float("inf")):
        res = train(_tiny(tmp_path), progress=False, quiet=True)
    rb = [r["rollback"] for r in read_jsonl(res.run_dir) if "rollback" in r]
    assert rb and rb[0]["reason"].startswith("training loss is nan") and math.isfinite(res.final_train_loss)
    cfg = _tiny(tmp_path / "b", rollback=False)
    with inject_lr_spike(at_step=25, factor=float("inf")), pytest.raises(FloatingPointError, match="training loss is nan"):
        train(cfg, progress=False, quiet=True)


# ---- Muon --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (48, 96)])
def test_newton_schulz_singular_values_in_band(shape):
    torch.manual_seed(0)
    s = torch.linalg.svdvals(newton_schulz(torch.randn(*shape)))
    assert s.min() > 0.6 and s.max() < 1.25                         # the quintic's band around 1 (not exactly 1)


def test_muon_update_is_orthogonalised():
    torch.manual_seed(0)
    W = torch.randn(64, 32)
    w = W.clone().requires_grad_()
    opt = Muon([{"params": [w], "use_muon": True}], lr=0.01, weight_decay=0.0, adjust_lr="original")
    w.grad = torch.randn(64, 32); opt.step()
    update = (W - w.detach()) / (0.01 * muon_lr_factor(W.shape, "original"))
    s = torch.linalg.svdvals(update)
    assert s.min() > 0.6 and s.max() < 1.25


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon")
@pytest.mark.parametrize("adjust,dtype,tol", [("original", torch.bfloat16, 1e-6), ("match_rms_adamw", torch.bfloat16, 1e-6),
                                              ("match_rms_adamw", torch.float32, 0.02)])
def test_muon_matches_torch(adjust, dtype, tol):
    torch.manual_seed(0)
    W = torch.randn(40, 24)
    a, b = W.clone().requires_grad_(), W.clone().requires_grad_()
    o1 = Muon([{"params": [a], "use_muon": True}], lr=0.02, weight_decay=0.1, adjust_lr=adjust, ns_dtype=dtype)
    o2 = torch.optim.Muon([b], lr=0.02, weight_decay=0.1, adjust_lr_fn=adjust)
    for _ in range(3):
        g = torch.randn(40, 24); a.grad, b.grad = g.clone(), g.clone(); o1.step(); o2.step()
    assert ((a - b).norm() / (W - b).norm()).item() <= tol


def test_muon_adamw_part_matches_torch_adamw():
    torch.manual_seed(0)
    p = torch.randn(10, requires_grad=True); q = p.detach().clone().requires_grad_()
    o1 = Muon([{"params": [p]}], lr=1e-2, weight_decay=0.1)
    o2 = torch.optim.AdamW([q], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(10); p.grad, q.grad = g.clone(), g.clone(); o1.step(); o2.step()
    assert torch.allclose(p, q, atol=1e-6)


def test_muon_from_config_splits_hidden_matrices():
    cfg = config_from_dict({"model": dict(context_length=16, n_layers=2, d_model=16, n_heads=2, d_ff=32),
                            "training": {"optimizer": "muon", "muon_lr": 0.02, "lr": 1e-3}})
    model = GPT(cfg.model)
    opt = make_optimizer(model, cfg.training)
    muon = [n for g in opt.param_groups if g["use_muon"] for n in g["names"]]
    other = [n for g in opt.param_groups if not g["use_muon"] for n in g["names"]]
    assert muon and all(n.endswith("weight") and ("attn" in n or "mlp" in n) for n in muon)
    assert "transformer.wte.weight" in other and "transformer.wpe.weight" in other
    assert all(g["lr_ratio"] == pytest.approx(20.0) for g in opt.param_groups)
    assert all(g["ns_dtype"] == torch.float32 for g in opt.param_groups)   # auto on the CPU
    sd = opt.state_dict(); opt.load_state_dict(sd)                      # checkpointable like any optimizer
    with pytest.raises(ConfigError, match="training.optimizer: muon: muon_groups needs parameter names"):
        build_optimizer([{"params": list(model.parameters()), "weight_decay": 0.0}], cfg.training)
    with pytest.raises(ValueError, match="2-D matrices only"):
        Muon([{"params": [torch.zeros(3, requires_grad=True)], "use_muon": True}])
    assert len(muon_groups(param_groups(model, 0.1))) == 3
