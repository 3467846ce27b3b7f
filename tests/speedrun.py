"""The 15-minute CPU speedrun: ablation rows at equal wall time, and the chosen config over several seeds.

Every row is a real `slm train` run started as a user starts it (a subprocess), timed from the outside, then scored
exactly over the whole validation split with `slm evaluate` (chapter 07). Results are appended to a JSON file that
the README's records table is generated from. Run on an otherwise idle machine, one run at a time:

    python tests/speedrun.py ablate  --budget 300 --out nbs/results/records.json
    python tests/speedrun.py final configs/speedrun.yaml --budget 900 --seeds 0 1 2 --out nbs/results/speedrun.json

For an ablation the number of steps is set from the variant's measured time per step so that the run (with two
whole-split evaluations and the final one) ends near the budget; the row records the wall time it really took.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BASE = ROOT / "configs" / "fast.yaml"
VAL_TOKENS = 249_354          # the built-in corpus's validation split (chapter 01); sets the cost of one evaluation

# The changes tried, each on top of the config before it if it was kept (kept if it lowers the loss). Changes that
# cannot change the cost of a step (schedule, learning rate) reuse the last kept row's time per step, so that
# their number of steps is not moved by the noise of a short timing.
COST_NEUTRAL = {"training.lr_schedule", "training.lr", "training.decay_fraction", "training.min_lr_ratio", "training.beta2"}
# A row that measures the last kept config again on another machine: the reference (kept by definition) for the rows after it.
REFERENCES = {"the narrow model again, on a second machine: the reference for the rows below",
              "the speedrun config again, on a third machine (no bfloat16 kernels: float32): the reference for the rows below"}
VARIANTS = [
    ("fast.yaml as it is (cosine, AdamW, learned positions, LayerNorm, biases, bfloat16)", {}),
    ("warmup-stable-decay schedule instead of cosine", {"training.lr_schedule": "wsd"}),
    ("RoPE instead of learned positions", {"model.pos_encoding": "rope"}),
    ("RMSNorm and no biases", {"model.norm": "rmsnorm", "model.bias": False}),
    ("Muon for the hidden matrices", {"training.optimizer": "muon"}),
    ("peak learning rate 3e-3 instead of 2e-3", {"training.lr": 3e-3}),
    ("batch 16 instead of 32 (twice the steps)", {"training.batch_size": 16}),
    ("float32 instead of bfloat16 autocast", {"other.dtype": "float32"}),
    ("torch.compile (inductor, compile time inside the budget)", {"other.compile": True}),
    ("untied input and output embeddings", {"model.tie_weights": False}),
    ("wider: d_model 256, 8 heads, d_ff 1024 (fewer steps)", {"model.d_model": 256, "model.n_heads": 8, "model.d_ff": 1024}),
    ("narrower: d_model 128, 4 heads, d_ff 512 (more steps)", {"model.d_model": 128, "model.n_heads": 4, "model.d_ff": 512}),
    ("deeper: 6 layers instead of 4", {"model.n_layers": 6}),
    ("narrower still: d_model 96, 4 heads, d_ff 384", {"model.d_model": 96, "model.n_heads": 4, "model.d_ff": 384}),
    ("untied embeddings again, on the narrow model", {"model.tie_weights": False}),
    # rows 15 on ran on a second machine (twice the bfloat16 matmul peak; each row records its machine's peaks):
    # the narrow model is measured again there, as the reference for the rows after it
    ("the narrow model again, on a second machine: the reference for the rows below", {}),
    ("torch.compile again, on the narrow model", {"other.compile": True}),
    # rows 17 on ran on a third machine, an AVX2-only CPU where other.dtype auto trains in float32 (decision D25)
    ("the speedrun config again, on a third machine (no bfloat16 kernels: float32): the reference for the rows below", {}),
    ("context 256, batch 16 (the same tokens per step)", {"model.context_length": 256, "training.batch_size": 16}),
    ("decay over the last 40 % of the steps, to zero", {"training.decay_fraction": 0.4, "training.min_lr_ratio": 0.0}),
    ("peak learning rate 5e-3 instead of 3e-3", {"training.lr": 5e-3}),
    ("ReLU² instead of GELU in the MLP (Primer)", {"model.activation": "relu2"}),
    ("Adam beta2 0.99 instead of 0.95", {"training.beta2": 0.99}),
    ("Muon for the hidden matrices again, on the compiled narrow model", {"training.optimizer": "muon"}),
    ("2 heads of 64 instead of 4 of 32", {"model.n_heads": 2}),
    ("peak learning rate 2e-3 instead of 3e-3", {"training.lr": 2e-3}),
]


def sets(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items(): out += ["--set", f"{k}={json.dumps(v) if isinstance(v, (bool, type(None))) else v}"]
    return out


def seconds_per_step(config: Path, overrides: dict) -> float:
    "Median seconds per optimizer step of the config with the overrides (companion 07b's `bench_training`)."
    code = ("import json, sys; from slm.config import load_config; from slm.bench import bench_training;"
            "cfg = load_config(sys.argv[1], json.loads(sys.argv[2]));"
            "print(bench_training(cfg, steps=8, warmup=3)['s_per_step'])")
    ov = [f"{k}={json.dumps(v) if isinstance(v, (bool, type(None))) else v}" for k, v in overrides.items()]
    r = subprocess.run([str(BIN / "python"), "-c", code, str(config), json.dumps(ov)], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def machine_peaks() -> dict:
    "This machine's float32 and bfloat16 matmul peaks in GFLOP/s (companion 07b), recorded with each row: rows are comparable on one machine only."
    code = ("import json, torch; from slm.bench import matmul_peak_gflops;"
            "print(json.dumps({d: round(matmul_peak_gflops(dtype=getattr(torch, d))) for d in ('float32', 'bfloat16')}))")
    r = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, check=True)
    return {"matmul_peak_gflops": json.loads(r.stdout.strip().splitlines()[-1])}


def train_and_score(config: Path, overrides: dict, runs: Path, name: str) -> dict:
    "One timed `slm train` run and its exact validation loss."
    t0 = time.perf_counter()
    r = subprocess.run([str(BIN / "slm"), "train", str(config), "--no-progress", *sets(overrides), "--set", f"checkpoint.runs_dir={runs}",
                        "--set", f"other.run_name={name}"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode: raise RuntimeError(r.stderr[-2000:])
    run_dir = runs / name
    ev = json.loads(subprocess.run([str(BIN / "slm"), "evaluate", str(run_dir), "--json"], capture_output=True, text=True, check=True).stdout)
    metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tps = [m["tokens_per_s"] for m in metrics if m.get("tokens_per_s")]
    dtype = json.loads((run_dir / "manifest.json").read_text())["dtype"]     # what other.dtype auto chose
    return {"wall_s": round(wall, 1), "val_loss": round(ev["results"][0]["nats_per_char"], 4), "steps": metrics[-1]["step"], "dtype": dtype,
            "tokens_per_s": round(sorted(tps)[len(tps) // 2]) if tps else None, "run_dir": str(run_dir)}


def ablate(budget: float, out: Path, only: list[int] | None):
    runs = Path(tempfile.mkdtemp(prefix="slm-speedrun-"))
    rows = json.loads(out.read_text()) if out.exists() else []
    order = [c for c, _ in VARIANTS]
    machine = machine_peaks()
    for i, (change, ov) in enumerate(VARIANTS):
        if only and i not in only: continue
        before = [r for r in rows if order.index(r["change"]) < i]          # rows measured earlier in the sequence
        last_kept = next((r for r in reversed(before) if r["kept"]), None)
        trial = {**(last_kept["overrides"] if last_kept else {}), **ov}
        # the faster of two timings: another process slows a timing down, never speeds it up (one slow timing
        # once cut a row to 60 % of its budget)
        sps = last_kept["s_per_step"] if last_kept and ov and set(ov) <= COST_NEUTRAL else min(seconds_per_step(BASE, trial) for _ in range(2))
        bt = trial.get("training.batch_size", 32) * trial.get("model.context_length", 128)    # tokens per step (fast.yaml: 32 x 128)
        eval_s = VAL_TOKENS / bt * sps / 3                       # a forward pass costs about a third of a training step
        steps = int((budget - 10 - 3 * eval_s) / sps)
        ov_run = {**trial, "training.max_steps": steps, "training.warmup_steps": max(1, steps // 16),
                  "eval.eval_interval": max(1, steps // 2), "checkpoint.interval": steps, "eval.eval_batches": None}
        res = train_and_score(BASE, ov_run, runs, f"row{i}")
        row = {"change": change, "overrides": trial, "s_per_step": round(sps, 4), **res}
        row["machine"] = machine
        row["kept"] = last_kept is None or change in REFERENCES or row["val_loss"] < last_kept["val_loss"]
        rows = sorted([r for r in rows if r["change"] != change] + [row], key=lambda r: order.index(r["change"]))
        out.write_text(json.dumps(rows, indent=1) + "\n")
        print(json.dumps(row), flush=True)


def final(config: Path, budget: float, seeds: list[int], out: Path):
    runs = Path(tempfile.mkdtemp(prefix="slm-speedrun-"))
    rows, machine = [], machine_peaks()
    for s in seeds:
        res = train_and_score(config, {"other.seed": s}, runs, f"seed{s}")
        rows.append({"config": str(config.relative_to(ROOT)), "seed": s, "budget_s": budget, **res, "machine": machine})
        out.write_text(json.dumps(rows, indent=1) + "\n")
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ablate"); a.add_argument("--budget", type=float, default=300); a.add_argument("--out", type=Path, required=True)
    a.add_argument("--only", type=int, nargs="*")
    f = sub.add_parser("final"); f.add_argument("config", type=Path); f.add_argument("--budget", type=float, default=900)
    f.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2]); f.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.cmd == "ablate": ablate(args.budget, args.out, args.only)
    else: final(args.config.resolve(), args.budget, args.seeds, args.out)
