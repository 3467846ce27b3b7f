"""Tests of `slm.hook_configs` (the companion 04a): the hooks it adds to chapter 04's registry, the check of a config's
`hooks:` section against the registry and the model, and the hook state a checkpoint keeps."""

import json

import pytest
import torch
import yaml

from slm.config import (HOOK_KINDS, ConfigError, ModelConfig, TrainingConfig, apply_overrides, config_diff,
                        config_from_dict, config_hash, hook_list, load_config)
from slm.config_yaml import save_config
from slm.hooks import HOOKS, HookSet, Positive, add_hook, identity, register_hook, run_with_cache
from slm.hook_configs import annealed_grad_noise, learned_scale, project_tangent, sign, straight_through
from slm.model import GPT, HookPoint
from test_hooks import error_of, grads_after_step, tiny, write   # the helpers of chapter 04's tests


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 99, (2, 16), generator=g), torch.randint(0, 99, (2, 16), generator=g)


# ---- more ready-made hooks ----

def test_straight_through_gradient_is_the_identity():
    x = torch.linspace(-1, 1, 9, requires_grad=True)
    y = straight_through("sign")(x, HookPoint("t"))
    y.sum().backward()
    assert torch.equal(y, torch.sign(x.detach())) and torch.equal(x.grad, torch.ones(9))
    with torch.no_grad():
        assert torch.equal(straight_through("round", 0.5)(x, HookPoint("t")), torch.round(x / 0.5) * 0.5)


def test_more_update_rules_transform_the_gradient_the_optimizer_sees():
    raw, h = grads_after_step(identity())
    raw = {n: p.grad.clone() for n, p in raw.items()}
    ps, _ = grads_after_step(sign(), "blocks.*")
    assert torch.equal(ps["transformer.h.1.mlp.c_fc.weight"].grad, raw["transformer.h.1.mlp.c_fc.weight"].sign())
    assert torch.equal(ps["transformer.wte.weight"].grad, raw["transformer.wte.weight"])
    ps, _ = grads_after_step(project_tangent())
    w = ps["transformer.h.0.attn.c_attn.weight"]
    assert abs((w.grad * w).sum().item()) < 1e-9
    assert torch.equal(ps["transformer.h.0.attn.c_attn.bias"].grad, raw["transformer.h.0.attn.c_attn.bias"])   # zero weight: unchanged


def test_annealed_noise_follows_its_schedule():
    torch.manual_seed(0)
    fn = annealed_grad_noise(eta=0.01, gamma=0.55)
    g = torch.zeros(200_000)
    for t in (1, 100):
        assert fn(g, g, t).std().item() == pytest.approx((0.01 / (1 + t) ** 0.55) ** 0.5, rel=0.02)


def test_one_registry_whose_schemas_come_from_the_factories():
    for kind in HOOK_KINDS:
        assert HOOKS[kind], kind
        for name, spec in HOOKS[kind].items():
            assert spec.kind == kind and spec.name == name and spec.doc
            spec.factory(**spec.schema().model_dump())                            # every default parameter set builds
    assert list(HOOKS["update"]["clip_value"].schema.model_fields) == ["limit"]
    assert HOOKS["update"]["clip_value"].schema.model_fields["limit"].default == 0.01
    assert HOOKS["aux"]["param_l2"].targets == "parameters" and HOOKS["aux"]["act_l1"].targets == "activations"
    assert HOOKS["backward"]["straight_through"].direction == "fwd"


def test_update_hooks_can_attach_after_the_optimizer_is_built(batch):
    "Training builds the hooks first (they may add parameters), then the optimizer, then attaches the update hooks."
    cfg = config_from_dict({"model": tiny().model_dump(), "hooks": {"forward": [{"name": "learned_scale", "point": "hook_embed"}],
                                                                    "update": [{"name": "sign"}]}})
    m = GPT(cfg.model)
    hs = HookSet(cfg, m)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    assert any(n.endswith("hook_gain") for n, _ in m.named_parameters())
    hs.attach_optimizer(opt)
    _, loss = m(*batch); loss.backward(); opt.step()
    assert all(set(q.grad.unique().tolist()) <= {-1.0, 0.0, 1.0} for q in m.parameters() if q.grad is not None)
    with pytest.raises(ValueError, match="attached already"): hs.attach_optimizer(opt)
    hs.remove()
    assert not any(n.endswith("hook_gain") for n, _ in m.named_parameters()) and opt._optimizer_step_pre_hooks == {}


