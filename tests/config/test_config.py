"""Config: presets map to their flags and back, and the whole config is plain JSON data."""

from __future__ import annotations

import json

import pytest

from harnet.config.io import ConfigError, from_dict
from harnet.config.model import FRAGMENT_DIR, HYBRID_MINUS, PRESETS, HARNetConfig, InferenceConfig, to_dict


@pytest.mark.parametrize("name", PRESETS)
def test_preset_name_round_trip(name: str) -> None:
    """preset(name).preset_name == name; a preset keeps the overrides it was given."""
    cfg = HARNetConfig.preset(name, num_classes=7)
    assert cfg.preset_name == name
    assert cfg.num_classes == 7
    assert cfg.dual_prediction == (name == "hybrid")


def test_preset_flags_and_custom() -> None:
    """The ablation rows switch exactly their attention; a mix no preset has is 'custom'."""
    assert HARNetConfig().preset_name == "retinanet"
    spatial = HARNetConfig.preset("spatial")
    assert (spatial.spatial.enabled, spatial.channel.enabled, spatial.aligned.enabled) == (True, False, False)
    hybrid = HARNetConfig.preset("hybrid")
    assert (hybrid.spatial.enabled, hybrid.channel.enabled, hybrid.aligned.enabled) == (True, True, True)
    hybrid.dual_prediction = False
    assert hybrid.preset_name == "hybrid_no_dual"
    mix = HARNetConfig.preset("spatial")
    mix.dual_prediction = True
    assert mix.preset_name == "custom"
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        HARNetConfig.preset("nope")


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out.update(_leaves(value, path + ".") if isinstance(value, dict) else {path: value})
    return out


@pytest.mark.parametrize("name", HYBRID_MINUS)
def test_each_hybrid_minus_row_changes_exactly_its_part(name: str) -> None:
    """``hybrid_no_X`` differs from ``hybrid`` in X's keys only (``no_dual``: set 2, with the SE it holds)."""
    hybrid, row = _leaves(to_dict(HARNetConfig.preset("hybrid"))), _leaves(to_dict(HARNetConfig.preset(name)))
    changed = {key for key in hybrid if hybrid[key] != row[key]}
    expected = {"hybrid_no_spatial": {"spatial.enabled"}, "hybrid_no_channel": {"channel.enabled"},
                "hybrid_no_aligned": {"aligned.enabled"}, "hybrid_no_dual": {"dual_prediction", "channel.se"}}
    assert changed == expected[name]


def test_every_preset_file_is_listed() -> None:
    """A preset file nobody lists would be invisible to ``harnet info`` and the ablation."""
    files = {p.stem for p in (FRAGMENT_DIR / "presets").glob("*.yaml")}
    assert files == {*PRESETS, *HYBRID_MINUS}


def test_se_on_set2_needs_the_second_set() -> None:
    with pytest.raises(ConfigError, match="channel.se: set2"):
        from_dict(HARNetConfig, {"channel": {"enabled": True, "se": "set2"}}, "model")


def test_inference_recipes_are_separate_from_presets() -> None:
    """``inference: authors`` is the authors' test recipe whatever the preset; a mapping with ``recipe``
    takes the recipe and its own keys on top."""
    from harnet.config.model import resolve_model_dict

    authors = from_dict(HARNetConfig, resolve_model_dict({"preset": "retinanet", "inference": "authors"}), "model")
    i = authors.inference
    assert (i.nms, i.soft_nms_sigma, i.box_voting_iou, i.box_voting_neighbors, i.final_score_thresh) == (
        "soft_nms", 0.5, 0.6, 4, 0.05)
    assert authors.preset_name == "retinanet"
    mixed = resolve_model_dict({"inference": {"recipe": "authors", "min_box_size": 8}})["inference"]
    assert mixed["nms"] == "soft_nms" and mixed["min_box_size"] == 8
    with pytest.raises(ConfigError, match="unknown inference recipe 'nope'"):
        resolve_model_dict({"inference": "nope"})


def test_presets_do_not_share_mutable_state() -> None:
    """Changing one config's sub-config leaves fresh configs untouched (default_factory, not shared)."""
    a = HARNetConfig.preset("hybrid")
    a.spatial.rates = (1, 1, 1, 1)
    a.transform.min_size = (320,)
    b = HARNetConfig.preset("hybrid")
    assert b.spatial.rates == (1, 2, 5, 2) and b.transform.min_size == (800,)


def test_hybrid_preset_is_the_authors_hybrid() -> None:
    """The authors' hybrid files: C4 (``fpn_conv4_1a``) and C5 blocks, msra head with the last tower GN at
    0.1, cross-level GN with 32 groups after every tower conv, the SE on set 2. No preset sets a test
    recipe; ``aligned`` is C5 only (their ``al2``)."""
    h = HARNetConfig.preset("hybrid")
    assert h.aligned.stages == ("c4", "c5") and h.aligned.out_relu and h.head.set2_after_mask
    assert h.head.conv_init == "msra" and h.head.last_norm_scale == 0.1
    assert (h.channel.norm, h.channel.gn_groups, h.channel.norm_convs, h.channel.se) == (
        "cross_level_gn", 32, None, "set2")
    for name in (*PRESETS, *HYBRID_MINUS):
        cfg = HARNetConfig.preset(name)
        assert cfg.inference == InferenceConfig()
        assert cfg.head.conv_init == ("msra" if name.startswith("hybrid") else "normal")
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


def test_input_defaults_to_rgb_and_needs_one_mean_per_channel() -> None:
    from harnet.config.model import InputConfig

    cfg = HARNetConfig()
    assert cfg.input.is_rgb and cfg.input.scale == 255.0 and cfg.input.describe() == "3 bands of uint8"
    four = from_dict(HARNetConfig, {"input": {"channels": 4, "dtype": "uint16"},
                                    "transform": {"image_mean": [1.0, 2.0, 3.0, 4.0], "image_std": [1, 1, 1, 1]}})
    assert four.input.scale == 1.0 and not four.input.is_rgb and len(four.transform.image_std) == 4
    with pytest.raises(ConfigError, match="input.channels is 4, image_mean has 3"):
        from_dict(HARNetConfig, {"input": {"channels": 4, "dtype": "uint16"}})
    with pytest.raises(ConfigError, match="one value per input channel each, got 3 and 2"):
        from_dict(HARNetConfig, {"transform": {"image_std": [1.0, 1.0]}})
    with pytest.raises(ConfigError, match="image_std: every value must be > 0"):
        from_dict(HARNetConfig, {"transform": {"image_std": [1.0, 0.0, 1.0]}})
    with pytest.raises(ConfigError, match="input.bands: 3 band numbers"):
        InputConfig(3, (4, 3), "uint8")
    with pytest.raises(ConfigError, match="'complex64' is not one of"):
        from_dict(HARNetConfig, {"input": {"dtype": "complex64"}})
    assert InputConfig(3, (4, 3, 2), "uint16").describe() == "bands 4, 3, 2 of uint16"


def test_data_bands_are_one_based() -> None:
    from harnet.config.experiment import load_experiment

    assert load_experiment(None, ["data.bands=[4, 3, 2]"]).data.bands == (4, 3, 2)
    with pytest.raises(ConfigError, match="data.bands: 1-based"):
        load_experiment(None, ["data.bands=[0, 1]"])
