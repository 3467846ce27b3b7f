"""Chapter 09a: the key→value memory across segments, its training loss and generation, and the passkey test."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slm.config import config_from_dict
from slm.hooks import HookSet
from slm.long_memory import (FACT, KVMemory, commit_segment, curriculum, feature_map, generate_segments, kv_memories,
                             min_distance, passkey_chars, passkey_text, passkey_vs_distance, prompt_length, reset_memory,
                             segment_loss, segment_param_groups, training_batch, train_segments, wilson)
from slm.memory import QKMemory
from slm.model import GPT
from slm.tokenizer import CharTokenizer

BASE = dict(vocab_size=99, context_length=16, n_layers=2, d_model=32, n_heads=4, d_ff=64, dropout=0.0)
KV = {"forward": [{"name": "kv_memory", "point": "blocks.*.attn.hook_z"}]}
FILLER = "".join(chr(c) for c in np.random.default_rng(0).integers(97, 123, 20_000))   # lowercase letters, no digits


def _model(memory: bool, base=BASE, seed=0):
    torch.manual_seed(seed)
    m = GPT(config_from_dict({"model": base}).model)
    if memory: HookSet(config_from_dict({"model": base, "hooks": KV}), m)
    return m


def test_the_read_is_the_weighted_mean_of_every_value_written():
    torch.manual_seed(0)
    ks, vs, q = torch.randn(10, 4), torch.randn(10, 4), torch.randn(4)
    w = feature_map(ks) @ feature_map(q)
    mem = KVMemory(1, 4).write(ks[None, None, :3], vs[None, None, :3]).write(ks[None, None, 3:], vs[None, None, 3:])
    assert torch.allclose(mem.read(q[None, None, None]).flatten(), (w[:, None] * vs).sum(0) / w.sum(), atol=1e-5)
    with pytest.raises(RuntimeError, match="empty"):
        KVMemory(1, 4).read(q[None, None, None])


def test_the_gate_mixes_read_and_attention_per_head_from_its_initial_value():
    read, local = torch.ones(1, 2, 3, 4), torch.zeros(1, 2, 3, 4)
    q = torch.randn(1, 2, 3, 4)
    assert torch.allclose(KVMemory(2, 4).mix(read, local, q), torch.full_like(read, 0.5))       # 0 at init: half each
    mixed = KVMemory(2, 4, gate_init=-3.0).mix(read, local, q)
    assert torch.allclose(mixed, torch.full_like(read, float(torch.sigmoid(torch.tensor(-3.0)))))   # about 5 %
    m = _model(False)
    HookSet(config_from_dict({"model": BASE, "hooks": {"forward": [dict(KV["forward"][0], params={"gate_init": -2.0})]}}), m)
    assert all(torch.equal(g.gate, torch.full((4,), -2.0)) for g in kv_memories(m))


def test_a_query_gate_starts_as_the_scalar_gate_and_then_opens_where_the_query_asks():
    read, local, q = torch.ones(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    mem = KVMemory(2, 4, gate_init=-1.0, query_gate=True)
    assert mem.gate_q.shape == (2, 4)
    assert torch.equal(mem.mix(read, local, q), KVMemory(2, 4, gate_init=-1.0).mix(read, local, q))   # gate_q = 0
    with torch.no_grad(): mem.gate_q.fill_(1.0)
    expected = torch.sigmoid(-1.0 + q.sum(-1, keepdim=True)).expand_as(read)    # g = gate + q·gate_q, per position
    assert torch.allclose(mem.mix(read, local, q), expected)
    m = _model(False)
    HookSet(config_from_dict({"model": BASE, "hooks": {"forward": [dict(KV["forward"][0], params={"query_gate": True})]}}), m)
    assert m.num_params() - _model(False).num_params() == 2 * (4 + 4 * 8)    # per layer: a gate and a d_head vector a head


def test_a_qk_memory_never_brings_back_an_earlier_segments_values_and_a_kv_memory_does():
    torch.manual_seed(0)
    kA, vA, other, kB, vB, qB = (torch.randn(1, 1, 8, 16) for _ in range(6))
    def qk(v):   # v is deliberately unused: a Q-K memory stores keys only
        return F.scaled_dot_product_attention(qB + QKMemory(16).reset(1).write(kA).read(qB), kB, vB, is_causal=True)
    def kv(v):
        mem = KVMemory(1, 16).write(kA, v)
        return mem.mix(mem.read(qB), F.scaled_dot_product_attention(qB, kB, vB, is_causal=True), qB)
    assert torch.equal(qk(vA), qk(other))
    assert (kv(vA) - kv(other)).abs().max() > 0.05


def test_an_empty_memory_is_the_plain_model_and_the_hook_refuses_other_points():
    plain, mem = _model(False), _model(True)
    assert mem.num_params() - plain.num_params() == 2 * 4                  # one gate per head and layer
    idx = torch.randint(2, 99, (2, 16))
    with torch.no_grad():
        assert torch.equal(mem(idx)[0], plain(idx)[0])
    with pytest.raises(ValueError, match="attach it at blocks.\\*.attn.hook_z"):
        config_from_dict({"model": BASE, "hooks": {"forward": [{"name": "kv_memory", "point": "blocks.0.hook_resid_pre"}]}})


def test_gradients_cross_every_segment_boundary_unless_detached():
    m = _model(True)
    doc = torch.randint(2, 99, (2, 3 * 16 + 1))
    def grads():
        reset_memory(m); embs = []
        def keep(module, args, out): out.retain_grad(); embs.append(out)
        h = m.transformer.hook_embed.register_forward_hook(keep)
        for s in range(0, 48, 16):
            _, loss = m(doc[:, s:s + 16], doc[:, s + 1:s + 17]); commit_segment(m)
        h.remove(); loss.backward(); m.zero_grad()
        return [0.0 if e.grad is None else e.grad.norm().item() for e in embs]
    assert all(g > 0 for g in grads())
    for mem in kv_memories(m): mem.detach = True
    assert grads()[:2] == [0.0, 0.0]


def test_segment_loss_carries_the_memory_and_the_cleared_control_does_not():
    m = _model(True)
    doc = torch.randint(2, 99, (2, 4 * 16 + 1))
    with torch.no_grad():
        carried, cleared = segment_loss(m, doc).item(), segment_loss(m, doc, clear_each_segment=True).item()
        reset_memory(m)
        per_window = np.mean([m(doc[:, s:s + 16], doc[:, s + 1:s + 17])[1].item() for s in range(0, 64, 16)])
    assert carried != cleared and abs(cleared - per_window) < 1e-5          # cleared = each window on its own


def test_generation_inside_one_window_is_the_models_own_greedy_decoding():
    plain, mem = _model(False), _model(True)
    prompt = torch.randint(2, 99, (3, 6))
    with torch.no_grad():
        assert torch.equal(generate_segments(mem, prompt, 5), generate_segments(plain, prompt, 5))
        ids = prompt.clone()
        for _ in range(5): ids = torch.cat([ids, plain(ids)[0][:, -1].argmax(-1, keepdim=True)], 1)
        assert torch.equal(generate_segments(plain, prompt, 5), ids[:, 6:])
        assert generate_segments(mem, torch.randint(2, 99, (2, 50)), 20).shape == (2, 20)   # past the window


def test_passkey_prompts_put_the_key_at_the_distance_and_leave_room_for_the_answer():
    rng = np.random.default_rng(0)
    for d in (min_distance(), 64, 200):
        n = prompt_length(d, 64)
        p = passkey_text(FILLER, "905", d, n, rng)
        assert len(p) == n and p[n - d:].startswith("905") and p.endswith("The pass key is ") and n % 64 == 60
    with pytest.raises(ValueError, match="does not fit"):
        passkey_text(FILLER, "905", min_distance() - 1, 300, rng)
    tok = CharTokenizer()
    b = training_batch(tok, FILLER, 16, 8, rng, max_segments=8, passkey_share=1.0)
    assert b.shape[0] == 8 and passkey_chars() <= b.shape[1] - 1 <= 8 * 16
    assert all("The pass key is" in tok.decode(r) for r in b)
    with pytest.raises(ValueError, match=f"needs {passkey_chars()} characters; max_segments·T is 48"):
        training_batch(tok, FILLER, 16, 8, rng, max_segments=3)


def test_training_documents_end_anywhere_in_a_segment_and_some_keys_are_inside_the_window():
    tok, rng, ends, inside = CharTokenizer(), np.random.default_rng(1), set(), 0
    for _ in range(40):
        b = training_batch(tok, FILLER, 64, 5, rng, max_segments=8, passkey_share=1.0)
        ends.add((b.shape[1] - 1) % 64)
        for r in b:
            text = tok.decode(r)
            key_at = text.index(FACT[:FACT.index("{key}")]) + FACT.index("{key}")
            inside += len(text) - 1 - key_at <= 60          # the key in the last 60 inputs: the question's window
    assert len(ends) > 20 and 0.05 < inside / 200 < 0.6, (len(ends), inside)


def test_the_curriculum_starts_inside_the_window_then_mixes_and_lengthens():
    assert [curriculum(d) for d in (0.0, 0.19, 0.2, 0.39)] == [(1, 1.0), (1, 1.0), (2, 1.0), (2, 1.0)]
    assert [curriculum(d)[0] for d in (0.4, 0.61, 0.8, 0.99)] == [3, 6, 8, 8]
    assert {curriculum(d)[1] for d in (0.4, 0.7, 0.99)} == {0.5}
    assert curriculum(0.0, warm=0) == (8, 0.5) and curriculum(0.1, max_segments=4, passkey_share=0.3, warm=0) == (4, 0.3)
    for bad in (-0.1, 0.6):
        with pytest.raises(ValueError, match=f"warm must be between 0 and 0.5, got {bad}"): curriculum(0.3, warm=bad)


def test_the_passkey_test_scores_chance_for_an_untrained_model_and_wilson_bounds_it():
    tok = CharTokenizer()
    rows = passkey_vs_distance(_model(True, dict(BASE, context_length=64)), tok, FILLER, (58, 128), n_prompts=20)
    assert [r["distance"] for r in rows] == [58, 128] and all(r["exact"] == 0 and r["low"] == 0 for r in rows)
    lo, hi = wilson(0, 200)
    assert lo == 0 and 0.01 < hi < 0.02
    lo, hi = wilson(200, 200)
    assert hi == 1 and 0.98 < lo < 0.99


def test_train_segments_lowers_the_loss_within_its_step_limit():
    m = _model(True, dict(BASE, context_length=32))
    log = train_segments(m, CharTokenizer(), FILLER, time_budget_s=120, max_steps=20, warmup_steps=2, log_every=5,
                         batch_size=4, max_segments=4)
    assert [r["step"] for r in log] == [5, 10, 15, 20] and log[-1]["train_loss"] < log[0]["train_loss"]
    assert -(-passkey_chars() // 32) == 2                # a passkey document needs 2 segments of 32: the least
    assert [(r["segments"], r["passkey_share"]) for r in log] == [(2, 1.0), (3, 0.5), (4, 0.5), (4, 0.5)]


def test_no_memory_gate_decays_and_every_other_matrix_does():
    m, hook = _model(False), dict(KV["forward"][0], params={"query_gate": True})
    HookSet(config_from_dict({"model": BASE, "hooks": {"forward": [hook]}}), m)
    groups = segment_param_groups(m, 0.1)
    decayed, undecayed = ({n: p for n, p in zip(g["names"], g["params"])} for g in groups)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert not set(decayed) & set(undecayed) and len(decayed) + len(undecayed) == len(list(m.parameters()))
    gates = {n for n in undecayed if "kv_memory" in n}
    assert len(gates) == 2 * 2 and all(n.endswith((".gate", ".gate_q")) for n in gates)   # 2 layers, gate and gate_q
    assert all(p.dim() >= 2 for p in decayed.values()) and "transformer.wte.weight" in decayed


def test_answer_weights_mark_the_answer_digits_and_weight_the_loss():
    tok, rng = CharTokenizer(), np.random.default_rng(3)
    ids, w = training_batch(tok, FILLER, 16, 6, rng, max_segments=8, passkey_share=1.0, answer_weight=5.0)
    assert w.shape == (ids.shape[0], ids.shape[1] - 1) and (w == 5).sum() == 6 * 3
    for row, wr in zip(ids, w):                                 # the weighted targets are the key's digits
        digits = tok.decode(row[1:][wr == 5])
        assert digits.isdigit() and tok.decode(row).endswith(f"The pass key is {digits}.")
    model = _model(True, BASE)
    assert torch.allclose(segment_loss(model, ids, weights=torch.ones_like(w)), segment_loss(model, ids))
    assert not torch.allclose(segment_loss(model, ids, weights=w), segment_loss(model, ids))
