"""Tests of `slm.interpretability` (chapter 08): attention patterns are distributions and causal, the logit lens at the
last place is the model's own output, the parts of the residual stream add up to the final residual, shapes, Adam's
moments match the optimizer state, every function leaves the model as it found it (no hooks, same mode), and bad
layer/head indices fail with the valid range.

Models are tiny and untrained (or trained for a few steps on random ids); everything runs on one CPU thread."""
import math

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch

from slm.config import ModelConfig
from slm.interpretability import (adam_moments, as_batch, attention_patterns, check_index, contribution_shares,
                                  contributions, encode, head_stats, lens_loss, logit_lens, moments_by_layer,
                                  moments_over_training, next_char_distribution, param_layer, plot_attention_grid,
                                  plot_contributions, plot_head_stats, plot_logit_lens, plot_moments_over_training,
                                  plot_residual_norms, residual_norms, residual_stream, show_prompt, show_tokens)
from slm.model import GPT
from slm.tokenizer import CharTokenizer
from slm.training import CHECKPOINT_FORMAT, make_optimizer, save_checkpoint
from slm.config import TrainConfig

torch.set_num_threads(1)


def tiny(**kw):
    return ModelConfig(**{**dict(vocab_size=99, context_length=16, n_layers=2, d_model=32, n_heads=4, d_ff=64, dropout=0.0), **kw})


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(tiny()).eval()


@pytest.fixture
def idx():
    g = torch.Generator().manual_seed(1)
    return torch.randint(2, 99, (3, 12), generator=g)


def no_hooks(m):
    return not any(p.has_hooks for p in m.hook_points().values())


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_patterns_are_causal_distributions(attention, idx):
    torch.manual_seed(0)
    m = GPT(tiny(attention=attention))
    p = attention_patterns(m, idx)
    assert p.shape == (2, 3, 4, 12, 12)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3, 4, 12))
    assert p.triu(diagonal=1).abs().max().item() == 0.0
    assert (p >= 0).all()
    # the same as chapter 03's record_attention switch
    m.set_record_attention(True)
    with torch.no_grad(): m(idx)
    torch.testing.assert_close(p, torch.stack([b.attn.last_att for b in m.transformer.h]))
    m.set_record_attention(False)


def test_single_sequence_input(model):
    p = attention_patterns(model, torch.tensor([5, 6, 7, 8]))
    assert p.shape == (2, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="shape"):
        as_batch(model, torch.zeros(1, 2, 3, dtype=torch.long))


def test_logit_lens_last_place_is_the_model(model, idx):
    lens = logit_lens(model, idx, k=3)
    logits, _ = model(idx)
    assert lens["logits"].shape == (5, 3, 12, 99)
    torch.testing.assert_close(lens["logits"][-1], logits)
    assert lens["top_ids"].shape == lens["top_probs"].shape == (5, 3, 12, 3)
    torch.testing.assert_close(lens["top_ids"][-1, ..., 0], logits.argmax(-1))
    ll = lens_loss(lens, idx)
    assert ll.shape == (5,)
    _, loss = model(idx[:, :-1], idx[:, 1:])
    torch.testing.assert_close(ll[-1], loss)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
def test_contributions_sum_to_final_residual(pos, idx):
    torch.manual_seed(0)
    m = GPT(tiny(pos_encoding=pos, dropout=0.2)).train()      # dropout on: the functions must switch it off
    parts, final = contributions(m, idx)
    assert list(parts) == ["embed"] + (["pos"] if pos != "rope" else []) + ["0.attn", "0.mlp", "1.attn", "1.mlp"]
    torch.testing.assert_close(sum(parts.values()), final, atol=1e-5, rtol=1e-5)
    _, stream = residual_stream(m, idx)
    torch.testing.assert_close(stream[-1], final)
    cs = contribution_shares(m, idx)
    assert cs["norm"].shape == cs["share"].shape == (len(parts),)
    assert abs(cs["share"].sum().item() - 1) < 1e-4
    assert m.training and no_hooks(m)                         # mode restored, nothing left attached


