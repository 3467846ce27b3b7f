"""Tests of `slm.hooks` (chapter 04): hook points, forward and backward hooks, the cache, update-rule hooks, auxiliary
losses, one spelling for hook points and parameters, the registry and `HookSet` (the config check, hook state and
more hooks are in test_hook_configs.py), and the safety guarantees — identity hooks change nothing (bitwise),
contracts are enforced with errors naming the hook point, hooks never outlive their context, and the pitfalls other
hook libraries shipped (deprecated backward hooks, wrong return types, leaked temporary hooks, gradients dropped from
a cache).

Models are tiny; training runs use a small generated corpus on one CPU thread."""
import json
import random
import re
from pathlib import Path

import pytest
import torch
import yaml
import torch.nn as nn

import slm
from slm.config import (HOOK_KINDS, ConfigError, HooksConfig, ModelConfig, TrainingConfig, apply_overrides, config_diff, config_from_dict, config_hash,
                        hook_list, load_config)
from slm.config_yaml import save_config
from slm.hooks import (AuxLosses, HookError, HookSet, ablate, act_l1, add_hook, add_update_hook, capture_grads,
                       clip_value, find_params, find_points, grad_scale, hooks, identity, param_l2, patch, run_with_cache,
                       scale)
from slm.model import GPT, HookPoint, public_name

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def error_of(fn, *args):
    "The ConfigError raised by fn(*args), checked to be one line."
    with pytest.raises(ConfigError) as info:
        fn(*args)
    assert "\n" not in str(info.value), str(info.value)
    return str(info.value)


def tiny(**kw):
    return ModelConfig(**{**dict(vocab_size=99, context_length=16, n_layers=2, d_model=32, n_heads=4, d_ff=64, dropout=0.0), **kw})


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(tiny())


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 99, (2, 16), generator=g), torch.randint(0, 99, (2, 16), generator=g)


def attached(m):
    return [p.name for p in m.hook_points().values() if p._forward_hooks or p._forward_pre_hooks or p._backward_hooks]


# ---- hook points ----

@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_hook_names_come_from_the_model_also_on_the_meta_device(pos, n_layers):
    cfg = tiny(pos_encoding=pos, n_layers=n_layers)
    names = GPT(cfg).hook_names()
    with torch.device("meta"): assert GPT(cfg).hook_names() == names
    assert len(names) == len(set(names)) == (3 if pos != "rope" else 2) + 15 * n_layers
    assert ("hook_pos_embed" in names) == (pos != "rope")


def test_hook_points_are_reached_in_order_with_documented_shapes(model, batch):
    seen = []
    hs = [p.register_forward_hook(lambda m, a, o: seen.append((m.name, tuple(o.shape)))) for p in model.hook_points().values()]
    model(batch[0])
    for h in hs: h.remove()
    assert [n for n, _ in seen] == model.hook_names()
    shapes = dict(seen)
    assert shapes["hook_pos_embed"] == (16, 32) and shapes["blocks.1.attn.hook_q"] == (2, 4, 16, 8)
    assert shapes["blocks.0.attn.hook_pattern"] == (2, 4, 16, 16) and shapes["blocks.0.mlp.hook_post"] == (2, 16, 64)
    assert sum(p.numel() for hp in model.hook_points().values() for p in hp.parameters()) == 0


def test_hook_points_change_nothing_and_keep_state_dict_keys(model, batch):
    keys = list(model.state_dict())
    assert not any("hook" in k for k in keys)
    not_attention = lambda n: not n.endswith(("hook_pattern", "hook_attn_scores"))   # those switch sdpa to the explicit path
    with torch.no_grad():
        a, _ = model(batch[0])
        with hooks(model, fwd=[(not_attention, identity())], bwd=[(not_attention, identity())]):
            b, _ = model(batch[0])
    assert torch.equal(a, b)


# ---- forward hooks ----

