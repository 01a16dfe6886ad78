import re

import pytest

from align.config import load_config, parse_overrides
from align.errors import ConfigError
from align.sft import SFTStageConfig
from tests.conftest import REPO


NOT_STAGE_CONFIGS = {"serve.yaml", "constitution.yaml"}  # the app's config and CAI's principles


def test_every_shipped_stage_config_validates_as_print_config_does(capsys):
    """Every configs/*.yaml of a stage (CPU, GPU, agent, tools variants) loads through the CLI's
    ``--print-config`` path, names a known stage, and every stage ships a GPU config."""
    import yaml

    from align.cli import STAGES, main
    from align.config import read_yaml_file

    checked = {}
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if path.name in NOT_STAGE_CONFIGS:
            continue
        stage = read_yaml_file(path).get("stage")
        assert stage in STAGES, f"{path.name}: stage {stage!r} is not one of {sorted(STAGES)}"
        assert main([stage, "--config", str(path), "--print-config"]) == 0, path.name
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["stage"] == stage and printed["model"], path.name
        checked[path.name] = printed
    assert {f"{s}-gpu.yaml" for s in STAGES} <= set(checked), "a stage without a configs/<stage>-gpu.yaml"
    for name, printed in checked.items():
        if name.endswith("-gpu.yaml") and printed["stage"] != "cai":  # CAI generates, it does not train
            assert printed["training"]["bf16"] is True, f"{name}: a GPU config trains in bf16"
    # the fields every training stage shares sit under training: in every stage's config, PPO's too
    for name, printed in checked.items():
        if printed["stage"] != "cai":
            assert {"learning_rate", "max_grad_norm", "gradient_accumulation_steps", "logging_steps", "save_steps",
                    "report_to"} <= set(printed["training"]), name


def test_print_config_rejects_a_bad_shipped_style_config(tmp_path, capsys):
    """The check above can fail: a GPU config with a misspelt key is refused by the same path."""
    from align.cli import main

    bad = tmp_path / "ppo-gpu.yaml"
    bad.write_text((REPO / "configs" / "ppo-gpu.yaml").read_text().replace("mini_batch_size", "minibatch_size"))
    assert main(["ppo", "--config", str(bad), "--print-config"]) == 2
    assert "ppo.minibatch_size: unknown key" in capsys.readouterr().err


def test_shipped_agent_was_trained_with_its_recorded_recipe():
    """The adapter's keel.json records the config it was trained with: v5cpu, v4cpu continued with
    configs/agent-sft-continue-v5.yaml (v4cpu: v2 continued with configs/agent-sft-continue.yaml; v2
    itself: configs/agent-sft-gpu.yaml, r=16 on every linear layer)."""
    import json

    shipped = json.loads((REPO / "models" / "keel-agent" / "keel.json").read_text())["config"]
    cont = load_config(SFTStageConfig, REPO / "configs" / "agent-sft-continue-v5.yaml")
    for key in ("max_steps", "per_device_train_batch_size", "learning_rate", "lr_scheduler_type", "max_length"):
        assert shipped["training"][key] == getattr(cont.training, key), key
    assert shipped["data"]["path"] == cont.data.path and shipped["lora"]["enabled"] is cont.lora.enabled is True
    adapter = json.loads((REPO / "models" / "keel-agent" / "adapter_config.json").read_text())
    gpu = load_config(SFTStageConfig, REPO / "configs" / "agent-sft-gpu.yaml")
    assert adapter["r"] == gpu.lora.r and adapter["lora_alpha"] == gpu.lora.alpha  # v2's, kept when continued


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


# --- issue 21: numbers the YAML 1.2 way, TRL's fields type-checked, damaged config files --------

@pytest.mark.parametrize("text,want", [("1e-6", 1e-6), ("1E+3", 1000.0), ("-2e5", -2e5), (".5e-3", 5e-4),
                                       ("3.0e-4", 3e-4), ("1_000", 1000), ("0.1", 0.1), ("abc", "abc"),
                                       ("'1e-6'", "1e-6"), ("1e", "1e"), ("e5", "e5")])
def test_numbers_written_the_yaml_way_are_numbers(text, want):
    [(key, value)] = parse_overrides(["--training.extra.adam_epsilon", text])
    assert value == want and type(value) is type(want)


