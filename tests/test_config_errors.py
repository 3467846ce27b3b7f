"Tests for slm.config_errors (02a): every config problem in one precise line, the keys that moved, and the module loaded with slm.config whichever module comes first."
import subprocess
import sys

import pytest

from slm.config import ERROR_WORDS, MOVED, SECTIONS, ConfigError, TrainingConfig, config_from_dict, load_config
from slm.config_errors import ALIASES, bound_words, closest_key, other_words, type_words, unknown_key_words
from test_config import error_of, write   # the helpers of chapter 02's tests


# ---- bad config files: each message names the file, the dotted key and the problem in the config's words ----

@pytest.mark.parametrize("text, key, problem", [
    ("model:\n  d_modle: 128\n", "model.d_modle", "unknown key (did you mean 'd_model'?)"),
    ("training:\n  learning_rate: 0.001\n", "training.learning_rate", "unknown key (did you mean 'lr'?)"),
    ("model:\n  n_embd: 128\n", "model.n_embd", "unknown key (did you mean 'd_model'?)"),
    ("model:\n  zzz: 1\n", "model.zzz", "unknown key (valid: vocab_size, context_length, n_layers"),
    ("modle:\n  d_model: 128\n", "modle", "unknown key (did you mean 'model'?)"),
    ("model:\n  lr: 0.001\n", "model.lr", "unknown key (did you mean 'training.lr'?)"),
    ("lr: 0.001\n", "lr", "unknown key (did you mean 'training.lr'?)"),
    ("model:\n  n_layers: four\n", "model.n_layers", "expected an integer, got 'four'"),
    ("model:\n  n_layers: 4.5\n", "model.n_layers", "expected an integer, got 4.5"),
    ("model:\n  n_layers: '4'\n", "model.n_layers", "expected an integer, got '4'"),
    ("model:\n  n_layers: true\n", "model.n_layers", "expected an integer, got true"),
    ("model:\n  bias: maybe\n", "model.bias", "expected true or false, got 'maybe'"),
    ("training:\n  lr: fast\n", "training.lr", "expected a number, got 'fast'"),
    ("training:\n  lr: .inf\n", "training.lr", "must be a finite number"),
    ("model:\n  d_model: 250\n", "model.d_model", "250 is not divisible by model.n_heads (4)"),
    ("model:\n  d_model: 36\n  pos_encoding: rope\n", "model.pos_encoding", "'rope' needs an even head size"),
    ("model:\n  dropout: 1.5\n", "model.dropout", "must be <= 1, got 1.5"),
    ("model:\n  dropout: -0.1\n", "model.dropout", "must be >= 0, got -0.1"),
    ("training:\n  lr: -1e-3\n", "training.lr", "must be > 0, got -0.001"),
    ("training:\n  lr: 0\n", "training.lr", "must be > 0, got 0"),
    ("training:\n  batch_size: 0\n", "training.batch_size", "must be >= 1, got 0"),
    ("training:\n  max_steps: -5\n", "training.max_steps", "must be >= 1, got -5"),
    ("training:\n  beta2: 1.0\n", "training.beta2", "must be < 1, got 1.0"),
    ("training:\n  batch_size:\n", "training.batch_size", "expected an integer, got null"),
    ("model:\n  pos_encoding: alibi\n", "model.pos_encoding", "must be one of 'learned', 'sinusoidal' or 'rope', got 'alibi'"),
    ("data:\n  val_fraction: 1\n", "data.val_fraction", "must be < 1, got 1"),
    ("data:\n  stride: 0\n", "data.stride", "must be >= 1, got 0"),
    ("eval:\n  sample_prompt: ''\n", "eval.sample_prompt", "must not be empty"),
    ("sampling:\n  top_p: 0\n", "sampling.top_p", "must be > 0, got 0"),
    ("sampling:\n  temperature: -1\n", "sampling.temperature", "must be >= 0, got -1"),
    ("other:\n  device: tpu\n", "other.device", "must be one of"),
    ("other:\n  run_name: ../escape\n", "other.run_name", "must be letters, digits"),
    ("model: 128\n", "model", "expected a mapping of keys"),
])
def test_bad_value_names_file_and_key(tmp_path, text, key, problem):
    p = write(tmp_path, "bad.yaml", text)
    msg = error_of(load_config, p)
    assert msg.startswith(f"{p}: {key}: "), msg
    assert problem in msg, msg


