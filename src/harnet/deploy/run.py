"""One ``harnet predict`` call: every input kind (images, folders, globs, rasters with ``--tile``, videos,
cameras, streams) through one :class:`~harnet.deploy.predictor.Predictor`, whatever backend runs it.

The inputs are sorted out first and every combination that cannot work is refused before any model runs
(``--tile``, ``--bands`` or ``--format`` with a video, a missing file, ``--shard`` with a video): a
one-line :class:`UsageError`. Then the output folder is checked writable. A call without ``--shard``
removes the previous call's outputs there as a set; a call with ``--shard K/N`` keeps them, refuses a folder
whose results were made with other settings, and predicts only its share of the inputs whose results are
not complete yet (:mod:`harnet.deploy.records`). Images and rasters are predicted one input at a time (here,
or spread over dask workers by a ``runner``), each failure reported in one line naming its input while the
others go on, and each input's record written as soon as its outputs are; ``detections.json``, the
``--format`` pre-annotations and ``skipped.txt`` are assembled from every input's record by the process that
finds them all complete. Videos follow.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harnet.deploy.annotation_formats import ANNOTATION_FORMATS
from harnet.deploy.files import expand_inputs
from harnet.deploy.predict_files import predict_files
from harnet.deploy.predict_raster import predict_rasters
from harnet.deploy.predictor import Predictor
from harnet.deploy.records import (
    Settings,
    assembled_report,
    check_settings,
    is_complete,
    output_lock,
    prediction_settings,
    read_record,
    remove_assembled,
    write_record,
)
from harnet.deploy.report import PREDICT_OUTPUTS, PredictReport, check_writable, output_stems
from harnet.deploy.shard import Shard, shard_positions
from harnet.deploy.video import VideoReport, is_video_source, output_stem, predict_video
from harnet.utils.errors import UsageError, one_line
from harnet.utils.outputs import remove_outputs


@dataclass
class Inputs:
    """A command line's inputs sorted by kind, each kind in the order given."""

    images: list[Path] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)


def sort_inputs(items: list[str], source: str | None = None, tile: int | None = None,
                bands: tuple[int, ...] | None = None, formats: Sequence[str] = (), shard: Shard | None = None,
                dask: str | None = None) -> Inputs:
    """Images (files, folders, globs) and videos (files by suffix, a camera index, a stream URL); a
    combination that cannot work is a :class:`UsageError`."""
    videos = [item for item in items if is_video_source(item)]
    if source is not None:
        videos.insert(0, source)
    try:
        images = expand_inputs([item for item in items if not is_video_source(item)])
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    videos += [str(p) for p in images if is_video_source(str(p))]  # a glob that matched video files
    images = [p for p in images if not is_video_source(str(p))]
    if not videos and not images:
        raise UsageError("predict needs image files, folders, globs, a video or --source")
    if videos and (tile is not None or bands is not None):
        option = "--tile" if tile is not None else "--bands"
        raise UsageError(f"{option} applies to images and rasters, not to video ({videos[0]}); "
                         "predict the video in a separate call")
    if bands is not None and tile is None:
        raise UsageError("--bands: selects raster bands for tiled prediction; add --tile SIZE")
    unknown = [f for f in formats if f not in ANNOTATION_FORMATS]
    if unknown:
        raise UsageError(f"--format {unknown[0]}: choose from {', '.join(ANNOTATION_FORMATS)}")
    if formats and not images:
        raise UsageError(f"--format writes pre-annotations of images and rasters, not of video ({videos[0]})")
    for option, value in (("--shard", shard), ("--dask", dask)):
        if value is not None and videos:
            raise UsageError(f"{option} spreads images and rasters, not video ({videos[0]}); predict the video "
                             "in a separate call")
    return Inputs(images, videos)


Item = tuple[Path, str]  # an input and the stem of its outputs (output_stems over the whole command line)


class InputRunner(Protocol):
    """Predicts images or rasters, writing each one's picture and maps into the output folder, and yields
    (input, stem, that input's report) as each is done, in any order (dask: as workers finish)."""

    def __call__(self, items: Sequence[Item]) -> Iterable[tuple[Path, str, PredictReport]]: ...


