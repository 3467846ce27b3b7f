"""configs/quickstart.yaml as one process and as two data-parallel processes with the same global batch, timed.

    python tests/measure_ddp.py --out nbs/results/ddp-quickstart.json

Run on an otherwise idle machine. Each run is started as a user starts it (`slm train`, or `torchrun … -m slm train`),
timed from the outside, and scored exactly over the whole validation split with `slm evaluate`.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def run(name: str, launcher: list[str], batch: int, threads: int, runs: Path) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([*launcher, "train", str(QUICKSTART), "--no-progress", "--set", f"training.batch_size={batch}",
                        "--set", f"other.num_threads={threads}", "--set", f"checkpoint.runs_dir={runs}", "--set", f"other.run_name={name}"],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode: raise RuntimeError(r.stderr[-2000:])
    ev = json.loads(subprocess.run([str(BIN / "slm"), "evaluate", str(runs / name), "--json"], capture_output=True, text=True, check=True).stdout)
    manifest = json.loads((runs / name / "manifest.json").read_text())
    metrics = [json.loads(l) for l in (runs / name / "metrics.jsonl").read_text().splitlines()]
    tps = sorted(m["tokens_per_s"] for m in metrics if m.get("tokens_per_s"))
    return {"global_batch": manifest["global_batch"], "steps": metrics[-1]["step"], "val_loss": round(ev["results"][0]["nats_per_char"], 4),
            "wall_s": round(wall, 1), "tokens_per_s": round(tps[len(tps) // 2])}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    from slm.config import load_config
    batch = load_config(QUICKSTART).training.batch_size
    runs = Path(tempfile.mkdtemp(prefix="slm-ddp-"))
    rows = [{"name": "one process", "layout": "1 × 2", **run("one", [str(BIN / "slm")], batch, 2, runs)},
            {"name": "data parallel", "layout": "2 × 1",
             **run("two", [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "slm"], batch // 2, 1, runs)}]
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(rows, indent=1))
