"""Tests of `slm.speed` (the companion 03a): the fused attention kernel, the cheaper dropout mask and the compile guard
compute what chapter 03's plain pieces compute, and importing `slm.model` alone puts them in place."""
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from slm.config import ModelConfig
from slm.model import ATTENTION_PATHS, DROPOUT_MASKS, GPT, CausalSelfAttention, Dropout, causal_attention
from slm.speed import keep_mask16, keep_threshold, sdpa_attention


def tiny(**kw):
    base = dict(vocab_size=99, context_length=16, n_layers=2, d_model=32, n_heads=4, d_ff=64, dropout=0.0)
    return ModelConfig(**{**base, **kw})


def test_the_registries_hold_the_fast_pieces():
    assert ATTENTION_PATHS["sdpa"] is sdpa_attention and ATTENTION_PATHS["explicit"] is causal_attention
    assert DROPOUT_MASKS == {"cpu": keep_mask16}


@pytest.mark.parametrize("T_q,T_k", [(10, 10), (4, 10), (1, 10), (1, 1)])
def test_fused_attention_equals_the_explicit_one(T_q, T_k):
    "A whole sequence, a prefill after cached positions, one new token: the same output up to rounding."
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, T_q, 8), torch.randn(2, 4, T_k, 8), torch.randn(2, 4, T_k, 8)
    (ye, att), (ys, none) = causal_attention(q, k, v), sdpa_attention(q, k, v)
    assert torch.allclose(ye, ys, atol=1e-5) and none is None and att.shape == (2, 4, T_q, T_k)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
def test_both_attention_settings_give_the_same_model(pos):
    idx = torch.randint(0, 99, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    me = GPT(tiny(pos_encoding=pos, attention="explicit", dropout=0.1)).eval()
    ms = GPT(tiny(pos_encoding=pos, attention="sdpa", dropout=0.1)).eval()
    ms.load_state_dict(me.state_dict())
    with torch.no_grad(): assert torch.allclose(me(idx)[0], ms(idx)[0], atol=1e-5)
    me.train(); ms.train()                        # dropout on the CPU: both take the explicit path, the same masks
    torch.manual_seed(3); le = me(idx)[0]
    torch.manual_seed(3); ls = ms(idx)[0]
    assert torch.equal(le, ls)


def test_a_pattern_hook_sends_the_fused_module_down_the_explicit_path():
    torch.manual_seed(0)
    attn = CausalSelfAttention(tiny(attention="sdpa")).eval()
    x = torch.randn(3, 10, 32)
    with torch.no_grad(): y = attn(x)
    seen = []
    h = attn.hook_pattern.register_forward_hook(lambda mod, args, out: seen.append(out))
    with torch.no_grad(): y2 = attn(x)
    h.remove()
    assert seen[0].shape == (3, 4, 10, 10) and torch.allclose(y, y2, atol=1e-5)


def test_fast_dropout_is_dropout():
    "The same statistics as chapter 03's (nn.Dropout's): zeros at rate ~p, mean kept, gradient through survivors only."
    torch.manual_seed(0)
    drop = Dropout(0.1)
    assert keep_threshold(0.1) == 58982
    ones = torch.ones(1000, 1001, requires_grad=True)
    out = drop(ones)
    ref = nn.Dropout(0.1)(torch.ones(1000, 1001))
    zero, zero_ref = (out == 0).float().mean().item(), (ref == 0).float().mean().item()
    assert abs(zero - 0.1) < 0.002 and abs(zero - zero_ref) < 0.003 and abs(out.mean().item() - 1.0) < 0.003
    assert torch.allclose(out.max(), torch.tensor(2 ** 16 / keep_threshold(0.1))) and out.unique().numel() == 2
    out.sum().backward()
    assert torch.equal(ones.grad, out.detach())
    x = ones.detach()
    assert torch.equal(drop.eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)
    assert Dropout(1.0).train()(x).abs().sum().item() == 0.0
    torch.manual_seed(1); a = Dropout(0.3)(torch.ones(7, 9))
    torch.manual_seed(1); assert torch.equal(Dropout(0.3)(torch.ones(7, 9)), a)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"): Dropout(1.5)


def test_check_input_is_never_compiled_and_still_checks():
    assert getattr(GPT.check_input, "_torchdynamo_disable", False) is True
    m = GPT(tiny())
    assert m.check_input(torch.zeros(2, 5, dtype=torch.long)) == (2, 5)
    with pytest.raises(ValueError, match="token id out of range"): m(torch.tensor([[5, 99]]))


def test_importing_the_model_alone_imports_the_companion():
    code = ("import sys; from slm.model import ATTENTION_PATHS, DROPOUT_MASKS\n"
            "print(ATTENTION_PATHS['sdpa'].__name__, DROPOUT_MASKS['cpu'].__name__, 'slm.speed' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "sdpa_attention keep_mask16 True"


def test_training_loads_the_companion():
    "pyproject.toml declares the companion a plugin, so `slm.training.load_plugins` imports it for `train()` too."
    import tomllib
    from pathlib import Path
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["slm.plugins"]["speed"] == "slm.speed"


def test_without_the_registered_mask_dropout_is_chapter_03s(monkeypatch):
    "Chapter 03's plain `Dropout` (no mask registered for the device) draws nn.Dropout's very mask."
    monkeypatch.delitem(DROPOUT_MASKS, "cpu")
    torch.manual_seed(1); a = Dropout(0.3).train()(torch.ones(7, 9))
    torch.manual_seed(1); assert torch.equal(nn.Dropout(0.3)(torch.ones(7, 9)), a)
