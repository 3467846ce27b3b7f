"""Chapter 09: persistent Q-K memory, its hook inside attention, the NIAH probe (on random keys and on a model's own memory),
the probe during training, passkey prompts, the passkey test and its positive control."""
import json

import numpy as np
import pytest
import torch

import slm.generation   # chapter 06: GPT.new_kv_cache
from slm.config import ConfigError, config_from_dict
from slm.hooks import HookSet
from slm.memory import (QKMemory, capacity_sweep, expected_cosine, memory_report, model_keys, model_memories, niah_probe,
                        CopyCircuit, passkey_prompt, passkey_test, probe_model)
from slm.model import GPT
from slm.tokenizer import CharTokenizer
from slm.training import load_run, read_jsonl
from slm.loop import train

MEMORY = {"forward": [{"name": "qk_memory", "point": "blocks.*.attn.hook_q", "params": {"slots": 3}}]}

# ---- the memory --------------------------------------------------------------------------------------------------


def test_reset_gives_the_persistent_state():
    torch.manual_seed(0)
    m = QKMemory(8, n_heads=2, n_persistent=3)
    M_p, n_p = m.persistent_state()
    m.reset(4).write(torch.randn(4, 2, 5, 8))
    m.reset(4)
    assert torch.equal(m.norm_sum, n_p.expand(4, 2))                 # norm_sum == norm_persistent after reset (decision D18)
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


def test_memory_hook_is_off_by_default_and_consistent_with_a_kv_cache():
    base = dict(vocab_size=99, context_length=16, n_layers=2, d_model=16, n_heads=2, d_ff=32, dropout=0.0)
    torch.manual_seed(0); a = GPT(config_from_dict({"model": base}).model)
    torch.manual_seed(0); b = GPT(config_from_dict({"model": base}).model)
    idx = torch.randint(0, 99, (2, 16))
    assert model_memories(a) == [] and torch.equal(a(idx)[0], b(idx)[0])
    cfg = config_from_dict({"model": base, "hooks": MEMORY})
    m = GPT(cfg.model).eval()
    HookSet(cfg, m)
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
    assert r.passed and r.gain_low > 0 and r.n_keys == 100
    assert r.accuracy > r.cue_only > r.absent                      # the memory improves the cue; without the needle it cannot
    assert abs(r.cue_only - 0.8) < 0.03 and abs(r.gain - (r.accuracy - r.cue_only)) < 1e-6
    assert r.gain_low < r.gain < r.gain_high
    small = niah_probe(32, n_haystack=100, trials=64)
    assert not small.passed and small.gain < 0                     # 100 keys overfill a 32-dim memory


class _InertMemory(QKMemory):
    "A memory that does nothing: its read is the cue."
    def read(self, q): return q


def test_niah_probe_fails_a_memory_that_does_nothing():
    r = niah_probe(_InertMemory(256), n_haystack=100, trials=64)
    assert r.gain == 0 and not r.passed                            # it scores the cue's 0.8, and gains nothing
    assert abs(r.accuracy - r.cue_only) < 1e-6 and r.accuracy > 0.75


def test_capacity_sweep_follows_the_estimate():
    rows = capacity_sweep(32, ratios=(0.25, 1, 4), trials=16)
    assert [r["n_keys"] for r in rows] == [8, 32, 128]
    for r in rows:
        assert abs(r["cosine"] - r["estimate"]) < 0.04
        assert r["recall_at_1"] > r["chance_recall"]
    assert rows[0]["cosine"] > rows[-1]["cosine"]
    assert expected_cosine(0, 64) == 1.0


def test_memory_hook_refuses_other_points_and_the_old_key_moved():
    with pytest.raises(ConfigError, match=r"hooks.forward\[0\].point: qk_memory at blocks.0.hook_resid_pre"):
        config_from_dict({"hooks": {"forward": [{"name": "qk_memory", "point": "blocks.0.hook_resid_pre"}]}})
    with pytest.raises(ConfigError, match="model.qk_memory: this key has moved"):
        config_from_dict({"model": {"qk_memory": True}})


def test_probe_reads_the_models_own_memory_and_depends_on_its_weights():
    base = dict(context_length=32, n_layers=2, d_model=64, n_heads=2, d_ff=64, dropout=0.0)
    ids = np.random.default_rng(0).integers(2, 99, 4 * 32 + 1)
    plain = GPT(config_from_dict({"model": base}).model)
    assert probe_model(plain, ids) is None                                     # no memory: no figures
    cfg = config_from_dict({"model": base, "hooks": MEMORY})
    torch.manual_seed(0); m = GPT(cfg.model); HookSet(cfg, m)
    keys = model_keys(m, ids)
    assert sorted(keys) == [0, 1] and keys[0].shape == (2, 4 * 32, 32)
    r = probe_model(m, ids, n_haystack=50)
    assert set(r) == {"niah_gain", "niah_gain_low", "niah_gain_high", "niah_pass", "niah_gain_without_persistent",
                      "niah_accuracy", "niah_min", "niah_cue_only", "probe_s"}
    assert abs(r["niah_cue_only"] - 0.8) < 0.05 and r["niah_min"] <= r["niah_accuracy"]
    assert r["niah_gain_low"] < r["niah_gain"] < r["niah_gain_high"] and r["niah_pass"] == (r["niah_gain_low"] > 0)
    assert abs(r["niah_gain"] - (r["niah_accuracy"] - r["niah_cue_only"])) < 1e-6
    again = probe_model(m, ids, n_haystack=50)
    assert {k: v for k, v in again.items() if k != "probe_s"} == {k: v for k, v in r.items() if k != "probe_s"}   # seeded
    with torch.no_grad():
        for mem in model_memories(m): mem.persistent.mul_(30)
    loud = probe_model(m, ids, n_haystack=50)
    assert abs(loud["niah_accuracy"] - r["niah_accuracy"]) > 1e-3                    # other weights, another result
    assert abs(loud["niah_gain"] - loud["niah_gain_without_persistent"]) > 1e-2      # loud persistent keys change the read
    rows = memory_report(m, ids, n_windows=2)
    assert [row["layer"] for row in rows] == [0, 1] and all(0 <= row["read_over_query"] <= 1 + 1e-5 for row in rows)


