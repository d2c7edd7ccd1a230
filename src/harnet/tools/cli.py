"""``harnet`` command line: demo, data, train, eval, predict, serve, export, explain, bench, ablate, info.

Errors a user can fix (bad config key, missing file, unusable checkpoint) print one line and exit
with status 2 (usage/config) or 1 (runtime: bad data, NaN loss, unwritable output); ``--debug`` shows
the full traceback instead. The command starts without importing torch: ``harnet predict`` with an
exported model runs on a machine without it, and a command that needs it says so in one line (status 2).
Ctrl-C exits with 130 (128 + SIGINT, the shell convention) after training
saved a checkpoint. Anything else is a bug: one line, status 1, and a hint to rerun with ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harnet.config.io import ConfigError
from harnet.engine.errors import CheckpointError
from harnet.utils.errors import UsageError, one_line

if TYPE_CHECKING:
    from harnet.deploy.tta import TTAConfig

# Packages without which a command cannot run at all; the message names the one missing.
TORCH_PACKAGES = {"torch", "torchvision", "timm"}


def _tta(args: argparse.Namespace) -> TTAConfig | None:
    """``--tta`` (flip + the paper's two scales), ``--tta-scales``/``--tta-no-flip`` -> a TTAConfig, else None."""
    from harnet.deploy.tta import PAPER_SCALES, TTAConfig

    if not (args.tta or args.tta_scales is not None or args.tta_no_flip):
        return None
    try:
        return TTAConfig(scales=tuple(args.tta_scales or PAPER_SCALES), flip=not args.tta_no_flip)
    except ValueError as e:
        raise ConfigError(f"--tta-scales: {e}") from None


def cmd_demo(args: argparse.Namespace) -> int:
    from harnet.tools.demo import run_demo

    run_demo(Path(args.out), threads=args.threads)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.dataset == "tiles":
        return cmd_data_tiles(args)
    if args.dataset == "shapes":
        from harnet.data.shapes import generate_shapes

        info = generate_shapes(Path(args.out), num_images=args.images, size=args.size, seed=args.seed,
                               difficulty=args.difficulty)
    else:
        from harnet.data.trees import convert_trees

        info = convert_trees(Path(args.out), wheel=args.wheel, tile=args.tile)
    print(json.dumps(info, indent=1, default=str))
    return 0


def cmd_data_tiles(args: argparse.Namespace) -> int:
    from harnet.data.tiles import TileOptions, make_tiles

    options = TileOptions(size=args.size, overlap=args.overlap, val=args.val, empty=args.empty,
                          min_visible=args.min_visible, point_size=args.point_size, label_field=args.label_field,
                          layer=args.layer, seed=args.seed, block=args.block, split=args.split)
    try:
        summary = make_tiles(args.rasters, args.labels, args.out, options)
    except ValueError as e:  # bad rasters, layers or options: the user's to fix, one line
        raise UsageError(str(e)) from None
    print("\n".join(summary.lines()))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from harnet.config.experiment import config_path, load_experiment
    from harnet.engine.distributed import launched_as_main
    from harnet.engine.trainer import train
    from harnet.engine.upgrade import upgrade_config

    overrides = [*args.set, *(["data.skip_bad=true"] if args.skip_bad else []),
                 *(["train.skip_nonfinite=true"] if args.skip_nonfinite else [])]
    if args.backbone_weights is not None:  # "none" -> null: train the backbone from scratch
        weights = None if args.backbone_weights.lower() in ("none", "null") else args.backbone_weights
        overrides.append(f"model.backbone.weights={json.dumps(weights)}")
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: not a run folder (no config.yaml)")
        cfg = load_experiment(run_dir / "config.yaml", [*overrides, f"output_dir={run_dir}"],
                              upgrade=upgrade_config)
    else:
        if not args.config:
            raise ConfigError("train needs --config FILE (or a built-in name such as 'demo') or --resume RUN_DIR")
        cfg = load_experiment(config_path(args.config), overrides)
    result = train(cfg, resume=bool(args.resume), progress=not args.no_progress, overwrite=args.overwrite)
    if not launched_as_main():  # torchrun: rank 0 reports
        return 0
    if result.final is not None:
        print(result.final.table())
    if result.skipped_nonfinite:
        print(f"skipped {result.skipped_nonfinite} batches with a non-finite loss")
    print(f"run folder: {result.run_dir}  (best AP {result.best_ap:.4f})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from harnet.engine.inference import CheckpointEval, evaluate_checkpoint

    if not args.report and (args.iou is not None or args.score is not None):
        raise UsageError("--iou and --score set the report's operating point: add --report")
    if args.iou is not None and not 0 < args.iou <= 1:
        raise UsageError(f"--iou: must lie in (0, 1], got {args.iou}")
    if args.score is not None and not 0 <= args.score <= 1:
        raise UsageError(f"--score: must lie in [0, 1], got {args.score}")
    written: list[Any] = []

    def write_report(evaluation: CheckpointEval) -> None:
        from harnet.tools.eval_report import write_report

        written.append(write_report(evaluation, iou=0.5 if args.iou is None else args.iou, score=args.score))

    report = evaluate_checkpoint(args.checkpoint, args.split, data=args.data, overrides=args.set,
                                 skip_bad=args.skip_bad, device=args.device, tta=_tta(args), out=args.out,
                                 tile=args.tile, overlap=args.overlap, report=write_report if args.report else None)
    print(report.result.table())
    if report.issues:
        print(f"harnet: {report.issues}", file=sys.stderr)
    print(f"metrics: {report.out / 'metrics.json'}  detections (COCO results format): {report.out / 'detections.json'}")
    for files in written:
        a = files.analysis
        o = a.overall

        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        print(f"at IoU {a.iou:g}, score >= {a.score:.2f} ({a.score_chosen_by}): precision {f(o['precision'])}, "
              f"recall {f(o['recall'])}, F1 {f(o['f1'])}")
        print(f"report: {files.html}  (numbers: {files.json})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from harnet.deploy.annotation_formats import PREDICTION_FILES
    from harnet.deploy.raster import parse_bands
    from harnet.deploy.records import prediction_settings
    from harnet.deploy.run import predict_inputs, sort_inputs
    from harnet.deploy.shard import parse_shard
    from harnet.deploy.tiling import check_tile
    from harnet.tools.predict import open_predictor

    try:
        bands = parse_bands(args.bands)
        if args.tile is not None:
            check_tile(args.tile, args.overlap)
    except ValueError as e:
        raise UsageError(str(e)) from None
    shard = parse_shard(args.shard)
    threads = args.threads
    if args.dask is not None:
        from harnet.tools.predict_dask import worker_threads

        threads = worker_threads(args.dask, args.threads)
    tta = _tta(args)
    predictor = open_predictor(args.model, backend=args.backend, threads=threads, device=args.device, tta=tta)
    formats = list(dict.fromkeys(args.format or []))
    inputs = sort_inputs(args.images, args.source, args.tile, bands, formats, shard=shard, dask=args.dask)
    out = Path(args.out)
    settings = prediction_settings(args.model, backend=type(predictor.runtime).__name__, score=args.score,
                                   tile=args.tile, overlap=args.overlap, bands=bands, tta=tta, formats=formats)
    options: dict[str, Any] = dict(tile=args.tile, overlap=args.overlap, bands=bands, progress=not args.no_progress,
                                   formats=formats, shard=shard, settings=settings)
    if args.dask is None:
        run = predict_inputs(predictor, inputs, out, args.score, **options)
    else:
        from harnet.tools.predict_dask import DaskRunner, ModelSpec, dask_client

        spec = ModelSpec(str(args.model), args.backend, threads, args.device, predictor.batch_size, tta)
        with dask_client(args.dask) as client:
            runner = DaskRunner(client, spec, predictor, out, args.score, args.tile, args.overlap, bands,
                                not args.no_progress, local=args.dask.strip().startswith("local:"))
            run = predict_inputs(predictor, inputs, out, args.score, runner=runner, **options)
    report = run.report
    if inputs.images:
        if run.done_before:
            print(f"{run.done_before} inputs already complete in {out}: not predicted again")
        print(f"{len(report.images)} images, {len(report.detections)} detections -> {args.out}")
        if not run.assembled:
            print(f"shard {shard}: its inputs are done; detections.json is written by the shard that completes "
                  f"the last of the {run.inputs} inputs")
    for fmt in formats:
        if run.assembled and (written := out / PREDICTION_FILES[fmt]).exists():
            print(f"{fmt} pre-annotations: {written}")
    for video in run.videos:
        print(f"{video.source}: {video.frames} frames, {video.detections} detections, {video.fps:.1f} FPS"
              f" -> {video.video_path}, {video.jsonl_path}")
    for line in report.notes:
        print(f"note: {line}", file=sys.stderr)
    for line in report.skipped:
        print(f"skipped {line}", file=sys.stderr)
    for line in run.video_errors:
        print(f"harnet: {line}", file=sys.stderr)
    return 1 if run.failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from harnet.deploy.formats import runtime_for

    try:
        from harnet.deploy.serve import ServeOptions, run_server
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in ("fastapi", "uvicorn", "starlette", "multipart", "python_multipart"):
            raise UsageError(f'harnet serve needs the [serve] extra ({e.name} is not installed: pip install '
                             '"harnet[serve]")') from None
        raise
    from harnet.tools.predict import open_predictor

    if not Path(args.model).exists():
        raise UsageError(f"{args.model}: model not found")
    runtime_for(args.model)  # an unknown suffix or an ambiguous folder: refused before the server starts
    for name in ("max_batch", "max_bytes"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if args.max_wait_ms < 0 or args.timeout <= 0:
        raise UsageError("--max-wait-ms must be at least 0 and --timeout above 0")
    options = ServeOptions(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_bytes=args.max_bytes,
                           timeout=args.timeout, model=str(args.model))
    tta = _tta(args)

    def load() -> Any:
        return open_predictor(args.model, backend=args.backend, threads=args.threads, device=args.device,
                              batch_size=args.max_batch, tta=tta)

    return run_server(load, options, host=args.host, port=args.port, access_log=not args.no_access_log)


def _backend_options() -> argparse.ArgumentParser:
    """What runs a model file, for serve (an argparse parent)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--device", default="auto", help="PyTorch device of a checkpoint (auto, cpu, cuda)")
    options.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "openvino"], default="auto",
                         help="what runs the network (default: the model file decides)")
    options.add_argument("--threads", type=int, default=None, help="CPU threads of the backend (default: its own)")
    return options


def _float_parts(text: str | None) -> list[str] | None:
    return None if text is None else [part for part in text.split(",") if part]


if TYPE_CHECKING:
    from harnet.deploy.formats import ExportFormat


def _export_format(args: argparse.Namespace) -> ExportFormat:
    """``--format`` with ``--int8``/``--fp16``/``--portable``/``--calib``, checked against the formats table."""
    from harnet.deploy.formats import export_format

    if args.int8 and args.fp16:
        raise UsageError("--int8 and --fp16 exclude each other")
    try:
        spec = export_format(args.format, "int8" if args.int8 else "fp16" if args.fp16 else None)
        spec.is_portable(args.portable)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if spec.precision == "int8" and not args.calib:
        raise UsageError("int8 export needs calibration images: --calib IMAGES (files, folders or globs)")
    if spec.precision != "int8" and (args.calib or args.float_parts is not None):
        raise UsageError(f"--{'calib' if args.calib else 'float-parts'} is for int8 exports (--int8 or "
                         f"--format onnx-int8), not --format {spec.name}")
    return spec


def _calibration_paths(args: argparse.Namespace) -> list[Path]:
    """The ``--calib`` images (at most ``--calib-count``), checked before the model loads; none found names the
    arguments."""
    from harnet.deploy.files import IMAGE_SUFFIXES, expand_inputs

    try:
        paths = expand_inputs(args.calib)[: args.calib_count]
    except FileNotFoundError as e:
        raise UsageError(f"--calib: {e}") from None
    if not paths:
        raise UsageError(f"--calib {' '.join(args.calib)}: no images there (looked for "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def _calibration_images(paths: list[Path], model_input: Any) -> list[Any]:
    """The calibration images as float CHW tensors, read as the model reads its inputs (``model_input``, its
    ``model.input``: an N-band model's bands and units)."""
    import torch

    from harnet.data.image_io import load_image
    from harnet.deploy.image_bands import read_for_model

    if model_input.is_rgb:
        return [load_image(p).as_subclass(torch.Tensor) for p in paths]
    return [torch.from_numpy(read_for_model(p, model_input)) for p in paths]


def cmd_export(args: argparse.Namespace) -> int:
    from harnet.engine import checkpoint
    from harnet.tools.export import export_model

    spec = _export_format(args)
    paths = _calibration_paths(args) if spec.precision == "int8" else []
    ckpt = checkpoint.load(args.checkpoint)
    model = checkpoint.build_model(ckpt)
    calibration = _calibration_images(paths, checkpoint.model_config(ckpt).input) if paths else []
    out = Path(args.out) if args.out else Path(ckpt["path"]).parent / spec.default_name(args.portable)
    result = export_model(model, out, spec.name, ckpt["class_names"],  # type: ignore[arg-type]
                          ckpt["category_ids"], exporter=args.exporter, size=tuple(args.size) if args.size else None,
                          portable=args.portable, calibration=calibration, float_parts=_float_parts(args.float_parts))
    check = ("not checked (pip install onnxruntime to check)" if result.max_abs_diff is None
             else f"max |exported - PyTorch| = {result.max_abs_diff:.2e} on a check batch")
    print(f"exported {result.path}  metadata inside it and in {result.metadata_path.name}  ({check})")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from harnet.tools.explain import explain_file

    point = (float(args.point[0]), float(args.point[1])) if args.point else None
    result, files = explain_file(args.checkpoint, args.image, args.out, point, args.device)
    print(f"{len(files)} files -> {args.out}")
    for line in result.skipped:
        print(f"skipped {line}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from harnet.config.model import BackboneConfig, HARNetConfig
    from harnet.modeling.harnet import build_harnet
    from harnet.utils.complexity import count_flops, count_parameters

    cfg = HARNetConfig.preset(args.preset, num_classes=args.num_classes,
                              backbone=BackboneConfig(args.backbone))  # type: ignore[arg-type]
    model = build_harnet(cfg).eval()
    params = count_parameters(model)
    gflops = count_flops(model, args.size)
    print(f"preset {args.preset}  backbone {args.backbone}  classes {args.num_classes}")
    for name, count in params.items():
        print(f"  params {name:<10} {count / 1e6:8.2f} M")
    print(f"  GFLOPs at {args.size}x{args.size}: {gflops:.1f}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from harnet.engine.device import resolve_device
    from harnet.tools.bench import run_benchmark

    if args.run:
        from harnet.tools.bench_run import bench_run

        run_result = bench_run(args.run, args.formats, args.sizes[0] if args.sizes else 320,
                               args.threads or 2, args.repeats, data=args.data,
                               progress=lambda m: print(f"[bench] {m}", file=sys.stderr))
        table = run_result.markdown()
        print(f"{run_result.run}: {run_result.size} px network input, {run_result.threads} threads, "
              f"median of {run_result.repeats}\n{table}")
        _write_bench(args.out, run_result.to_dict(), table)
        return 0
    device = resolve_device(args.device)
    sizes = tuple(args.sizes or (320, 512, 800))
    result = run_benchmark(args.backbone, sizes, args.repeats, args.warmup, args.train_size,
                           str(device), args.threads, progress=lambda m: print(f"[bench] {m}", file=sys.stderr),
                           amp=not args.no_amp, memory=not args.no_memory)
    table = result.markdown()
    print(f"device {result.device} {result.device_name}, {result.threads} threads, backbone {result.backbone}, "
          f"median of {result.repeats}\n{table}")
    _write_bench(args.out, result.to_dict(), table)
    return 0


def _write_bench(out: str | None, data: dict[str, Any], table: str) -> None:
    """A bench's results as ``out`` (JSON) and the same name with ``.md`` (its table); nothing without ``out``."""
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))
        path.with_suffix(".md").write_text(table + "\n")


def _run_options() -> argparse.ArgumentParser:
    """Options eval and bench share, declared once (an argparse parent)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--data", help="experiment YAML whose data section to use (default: the run's own; "
                                        "bench: RUN mode)")
    options.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (bench RUN mode: the CPU)")
    return options


def _bench_formats(text: str) -> list[str]:
    """``--formats`` as a list, checked against the formats table (argparse turns the error into usage)."""
    from harnet.deploy.formats import parse_bench_formats

    try:
        return parse_bench_formats(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_ablate(args: argparse.Namespace) -> int:
    from harnet.config.experiment import config_path
    from harnet.engine.device import resolve_device
    from harnet.tools.ablation import custom_row, run_ablation, summarize, write_report

    try:
        extra = [custom_row(name, overrides) for name, *overrides in args.row]
    except ValueError as e:
        raise ConfigError(str(e)) from None
    config = config_path(args.config)
    if not config.is_file():
        raise ConfigError(f"{config}: config file not found")
    out = Path(args.out or f"runs/ablate/{config.stem}")
    seeds = list(range(args.seeds))
    device = str(resolve_device(args.device))
    log = lambda message: print(f"[ablate] {message}", file=sys.stderr, flush=True)  # noqa: E731
    if not args.report_only:
        try:
            run_ablation(config, out, seeds, args.rows, args.set, args.jobs, device, args.threads, log, extra,
                         soft_nms=args.soft_nms)
        except KeyboardInterrupt:
            log("stopped; finished runs are kept and the rest resume on the next call")
    # The report takes seconds; a stop request arriving now (a scheduler's SIGTERM after the trainings
    # were stopped) would otherwise lose the whole table.
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        summary = summarize(out, seeds, args.rows, device, args.latency_repeats, extra)
        summary |= {"config": str(config), "overrides": list(args.set), "command": " ".join(sys.argv)}
        write_report(out, summary, f"{config.stem}: ablation over {len(seeds)} seeds")
    finally:
        signal.signal(signal.SIGTERM, previous)
    print((out / "results.md").read_text())
    print(f"results: {out / 'results.json'}, {out / 'results.md'}, {out / 'ap_vs_step.png'}")
    return 0


def _tta_options() -> argparse.ArgumentParser:
    """Test-time augmentation, for eval and predict (an argparse parent)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: horizontal flip and two scales, merged by Soft-NMS + box voting")
    p.add_argument("--tta-scales", type=float, nargs="+", metavar="S",
                   help="TTA scales as multiples of the test size (implies --tta; default 1.0 1.25)")
    p.add_argument("--tta-no-flip", action="store_true", help="TTA without the flipped views (implies --tta)")
    return p


def _tile_options() -> argparse.ArgumentParser:
    """Tiled prediction, for eval and predict (an argparse parent)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--tile", type=int, metavar="SIZE",
                   help="predict window by window (windows of SIZE px, each at the model's scale: use the "
                        "training tile size); any raster size; GeoTIFFs get a GeoPackage and a GeoJSON")
    p.add_argument("--overlap", type=float, default=0.25,
                   help="with --tile: window overlap, a fraction of SIZE (at most 0.75)")
    return p


def build_parser() -> argparse.ArgumentParser:
    from harnet.config.model import HYBRID_MINUS, PRESETS
    from harnet.tools.ablation_rows import ROW_NAMES

    p = argparse.ArgumentParser(prog="harnet", description="HAR-Net object detection")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="generate shapes, train the hybrid model, evaluate, predict")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: measured best)")
    d.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="generate or convert datasets")
    dsub = data.add_subparsers(dest="dataset", required=True)
    s = dsub.add_parser("shapes", help="the built-in synthetic shapes dataset (COCO format)")
    s.add_argument("--out", required=True)
    s.add_argument("--images", type=int, default=300)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--difficulty", choices=["easy", "hard"], default="easy")
    s.set_defaults(func=cmd_data)
    t = dsub.add_parser("trees", help="real aerial tree crowns from the deepforest wheel (COCO format)")
    t.add_argument("--out", required=True)
    t.add_argument("--wheel", default=None, help="local deepforest .whl (default: pip download it)")
    t.add_argument("--tile", type=int, default=400)
    t.set_defaults(func=cmd_data)
    gt = dsub.add_parser("tiles", help="training tiles (GeoTIFF, COCO) cut from rasters under a map layer of labels")
    gt.add_argument("rasters", nargs="+", metavar="RASTER", help="GeoTIFFs (anything GDAL reads)")
    gt.add_argument("--labels", required=True, metavar="LAYER",
                    help="GeoPackage, Shapefile, GeoJSON, FlatGeobuf (polygons or points; reprojected to each "
                         "raster's CRS), or for rasters without CRS a CSV image_path,xmin,ymin,xmax,ymax,label")
    gt.add_argument("--out", required=True, metavar="DIR",
                    help="writes DIR/train, DIR/val, DIR/annotations/instances_{train,val}.json, DIR/tiles.png")
    gt.add_argument("--size", type=int, default=400, help="tile side in px (the grid of predict --tile)")
    gt.add_argument("--overlap", type=float, default=0.0, help="tile overlap, a fraction of --size")
    gt.add_argument("--label-field", metavar="FIELD", help="the field holding each feature's class "
                                                           "(default: one class, 'object')")
    gt.add_argument("--layer", metavar="NAME", help="the layer of a file holding several")
    gt.add_argument("--val", type=float, default=0.2, help="fraction of the labelled tiles for val (spatial blocks)")
    gt.add_argument("--empty", type=float, default=0.0,
                    help="fraction of the tiles no label touches to write too (negatives; default none)")
    gt.add_argument("--min-visible", type=float, default=0.5,
                    help="a box cut by a tile edge is kept (clipped) when this fraction of its area is in the tile")
    gt.add_argument("--point-size", type=float, metavar="METRES", help="side of the square box around each point")
    gt.add_argument("--split", choices=["blocks", "rasters"], default="blocks",
                    help="val by blocks of neighbouring tiles (default) or by whole rasters (other places or dates)")
    gt.add_argument("--block", type=int, metavar="TILES", help="side of the val split's blocks in tiles "
                                                               "(default: automatic)")
    gt.add_argument("--seed", type=int, default=0, help="seed of the val blocks and the negatives")
    gt.set_defaults(func=cmd_data)

    tr = sub.add_parser("train", help="train from a YAML config")
    tr.add_argument("--config", help="YAML file or built-in config name")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue the run in this folder")
    tr.add_argument("--backbone-weights", metavar="imagenet|FILE|none",
                    help="pretrained backbone: 'imagenet', a local state_dict, or 'none' (sets model.backbone.weights)")
    tr.add_argument("--overwrite", action="store_true",
                    help="start a new run even if output_dir holds one: that run's files are deleted first")
    tr.add_argument("--no-progress", action="store_true")
    tr.add_argument("--skip-bad", action="store_true",
                    help="skip bad images/annotations (listed in RUN/skipped.txt) instead of stopping")
    tr.add_argument("--skip-nonfinite", action="store_true",
                    help="skip batches with a NaN/inf loss (counted) instead of stopping")
    tr.set_defaults(func=cmd_train)

    from harnet.deploy.annotation_formats import ANNOTATION_FORMATS
    from harnet.deploy.formats import BENCH_FORMATS, CHECKPOINT, DEFAULT_BENCH_FORMATS, EXPORT_FORMATS

    run_options = _run_options()
    tta_options, tile_options = _tta_options(), _tile_options()
    ev = sub.add_parser("eval", help="COCO AP of a checkpoint or run folder",
                        parents=[run_options, tile_options, tta_options])
    ev.add_argument("checkpoint", metavar="RUN_OR_CKPT")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ev.add_argument("--split", choices=["train", "val"], default="val")
    ev.add_argument("--out", help="output folder (default: beside the checkpoint)")
    ev.add_argument("--skip-bad", action="store_true",
                    help="skip bad images/annotations (listed in OUT/skipped.txt) instead of stopping")
    ev.add_argument("--report", action="store_true",
                    help="also write OUT/report.html (one self-contained page: per-class AP, precision/recall/F1, "
                         "curves, confusion matrix, TIDE errors, worst false detections and misses) and report.json")
    ev.add_argument("--iou", type=float, default=None,
                    help="with --report: IoU at which a detection finds an object, for precision/recall/F1, the "
                         "confusion matrix and the galleries (default 0.5; DeepForest reports 0.4)")
    ev.add_argument("--score", type=float, default=None,
                    help="with --report: score threshold (default: the one of best F1, all classes pooled)")
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="detect objects in images, rasters and videos with any model file",
                        parents=[tile_options, tta_options])
    pr.add_argument("model", metavar="MODEL",
                    help="a run folder or .pt (PyTorch), an exported .onnx (fp32, fp16, int8) or an OpenVINO .xml "
                         "or its folder (these run without torch)")
    pr.add_argument("images", nargs="*", help="image files, folders, globs, or video files / stream URLs")
    pr.add_argument("--source", help="a video file, camera index (0) or stream URL (rtsp://...)")
    pr.add_argument("--out", default="predictions")
    pr.add_argument("--score", type=float, default=0.3)
    pr.add_argument("--device", default="auto", help="PyTorch device of a checkpoint (auto, cpu, cuda)")
    pr.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "openvino"], default="auto",
                    help="what runs the network (default: the model file decides)")
    pr.add_argument("--threads", type=int, default=None, help="CPU threads of the backend (default: its own)")
    pr.add_argument("--bands", metavar="B[,G,R]", help="with --tile: 1-based raster bands shown as RGB (default 1,2,3)")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar over the windows")
    pr.add_argument("--format", action="append", choices=ANNOTATION_FORMATS, metavar="FORMAT",
                    help="also write the detections as pre-annotations for a labelling tool, with their scores, "
                         "as OUT/preannotations_FORMAT.json (cvat: .xml, CVAT for images 1.1; yolo: a folder with "
                         "data.yaml, labels/*.txt): coco, labelstudio, cvat or yolo; repeat for several")
    pr.add_argument("--shard", metavar="K/N",
                    help="predict only shard K of N of the inputs (each input in exactly one shard) into a shared "
                         "--out: a rerun skips inputs already complete, and the shard that completes the last "
                         "input writes detections.json (e.g. a SLURM array: --shard $((SLURM_ARRAY_TASK_ID+1))/N)")
    pr.add_argument("--dask", metavar="local:N|ADDRESS",
                    help="spread images and raster windows over dask workers: local:N starts N worker processes "
                         "here, tcp://HOST:8786 uses a running scheduler (a shared file system); pip install "
                         '"harnet[dask]"')
    pr.set_defaults(func=cmd_predict)

    sv = sub.add_parser("serve", help="serve any model file over HTTP: POST /predict, GET /health, /metadata "
                                      "(the [serve] extra)", parents=[_backend_options(), tta_options])
    sv.add_argument("model", metavar="MODEL", help="a run folder or .pt, an exported .onnx or an OpenVINO model "
                                                   "(exports run without torch)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-batch", type=int, default=8, help="images of concurrent requests run as one batch, "
                                                            "at most this many")
    sv.add_argument("--max-wait-ms", type=float, default=2.0,
                    help="how long the first image of a batch waits for others")
    sv.add_argument("--max-bytes", type=int, default=50 * 1024 * 1024, help="largest request body (413 above it)")
    sv.add_argument("--timeout", type=float, default=30.0,
                    help="seconds a request waits for the model before it is answered 503")
    sv.add_argument("--no-access-log", action="store_true", help="do not log every request")
    sv.set_defaults(func=cmd_serve)

    ex = sub.add_parser("export", help="export the network to ONNX, OpenVINO or TorchScript (metadata inside, "
                                       "and in a .json beside it)")
    ex.add_argument("checkpoint", metavar="RUN_OR_CKPT")
    ex.add_argument("--format", choices=list(EXPORT_FORMATS), default="onnx",
                    help="; ".join(f"{f.name}: {f.help}" for f in EXPORT_FORMATS.values()))
    ex.add_argument("--out", help="output file, or folder for openvino (default beside the checkpoint: " + ", ".join(
        f.default_name() + "/" * f.folder for f in EXPORT_FORMATS.values()) + "; .portable before the suffix)")
    ex.add_argument("--portable", action="store_true",
                    help="deformable conv as GridSample + MatMul (no DeformConv op; always so for openvino)")
    ex.add_argument("--int8", action="store_true", help="--format onnx-int8: static int8 quantization")
    ex.add_argument("--fp16", action="store_true", help="--format onnx-fp16: fp16 weights and activations")
    ex.add_argument("--calib", nargs="+", metavar="IMAGES", help="int8 calibration images: files, folders, globs")
    ex.add_argument("--calib-count", type=int, default=100, help="use at most this many calibration images")
    ex.add_argument("--float-parts", default=None,
                    help="int8: comma-separated parts kept in float (predictors, deform; '' for none; "
                         "default: deform)")
    ex.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript",
                    help="ONNX exporter: torch.onnx's TorchScript-based one (fast) or torch.export (torch >= 2.6)")
    ex.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                    help="example input size to trace at (shapes stay dynamic; default: the test size)")
    ex.set_defaults(func=cmd_export)

    xp = sub.add_parser("explain", help="figures of the spatial masks, deformable sampling points, SE weights")
    xp.add_argument("checkpoint", metavar="RUN_OR_CKPT")
    xp.add_argument("image")
    xp.add_argument("--out", required=True, help="output folder")
    xp.add_argument("--point", type=float, nargs=2, metavar=("X", "Y"),
                    help="where to read the sampling points (default: the best detection's centre)")
    xp.add_argument("--device", default="auto")
    xp.set_defaults(func=cmd_explain)

    b = sub.add_parser("bench", help="latency/FLOPs/train step of every preset vs torchvision RetinaNet; "
                                     "with RUN: that checkpoint's AP/latency/memory per export format",
                       parents=[run_options])
    b.add_argument("run", nargs="?", metavar="RUN", help="a trained run or checkpoint: bench its export formats")
    b.add_argument("--formats", type=_bench_formats, default=",".join(DEFAULT_BENCH_FORMATS),
                   help=f"RUN mode, comma-separated: {', '.join(BENCH_FORMATS)} ({CHECKPOINT}: the checkpoint itself)")
    b.add_argument("--backbone", default="resnet50")
    b.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="image sizes (default 320 512 800; RUN mode: the network input, default 320)")
    b.add_argument("--repeats", type=int, default=10)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--train-size", type=int, default=512, help="image size of the training-step timing")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--no-amp", action="store_true", help="on CUDA, skip the fp16-autocast rows")
    b.add_argument("--no-memory", action="store_true", help="on CPU, skip the peak-memory processes")
    b.add_argument("--out", help="write results JSON here (and a .md table beside it)")
    b.set_defaults(func=cmd_bench)

    ab = sub.add_parser("ablate", help="train + evaluate every ablation row over seeds; tables and a plot")
    ab.add_argument("--config", required=True, help="experiment YAML or built-in name (e.g. shapes_hard)")
    ab.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for every row")
    ab.add_argument("--rows", nargs="+", choices=ROW_NAMES, default=None,
                    help="built-in rows (default: all, or none when --row is given)")
    ab.add_argument("--row", nargs="+", action="append", default=[], metavar="NAME_OR_KEY=VALUE",
                    help="a custom row: NAME then its overrides, e.g. --row residual_mask model.preset=hybrid "
                         "model.spatial.mode=residual ({seed} and {out} are replaced per run)")
    ab.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    ab.add_argument("--jobs", type=int, default=1, help="trainings at once (several small runs share a GPU)")
    ab.add_argument("--threads", type=int, default=None, help="torch CPU threads per training")
    ab.add_argument("--device", default="auto")
    ab.add_argument("--out", help="default: runs/ablate/CONFIG_NAME")
    ab.add_argument("--latency-repeats", type=int, default=10, help="batch-1 latency repeats per row (0: skip)")
    ab.add_argument("--soft-nms", action="store_true",
                    help="also score each finished HAR-Net run with the authors' test recipe (Soft-NMS + box voting)")
    ab.add_argument("--report-only", action="store_true", help="rebuild the report from finished runs")
    ab.set_defaults(func=cmd_ablate)

    info = sub.add_parser("info", help="parameter count and FLOPs of a preset")
    info.add_argument("--preset", choices=(*PRESETS, *HYBRID_MINUS), default="hybrid")
    info.add_argument("--backbone", default="resnet50")
    info.add_argument("--num-classes", type=int, default=80)
    info.add_argument("--size", type=int, default=512)
    info.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, CheckpointError, UsageError) as e:
        if args.debug:
            raise
        print(f"harnet: error: {one_line(e)}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        if args.debug:
            raise
        print(f"harnet: error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"harnet: {one_line(e) if str(e) else 'interrupted'}", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        if args.debug:
            raise
        package = (e.name or "").split(".")[0]
        if package in TORCH_PACKAGES:
            print(f"harnet: error: `harnet {args.command}` needs PyTorch ({package} is not installed: pip install "
                  "torch torchvision timm); without it, `harnet predict` runs exported models (.onnx, OpenVINO)",
                  file=sys.stderr)
            return 2
        print(f"harnet: error: {one_line(e)} (pip install {package})", file=sys.stderr)
        return 1
    except Exception as e:  # a bug, not a user error: still one line, the traceback is one flag away
        if args.debug:
            raise
        print(f"harnet: error: {type(e).__name__}: {one_line(e)} (unexpected; rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
