"""``harnet eval --report``: report.html, one self-contained page of where a model fails, and report.json with
every number in it.

The page embeds its plots and image crops as PNG data URIs and uses no script, web font or remote file:
it opens from disk, in any browser, on a machine without network (the place a model's user often is), and
can be mailed as one file. The numbers come from :mod:`harnet.engine.error_analysis`; this module only lays
them out.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harnet.engine.error_analysis import DEFAULT_IOU, GALLERY_SIZE, ErrorAnalysis, GalleryItem, analyse
from harnet.engine.inference import CheckpointEval
from harnet.engine.tide import ERROR_TYPES
from harnet.tools import report_figures as figures
from harnet.utils.atomic import write_text_atomic
from harnet.utils.errors import one_line
from harnet.utils.image_decode import open_image, pil_to_rgb_array

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"

# What each TIDE type means, for the page.
TIDE_MEANING = {
    "classification": "right place (IoU \u2265 t_f) with an object of another class",
    "localisation": "right class, poorly placed (t_b \u2264 IoU \u2264 t_f)",
    "both": "wrong class and poorly placed",
    "duplicate": "right class and place, but the object was already found by a better detection",
    "background": "on no object (IoU \u2264 t_b with every object)",
    "missed": "an object no detection came near enough to find",
}


@dataclass
class ReportFiles:
    html: Path
    json: Path
    analysis: ErrorAnalysis


def write_report(evaluation: CheckpointEval, iou: float = DEFAULT_IOU, score: float | None = None,
                 gallery: int = GALLERY_SIZE) -> ReportFiles:
    """Analyse ``evaluation`` (see :func:`harnet.engine.error_analysis.analyse` for ``iou``, ``score``,
    ``gallery``) and write report.json and report.html into its folder."""
    analysis = analyse(evaluation.ground_truth, evaluation.detections, evaluation.class_names,
                       evaluation.category_ids, evaluation.image_ids, iou=iou, score=score, gallery=gallery)
    data = {"run": evaluation.run, "metrics": evaluation.result.to_dict(), **analysis.to_dict()}
    json_path = evaluation.out / REPORT_JSON
    html_path = evaluation.out / REPORT_HTML
    write_text_atomic(json.dumps(data, indent=1, allow_nan=False) + "\n", json_path)
    crops = gallery_pictures(analysis, evaluation.image_paths)
    write_text_atomic(render(analysis, data, crops), html_path)
    return ReportFiles(html_path, json_path, analysis)


def gallery_pictures(analysis: ErrorAnalysis, image_paths: dict[int, Path]) -> dict[int, bytes | str]:
    """PNG bytes of every gallery item (keyed by ``id`` of the item), or why there is none (an image that can
    no longer be read: a report never fails for want of a picture). Each image is decoded once."""
    items = [*analysis.false_detections, *analysis.missed]
    out: dict[int, bytes | str] = {}
    for image_id in dict.fromkeys(item.image_id for item in items):
        path = image_paths.get(image_id)
        try:
            if path is None:
                raise FileNotFoundError(f"image {image_id}: no file known")
            with open_image(path) as image:
                pixels = np.round(pil_to_rgb_array(image) * 255).astype(np.uint8)
        except (OSError, ValueError) as e:
            for item in items:
                if item.image_id == image_id:
                    out[id(item)] = one_line(e)
            continue
        for item in items:
            if item.image_id == image_id:
                out[id(item)] = figures.png(figures.crop(pixels, item, analysis))
    return out


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, css: str = "") -> str:
    return f'<img src="{_uri(png)}" alt="{html.escape(alt)}"{f" class={css!r}" if css else ""}>'


def _f(value: float | None, digits: int = 3) -> str:
    """A number as shown; a dash where it is undefined (None, NaN, or pycocotools' -1)."""
    return "\u2013" if value is None or not value >= 0 else f"{value:.{digits}f}"


def _e(text: object) -> str:
    return html.escape(str(text))


def _swatch(label: int) -> str:
    r, g, b = figures.class_color(label)
    return f'<span class="sw" style="background:rgb({r},{g},{b})"></span>'


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], css: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _run_rows(run: dict[str, Any], metrics: dict[str, Any]) -> list[tuple[str, str]]:
    model = run.get("model", {})
    version = run.get("config_version")
    saved = run.get("saved_config_version")
    data = run.get("data", {})
    if data.get("format") == "shapes":
        source = (f"shapes (generated: {data.get('num_images')} images of {data.get('size')} px, "
                  f"{data.get('difficulty')}) in {data.get('root')}")
    else:
        source = f"{data.get('format')}: images {data.get('images')}, annotations {data.get('annotations')}"
    if data.get("experiment"):
        source += f" (data section of {data['experiment']})"
    how = [f"device {run.get('device')}"]
    if run.get("tile"):
        how.append(f"tiled: windows of {run['tile']} px, overlap {run.get('overlap')}")
    if run.get("tta"):
        tta = run["tta"]
        how.append(f"TTA: scales {tta['scales']}, flip {tta['flip']}, merge {tta['merge']}")
    if run.get("overrides"):
        how.append("overrides " + " ".join(run["overrides"]))
    rows = [
        ("checkpoint", f"{run.get('checkpoint')}, training step {run.get('step')}"),
        ("model", f"{model.get('detector')}, preset <b>{_e(model.get('preset'))}</b>, backbone {model.get('backbone')},"
                  f" {model.get('num_classes')} classes; test size {model.get('test_min_size')}"
                  f" (long side \u2264 {model.get('test_max_size')}), {model.get('nms')}, score \u2265"
                  f" {model.get('score_thresh')}, \u2264 {model.get('detections_per_img')} per image"),
        ("config version", f"{version}" + (f" (saved as {saved}, upgraded on load)" if saved != version else "")),
        ("data", f"{run.get('split')} split, {metrics.get('num_images')} images, "
                 f"{metrics.get('num_detections')} detections; {source}"),
        ("evaluated", ", ".join(how)),
    ]
    return [(k, v if k in ("model",) else _e(v)) for k, v in rows]


