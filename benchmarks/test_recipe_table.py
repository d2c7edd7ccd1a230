"""Mean ± std AP per ablation row under the authors' test recipe (Gaussian Soft-NMS + box voting).

``benchmarks/gpu_session.sh`` scores every finished HAR-Net run of an ablation twice: with the config's
hard NMS (the ablation's own table, shared with torchvision's RetinaNet) and with
``harnet eval RUN --tta-scales 1 --tta-no-flip --out RUN/soft_nms``. This prints the second as a
markdown table beside the first:

    python benchmarks/test_recipe_table.py runs/gpu/shapes_hard runs/gpu/trees
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def table(ablation: Path) -> str:
    lines = [f"### {ablation.name}: hard NMS vs Soft-NMS + voting (AP x100, mean ± std over seeds)", "",
             "| row | hard NMS | Soft-NMS + voting | seeds |", "|---|---|---|---|"]
    for row in sorted(p for p in ablation.iterdir() if p.is_dir()):
        hard, soft = [], []
        for run in sorted(row.glob("seed*")):
            done, metrics = run / "done.json", run / "soft_nms" / "metrics.json"
            if done.is_file() and metrics.is_file():
                hard.append(100 * json.loads(done.read_text())["stats"]["AP"])
                soft.append(100 * json.loads(metrics.read_text())["stats"]["AP"])
        if hard:
            lines.append(f"| {row.name} | {_fmt(hard)} | {_fmt(soft)} | {len(hard)} |")
    return "\n".join(lines)


def _fmt(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {std:.1f}"


if __name__ == "__main__":
    print("\n\n".join(table(Path(p)) for p in sys.argv[1:] if Path(p).is_dir()))
