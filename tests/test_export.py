"""`slm export`: a trained run as a folder transformers loads and computes exactly (nbs/07a_export.ipynb).

One tiny run per mapped architecture (GPT-2: the shared `tiny_run`; GPT-NeoX and Arcee: a few steps each, trained
once for this file), exported with the `slm export` command and checked in transformers alone: logits, greedy text,
the pipeline and the tokenizer. Needs the `hf` extra, which the `dev` extra includes."""
import json
import sys

import pytest
import torch

from conftest import TINY_CONFIG, slm_in_process

transformers = pytest.importorskip("transformers")

STEPS = ["--set", "training.max_steps=8", "--set", "eval.eval_interval=8", "--set", "checkpoint.interval=8",
         "--set", "eval.eval_batches=1", "--set", "eval.sample_length=0"]
VARIANTS = {"gpt_neox": ["model.pos_encoding=rope"],
            "arcee": ["model.pos_encoding=rope", "model.norm=rmsnorm", "model.activation=relu2", "model.bias=false",
                      "model.tie_weights=false"]}


@pytest.fixture(scope="module")
def exports(tiny_run, tmp_path_factory):
    "architecture -> (run folder, export folder, the command's stdout), each exported with `slm export`."
    d, runs, out = tmp_path_factory.mktemp("export-runs"), {"gpt2": tiny_run}, {}
    for arch, sets in VARIANTS.items():
        r = slm_in_process("train", TINY_CONFIG, "--no-progress", *STEPS, *[a for s in sets for a in ("--set", s)],
                           "--set", f"checkpoint.runs_dir={d}", "--set", f"other.run_name={arch}")
        assert r.returncode == 0, r.stderr
        runs[arch] = d / arch
    for arch, run in runs.items():
        r = slm_in_process("export", run, d / f"hf-{arch}")
        assert r.returncode == 0, r.stderr
        out[arch] = (run, d / f"hf-{arch}", r.stdout)
    return out


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "arcee"])
def test_export_computes_the_same_model(exports, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from slm.data import load_corpus
    from slm.export import hf_generate
    from slm.generation import generate_text
    from slm.training import load_run

    run, folder, stdout = exports[arch]
    assert f"as {arch} to" in stdout and "largest logit difference" in stdout, stdout
    cfg_json = json.loads((folder / "config.json").read_text())
    assert cfg_json["model_type"] == arch
    model, tok, cfg = load_run(run)
    hf, hf_tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)

    T = cfg.model.context_length
    val = torch.as_tensor(load_corpus("shakespeare", T).val.astype("int64"))
    x = torch.stack([val[i * 1009:i * 1009 + T] for i in range(8)])                  # 8 validation windows, (8, T)
    with torch.no_grad(): diff = (model(x)[0] - hf(input_ids=x).logits).abs().max().item()
    assert diff < 1e-4, diff

    ours = generate_text(model, tok, "ROMEO:\n", max_new_tokens=200, temperature=0)
    theirs = hf_tok.decode(hf_generate(hf, tok.encode("ROMEO:\n"), 200, T, do_sample=False))
    assert len(ours) == 200 and theirs == ours

    text = pipeline("text-generation", model=hf, tokenizer=hf_tok)("ROMEO:\n", max_new_tokens=20)[0]["generated_text"]
    assert text.startswith("ROMEO:\n") and len(text) > len("ROMEO:\n")

    sample = tok.decode(val[:3000]) + "\t<PAD> café"
    ids = hf_tok(sample)["input_ids"]
    assert ids == tok.encode(sample, unk="ignore").tolist()
    assert hf_tok.decode(ids) == tok.decode(ids) and hf_tok.pad_token_id == 0 and hf_tok.unk_token_id == 1


def test_tied_head_is_stored_once_and_the_card(exports):
    from safetensors import safe_open
    for arch, (run, folder, _) in exports.items():
        with safe_open(folder / "model.safetensors", "pt") as f: names = list(f.keys())
        heads = [n for n in names if n.startswith(("lm_head", "embed_out"))]
        assert bool(heads) == (arch == "arcee"), (arch, heads)                  # only the arcee run is untied
        assert json.loads((folder / "generation_config.json").read_text())["do_sample"] is True
        card = (folder / "README.md").read_text()
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["run_id"] in card and "bits/char" in card and "nats/char" in card and "from_pretrained" in card


def test_refused_with_one_line(tmp_path):
    from slm.config import config_from_dict
    from slm.export import ExportError, hf_architecture
    memory = config_from_dict({"hooks": {"forward": [{"name": "qk_memory", "point": "blocks.*.attn.hook_q"}]}})
    with pytest.raises(ExportError, match="hooks.forward qk_memory"): hf_architecture(memory)
    r = slm_in_process("train", TINY_CONFIG, "--no-progress", *STEPS, "--set", "training.max_steps=2",
                       "--set", "model.norm=rmsnorm", "--set", f"checkpoint.runs_dir={tmp_path}", "--set", "other.run_name=rms")
    assert r.returncode == 0, r.stderr
    r = slm_in_process("export", tmp_path / "rms", tmp_path / "hf")            # the command: one line, exit status 2
    assert r.returncode == 2 and r.stderr.count("\n") == 1, (r.returncode, r.stdout, r.stderr)
    assert "model.norm rmsnorm with model.pos_encoding learned" in r.stderr and "rope + layernorm (GPT-NeoX)" in r.stderr
    assert not (tmp_path / "hf").exists()


def test_existing_folder_and_missing_extra(tiny_run, tmp_path, monkeypatch):
    (tmp_path / "full").mkdir(); (tmp_path / "full" / "x").write_text("x")
    r = slm_in_process("export", tiny_run, tmp_path / "full")
    assert r.returncode == 2 and "not an empty folder" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    monkeypatch.setitem(sys.modules, "transformers", None)                     # as if the hf extra were not installed
    r = slm_in_process("export", tiny_run, tmp_path / "hf")
    assert r.returncode == 2 and 'pip install -e ".[hf]"' in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "hf").exists()
