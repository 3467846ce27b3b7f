"""Tests of `slm.generation` (chapter 06) on tiny randomly initialised models: the KV cache must never change the text."""
import math
import warnings

import pytest
import torch

from slm.config import ModelConfig
from slm.generation import (check_sampling_params, context_start, generate, generate_text, chat_turn, greedy,
                            apply_temperature, next_token_probs, sample_next, top_k_filter, top_p_filter)
from slm.model import GPT
from slm.tokenizer import CharTokenizer


def tiny_model(seed=0, **kw):
    "A random GPT small enough for tests: vocab 99, context 16, 2 layers, d_model 32 (eval mode)."
    torch.manual_seed(seed)
    base = dict(vocab_size=99, context_length=16, n_layers=2, d_model=32, n_heads=4, d_ff=64, dropout=0.0)
    return GPT(ModelConfig(**{**base, **kw})).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer()


@pytest.fixture(scope="module")
def x():
    return torch.randint(2, 99, (2, 5), generator=torch.Generator().manual_seed(1))


# ---- samplers

def test_greedy_and_temperature():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 3.0, 0.0]])
    assert greedy(logits).tolist() == [1, 0]
    assert torch.equal(apply_temperature(logits, 2.0), logits / 2)
    assert torch.equal(sample_next(logits, temperature=0), greedy(logits))
    with pytest.raises(ValueError, match="temperature > 0"):
        apply_temperature(logits, 0)


def test_top_k_keeps_k_and_ties():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [True, False, False, True]
    assert torch.equal(top_k_filter(logits, 10), logits)
    tied = top_k_filter(torch.tensor([1.0, 3.0, 3.0, 0.0]), 1)
    assert (tied > -math.inf).tolist() == [False, True, True, False]


def test_top_p_smallest_nucleus_keeps_argmax_and_renormalises():
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 2
    p = logits.softmax(-1)
    for top_p in (1e-9, 0.3, 0.9, 0.999):
        q = next_token_probs(logits, top_p=top_p)
        assert torch.allclose(q.sum(-1), torch.ones(4), atol=1e-5)
        assert torch.equal(q.argmax(-1), p.argmax(-1))
        for r in range(4):
            kept = q[r] > 0
            mass = p[r][kept].sum().item()
            assert mass >= top_p - 1e-6 and mass - p[r][kept].min().item() < top_p
            assert torch.allclose(q[r][kept], p[r][kept] / mass, atol=1e-6)
    assert int((next_token_probs(logits, top_p=1e-9) > 0).sum()) == 4      # one token per row
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_sample_next_distribution_and_seed():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(20_000, -1), temperature=0.8, top_k=3, generator=g)
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert torch.allclose(freq, next_token_probs(logits, 0.8, top_k=3), atol=0.015)
    assert freq[3:].sum() == 0
    a = sample_next(logits, generator=torch.Generator().manual_seed(5))
    b = sample_next(logits, generator=torch.Generator().manual_seed(5))
    assert a.dim() == 0 and a == b
    rows = sample_next(logits.expand(3, -1), generator=[torch.Generator().manual_seed(i) for i in range(3)])
    assert rows.tolist() == [sample_next(logits, generator=torch.Generator().manual_seed(i)).item() for i in range(3)]


@pytest.mark.parametrize("kw, msg", [
    (dict(temperature=-1), "temperature must be a finite number >= 0 (0 = greedy), got -1"),
    (dict(temperature=float("nan")), "temperature must be"),
    (dict(temperature="hot"), "temperature must be"),
    (dict(top_k=0), "top_k must be None or an integer >= 1, got 0"),
    (dict(top_k=-3), "top_k must be"),
    (dict(top_k=2.5), "top_k must be"),
    (dict(top_k=True), "top_k must be"),
    (dict(top_p=0), "top_p must be None or a number in (0, 1], got 0"),
    (dict(top_p=1.5), "top_p must be"),
    (dict(top_p=-0.1), "top_p must be"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0, got -1"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be"),
])
def test_invalid_parameters_raise(model, tok, x, kw, msg):
    with pytest.raises(ValueError) as e: check_sampling_params(**kw)
    assert msg in str(e.value)
    sampler_kw = {k: v for k, v in kw.items() if k != "max_new_tokens"}
    if sampler_kw:
        with pytest.raises(ValueError, match=list(kw)[0]): sample_next(torch.zeros(5), **sampler_kw)
    n = kw.get("max_new_tokens", 5)
    with pytest.raises(ValueError, match=list(kw)[0]): generate(model, x, n, **sampler_kw)
    with pytest.raises(ValueError, match=list(kw)[0]): generate_text(model, tok, "ab", n, **sampler_kw)


