"""``python -m harnet.deploy MODEL IMAGES... --out DIR --score S``: ``harnet predict`` without torch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harnet.deploy.detector import DeployedDetector, predict_files
from harnet.deploy.files import expand_inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harnet.deploy",
        description="detections of an exported HAR-Net (onnxruntime or OpenVINO, no torch)")
    parser.add_argument("model", help="model.onnx, an OpenVINO .xml or its folder (metadata .json beside it)")
    parser.add_argument("images", nargs="+", help="image files, folders or globs")
    parser.add_argument("--out", default="predictions", help="output folder (detections.json, *_pred.png)")
    parser.add_argument("--score", type=float, default=0.3, help="keep detections scoring at least this")
    parser.add_argument("--backend", choices=["auto", "onnxruntime", "openvino"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: the runtime's)")
    parser.add_argument("--no-draw", action="store_true", help="write detections.json only")
    args = parser.parse_args(argv)
    try:
        paths = expand_inputs(args.images)
    except FileNotFoundError as e:
        parser.error(str(e))
    detector = DeployedDetector(args.model, args.backend, args.threads)
    report = predict_files(detector, paths, Path(args.out), args.score, draw=not args.no_draw)
    print(f"{len(report.images)} images, {len(report.detections)} detections -> {args.out}")
    for line in report.skipped:
        print(f"skipped {line}", file=sys.stderr)
    return 1 if report.skipped and not report.images else 0


if __name__ == "__main__":
    sys.exit(main())
