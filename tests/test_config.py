"Tests for slm.config: bad input gives one-line errors naming file and key; round-trip; hash; every shipped config loads.\nThe precise wording of each problem and the keys that moved are slm.config_errors' (tests/test_config_errors.py)."
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slm.config import (
    SECTIONS, ConfigError, TrainingConfig, apply_overrides, config_diff, config_from_dict, config_hash,
    config_to_dict, hook_list, load_config,
)
from slm.config_yaml import save_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CONFIG_FILES = sorted(CONFIGS.glob("*.yaml"))


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def error_of(fn, *args):
    "The ConfigError raised by fn(*args), checked to be a one-line ValueError."
    with pytest.raises(ConfigError) as info:
        fn(*args)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in msg, msg
    return msg


# ---- bad config files: each message names the file and the dotted key ----

@pytest.fixture
def lesson_words():
    "Chapter 02 on its own: its registry of error words, which slm.config_errors fills, emptied for the test."
    from slm.config import ERROR_WORDS
    saved = dict(ERROR_WORDS)
    ERROR_WORDS.clear()
    yield
    ERROR_WORDS.update(saved)


@pytest.mark.parametrize("text, key, problem", [
    ("model:\n  d_modle: 128\n", "model.d_modle", "unknown key (valid: vocab_size, context_length, n_layers, d_model, "),
    ("modle:\n  d_model: 128\n", "modle", "unknown key (valid: model, training, data, eval, sampling, checkpoint, other, hooks)"),
    ("model:\n  n_layers: four\n", "model.n_layers", "Input should be a valid integer, got 'four'"),
    ("training:\n  lr: -1e-3\n", "training.lr", "Input should be greater than 0, got -0.001"),
    ("model:\n  d_model: 250\n", "model.d_model", "250 is not divisible by model.n_heads (4)"),
    ("other:\n  run_name: ../escape\n", "other.run_name", "must be letters, digits"),
    ("hooks:\n  forward:\n    - {name: scale, pont: hook_embed}\n", "hooks.forward[0].pont", "unknown key (valid: name, point, params)"),
])
def test_chapter_02_alone_names_file_and_key(tmp_path, lesson_words, text, key, problem):
    p = write(tmp_path, "bad.yaml", text)
    msg = error_of(load_config, p)
    assert msg.startswith(f"{p}: {key}: {problem}"), msg


def test_chapter_02_alone_words_overrides(lesson_words):
    assert error_of(load_config, None, ["training.lrr=1"]).startswith("--set training.lrr: unknown key (valid: batch_size, ")
    assert error_of(load_config, None, ["trainin.lr=1"]).startswith("--set trainin.lr: unknown section (valid: model, ")
    assert error_of(load_config, None, ["lr=1"]) == "--set lr: expected section.key=value (did you mean 'training.lr'?)"


def test_registered_words_replace_the_problem(tmp_path):
    from slm.config import ERROR_WORDS, register_words
    before = ERROR_WORDS.get("greater_than")
    try:
        register_words("greater_than")(lambda err: f"too small: {err['input']}")
        p = write(tmp_path, "lr.yaml", "training:\n  lr: -1.0e-3\n")
        assert error_of(load_config, p) == f"{p}: training.lr: too small: -0.001"
        assert error_of(load_config, None, ["training.lr=-1"]) == "--set training.lr: too small: -1"
    finally:
        if before: ERROR_WORDS["greater_than"] = before
        else: ERROR_WORDS.pop("greater_than", None)


