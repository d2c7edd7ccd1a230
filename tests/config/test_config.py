"""Config: presets map to their flags and back, and the whole config is plain JSON data."""

from __future__ import annotations

import json

import pytest

from harnet.config.model import PRESETS, HARNetConfig, InferenceConfig, to_dict


@pytest.mark.parametrize("name", PRESETS)
def test_preset_name_round_trip(name: str) -> None:
    """preset(name).preset_name == name; a preset keeps the overrides it was given."""
    cfg = HARNetConfig.preset(name, num_classes=7)
    assert cfg.preset_name == name
    assert cfg.num_classes == 7
    assert cfg.dual_prediction == (name == "hybrid")


def test_preset_flags_and_custom() -> None:
    """The ablation rows switch exactly their attention; any other mix is 'custom'."""
    assert HARNetConfig().preset_name == "retinanet"
    spatial = HARNetConfig.preset("spatial")
    assert (spatial.spatial.enabled, spatial.channel.enabled, spatial.aligned.enabled) == (True, False, False)
    hybrid = HARNetConfig.preset("hybrid")
    assert (hybrid.spatial.enabled, hybrid.channel.enabled, hybrid.aligned.enabled) == (True, True, True)
    hybrid.dual_prediction = False
    assert hybrid.preset_name == "custom"
    with pytest.raises(ValueError, match="unknown preset"):
        HARNetConfig.preset("nope")


def test_presets_do_not_share_mutable_state() -> None:
    """Changing one config's sub-config leaves fresh configs untouched (default_factory, not shared)."""
    a = HARNetConfig.preset("hybrid")
    a.spatial.rates = (1, 1, 1, 1)
    a.transform.min_size = (320,)
    b = HARNetConfig.preset("hybrid")
    assert b.spatial.rates == (1, 2, 5, 2) and b.transform.min_size == (800,)


def test_hybrid_preset_is_the_authors_hybrid() -> None:
    """The authors' hybrid files: C4 (``fpn_conv4_1a``) and C5 blocks, msra head with the last tower GN at
    0.1, and their test recipe (Gaussian Soft-NMS sigma 0.5, voting at 0.6, final score >= 0.05). The
    other presets keep RetinaNet's NMS; ``aligned`` is C5 only (their ``al2``)."""
    h = HARNetConfig.preset("hybrid")
    assert h.aligned.stages == ("c4", "c5") and h.aligned.out_relu and h.head.set2_after_mask
    assert h.head.conv_init == "msra" and h.head.last_norm_scale == 0.1
    i = h.inference
    assert (i.nms, i.soft_nms_sigma, i.box_voting_iou, i.box_voting_neighbors, i.final_score_thresh) == (
        "soft_nms", 0.5, 0.6, 4, 0.05)
    for name in ("retinanet", "spatial", "channel", "aligned"):
        cfg = HARNetConfig.preset(name)
        assert cfg.inference == InferenceConfig() and cfg.head.conv_init == "normal"
    assert HARNetConfig.preset("aligned").aligned.stages == ("c5",)


def test_to_dict_is_json_serialisable() -> None:
    """to_dict gives dicts/lists/scalars only: json.dumps works and the values survive a round trip."""
    cfg = HARNetConfig.preset("hybrid", num_classes=3)
    data = to_dict(cfg)
    text = json.dumps(data)
    back = json.loads(text)
    assert back == data
    assert back["num_classes"] == 3 and back["spatial"]["rates"] == [1, 2, 5, 2]
    assert back["anchors"]["scales"] == [1.0, 2**0.5]
    assert back["aligned"]["stages"] == ["c4", "c5"]
    assert back["anchors"]["stride_mode"] == "level"
    assert set(back) >= {"backbone", "fpn", "anchors", "head", "loss", "inference", "transform"}



def test_channel_norm_convs_defaults_to_every_conv_so_saved_configs_keep_their_wiring() -> None:
    """A run saved before ``channel.norm_convs`` existed normalised all four convs: the missing key
    (default None) rebuilds exactly that; a negative count is refused."""
    from harnet.config.io import ConfigError, from_dict

    saved = from_dict(HARNetConfig, {"channel": {"enabled": True, "gn_groups": 32}}, "model")
    assert saved.channel.norm_convs is None
    with pytest.raises((ConfigError, ValueError), match="channel.norm_convs"):
        from_dict(HARNetConfig, {"channel": {"norm_convs": -1}}, "model")
