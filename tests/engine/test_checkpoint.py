"""Checkpoints: atomic, weights-only, refusing pickled code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from harnet.config.experiment import CONFIG_VERSION
from harnet.config.model import HARNetConfig
from harnet.engine import checkpoint
from harnet.modeling.harnet import HARNet


def test_atomic_save_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"model": {"w": torch.ones(2)}, "config": {}}, path)
    checkpoint.save_atomic({"model": {"w": torch.zeros(2)}, "config": {}}, path)
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Evil()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="evil.pt: refused to load"):
        checkpoint.load(path)


@pytest.mark.parametrize("content", [b"", b"garbage", pickle.dumps([1, 2])])
def test_unreadable_files_name_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError, match="bad.pt"):
        checkpoint.load(path)


def test_missing_and_not_a_harnet_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "none.pt")
    with pytest.raises(checkpoint.CheckpointError, match="no best.pt or last.pt"):
        checkpoint.load(tmp_path)
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a harnet checkpoint"):
        checkpoint.load(tmp_path / "other.pt")


def test_rng_state_round_trip() -> None:
    state = checkpoint.rng_state()
    a = torch.rand(3)
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)


def _version1(model: dict) -> dict:
    """A model config as harnet wrote it at config version 1 (before head.norm and channel.se existed)."""
    old = {k: dict(v) if isinstance(v, dict) else v for k, v in model.items()}
    old["head"]["group_norm"] = old["head"].pop("norm") == "gn"
    old["head"].pop("norm_groups")
    old["channel"]["cross_level_gn"] = old["channel"].pop("norm") == "cross_level_gn"
    old["channel"]["se"] = old["channel"]["se"] != "none"
    old["aligned"]["offset_lr_mult"] = 0.1
    old["anchors"]["strides"] = [8, 16, 32, 64, 128] if old["anchors"].pop("stride_mode") == "level" else None
    return old


def _version1_weights(state: dict) -> dict:
    renames = {"head.set2.cls_conv.": "head.cls_extra.", "head.set2.box_conv.": "head.box_extra.",
               "head.set2.predictor.": "head.predictor2."}
    out = {}
    for key, value in state.items():
        old = next((o + key[len(n):] for n, o in renames.items() if key.startswith(n)), key)
        out[old] = value
    return out


def _pre_authors_wiring(model: dict) -> dict:
    """A model config as harnet wrote it before the authors' wiring fields existed (config version 0)."""
    old = _version1(model)
    for section, key in (("aligned", "out_relu"), ("head", "set2_after_mask"), ("anchors", "strides"),
                         ("head", "conv_init"), ("head", "last_norm_scale"), ("fpn", "p5_smooth"),
                         ("loss", "normalizer"), ("loss", "level_min_positives"), ("inference", "final_score_thresh"),
                         ("inference", "box_voting_neighbors"), ("inference", "min_box_size"),
                         ("transform", "test_max_size")):
        old[section].pop(key)
    return old


def _old_hybrid() -> tuple[HARNetConfig, torch.nn.Module]:
    from harnet.config.model import BackboneConfig

    cfg = HARNetConfig.preset("hybrid", num_classes=2, backbone=BackboneConfig("resnet18", "bn", 5))
    cfg.fpn.channels, cfg.aligned.mid_channels, cfg.channel.gn_groups = 16, 16, 8
    cfg.transform.min_size, cfg.transform.max_size = (72,), 72
    cfg.aligned.stages = ("c5",)
    cfg.inference.score_thresh = 0.0  # an untrained model: keep every candidate, so there is something to compare
    torch.manual_seed(0)
    return cfg, HARNet(cfg).eval()