@pytest.mark.parametrize("bad, problem", [
    (lambda a, h: a[:, :-1], "turned a tensor of shape (2, 16, 32) float32 on cpu into shape (2, 15, 32)"),
    (lambda a, h: a.double(), "into shape (2, 16, 32) float64"),
    (lambda a, h: (a,), "returned a tuple; expected None or a Tensor"),
    (lambda a, h: 1.0, "returned a float"),
])
def test_forward_hook_contract_names_the_point(model, batch, bad, problem):
    with hooks(model, fwd=[("blocks.1.hook_resid_mid", bad)]):
        with pytest.raises(HookError) as info:
            model(batch[0])
    msg = str(info.value)
    assert "forward hook <lambda> at blocks.1.hook_resid_mid" in msg and problem in msg, msg
    assert attached(model) == []


def test_unknown_point_suggests_and_nothing_stays_attached(model):
    with pytest.raises(HookError, match=r"no hook point matches 'blocks.0.hook_resid_psot' \(did you mean 'blocks.0.hook_resid_post'\?\)"):
        with hooks(model, fwd=[("hook_embed", identity()), ("blocks.0.hook_resid_psot", identity())]):
            pass
    assert attached(model) == []
    with pytest.raises(HookError):
        find_points(model, lambda n: False)


def test_context_removes_hooks_when_the_body_raises(model, batch):
    with pytest.raises(RuntimeError):
        with hooks(model, fwd=[("blocks.*.hook_resid_post", scale(0.0))], bwd=[("hook_embed", grad_scale(0.0))]):
            assert len(attached(model)) == 3
            raise RuntimeError("boom")
    assert attached(model) == []
    with torch.no_grad():
        logits, _ = model(batch[0])
    assert logits.abs().sum() > 0                       # the zeroing hook is gone


def test_add_hook_handle_is_idempotent_and_a_context_manager(model, batch):
    h = add_hook(model, "hook_embed", scale(2.0))
    assert attached(model) == ["hook_embed"] and h.alive
    h.remove(); h.remove()
    assert attached(model) == [] and not h.alive
    with add_hook(model, "hook_embed", scale(2.0)):
        assert attached(model) == ["hook_embed"]
    assert attached(model) == []


