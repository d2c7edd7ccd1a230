"""``python -m harnet.deploy MODEL IMAGES... --out DIR --score S``: ``harnet predict`` without torch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harnet.deploy.detector import DeployedDetector, predict_files
from harnet.deploy.files import expand_inputs
from harnet.deploy.formats import DEPLOY_RUNTIMES
from harnet.deploy.runtime import deploy_runtime
from harnet.utils.errors import one_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harnet.deploy",
        description="detections of an exported HAR-Net (onnxruntime or OpenVINO, no torch)")
    parser.add_argument("model", help="model.onnx, an OpenVINO .xml or its folder (as harnet export wrote it)")
    parser.add_argument("images", nargs="+", help="image files, folders or globs")
    parser.add_argument("--out", default="predictions", help="output folder (detections.json, *_pred.png)")
    parser.add_argument("--score", type=float, default=0.3, help="keep detections scoring at least this")
    parser.add_argument("--backend", choices=["auto", *DEPLOY_RUNTIMES], default="auto",
                        help="auto: the one the model's file type names")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: the runtime's)")
    parser.add_argument("--no-draw", action="store_true", help="write detections.json only")
    args = parser.parse_args(argv)
    # A missing, corrupt or incomplete model, or a missing runtime: one line naming the file, no traceback.
    try:
        paths = expand_inputs(args.images)
        deploy_runtime(args.model)  # a checkpoint or run folder: said before its missing metadata is
        detector = DeployedDetector(args.model, args.backend, args.threads)
        report = predict_files(detector, paths, Path(args.out), args.score, draw=not args.no_draw)
    except FileNotFoundError as e:
        print(f"{parser.prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as e:
        print(f"{parser.prog}: error: {one_line(e)}", file=sys.stderr)
        return 1
    print(f"{len(report.images)} images, {len(report.detections)} detections -> {args.out}")
    for line in report.skipped:
        print(f"skipped {line}", file=sys.stderr)
    return 1 if report.skipped and not report.images else 0


if __name__ == "__main__":
    sys.exit(main())
