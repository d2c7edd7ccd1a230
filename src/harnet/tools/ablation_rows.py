"""The ablation's built-in rows (the paper's Table 1 and the hybrid minus each part), torch-free so that the
command line can list them without loading the training stack."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AblationRow:
    name: str
    overrides: tuple[str, ...]  # ``--set`` items applied on top of the experiment config
    description: str
    # The row whose run of the same seed this row's runs start from (``train.init_from``: the paper's
    # two-phase recipe); they are queued after every independent run and wait for it. None: from scratch.
    init_from_row: str | None = None


ROWS: tuple[AblationRow, ...] = (
    AblationRow("torchvision_retinanet", ("detector=torchvision_retinanet", "model.preset=retinanet"),
                "torchvision's RetinaNet, same recipe"),
    AblationRow("retinanet", ("model.preset=retinanet",), "no attention"),
    AblationRow("spatial", ("model.preset=spatial",), "spatial attention"),
    AblationRow("channel", ("model.preset=channel",), "channel attention (cross-level GN + SE)"),
    AblationRow("aligned", ("model.preset=aligned",), "aligned attention (deformable C5)"),
    AblationRow("hybrid", ("model.preset=hybrid",), "all three + joint dual prediction"),
    AblationRow("hybrid_no_spatial", ("model.preset=hybrid_no_spatial",), "hybrid - spatial"),
    AblationRow("hybrid_no_channel", ("model.preset=hybrid_no_channel",), "hybrid - channel"),
    AblationRow("hybrid_no_aligned", ("model.preset=hybrid_no_aligned",), "hybrid - aligned"),
    AblationRow("hybrid_no_dual", ("model.preset=hybrid_no_dual",),
                "hybrid - set 2 (its extra conv, SE and predictors: one prediction set)"),
)
ROW_NAMES = tuple(row.name for row in ROWS)
