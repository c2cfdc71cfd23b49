#!/usr/bin/env bash
# Evidence that a model trained in PyTorch is certified alike by rsjax and by the PyTorch reference
# loop, and how fast each is (issue 25, item 5). One resumable command; rerun it to continue.
#
#   bash experiments/torch_import_evidence.sh            # all steps (about 45-60 min on 2 CPU cores)
#   STEPS="train import rsjax pytorch compare" bash experiments/torch_import_evidence.sh   # a part
#
# 1 train    experiments/torch_lenet.py: LeNet in PyTorch, Gaussian noise sigma 0.25, 3 epochs on
#            Fashion-MNIST (Debian's dataset-fashion-mnist), a bare state_dict (.pth, ~1.7 MB)
# 2 import   experiments/import_torch.py --arch lenet: an rsjax checkpoint of the same weights
# 3 rsjax    experiments/certify.py on every 20th test image (500), n0 100, n $N, alpha 0.001
# 4 pytorch  benchmarks/torch_reference.py (the reference loop) on the same images and settings,
#            reading the .pth itself (not the converted copy)
# 5 compare  experiments/analyze.py (table.md) and experiments/torch_agreement.py (the criterion)
# 6 throughput  benchmarks/vs_pytorch.py --imported cifar_resnet110, resnet50 (random weights in
#            Cohen et al.'s checkpoint format), rows appended to benchmarks/results/vs_pytorch.jsonl
#
# Steps whose outputs exist are skipped (certify.py and torch_reference.py resume their TSVs row by
# row). A certification's wall time is written to wall_times.tsv only when it ran from its first row
# to its last in one go. Results land in $RESULTS; the runs (checkpoints, logs) in $RUNS.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
N=${N:-10000}          # estimation draws: the least n whose largest radius (0.80) covers r = 0.75
N0=${N0:-100}
ALPHA=0.001
SIGMA=0.25
SKIP=${SKIP:-20}        # every SKIP-th test image (20: 500 images)
RUNS=${RUNS:-runs/torch_lenet}
RESULTS=${RESULTS:-experiments/results/torch_import}
STEPS=${STEPS:-train import rsjax pytorch compare throughput}
PTH=$RUNS/lenet_fashion_$SIGMA.pth
mkdir -p "$RUNS" "$RESULTS"

want() { [[ " $STEPS " == *" $1 "* ]]; }
log() { echo "[$(date '+%F %T')] $*"; }

# timed NAME TSV COMMAND...: runs COMMAND; if TSV did not exist before, records its wall time.
timed() {
  local name=$1 tsv=$2
  shift 2
  local fresh=0
  [ -e "$tsv" ] || fresh=1
  local load0 start end
  load0=$(cut -d' ' -f1-3 /proc/loadavg)
  start=$(date +%s.%N)
  "$@"
  end=$(date +%s.%N)
  if [ "$fresh" = 1 ]; then
    [ -e "$RESULTS/wall_times.tsv" ] ||
      printf 'name\tseconds\tstarted\tload_before\tload_after\tcommand\n' >"$RESULTS/wall_times.tsv"
    printf '%s\t%.1f\t%s\t%s\t%s\t%s\n' "$name" "$(echo "$end - $start" | bc)" \
      "$(date -d "@${start%.*}" '+%F %T')" "$load0" "$(cut -d' ' -f1-3 /proc/loadavg)" "$*" \
      >>"$RESULTS/wall_times.tsv"
  else
    log "$name resumed an existing $tsv: its wall time is not recorded"
  fi
}

if want train && [ ! -e "$PTH" ]; then
  log "train: $PTH"
  "$PY" experiments/torch_lenet.py --sigma "$SIGMA" --epochs 3 --out "$PTH" 2>&1 |
    grep -v -e '^Generating' -e '^Shuffling' | tee "$RUNS/train.log"
fi
if [ -e "$PTH" ]; then
  cp "$PTH.json" "$RESULTS/lenet_fashion_$SIGMA.pth.json"
  cp "$PTH" "$RESULTS/lenet_fashion_$SIGMA.pth"
  (cd "$RESULTS" && sha256sum "lenet_fashion_$SIGMA.pth" >"lenet_fashion_$SIGMA.pth.sha256")
fi

if want import && [ ! -d "$RUNS/imported/checkpoints" ]; then
  log "import: $RUNS/imported"
  "$PY" experiments/import_torch.py "$PTH" --arch lenet --dataset fashion_mnist --sigma "$SIGMA" \
    --out "$RUNS/imported"
fi

certify=(--skip "$SKIP" --n0 "$N0" --n "$N" --alpha "$ALPHA")
if want rsjax; then
  log "rsjax: $RUNS/certify_rsjax/cohen.tsv"
  timed rsjax "$RUNS/certify_rsjax/cohen.tsv" "$PY" experiments/certify.py \
    --workdir "$RUNS/imported" --dataset fashion_mnist "${certify[@]}" --methods cohen \
    --outdir "$RUNS/certify_rsjax"
fi
if want pytorch; then
  log "pytorch: $RUNS/certify_pytorch/cohen.tsv"
  mkdir -p "$RUNS/certify_pytorch"
  timed pytorch "$RUNS/certify_pytorch/cohen.tsv" "$PY" benchmarks/torch_reference.py "$PTH" \
    --arch lenet --dataset fashion_mnist --sigma "$SIGMA" "${certify[@]}" \
    --out "$RUNS/certify_pytorch/cohen.tsv"
fi

if want compare; then
  for side in rsjax pytorch; do
    cp "$RUNS/certify_$side/cohen.tsv" "$RESULTS/$side.tsv"
    cp "$RUNS/certify_$side/cohen.tsv.json" "$RESULTS/$side.tsv.json"
  done
  "$PY" experiments/analyze.py "$RESULTS/rsjax.tsv" "$RESULTS/pytorch.tsv" \
    --labels rsjax pytorch --paired rsjax pytorch --radii 0 0.25 0.5 0.75 \
    --markdown "$RESULTS/table.md"
  "$PY" experiments/torch_agreement.py "$RESULTS/rsjax.tsv" "$RESULTS/pytorch.tsv" \
    --labels rsjax pytorch --radii 0 0.25 0.5 0.75 --level 0.01 \
    --markdown "$RESULTS/agreement.md" --json "$RESULTS/agreement.json"
fi

if want throughput; then
  # Each arch once (a .done marker in $RUNS); its log beside the results.
  # ResNet-110: 1 image x (100 + 1,000), 2 rounds; ResNet-50: 1 image x (100 + 200), 1 round, 100
  # inputs per forward pass on both sides (1,000 ResNet-50 inputs at 224x224 hold several GB of
  # activations per layer: too much for this 23 GB machine shared with others).
  declare -A flags=(
    [cifar_resnet110]="--images 1 --n0 100 --n 1000 --repeats 2"
    [resnet50]="--images 1 --n0 100 --n 200 --batch 100 --chunk 100 --repeats 1"
  )
  for arch in cifar_resnet110 resnet50; do
    [ -e "$RUNS/throughput_$arch.done" ] && continue
    log "throughput: $arch"
    # shellcheck disable=SC2086
    "$PY" benchmarks/vs_pytorch.py --imported "$arch" ${flags[$arch]} 2>&1 |
      tee "$RESULTS/throughput_$arch.log"
    touch "$RUNS/throughput_$arch.done"
  done
fi
log "done: $RESULTS"