def test_a_learned_scale_starts_as_the_identity_and_trains(batch):
    m = GPT(tiny())
    plain = m(*batch)[1]
    with add_hook(m, "blocks.*.hook_resid_post", learned_scale()):
        _, loss = m(*batch)
        assert torch.equal(loss, plain)
        loss.backward()
        gains = [p for n, p in m.named_parameters() if n.endswith("hook_gain")]
        assert len(gains) == 2 and all(g.grad is not None and g.grad.abs() > 0 for g in gains)


def test_hookset_state_dict_round_trip(batch):
    cfg = config_from_dict({"model": tiny().model_dump(), "hooks": {"update": [{"name": "grad_noise"}],
                                                                    "aux": [{"name": "act_l2", "point": "hook_embed"}]}})
    m = GPT(cfg.model)
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    hs = HookSet(cfg, m, opt)
    for _ in range(2):
        _, loss = m(*batch)
        (loss + hs.aux_loss()).backward(); opt.step()
    state = json.loads(json.dumps(hs.state_dict()))            # plain data: fits a weights_only checkpoint
    hs.remove()
    hs2 = HookSet(cfg, m, opt)
    hs2.load_state_dict(state)
    assert hs2.state_dict() == state and state["update_steps"] == [2] and state["aux_meter"]["aux.act_l2"][1] == 2
    hs2.load_state_dict(None)
    hs2.remove()


def test_a_user_hook_is_usable_from_a_config_without_editing_the_package(batch):
    @register_hook("forward", "test_clamp")
    def clamp(limit: Positive = 1.0):
        "clamp to [-limit, limit]"
        return lambda a, h: a.clamp(-limit, limit)
    try:
        with pytest.raises(ConfigError, match=r"hooks.forward\[0\].params.limit: must be > 0"):
            config_from_dict({"hooks": {"forward": [{"name": "test_clamp", "point": "hook_embed", "params": {"limit": 0}}]}})
        cfg = config_from_dict({"model": tiny().model_dump(),
                                "hooks": {"forward": [{"name": "test_clamp", "point": "blocks.*.hook_resid_post", "params": {"limit": 0.01}}]}})
        m = GPT(cfg.model)
        with HookSet(cfg, m):
            _, _, c = run_with_cache(m, batch[0], names="blocks.1.hook_resid_post")
        assert c["blocks.1.hook_resid_post"].abs().max() <= 0.01
    finally:
        del HOOKS["forward"]["test_clamp"]


def test_hooks_section_resolves_defaults_and_round_trips(tmp_path):
    p = write(tmp_path, "h.yaml", "hooks:\n  update:\n    - {name: clip_value, params: {limit: 0.01}}\n"
                                  "  aux:\n    - name: act_l1\n      point: blocks.*.mlp.hook_post\n")
    cfg = load_config(p)
    assert hook_list(cfg) == [{"kind": "update", "name": "clip_value", "point": "*", "params": {"limit": 0.01}},
                              {"kind": "aux", "name": "act_l1", "point": "blocks.*.mlp.hook_post", "params": {"weight": 0.001}}]
    for minimal in (False, True):
        back = load_config(save_config(cfg, tmp_path / f"back-{minimal}.yaml", minimal=minimal))
        assert back == cfg and config_hash(back) == config_hash(cfg)
    assert [k for k, *_ in config_diff(TrainingConfig(), cfg)] == ["hooks.update", "hooks.aux"]
    # spelling out a default parameter (or the default point) changes nothing
    spelled = config_from_dict({"hooks": {"update": [{"name": "clip_value", "point": "*", "params": {"limit": 0.01}}],
                                          "aux": [{"name": "act_l1", "point": "blocks.*.mlp.hook_post", "params": {"weight": 1e-3}}]}})
    assert config_hash(spelled) == config_hash(cfg)
    assert config_hash(apply_overrides(cfg, ["hooks.update=[{name: clip_value, params: {limit: 0.02}}]"])) != config_hash(cfg)


