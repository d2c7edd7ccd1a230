"""Broken and odd annotation files (COCO JSON, VOC XML, CSV), generated on the fly, in both modes.

Each case is one of:

* ``FATAL``: the file as a whole is unusable: an error naming the file in both modes;
* ``SKIP_IMAGE`` / ``SKIP_ANNOTATION`` / ``SKIP_ROW``: strict mode raises a one-line error naming the
  file; ``skip_bad`` drops the affected image (or the orphan annotation / row) and lists it;
* ``HANDLED``: not an error in either mode; the check says what was done.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from badfiles import write_rgb

from harnet.config.experiment import DataConfig
from harnet.config.io import ConfigError
from harnet.data.build import build_dataset
from harnet.data.issues import DROPPED_BOX, SKIPPED_ANNOTATION, SKIPPED_IMAGE, SKIPPED_ROW
from harnet.data.records import RecordDataset

FATAL, HANDLED = "fatal", "handled"


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Any], Any]  # mutates the format's base data (or returns raw text/bytes)
    outcome: str  # FATAL, HANDLED or an issue action
    message: str = ""  # what the error / issue must say
    check: Callable[[RecordDataset], None] | None = None  # for HANDLED


def _outcome(case: Case, build: Callable[[bool], RecordDataset], file: str, kept_after_skip: list[str]) -> None:
    """Run ``case`` strict and skipping; ``kept_after_skip`` are the image names left when skipping."""
    if case.outcome == HANDLED:
        for skip in (False, True):
            ds = build(skip)
            assert case.check is not None
            case.check(ds)
        return
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        build(False)
    message = str(info.value)
    assert case.message in message and file in message and "\n" not in message, message
    if case.outcome == FATAL:
        with pytest.raises((ValueError, FileNotFoundError), match=None):
            build(True)
        return
    ds = build(True)
    assert sorted(r.path.name for r in ds.records) == kept_after_skip
    assert sorted(ds.coco.dataset["images"][i]["file_name"] for i in range(len(ds.coco.dataset["images"]))) \
        == kept_after_skip, "skipped images must leave the ground truth too"
    actions = ds.issues.counts()
    assert actions.get(case.outcome) == 1, actions
    issue = next(i for i in ds.issues.items if i.action == case.outcome)
    assert case.message in issue.problem and file in issue.file


# --- COCO -----------------------------------------------------------------------------------------------

def _coco_base() -> dict[str, Any]:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 48, "height": 40},
            {"id": 2, "file_name": "b.png", "width": 48, "height": 40},
            {"id": 3, "file_name": "c.png", "width": 48, "height": 40},  # negative
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [12, 10, 24, 20], "area": 480, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [12, 10, 24, 20], "area": 480, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}],
    }


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Mutation ``images.1.width = value`` style (``!del`` deletes the key)."""
    def mutate(data: dict[str, Any]) -> dict[str, Any]:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value == "!del":
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return data
    return mutate


def _add_ann(**fields: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def mutate(data: dict[str, Any]) -> dict[str, Any]:
        data["annotations"].append({"id": 99, "image_id": 2, "category_id": 1, "iscrowd": 0, **fields})
        return data
    return mutate


def _boxes(ds: RecordDataset, name: str) -> list[list[float]]:
    record = next(r for r in ds.records if r.path.name == name)
    return record.boxes.tolist()


def _boxes_are(name: str, expected: list[list[float]]) -> Callable[[RecordDataset], None]:
    def check(ds: RecordDataset) -> None:
        assert _boxes(ds, name) == expected
    return check


def _dropped(count: int, extra: Callable[[RecordDataset], None] | None = None) -> Callable[[RecordDataset], None]:
    def check(ds: RecordDataset) -> None:
        assert len(ds) == 3 and ds.issues.counts() == {DROPPED_BOX: count} and ds.num_invalid_boxes == count
        assert all(i.action == DROPPED_BOX and "has no area inside the 48x40 image" in i.problem
                   for i in ds.issues.items)
        if extra is not None:
            extra(ds)
    return check


def _crowd(ds: RecordDataset) -> None:
    assert _boxes(ds, "b.png") == [[12.0, 10.0, 36.0, 30.0]]  # the crowd box is no training target
    crowd = [a for a in ds.coco.dataset["annotations"] if a["iscrowd"]]
    assert [a["bbox"] for a in crowd] == [[0, 0, 10, 10]]


def _filled(ds: RecordDataset) -> None:
    ann = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[1]))[0]
    assert ann["area"] == 24 * 20 and ann["iscrowd"] == 0 and isinstance(ann["id"], int)