@pytest.mark.parametrize("override, expected", [
    ("training.lr=-1e-3", "--set training.lr: must be > 0, got -0.001"),
    ("training.lrr=1e-3", "--set training.lrr: unknown key (did you mean 'lr'?)"),
    ("trainin.lr=1e-3", "--set trainin.lr: unknown section (did you mean 'training'?)"),
    ("lr=1e-3", "--set lr: expected section.key=value (did you mean 'training.lr'?)"),
    ("training.lr", "--set training.lr: expected section.key=value, got 'training.lr'"),
    ("model.n_layers=four", "--set model.n_layers: expected an integer, got 'four'"),
    ("model.n_layers=[1", "--set model.n_layers: cannot parse '[1' as a YAML value"),
    ("model.dropout=1.5", "--set model.dropout: must be <= 1, got 1.5"),
    ("model.n_heads=3", "--set model.n_heads: model.d_model: 256 is not divisible by model.n_heads (3)"),
])
def test_bad_override(tmp_path, override, expected):
    p = write(tmp_path, "ok.yaml", "training:\n  lr: 0.001\n")
    msg = error_of(load_config, p, [override])
    assert msg.startswith(expected), msg
    assert str(p) not in msg  # the file is fine: the override gets the blame


def test_moved_keys_get_one_line_and_old_defaults_are_dropped(tmp_path):
    p = write(tmp_path, "old.yaml", "model:\n  qk_memory: true\n")
    msg = error_of(load_config, p)
    assert msg.startswith(f"{p}: model.qk_memory: this key has moved: ") and "hooks.forward" in msg and "qk_memory" in msg, msg
    assert "--set model.qk_memory: this key has moved" in error_of(load_config, None, ["model.qk_memory=true"])
    # a checkpoint written before the move holds the old defaults: it still loads
    assert config_from_dict({"model": {"qk_memory": False, "qk_memory_slots": 16}}) == TrainingConfig()




# ---- the words are registered in chapter 02's registry ----

def test_every_family_is_registered():
    assert ERROR_WORDS["extra_forbidden"] is unknown_key_words
    assert all(ERROR_WORDS[k] is type_words for k in ("int_type", "int_parsing", "int_from_float", "float_type", "bool_type",
                                                     "string_type", "list_type"))
    assert all(ERROR_WORDS[k] is bound_words for k in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"))
    assert all(ERROR_WORDS[k] is other_words for k in ("missing", "literal_error", "finite_number", "string_too_short", "model_type"))
    assert {"model.qk_memory", "model.qk_memory_slots"} <= set(MOVED)


@pytest.mark.parametrize("loc, meant", [
    (("model", "d_modle"), "d_model"), (("model", "lr"), "training.lr"), (("lr",), "training.lr"), (("modle",), "model"),
    (("model", "n_embd"), "d_model"), (("model", "block_size"), "context_length"), (("model", "learning_rate"), "training.lr"),
    (("hooks", "forward", "0", "pont"), "point"), (("model", "zzz"), None),
])
def test_closest_key(loc, meant):
    assert closest_key(loc) == meant


def test_every_alias_names_a_key():
    keys = {k for cls in SECTIONS.values() for k in cls.model_fields}
    assert set(ALIASES.values()) <= keys


def test_hook_entry_and_required_keys(tmp_path):
    assert error_of(config_from_dict, {"hooks": {"forward": [{"name": "scale", "pont": "hook_embed"}]}}, "x.yaml") == \
        "x.yaml: hooks.forward[0].pont: unknown key (did you mean 'point'?)"
    assert error_of(config_from_dict, {"hooks": {"update": [{}]}}) == "hooks.update[0].name: required"
    assert error_of(config_from_dict, {"hooks": {"aux": {"name": "act_l1"}}}).startswith("hooks.aux: expected a list")


# ---- whichever module comes first ----

@pytest.mark.parametrize("first", ["slm.config", "slm.model", "slm.hooks", "slm.training", "slm"])
def test_the_same_words_whichever_module_is_imported_first(first):
    "A program that imports only slm.config, or another module first, gets the words the slm command prints."
    code = (f"import sys, {first}; from slm.config import load_config\n"
            "try: load_config(None, ['training.lrr=1'])\n"
            "except ValueError as e: print(e)\n"
            "print('slm.config_errors' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["--set training.lrr: unknown key (did you mean 'lr'?)", "True"], out


def test_the_package_alone_imports_no_chapter():
    "slm/__init__.py only puts its finder in place: the companion comes with its chapter, and `slm --help` stays fast."
    code = "import sys, slm; print(sorted(m for m in sys.modules if m.startswith('slm.')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_a_reloaded_config_module_gets_the_words_again():
    "importlib.reload(slm.config) makes new, empty registries: the companion is imported into them again."
    code = ("import importlib, slm.config as c\nimportlib.reload(c)\n"
            "try: c.load_config(None, ['training.lrr=1'])\nexcept ValueError as e: print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "--set training.lrr: unknown key (did you mean 'lr'?)", out


def test_the_command_line_words(tmp_path):
    "The slm command prints the same line (it imports slm.config inside its commands)."
    from conftest import slm_in_process
    p = write(tmp_path, "typo.yaml", "training:\n  bach_size: 8\n")
    r = slm_in_process("corpus", p)
    assert r.returncode == 2 and r.stderr.strip() == f"slm: error: {p}: training.bach_size: unknown key (did you mean 'batch_size'?)"
