"""The demo model's evaluation report and its val set in the labelling tools' formats (issue #28).

* ``harnet eval RUN --report``: the report's AP against metrics.json, its P/R/F1 at the best-F1 threshold,
  the TIDE table; a screenshot of the page's top in headless Chromium (Debian's ``chromium`` through
  Playwright) for the README;
* the demo's val set written as YOLO, Label Studio and CVAT (:func:`harnet.data.convert.write_dataset`),
  each evaluated with ``harnet eval RUN --set data.format=...``: AP against the COCO file's.

    python benchmarks/demo_report.py --run runs/demo/run --work /tmp/demo_report \\
        --out docs/results/demo_report.json --screenshot docs/eval_report.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

FORMATS = {"yolo": "yolo", "labelstudio": "labelstudio.json", "cvat": "cvat.xml"}


def harnet(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "harnet", *args], check=True, capture_output=True,
                          text=True).stdout


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 1700) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": width, "height": height})
        tab.goto(page.resolve().as_uri())
        tab.screenshot(path=str(out))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo/run")
    parser.add_argument("--work", default="/tmp/demo_report")
    parser.add_argument("--out", default="docs/results/demo_report.json")
    parser.add_argument("--screenshot", default="docs/eval_report.png")
    args = parser.parse_args()
    from harnet.config.experiment import load_experiment
    from harnet.data.build import build_dataset
    from harnet.data.convert import write_dataset
    from harnet.engine.upgrade import upgrade_config

    work = Path(args.work)
    report_dir = work / "report"
    print(harnet("eval", args.run, "--report", "--out", str(report_dir)))
    report = json.loads((report_dir / "report.json").read_text())
    metrics = json.loads((report_dir / "metrics.json").read_text())
    result: dict[str, object] = {
        "command": " ".join(["benchmarks/demo_report.py", *sys.argv[1:]]),
        "metrics_json": metrics, "report_overall": report["overall"], "report_score": report["score"],
        "report_iou": report["iou"], "tide": report["tide"],
        "classes": [{k: v for k, v in c.items() if not isinstance(v, list)} for c in report["classes"]],
    }
    screenshot(report_dir / "report.html", Path(args.screenshot))

    cfg = load_experiment(Path(args.run) / "config.yaml", upgrade=upgrade_config)
    coco = build_dataset(cfg.data, "val")
    formats: dict[str, object] = {}
    for fmt, name in FORMATS.items():
        written = write_dataset(coco, fmt, work / name)
        out = work / f"eval_{fmt}"
        sets = ["--set", f"data.format={fmt}", "--set", f"data.val_annotations={written}"]
        if fmt != "yolo":
            sets += ["--set", f"data.val_images={coco.records[0].path.parent}"]
        harnet("eval", args.run, *sets, "--out", str(out))
        formats[fmt] = json.loads((out / "metrics.json").read_text())
    result["formats"] = formats
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k in ("report_overall", "report_score")}, indent=1))


if __name__ == "__main__":
    main()