def test_residual_norm_shapes(model, idx):
    labels, stream = residual_stream(model, idx)
    assert labels == ["embed", "0.attn", "0.mlp", "1.attn", "1.mlp"]
    assert stream.shape == (5, 3, 12, 32)
    rn = residual_norms(model, idx)
    assert rn["norms"].shape == (5, 12) and rn["mean"].shape == (5,)
    torch.testing.assert_close(rn["norms"][0], stream[0].norm(dim=-1).mean(0))


def test_head_stats_known_patterns():
    T = 5
    prev = torch.zeros(T, T); prev[0, 0] = 1; prev[torch.arange(1, T), torch.arange(T - 1)] = 1
    even = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    s = head_stats(torch.stack([prev, even])[None, None])     # (1, 1, 2, T, T)
    assert s["entropy"].shape == (1, 2)
    torch.testing.assert_close(s["entropy"][0, 0], torch.tensor(0.0))
    torch.testing.assert_close(s["entropy"][0, 1], torch.log(torch.arange(2, T + 1).float()).mean())
    torch.testing.assert_close(s["prev"][0], torch.tensor([1.0, sum(1 / (t + 1) for t in range(1, T)) / (T - 1)]))
    torch.testing.assert_close(s["self"][0, 0], torch.tensor(0.0))
    with pytest.raises(ValueError, match="2 positions"):
        head_stats(torch.ones(1, 1, 1, 1, 1))


def test_no_hooks_left_behind_even_after_errors(model, idx):
    attention_patterns(model, idx); residual_norms(model, idx); logit_lens(model, idx); contributions(model, idx)
    assert no_hooks(model)
    with pytest.raises(ValueError):
        attention_patterns(model, torch.tensor([[1, 2, 500]]))     # out-of-range id: the forward pass fails
    assert no_hooks(model) and not model.training


def _trained_optimizer(steps=3):
    torch.manual_seed(0)
    m = GPT(tiny())
    opt = make_optimizer(m, TrainConfig(lr=1e-3))                  # chapter 05's groups, which carry names
    for _ in range(steps):
        x = torch.randint(0, 99, (2, 16))
        _, loss = m(x, x.roll(-1, 1))
        opt.zero_grad(); loss.backward(); opt.step()
    return m, opt


def test_adam_moments_match_optimizer_state():
    m, opt = _trained_optimizer()
    rows = adam_moments(opt)
    assert len(rows) == len([p for p in m.parameters()])
    named = dict(m.named_parameters())
    for r in rows:
        p, g = named[r["name"]], next(g for g in opt.param_groups if any(q is named[r["name"]] for q in g["params"]))
        st = opt.state[p]
        (b1, b2), eps = g["betas"], g["eps"]
        mh, vh = st["exp_avg"] / (1 - b1 ** 3), st["exp_avg_sq"] / (1 - b2 ** 3)
        assert r["step"] == 3 and r["shape"] == tuple(p.shape) and r["numel"] == p.numel()
        assert math.isclose(r["m_rms"], mh.pow(2).mean().sqrt().item(), rel_tol=1e-5)
        assert math.isclose(r["v_sqrt_rms"], vh.mean().sqrt().item(), rel_tol=1e-5)
        assert math.isclose(r["update_rms"], (mh / (vh.sqrt() + eps)).pow(2).mean().sqrt().item(), rel_tol=1e-5)
    # the same from the saved state dict, and with names taken from the model
    assert [r["m_rms"] for r in adam_moments(opt.state_dict())] == [r["m_rms"] for r in rows]
    plain = torch.optim.Adam(m.parameters(), lr=1e-3)
    x = torch.randint(0, 99, (2, 16)); m(x, x)[1].backward(); plain.step()
    assert {r["name"] for r in adam_moments(plain, m)} == set(named)
    by = moments_by_layer(rows)
    assert set(by) == {"embed", "block 0", "block 1", "final norm"}
    assert sum(d["numel"] for d in by.values()) == sum(p.numel() for p in m.parameters())


