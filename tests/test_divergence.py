"""A run that diverges ends with one line and exit status 2, and keeps its metrics; sizes no machine could hold are
refused before anything is allocated; a model whose logits are not finite is reported in one line when it is sampled
or evaluated. All in-process, on configs/tiny.yaml."""
import json
import math
import time

import pytest
import torch

from conftest import TINY_CONFIG, copy_run, slm_in_process
from slm.config import load_config
from slm.training import LRSpike, list_checkpoints
from slm.loop import DivergenceError, train

QUICK = ["--set", "eval.eval_batches=1", "--set", "eval.sample_length=0"]


def one_line(r) -> str:
    "The one line `slm: error: ...` of a command that exited 2 (asserts it)."
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("slm: error: "), (r.returncode, r.stderr)
    return lines[0]


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def only_run(runs_dir):
    (run,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    return run


def test_lr_50_stops_with_one_line_and_keeps_its_metrics(tmp_path):
    r = slm_in_process("train", TINY_CONFIG, "--no-progress", "--set", "training.lr=50", *QUICK,
                       "--set", f"checkpoint.runs_dir={tmp_path}")
    line = one_line(r)
    run = only_run(tmp_path)
    assert "training diverged at step " in line and ("training loss is nan" in line or "training loss is inf" in line)
    assert "learning rate 50" in line and "last finite loss" in line and "lower training.lr" in line
    assert "warm up longer" in line and "clip the gradients" in line and str(run) in line
    recs = records(run)
    step = int(line.split("training diverged at step ")[1].split(":")[0])
    assert recs[-1]["step"] == step and recs[-1]["diverged"]["lr"] == 50      # the metrics end where the loss did
    finite = [x for x in recs[:-1] if x.get("train_loss") is not None]
    assert finite and all(math.isfinite(x["train_loss"]) for x in finite) and finite[-1]["step"] == step - 1
    shown = float(line.split("last finite loss ")[1].split()[0])
    assert recs[-1]["diverged"]["last_finite_loss"] == pytest.approx(shown, rel=1e-3)
    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == "diverged" and man["diverged"]["step"] == step
    assert (run / "loss_curve.png").stat().st_size > 0
    c = slm_in_process("compare", run, "--plot", tmp_path / "curves.png")             # the run still compares and plots
    assert c.returncode == 0 and run.name in c.stdout and (tmp_path / "curves.png").stat().st_size > 0, c.stderr
    row = next(x for x in c.stdout.splitlines() if x.startswith(run.name))
    assert row.split()[1] == str(step)                                           # its steps: up to the divergence


def test_a_huge_init_std_is_reported_at_step_0(tmp_path):
    r = slm_in_process("train", TINY_CONFIG, "--no-progress", "--set", "model.init_std=1e30", *QUICK,
                       "--set", f"checkpoint.runs_dir={tmp_path}")
    line = one_line(r)
    assert "training diverged at step 0" in line and "lower model.init_std (now 1e+30)" in line
    assert records(only_run(tmp_path))[-1]["step"] == 0


def test_a_huge_weight_decay_says_so(tmp_path):
    r = slm_in_process("train", TINY_CONFIG, "--no-progress", "--set", "training.weight_decay=1e6", *QUICK,
                       "--set", f"checkpoint.runs_dir={tmp_path}")
    line = one_line(r)
    assert "training diverged at step" in line and "lower training.weight_decay" in line


def test_an_update_beyond_float32_is_a_divergence(tmp_path):
    "lr 3.4e37 (found by the property test): AdamW's first step overflows float32 inside torch; one line, exit 2."
    r = slm_in_process("train", TINY_CONFIG, "--no-progress", "--set", "training.lr=3.402823466385288e+37", *QUICK,
                       "--set", f"checkpoint.runs_dir={tmp_path}")
    line = one_line(r)
    assert "training diverged at step 1: the update overflowed float32" in line and "lower training.lr" in line
    assert json.loads((only_run(tmp_path) / "manifest.json").read_text())["status"] == "diverged"


def _tiny_cfg(tmp_path, **training):
    return load_config(TINY_CONFIG, ["eval.eval_batches=1", "eval.sample_length=0", "training.max_steps=30",
                                     "checkpoint.interval=10", f"checkpoint.runs_dir={tmp_path}", "other.run_name=r",
                                     *(f"training.{k}={v}" for k, v in training.items())])


class NaNFrom(LRSpike):
    "A fault that does not go away: every update from `at_step` on uses an infinite learning rate."
    def adjust_lr(self, step, lr):
        if step < self.at_step: return lr
        self.fired.append(step)
        return math.inf


def test_a_nan_that_comes_back_after_a_rollback_stops_the_run(tmp_path):
    with pytest.raises(DivergenceError, match="it came back after a rollback") as e:
        train(_tiny_cfg(tmp_path), progress=False, quiet=True, callbacks=[NaNFrom(at_step=25)])
    recs = records(e.value.run_dir)
    assert [x["rollback"]["to_step"] for x in recs if "rollback" in x] == [10]    # one rollback, then the stop
    assert recs[-1]["step"] == e.value.step == 25 and "diverged" in recs[-1]     # the NaN of step 25, again


@pytest.mark.parametrize("why, kw", [("rollback is off", {"rollback": "false"}),
                                      ("rollbacks are used up", {"max_rollbacks": 0})])
def test_no_rollback_allowed_stops_at_the_nan(tmp_path, why, kw):
    with pytest.raises(DivergenceError, match=why) as e:
        train(_tiny_cfg(tmp_path, **kw), progress=False, quiet=True, callbacks=[LRSpike(25, math.inf)])
    assert e.value.step == 25 and records(e.value.run_dir)[-1]["step"] == 25
    assert list_checkpoints(e.value.run_dir)                                      # the checkpoints before it stay


@pytest.mark.parametrize("key", ["model.d_model", "model.context_length", "model.n_layers", "model.d_ff",
                                 "model.vocab_size", "training.batch_size"])
@pytest.mark.parametrize("value", [2**63, 2**64 + 1, 10**40])
def test_sizes_beyond_64_bits_are_refused_in_one_line(tmp_path, key, value):
    t = time.perf_counter()
    r = slm_in_process("train", TINY_CONFIG, "--no-progress", "--set", f"{key}={value}",
                       "--set", f"checkpoint.runs_dir={tmp_path}")
    line = one_line(r)
    assert f"{key}={value}" in line or f"{key}: " in line, line
    assert time.perf_counter() - t < 20 and not any(tmp_path.iterdir())           # at once, and no run folder


def test_n_heads_of_2_63_is_refused(tmp_path):
    r = slm_in_process("train", TINY_CONFIG, "--set", f"model.n_heads={2**63}", "--set", f"model.d_model={2**63}",
                       "--set", f"checkpoint.runs_dir={tmp_path}")
    assert "model.d_model=9223372036854775808" in one_line(r)


def _nan_run(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "nan-run")
    for p in list_checkpoints(run):
        ck = torch.load(p, weights_only=False)
        for v in ck["model"].values():
            if v.is_floating_point(): v.fill_(math.nan)
        torch.save(ck, p)
    return run


def test_sampling_and_evaluating_a_nan_model_is_one_line(tiny_run, tmp_path):
    run = _nan_run(tiny_run, tmp_path)
    g = slm_in_process("generate", run, "--max-new-tokens", "5")
    assert "logits are NaN or infinite" in one_line(g)
    g0 = slm_in_process("generate", run, "--max-new-tokens", "5", "--temperature", "0")
    assert "logits are NaN or infinite" in one_line(g0)
    e = slm_in_process("evaluate", run)
    assert "logits are NaN or infinite" in one_line(e) and "step-" in one_line(e)
