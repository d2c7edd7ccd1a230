"""harnet predict on a video: annotated video + JSON lines per frame; a truncated file keeps its frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harnet.deploy.video import is_video_source
from harnet.tools.cli import main

av = pytest.importorskip("av")


def _clip(path: Path, frames: int = 4, size: int = 64, container_format: str | None = None) -> Path:
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            rgb = np.zeros((size, size, 3), np.uint8)
            rgb[10 + i : 40 + i, 12:44] = (200, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_is_video_source() -> None:
    assert is_video_source("clip.mp4") and is_video_source("0") and is_video_source("rtsp://cam/1")
    assert not is_video_source("image.png")


def test_predict_video_writes_frames_and_jsonl(trained_run: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    clip = _clip(tmp_path / "clip.mp4")
    assert main(["predict", str(trained_run), str(clip), "--out", str(tmp_path / "out"), "--score", "0"]) == 0
    assert "4 frames" in capsys.readouterr().out
    lines = [json.loads(line) for line in (tmp_path / "out" / "clip_detections.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == [0, 1, 2, 3]
    assert set(lines[0]) == {"frame", "time", "boxes", "scores", "labels", "names"}
    with av.open(str(tmp_path / "out" / "clip_pred.mp4")) as written:
        assert sum(1 for _ in written.decode(video=0)) == 4


def test_truncated_video_keeps_what_was_written(trained_run: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    clip = _clip(tmp_path / "clip.mp4", frames=6)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.read_bytes()[: clip.stat().st_size * 2 // 3])
    code = main(["predict", str(trained_run), "--source", str(broken), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 1
    if code != 0:  # FFmpeg may also just stop at the cut without an error
        assert str(broken) in err[0]
    else:
        assert (tmp_path / "out" / "broken_detections.jsonl").exists()


def test_truncated_stream_keeps_every_frame_before_the_cut(trained_run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """An MPEG-TS recording cut in half (a camera's stream dropped mid-write) has no trailing index to lose:
    the frames before the cut are predicted and written, the run ends normally."""
    clip = _clip(tmp_path / "clip.ts", frames=12, container_format="mpegts")
    with av.open(str(clip)) as whole:
        assert sum(1 for _ in whole.decode(video=0)) == 12
    cut = tmp_path / "cut.ts"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    with av.open(str(cut)) as readable:
        decodable = sum(1 for _ in readable.decode(video=0))
    assert 0 < decodable < 12
    assert main(["predict", str(trained_run), str(cut), "--out", str(tmp_path / "out"), "--score", "0"]) == 0
    assert f"{decodable} frames" in capsys.readouterr().out
    lines = (tmp_path / "out" / "cut_detections.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(decodable))
    with av.open(str(tmp_path / "out" / "cut_pred.mp4")) as written:
        assert sum(1 for _ in written.decode(video=0)) == decodable


def test_images_and_a_video_in_one_call_are_all_predicted(trained_run: Path, shapes_root: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    image = sorted((shapes_root / "val").glob("*.png"))[0]
    clip = _clip(tmp_path / "clip.mp4", frames=2)
    out = tmp_path / "out"
    assert main(["predict", str(trained_run), str(image), str(clip), "--out", str(out), "--score", "0"]) == 0
    printed = capsys.readouterr().out
    assert "1 images" in printed and "2 frames" in printed
    assert {d["file_name"] for d in json.loads((out / "detections.json").read_text())} <= {str(image)}
    assert (out / f"{image.stem}_pred.png").is_file()
    assert len((out / "clip_detections.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("option", [["--tile", "64"], ["--tile", "64", "--bands", "1"]])
def test_tile_or_bands_with_a_video_is_refused_in_one_line(trained_run: Path, tmp_path: Path, option: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    clip = _clip(tmp_path / "clip.mp4", frames=1)
    assert main(["predict", str(trained_run), str(clip), *option, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tile" in err[0] and str(clip) in err[0]


def test_audio_only_file_is_named_in_one_line(trained_run: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    sound = tmp_path / "sound.mp4"
    with av.open(str(sound), mode="w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    assert main(["predict", str(trained_run), str(sound), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(sound) in err[0] and "no video stream" in err[0]