@dataclass
class LocalRunner:
    """One input after another in this process: plain images whole, ``tile`` set: window by window."""

    predictor: Predictor
    out_dir: Path
    score_thresh: float
    tile: int | None = None
    overlap: float = 0.25
    bands: tuple[int, ...] | None = None
    progress: bool = False

    def __call__(self, items: Sequence[Item]) -> Iterator[tuple[Path, str, PredictReport]]:
        for path, stem in items:
            report = PredictReport()
            if self.tile is not None:
                predict_rasters(self.predictor, [path], self.out_dir, self.score_thresh, self.tile, self.overlap,
                                self.bands, self.progress, report=report, stems=[stem])
            else:
                predict_files(self.predictor, [path], self.out_dir, self.score_thresh, report=report, stems=[stem])
            yield path, stem, report


@dataclass
class RunReport:
    """What one call predicted: the images' and rasters' report, one report per video, failures."""

    report: PredictReport  # the inputs this call predicted (a rerun skips complete ones)
    videos: list[VideoReport] = field(default_factory=list)
    video_errors: list[str] = field(default_factory=list)
    inputs: int = 0  # images and rasters on the command line (every shard's)
    done_before: int = 0  # of this call's share, complete before it started: not predicted again
    assembled: bool = False  # detections.json written: every input of the command line is complete

    @property
    def failed(self) -> bool:
        """Nothing usable came out of some input kind that was asked for."""
        images_failed = bool(self.report.skipped) and not self.report.images
        return images_failed or bool(self.video_errors)


def predict_inputs(predictor: Predictor, inputs: Inputs, out_dir: Path, score_thresh: float, *,
                   tile: int | None = None, overlap: float = 0.25, bands: tuple[int, ...] | None = None,
                   progress: bool = False, formats: Sequence[str] = (), shard: Shard | None = None,
                   settings: Settings | None = None, runner: InputRunner | None = None) -> RunReport:
    """Predict every input into ``out_dir`` (see the module docstring); ``formats``: the pre-annotation
    files to write (:data:`~harnet.deploy.annotation_formats.ANNOTATION_FORMATS`); ``shard``: predict only
    that share, keeping what the folder holds; ``settings``: what the records are made with
    (:func:`~harnet.deploy.records.prediction_settings`; by default without the model file's identity);
    ``runner``: what predicts the images and rasters (default :class:`LocalRunner`)."""
    check_writable(out_dir)
    if settings is None:
        backend = type(getattr(predictor, "runtime", None)).__name__
        settings = prediction_settings(None, backend=backend, score=score_thresh, tile=tile, overlap=overlap,
                                       bands=bands, tta=getattr(predictor, "tta", None), formats=formats)
    stems = output_stems([*inputs.images, *(output_stem(v) for v in inputs.videos)])
    image_stems, video_stems = stems[: len(inputs.images)], stems[len(inputs.images):]
    items = list(zip(inputs.images, image_stems))
    run = RunReport(PredictReport(), inputs=len(items))
    if shard is None:
        remove_outputs(out_dir, PREDICT_OUTPUTS)
    with output_lock(out_dir):
        check_settings(out_dir, settings)
        mine = [items[i] for i in shard_positions(inputs.images, shard)]
        todo = [(p, s) for p, s in mine if not is_complete(read_record(out_dir, s), p, settings)]
        run.done_before = len(mine) - len(todo)
        if todo:
            remove_assembled(out_dir)
    if items:
        runner = runner or LocalRunner(predictor, out_dir, score_thresh, tile, overlap, bands, progress)
        by_stem: dict[str, PredictReport] = {}
        for path, stem, report in runner(todo):
            write_record(out_dir, stem, path, settings, report)
            by_stem[stem] = report
        for _, stem in todo:  # this call's report in the command line's order, whatever order they finished in
            _extend(run.report, by_stem[stem])
        with output_lock(out_dir):
            full = assembled_report(out_dir, items, settings)
            if full is not None:
                before = len(full.skipped)
                full.write_formats(out_dir, formats, predictor.class_names, predictor.category_ids)
                full.write(out_dir)
                run.report.skipped += full.skipped[before:]
                run.assembled = True
    for source, stem in zip(inputs.videos, video_stems):
        try:
            video = predict_video(predictor, source, out_dir, score_thresh, stem=stem)
        except Exception as e:  # unreadable file or stream: one line naming it, the other inputs go on
            message = one_line(e)
            run.video_errors.append(message if source in message else f"{source}: {message}")
            continue
        run.videos.append(video)
        if video.error:
            run.video_errors.append(video.error)
    return run


def _extend(report: PredictReport, part: PredictReport) -> None:
    report.images += part.images
    report.detections += part.detections
    report.skipped += part.skipped
    report.notes += part.notes
    report.sizes.update(part.sizes)
