import pytest

from align.config import load_config, parse_overrides
from align.errors import ConfigError
from align.sft import SFTStageConfig
from tests.conftest import REPO


def test_shipped_sft_configs_validate():
    for name in ("sft.yaml", "sft-gpu.yaml"):
        cfg = load_config(SFTStageConfig, REPO / "configs" / name)
        assert cfg.stage == "sft" and cfg.model == "smollm2-135m"


def test_overrides_reach_nested_fields_and_parse_types():
    cfg = load_config(SFTStageConfig, REPO / "configs" / "sft.yaml",
                      ["--training.learning_rate", "1e-4", "--lora.enabled", "--data.max_rows=20", "--output-dir", "x"])
    assert cfg.training.learning_rate == 1e-4
    assert cfg.lora.enabled is True
    assert cfg.data.max_rows == 20
    assert cfg.output_dir == "x"


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stage: sft\ndata: {path: x.jsonl}\ntraining:\n  learnig_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(SFTStageConfig, path)
    assert "training.learnig_rate" in str(e.value) and str(path) in str(e.value) and "unknown key" in str(e.value)


def test_bad_type_names_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stage: sft\ndata: {path: x.jsonl}\ntraining: {per_device_train_batch_size: many}\n")
    with pytest.raises(ConfigError, match="training.per_device_train_batch_size"):
        load_config(SFTStageConfig, path)


def test_bad_override_is_attributed_to_the_command_line():
    with pytest.raises(ConfigError) as e:
        load_config(SFTStageConfig, REPO / "configs" / "sft.yaml", ["--training.lr", "3"])
    assert "command line --training.lr" in str(e.value)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(SFTStageConfig, tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(SFTStageConfig, tmp_path / "list.yaml")


def test_parse_overrides_forms():
    assert parse_overrides(["--a.b", "1", "--c=x y", "--flag"]) == [("a.b", 1), ("c", "x y"), ("flag", True)]
    with pytest.raises(ConfigError):
        parse_overrides(["positional"])