def test_untyped_extra_values_reach_trl_as_numbers(tmp_path):
    import trl

    from align.training import build_trainer_config, trainer_arguments

    path = tmp_path / "c.yaml"
    path.write_text("stage: sft\ndata: {path: x.jsonl}\ntraining:\n  extra: {adam_epsilon: 1e-6, adam_beta2: '0.98'}\n")
    cfg = load_config(SFTStageConfig, path, ["--training.extra.adam_beta1", "9e-1",
                                             "--output_dir", str(tmp_path / "run")])
    args = build_trainer_config(trl.SFTConfig, **trainer_arguments(cfg, cfg.training, has_eval=False))
    assert args.adam_epsilon == 1e-6 and args.adam_beta2 == 0.98 and args.adam_beta1 == 0.9
    assert isinstance(args.adam_epsilon, float) and isinstance(args.adam_beta2, float)


@pytest.mark.parametrize("extra,msg", [
    ({"adam_epsilon": "tiny"}, r"SFTConfig\.adam_epsilon = 'tiny': expected float"),
    ({"adam_epsilon": float("inf")}, r"SFTConfig\.adam_epsilon = inf: must be a finite number"),
    ({"adam_epsilon": float("nan")}, r"adam_epsilon = nan: must be a finite number"),
    ({"adam_epsilonn": 1e-6}, r"training\.extra\.adam_epsilonn: SFTConfig has no field .*did you mean adam_epsilon"),
    ({"gradient_checkpointing": "sometimes"}, r"SFTConfig\.gradient_checkpointing = 'sometimes': expected bool"),
    ({"eval_accumulation_steps": 2.5}, r"SFTConfig\.eval_accumulation_steps = 2\.5: expected int"),
])
def test_trl_fields_are_type_checked_before_the_run(tmp_path, extra, msg):
    import trl

    from align.training import build_trainer_config, trainer_arguments

    cfg = load_config(SFTStageConfig, None, ["--stage", "sft", "--data.path", "x.jsonl",
                                             "--output_dir", str(tmp_path / "run")])
    cfg.training.extra = extra
    with pytest.raises(ConfigError, match=msg):
        build_trainer_config(trl.SFTConfig, **trainer_arguments(cfg, cfg.training, has_eval=False))


@pytest.mark.parametrize("line,key", [
    ("training: {learning_rate: .inf}", "training.learning_rate"),
    ("training: {learning_rate: .nan}", "training.learning_rate"),
    ("training: {max_grad_norm: -.inf}", "training.max_grad_norm"),
    ("training: {weight_decay: -0.1}", "training.weight_decay"),
    ("training: {max_grad_norm: 0}", "training.max_grad_norm"),
    ("training: {num_train_epochs: 0}", "training.num_train_epochs"),
    ("training: {max_steps: -5}", "training.max_steps"),
    ("data: {path: x.jsonl, eval_fraction: .nan}", "data.eval_fraction"),
    ("lora: {dropout: .inf}", "lora.dropout"),
])
def test_non_finite_and_out_of_range_numbers_are_refused_naming_the_field(tmp_path, line, key):
    path = tmp_path / "c.yaml"
    path.write_text("stage: sft\ndata: {path: x.jsonl}\n" + line + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(SFTStageConfig, path)
    assert key in str(e.value) and str(path) in str(e.value)


def test_yaml_config_with_a_byte_order_mark_reads_as_without(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfstage: sft\ndata: {path: x.jsonl}\ntraining: {learning_rate: 1e-4}\n")
    cfg = load_config(SFTStageConfig, path)
    assert cfg.stage == "sft" and cfg.training.learning_rate == 1e-4


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"stage: sft\n\xff\xfe\x00\x01", b"stage: sft\x00\n",
                                     "stage: sft\n".encode("utf-16")])
def test_binary_config_is_a_config_error_naming_the_file(tmp_path, content):
    path = tmp_path / "binary.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="binary.yaml: not a (UTF-8 )?text file"):
        load_config(SFTStageConfig, path)


def test_retrain_reads_its_config_the_same_way(tmp_path):
    from align.retrain import retrain

    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="binary.yaml: not a UTF-8 text file"):
        retrain(str(tmp_path / "feedback.db"), str(path), [])