def test_pattern_is_available_on_the_fused_path(batch):
    torch.manual_seed(0)
    m = GPT(tiny(attention="sdpa")).eval()
    with torch.no_grad():
        fused, _ = m(batch[0])
        logits, _, cache = run_with_cache(m, batch[0], names=["blocks.*.attn.hook_pattern", "blocks.0.attn.hook_attn_scores"])
    assert sorted(cache) == ["blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    assert torch.allclose(cache["blocks.1.attn.hook_pattern"].sum(-1), torch.ones(2, 4, 16))
    assert torch.isneginf(cache["blocks.0.attn.hook_attn_scores"][0, 0, 0, 1])       # the causal mask
    assert torch.allclose(logits, fused, atol=1e-5)
    assert attached(m) == []


def test_run_with_cache_returns_only_what_was_asked(model, batch):
    _, _, cache = run_with_cache(model, batch[0], names="blocks.0.mlp.*")
    assert sorted(cache) == ["blocks.0.mlp.hook_post", "blocks.0.mlp.hook_pre"]
    assert not any(t.requires_grad for t in cache.values()) and cache.grads == {}
    with pytest.raises(KeyError, match="is not in this cache"):
        cache["hook_embed"]
    _, _, everything = run_with_cache(model, batch[0])
    assert list(everything) == model.hook_names()


def test_ablate_keeps_the_causal_mask_and_checks_heads(model, batch):
    with torch.no_grad():
        _, _, c = run_with_cache(model, batch[0], names="blocks.0.attn.hook_pattern",
                                 fwd=[("blocks.0.attn.hook_attn_scores", ablate("zero"))])
    pat = c["blocks.0.attn.hook_pattern"][0, 0]
    assert torch.allclose(pat[3, :4], torch.full((4,), 0.25)) and pat[3, 4:].abs().max() == 0   # uniform over the past only
    with pytest.raises(HookError, match="heads only exist at per-head points"):
        add_hook(model, "blocks.0.hook_resid_post", ablate(heads=[0]))
    with pytest.raises(HookError, match=r"the model has heads 0…3"):
        add_hook(model, "blocks.0.attn.hook_z", ablate(heads=[4]))
    assert attached(model) == []
    with torch.no_grad(), add_hook(model, "blocks.0.attn.hook_z", ablate("mean", heads=[1])):
        _, _, c = run_with_cache(model, batch[0], names="blocks.0.attn.hook_z")
    z = c["blocks.0.attn.hook_z"]
    assert torch.allclose(z[:, 1], z[:, 1].mean(dim=(0, 1), keepdim=True).expand_as(z[:, 1]))


def test_patching_the_last_residual_restores_the_clean_logits(model, batch):
    x_clean, x_bad = batch
    with torch.no_grad():
        clean, _, cache = run_with_cache(model, x_clean, names="blocks.1.hook_resid_post")
        with add_hook(model, "blocks.1.hook_resid_post", patch(cache)):
            patched, _ = model(x_bad)
        with add_hook(model, "blocks.1.hook_resid_post", patch(cache, positions=[5])):
            one, _ = model(x_bad)
        bad, _ = model(x_bad)
    assert torch.allclose(patched, clean, atol=1e-6)
    assert torch.allclose(one[:, 5], clean[:, 5], atol=1e-6) and torch.allclose(one[:, 6], bad[:, 6], atol=1e-6)


# ---- backward hooks ----

def test_no_deprecated_backward_hooks_in_the_package():
    src = Path(slm.__file__).parent
    calls = [f"{p.name}:{i}" for p in src.glob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\.register_backward_hook\(", line)]
    assert calls == []


def test_captured_gradients_equal_autograd_at_every_point(model, batch):
    store = {}
    with hooks(model, bwd=[("*", capture_grads(store))]):
        model(*batch)[1].backward()
    _, _, c = run_with_cache(model, *batch, grads=True)
    assert sorted(c.grads) == sorted(store) == sorted(model.hook_names())      # nothing dropped
    for n in store:
        assert torch.allclose(store[n], c.grads[n], atol=1e-7), n
    assert all(p.grad is not None for p in model.parameters())                   # (from the first backward only)


def test_cache_grads_never_drop_a_point_silently(model, batch):
    with pytest.raises(HookError, match="no gradient reached hook_embed"):
        run_with_cache(model, *batch, names=["hook_embed", "ln_final.hook_normalized"], grads=True,
                       fwd=[("blocks.0.hook_resid_post", lambda a, h: a.detach())])
    with pytest.raises(ValueError, match="grads=True needs targets"):
        run_with_cache(model, batch[0], grads=True)
    torch.manual_seed(0)
    sin = GPT(tiny(pos_encoding="sinusoidal"))                                     # a position table without a gradient
    _, _, c = run_with_cache(sin, *batch, names="hook_pos_embed", grads=True)
    assert c.grads["hook_pos_embed"].shape == (16, 32)


@pytest.mark.parametrize("bad, problem", [
    (lambda g, h: (g,), "backward hook <lambda> at blocks.0.hook_resid_post returned a tuple"),
    (lambda g, h: g[0], "turned a tensor of shape (2, 16, 32) float32 on cpu into shape (16, 32)"),
])
def test_backward_hook_wrong_return_names_the_point(model, batch, bad, problem):
    with hooks(model, bwd=[("blocks.0.hook_resid_post", bad)]):
        _, loss = model(*batch)
        with pytest.raises(HookError) as info:
            loss.backward()
    assert problem in str(info.value)
    assert attached(model) == []


def test_grad_scale_stops_and_reverses(model, batch):
    model(*batch)[1].backward()
    plain = model.transformer.wpe.weight.grad.clone()
    model.zero_grad()
    with hooks(model, bwd=[("blocks.0.hook_resid_pre", grad_scale(-1.0))]):
        model(*batch)[1].backward()
    assert torch.allclose(model.transformer.wpe.weight.grad, -plain, atol=1e-7)
    model.zero_grad()
    with hooks(model, bwd=[("blocks.0.hook_resid_pre", grad_scale(0.0))]):
        model(*batch)[1].backward()
    assert model.transformer.wpe.weight.grad.abs().max() == 0
    assert model.transformer.wte.weight.grad.abs().max() > 0                      # tied head still trains it


def test_temporary_backward_hooks_do_not_outlive_their_context(model, batch):
    calls = []
    def zeroing(g, h):
        calls.append(h.name)
        return g * 0
    with hooks(model, bwd=[("blocks.1.hook_resid_post", zeroing)]):
        _, loss = model(*batch)              # graph built inside ...
    loss.backward()                          # ... differentiated outside
    assert calls == [] and model.transformer.wte.weight.grad.abs().sum() > 0
    with pytest.raises(RuntimeError):
        with hooks(model, bwd=[("blocks.1.hook_resid_post", zeroing)]):
            model(*batch)[1].backward()
            raise RuntimeError("crash")
    assert calls == ["blocks.1.hook_resid_post"]
    model(*batch)[1].backward()
    assert calls == ["blocks.1.hook_resid_post"] and attached(model) == []


def test_backward_hooks_are_inert_without_grad(model, batch):
    calls = []
    with torch.no_grad(), hooks(model, bwd=[("*", lambda g, h: calls.append(1))]):
        model(batch[0])
    assert calls == []


# ---- update-rule hooks ----

def grads_after_step(fn, params="*", steps=1):
    torch.manual_seed(0)
    m = GPT(tiny())
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 99, (2, 16), generator=g), torch.randint(0, 99, (2, 16), generator=g)
    h = add_update_hook(opt, m, fn, params)
    for _ in range(steps):
        opt.zero_grad(); m(x, y)[1].backward(); opt.step()
    return {n: p for n, p in m.named_parameters()}, h


def test_update_hook_counts_steps_and_is_removable():
    seen = []
    ps, h = grads_after_step(lambda g, p, t: seen.append(t), "transformer.wte.weight", steps=3)
    assert seen == [1, 2, 3] and h.step == 3
    h.remove()
    assert h._handles == []


def test_update_hook_errors_name_the_parameter():
    with pytest.raises(HookError, match=r"update hook <lambda> at wte.weight turned a tensor of shape \(99, 32\)"):
        grads_after_step(lambda g, p, t: g[:1])
    for typo in ("transformer.h.*.mlp.c_fcc.weight", "blocks.*.mlp.c_fcc.weight", "blocks.9.*"):
        with pytest.raises(HookError, match=re.escape(f"no parameter matches {typo!r}")):
            grads_after_step(identity(), typo)


def test_update_hooks_transform_the_gradient_the_optimizer_sees():
    raw, h = grads_after_step(identity())
    raw = {n: p.grad.clone() for n, p in raw.items()}
    ps, _ = grads_after_step(clip_value(1e-3))
    assert max(p.grad.abs().max().item() for p in ps.values()) == pytest.approx(1e-3)
    ps, _ = grads_after_step(clip_value(0.0), "blocks.1.*")
    assert ps["transformer.h.1.mlp.c_fc.weight"].grad.abs().max() == 0
    assert torch.equal(ps["transformer.h.0.mlp.c_fc.weight"].grad, raw["transformer.h.0.mlp.c_fc.weight"])
    assert torch.equal(ps["transformer.wte.weight"].grad, raw["transformer.wte.weight"])


# ---- one spelling for hook points and parameters ----

@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
def test_hook_point_names_are_where_they_sit(pos):
    m = GPT(tiny(pos_encoding=pos, n_layers=3))
    for path, mod in m.named_modules():
        if isinstance(mod, HookPoint):
            where = f"{path.rpartition('.')[0]}.{mod.local}".lstrip(".") if mod.local else path
            assert mod.name == public_name(where) and m.hook_points()[mod.name] is mod
    assert public_name("transformer.h.2.attn.hook_z") == "blocks.2.attn.hook_z" == m.transformer.h[2].attn.hook_z.name
    assert public_name("transformer.hook_embed") == "hook_embed" and public_name("lm_head.weight") == "lm_head.weight"


def test_two_points_cannot_share_a_name(model):
    model.transformer.h[0].hook_resid_mid.local = "hook_resid_pre"    # a point placed under its neighbour's name
    with pytest.raises(ValueError, match="two hook points are named 'blocks.0.hook_resid_pre'"):
        model.hook_points()


def test_parameters_by_public_name_or_state_dict_key(model):
    new = find_params(model, "blocks.0.*")
    old = find_params(model, "transformer.h.0.*")
    keys = [k for k, p in model.named_parameters() if k.startswith("transformer.h.0.")]
    assert [n for n, _ in new] == [n for n, _ in old] == [public_name(k) for k in keys]
    assert all(a is b for (_, a), (_, b) in zip(new, old))
    assert [n for n, _ in find_params(model, "transformer.wte.weight")] == ["wte.weight"]
    assert [n for n, _ in find_params(model, lambda n: n.startswith("blocks.1.mlp."))] == \
        ["blocks.1.mlp.c_fc.weight", "blocks.1.mlp.c_fc.bias", "blocks.1.mlp.c_proj.weight", "blocks.1.mlp.c_proj.bias"]
    with pytest.raises(HookError, match=re.escape("no parameter matches 'blocks.0.attn.c_atn.weight' "
                                                  "(did you mean 'blocks.0.attn.c_attn.weight'?)")):
        find_params(model, "blocks.0.attn.c_atn.weight")
    with pytest.raises(HookError, match=r"\(did you mean 'transformer\.h\.0\.attn\.c_attn\.weight'\?\)"):
        find_params(model, "transformer.h.0.attn.c_atn.weight")


# ---- auxiliary losses ----

def test_aux_losses_values_training_mode_only_and_metrics(model, batch):
    aux = AuxLosses(model)
    aux.add("aux.act_l1", act_l1(0.5), points="blocks.*.mlp.hook_post")
    aux.add("aux.param_l2", param_l2(1e-3), params="*.c_fc.weight")
    _, _, c = run_with_cache(model, *batch, names="blocks.*.mlp.hook_post")
    total = aux.total()
    l1 = (c["blocks.0.mlp.hook_post"].abs().mean() + c["blocks.1.mlp.hook_post"].abs().mean()) / 2
    l2 = 0.5 * sum(p.pow(2).sum() for n, p in model.named_parameters() if n.endswith("c_fc.weight"))
    assert total.item() == pytest.approx(0.5 * l1.item() + 1e-3 * l2.item(), rel=1e-5)
    assert total.requires_grad
    m = aux.metrics()
    assert m["aux.act_l1"] == pytest.approx(l1.item(), rel=1e-5) and set(m) == {"aux.act_l1", "aux.param_l2"}
    model.eval()
    model(*batch)
    assert aux.pending == {} and aux.metrics() == {}
    aux.remove()
    assert attached(model) == []


# ---- the registry, HookSet and the config ----

def test_hookset_from_yaml_and_its_errors(tmp_path, batch):
    p = tmp_path / "h.yaml"
    p.write_text("model: {context_length: 16, n_layers: 2, d_model: 32, n_heads: 4, d_ff: 64, dropout: 0.0}\n"
                 "hooks:\n  update:\n    - {name: clip_value, params: {limit: 0.001}}\n"
                 "  aux:\n    - {name: act_l1, point: 'blocks.*.mlp.hook_post', params: {weight: 0.1}}\n")
    cfg = load_config(p)
    torch.manual_seed(0)
    m = GPT(cfg.model)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.0)
    with HookSet(cfg, m, opt) as hs:
        assert len(hs) == 2 and hs.hook_list == hook_list(cfg)
        _, loss = m(*batch)
        (loss + hs.aux_loss()).backward()
        opt.step()
        assert max(q.grad.abs().max().item() for q in m.parameters()) == pytest.approx(1e-3)
        assert set(hs.metrics()) == {"aux.act_l1"}
        assert hs.state_dict()["update_steps"] == [1]
    assert attached(m) == [] and opt._optimizer_step_pre_hooks == {}


@pytest.mark.parametrize("section, expected", [
    ({"update": [{"name": "sign", "point": "*.c_fcc.weight"}]}, "hooks.update[0].point: no parameter matches '*.c_fcc.weight'"),
    ({"forward": [{"name": "identity", "point": "hook_embed"}, {"name": "ablate", "point": "blocks.0.attn.hook_z", "params": {"heads": [9]}}]},
     "hooks.forward[1].point: ablate(heads=[9]) at blocks.0.attn.hook_z: the model has heads 0…3"),
    ({"aux": [{"name": "param_l2", "point": "nothing.*"}]}, "hooks.aux[0].point: no parameter matches 'nothing.*'"),
])
def test_hookset_errors_are_one_line_and_leave_nothing_attached(section, expected):
    with pytest.raises(ConfigError) as info:                     # the config check finds it first, when the config loads ...
        config_from_dict({"model": tiny().model_dump(), "hooks": section}, "x.yaml")
    assert str(info.value).startswith("x.yaml: " + expected) and "\n" not in str(info.value)
    m = GPT(tiny())
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ConfigError) as info:                     # ... and HookSet checks a section it is handed directly
        HookSet(HooksConfig.model_validate(section), m, opt)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)
    assert attached(m) == [] and opt._optimizer_step_pre_hooks == {}