def test_adam_moments_bad_input():
    m = GPT(tiny())
    with pytest.raises(ValueError, match="no Adam moments"):
        adam_moments(torch.optim.AdamW(m.parameters()))           # no step taken yet
    with pytest.raises(ValueError, match="betas"):
        adam_moments(torch.optim.SGD(m.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="optimizer or its state_dict"):
        adam_moments([1, 2])


def test_moments_over_training(tmp_path):
    m, opt = _trained_optimizer(2)
    for step in (1, 2):
        save_checkpoint({"format": CHECKPOINT_FORMAT, "step": step, "model": m.state_dict(), "optimizer": opt.state_dict(),
                         "config": {}}, tmp_path / "checkpoints" / f"step-{step:07d}.pt")
    mt = moments_over_training(tmp_path)
    assert mt["steps"] == [1, 2] and mt["m_rms"].shape == (2, len(mt["layers"]))
    with pytest.raises(ValueError, match="no checkpoints"):
        moments_over_training(tmp_path / "nothing")


def test_param_layer():
    assert param_layer("transformer.h.3.attn.c_attn.weight") == "block 3"
    assert param_layer("transformer.wte.weight") == "embed"
    assert param_layer("transformer.ln_f.weight") == "final norm"


def test_bad_layer_and_head_indices(model):
    assert check_index(model, -1, -1) == (1, 3)
    with pytest.raises(IndexError, match=r"layer 2 is out of range: this model has 2 layers, 0…1"):
        check_index(model, layer=2)
    with pytest.raises(IndexError, match=r"head 4 is out of range: this model has 4 heads"):
        check_index(model, head=4)
    tok = CharTokenizer()
    with pytest.raises(IndexError, match="head"):
        show_prompt(model, tok, "abc", layer=0, head=9)
    with pytest.raises(ValueError, match="no tokens"):
        encode(tok, "", model)


def test_encode_crops_to_context(model):
    tok = CharTokenizer()
    ids = encode(tok, "x" * 40 + "end", model)
    assert ids.shape == (1, 16) and tok.decode(ids[0].tolist()).endswith("end")
    dist = next_char_distribution(model, tok, "hello", k=4)
    assert len(dist) == 4 and all(isinstance(c, str) for c, _ in dist)
    assert dist == sorted(dist, key=lambda cp: -cp[1])
    assert show_tokens(tok, tok.encode("a \n")) == ["a", "␣", "↵"]


def test_plots_run(model, idx):
    tok = CharTokenizer()
    plot_attention_grid(attention_patterns(model, idx))
    plot_head_stats(head_stats(attention_patterns(model, idx)))
    plot_residual_norms(residual_norms(model, idx))
    plot_logit_lens(logit_lens(model, idx), tok, idx)
    plot_contributions(contribution_shares(model, idx))
    show_prompt(model, tok, "ROMEO:", 1, 2)
    _, opt = _trained_optimizer(1)
    by = moments_by_layer(adam_moments(opt))
    plot_moments_over_training({"steps": [1], "layers": list(by),
                                **{k: torch.tensor([[by[l][k] for l in by]]) for k in ("m_rms", "v_sqrt_rms", "snr")}})
    plt.close("all")
    assert no_hooks(model)


def test_explorer_builds_without_a_kernel(model):
    pytest.importorskip("ipywidgets")
    from slm.interpretability import explorer
    w = explorer(model, CharTokenizer(), "ROMEO:", layer=1, head=3)
    assert len(w.children) == 3
    with pytest.raises(IndexError):
        explorer(model, CharTokenizer(), "ROMEO:", layer=5)
    plt.close("all")