# --- issue 17: PPO's optimiser, logging and saving fields under training:, as in every stage ---------

@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("ppo*.yaml")))
def test_training_learning_rate_reaches_ppo_as_it_reaches_grpo(config):
    from align.grpo import GRPOStageConfig
    from align.ppo import PPOStageConfig

    ppo = load_config(PPOStageConfig, REPO / "configs" / config, ["--training.learning_rate", "7e-6",
                                                                  "--training.save_steps", "3"])
    grpo = load_config(GRPOStageConfig, REPO / "configs" / "grpo.yaml", ["--training.learning_rate", "7e-6"])
    assert ppo.training.learning_rate == grpo.training.learning_rate == 7e-6 and ppo.training.save_steps == 3


@pytest.mark.parametrize("old,new,value", [("ppo.learning_rate", "learning_rate", 5e-6),
                                           ("ppo.max_grad_norm", "max_grad_norm", 0.5),
                                           ("ppo.gradient_accumulation_steps", "gradient_accumulation_steps", 2),
                                           ("save_steps", "save_steps", 4), ("logging_steps", "logging_steps", 2),
                                           ("save_total_limit", "save_total_limit", 3), ("bf16", "bf16", False),
                                           ("report_to", "report_to", ["tensorboard"])])
def test_old_ppo_keys_are_rejected_naming_the_source_and_the_new_key(tmp_path, old, new, value):
    import yaml

    from align.ppo import PPOStageConfig

    # on the command line
    flag = yaml.safe_dump(value, default_flow_style=True).strip()
    with pytest.raises(ConfigError, match=rf"^command line --{re.escape(old)}: {re.escape(old)} moved to "
                                          rf"training\.{new}$"):
        load_config(PPOStageConfig, REPO / "configs" / "ppo.yaml", [f"--{old}", flag])
    # in a file, the key written where it used to be (and not under training:)
    section, _, key = old.rpartition(".")
    data = yaml.safe_load((REPO / "configs" / "ppo.yaml").read_text())
    data["training"].pop(new, None)
    (data[section] if section else data)[key] = value
    f = tmp_path / "old.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(f))}: {re.escape(old)} moved to training\.{new}$"):
        load_config(PPOStageConfig, f)
    # a config built without load_config is rejected too
    with pytest.raises(ConfigError, match=rf"{re.escape(old)} moved to training\.{new}"):
        PPOStageConfig.model_validate(data)


def test_an_old_ppo_key_set_through_its_section_or_beside_the_new_one_is_rejected(tmp_path):
    from align.ppo import PPOStageConfig

    ppo_yaml = REPO / "configs" / "ppo.yaml"
    with pytest.raises(ConfigError, match=r"command line --ppo: ppo\.learning_rate moved to training\.learning_rate"):
        load_config(PPOStageConfig, ppo_yaml, ["--ppo", "{learning_rate: 1.0e-5, ppo_epochs: 2}"])
    f = tmp_path / "both.yaml"
    f.write_text(ppo_yaml.read_text().replace("  ppo_epochs:", "  learning_rate: 1.0e-5\n  ppo_epochs:"))
    with pytest.raises(ConfigError, match=r"both\.yaml: ppo\.learning_rate moved to training\.learning_rate"):
        load_config(PPOStageConfig, f, ["--training.learning_rate", "1e-5"])
    # every old key is listed, each with its source, not only the first
    with pytest.raises(ConfigError) as e:
        load_config(PPOStageConfig, f, ["--save_steps", "3"])
    assert "both.yaml: ppo.learning_rate moved to training.learning_rate" in str(e.value)
    assert "command line --save_steps: save_steps moved to training.save_steps" in str(e.value)


def test_print_config_of_every_shipped_ppo_config(capsys):
    import yaml

    from align.cli import main

    for path in sorted((REPO / "configs").glob("ppo*.yaml")):
        assert main(["ppo", "--config", str(path), "--print-config"]) == 0, path.name
        printed = yaml.safe_load(capsys.readouterr().out)
        assert "learning_rate" not in printed["ppo"] and "save_steps" not in printed, path.name
