"""``harnet serve`` under load (issue #29): p50/p99 latency, throughput and the server's RSS for one trained run
served by torch (the checkpoint), onnxruntime fp32 and onnxruntime int8.

Per backend: the model is exported (``harnet export``; int8 calibrated on the request images), served as a real
process on the loopback (``python -m harnet serve``), and sent ``--requests`` requests at ``--concurrency``
(every ``--bad-every``-th one a bad request that must be refused with a 4xx) and ``--single`` requests from one
client, alternating in two rounds (:func:`harnet.tools.serve_load.load_test`). Backends run in the order given,
then (``--repeat 2``) in reverse, so a machine whose other load drifts slows them alike; read the ratios.

    python benchmarks/serve_load.py runs/demo/run --images data/shapes/val --threads 2 \
        --out docs/results/serve_load.json

Without ``--images`` the requests are random 64 px PNGs with bright rectangles (``--size``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harnet.deploy.files import expand_inputs
from harnet.tools.serve_load import (
    Call,
    bad_calls,
    free_port,
    get,
    load_test,
    sample_images,
    server_env,
    start_server,
    wait_ready,
)

BACKENDS = {"torch": None, "onnx": ["--format", "onnx"], "onnx-int8": ["--format", "onnx", "--int8"]}
MAX_BYTES = 10 * 1024 * 1024


def export(run: str, backend: str, folder: Path, calib: list[Path]) -> Path:
    """The model file ``harnet serve`` gets for ``backend``: the run itself for torch, else a fresh export."""
    options = BACKENDS[backend]
    if options is None:
        return Path(run)
    out = folder / {"onnx": "fp32.onnx", "onnx-int8": "int8.onnx"}[backend]
    extra = ["--calib", *map(str, calib)] if "--int8" in options else []
    subprocess.run([sys.executable, "-m", "harnet", "export", run, *options, *extra, "--out", str(out)], check=True)
    return out


def serve_and_load(model: Path, backend: str, args: argparse.Namespace, good: list[Call], log: Path,
                   ) -> dict[str, Any]:
    port = free_port()
    process = start_server(model, port, "--no-access-log", "--threads", str(args.threads), "--max-batch",
                           str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-bytes",
                           str(MAX_BYTES), "--backend", "torch" if backend == "torch" else "onnxruntime",
                           log=log, env=server_env(args.threads))
    try:
        ready = wait_ready(port, process, timeout=300)
        figures = load_test(port, good, bad_calls(good[0].body, MAX_BYTES), total=args.requests,
                            concurrency=args.concurrency, single=args.single, bad_every=args.bad_every,
                            server_pid=process.pid, window=min(500, args.requests // 4))
        figures["server"] = get(port, "/health")[1]
    finally:
        process.terminate()
        code = process.wait(120)
    return {"backend": backend, "ready_s": round(ready, 2), "exit_code": code, **figures}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| backend | p50 ms | p99 ms | req/s at 16 | req/s alone | speedup | RSS first MB | RSS last MB | wrong |",
             "|---|---|---|---|---|---|---|---|---|"]  # wrong: a status not the expected one, or another image's answer
    for r in rows:
        lines.append(f"| {r['backend']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['throughput_rps']:.1f} | "
                     f"{r['single_client']['throughput_rps']:.1f} | {r['speedup']:.2f} | {r['rss_first_mb']} | "
                     f"{r['rss_last_mb']} | {len(r['wrong']) + len(r['mismatched'])} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a trained run folder or checkpoint")
    p.add_argument("--backends", default="torch,onnx,onnx-int8", help=f"comma-separated: {', '.join(BACKENDS)}")
    p.add_argument("--images", nargs="+", help="request images (files, folders, globs); default: random PNGs")
    p.add_argument("--size", type=int, default=64, help="side of the random request images")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--single", type=int, default=100, help="requests from one client, the baseline")
    p.add_argument("--bad-every", type=int, default=20, help="every N-th concurrent request is a bad one")
    p.add_argument("--threads", type=int, default=2, help="the backend's CPU threads")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--repeat", type=int, choices=[1, 2], default=1, help="2: the backends again in reverse order")
    p.add_argument("--out", help="results JSON (and a .md table beside it)")
    args = p.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        p.error(f"--backends: unknown {unknown[0]} (choose from {', '.join(BACKENDS)})")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        folder = Path(tmp)
        if args.images:
            paths = expand_inputs(args.images)
            good = [Call(path.read_bytes()) for path in paths[:64]]
        else:
            paths = []
            for i, data in enumerate(sample_images(16, args.size)):
                paths.append(folder / f"request{i}.png")
                paths[-1].write_bytes(data)
            good = [Call(path.read_bytes()) for path in paths]
        models = {b: export(args.run, b, folder, paths[:32]) for b in backends}
        order = backends + (backends[::-1] if args.repeat == 2 else [])
        rows = []
        for backend in order:
            start = time.perf_counter()
            row = serve_and_load(models[backend], backend, args, good, folder / f"{backend}.log")
            print(f"[serve_load] {backend}: {time.perf_counter() - start:.0f} s "
                  f"{json.dumps({k: v for k, v in row.items() if k != 'wrong'})}", file=sys.stderr)
            if row["wrong"]:
                print(f"[serve_load] {backend}: {len(row['wrong'])} wrong answers, first: {row['wrong'][0]}",
                      file=sys.stderr)
            rows.append(row)
    table = markdown(rows)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        setup = {k: v for k, v in vars(args).items() if k != "out"}
        out.write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))
        out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
