"""One ``harnet predict`` call: every input kind (images, folders, globs, rasters with ``--tile``, videos,
cameras, streams) through one :class:`~harnet.deploy.predictor.Predictor`, whatever backend runs it.

The inputs are sorted out first and every combination that cannot work is refused before any model runs
(``--tile``, ``--bands`` or ``--format`` with a video, a missing file): a one-line :class:`UsageError`. Then
the output folder is checked writable and the previous call's outputs there are removed as a set; images,
rasters and videos are predicted in turn, each failure reported in one line naming its input while the
others go on; the images' pre-annotations (``--format``) follow, and ``detections.json`` is written last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harnet.deploy.annotation_formats import ANNOTATION_FORMATS
from harnet.deploy.files import expand_inputs
from harnet.deploy.predict_files import predict_files
from harnet.deploy.predict_raster import predict_rasters
from harnet.deploy.predictor import Predictor
from harnet.deploy.report import PREDICT_OUTPUTS, PredictReport, check_writable, output_stems
from harnet.deploy.video import VideoReport, is_video_source, output_stem, predict_video
from harnet.utils.errors import UsageError, one_line
from harnet.utils.outputs import remove_outputs


@dataclass
class Inputs:
    """A command line's inputs sorted by kind, each kind in the order given."""

    images: list[Path] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)


def sort_inputs(items: list[str], source: str | None = None, tile: int | None = None,
                bands: tuple[int, ...] | None = None, formats: Sequence[str] = ()) -> Inputs:
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
    return Inputs(images, videos)


@dataclass
class RunReport:
    """What one call predicted: the images' and rasters' report, one report per video, failures."""

    report: PredictReport
    videos: list[VideoReport] = field(default_factory=list)
    video_errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Nothing usable came out of some input kind that was asked for."""
        images_failed = bool(self.report.skipped) and not self.report.images
        return images_failed or bool(self.video_errors)


def predict_inputs(predictor: Predictor, inputs: Inputs, out_dir: Path, score_thresh: float, *,
                   tile: int | None = None, overlap: float = 0.25, bands: tuple[int, ...] | None = None,
                   progress: bool = False, formats: Sequence[str] = ()) -> RunReport:
    """Predict every input into ``out_dir`` (see the module docstring); ``formats``: the pre-annotation
    files to write (:data:`~harnet.deploy.annotation_formats.ANNOTATION_FORMATS`)."""
    check_writable(out_dir)
    remove_outputs(out_dir, PREDICT_OUTPUTS)
    stems = output_stems([*inputs.images, *(output_stem(v) for v in inputs.videos)])
    image_stems, video_stems = stems[: len(inputs.images)], stems[len(inputs.images):]
    run = RunReport(PredictReport())
    if inputs.images:
        if tile is not None:
            predict_rasters(predictor, inputs.images, out_dir, score_thresh, tile, overlap, bands, progress,
                            report=run.report, stems=image_stems)
        else:
            predict_files(predictor, inputs.images, out_dir, score_thresh, report=run.report, stems=image_stems)
        run.report.write_formats(out_dir, formats, predictor.class_names, predictor.category_ids)
        run.report.write(out_dir)
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
