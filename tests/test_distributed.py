"""Data-parallel training through PyTorch's own launcher: `torchrun … -m slm train` on 2 CPU processes (gloo).

A world of 2 with batch B per process is the same run as one process with batch 2B (the sampler gives the two
processes the two halves of the one-process batch), to float tolerance; a resumed run under torchrun is exact; a
checkpoint of a data-parallel run loads in one process; two "nodes" on 127.0.0.1 rendezvous the standard way."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slm.training import find_checkpoint, read_jsonl

pytestmark = pytest.mark.expensive   # torchrun starts several processes: the expensive group (README)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SLM, TORCHRUN = str(BIN / "slm"), str(BIN / "torchrun")
TINY = ROOT / "configs" / "tiny.yaml"
STEPS = ["--set", "training.max_steps=8", "--set", "eval.eval_interval=4", "--set", "eval.eval_batches=3",
         "--set", "checkpoint.interval=4", "--set", "eval.log_interval=1", "--set", "eval.sample_length=0"]


def env_for(tmp_path) -> dict:
    return {**os.environ, "SLM_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "SLM_DIST_TIMEOUT": "120"}


def train(tmp_path, name, *args, nproc=1, launcher=None, timeout=300):
    "`slm train` (or `torchrun --standalone --nproc_per_node=nproc -m slm train`) of configs/tiny.yaml into tmp_path/runs/name."
    cmd = launcher or ([TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m", "slm"] if nproc > 1 else [SLM])
    r = subprocess.run([*cmd, "train", str(TINY), "--no-progress", *STEPS, "--set", f"checkpoint.runs_dir={tmp_path / 'runs'}",
                        "--set", f"other.run_name={name}", "--set", "other.num_threads=1", *map(str, args)],
                       capture_output=True, text=True, timeout=timeout, env=env_for(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r, tmp_path / "runs" / name


def losses(run_dir):
    recs = read_jsonl(run_dir / "metrics.jsonl")
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in recs]


def weights(run_dir):
    _, _, ckpt = find_checkpoint(run_dir)
    return ckpt["model"]


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    "A world-2 run with batch 4 per process, and the one-process run with batch 8."
    tmp = tmp_path_factory.mktemp("ddp")
    r2, ddp = train(tmp, "ddp", "--set", "training.batch_size=4", nproc=2)
    _, single = train(tmp, "single", "--set", "training.batch_size=8")
    return tmp, r2, ddp, single


def test_world_of_two_matches_one_process_with_the_double_batch(world2):
    _, r2, ddp, single = world2
    a, b = losses(ddp), losses(single)
    assert [s for s, *_ in a] == [s for s, *_ in b] == sorted({s for s, *_ in b})
    for (step, ta, va), (_, tb, vb) in zip(a, b):
        if ta is not None: assert ta == pytest.approx(tb, rel=1e-5, abs=1e-6), step
        if va is not None: assert va == pytest.approx(vb, rel=1e-5, abs=1e-6), step
    wa, wb = weights(ddp), weights(single)
    assert wa.keys() == wb.keys() and not any(k.startswith("module.") for k in wa)        # the unwrapped model
    for k in wa: torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)
    m = json.loads((ddp / "manifest.json").read_text())
    assert m["world_size"] == 2 and m["global_batch"] == 8 and m["status"] == "finished"
    assert json.loads((single / "manifest.json").read_text())["global_batch"] == 8
    assert r2.stdout.count("run folder:") == 1                                       # only rank 0 prints


def test_only_rank_0_writes_the_run_folder(world2):
    tmp, _, ddp, _ = world2
    assert sorted(p.name for p in (tmp / "runs").iterdir()) == ["ddp", "single"]
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["best.pt", "step-0000004.pt", "step-0000008.pt"]
    steps = [r["step"] for r in read_jsonl(ddp / "metrics.jsonl")]
    assert steps == sorted(set(steps))                                                # each line once, not once per rank


def test_a_data_parallel_checkpoint_loads_in_one_process(world2):
    tmp, _, ddp, _ = world2
    r = subprocess.run([SLM, "generate", str(ddp), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--seed", "1"],
                       capture_output=True, text=True, timeout=120, env=env_for(tmp))
    assert r.returncode == 0 and r.stdout.startswith("ROMEO:"), r.stderr


def test_resume_under_torchrun_is_exact(world2, tmp_path):
    _, _, ddp, _ = world2
    _, half = train(tmp_path, "half", "--set", "training.batch_size=4", "--set", "training.max_steps=4", nproc=2)
    cfg = half / "config.yaml"
    cfg.write_text(cfg.read_text().replace("max_steps: 4", "max_steps: 8"))
    r = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "slm", "train", "--resume", str(half), "--no-progress"],
                       capture_output=True, text=True, timeout=300, env=env_for(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert [l[1:] for l in losses(half)] == [l[1:] for l in losses(ddp)]            # bit for bit
    for k, v in weights(ddp).items(): assert torch.equal(weights(half)[k], v), k


def test_resume_with_another_world_size_is_refused(world2, tmp_path):
    _, _, ddp, _ = world2
    run_dir = tmp_path / "copy"
    shutil.copytree(ddp, run_dir)
    r = subprocess.run([SLM, "train", "--resume", str(run_dir), "--no-progress"], capture_output=True, text=True, timeout=120,
                       env=env_for(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"slm: error: {run_dir / 'checkpoints' / 'step-0000008.pt'}: written by a run with "
                                             "2 process(es); resume it with the same number (now 1), e.g. torchrun --nproc_per_node=2"]


def test_agree_gives_every_process_the_same_decisions(tmp_path):
    "`DataParallel.agree` (companion 05e): the mean loss, stop if any process must, and the longest clock, the same on every process (what keeps the learning rate and the last step of a time-budgeted run the same everywhere)."
    script = tmp_path / "agree.py"
    script.write_text("import os, sys\nfrom pathlib import Path\nfrom slm.parallel import DataParallel\n"     # one file per rank:
                      "r = int(os.environ['RANK'])\nd = DataParallel(r, int(os.environ['WORLD_SIZE']), r)\nd.setup('cpu')\n"  # their stdout interleaves
                      "Path(sys.argv[1], f'rank{r}.txt').write_text(repr(d.agree(1.0 + 2 * r, r == 1, 10.0 + 3 * r)))\n"
                      "import torch.distributed as td\ntd.barrier(); td.destroy_process_group()\n")   # a clean exit: without it gloo sometimes aborts the process at exit
    p = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)], capture_output=True, text=True,
                       timeout=120, env=env_for(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["(2.0, True, 13.0)"] * 2


def test_a_time_budget_ends_a_data_parallel_run(tmp_path):
    "Under `training.time_budget_s` a world of 2 stops together after the budget: finished, evaluated at its last step, said once."
    r, run = train(tmp_path, "timed", "--set", "training.batch_size=4", "--set", "training.max_steps=100000", "--set", "training.time_budget_s=5",
                   "--set", "training.lr_schedule=wsd", "--set", "eval.eval_interval=1000", "--set", "checkpoint.interval=1000", nproc=2)
    m, recs = json.loads((run / "manifest.json").read_text()), read_jsonl(run / "metrics.jsonl")
    assert m["status"] == "finished" and 8 < m["final_step"] < 100000
    assert recs[-1]["step"] == m["final_step"] and recs[-1]["val_loss"] is not None and recs[-1]["elapsed_s"] >= 5
    assert r.stdout.count("the time budget of 5 s is used up") == 1                   # said once, by rank 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_rendezvous_with_c10d(world2, tmp_path):
    "Two torchrun launchers, one process each, meet at a c10d rendezvous endpoint, as two machines would."
    _, _, ddp, _ = world2
    port = _free_port()
    common = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=slm-test"]
    args = ["train", str(TINY), "--no-progress", *STEPS, "--set", "training.batch_size=4", "--set", f"checkpoint.runs_dir={tmp_path / 'runs'}",
            "--set", "other.run_name=nodes", "--set", "other.num_threads=1"]
    procs = [subprocess.Popen([TORCHRUN, *common, "-m", "slm", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env_for(tmp_path)) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert losses(tmp_path / "runs" / "nodes") == losses(ddp)                        # the same run as on one node