def test_error_attributes(tmp_path):
    p = write(tmp_path, "bad.yaml", "training:\n  lr: -0.001\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    e = info.value
    assert (e.origin, e.key, e.problem) == (str(p), "training.lr", "must be > 0, got -0.001")
    assert str(e) == f"{p}: training.lr: must be > 0, got -0.001"


def test_several_problems_counted_in_one_line(tmp_path):
    p = write(tmp_path, "bad.yaml", "model:\n  n_layers: 0\n  dropout: 2\ntraining:\n  lr: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: model.n_layers: must be >= 1, got 0")
    assert "(and 2 more: model.dropout, training.lr)" in msg
    assert [x.key for x in info.value.errors] == ["model.n_layers", "model.dropout", "training.lr"]


def test_invalid_yaml_reports_line(tmp_path):
    p = write(tmp_path, "broken.yaml", "model:\n  d_model: 128\n n_heads: 4\n")
    msg = error_of(load_config, p)
    assert msg.startswith(f"{p}: invalid YAML at line 3"), msg
    p = write(tmp_path, "unclosed.yaml", "eval:\n  sample_prompt: \"ROMEO:\n")
    assert error_of(load_config, p).startswith(f"{p}: invalid YAML at line")


def test_duplicate_key_is_an_error(tmp_path):
    p = write(tmp_path, "dup.yaml", "training:\n  lr: 0.001\n  lr: 0.01\n")
    msg = error_of(load_config, p)
    assert msg == f"{p}: invalid YAML at line 3, column 3: duplicate key 'lr' (first at line 2)"


def test_missing_unreadable_and_non_mapping_files(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert error_of(load_config, missing) == f"{missing}: config file not found"
    assert error_of(load_config, "no/such/dir/x.yaml").startswith("no/such/dir/x.yaml: config file not found (looked for /")
    assert error_of(load_config, tmp_path) == f"{tmp_path}: is a folder, not a YAML config file"
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("eval:\n  sample_prompt: 'caf\xe9'\n".encode("latin-1"))
    assert error_of(load_config, latin).startswith(f"{latin}: not UTF-8 text (byte 0xe9")
    lst = write(tmp_path, "list.yaml", "- model\n- training\n")
    assert error_of(load_config, lst).startswith(f"{lst}: the top level must be a mapping of sections")
    scalar = write(tmp_path, "scalar.yaml", "just text\n")
    assert "the top level must be a mapping" in error_of(load_config, scalar)


def test_config_path_is_a_folder(tmp_path):
    p = tmp_path / "folder.yaml"          # unreadable as a file, even for root (chmod 0 is not)
    p.mkdir()
    assert error_of(load_config, p) == f"{p}: is a folder, not a YAML config file"


# ---- overrides ----

def test_overrides_apply_and_parse_values():
    cfg = load_config(CONFIGS / "quickstart.yaml", ["training.lr=2e-3", "training.warmup_steps=0", "sampling.top_k=null",
                                                   "eval.sample_prompt=JULIET:", "other.run_name=2024", "model.bias=false"])
    assert cfg.training.lr == 2e-3 and isinstance(cfg.training.lr, float)
    assert cfg.training.warmup_steps == 0 and cfg.sampling.top_k is None
    assert cfg.eval.sample_prompt == "JULIET:" and cfg.other.run_name == "2024" and cfg.model.bias is False
    assert cfg.model.d_model == 128  # untouched keys keep the file's values
    assert apply_overrides(load_config(CONFIGS / "quickstart.yaml"), ["training.lr=2e-3"]).training.lr == 2e-3
    # all overrides are validated together, so order does not matter; the last one of a key wins
    assert apply_overrides(TrainingConfig(), ["model.n_heads=3", "model.d_model=96"]).model.n_heads == 3
    assert apply_overrides(TrainingConfig(), ["training.lr=1", "training.lr=0.5"]).training.lr == 0.5


def test_apply_overrides_does_not_modify_input():
    cfg = TrainingConfig()
    new = apply_overrides(cfg, ["model.n_layers=2"])
    assert cfg.model.n_layers == 4 and new.model.n_layers == 2


# ---- defaults, YAML details, paths ----

def test_defaults_are_the_decisions():
    cfg = load_config()
    assert cfg == TrainingConfig()
    m, t = cfg.model, cfg.training
    assert (m.vocab_size, m.context_length, m.n_layers, m.d_model, m.n_heads, m.d_ff, m.dropout) == (99, 256, 4, 256, 4, 1024, 0.1)
    assert (m.pos_encoding, m.norm, m.attention, m.tie_weights, m.init_std) == ("learned", "layernorm", "sdpa", True, 0.02)
    assert (t.batch_size, t.optimizer, t.lr, t.weight_decay, t.beta1, t.beta2, t.lr_schedule) == (16, "adamw", 3e-4, 0.1, 0.9, 0.95, "constant")
    assert (cfg.data.source, cfg.data.val_fraction, cfg.data.stride) == ("shakespeare", 0.05, None)
    assert (cfg.eval.eval_interval, cfg.sampling.temperature, cfg.sampling.top_k) == (200, 1.0, None)
    assert (cfg.checkpoint.keep_last, cfg.other.seed) == (5, 1337)
    assert list(SECTIONS) == ["model", "training", "data", "eval", "sampling", "checkpoint", "other", "hooks"]
    assert (t.momentum, cfg.hooks.forward, cfg.hooks.backward, cfg.hooks.update, cfg.hooks.aux) == (0.9, [], [], [], [])


def test_missing_keys_and_empty_sections_take_defaults(tmp_path):
    p = write(tmp_path, "partial.yaml", "model:\n  d_model: 128\ntraining:\neval:  # every key commented out\n  # eval_interval: 5\n")
    cfg = load_config(p)
    assert cfg.model.d_model == 128 and cfg.model.n_layers == 4
    assert cfg.training == TrainingConfig().training and cfg.eval == TrainingConfig().eval
    assert load_config(write(tmp_path, "empty.yaml", "")) == TrainingConfig()


def test_exponent_floats_without_a_dot(tmp_path):
    assert yaml.safe_load("lr: 1e-3") == {"lr": "1e-3"}  # the YAML 1.1 trap this guards against
    cfg = load_config(write(tmp_path, "e.yaml", "training:\n  lr: 1e-3\n  eps: 1E-9\nmodel:\n  init_std: .5e-1\n"))
    assert (cfg.training.lr, cfg.training.eps, cfg.model.init_std) == (1e-3, 1e-9, 0.05)


def test_int_accepted_for_float(tmp_path):
    cfg = load_config(write(tmp_path, "i.yaml", "model:\n  dropout: 0\ntraining:\n  lr: 1\n"))
    assert isinstance(cfg.model.dropout, float) and isinstance(cfg.training.lr, float)


def test_relative_source_resolved_against_yaml_folder(tmp_path):
    sub = tmp_path / "exp"
    sub.mkdir()
    p = write(sub, "own.yaml", "data:\n  source: ../texts/*.txt\n")
    assert load_config(p).data.source == str(tmp_path / "texts" / "*.txt")
    assert load_config(write(sub, "abs.yaml", "data:\n  source: /data/corpus.txt\n")).data.source == "/data/corpus.txt"
    assert load_config(write(sub, "builtin.yaml", "data:\n  source: shakespeare\n")).data.source == "shakespeare"
    # an override's relative path is relative to the current directory
    assert load_config(p, ["data.source=notes.txt"]).data.source == os.path.join(os.getcwd(), "notes.txt")


def test_config_from_dict():
    assert config_from_dict({"training": {"lr": 0.01}}).training.lr == 0.01
    with pytest.raises(ConfigError, match=r"^run.json: model.d_modle: unknown key"):
        config_from_dict({"model": {"d_modle": 1}}, "run.json")


# ---- save / load round trip (the writer is 02b's: tests/test_config_yaml.py) ----

def test_hooks_section_round_trip_diff_and_overrides(tmp_path, monkeypatch):
    "The hooks section as chapter 02 checks it: the shape of each entry (chapter 04's check, if loaded, is left out)."
    monkeypatch.setattr("slm.config.CHECKS", {})
    p = write(tmp_path, "hooked.yaml", "hooks:\n  update:\n    - {name: clip_value, params: {limit: 0.01}}\n"
                                        "  aux:\n    - name: act_l1\n      point: blocks.*.mlp.hook_post\n")
    hooked = load_config(p)
    assert hook_list(hooked) == [{"kind": "update", "name": "clip_value", "point": None, "params": {"limit": 0.01}},
                                 {"kind": "aux", "name": "act_l1", "point": "blocks.*.mlp.hook_post", "params": {}}]
    assert load_config(save_config(hooked, tmp_path / "back.yaml")) == hooked         # the lists survive a round trip
    assert config_hash(hooked) != config_hash(TrainingConfig())                         # hooks are part of the hash ...
    assert [k for k, *_ in config_diff(TrainingConfig(), hooked)] == ["hooks.update", "hooks.aux"]   # ... and of the diff
    assert apply_overrides(TrainingConfig(), ["hooks.update=[{name: sign}]"]).hooks.update[0].name == "sign"
    assert error_of(config_from_dict, {"hooks": {"aux": {"name": "act_l1"}}}).startswith("hooks.aux: ")


def test_config_to_dict_is_plain():
    d = config_to_dict(TrainingConfig())
    assert list(d) == list(SECTIONS)
    assert all(type(v) in (int, float, str, bool, type(None)) for s, vs in d.items() if s != "hooks" for v in vs.values())
    assert d["model"]["d_model"] == 256
    assert d["hooks"] == {"forward": [], "backward": [], "update": [], "aux": []}
    hooked = config_from_dict({"hooks": {"aux": [{"name": "act_l1", "point": "hook_embed", "params": {"weight": 0.5}}]}})
    assert config_to_dict(hooked)["hooks"]["aux"] == [{"name": "act_l1", "point": "hook_embed", "params": {"weight": 0.5}}]


# ---- hash ----

def test_hash_format_and_stability():
    h = config_hash(TrainingConfig())
    assert len(h) == 12 and all(c in "0123456789abcdef" for c in h)
    assert config_hash(TrainingConfig()) == h
    assert config_hash(load_config(CONFIGS / "baseline.yaml")) == h
    # a fresh interpreter (different hash() seed) computes the same value
    code = "from slm.config import *; print(config_hash(load_config(%r)))" % str(CONFIGS / "quickstart.yaml")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.strip()
    assert out == config_hash(load_config(CONFIGS / "quickstart.yaml"))


def test_hash_ignores_spelling_of_defaults():
    assert config_hash(config_from_dict({"model": {"dropout": 0}})) == config_hash(config_from_dict({"model": {"dropout": 0.0}}))
    assert config_hash(config_from_dict({"training": {"lr": 0.0003}})) == config_hash(TrainingConfig())


@pytest.mark.parametrize("override", [
    "model.n_layers=5", "model.dropout=0.10000000000000002", "training.lr=3.0001e-4", "training.lr_schedule=cosine",
    "data.source=/x.txt", "eval.log_interval=11", "sampling.top_k=5", "checkpoint.keep_best=false", "other.seed=1338",
    "training.optimizer=sgd", "training.momentum=0.8", "hooks.update=[{name: identity}]",
    "hooks.aux=[{name: act_l1, point: hook_embed}]", "hooks.aux=[{name: act_l1, point: hook_embed, params: {weight: 0.002}}]",
])
def test_hash_changes_with_any_value(override):
    base = TrainingConfig()
    changed = apply_overrides(base, [override])
    assert config_diff(base, changed) != []
    assert config_hash(changed) != config_hash(base)


# ---- the shipped configs ----

def test_configs_folder_has_the_expected_files():
    names = {p.stem for p in CONFIG_FILES}
    assert {"tiny", "quickstart", "baseline", "small-model", "large-model", "fast-training", "detailed-eval",
            "ab-baseline", "ab-act-sparsity"} <= names


@pytest.fixture
def every_chapter():
    """The shipped configs name hooks of later chapters (`configs/probe.yaml`: chapter 09's `qk_memory`): load them with
    every chapter's hooks and checks registered, as the `slm` command does. Without this, whether chapter 04a's hook
    check ran (and found `qk_memory` missing) would depend on which test files ran before in the same process."""
    from slm.training import load_plugins
    load_plugins()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_loads_and_is_documented(path, every_chapter):
    cfg = load_config(path)
    assert isinstance(cfg, TrainingConfig)
    raw = yaml.load(path.read_text(), Loader=yaml.SafeLoader) or {}
    assert set(raw) <= set(SECTIONS)
    for line in path.read_text().splitlines():
        if line.startswith("    - "): continue   # one hook of a list under hooks: (its key line carries the comment)
        if line.startswith("  ") and not line.lstrip().startswith("#"):  # a key line inside a section
            assert "  # " in line and "[default:" in line and "valid:" in line, f"{path.name}: undocumented key line {line!r}"
        elif line and not line.startswith("#"):
            assert line.rstrip(":") in SECTIONS, f"{path.name}: unexpected top-level line {line!r}"
    # every section present has a heading comment right above it
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.rstrip(":") in SECTIONS:
            assert lines[i - 1].startswith("# ----"), f"{path.name}: section {line} without a heading"


def test_baseline_lists_every_key_with_default_values():
    raw = yaml.safe_load((CONFIGS / "baseline.yaml").read_text())
    assert {s: set(v) for s, v in raw.items()} == {s: set(cls.model_fields) for s, cls in SECTIONS.items()}
    assert load_config(CONFIGS / "baseline.yaml") == TrainingConfig()


def test_shipped_configs_have_their_purpose(every_chapter):
    tiny, quick = load_config(CONFIGS / "tiny.yaml"), load_config(CONFIGS / "quickstart.yaml")
    assert tiny.training.max_steps <= 100 and tiny.model.d_model <= 64 and tiny.eval.eval_interval < tiny.training.max_steps
    assert quick.model.d_model == 128 and quick.training.lr_schedule == "cosine" and quick.training.warmup_steps > 0
    assert load_config(CONFIGS / "detailed-eval.yaml").eval.eval_batches is None
    assert load_config(CONFIGS / "large-model.yaml").model.d_model > TrainingConfig().model.d_model
    assert load_config(CONFIGS / "small-model.yaml").model.d_model < TrainingConfig().model.d_model
    # the default-corpus configs hash the same on every machine (no absolute paths inside)
    assert all(load_config(p).data.source == "shakespeare" for p in CONFIG_FILES)


# ---- checks that later chapters register, and keys that moved ----

def test_registered_check_names_file_key_and_override(tmp_path):
    from slm.config import CHECKS, register_check
    @register_check("test: tiny lr")
    def tiny_lr(cfg):
        if cfg.training.lr < 1e-6: raise ConfigError(f"{cfg.training.lr} is too small", "training.lr")
    try:
        p = write(tmp_path, "c.yaml", "training:\n  lr: 1.0e-7\n")
        assert error_of(load_config, p) == f"{p}: training.lr: 1e-07 is too small"
        assert error_of(load_config, None, ["training.lr=1e-7"]) == "--set training.lr: 1e-07 is too small"
    finally: del CHECKS["test: tiny lr"]
    assert load_config(p).training.lr == 1e-7


def test_config_module_does_not_import_torch():
    "Chapter 02 comes before the model: loading and validating a config needs neither torch nor any later chapter (02a, its companion, is imported with it)."
    code = ("import sys, slm.config as c; c.load_config(None, ['training.lr=1e-3']); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('slm.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "['slm.config', 'slm.config_errors']", out   # 02a with it