@pytest.mark.parametrize("hooks, key, problem", [
    ({"update": [{"name": "grad_nosie"}]}, "hooks.update[0].name",
     "unknown update hook 'grad_nosie' (did you mean 'grad_noise'? update hooks: identity, clip_value, grad_noise, project_tangent, sign"),
    ({"forward": [{"name": "zzz", "point": "hook_embed"}]}, "hooks.forward[0].name", "forward hooks: identity, ablate, scale, noise, learned_scale"),
    ({"update": [{"name": "act_l1"}]}, "hooks.update[0].name", "(it belongs under hooks.aux;"),
    ({"update": [{"name": "grad_noise", "params": {"sigma": 1}}]}, "hooks.update[0].params.sigma",
     "unknown parameter of update hook 'grad_noise' (valid: eta, gamma)"),
    ({"update": [{"name": "sign", "params": {"x": 1}}]}, "hooks.update[0].params.x", "(it takes no parameters)"),
    ({"update": [{"name": "clip_value", "params": {"limit": 0}}]}, "hooks.update[0].params.limit", "must be > 0, got 0"),
    ({"update": [{"name": "clip_value", "params": {"limit": "big"}}]}, "hooks.update[0].params.limit", "expected a number, got 'big'"),
    ({"forward": [{"name": "ablate", "point": "hook_embed", "params": {"mode": "one"}}]}, "hooks.forward[0].params.mode",
     "must be one of 'zero' or 'mean', got 'one'"),
    ({"forward": [{"name": "ablate", "point": "hook_embed", "params": {"heads": [0.5]}}]}, "hooks.forward[0].params.heads[0]",
     "expected an integer, got 0.5"),
    ({"forward": [{"name": "scale"}]}, "hooks.forward[0].point", "forward hook 'scale' needs a hook point"),
    ({"aux": [{"name": "act_l1", "point": "blocks.7.mlp.hook_post"}]}, "hooks.aux[0].point",
     "no hook point matches 'blocks.7.mlp.hook_post' (did you mean"),
    ({"backward": [{"name": "grad_scale", "point": "hook_pos_embedd"}]}, "hooks.backward[0].point", "(did you mean 'hook_pos_embed'?"),
    ({"forward": [{"name": "scale", "pont": "hook_embed"}]}, "hooks.forward[0].pont", "unknown key (did you mean 'point'?)"),
    ({"forward": [{"point": "hook_embed"}]}, "hooks.forward[0].name", "required"),
    ({"aux": [{"name": "act_l1", "point": "hook_embed"}, {"name": "act_l1", "point": "hook_embed"}]}, "hooks.aux[1]",
     "a second 'act_l1' term at 'hook_embed'"),
    ({"aux": {"name": "act_l1"}}, "hooks.aux", "expected a list"),
    ({"aux": ["act_l1"]}, "hooks.aux[0]", "expected a mapping of keys"),
    ({"hooks": []}, "hooks.hooks", "unknown key"),
])
def test_bad_hooks_one_line_naming_the_entry(tmp_path, hooks, key, problem):
    p = write(tmp_path, "bad.yaml", yaml.safe_dump({"hooks": hooks}))
    msg = error_of(load_config, p)
    assert msg.startswith(f"{p}: {key}: "), msg
    assert problem in msg, msg


def test_hook_points_depend_on_the_model():
    assert config_from_dict({"model": {"n_layers": 6}, "hooks": {"aux": [{"name": "act_l1", "point": "blocks.5.mlp.hook_post"}]}})
    with pytest.raises(ConfigError, match=r"hooks.forward\[0\].point: no hook point matches 'hook_pos_embed'"):
        config_from_dict({"model": {"pos_encoding": "rope"}, "hooks": {"forward": [{"name": "scale", "point": "hook_pos_embed"}]}})
    # an override that breaks a hook's point is blamed
    msg = error_of(load_config, None, ["hooks.aux=[{name: act_l1, point: blocks.3.mlp.hook_post}]", "model.n_layers=2"])
    assert msg.startswith("--set hooks.aux: hooks.aux[0].point: no hook point matches"), msg


def test_configs_may_name_parameters_in_either_spelling():
    "Configs written before hooks named parameters like hook points keep loading and select the same parameters."
    for point in ("transformer.h.*.mlp.*", "blocks.*.mlp.*"):
        cfg = config_from_dict({"model": tiny().model_dump(), "hooks": {"update": [{"name": "sign", "point": point}]}})
        assert hook_list(cfg)[0]["point"] == point                  # kept as written: the hash does not move
    msg = error_of(config_from_dict, {"hooks": {"update": [{"name": "sign", "point": "transformer.h.*.mlp.c_fcc.*"}]}}, "x.yaml")
    assert msg.startswith("x.yaml: hooks.update[0].point: no parameter matches 'transformer.h.*.mlp.c_fcc.*'"), msg


def test_the_companion_comes_with_chapter_04():
    import subprocess, sys
    code = "import sys, slm.hooks; print('slm.hook_configs' in sys.modules, list(slm.hooks.HOOKS['forward']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "True ['identity', 'ablate', 'scale', 'noise', 'learned_scale']", out