def _no_annotations(ds: RecordDataset) -> None:
    assert len(ds) == 3 and all(len(r.boxes) == 0 for r in ds.records)


def _negative_kept(ds: RecordDataset) -> None:
    assert len(ds) == 3 and _boxes(ds, "c.png") == [] and 3 in ds.coco.getImgIds()


COCO_CASES = [
    Case("malformed_json", lambda d: json.dumps(d)[:-1] + ",}", FATAL, "malformed JSON"),
    Case("truncated_json", lambda d: json.dumps(d)[: len(json.dumps(d)) // 2], FATAL, "malformed JSON"),
    Case("empty_file", lambda d: "", FATAL, "malformed JSON"),
    Case("not_utf8", lambda d: json.dumps(d).encode("utf-16"), FATAL, "not UTF-8 text"),
    Case("top_level_list", lambda d: [d], FATAL, "top level must be a JSON object"),
    Case("missing_images_key", _set("images", "!del"), FATAL, "'images' must be a list"),
    Case("missing_categories_key", _set("categories", "!del"), FATAL, "'categories' must be a list"),
    Case("category_without_id", _set("categories.1.id", "!del"), FATAL, "categories[1] needs an integer 'id'"),
    Case("duplicate_image_id", _set("images.2.id", 2), FATAL, "duplicate image id 2"),
    Case("duplicate_annotation_id", _set("annotations.1.id", 1), FATAL, "duplicate annotation ids"),
    Case("image_without_id", _set("images.1.id", "!del"), SKIPPED_IMAGE, "images[1] needs an integer 'id'"),
    Case("image_without_file_name", _set("images.1.file_name", "!del"), SKIPPED_IMAGE,
         "images[1] (id 2) needs a string 'file_name'"),
    Case("image_without_width", _set("images.1.width", "!del"), SKIPPED_IMAGE,
         "images[1] (id 2) needs a positive integer 'width'"),
    Case("image_zero_height", _set("images.1.height", 0), SKIPPED_IMAGE, "needs a positive integer 'height'"),
    Case("image_string_width", _set("images.1.width", "48"), SKIPPED_IMAGE, "needs a positive integer 'width'"),
    Case("annotation_unknown_image", _add_ann(image_id=77, bbox=[1, 1, 5, 5]), SKIPPED_ANNOTATION,
         "refers to unknown image_id 77"),
    Case("annotation_unknown_category", _set("annotations.1.category_id", 42), SKIPPED_IMAGE,
         "annotations[1] (image b.png) refers to unknown category_id 42"),
    Case("annotation_without_category", _set("annotations.1.category_id", "!del"), SKIPPED_IMAGE,
         "refers to unknown category_id None"),
    Case("annotation_without_bbox", _set("annotations.1.bbox", "!del"), SKIPPED_IMAGE,
         "needs 'bbox' as 4 numbers"),
    Case("bbox_three_numbers", _set("annotations.1.bbox", [1, 2, 3]), SKIPPED_IMAGE, "needs 'bbox' as 4 numbers"),
    Case("bbox_strings", _set("annotations.1.bbox", ["1", "2", "3", "4"]), SKIPPED_IMAGE,
         "needs 'bbox' as 4 numbers"),
    Case("bbox_nan", _set("annotations.1.bbox", [float("nan"), 2, 3, 4]), SKIPPED_IMAGE, "non-finite bbox"),
    Case("bbox_infinite", _set("annotations.1.bbox", [1, 2, float("inf"), 4]), SKIPPED_IMAGE, "non-finite bbox"),
    Case("annotation_not_object", lambda d: {**d, "annotations": [*d["annotations"], 5]}, SKIPPED_ANNOTATION,
         "annotations[2] must be an object"),
    Case("bbox_zero_width", _add_ann(bbox=[5, 5, 0, 4]), HANDLED, check=_dropped(1)),
    Case("bbox_negative_size", _add_ann(bbox=[20, 20, -5, -5]), HANDLED, check=_dropped(1)),
    Case("bbox_outside_image", _add_ann(bbox=[60, 50, 5, 5]), HANDLED, check=_dropped(1)),
    Case("bbox_partly_outside", _set("annotations.1.bbox", [40, 30, 20, 20]), HANDLED,
         check=_boxes_are("b.png", [[40.0, 30.0, 48.0, 40.0]])),
    Case("iscrowd", _add_ann(bbox=[0, 0, 10, 10], iscrowd=1), HANDLED, check=_crowd),
    Case("image_without_annotations", lambda d: d, HANDLED, check=_negative_kept),
    Case("no_annotations_key", _set("annotations", "!del"), HANDLED, check=_no_annotations),
    Case("optional_fields_missing", lambda d: _set("annotations.0.area", "!del")(
        _set("annotations.0.iscrowd", "!del")(_set("annotations.0.id", "!del")(d))), HANDLED, check=_filled),
]


@pytest.mark.parametrize("case", COCO_CASES, ids=lambda c: c.name)
def test_coco(case: Case, tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        write_rgb(tmp_path / "images" / name)
    made = case.make(_coco_base())
    ann = tmp_path / "ann.json"
    if isinstance(made, bytes):
        ann.write_bytes(made)
    else:
        ann.write_text(made if isinstance(made, str) else json.dumps(made))

    def build(skip: bool) -> RecordDataset:
        cfg = DataConfig(format="coco", train_images=str(tmp_path / "images"), train_annotations=str(ann),
                         skip_bad=skip)
        return build_dataset(cfg, "train")

    kept = ["a.png", "b.png", "c.png"] if case.outcome == SKIPPED_ANNOTATION else ["a.png", "c.png"]
    _outcome(case, build, str(ann), kept)


def test_missing_annotation_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    cfg = DataConfig(format="coco", train_images=str(tmp_path / "images"), train_annotations=str(tmp_path / "x.json"))
    with pytest.raises(ConfigError, match=r"data.train_annotations: file not found: .*x\.json"):
        build_dataset(cfg, "train")
    cfg.train_annotations = ""
    with pytest.raises(ConfigError, match=r"data.train_annotations is not set \(format coco"):
        build_dataset(cfg, "train")


# --- VOC ------------------------------------------------------------------------------------------------

def _xml(name: str = "tree", box: tuple[Any, ...] = (13, 11, 36, 30), size: tuple[int, int] | None = (48, 40),
         difficult: int = 0, filename: str = "b.png") -> str:
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    return (f"<annotation><filename>{filename}</filename>{size_xml}<object><name>{name}</name>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
            f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object></annotation>")


def _voc_difficult(ds: RecordDataset) -> None:
    assert _boxes(ds, "b.png") == []
    assert [a["iscrowd"] for a in ds.coco.dataset["annotations"] if a["image_id"] == 2] == [1]


def _voc_size_from_image(ds: RecordDataset) -> None:
    record = next(r for r in ds.records if r.path.name == "b.png")
    assert (record.width, record.height) == (48, 40)


VOC_CASES = [
    Case("malformed_xml", lambda _: "<annotation><object>", SKIPPED_IMAGE, "malformed XML"),
    Case("truncated_xml", lambda _: _xml()[:60], SKIPPED_IMAGE, "malformed XML"),
    Case("empty_xml", lambda _: "", SKIPPED_IMAGE, "malformed XML"),
    Case("wrong_root", lambda _: "<image><object/></image>", SKIPPED_IMAGE, "root element is <image>"),
    Case("object_without_name", lambda _: _xml(name=""), SKIPPED_IMAGE, "object 0 has no <name>"),
    Case("object_without_bndbox", lambda _: _xml().replace("<bndbox>", "<box>").replace("</bndbox>", "</box>"),
         SKIPPED_IMAGE, "has no <bndbox>"),
    Case("coordinate_not_a_number", lambda _: _xml(box=(13, "x", 36, 30)), SKIPPED_IMAGE, "<ymin> must be a number"),
    Case("coordinate_nan", lambda _: _xml(box=(13, "nan", 36, 30)), SKIPPED_IMAGE, "non-finite box"),
    Case("unknown_class", lambda _: _xml(name="bird"), SKIPPED_IMAGE, "class 'bird' is not in class_names"),
    Case("bad_difficult", lambda _: _xml().replace("<difficult>0", "<difficult>maybe"), SKIPPED_IMAGE,
         "bad <difficult> 'maybe'"),
    Case("no_size_and_no_image", lambda _: _xml(size=None), SKIPPED_IMAGE,
         "no <size>, and the image cannot be read: "),
    Case("image_missing", lambda _: _xml(), SKIPPED_IMAGE, "image file not found"),
    Case("size_zero_reads_image", lambda _: _xml(size=(0, 0)), HANDLED, check=_voc_size_from_image),
    Case("size_missing_reads_image", lambda _: _xml(size=None), HANDLED, check=_voc_size_from_image),
    Case("difficult_object", lambda _: _xml(difficult=1), HANDLED, check=_voc_difficult),
    Case("degenerate_box", lambda _: _xml(box=(21, 11, 20, 30)), HANDLED, check=_dropped(1)),
    Case("no_objects", lambda _: "<annotation><filename>b.png</filename></annotation>", HANDLED,
         check=_boxes_are("b.png", [])),
]


@pytest.mark.parametrize("case", VOC_CASES, ids=lambda c: c.name)
def test_voc(case: Case, tmp_path: Path) -> None:
    for stem in ("a", "b", "c"):
        write_rgb(tmp_path / f"{stem}.png")
    (tmp_path / "a.xml").write_text(_xml(filename="a.png"))
    (tmp_path / "c.xml").write_text("<annotation><filename>c.png</filename></annotation>")
    (tmp_path / "b.xml").write_text(case.make(None))
    if case.name in ("no_size_and_no_image", "image_missing"):  # else found by the XML's stem, by design
        (tmp_path / "b.png").unlink()

    def build(skip: bool) -> RecordDataset:
        cfg = DataConfig(format="voc", train_images=str(tmp_path), skip_bad=skip)
        return build_dataset(cfg, "train", class_names=["tree"])

    file = str(tmp_path / ("b.png" if case.name == "image_missing" else "b.xml"))
    _outcome(case, build, file, ["a.png", "c.png"])


def test_voc_split_listing_a_missing_xml(tmp_path: Path) -> None:
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    write_rgb(tmp_path / "JPEGImages" / "a.png")
    (tmp_path / "Annotations" / "a.xml").write_text(_xml(filename="a.png"))
    split = tmp_path / "ImageSets" / "Main" / "train.txt"
    split.write_text("a\nb\n")
    cfg = DataConfig(format="voc", train_images=str(tmp_path), train_annotations="train")
    with pytest.raises(FileNotFoundError, match=r"train\.txt: annotation file not found: .*b\.xml"):
        build_dataset(cfg, "train")
    cfg.skip_bad = True
    ds = build_dataset(cfg, "train")
    assert [r.image_id for r in ds.records] == [1] and ds.issues.counts() == {SKIPPED_IMAGE: 1}


# --- CSV ------------------------------------------------------------------------------------------------

CSV_HEAD = "image_path,xmin,ymin,xmax,ymax,label\nimg/a.png,12,10,36,30,cat\nimg/c.png,,,,,\n"


def _csv_row(row: str) -> Callable[[Any], str]:
    return lambda _: CSV_HEAD + row + "\n"


def _csv_degenerate(ds: RecordDataset) -> None:
    _dropped(1)(ds)
    assert ds.issues.items[0].file.endswith("ann.csv:4")


CSV_CASES = [
    Case("too_few_fields", _csv_row("img/b.png,1,2,3,cat"), SKIPPED_IMAGE, "expected 6 fields"),
    Case("too_many_fields", _csv_row("img/b.png,1,2,3,4,cat,extra"), SKIPPED_IMAGE, "expected 6 fields"),
    Case("coordinate_not_a_number", _csv_row("img/b.png,1,2,x,4,cat"), SKIPPED_IMAGE, "xmax must be a number"),
    Case("coordinate_nan", _csv_row("img/b.png,nan,2,30,40,cat"), SKIPPED_IMAGE, "xmin must be finite"),
    Case("coordinate_inf", _csv_row("img/b.png,1,2,inf,40,cat"), SKIPPED_IMAGE, "xmax must be finite"),
    Case("partial_box", _csv_row("img/b.png,1,2,,4,cat"), SKIPPED_IMAGE, "all filled or all empty"),
    Case("box_without_label", _csv_row("img/b.png,1,2,3,4,"), SKIPPED_IMAGE, "all filled or all empty"),
    Case("unknown_label", _csv_row("img/b.png,1,2,30,40,bird"), SKIPPED_IMAGE, "label 'bird' is not in class_names"),
    Case("empty_image_path", _csv_row(",1,2,30,40,cat"), SKIPPED_ROW, "empty image path"),
    Case("image_missing", _csv_row("img/gone.png,1,2,30,40,cat"), SKIPPED_IMAGE, "image file not found"),
    Case("image_zero_bytes", _csv_row("img/empty.png,1,2,30,40,cat"), SKIPPED_IMAGE, "empty file (0 bytes)"),
    Case("truncated_last_row", lambda _: CSV_HEAD + "img/b.png,12,10,3", SKIPPED_IMAGE, "expected 6 fields"),
    Case("not_utf8", lambda _: (CSV_HEAD + "img/b.png,1,2,3,4,caté\n").encode("latin-1"), FATAL, "not UTF-8 text"),
    Case("degenerate_box", _csv_row("img/b.png,30,10,20,30,cat"), HANDLED, check=_csv_degenerate),
    Case("negative_example", _csv_row("img/b.png,,,,,"), HANDLED, check=_boxes_are("b.png", [])),
    Case("box_partly_outside", _csv_row("img/b.png,40,30,60,50,cat"), HANDLED,
         check=_boxes_are("b.png", [[40.0, 30.0, 48.0, 40.0]])),
]


@pytest.mark.parametrize("case", CSV_CASES, ids=lambda c: c.name)
def test_csv(case: Case, tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        write_rgb(tmp_path / "img" / name)
    (tmp_path / "img" / "empty.png").write_bytes(b"")
    made = case.make(None)
    ann = tmp_path / "ann.csv"
    if isinstance(made, bytes):
        ann.write_bytes(made)
    else:
        ann.write_text(made)

    def build(skip: bool) -> RecordDataset:
        cfg = DataConfig(format="csv", train_annotations=str(ann), skip_bad=skip)
        return build_dataset(cfg, "train", class_names=["cat"])

    _outcome(case, build, str(ann), ["a.png", "c.png"])


def test_skipped_image_keeps_all_its_rows_out(tmp_path: Path) -> None:
    """One bad row of an image skips the image's good rows too: half-annotated images teach background."""
    for name in ("a.png", "b.png"):
        write_rgb(tmp_path / name)
    ann = tmp_path / "ann.csv"
    ann.write_text("a.png,1,1,9,9,cat\nb.png,1,1,9,9,cat\nb.png,1,1,x,9,cat\n")
    cfg = DataConfig(format="csv", train_annotations=str(ann), skip_bad=True)
    ds = build_dataset(cfg, "train")
    assert [r.path.name for r in ds.records] == ["a.png"] and len(ds.coco.getAnnIds()) == 1
    assert torch.equal(ds.records[0].boxes, torch.tensor([[1.0, 1, 9, 9]]))


def _val_with_categories(root: Path, categories: list[tuple[int, str]], objects: list[str]) -> Path:
    """A val split of one image per object (named class), under the given (id, name) categories."""
    ids = {name: cat_id for cat_id, name in categories}
    images, annotations = [], []
    for k, name in enumerate(objects, start=1):
        write_rgb(root / "val" / f"v{k}.png", 64, 48, seed=k)
        images.append({"id": k, "file_name": f"v{k}.png", "width": 64, "height": 48})
        annotations.append({"id": k, "image_id": k, "category_id": ids[name], "bbox": [16, 12, 32, 24],
                            "area": 768, "iscrowd": 0})
    path = root / "val.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": i, "name": n} for i, n in reversed(categories)]}))
    return path