def test_probe_runs_during_training_for_memory_models_only(tmp_path):
    def run(name, hooks):
        return train(config_from_dict({
            "model": dict(context_length=32, n_layers=1, d_model=32, n_heads=2, d_ff=64, dropout=0.0),
            "training": dict(batch_size=4, max_steps=20, lr=3e-3),
            "eval": dict(eval_interval=20, eval_batches=2, log_interval=5, sample_length=0, probe_interval=10, probe_keys=30),
            "checkpoint": dict(interval=20, runs_dir=str(tmp_path)), "other": dict(device="cpu", num_threads=1, run_name=name),
            "hooks": hooks}), progress=False, quiet=True)
    mem, plain = run("mem", MEMORY), run("plain", {})
    assert [r["step"] for r in read_jsonl(mem.run_dir) if "niah_accuracy" in r] == [0, 10, 20]
    assert not any("niah_accuracy" in r for r in read_jsonl(plain.run_dir))
    man = json.loads((mem.run_dir / "manifest.json").read_text())
    assert man["probe"]["probes"] == 3 and mem.probe_overhead == man["probe"]["overhead_at_interval"]
    assert "probe" not in json.loads((plain.run_dir / "manifest.json").read_text())
    model, _, _ = load_run(mem.run_dir)                                       # the memory comes back with the model
    assert len(model_memories(model)) == 1
    for a, b in zip(model_memories(model), model_memories(model)): assert torch.equal(a.persistent, b.persistent)


def test_probe_leaves_training_unchanged(tmp_path):
    "The probe draws from its own generator and runs in eval mode: a run with it gives the same losses as without it."
    def run(name, interval):
        return read_jsonl(train(config_from_dict({
            "model": dict(context_length=32, n_layers=1, d_model=32, n_heads=2, d_ff=64, dropout=0.1),
            "training": dict(batch_size=4, max_steps=12, lr=3e-3), "hooks": MEMORY,
            "eval": dict(eval_interval=12, eval_batches=2, log_interval=4, sample_length=0, probe_interval=interval, probe_keys=20),
            "checkpoint": dict(interval=12, runs_dir=str(tmp_path)), "other": dict(device="cpu", num_threads=1, run_name=name)}),
            progress=False, quiet=True).run_dir)
    a, b = run("with-probe", 4), run("without-probe", 0)
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


def test_passkey_prompt_and_test_shapes():
    p = passkey_prompt(100, 0.5, "12345")
    assert len(p) == 100 and "The pass key is 12345." in p and p.endswith("The pass key is ")
    assert passkey_prompt(100, 1.0, "1").index("The pass key is 1.") > passkey_prompt(100, 0.0, "1").index("The pass key is 1.")
    with pytest.raises(ValueError, match="too short"): passkey_prompt(30, 0.5, "12345")
    m = GPT(config_from_dict({"model": dict(context_length=96, n_layers=1, d_model=16, n_heads=2, d_ff=32)}).model)
    grid = passkey_test(m, CharTokenizer(), lengths=(80, 90), depths=(0.0, 1.0), trials=2)
    assert grid.shape == (2, 2) and ((grid >= 0) & (grid <= 1)).all()
    with pytest.raises(ValueError, match="context length"): passkey_test(m, CharTokenizer(), lengths=(95,))
    assert m.training                                              # the test put the model's mode back


def test_the_passkey_test_is_passed_by_a_copy_circuit_and_failed_without_one():
    tok = CharTokenizer()
    lengths, depths = (80, 100, 120), (0.0, 0.5, 1.0)
    assert passkey_test(CopyCircuit(tok.vocab_size, 128), tok, lengths, depths, trials=10).min() == 1.0
    # matching one character only ("the latest space") is a broken copier: the test must see that
    assert passkey_test(CopyCircuit(tok.vocab_size, 128, k=1), tok, lengths, depths, trials=10).mean() < 0.2
    logits, _ = CopyCircuit(tok.vocab_size, 16)(torch.tensor([[5, 6, 7, 5, 6]]))
    assert logits.shape == (1, 5, tok.vocab_size) and logits[0, -1].argmax() == 7     # "5 6" was followed by 7