def test_ab_configs_differ_only_in_one_hook():
    a, b = load_config(CONFIGS / "ab-baseline.yaml"), load_config(CONFIGS / "ab-act-sparsity.yaml")
    assert [k for k, *_ in config_diff(a, b)] == ["hooks.aux"]
    assert hook_list(a) == [] and [(h["kind"], h["name"]) for h in hook_list(b)] == [("aux", "act_l1")]
    assert config_hash(a) != config_hash(b)



# ---- training with hooks (chapter 05's train) ----

WORDS = "the king queen of and to my lord what is thou art not be love death night day sweet fair good come go hence".split()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("hooks")
    rng = random.Random(0)
    (d / "corpus.txt").write_text("\n".join(f"{rng.choice(['ROMEO', 'JULIET'])}:\n" + " ".join(rng.choice(WORDS) for _ in range(8)) + ".\n"
                                            for _ in range(500)))
    return d


def run_cfg(root, name, hooks_section=None, attention="sdpa", **over):
    d = {"model": dict(context_length=32, n_layers=2, d_model=32, n_heads=2, d_ff=64, dropout=0.1, attention=attention),
         "training": dict(batch_size=4, grad_accum_steps=2, max_steps=20, lr=3e-3),
         "data": dict(source=str(root / "corpus.txt"), cache_dir=str(root / "cache")),
         "eval": dict(eval_interval=10, eval_batches=2, log_interval=5, sample_length=8),
         "checkpoint": dict(interval=10, keep_last=2, runs_dir=str(root / "runs")),
         "other": dict(seed=3, device="cpu", num_threads=1, run_name=name), "hooks": hooks_section or {}}
    for k, v in over.items():
        section, key = k.split("__")
        d[section][key] = v
    return config_from_dict(d)


