"""The one upgrade chain: a run saved by an older harnet, brought to this version's config and weights.

A run saves its resolved config (every field) with ``config_version``; runs from before that field are
version 0 or 1 (:func:`saved_version` tells them apart, the one place a missing key is read as history).
Each step takes a saved experiment dict of version ``v`` to ``v + 1``: it makes the old wiring explicit
in the new fields, so the weights predict as they were trained, and says how state_dict keys moved.
CHANGELOG.md describes every version.

The chain applies to what a run wrote (checkpoints, a run folder's ``config.yaml``), never to a user's
YAML file, where a missing key means today's default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harnet.config.experiment import CONFIG_VERSION
from harnet.config.io import ConfigError
from harnet.config.pyramid import LEVEL_STRIDES

Saved = dict[str, Any]


def saved_version(config: Saved) -> int:
    """The schema a saved experiment dict was written in. Version 0 (before the authors' exact wiring)
    saved no ``model.aligned.out_relu``; version 1 saved it but no ``config_version``."""
    if "config_version" in config:
        version = config["config_version"]
        if not isinstance(version, int) or not 0 <= version <= CONFIG_VERSION:
            raise ConfigError(f"config_version: {version!r} is not one this harnet knows (0..{CONFIG_VERSION}); "
                              "a newer harnet wrote it")
        return version
    aligned = (config.get("model") or {}).get("aligned")
    return 1 if isinstance(aligned, dict) and "out_relu" in aligned else 0


def _section(config: Saved, *path: str) -> dict[str, Any]:
    """A copy of the nested mapping at ``path``, written back into ``config`` (created when missing)."""
    node = config
    for key in path:
        node[key] = dict(node.get(key) or {})
        node = node[key]
    return node


def _v0_to_v1(config: Saved) -> Saved:
    """Version 0 trained set 2 on the unmasked towers, ended the aligned branch at its scale (no ReLU) and
    spaced anchors by torchvision's padded-size // grid-size; version 1 made each a field."""
    _section(config, "model", "head")["set2_after_mask"] = False
    _section(config, "model", "aligned")["out_relu"] = False
    _section(config, "model", "anchors")["strides"] = None
    return config


def _v1_to_v2(config: Saved) -> Saved:
    """Version 2 names the head's wiring: ``head.group_norm`` (whose groups came from ``channel.gn_groups``)
    becomes ``head.norm``/``head.norm_groups``; ``channel.cross_level_gn`` becomes ``channel.norm``; the SE
    (on set 2 in a dual-prediction model, else on the towers) gets its placement ``channel.se``; the offset
    conv's lr multiplier moves from ``model.aligned`` to ``train.param_overrides``; ``anchors.strides`` (a copy
    of the pyramid's strides, or null for torchvision's spacing) becomes the rule it stood for,
    ``anchors.stride_mode``."""
    head, channel = _section(config, "model", "head"), _section(config, "model", "channel")
    dual = bool(config["model"].get("dual_prediction", False))
    groups = channel.get("gn_groups", 32)
    head["norm"] = "gn" if head.pop("group_norm", False) else "none"
    head["norm_groups"] = groups
    channel["norm"] = "cross_level_gn" if channel.pop("cross_level_gn", True) else "gn"
    channel["se"] = ("set2" if dual else "towers") if channel.get("se", True) else "none"
    anchors = _section(config, "model", "anchors")
    strides = anchors.pop("strides", list(LEVEL_STRIDES))
    if strides is not None and list(strides) != list(LEVEL_STRIDES):
        raise ConfigError(f"model.anchors.strides: {list(strides)} is neither the pyramid's {list(LEVEL_STRIDES)} "
                          "nor null")
    anchors["stride_mode"] = "level" if strides is not None else "torchvision"
    aligned = _section(config, "model", "aligned")
    mult = aligned.pop("offset_lr_mult", 0.1)
    if mult != 0.1:
        train = _section(config, "train")
        train["param_overrides"] = [{"pattern": "aligned.*.offset.*", "lr_mult": mult}]
    return config


def _v2_to_v3(config: Saved) -> Saved:
    """Version 3 describes the network's input (``model.input``: channels, bands, dtype). Every earlier run read
    the 3 RGB channels of its images in [0, 1]: the default, written out so the saved config equals the one
    a resume builds."""
    model = _section(config, "model")
    model.setdefault("input", {"channels": 3, "bands": None, "dtype": "uint8"})
    return config


# (step, state_dict key renames as (old prefix, new prefix)), indexed by the version the step starts from.
_STEPS: tuple[tuple[Callable[[Saved], Saved], tuple[tuple[str, str], ...]], ...] = (
    (_v0_to_v1, ()),
    (_v1_to_v2, (("head.cls_extra.", "head.set2.cls_conv."), ("head.box_extra.", "head.set2.box_conv."),
                 ("head.predictor2.", "head.set2.predictor."))),
    (_v2_to_v3, ()),
)
assert len(_STEPS) == CONFIG_VERSION, "one upgrade step per config version"


def upgrade_config(config: Saved) -> Saved:
    """A saved experiment dict in this version's schema (a new dict; ``config`` is not changed)."""
    version = saved_version(config)
    config = {**config, "model": dict(config.get("model") or {})}
    for step, _ in _STEPS[version:]:
        config = step(config)
    config["config_version"] = CONFIG_VERSION
    return config


def upgrade_state_dict(state: dict[str, Any], version: int) -> dict[str, Any]:
    """Model weights saved by a run of config ``version`` under this version's parameter names. The
    parameter order never changes between versions, so an optimizer's state (kept by index) stays valid."""
    for _, renames in _STEPS[version:]:
        for old, new in renames:
            state = {new + k[len(old):] if k.startswith(old) else k: v for k, v in state.items()}
    return state