def _coco_splits(root: Path, val_categories: list[tuple[int, str]]) -> DataConfig:
    from badfiles import make_coco_split

    make_coco_split(root, "train", 1)  # categories thing (id 1), other (id 2)
    _val_with_categories(root, val_categories, sorted(name for _, name in val_categories)[::-1])
    return DataConfig(format="coco", train_images=str(root / "train"), train_annotations=str(root / "train.json"),
                      val_images=str(root / "val"), val_annotations=str(root / "val.json"))


def test_val_categories_numbered_differently_are_matched_by_name(tmp_path: Path) -> None:
    """The val file numbers (and lists) the classes the other way round: labels and scores still mean the
    training classes, so perfect detections score AP 1 (read with its own ids they would score 0)."""
    from harnet.engine.evaluation import evaluate_predictions

    cfg = _coco_splits(tmp_path, [(1, "other"), (2, "thing")])
    train = build_dataset(cfg, "train")
    val = build_dataset(cfg, "val", class_names=train.class_names, classes_from="train.json")
    assert train.class_names == val.class_names == ["thing", "other"] and val.category_ids == [2, 1]
    assert [r.labels.tolist() for r in val.records] == [[0], [1]]
    perfect = [{"boxes": torch.tensor([[16.0, 12, 48, 36]]), "scores": torch.tensor([0.9]), "labels": r.labels}
               for r in val.records]
    result = evaluate_predictions(val, [r.image_id for r in val.records], perfect)
    assert result.stats["AP"] == pytest.approx(1.0)
    assert result.per_class_ap == pytest.approx({"thing": 1.0, "other": 1.0})


def test_val_categories_with_other_names_are_a_one_line_error_naming_both_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from badfiles import coco_args

    from harnet.tools.cli import main

    _coco_splits(tmp_path, [(1, "thing"), (2, "another")])
    val, train = tmp_path / "val.json", tmp_path / "train.json"
    assert main(coco_args(tmp_path, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"harnet: error: {val}: categories ['thing', 'another'] do not match the classes ['thing', "
                   f"'other'] of {train}: class 'other' is not among its categories")
    assert not (tmp_path / "run" / "config.yaml").exists()
