"""Chapter 05's optimizers (the registry behind `training.optimizer`, the learning-rate schedules) and companion
05c's Newton–Schulz and Muon."""
import math
import typing

import pytest
import torch
import torch.nn as nn

from slm.config import ConfigError, TrainConfig, config_from_dict
from slm.model import GPT
from slm.optimizers import Muon, muon_groups, muon_lr_factor, newton_schulz
from slm.training import OPTIMIZERS, lr_at, make_optimizer, param_groups


def test_optimizers_match_the_config_and_build_from_it():
    assert sorted(OPTIMIZERS) == sorted(typing.get_args(TrainConfig.model_fields["optimizer"].annotation))
    model = GPT(config_from_dict({"model": dict(context_length=8, n_layers=1, d_model=8, n_heads=2, d_ff=16)}).model)
    for name, cls in (("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD), ("muon", Muon)):
        opt = make_optimizer(model, config_from_dict({"training": {"optimizer": name}}).training)
        assert type(opt) is cls and [g["weight_decay"] for g in opt.param_groups][:1] == [0.1]
    sgd = make_optimizer(model, config_from_dict({"training": {"optimizer": "sgd", "momentum": 0.5}}).training)
    assert sgd.param_groups[0]["momentum"] == 0.5
    class Fake: optimizer = "lion"; weight_decay = 0.1
    with pytest.raises(ConfigError, match="training.optimizer: unknown optimizer 'lion'"): make_optimizer(model, Fake)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "wsd"])
def test_schedules_warm_up_and_end_where_they_should(schedule):
    tc = config_from_dict({"training": {"lr": 1e-3, "max_steps": 100, "warmup_steps": 10, "lr_schedule": schedule,
                                        "min_lr_ratio": 0.1, "decay_fraction": 0.5}}).training
    lrs = [lr_at(s, tc) for s in range(1, 101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-3 if schedule == "constant" else 1e-4)
    assert all(b <= a + 1e-15 for a, b in zip(lrs[9:], lrs[10:]))          # never rises after warmup
    if schedule == "wsd":
        assert lrs[54] == pytest.approx(1e-3) and lrs[55] < 1e-3             # stable until the last half of the 90 steps


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
    with pytest.raises(ValueError, match="muon_groups needs parameter names"):
        muon_groups([{"params": list(model.parameters()), "weight_decay": 0.0}])
    with pytest.raises(ValueError, match="2-D matrices only"):
        Muon([{"params": [torch.zeros(3, requires_grad=True)], "use_muon": True}])
    assert len(muon_groups(param_groups(model, 0.1))) == 3