def _same_predictions(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    image = [torch.rand(3, 72, 72, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        got, want = model.eval()(image)[0], reference(image)[0]
    assert want["boxes"].shape[0] > 0
    torch.testing.assert_close(got["boxes"], want["boxes"])
    torch.testing.assert_close(got["scores"], want["scores"])


def test_checkpoints_from_before_the_authors_wiring_load_with_the_legacy_flags(tmp_path: Path) -> None:
    """A version-0 hybrid checkpoint loads into ``set2_after_mask: false``, ``out_relu: false`` and
    torchvision's anchor strides (made explicit in its config), and predicts exactly as a model built with them."""
    import yaml

    from harnet.config.experiment import load_experiment
    from harnet.config.io import ConfigError
    from harnet.config.model import to_dict
    from harnet.engine.upgrade import upgrade_config

    cfg, _ = _old_hybrid()
    cfg.head.set2_after_mask, cfg.aligned.out_relu, cfg.anchors.stride_mode = False, False, "torchvision"
    torch.manual_seed(0)
    legacy_model = HARNet(cfg).eval()
    old_config = {"model": _pre_authors_wiring(to_dict(cfg)), "detector": "harnet"}
    path = tmp_path / "old.pt"
    checkpoint.save_atomic({"model": _version1_weights(legacy_model.state_dict()), "config": old_config}, path)
    ckpt = checkpoint.load(path)
    loaded_cfg = checkpoint.model_config(ckpt)
    assert (loaded_cfg.head.set2_after_mask, loaded_cfg.aligned.out_relu, loaded_cfg.anchors.stride_mode) == (
        False, False, "torchvision")
    _same_predictions(checkpoint.build_model(ckpt), legacy_model)
    # A run folder's own config.yaml from then resumes with the same flags; a user's YAML is not upgraded.
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old_config))
    resumed = load_experiment(tmp_path / "config.yaml", upgrade=upgrade_config)
    assert not resumed.model.head.set2_after_mask and resumed.model.anchors.stride_mode == "torchvision"
    with pytest.raises(ConfigError, match=r"unknown config key 'model\."):
        load_experiment(tmp_path / "config.yaml")


def test_version1_checkpoints_load_with_their_wiring_named(tmp_path: Path) -> None:
    """A version-1 hybrid (SE on set 2 implied by dual prediction, set 2 under head.cls_extra/predictor2) and a
    version-1 RetinaNet-GN (head.group_norm with channel.gn_groups) load with the same weights and predictions."""
    from harnet.config.model import to_dict

    cfg, model = _old_hybrid()
    config = {"model": _version1(to_dict(cfg)), "detector": "harnet"}
    config["model"]["aligned"]["offset_lr_mult"] = 0.2
    path = tmp_path / "v1.pt"
    checkpoint.save_atomic({"model": _version1_weights(model.state_dict()), "config": config}, path)
    ckpt = checkpoint.load(path)
    assert ckpt["config"]["config_version"] == CONFIG_VERSION
    assert ckpt["saved_config_version"] == 1  # what the run wrote, for reports
    assert checkpoint.model_config(ckpt).channel.se == "set2"
    assert ckpt["config"]["train"]["param_overrides"] == [{"pattern": "aligned.*.offset.*", "lr_mult": 0.2}]
    assert set(ckpt["model"]) == set(model.state_dict())
    _same_predictions(checkpoint.build_model(ckpt), model)

    gn = HARNetConfig.preset("retinanet", num_classes=2)
    gn.head.norm, gn.head.norm_groups = "gn", 8
    old = _version1(to_dict(gn))
    old["channel"]["gn_groups"] = 8
    from harnet.engine.upgrade import upgrade_config

    upgraded = upgrade_config({"model": old})["model"]
    assert (upgraded["head"]["norm"], upgraded["head"]["norm_groups"], upgraded["channel"]["se"]) == ("gn", 8, "towers")


def test_a_newer_config_version_is_refused(tmp_path: Path) -> None:
    from harnet.config.model import to_dict

    cfg, model = _old_hybrid()
    path = tmp_path / "new.pt"
    checkpoint.save_atomic({"model": model.state_dict(), "config": {"model": to_dict(cfg), "config_version": 99}},
                           path)
    with pytest.raises(checkpoint.CheckpointError, match="config_version: 99 is not one this harnet knows"):
        checkpoint.load(path)


@pytest.mark.parametrize(("strides", "mode"), [([8, 16, 32, 64, 128], "level"), (None, "torchvision")])
def test_saved_anchor_strides_become_the_stride_mode(strides: list[int] | None, mode: str) -> None:
    """Version-1 runs saved ``anchors.strides`` (the pyramid's strides, or null for torchvision's rule); they
    load as the ``anchors.stride_mode`` that places the anchors the same way, and any other strides are refused."""
    from harnet.config.io import ConfigError, from_dict
    from harnet.config.model import to_dict
    from harnet.engine.upgrade import upgrade_config

    saved = _version1(to_dict(HARNetConfig()))
    saved["anchors"]["strides"] = strides
    upgraded = upgrade_config({"model": saved})["model"]
    assert "strides" not in upgraded["anchors"] and upgraded["anchors"]["stride_mode"] == mode
    assert from_dict(HARNetConfig, upgraded).anchors.stride_mode == mode
    saved["anchors"]["strides"] = [8, 16, 32, 64, 64]
    with pytest.raises(ConfigError, match="anchors.strides"):
        upgrade_config({"model": saved})


def test_version2_runs_read_rgb_and_resume_without_a_config_difference(tmp_path: Path) -> None:
    """Version-2 runs saved no ``model.input``: they read the 3 RGB channels of their images, which the upgrade
    writes out, so the config a resume builds equals the saved one."""
    from harnet.config.model import to_dict

    cfg = HARNetConfig.preset("retinanet", num_classes=2)
    model = HARNet(cfg)
    saved = to_dict(cfg)
    del saved["input"]
    path = tmp_path / "v2.pt"
    checkpoint.save_atomic({"model": model.state_dict(), "config": {"model": saved, "config_version": 2}}, path)
    ckpt = checkpoint.load(path)
    assert ckpt["config"]["model"]["input"] == {"channels": 3, "bands": None, "dtype": "uint8"}
    assert checkpoint.model_config(ckpt).input.is_rgb
    checkpoint.load_model_weights(HARNet(cfg), ckpt, cfg)  # no "made for a different model config"
