"""Checkpoints: atomic, weights-only, refusing pickled code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from harnet.engine import checkpoint


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


def _pre_authors_wiring(model: dict) -> dict:
    """A model config as harnet wrote it before the authors' wiring fields existed."""
    old = {k: dict(v) if isinstance(v, dict) else v for k, v in model.items()}
    for section, key in (("aligned", "out_relu"), ("head", "set2_after_mask"), ("anchors", "stride_mode"),
                         ("head", "conv_init"), ("head", "last_norm_scale"), ("fpn", "p5_smooth"),
                         ("loss", "normalizer"), ("loss", "level_min_positives"), ("inference", "final_score_thresh"),
                         ("inference", "box_voting_neighbors"), ("inference", "min_box_size"),
                         ("transform", "test_max_size")):
        old[section].pop(key)
    return old


def test_checkpoints_from_before_the_authors_wiring_load_with_the_legacy_flags(tmp_path: Path) -> None:
    """An old hybrid checkpoint loads into ``set2_after_mask: false``, ``out_relu: false`` and torchvision's
    anchor strides (made explicit in its config), and predicts exactly as a model built with them."""
    from harnet.config.experiment import load_experiment
    from harnet.config.model import BackboneConfig, HARNetConfig, to_dict
    from harnet.modeling.harnet import HARNet

    cfg = HARNetConfig.preset("hybrid", num_classes=2, backbone=BackboneConfig("resnet18", "bn", 5))
    cfg.fpn.channels, cfg.aligned.mid_channels, cfg.channel.gn_groups = 16, 16, 8
    cfg.transform.min_size, cfg.transform.max_size = (72,), 72
    cfg.aligned.stages = ("c5",)
    cfg.head.set2_after_mask, cfg.aligned.out_relu, cfg.anchors.stride_mode = False, False, "torchvision"
    torch.manual_seed(0)
    legacy_model = HARNet(cfg).eval()
    old_config = {"model": _pre_authors_wiring(to_dict(cfg)), "detector": "harnet"}
    path = tmp_path / "old.pt"
    checkpoint.save_atomic({"model": legacy_model.state_dict(), "config": old_config}, path)
    ckpt = checkpoint.load(path)
    loaded_cfg = checkpoint.model_config(ckpt)
    assert (loaded_cfg.head.set2_after_mask, loaded_cfg.aligned.out_relu, loaded_cfg.anchors.stride_mode) == (
        False, False, "torchvision")
    model = checkpoint.build_model(ckpt).eval()
    image = [torch.rand(3, 72, 72, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        got, want = model(image)[0], legacy_model(image)[0]
    torch.testing.assert_close(got["boxes"], want["boxes"])
    torch.testing.assert_close(got["scores"], want["scores"])
    # A run folder's own config.yaml from then resumes with the same flags; a user's YAML is not touched.
    import yaml
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old_config))
    resumed = load_experiment(tmp_path / "config.yaml", upgrade=checkpoint.upgrade_saved_model_config)
    assert not resumed.model.head.set2_after_mask and resumed.model.anchors.stride_mode == "torchvision"
    fresh = load_experiment(tmp_path / "config.yaml")
    assert fresh.model.head.set2_after_mask and fresh.model.anchors.stride_mode == "level"


@pytest.mark.parametrize(("strides", "mode"), [([8, 16, 32, 64, 128], "level"), (None, "torchvision")])
def test_saved_anchor_strides_become_the_stride_mode(strides: list[int] | None, mode: str) -> None:
    """Runs saved ``anchors.strides`` (the pyramid's strides, or null for torchvision's rule); they load as
    the ``anchors.stride_mode`` that places the anchors the same way, and any other strides are refused."""
    from harnet.config.io import ConfigError, from_dict
    from harnet.config.model import HARNetConfig, to_dict

    saved = to_dict(HARNetConfig())
    saved["anchors"].pop("stride_mode")
    saved["anchors"]["strides"] = strides
    upgraded = checkpoint.upgrade_saved_model_config(saved)
    assert "strides" not in upgraded["anchors"] and upgraded["anchors"]["stride_mode"] == mode
    assert from_dict(HARNetConfig, upgraded).anchors.stride_mode == mode
    saved["anchors"]["strides"] = [8, 16, 32, 64, 64]
    with pytest.raises(ConfigError, match="anchors.strides"):
        checkpoint.upgrade_saved_model_config(saved)
