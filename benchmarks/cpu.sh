#!/usr/bin/env bash
# CPU benchmarks, as run for docs/RESULTS.md (2 threads on a 2-core machine).
set -eu
OMP_NUM_THREADS=2 harnet bench --backbone resnet18 --threads 2 --out docs/results/bench_cpu_resnet18.json
# The ablations: 9 rows x 3 seeds each, ~20 min per run on 2 cores. Resumable: rerun to continue.
harnet data trees --out data/trees
harnet ablate --config shapes_hard --seeds 3 --out runs/ablate_shapes_hard
harnet ablate --config trees --seeds 3 --out runs/ablate_trees