def losses(run_dir):
    from slm.training import read_jsonl
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in read_jsonl(run_dir)]


def identity_everywhere(points):
    return {"forward": [{"name": "identity", "point": p} for p in points],
            "backward": [{"name": "identity", "point": p} for p in points],
            "update": [{"name": "identity"}],
            "aux": [{"name": "act_l1", "point": "blocks.*.mlp.hook_post", "params": {"weight": 0.0}}]}


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_identity_hooks_give_bitwise_identical_training(root, attention):
    from slm.loop import train
    names = GPT(run_cfg(root, "x").model).hook_names()
    if attention == "sdpa":   # a pattern/score hook moves sdpa to the explicit path (same maths, other rounding)
        names = [n for n in names if not n.endswith(("hook_pattern", "hook_attn_scores"))]
    plain = train(run_cfg(root, f"plain-{attention}", attention=attention), progress=False, quiet=True)
    hooked = train(run_cfg(root, f"ident-{attention}", identity_everywhere(names), attention=attention), progress=False, quiet=True)
    assert losses(hooked.run_dir) == losses(plain.run_dir)
    assert len(json.loads((hooked.run_dir / "manifest.json").read_text())["hook_list"]) == 2 * len(names) + 2


def test_manifest_and_metrics_record_the_hooks(root, tmp_path):
    from slm.training import read_jsonl
    from slm.loop import train
    cfg = run_cfg(root, "hooked", {"update": [{"name": "clip_value", "params": {"limit": 0.01}}],
                                   "aux": [{"name": "act_l1", "point": "blocks.*.mlp.hook_post", "params": {"weight": 0.5}}]})
    p = save_config(cfg, tmp_path / "exp.yaml")                       # the user's YAML file
    r = train(load_config(p), progress=False, quiet=True)
    m = json.loads((r.run_dir / "manifest.json").read_text())
    assert m["hook_list"] == hook_list(cfg) == [
        {"kind": "update", "name": "clip_value", "point": "*", "params": {"limit": 0.01}},
        {"kind": "aux", "name": "act_l1", "point": "blocks.*.mlp.hook_post", "params": {"weight": 0.5}}]
    assert m["config_hash"] == config_hash(cfg) != config_hash(run_cfg(root, "hooked"))
    rows = read_jsonl(r.run_dir)
    logged = [row for row in rows if row["train_loss"] is not None]
    assert logged and all(row["aux.act_l1"] > 0 for row in logged)
    plain = train(run_cfg(root, "unhooked"), progress=False, quiet=True)
    assert "aux.act_l1" not in read_jsonl(plain.run_dir)[-1]
    assert losses(plain.run_dir) != losses(r.run_dir)                 # the hooks did change training


