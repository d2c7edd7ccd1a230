"""``harnet eval --report``: report.json holds the numbers (AP as metrics.json), report.html is one self-contained
page, checked in a real browser (headless Chromium through Playwright): it loads without console errors, every
image decodes, nothing runs off the side, and a screenshot is taken."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from report_cases import synthetic_evaluation

from harnet.tools.cli import main
from harnet.tools.eval_report import write_report

# The tiny run's scores sit near the prior: without these thresholds it would detect nothing.
LENIENT = ["--set", "model.inference.score_thresh=0.0", "--set", "model.inference.final_score_thresh=0.0"]
DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def test_report_holds_every_number_and_one_self_contained_page(shapes_root: Path, tmp_path: Path) -> None:
    evaluation = synthetic_evaluation(shapes_root, tmp_path / "eval_val")
    files = write_report(evaluation, iou=0.4)
    report = json.loads(files.json.read_text())
    metrics = json.loads((tmp_path / "eval_val" / "metrics.json").read_text())
    assert report["metrics"] == metrics
    assert report["coco"]["AP"] == metrics["stats"]["AP"]
    assert [c["name"] for c in report["classes"]] == evaluation.class_names
    assert report["iou"] == 0.4 and report["score_chosen_by"] == "best F1"
    assert {"confusion", "tide", "curves", "false_detections", "missed", "run"} <= set(report)
    assert report["false_detections"] and report["missed"]

    page = files.html.read_text()
    assert not re.search(r"https?://|<script|<link|@import|url\(", page)  # nothing fetched, nothing run
    images = DATA_URI.findall(page)
    assert len(images) == page.count("<img ") == 4 + len(report["false_detections"]) + len(report["missed"])
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as picture:
            assert picture.format == "PNG" and min(picture.size) > 0
    for name in evaluation.class_names:
        assert f"</span>{name}<" in page  # a colour swatch before every class name of the table


def test_an_unreadable_image_leaves_a_note_not_a_failure(shapes_root: Path, tmp_path: Path) -> None:
    evaluation = synthetic_evaluation(shapes_root, tmp_path / "eval_val")
    evaluation.image_paths = {i: tmp_path / "gone" / p.name for i, p in evaluation.image_paths.items()}
    page = write_report(evaluation).html.read_text()
    assert "image file not found" in page and page.count("<img ") == 4


def _chromium() -> str:
    """The Chromium to drive, or a skip saying what is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright); the browser check needs it")
    found = os.environ.get("HARNET_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if not found:
        pytest.skip("no Chromium found (apt-get install chromium, or set HARNET_CHROMIUM to its path)")
    return found


@pytest.mark.slow
def test_the_report_in_a_browser(shapes_root: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    files = write_report(synthetic_evaluation(shapes_root, tmp_path / "eval_val"))
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else errors.append(r.url))
            page.goto(files.html.resolve().as_uri(), wait_until="load")
            count = page.evaluate("document.images.length")
            broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                                   ".map(i => i.alt)")
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert count >= 4 and not broken, broken
    assert overflow <= 0, f"the page is {overflow} px wider than the window"
    with Image.open(shot) as picture:
        assert picture.width == 1280 and picture.height > 2000


@pytest.mark.slow
def test_harnet_eval_report_on_a_trained_run(trained_run: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(trained_run), "--out", str(tmp_path), "--report", "--iou", "0.4", *LENIENT]) == 0
    out = capsys.readouterr().out
    assert "report: " in out and "at IoU 0.4, score >= " in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["coco"]["AP"] == metrics["stats"]["AP"] and report["iou"] == 0.4
    run = report["run"]
    assert run["step"] == 4 and run["model"]["preset"] == "hybrid" and run["split"] == "val"
    assert run["data"]["format"] == "shapes" and run["tile"] is None
    assert report["false_detections"]  # the lenient thresholds keep plenty
    assert (tmp_path / "report.html").stat().st_size > 10_000
    # the next evaluation there replaces the set: no report left from this one
    assert main(["eval", str(trained_run), "--out", str(tmp_path), *LENIENT]) == 0
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "report.json").exists()


@pytest.mark.slow
def test_a_tiled_evaluation_reports_its_windows(trained_run: Path, tmp_path: Path) -> None:
    assert main(["eval", str(trained_run), "--out", str(tmp_path), "--report", "--tile", "64", "--score", "0.2",
                 *LENIENT]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["run"]["tile"], report["run"]["overlap"]) == (64, 0.25)
    assert report["score"] == 0.2 and report["score_chosen_by"] == "given"
    assert "tiled: windows of 64 px" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--iou", "0.4"], "add --report"),
    (["--report", "--iou", "1.5"], "--iou: must lie in"),
    (["--report", "--score", "-1"], "--score: must lie in"),
])
def test_report_options_are_checked_before_anything_runs(args: list[str], message: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "no-such-run", *args]) == 2
    assert message in capsys.readouterr().err