def test_other_bad_input(model, tok, x):
    with pytest.raises(ValueError, match="crop_to must be"): generate(model, x, 5, crop_to=0)
    with pytest.raises(ValueError, match="crop_to must be"): generate(model, x, 5, crop_to=17)
    with pytest.raises(ValueError, match="prompt 1 is empty"): generate(model, [x[0], x[0, :0]], 5)
    with pytest.raises(ValueError, match="stop must be"): generate(model, x, 5, stop=[[]])
    with pytest.raises(ValueError, match="1 generators for 2 prompts"): generate(model, x, 5, generator=[torch.Generator()])
    with pytest.raises(ValueError, match="shape"): generate(model, x[None], 5)
    with pytest.raises(ValueError, match="shape"): sample_next(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="stop must be"): generate_text(model, tok, "ab", 5, stop=[""])
    with pytest.raises(ValueError, match="seed must be"): generate_text(model, tok, "ab", 5, seed=-2)
    with pytest.raises(ValueError, match="non-empty list"): generate_text(model, tok, [], 5)
    with pytest.raises(ValueError, match="run's own tokenizer"): generate_text(model, CharTokenizer("abc"), "a", 5)


def test_context_start():
    assert [context_start(n, 8, crop_to=8) for n in range(1, 13)] == [0] * 8 + [1, 2, 3, 4]
    assert [context_start(n, 8) for n in range(1, 16)] == [0] * 8 + [5] * 5 + [10] * 2     # default: crop to C // 2 = 4
    for K in range(1, 9):
        for n in range(1, 80):
            w = n - context_start(n, 8, K)
            assert (K if n > 8 else n) <= w <= 8


# ---- the KV cache must not change anything

def test_cached_equals_uncached_greedy_step_by_step(model, x):
    a, la = generate(model, x, 10, temperature=0, use_cache=True, return_logits=True)
    b, lb = generate(model, x, 10, temperature=0, use_cache=False, return_logits=True)
    assert torch.equal(a, b)
    assert la.shape == (2, 10, 99)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)


