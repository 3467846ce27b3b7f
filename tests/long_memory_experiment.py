"""Chapter 09a's experiment: passkey retrieval against distance, a plain model against the same model with the
key→value memory, at equal wall-clock training time, several seeds; the controls; Shakespeare validation loss.

Each (model, seed) trains with `slm.long_memory.train_segments` for `--budget` seconds on the same mix (first `--warm`
of the budget passkey documents alone, then corpus text and passkey documents of up to 8 segments,
`--passkey-share` of the rows: `slm.long_memory.curriculum`), then is scored on 200 prompts per distance
with prompts whose filler is the validation split (never trained on). One JSON row per run is appended to `--out`,
so an interrupted experiment keeps what it finished. All runs train at the same time, one thread each, so that
whatever else the machine does slows them alike (equal wall-clock budgets stay a fair comparison):

    for s in 0 1 2; do for k in plain memory; do
      python tests/long_memory_experiment.py --budget 1500 --seeds $s --kinds $k --threads 1 \
        --query-gate --point blocks.1.attn.hook_z \
        --out nbs/results/long-memory/query-gate-layer1/long-memory-$k-seed$s.json &
    done; done; wait

(the memory's flags do nothing to a plain run). The other batches of `nbs/results/long-memory/` differ in the flags
their files record; the first three were trained by an earlier `train_segments` that decayed every parameter. For
equal steps instead of equal time, give every run a `--max-steps` and a `--budget` it cannot reach
(`query-gate-layer1-equal-steps/`: `--max-steps 5000 --budget 3000`): the schedule then follows the steps alone.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from slm.config import config_from_dict
from slm.data import load_corpus
from slm.hooks import HookSet
from slm.long_memory import passkey_vs_distance, segment_loss, train_segments
from slm.model import GPT
from slm.tokenizer import CharTokenizer

MODEL = dict(vocab_size=99, context_length=64, n_layers=2, d_model=64, n_heads=4, d_ff=256, dropout=0.0)
DISTANCES = (40, 128, 256, 384, 512, 768)          # from inside the window to 12 segments back


@torch.no_grad()
def val_loss(model, tok_ids: np.ndarray, n_segments: int, n_docs: int = 64, seed: int = 0) -> float:
    "Mean loss over `n_docs` validation documents of `n_segments` segments, read with the memory carried."
    T, rng = model.cfg.context_length, np.random.default_rng(seed)
    L = n_segments * T + 1
    starts = rng.integers(0, len(tok_ids) - L, n_docs)
    ids = torch.as_tensor(np.stack([tok_ids[s:s + L] for s in starts]).astype(np.int64))
    return float(np.mean([segment_loss(model, ids[i:i + 16]).item() for i in range(0, n_docs, 16)]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=600, help="training seconds per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--passkey-share", type=float, default=0.5)
    ap.add_argument("--answer-weight", type=float, default=20.0, help="loss weight of a passkey answer's digits")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--warm", type=float, default=0.4, help="share of the budget on passkey documents alone")
    ap.add_argument("--gate-init", type=float, default=0.0, help="the memory gates' value at init")
    ap.add_argument("--query-gate", action="store_true", help="the memory gates depend on each position's query")
    ap.add_argument("--point", default="blocks.*.attn.hook_z", help="where the memory hook goes (default: every layer)")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="stop after this many steps; the schedule follows steps or time, whichever is further along")
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--kinds", nargs="+", default=["plain", "memory"], choices=["plain", "memory"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = CharTokenizer()
    corpus = load_corpus("shakespeare", context_length=MODEL["context_length"])
    train_text, val_text = tok.decode(corpus.train), tok.decode(corpus.val)
    done = json.loads(a.out.read_text()) if a.out.exists() else []
    for seed in a.seeds:
        for kind in a.kinds:
            if any(r["kind"] == kind and r["seed"] == seed and r["budget_s"] == a.budget for r in done): continue
            torch.manual_seed(seed)
            model = GPT(config_from_dict({"model": MODEL}).model)
            params = {"gate_init": a.gate_init, "query_gate": a.query_gate}
            kv = {"forward": [{"name": "kv_memory", "point": a.point, "params": params}]}
            if kind == "memory": HookSet(config_from_dict({"model": MODEL, "hooks": kv}), model)
            t0 = time.perf_counter()
            log = train_segments(model, tok, train_text, a.budget, batch_size=a.batch_size, passkey_share=a.passkey_share,
                                 seed=seed, answer_weight=a.answer_weight, warm=a.warm, max_steps=a.max_steps)
            row = {"kind": kind, "seed": seed, "budget_s": a.budget, "train_s": time.perf_counter() - t0,
                   "steps": log[-1]["step"] if log else 0, "params": model.num_params(), "passkey_share": a.passkey_share,
                   "answer_weight": a.answer_weight, "batch_size": a.batch_size, "warm": a.warm, "gate_init": a.gate_init,
                   "query_gate": a.query_gate, "point": a.point if kind == "memory" else None,
                   "max_steps": a.max_steps,
                   "log": log, "val_loss_1_segment": val_loss(model, corpus.val, 1, seed=seed),
                   "val_loss_8_segments": val_loss(model, corpus.val, 8, seed=seed),
                   "passkey": passkey_vs_distance(model, tok, val_text, DISTANCES, a.prompts, seed=seed)}
            if kind == "memory":
                row["passkey_memory_cleared"] = passkey_vs_distance(model, tok, val_text, DISTANCES, a.prompts, seed=seed,
                                                                    clear_each_segment=True)
            done.append(row)
            a.out.write_text(json.dumps(done, indent=1))
            print(f"{kind} seed {seed}: {row['steps']} steps, val loss {row['val_loss_1_segment']:.4f}, passkey "
                  + " ".join(f"{r['distance']}:{r['exact']:.2f}" for r in row["passkey"]), flush=True)


if __name__ == "__main__":
    main()
