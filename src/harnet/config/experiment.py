"""An experiment = model config + data + schedule: what a YAML file under ``configs/`` describes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harnet.config.io import ConfigError, from_dict, load_yaml, merge, parse_overrides
from harnet.config.model import HARNetConfig, resolve_model_dict, to_dict

CONFIG_DIR = Path(__file__).parent.parent / "configs"
# Version 2: head.norm / head.norm_groups, channel.norm and channel.se placement, set 2 as its own module,
# optimizer overrides by parameter name. Version 3: model.input (channels, bands, dtype), a mean/std per channel.
# CHANGELOG.md lists every version; harnet.engine.upgrade converts.
CONFIG_VERSION = 3


def _at_least(cfg: object, section: str, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value < minimum:
            raise ConfigError(f"{section}.{name}: must be >= {minimum}, got {value}")


@dataclass
class ShapesConfig:
    """The built-in synthetic dataset, generated on first use into ``root``."""

    root: str = "data/shapes"
    num_images: int = 300
    size: int = 128
    seed: int = 0
    difficulty: Literal["easy", "hard"] = "easy"


@dataclass
class DataConfig:
    """Where the images and boxes are. ``format: shapes`` needs no files: they are generated.

    coco: ``*_images`` is the image folder, ``*_annotations`` the instances JSON.
    voc: ``*_images`` is the VOC root (or flat folder), ``*_annotations`` the split name.
    csv: ``*_annotations`` is the CSV file, ``*_images`` an optional image root.
    yolo: ``*_annotations`` is the Ultralytics ``data.yaml`` (its ``train``/``val`` entry lists the split's
    images, their labels are under ``labels/``); ``*_images`` is not used.
    labelstudio: ``*_annotations`` is a Label Studio JSON export, ``*_images`` the folder holding its images.
    cvat: ``*_annotations`` is a CVAT for images 1.1 XML, ``*_images`` the folder holding its images.
    """

    format: Literal["shapes", "coco", "voc", "csv", "yolo", "labelstudio", "cvat"] = "shapes"
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    train_images: str = ""
    train_annotations: str = ""
    val_images: str = ""
    val_annotations: str = ""
    hflip_prob: float = 0.5
    # Vertical flips and quarter turns: right for aerial and microscope images (no "up"), wrong for street scenes.
    vflip_prob: float = 0.0
    rot90_prob: float = 0.0
    # Colour augmentation. true (= "distort"): torchvision's RandomPhotometricDistort, which also permutes
    # the RGB channels half the time (harmless from scratch, wrong for an ImageNet body that knows colours);
    # "jitter": the same brightness/contrast/saturation/hue jitter without the permutation; false: none.
    photometric: bool | Literal["distort", "jitter"] = True
    # The image bands the model reads, 1-based, in its channel order (e.g. [4, 3, 2]); None: all of them. The
    # band count and data type are read from the images (harnet.data.band_stats); see model.input.
    bands: tuple[int, ...] | None = None
    # Training only: a random crop of this many pixels square (padded with zeros where the image is smaller),
    # before the model's resize. Boxes are clipped to the crop and those left empty dropped. Crops of large
    # images at min_size = the crop (scale 1) with transform.test_min_size = the image's own size keep the
    # objects' pixel size at a fraction of a full image's step. None: no crop.
    random_crop: int | None = None
    num_workers: int = 0
    # Skip (and list in the run folder) bad images and annotations instead of stopping at the first;
    # also decodes every image up front to find truncated files. See harnet.data.issues.
    skip_bad: bool = False

    def __post_init__(self) -> None:
        _at_least(self, "data", 0, "num_workers")
        for name in ("hflip_prob", "vflip_prob", "rot90_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"data.{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.random_crop is not None:
            _at_least(self, "data", 1, "random_crop")
        if self.bands is not None and (not self.bands or min(self.bands) < 1):
            raise ConfigError(f"data.bands: 1-based band numbers such as [4, 3, 2], got {list(self.bands)}")


@dataclass(frozen=True)
class ParamOverride:
    """lr multiplier and weight decay for the parameters whose full name (``model.named_parameters()``)
    matches the glob ``pattern`` (``fnmatch``; ``*`` also crosses dots), like mmdetection's
    ``paramwise_cfg.custom_keys``. Addressing parameters by name keeps the recipe in the config, where a
    run records it, instead of in attributes of the modules.

    ``lr_mult`` composes with ``backbone_lr_mult`` and ``bias_lr_mult``; ``weight_decay`` (None: the
    usual rules) replaces the decay of every matched parameter, biases and norms included."""

    pattern: str
    lr_mult: float = 1.0
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        if not self.pattern:
            raise ConfigError("train.param_overrides: pattern must be a non-empty glob, e.g. 'fpn.*'")
        if not self.lr_mult >= 0:
            raise ConfigError(f"train.param_overrides {self.pattern!r}: lr_mult must be >= 0, got {self.lr_mult}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ConfigError(f"train.param_overrides {self.pattern!r}: weight_decay must be >= 0, "
                              f"got {self.weight_decay}")


# The authors' recipe: the deformable offset conv of the aligned attention learns at 0.1x the lr (0.2x for
# its bias with bias_lr_mult 2, as in their Caffe files). These entries may match nothing (a model without
# aligned attention); any other pattern that matches no parameter is an error (harnet.engine.optim).
DEFAULT_PARAM_OVERRIDES: tuple[ParamOverride, ...] = (ParamOverride("aligned.*.offset.*", lr_mult=0.1),)


@dataclass
class TrainConfig:
    """Optimizer and schedule. The paper's: SGD, momentum 0.9, wd 1e-4, linear warmup, step decay.
    AdamW converges in far fewer steps from scratch, which is what CPU-sized runs need."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    batch_size: int = 2
    max_steps: int = 90000
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    warmup_factor: float = 1.0 / 3
    lr_steps: tuple[int, ...] = (60000,)
    lr_gamma: float = 0.1
    grad_clip: float | None = None  # max global grad norm, always measured on unscaled gradients
    # Per-parameter lr and weight decay (harnet.engine.optim.parameter_groups). Multipliers compose with each
    # other and with the lr_mult of the first param_overrides entry whose pattern matches the parameter's name.
    backbone_lr_mult: float = 1.0  # the backbone body (not FPN/attention), e.g. 0.1 for a pretrained one
    bias_lr_mult: float = 1.0  # every bias (the authors' Caffe files: 2.0)
    bias_weight_decay: float | None = None  # None: weight_decay
    norm_weight_decay: float | None = None  # weights of GroupNorm/BatchNorm/CrossLevelGroupNorm...; None: weight_decay
    # By parameter name, first match wins (ParamOverride). A list given in YAML or --set replaces this one:
    # keep the default entry in it to keep the offset conv's 0.1.
    param_overrides: tuple[ParamOverride, ...] = DEFAULT_PARAM_OVERRIDES
    # Exponential moving average of the weights (harnet.engine.optim.ModelEMA), None: off. When on, evaluation,
    # best.pt and the "model" entry of checkpoints use the average; decay ramps up as
    # ema_decay * (1 - exp(-updates / ema_tau)) (ema_tau 0: constant decay).
    ema_decay: float | None = None
    ema_tau: float = 2000.0
    amp: bool = True  # mixed precision, used only on CUDA
    # auto: bfloat16 where the GPU supports it (no loss scaling needed), else float16 with a GradScaler.
    amp_dtype: Literal["auto", "float16", "bfloat16"] = "auto"
    channels_last: bool = False  # model weights (hence conv activations) in channels_last memory format
    eval_every: int = 0  # 0: evaluate at the end only
    checkpoint_every: int = 1000
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    # Skip a batch whose loss is NaN/inf (no update; the step still counts) instead of stopping; more
    # than MAX_NONFINITE_STREAK such batches in a row still stop the run. Count in metrics and summary.
    skip_nonfinite: bool = False
    # Start from another run's weights (a checkpoint or run folder): every tensor whose name and shape
    # match is loaded, the rest keep their initialisation. The paper's two-phase training: train the
    # RetinaNet base, then add the attentions. Ignored on --resume (the run's own last.pt wins).
    init_from: str | None = None
    # Wall-clock budget of the training loop in minutes (its periodic checkpoints and evaluations included;
    # the final evaluation comes after it): when spent, training ends as at max_steps (last.pt, final
    # evaluation, best.pt), whichever comes first. It counts the run's training time over all --resume
    # sessions (last.pt keeps it), as max_steps counts its steps; raise it to train on. None: no budget.
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        # Values that type-check but would hang (batch_size 0 never fills a batch) or crash late
        # (log_every 0 divides by zero) are config errors naming the key, caught before training.
        _at_least(self, "train", 1, "batch_size", "log_every")
        _at_least(self, "train", 0, "max_steps", "warmup_steps", "eval_every", "checkpoint_every")
        if self.threads is not None:
            _at_least(self, "train", 1, "threads")
        if not self.lr > 0:
            raise ConfigError(f"train.lr: must be > 0, got {self.lr}")
        for name in ("backbone_lr_mult", "bias_lr_mult", "ema_tau"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("bias_weight_decay", "norm_weight_decay"):
            if (value := getattr(self, name)) is not None and value < 0:
                raise ConfigError(f"train.{name}: must be >= 0, got {value}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"train.max_minutes: must be > 0 (or null: no budget), got {self.max_minutes}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay: must be in [0, 1), got {self.ema_decay}")


@dataclass
class ExperimentConfig:
    model: HARNetConfig = field(default_factory=HARNetConfig)
    # ``torchvision_retinanet`` trains torchvision's RetinaNet built to ``model``'s recipe (attentions
    # off): the same-budget peer of an ablation (see torchvision_peer.py).
    detector: Literal["harnet", "torchvision_retinanet"] = "harnet"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/exp"
    # The schema this config is written in. A run saves it with its config, so that a later harnet knows
    # which upgrade steps (harnet.engine.upgrade) bring the run's config and weights to its own schema.
    config_version: int = CONFIG_VERSION

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        """Validate a nested dict; ``model.preset: NAME`` applies that preset first and the file's explicit
        model keys on top of it, ``model.inference: NAME`` picks a test recipe (see ``resolve_model_dict``).
        A dict written for an older ``config_version`` must be upgraded first (``harnet.engine.upgrade``)."""
        version = data.get("config_version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"config_version: {version!r} is not this harnet's ({CONFIG_VERSION}); a run's own "
                              "config is upgraded on load, a config file must be written for this version "
                              "(see CHANGELOG.md)")
        model = resolve_model_dict(dict(data.get("model") or {}))
        return from_dict(cls, {**data, "model": model})


def load_experiment(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> ExperimentConfig:
    """YAML file (or defaults when ``path`` is None; ``base:`` resolved, see :func:`load_experiment_yaml`)
    + ``--set`` overrides -> validated config.

    ``upgrade`` rewrites the file first (a run's own saved config from an older version: pass
    ``harnet.engine.upgrade.upgrade_config``)."""
    data = load_experiment_yaml(path) if path is not None else {}
    if upgrade is not None:
        data = upgrade(data)
    data = merge(data, parse_overrides(overrides))
    return ExperimentConfig.from_dict(data)


def load_experiment_yaml(path: str | Path, _seen: frozenset[Path] = frozenset()) -> dict[str, Any]:
    """A YAML experiment as a dict, its ``base:`` resolved: ``base: NAME`` loads that config first (a
    ``NAME.yaml`` beside this file, else the built-in config ``NAME``) and merges this file's keys over it,
    as detectron2's config files import a common one and override fields. Bases may have bases."""
    path = Path(path)
    data = load_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: expected a config name or file, got {base!r}")
    sibling = path.parent / (base if base.endswith((".yaml", ".yml")) else f"{base}.yaml")
    base_path = sibling if sibling.is_file() else builtin_config(base)
    seen = _seen | {path.resolve()}
    if base_path.resolve() in seen:
        raise ConfigError(f"{path}: base: {base} leads back to this file")
    return merge(load_experiment_yaml(base_path, seen), data)


def config_path(value: str) -> Path:
    """A ``--config`` value: a YAML path, or the name of a built-in config (e.g. ``demo``)."""
    path = Path(value)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return builtin_config(value)


def builtin_config(name: str) -> Path:
    """Path of a config shipped with the package (``configs/<name>.yaml``)."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no built-in config {name!r}; known: {', '.join(known)}")
    return path