def test_prefill_equals_token_by_token(model):
    seq = torch.randint(0, 99, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(seq)[0]
        c1 = model.new_kv_cache(2)
        prefill = model(seq, kv_cache=c1)[0]
        c2 = model.new_kv_cache(2)
        parts = [model(seq[:, :7], kv_cache=c2)[0]] + [model(seq[:, t:t + 1], kv_cache=c2)[0] for t in range(7, 16)]
    torch.testing.assert_close(prefill, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_a_prefill_then_one_token_at_a_time_gives_the_full_logits(pos, attention):
    "Chapter 03's model with a `KVCache`: every positional encoding, both attention paths."
    m = tiny_model(pos_encoding=pos, attention=attention)
    seq = torch.randint(0, 99, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = m(seq)[0]
        cache = m.new_kv_cache(batch_size=2)
        parts = [m(seq[:, :5], kv_cache=cache)[0]] + [m(seq[:, t:t + 1], kv_cache=cache)[0] for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 16 and repr(cache) == "KVCache(layers=2, shape=(2, 4, 16, 8), length=16)"


def test_a_cache_that_cannot_go_on_says_why():
    m = tiny_model(pos_encoding="learned")
    cache = m.new_kv_cache(1)
    with torch.no_grad(): m(torch.randint(0, 99, (1, 16)), kv_cache=cache)
    with pytest.raises(ValueError, match="crop the input"): m(torch.tensor([[3]]), kv_cache=cache)
    with pytest.raises(ValueError, match="positions stop at the context length"): m.new_kv_cache(1, max_len=17)
    with pytest.raises(ValueError, match="made for batch size 1, got 2"):
        m(torch.tensor([[3], [4]]), kv_cache=m.new_kv_cache(1))
    mr = tiny_model(pos_encoding="rope")
    cache = mr.new_kv_cache(1, max_len=24)
    with torch.no_grad():
        for t in range(24): mr(torch.tensor([[t + 2]]), kv_cache=cache)
    with pytest.raises(ValueError, match=r"KV cache is full: 24 cached \+ 1 new > max_len=24"):
        mr(torch.tensor([[3]]), kv_cache=cache)
    assert cache.length == 24
    cache.reset()
    assert cache.length == 0


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
@pytest.mark.parametrize("crop_to", [None, 16, 5, 1])
def test_past_context_length_cached_matches_uncached(x, pos, crop_to):
    m = tiny_model(pos_encoding=pos)
    a, la = generate(m, x, 40, temperature=0, crop_to=crop_to, return_logits=True)
    b, lb = generate(m, x, 40, temperature=0, crop_to=crop_to, use_cache=False, return_logits=True)
    assert a.shape == (2, 45)
    assert torch.equal(a, b)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)


def test_exact_window_is_the_naive_sliding_window(model, x):
    ref = x.clone()
    with torch.no_grad():
        for _ in range(30):
            ref = torch.cat([ref, model(ref[:, -16:])[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generate(model, x, 30, temperature=0, crop_to=16), ref)
    assert torch.equal(generate(model, x, 30, temperature=0, crop_to=16, use_cache=False), ref)


def test_seed_reproducible_and_temperature_zero_deterministic(model, tok, x):
    s = [generate(model, x, 20, generator=torch.Generator().manual_seed(k)) for k in (3, 3, 4)]
    assert torch.equal(s[0], s[1]) and not torch.equal(s[0], s[2])
    assert generate_text(model, tok, "ROMEO:", 30, seed=7) == generate_text(model, tok, "ROMEO:", 30, seed=7)
    assert generate_text(model, tok, "ROMEO:", 30, seed=7) != generate_text(model, tok, "ROMEO:", 30, seed=8)
    torch.manual_seed(0); a = generate_text(model, tok, "ROMEO:", 30)
    torch.manual_seed(0); b = generate_text(model, tok, "ROMEO:", 30)
    assert a == b
    drop = tiny_model(dropout=0.5).train()
    assert torch.equal(generate(drop, x, 20, temperature=0), generate(drop, x, 20, temperature=0))
    assert drop.training                                           # the mode is restored


def test_stop_sequences_tokens(model, x):
    full = generate(model, x[:1], 20, temperature=0)[0]
    stop = full[5 + 7:5 + 9].tolist()
    first = next(i for i in range(2, 21) if full[5:5 + i][-2:].tolist() == stop)
    assert torch.equal(generate(model, x[:1], 20, temperature=0, stop=[stop])[0], full[:5 + first])
    # a row that stops early is padded; the other keeps going
    out = generate(model, x, 20, temperature=0, stop=lambda ids: len(ids) == 3 and ids[0] == int(full[5]))
    assert out.shape == (2, 25) and (out[0, 8:] == 0).all()
    assert torch.equal(out[1], generate(model, x[1:], 20, temperature=0)[0])


def test_stop_strings_text(model, tok):
    long = generate_text(model, tok, "To be", 60, seed=3)
    stop = long[20:22]                                            # a string that does occur
    cut = generate_text(model, tok, "To be", 60, seed=3, stop=[stop, "\x00never"])
    assert cut == long[:long.find(stop)] and stop not in cut
    assert generate_text(model, tok, "To be", 60, seed=3, stop=stop, include_stop=True) == long[:long.find(stop) + len(stop)]
    assert generate_text(model, tok, "To be", 60, seed=3, stop=["\x00never"]) == long


def test_batched_equals_individual(model):
    prompts = [torch.randint(2, 99, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 9, 20)]
    for crop_to in (None, 16):
        for temperature in (0, 1.0):
            gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(3)]
            together = generate(model, prompts, 25, temperature, generator=gens(), crop_to=crop_to)
            alone = [generate(model, p, 25, temperature, generator=g, crop_to=crop_to) for p, g in zip(prompts, gens())]
            for t, a in zip(together, alone):
                assert torch.equal(t, a)


def test_batched_text_equals_individual(model, tok):
    prompts = ["ROMEO:\n", "First Citizen:\nBefore we proceed any further", "x"]
    batch = generate_text(model, tok, prompts, 30, seed=10)
    assert batch == [generate_text(model, tok, p, 30, seed=10 + i) for i, p in enumerate(prompts)]
    same = generate_text(model, tok, ["ROMEO:\n"] * 3, 30, seed=0)
    assert len(set(same)) == 3                                     # identical prompts, different samples


def test_unknown_characters_warn_and_empty_prompt(model, tok):
    with pytest.warns(UserWarning, match="outside the vocabulary"):
        text = generate_text(model, tok, "café", 10, seed=0)
    assert len(text) == 10
    assert generate_text(model, tok, "", 20, seed=1) == generate_text(model, tok, "\n", 20, seed=1)
    with pytest.raises(ValueError, match="no newline"):
        generate_text(tiny_model(vocab_size=6), CharTokenizer("abcd"), "", 5)
    assert generate_text(model, tok, "ab", 0) == ""
    assert torch.equal(generate(model, torch.tensor([5, 6]), 0), torch.tensor([5, 6]))


def test_nan_logits_raise_divergence_error(x):
    broken = tiny_model()
    torch.nn.init.constant_(broken.lm_head.weight, float("nan"))        # tied: the embedding too
    for temperature in (1.0, 0.0):
        with pytest.raises(Exception, match="logits are NaN or infinite") as e:
            generate(broken, x, 5, temperature=temperature)
        assert type(e.value).__name__ == "DivergenceError"                # chapter 05's error


def test_streamed_pieces_join_to_the_text(model, tok):
    for kw in (dict(), dict(stop=["\n\n", "RO"], include_stop=True), dict(stop="e")):
        pieces = []
        text = generate_text(model, tok, "JULIET:\n", 60, seed=4, on_text=pieces.append, **kw)
        assert "".join(pieces) == text == generate_text(model, tok, "JULIET:\n", 60, seed=4, **kw)
    with pytest.raises(ValueError, match="single prompt"):
        generate_text(model, tok, ["a", "b"], 10, on_text=print)


def test_chat_turn(model, tok):
    reply, history = chat_turn(model, tok, "", "Hello there", max_new_tokens=40, seed=0)
    assert history.startswith("YOU:\nHello there\n\nHAMLET:\n") and history.endswith(reply + "\n\n")
    assert "\n\n" not in reply
    history = history + "HAMLET:\n\ufffd\n\n"                    # an <UNK> the model produced earlier: no new warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reply2, history2 = chat_turn(model, tok, history, "Again?", max_new_tokens=40, seed=1)
    assert history2.startswith(history)
    with pytest.warns(UserWarning, match="outside the vocabulary"):    # the user's own message is checked
        chat_turn(model, tok, history, "Café?", max_new_tokens=5, seed=1)


@pytest.mark.expensive   # torch.compile
def test_compiled_model_generates_what_the_eager_one_does(model):
    "torch.compile(model, dynamic=True) through `generate` (chapter 06): the same greedy tokens and logits within 1e-5, across a window move and a batch."
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=True)
    prompts = [torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10, 11, 12, 13])]      # two lengths: rows start decoding at different steps
    for idx in (prompts[0], prompts):
        out_e, lg_e = generate(model, idx, 40, temperature=0, return_logits=True)  # 40 > context 16: the window moves
        out_c, lg_c = generate(compiled, idx, 40, temperature=0, return_logits=True)
        if isinstance(idx, list):
            assert all(torch.equal(a, b) for a, b in zip(out_c, out_e))
            for a, b in zip(lg_c, lg_e): torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        else:
            assert torch.equal(out_c, out_e)
            torch.testing.assert_close(lg_c, lg_e, rtol=0, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2             # compiled graphs ran (prefill, decode), not an eager fallback
    gen = [torch.Generator().manual_seed(3) for _ in range(2)]                      # sampling: the same draws from the same logits
    again = [torch.Generator().manual_seed(3) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(generate(compiled, prompts, 30, generator=gen), generate(model, prompts, 30, generator=again)))


def test_top_p_below_float32_range_keeps_the_most_likely_token():
    "top_p 1e-300 (found by the property test) is 0 in float32: the nucleus is still the most likely token, not empty."
    from slm.generation import top_p_filter
    logits = torch.randn(4, 99, generator=torch.Generator().manual_seed(0))
    kept = torch.isfinite(top_p_filter(logits, 1e-300))
    assert kept.sum(-1).tolist() == [1, 1, 1, 1] and kept.float().argmax(-1).tolist() == logits.argmax(-1).tolist()
