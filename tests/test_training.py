"""Tests of `slm.training` (chapter 05): the learning-rate schedule, weight-decay groups, gradient accumulation,
the run folder, checkpoints (atomic writes, pruning, corrupt files), exact resume, Ctrl-C and kill -9.

Every run uses a tiny model (1 layer, d_model 32, context 32) on a small generated corpus, on one CPU thread."""
import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from slm.config import ConfigError, config_from_dict, load_config
from slm.config_yaml import save_config
from slm.data import RandomWindows, load_corpus
from slm.model import GPT
import slm.generation  # noqa: F401  (chapter 06 registers the sample written at each evaluation)
from slm.training import (CheckpointError, LRSpike, SpikeDetector, accumulate_gradients, evaluate, list_checkpoints,
                          load_checkpoint, load_run, lr_at, make_optimizer, param_groups, read_jsonl, save_checkpoint,
                          train_step)
from slm.loop import TrainingInterrupted, train

from _corpus import play_text



@pytest.fixture(scope="module")
def root(tmp_path_factory):
    "A folder with a ~35k-character corpus (speaker lines of random words) and room for caches and runs."
    d = tmp_path_factory.mktemp("training")
    (d / "corpus.txt").write_text(play_text(600))
    return d


def make_cfg(root: Path, name: str, **over):
    "A tiny config writing run `name` under root/runs; `over` maps 'section__key' to a value."
    d = {"model": dict(context_length=32, n_layers=1, d_model=32, n_heads=2, d_ff=64, dropout=0.1),
         "training": dict(batch_size=4, grad_accum_steps=2, max_steps=30, lr=3e-3, lr_schedule="cosine", warmup_steps=5),
         "data": dict(source=str(root / "corpus.txt"), cache_dir=str(root / "cache")),
         "eval": dict(eval_interval=10, eval_batches=2, log_interval=5, sample_length=16),
         "checkpoint": dict(interval=10, keep_last=2, runs_dir=str(root / "runs")),
         "other": dict(seed=1, device="cpu", num_threads=1, run_name=name)}
    for k, v in over.items():
        section, key = k.split("__")
        d[section][key] = v
    return config_from_dict(d)


def run_quiet(cfg=None, **kw):
    return train(cfg, progress=False, quiet=True, **kw)


@pytest.fixture(scope="module")
def base(root):
    "The reference: 30 uninterrupted steps."
    return run_quiet(make_cfg(root, "base"))


# ---- pieces ----------------------------------------------------------------------------------------------------

def test_lr_schedule():
    tc = config_from_dict({"training": {"lr": 1e-3, "warmup_steps": 10, "lr_schedule": "cosine", "max_steps": 110,
                                        "min_lr_ratio": 0.1}}).training
    assert lr_at(1, tc) == pytest.approx(1e-4)
    assert lr_at(10, tc) == pytest.approx(1e-3)
    assert lr_at(60, tc) == pytest.approx(0.55e-3)     # half-way through the cosine: mean of lr and min lr
    assert lr_at(110, tc) == pytest.approx(1e-4)
    assert lr_at(500, tc) == pytest.approx(1e-4)
    lrs = [lr_at(s, tc) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))   # monotone decay after warmup
    const = config_from_dict({"training": {"lr": 1e-3}}).training
    assert {lr_at(s, const) for s in (1, 50, 10_000)} == {1e-3}


