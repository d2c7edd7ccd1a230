"""Config loading: every key and type checked, overrides parsed as YAML, presets applied."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harnet.config.experiment import (
    ExperimentConfig,
    ParamOverride,
    TrainConfig,
    builtin_config,
    config_path,
    load_experiment,
)
from harnet.config.io import ConfigError, from_dict, load_yaml, merge, parse_overrides
from harnet.config.model import HARNetConfig, to_dict


def test_round_trip_of_every_preset() -> None:
    for name in ("retinanet", "spatial", "channel", "aligned", "hybrid"):
        cfg = HARNetConfig.preset(name)
        assert from_dict(HARNetConfig, to_dict(cfg)) == cfg


def test_overrides_are_typed_yaml() -> None:
    tree = parse_overrides(["train.lr=0.01", "model.spatial.enabled=true", "model.transform.min_size=[256, 320]"])
    cfg = ExperimentConfig.from_dict(tree)
    assert cfg.train.lr == 0.01 and cfg.model.spatial.enabled
    assert cfg.model.transform.min_size == (256, 320)


def test_scalar_for_tuple_and_int_for_float() -> None:
    cfg = load_experiment(None, ["model.transform.min_size=512", "train.lr=1"])
    assert cfg.model.transform.min_size == (512,) and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.spatal.enabled=true", "unknown config key 'model.spatal'"),
        ("train.lr=fast", "train.lr: expected float"),
        ("model.backbone.name=vgg", "model.backbone.name: 'vgg' is not one of"),
        ("train.batch_size=2.5", "train.batch_size: expected int"),
        ("model.preset=nope", "unknown preset 'nope'"),
        ("novalue", "must look like key=value"),
        ("train.ema_decay=1.0", "train.ema_decay: must be in [0, 1)"),
        ("train.backbone_lr_mult=-1", "train.backbone_lr_mult: must be >= 0"),
        ("train.norm_weight_decay=-0.1", "train.norm_weight_decay: must be >= 0"),
        ("train.amp_dtype=fp8", "train.amp_dtype: 'fp8' is not one of"),
        ("data.random_crop=0", "data.random_crop: must be >= 1"),
        ("data.random_crop=25.5", "data.random_crop: expected int"),
        ("data.rot90_prob=1.5", "data.rot90_prob: must be in [0, 1]"),
        ("train.param_overrides=[{pattern: 'fpn.*', lr_mult: -1}]", "train.param_overrides 'fpn.*': lr_mult must be"),
        ("train.param_overrides=[{pattern: 'fpn.*', weight_decay: -1}]", "'fpn.*': weight_decay must be >= 0"),
        ("train.param_overrides=[{pattern: ''}]", "train.param_overrides: pattern must be a non-empty glob"),
        ("train.param_overrides=[{lr_mult: 2}]", "missing config key 'train.param_overrides[0].pattern'"),
        ("train.param_overrides=[{pattern: 'x', lr: 2}]", "unknown config key 'train.param_overrides[0].lr'"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_experiment(None, [override])


def test_param_overrides_from_a_yaml_list_of_mappings(tmp_path: Path) -> None:
    """``--set`` and a YAML file both give a list of mappings; the list replaces the default one."""
    assert TrainConfig().param_overrides == (ParamOverride("aligned.*.offset.*", lr_mult=0.1),)
    cfg = load_experiment(None, ['train.param_overrides=[{pattern: "fpn.*", lr_mult: 0.5}]'])
    assert cfg.train.param_overrides == (ParamOverride("fpn.*", lr_mult=0.5),)
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  param_overrides:\n    - {pattern: 'aligned.*.offset.*', lr_mult: 0.1}\n"
                    "    - pattern: head.*\n      lr_mult: 2\n      weight_decay: 0\n")
    cfg = load_experiment(path)
    assert cfg.train.param_overrides == (ParamOverride("aligned.*.offset.*", 0.1), ParamOverride("head.*", 2.0, 0.0))
    assert isinstance(cfg.train.param_overrides[1].lr_mult, float)
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg  # a run's saved config.yaml loads back


def test_preset_then_explicit_keys() -> None:
    cfg = load_experiment(None, ["model.preset=hybrid", "model.spatial.enabled=false"])
    assert cfg.model.channel.enabled and cfg.model.aligned.enabled and not cfg.model.spatial.enabled


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_yaml(tmp_path / "missing.yaml")
    code = tmp_path / "code.yaml"
    code.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="code.yaml"):
        load_yaml(code)


def test_merge_is_recursive() -> None:
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_config_path_takes_a_yaml_path_or_a_builtin_name(tmp_path: Path) -> None:
    assert config_path("demo") == builtin_config("demo")
    assert config_path(str(tmp_path / "mine.yaml")) == tmp_path / "mine.yaml"  # need not exist yet
    with pytest.raises(ConfigError, match="no built-in config 'nope'"):
        config_path("nope")


def test_shipped_configs_load() -> None:
    for name in ("demo", "shapes_hard", "trees", "trees_cpu", "coco_r50_1x", "coco_r101_1x"):
        load_experiment(builtin_config(name))
    with pytest.raises(ConfigError, match="no built-in config 'nope'"):
        builtin_config("nope")


def test_base_merges_the_file_over_its_base(tmp_path: Path) -> None:
    (tmp_path / "common.yaml").write_text("output_dir: runs/a\nmodel: {preset: hybrid, num_classes: 5}\n"
                                          "train: {lr: 0.02, max_steps: 7}\n")
    (tmp_path / "child.yaml").write_text("base: common\nmodel: {num_classes: 3}\ntrain: {lr: 0.01}\n")
    cfg = load_experiment(tmp_path / "child.yaml")
    assert (cfg.model.num_classes, cfg.train.lr, cfg.train.max_steps) == (3, 0.01, 7)
    assert cfg.model.preset_name == "hybrid" and cfg.output_dir == "runs/a"


def test_base_names_a_builtin_config_and_r101_is_r50_plus_its_changes() -> None:
    r50, r101 = load_experiment(builtin_config("coco_r50_1x")), load_experiment(builtin_config("coco_r101_1x"))
    assert r101.model.backbone.name == "resnet101" and r101.model.spatial.mode == "residual"
    assert r101.data == r50.data and r101.model.loss == r50.model.loss
    assert "base:" in builtin_config("coco_r101_1x").read_text()


def test_base_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b\n")
    (tmp_path / "b.yaml").write_text("base: a\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: base: b leads back|b\.yaml: base: a leads back"):
        load_experiment(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: no_such_config\n")
    with pytest.raises(ConfigError, match="no built-in config 'no_such_config'"):
        load_experiment(tmp_path / "c.yaml")


def test_trees_cpu_is_the_trees_model_on_smaller_tiles_with_a_cheaper_step() -> None:
    """trees_cpu keeps the trees model (hybrid, pretrained Lite0, frozen BN), data and optimizer, trains and
    tests at one smaller size (the same scale both ways), freezes the body's two high-resolution stages and
    fits its schedule in its steps; it tests with the authors' recipe (``inference: authors``)
    where the ablation's trees keeps hard NMS."""
    trees, cpu = load_experiment(builtin_config("trees")), load_experiment(builtin_config("trees_cpu"))
    assert "base: trees" in builtin_config("trees_cpu").read_text()
    assert cpu.model.preset_name == "hybrid" and cpu.model.backbone.name == "efficientnet_lite0"
    assert (cpu.model.backbone.weights, cpu.model.backbone.norm) == ("imagenet", "frozen_bn")
    assert cpu.model.backbone.trainable_layers == 3 < trees.model.backbone.trainable_layers
    for section in ("fpn", "head", "loss", "anchors", "aligned", "spatial", "channel"):
        assert getattr(cpu.model, section) == getattr(trees.model, section), section
    assert cpu.model.inference.nms == "soft_nms" and trees.model.inference.nms == "nms"
    t = cpu.model.transform
    assert t.min_size == (t.max_size,) and t.max_size < trees.model.transform.max_size
    assert t.test_min_size is None and t.test_max_size is None and t.image_mean == trees.model.transform.image_mean
    assert cpu.data == trees.data and cpu.data.random_crop is None
    assert (cpu.train.optimizer, cpu.train.lr, cpu.train.batch_size) == (trees.train.optimizer, trees.train.lr, 4)
    assert cpu.train.warmup_steps < cpu.train.lr_steps[0] < cpu.train.lr_steps[-1] < cpu.train.max_steps
    assert cpu.train.channels_last and not trees.train.channels_last
