"Tests for slm.config_yaml (02b): a config written back as commented YAML reads back as the same config."
from pathlib import Path

import yaml

from slm.config import TrainingConfig, config_diff, config_from_dict, config_hash, load_config
from slm.config_yaml import config_to_yaml, save_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_round_trip_defaults(tmp_path):
    p = save_config(TrainingConfig(), tmp_path / "d.yaml")
    assert load_config(p) == TrainingConfig()


def test_round_trip_awkward_values(tmp_path):
    cfg = config_from_dict({
        "model": {"d_model": 96, "n_heads": 3, "dropout": 0.0, "bias": False, "pos_encoding": "rope", "norm": "rmsnorm"},
        "training": {"lr": 1e-3, "eps": 1e-12, "lr_schedule": "cosine", "warmup_steps": 10, "grad_clip": 0.0},
        "data": {"source": "/data/my corpus/*.txt", "stride": 100, "cache_dir": "/tmp/c", "fold_unicode": True},
        "eval": {"eval_batches": None, "sample_prompt": "\"No\", quoth he:\n\t'yes'\u00e9"},
        "sampling": {"temperature": 0.0, "top_k": 40, "top_p": 0.95, "seed": 7},
        "other": {"run_name": "null", "num_threads": 2, "dtype": "bfloat16", "device": "cpu"},
    })
    for minimal in (False, True):
        p = save_config(cfg, tmp_path / f"rt-{minimal}.yaml", minimal=minimal, header="a header\nover two lines")
        back = load_config(p)
        assert back == cfg, config_diff(back, cfg)
        assert config_hash(back) == config_hash(cfg)
        # plain PyYAML reads the same values too (floats are written with a dot)
        assert yaml.safe_load(p.read_text())["training"]["eps"] == 1e-12


def test_baseline_is_the_written_defaults():
    body = lambda text: text[text.index("# ---- "):]
    assert body((CONFIGS / "baseline.yaml").read_text()) == body(config_to_yaml(TrainingConfig()))


def test_every_key_line_has_its_comment_and_a_minimal_file_only_the_changes():
    text = config_to_yaml(config_from_dict({"training": {"lr": 1e-3}, "model": {"n_layers": 2}}), minimal=True)
    keys = [line for line in text.splitlines() if line.startswith("  ")]
    assert [k.split(":")[0].strip() for k in keys] == ["n_layers", "lr"]
    assert all("# " in k and "[default: " in k and "valid: " in k for k in keys)
    assert config_to_yaml(TrainingConfig(), minimal=True).strip() == "# every key takes its default"


def test_characters_beyond_the_basic_plane_and_control_characters_round_trip(tmp_path):
    "JSON writes U+1F600 as a surrogate pair, which YAML reads as two broken characters; DEL and U+2028 need escapes."
    prompt = "caf\u00e9 \U0001f600 \x7f \u2028 \"q\"\n\t"
    cfg = config_from_dict({"eval": {"sample_prompt": prompt}})
    p = save_config(cfg, tmp_path / "u.yaml")
    assert load_config(p).eval.sample_prompt == prompt
    assert yaml.safe_load(p.read_text())["eval"]["sample_prompt"] == prompt


def test_a_hook_parameter_named_like_a_yaml_keyword_stays_a_string():
    from slm.config_yaml import _yaml_scalar
    params = {"limit": 0.01, "on": 1, "null": 2, "2024": 3}
    text = _yaml_scalar({"name": "clip_value", "params": params})
    assert yaml.safe_load("h: " + text)["h"] == {"name": "clip_value", "params": params}
    assert text.startswith("{name: ") and "limit: 0.01" in text      # ordinary names stay bare
