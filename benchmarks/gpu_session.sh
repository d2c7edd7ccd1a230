#!/usr/bin/env bash
# One GPU session, start to finish, within a wall-clock budget: the CUDA benchmark (ResNet-50,
# fp32 + AMP, 320/512/800 px, a COCO-scale 800 px training step) and the ablations of
# docs/RESULTS.md (shapes_hard and trees, 3 seeds, every row), run concurrently on the one GPU.
# Everything is resumable: run it again (same machine) and finished work is kept.
#
#   OUT=gpu_results DEADLINE=540 JOBS=8 bash benchmarks/gpu_session.sh
#
# DEADLINE: seconds for the whole script; the ablations get what the benchmark leaves (minus the
# report) and are stopped cleanly (checkpoint saved) when it runs out. EXTRA: more harnet ablate
# arguments for every ablation (e.g. "--set train.max_steps=2" for a dry run). Results: $OUT/*.
set -u
T0=$(date +%s)
OUT=${OUT:-runs/gpu_session}
DEADLINE=${DEADLINE:-540}
JOBS=${JOBS:-8}
EXTRA=${EXTRA:-}
BENCH=${BENCH:---backbone resnet50 --sizes 320 512 800 --repeats 20 --train-size 800}
RUNS=${RUNS:-runs/gpu}
mkdir -p "$OUT" "$RUNS"
left() { echo $((DEADLINE - ($(date +%s) - T0))); }
log() { echo "[gpu_session +$(($(date +%s) - T0))s] $*" | tee -a "$OUT/session.log"; }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
H="python3 -m harnet"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  nproc; } > "$OUT/env.txt"
log "env: $(tr '\n' ' ' < "$OUT/env.txt")"

# 1. The shapes_hard data on the CPU while the benchmark has the GPU.
python3 -c "from harnet.data.build import shapes_split; from harnet.experiment import builtin_config, load_experiment
shapes_split(load_experiment(builtin_config('shapes_hard')).data.shapes, 'train')" > "$RUNS/data.log" 2>&1 &
DATA=$!

# 2. The benchmark (skipped when a previous call of this script finished it).
if [ ! -f "$RUNS/bench_gpu_resnet50.json" ]; then
  # shellcheck disable=SC2086
  timeout -k 10 200 $H bench $BENCH --out "$RUNS/bench_gpu_resnet50.json" > "$RUNS/bench.log" 2>&1
  log "bench exit $? ($(tail -n 1 "$RUNS/bench.log"))"
fi
wait $DATA; log "data exit $?"

# 3. Both ablations at once, seed-major, stopped cleanly 60 s before the deadline.
BUDGET=$(($(left) - 60))
log "ablations get ${BUDGET}s"
for CONFIG in shapes_hard trees; do
  # shellcheck disable=SC2086
  timeout -s TERM -k 90 "$BUDGET" $H ablate --config $CONFIG --seeds 3 --jobs "$JOBS" --threads 1 \
    --out "$RUNS/ablate_$CONFIG" $EXTRA > "$RUNS/ablate_$CONFIG.log" 2>&1 &
done
wait
log "ablations done: $(grep -c 'AP ' "$RUNS"/ablate_*.log | tr '\n' ' ')"

# 4. Bring back everything but checkpoints and TensorBoard files.
cp "$RUNS"/bench_gpu_resnet50.* "$OUT/" 2>/dev/null
tar czf "$OUT/runs.tgz" --exclude='*.pt' --exclude=tensorboard "$RUNS"
log "done"