def test_weight_decay_groups():
    cfg = config_from_dict({"model": dict(context_length=16, n_layers=2, d_model=32, n_heads=2, d_ff=64)})
    model = GPT(cfg.model)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "transformer.h.0.attn.c_attn.weight" in decay["names"] and "transformer.wte.weight" in decay["names"]
    assert "transformer.h.0.attn.c_attn.bias" in no_decay["names"] and "transformer.h.1.ln_2.weight" in no_decay["names"]
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sorted(decay["names"] + no_decay["names"]) == sorted(n for n, _ in model.named_parameters())
    opt = make_optimizer(model, cfg.training)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_accumulation_equals_one_big_batch(root):
    cfg = make_cfg(root, "unused", model__dropout=0.0)
    ids = load_corpus(cfg.data.source, 32, cache=cfg.data.cache_dir).train
    x, y = RandomWindows(ids, 32, batch_size=8, seed=0)()

    def grads_after(k):
        torch.manual_seed(0)
        model = GPT(cfg.model)
        micro = iter([(x[i:i + 8 // k], y[i:i + 8 // k]) for i in range(0, 8, 8 // k)])
        loss = accumulate_gradients(model, lambda: next(micro), k)
        return loss, torch.cat([p.grad.flatten() for p in model.parameters()])

    loss1, g1 = grads_after(1)
    for k in (2, 4, 8):
        loss_k, g_k = grads_after(k)
        assert loss_k == pytest.approx(loss1, abs=1e-5)
        torch.testing.assert_close(g_k, g1, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(g_k * k, g1)        # without the / k the gradient would be k times too big

    # a whole optimizer step: clipping sees the same norm, and the weights end up the same
    def step_with(k):
        torch.manual_seed(0)
        model = GPT(cfg.model)
        opt = make_optimizer(model, cfg.training)
        micro = iter([(x[i:i + 8 // k], y[i:i + 8 // k]) for i in range(0, 8, 8 // k)])
        _, norm = train_step(model, opt, lambda: next(micro), k, lr=1e-2, grad_clip=0.5)
        return norm, torch.cat([p.detach().flatten() for p in model.parameters()])

    (n1, w1), (n4, w4) = step_with(1), step_with(4)
    assert n4 == pytest.approx(n1, rel=1e-5) and n1 > 0.5    # the pre-clip norm is what is reported
    torch.testing.assert_close(w4, w1, rtol=1e-5, atol=1e-6)


@pytest.mark.expensive   # torch.compile
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_compile_trains_the_same_model(root, dtype):
    "`other.compile` changes how the step runs, not what it computes: the same losses and weights as eager, dropout included."
    import torch._dynamo
    import torch._inductor.config as inductor_config
    from slm.training import autocast_context
    cfg = make_cfg(root, "unused", model__dropout=0.1)
    ids = load_corpus(cfg.data.source, 32, cache=cfg.data.cache_dir).train
    amp = autocast_context(torch.device("cpu"), dtype)

    def losses(compile: bool):
        torch.manual_seed(0)
        model = GPT(cfg.model).train()
        opt = make_optimizer(model, cfg.training)
        batches = RandomWindows(ids, 32, batch_size=8, seed=0)
        f = torch.compile(model) if compile else model
        out = [train_step(f, opt, batches, 1, lr=3e-3, grad_clip=1.0, amp=amp)[0] for _ in range(4)]
        return out, torch.cat([p.detach().flatten() for p in model.parameters()])

    eager, w_eager = losses(False)
    torch._dynamo.reset()
    with inductor_config.patch(fallback_random=True):   # the compiled dropout draws its masks from torch's RNG, as eager does
        compiled, w_compiled = losses(True)
    torch._dynamo.reset()
    tol = 1e-4 if dtype == "float32" else 2e-2          # bfloat16: the fused kernels round at other places
    assert eager == pytest.approx(compiled, rel=tol) and eager[-1] < eager[0]
    torch.testing.assert_close(w_compiled, w_eager, rtol=tol, atol=tol)


# ---- the run folder ---------------------------------------------------------------------------------------------

def test_run_folder_contents(base):
    d = base.run_dir
    assert base.steps == 30 and base.run_id == "base"
    assert {"config.yaml", "manifest.json", "metrics.jsonl", "samples.jsonl", "tokenizer.json", "loss_curve.png",
            "checkpoints"} <= {f.name for f in d.iterdir()}
    assert load_config(d / "config.yaml") == make_cfg(d.parent.parent, "base")
    m = json.loads((d / "manifest.json").read_text())
    for key in ("run_id", "git_commit", "git_dirty", "config_hash", "hook_list", "versions", "device", "dtype",
                "start_time", "n_params", "status"):
        assert key in m, key
    assert m["run_id"] == "base" and m["hook_list"] == [] and m["status"] == "finished" and m["final_step"] == 30
    assert m["device"] == "cpu" and m["dtype"] == "float32" and m["n_params"] > 0 and len(m["config_hash"]) == 12
    assert m["git_commit"] is None or len(m["git_commit"]) == 40
    assert set(m["versions"]) >= {"python", "torch", "slm"}
    assert (d / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((d / "tokenizer.json").read_text())["type"] == "char"


def test_metrics_and_samples(base):
    cfg = make_cfg(base.run_dir.parent.parent, "base")
    lines = (base.run_dir / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert [r["step"] for r in recs] == [0, 5, 10, 15, 20, 25, 30]
    for r in recs:
        assert set(r) >= {"step", "train_loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"}
        assert (r["val_loss"] is not None) == (r["step"] % 10 == 0)
        assert r["lr"] == pytest.approx(lr_at(r["step"], cfg.training))
    assert recs[0]["train_loss"] is None and abs(recs[0]["val_loss"] - math.log(99)) < 0.3   # the untrained model
    assert all(r["train_loss"] > 0 and r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in recs[1:])
    assert recs[-1]["train_loss"] < recs[1]["train_loss"]
    assert recs[-1]["tokens"] == 30 * 4 * 2 * 32
    samples = read_jsonl(base.run_dir / "samples.jsonl")
    assert [s["step"] for s in samples] == [0, 10, 20, 30]
    assert all(s["text"].startswith(cfg.eval.sample_prompt) for s in samples)
    assert base.final_val_loss == recs[-1]["val_loss"] and base.best_val_loss == min(r["val_loss"] for r in recs[::2])


def test_checkpoints_pruned_atomic_and_loadable(base):
    ck = base.run_dir / "checkpoints"
    assert [p.name for p in list_checkpoints(base.run_dir)] == ["step-0000020.pt", "step-0000030.pt"]   # keep_last = 2
    assert sorted(p.name for p in ck.iterdir()) == ["best.pt", "step-0000020.pt", "step-0000030.pt"]    # no temp files
    c = load_checkpoint(ck / "step-0000030.pt")
    assert c["step"] == 30 and c["run_id"] == "base"
    for key in ("model", "optimizer", "loss", "perplexity", "timestamp", "config", "rng", "sampler", "tokenizer"):
        assert key in c, key
    assert c["perplexity"] == pytest.approx(math.exp(c["loss"]))
    assert c["val_loss"] == base.final_val_loss
    assert c["config"]["model"]["d_model"] == 32
    torch.load(ck / "step-0000030.pt", weights_only=True)                  # plain data only
    best = load_checkpoint(ck / "best.pt")
    assert best["val_loss"] == base.best_val_loss


def test_load_run(root, base):
    model, tok, cfg = load_run(base.run_dir)
    assert not model.training and tok.vocab_size == 99 and cfg.other.run_name == "base"
    val = load_corpus(cfg.data.source, 32, cache=cfg.data.cache_dir).val
    assert evaluate(model, val, cfg.training.batch_size, cfg.eval.eval_batches) == pytest.approx(base.final_val_loss, abs=1e-6)
    best, _, _ = load_run(base.run_dir, which="best")
    best_step = load_checkpoint(base.run_dir / "checkpoints" / "best.pt")["step"]
    model_c, _, _ = load_run(base.run_dir / "checkpoints" / "step-0000020.pt")
    assert not torch.equal(model_c.transformer.wte.weight, model.transformer.wte.weight)
    if best_step == 30: assert torch.equal(best.transformer.wte.weight, model.transformer.wte.weight)
    with pytest.raises(CheckpointError, match="no such run folder or checkpoint file"):
        load_run(root / "nope")


def test_hooks_are_applied_and_a_bad_one_is_refused_before_the_folder(root):
    "The config's hooks (chapter 04) reach the loop: listed in the manifest, auxiliary losses in metrics.jsonl."
    hooked = {**make_cfg(root, "hooked").model_dump(mode="python"),
              "hooks": {"aux": [{"name": "act_l1", "point": "blocks.*.mlp.hook_post", "params": {"weight": 0.1}}]}}
    r = run_quiet(config_from_dict(hooked))
    assert json.loads((r.run_dir / "manifest.json").read_text())["hook_list"] == [
        {"kind": "aux", "name": "act_l1", "point": "blocks.*.mlp.hook_post", "params": {"weight": 0.1}}]
    assert read_jsonl(r.run_dir)[-1]["aux.act_l1"] > 0
    bad = {**make_cfg(root, "badhook").model_dump(mode="python"), "hooks": {"update": [{"name": "sign", "point": "nothing.*"}]}}
    with pytest.raises(ConfigError, match=r"hooks.update\[0\].point: no parameter matches 'nothing.\*'"):
        run_quiet(config_from_dict(bad))
    assert not (root / "runs" / "badhook").exists()


def test_existing_run_name_is_refused(root, base):
    with pytest.raises(ConfigError, match="other.run_name: run folder .*base already exists"):
        run_quiet(make_cfg(root, "base"))


# ---- resume ----------------------------------------------------------------------------------------------------

def losses(run_dir):
    recs = read_jsonl(run_dir)
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in recs]


def test_resume_is_bitwise_identical(root, base):
    paused = run_quiet(make_cfg(root, "paused"), max_steps=13)          # stop between log steps and checkpoints
    assert paused.steps == 13
    assert [p.name for p in list_checkpoints(paused.run_dir)] == ["step-0000010.pt", "step-0000013.pt"]
    assert json.loads((paused.run_dir / "manifest.json").read_text())["status"] == "paused"
    resumed = run_quiet(resume=paused.run_dir)
    assert resumed.steps == 30
    assert losses(resumed.run_dir) == losses(base.run_dir)                # exact float equality, every line
    assert read_jsonl(resumed.run_dir / "samples.jsonl") == read_jsonl(base.run_dir / "samples.jsonl")
    a = load_checkpoint(base.run_dir / "checkpoints" / "step-0000030.pt")
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "step-0000030.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert resumed.best_val_loss == base.best_val_loss
    m = json.loads((resumed.run_dir / "manifest.json").read_text())
    assert m["status"] == "finished" and m["resumed"][0]["step"] == 13
    # resuming a finished run does nothing
    again = run_quiet(resume=paused.run_dir)
    assert again.steps == 30 and losses(paused.run_dir) == losses(base.run_dir)


def test_time_budget_ends_the_run_and_its_schedule(root):
    "`training.time_budget_s`: the first step past the budget is the last (exact evaluation, checkpoint), wsd has decayed by then, and a resume has nothing to do."
    r = run_quiet(make_cfg(root, "timed", training__max_steps=10**6, training__lr_schedule="wsd", training__time_budget_s=3.0,
                           eval__eval_interval=10**6, checkpoint__interval=10**6))
    recs = read_jsonl(r.run_dir / "metrics.jsonl")
    assert json.loads((r.run_dir / "manifest.json").read_text())["status"] == "finished" and 10 < r.steps < 10**6
    assert recs[-1]["step"] == r.steps and recs[-1]["val_loss"] is not None and recs[-1]["elapsed_s"] >= 3.0
    assert [p.name for p in list_checkpoints(r.run_dir)] == [f"step-{r.steps:07d}.pt"]
    lrs = [x["lr"] for x in recs if x["step"] > 5]                                     # after the warmup
    assert max(lrs) == 3e-3 and lrs[-1] < 0.2 * 3e-3                                   # the peak, then down towards 3e-4
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    again = run_quiet(resume=r.run_dir)
    assert again.steps == r.steps and read_jsonl(r.run_dir / "metrics.jsonl") == recs


@pytest.mark.parametrize("fast", [True, False])
def test_dtype_auto_uses_bfloat16_only_where_it_has_kernels(root, monkeypatch, fast):
    "`other.dtype: auto` trains exactly as bfloat16 where `has_fast_bfloat16` says so and as float32 elsewhere (decision D25), and the manifest says which; an explicit bfloat16 without the kernels warns."
    import slm.run_state, slm.training
    for module in (slm.training, slm.run_state):              # `resolve_dtype` asks in one, `open_run` in the other
        monkeypatch.setattr(module, "has_fast_bfloat16", lambda device: fast)
    def losses(dtype):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = run_quiet(make_cfg(root, f"dtype-{dtype}-{fast}", other__dtype=dtype, training__max_steps=4, eval__log_interval=1,
                                   eval__eval_interval=4, checkpoint__interval=4))
        warned = any("no bfloat16 matmul kernels" in str(w.message) for w in caught)
        dtype_used = json.loads((r.run_dir / "manifest.json").read_text())["dtype"]
        return [x["train_loss"] for x in read_jsonl(r.run_dir / "metrics.jsonl") if x.get("train_loss") is not None], dtype_used, warned
    auto, f32, bf16 = losses("auto"), losses("float32"), losses("bfloat16")
    chosen, other = (bf16, f32) if fast else (f32, bf16)
    assert len(auto[0]) == 4 and auto[0] == chosen[0] and auto[0] != other[0]
    assert auto[1] == ("bfloat16" if fast else "float32") and f32[1] == "float32" and bf16[1] == "bfloat16"
    assert (auto[2], f32[2], bf16[2]) == (False, False, not fast)


@pytest.mark.parametrize("how", ["truncated", "garbage", "flipped", "empty"])
def test_corrupt_checkpoint_gives_one_line_error(tmp_path, base, how):
    good = (base.run_dir / "checkpoints" / "step-0000030.pt").read_bytes()
    for seed in range(10 if how in ("garbage", "flipped") else 1):
        rng = random.Random(seed)
        if how == "truncated": bad = good[:len(good) // 3]
        elif how == "garbage": bad = rng.randbytes(5000)
        elif how == "empty": bad = b""
        else:                  # a few damaged bytes inside the zip archive's central directory or local headers
            bad = bytearray(good)
            for i in rng.sample(range(len(bad) - 2000, len(bad)), 20): bad[i] ^= 0xFF
        p = tmp_path / "step-0000030.pt"
        p.write_bytes(bytes(bad))
        try: load_checkpoint(p)
        except CheckpointError as e:
            msg = str(e)
            assert str(p) in msg and "\n" not in msg and ("truncated or corrupt" in msg or "not an slm checkpoint" in msg), msg
            assert e.__cause__ is None and e.__suppress_context__      # no torch traceback chained on
        else:
            assert how == "flipped"    # flipping bytes can hit only unused padding; the file still loads then


def test_not_a_checkpoint(tmp_path):
    torch.save({"weights": torch.ones(2)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"w\.pt: not an slm checkpoint \(missing format, step, model, optimizer, config\)"):
        load_checkpoint(tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    p = save_checkpoint({"format": 1, "step": 1, "x": torch.arange(3)}, tmp_path / "c.pt")
    before = p.read_bytes()

    def boom(*a, **k): raise OSError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": 1, "step": 2}, p)
    assert p.read_bytes() == before                                       # the old file is untouched
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]              # and no temp file is left


def test_resume_skips_a_corrupt_newest_checkpoint(root, base):
    paused = run_quiet(make_cfg(root, "damaged"), max_steps=20)
    newest = list_checkpoints(paused.run_dir)[-1]
    assert newest.name == "step-0000020.pt"
    newest.write_bytes(newest.read_bytes()[:500])
    with pytest.warns(UserWarning, match=r"step-0000020\.pt: not a readable checkpoint"):
        resumed = run_quiet(resume=paused.run_dir)
    assert json.loads((resumed.run_dir / "manifest.json").read_text())["resumed"][0]["step"] == 10
    assert losses(resumed.run_dir) == losses(base.run_dir)


def test_resume_errors(root, tmp_path):
    with pytest.raises(CheckpointError, match="no such run folder"):
        run_quiet(resume=tmp_path / "missing")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no checkpoints in this run folder"):
        run_quiet(resume=tmp_path / "empty")
    only = tmp_path / "broken" / "checkpoints"
    only.mkdir(parents=True)
    (only / "step-0000010.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match=r"step-0000010\.pt: not a readable checkpoint"):
        run_quiet(resume=tmp_path / "broken")


# ---- Ctrl-C and kill -9 in a real process ----------------------------------------------------------------------

SCRIPT = textwrap.dedent("""
    import sys
    from slm.config import load_config
    from slm.loop import TrainingInterrupted, train
    try:
        train(load_config(sys.argv[1]), progress=False)
    except TrainingInterrupted as e:
        print(e, flush=True)
        sys.exit(130)
""")


def start_training(cfg, tmp_path):
    path = save_config(cfg, tmp_path / f"{cfg.other.run_name}.yaml")
    env = {**os.environ, "SLM_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def wait_for_checkpoints(proc, run_dir: Path, n: int, timeout: float = 60):
    t0 = time.monotonic()
    while len(list_checkpoints(run_dir)) < n:
        if proc.poll() is not None: pytest.fail(f"training exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill(); pytest.fail("no checkpoint appeared in time")
        time.sleep(0.02)


def test_ctrl_c_saves_a_checkpoint_and_resume_matches(root, tmp_path):
    cfg = make_cfg(root, "sigint", training__max_steps=100_000, checkpoint__interval=5, checkpoint__keep_last=3,
                   eval__eval_interval=50)
    proc = start_training(cfg, tmp_path)
    run_dir = root / "runs" / "sigint"
    wait_for_checkpoints(proc, run_dir, 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Ctrl-C: finishing this step" in out and "resume with: slm train --resume" in out
    ckpt_path = Path(out.split("checkpoint saved to ")[1].split(";")[0])
    assert ckpt_path.parent == run_dir / "checkpoints" and ckpt_path.exists()
    step = load_checkpoint(ckpt_path)["step"]
    assert step >= 5 and ckpt_path == list_checkpoints(run_dir)[-1]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "interrupted"
    assert not list((run_dir / "checkpoints").glob(".staged-*"))

    resumed = run_quiet(resume=run_dir, max_steps=step + 7)
    assert resumed.steps == step + 7
    reference = run_quiet(make_cfg(root, "sigint-ref", training__max_steps=100_000, checkpoint__interval=5,
                                   checkpoint__keep_last=3, eval__eval_interval=50), max_steps=step + 7)
    assert losses(run_dir) == losses(reference.run_dir)                  # across processes, still bitwise


def test_kill_9_leaves_only_valid_checkpoints(root, tmp_path):
    cfg = make_cfg(root, "sigkill", training__max_steps=100_000, checkpoint__interval=1, checkpoint__keep_last=3,
                   eval__eval_interval=1000, eval__log_interval=1)
    proc = start_training(cfg, tmp_path)
    run_dir = root / "runs" / "sigkill"
    wait_for_checkpoints(proc, run_dir, 3)
    time.sleep(random.Random(0).uniform(0.05, 0.3))
    proc.kill()                                                           # SIGKILL: no handler, no cleanup
    proc.communicate(timeout=30)
    paths = list_checkpoints(run_dir)
    assert paths
    steps = [load_checkpoint(p)["step"] for p in paths]                  # every .pt file on disk reads fine
    resumed = run_quiet(resume=run_dir, max_steps=max(steps) + 2)
    assert resumed.steps == max(steps) + 2
    assert not list((run_dir / "checkpoints").glob(".staged-*"))
    recs = read_jsonl(run_dir)
    assert [r["step"] for r in recs] == list(range(0, max(steps) + 3))   # metrics cut back to the checkpoint, then continued


# ---- training health: telemetry, spikes and rollback ---------------------------------------------------------------------------------------------------


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
    fault = LRSpike(at_step=43, factor=300)
    res = train(_tiny(tmp_path), progress=False, quiet=True, callbacks=[fault])
    assert fault.fired == [43] and res.rollbacks == 1 and res.steps == 60
    recs = read_jsonl(res.run_dir)
    rb = [r for r in recs if "rollback" in r]
    assert len(rb) == 1 and rb[0]["rollback"]["to_step"] == 30 and rb[0]["rollback"]["from_step"] in (45, 50)
    assert any(r.get("spike") for r in recs)
    assert {"ppl", "ppl_ema", "ppl_delta", "spike"} <= set(recs[1])
    assert not any("niah_accuracy" in r for r in recs)                 # a plain model: the memory probe has nothing to do
    man = json.loads((res.run_dir / "manifest.json").read_text())
    assert man["rollbacks"] == 1 and res.probe_overhead is None
    assert [p.name for p in list_checkpoints(res.run_dir)][-1] == "step-0000060.pt"


def test_nan_loss_rolls_back_or_raises(tmp_path):
    res = train(_tiny(tmp_path), progress=False, quiet=True, callbacks=[LRSpike(at_step=25, factor=float("inf"))])
    rb = [r["rollback"] for r in read_jsonl(res.run_dir) if "rollback" in r]
    assert rb and rb[0]["reason"].startswith("training loss is nan") and math.isfinite(res.final_train_loss)
    cfg = _tiny(tmp_path / "b", rollback=False)
    with pytest.raises(FloatingPointError, match="training loss is nan"):
        train(cfg, progress=False, quiet=True, callbacks=[LRSpike(at_step=25, factor=float("inf"))])




def test_train_from_a_fresh_interpreter_registers_every_chapter(tiny_run, tmp_path):
    """A library user who imports only `slm.loop` gets the command's run: the entry points `slm.plugins` load the
    chapters that register callbacks (06's sample at each evaluation), so the run folder has the same files."""
    code = textwrap.dedent(f"""
        import sys
        from slm.config import load_config
        from slm.loop import train
        assert "slm.generation" not in sys.modules
        cfg = load_config({str(Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml")!r},
                          ["training.max_steps=2", "eval.eval_interval=2", "checkpoint.runs_dir={tmp_path}",
                           "other.run_name=lib"])
        train(cfg, progress=False, quiet=True)
        print(sorted(m for m in sys.modules if m.startswith("slm.")))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "'slm.generation'" in r.stdout and "'slm.memory'" in r.stdout, r.stdout
    for companion in ("slm.optimizers", "slm.runs", "slm.parallel"):   # 05's companions, imported with its modules
        assert f"'{companion}'" in r.stdout, r.stdout
    lib = tmp_path / "lib"
    samples = [json.loads(l) for l in (lib / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [0, 2] and all(s["text"] for s in samples)
    files = lambda d: sorted(p.name for p in d.iterdir() if p.is_file())
    assert files(lib) == files(tiny_run)