def test_resume_with_hooks_is_exact(root):
    from slm.loop import train
    section = {"update": [{"name": "grad_noise", "params": {"eta": 1e-6}}],
               "aux": [{"name": "act_l1", "point": "blocks.*.mlp.hook_post", "params": {"weight": 0.1}}]}
    full = train(run_cfg(root, "full-h", section, eval__log_interval=3), progress=False, quiet=True)
    paused = train(run_cfg(root, "paused-h", section, eval__log_interval=3), progress=False, quiet=True, max_steps=11)
    resumed = train(resume=paused.run_dir, progress=False, quiet=True)
    from slm.training import read_jsonl
    a, b = read_jsonl(full.run_dir), read_jsonl(resumed.run_dir)
    assert [(r["train_loss"], r.get("aux.act_l1")) for r in a] == [(r["train_loss"], r.get("aux.act_l1")) for r in b]


def test_slm_train_runs_a_hooked_config(root, tmp_path, capsys):
    from slm.__main__ import main
    cfg = run_cfg(root, "cli-hooked", {"aux": [{"name": "act_l2", "point": "hook_embed", "params": {"weight": 1.0}}]},
                  training__max_steps=10, eval__eval_interval=5)
    p = save_config(cfg, tmp_path / "cli.yaml")
    assert main(["train", str(p)]) == 0
    run_dir = root / "runs" / "cli-hooked"
    assert json.loads((run_dir / "manifest.json").read_text())["hook_list"][0]["name"] == "act_l2"
    assert "aux.act_l2" in json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