def render(analysis: ErrorAnalysis, data: dict[str, Any], crops: dict[int, bytes | str]) -> str:
    """The report page (see the module docstring)."""
    run, metrics = data.get("run", {}), data.get("metrics", {})
    stats = metrics.get("stats", {})
    overall = analysis.overall
    score_thresh = run.get("model", {}).get("score_thresh")
    chosen = ("the threshold of best F1 (all classes pooled)" if analysis.score_chosen_by == "best F1"
              else "given with --score")
    tiles = [
        ("AP", _f(stats.get("AP")), "COCO, IoU 0.50:0.95"), ("AP50", _f(stats.get("AP50")), "IoU 0.50"),
        ("AP75", _f(stats.get("AP75")), "IoU 0.75"),
        ("precision", _f(overall["precision"]), f"IoU {analysis.iou:g}, score \u2265 {analysis.score:.2f}"),
        ("recall", _f(overall["recall"]), f"{overall['true_positives']} of {overall['num_gt']} objects"),
        ("F1", _f(overall["f1"]), f"score threshold {analysis.score:.2f}"),
    ]
    tile_html = "".join(f'<div class="tile"><div class="k">{k}</div><div class="v">{v}</div>'
                        f'<div class="n">{_e(n)}</div></div>' for k, v, n in tiles)
    class_rows = []
    for k, r in enumerate(analysis.classes):
        c = r.coco
        class_rows.append([f"{_swatch(k)}{_e(r.name)}", str(r.num_gt), str(r.num_detections), _f(c.get("AP")),
                           _f(c.get("AP50")), _f(c.get("AP75")), _f(c.get("APs")), _f(c.get("APm")), _f(c.get("APl")),
                           _f(r.precision), _f(r.recall), f"<b>{_f(r.f1)}</b>",
                           f"{_f(r.best_f1)} at {_f(r.best_f1_score, 2)}" if r.best_f1 is not None else "\u2013"])
    if len(analysis.classes) > 1:
        class_rows.append(["<b>all</b>", str(overall["num_gt"]), str(overall["num_detections"]), _f(stats.get("AP")),
                           _f(stats.get("AP50")), _f(stats.get("AP75")), _f(stats.get("APs")), _f(stats.get("APm")),
                           _f(stats.get("APl")), _f(overall["precision"]), _f(overall["recall"]),
                           f"<b>{_f(overall['f1'])}</b>", f"{_f(overall['best_f1'])} at {analysis.score:.2f}"
                           if analysis.score_chosen_by == "best F1" else _f(overall["best_f1"])])
    class_table = _table(["class", "objects", "detections", "AP", "AP50", "AP75", "AP small", "AP medium",
                          "AP large", "precision", "recall", "F1", "best F1 at score"], class_rows, "num")
    tide = analysis.tide
    tide_rows = [[f"<b>{t}</b>", str(tide.counts[t]), f"+{_f(tide.dap[t])}", _e(TIDE_MEANING[t])] for t in ERROR_TYPES]
    tide_rows += [["all false positives", "", f"+{_f(tide.dap_false_positives)}",
                   "bound: every false detection removed"],
                  ["all false negatives", "", f"+{_f(tide.dap_false_negatives)}",
                   "bound: every object not found taken out of the count"]]
    tide_table = _table(["error", "count", "dAP", "meaning"], tide_rows, "tide")
    shaded = (f" Grey: below the model's own score threshold ({score_thresh}), where it keeps no detection."
              if score_thresh else "")
    sections = [
        f'<section><h2>Per class</h2>{class_table}<p class="note">AP columns: pycocotools (IoU 0.50:0.95 unless '
        f"named; small &lt; 32\u00b2 px, large &gt; 96\u00b2 px, \u2013 where a class has no such objects). Precision, "
        f"recall and F1 at IoU {analysis.iou:g} and score \u2265 {analysis.score:.2f}, {_e(chosen)}; the last "
        f"column: each class's own best F1 and its threshold.</p></section>",
        f'<section><h2>Curves</h2><div class="pair">{_img(figures.pr_curves(analysis), "precision-recall curves")}'
        f'{_img(figures.confusion(analysis), "confusion matrix")}</div>'
        f'{_img(figures.f1_curves(analysis, score_thresh), "F1 against score threshold", "wide")}'
        f'<p class="note">Dashed line: the score threshold of this report.{shaded} Confusion: detections at or above '
        f"it, matched to objects greedily by score at IoU {analysis.iou:g}, first within a class, then across classes; "
        f"row \u201cno object\u201d: false detections; column \u201cmissed\u201d: objects no detection "
        "found.</p></section>",
        f'<section><h2>Errors (TIDE)</h2><div class="pair">{_img(figures.tide_bars(analysis), "TIDE dAP")}'
        f"<div>{tide_table}</div></div><p class=\"note\">Bolya et al., ECCV 2020, at t_f {tide.t_f:g} and t_b "
        f"{tide.t_b:g}: each false detection gets one type, each object no detection found is missed unless a "
        f"classification or localisation error is about it. dAP: what AP{round(100 * tide.t_f)} "
        f"({_f(tide.ap)}) would gain if an oracle fixed every error of that type. Counts at any score.</p></section>",
        _gallery("Worst false detections", analysis.false_detections, analysis, crops,
                 f"The highest scoring detections that match no object at IoU {analysis.iou:g}, with the reason "
                 "(TIDE's types at that IoU). White: ground truth."),
        _gallery("Largest missed objects", analysis.missed, analysis, crops,
                 f"The largest objects no detection at score \u2265 {analysis.score:.2f} found (at IoU "
                 f"{analysis.iou:g}, any class). White, thick: the object; coloured: the detections overlapping it."),
    ]
    run_table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in _run_rows(run, metrics))
    title = f"Evaluation report: {Path(str(run.get('checkpoint', 'model'))).parent.name or 'model'}" + (
        f", {run['split']} split" if run.get("split") else "")
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style></head>
<body><main>
<h1>{_e(title)}</h1>
<table class="run">{run_table}</table>
<div class="tiles">{tile_html}</div>
{"".join(sections)}
<footer>harnet {_e(run.get("harnet_version", ""))}, {_e(stamp)}. Every number is in report.json beside this file.
</footer>
</main></body></html>
"""


def _gallery(title: str, items: Sequence[GalleryItem], analysis: ErrorAnalysis, crops: dict[int, bytes | str],
             note: str) -> str:
    if not items:
        return f'<section><h2>{title}</h2><p class="note">None.</p></section>'
    cards = []
    names = analysis.class_names
    for item in items:
        picture = crops.get(id(item))
        shown = (_img(picture, f"{item.file_name}") if isinstance(picture, bytes)
                 else f'<div class="missing">{_e(picture or "no picture")}</div>')
        what = (f"{_swatch(item.label)}{_e(names[item.label])} {item.score:.2f}" if item.score is not None else
                f"{_swatch(item.label)}{_e(names[item.label])}, {_box_size(item.box)}")
        if item.reason and item.reason != "missed":
            what += f' &middot; <span class="reason">{_e(item.reason)}</span>'
        other = ""
        if item.other_label is not None and item.other_iou is not None:
            side = "object" if item.score is not None else "detection"
            score = "" if item.other_score is None else f" {item.other_score:.2f}"
            other = (f"<div>best {side}: {_e(names[item.other_label])}{score}, IoU {item.other_iou:.2f}</div>")
        cards.append(f'<figure>{shown}<figcaption><div class="file" title="{_e(item.file_name)}">'
                     f"{_e(item.file_name)}</div><div>{what}</div>{other}</figcaption></figure>")
    return f'<section><h2>{title}</h2><p class="note">{note}</p><div class="gallery">{"".join(cards)}</div></section>'


def _box_size(box: Sequence[float]) -> str:
    return f"{box[2] - box[0]:.0f}\u00d7{box[3] - box[1]:.0f} px"


CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f4f5f7; color: #1d2125; font: 15px/1.45 system-ui, -apple-system, "Segoe UI",
  Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 40px; }
h1 { font-size: 26px; margin: 4px 0 14px; }
h2 { font-size: 19px; margin: 0 0 10px; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 16px 18px; margin: 16px 0; }
table { border-collapse: collapse; }
.scroll { overflow-x: auto; }
table.run { width: 100%; background: #fff; border: 1px solid #dde1e6; border-radius: 8px; }
table.run th { text-align: left; white-space: nowrap; vertical-align: top; color: #555; font-weight: 600;
  padding: 5px 14px; width: 1%; }
table.run td { padding: 5px 14px 5px 0; overflow-wrap: anywhere; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; margin: 16px 0; }
.tile { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 10px 14px; }
.tile .k { color: #555; font-size: 13px; text-transform: uppercase; letter-spacing: .04em; }
.tile .v { font-size: 28px; font-weight: 650; font-variant-numeric: tabular-nums; }
.tile .n { color: #666; font-size: 12.5px; }
table.num, table.tide { width: 100%; font-variant-numeric: tabular-nums; }
table.num th, table.num td, table.tide th, table.tide td { padding: 5px 8px; border-bottom: 1px solid #e6e8eb; }
table.num th { font-size: 13px; color: #444; text-align: right; vertical-align: bottom; }
table.num td { text-align: right; }
table.num th:first-child, table.num td:first-child { text-align: left; white-space: nowrap; }
table.tide th { text-align: left; font-size: 13px; color: #444; }
table.tide td:nth-child(2), table.tide td:nth-child(3) { text-align: right; white-space: nowrap; }
.sw { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 7px;
  vertical-align: baseline; border: 1px solid rgba(0,0,0,.25); }
.note { color: #555; font-size: 13.5px; margin: 10px 0 0; }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 14px; align-items: start; }
section img { max-width: 100%; height: auto; display: block; }
img.wide { margin-top: 12px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 12px; margin-top: 12px; }
figure { margin: 0; background: #fafbfc; border: 1px solid #e1e4e8; border-radius: 6px; overflow: hidden; }
figure img { width: 100%; height: 200px; object-fit: contain; background: #222; }
figcaption { padding: 6px 8px; font-size: 13px; }
figcaption .file { color: #555; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.reason { font-weight: 600; }
.missing { height: 200px; display: flex; align-items: center; justify-content: center; padding: 8px;
  color: #a33; font-size: 12.5px; background: #f3e9e9; }
footer { color: #666; font-size: 12.5px; margin-top: 18px; }
"""
