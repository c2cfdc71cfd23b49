#!/usr/bin/env bash
# The regularized-training comparison on full Fashion-MNIST (experiments/README.md has the results):
# LeNet at sigma = 0.5, Gaussian, ADRE (lambda sweep), ADRE-ADV and MACER, the same epochs and batch
# size for all; each model certified on every 20th test image (500) with CERTIFY and T-CERTIFY at
# n0 = 100, n = 10,000, alpha = 0.001. Every step resumes, so a killed run is continued by rerunning.
#
#   bash experiments/fashion_mnist_regularized.sh [RUNS_DIR]     (default runs/fashion_mnist_0.5)
#
# EPOCHS, K and PY may be set in the environment (defaults 2, 4, .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/fashion_mnist_0.5}
EPOCHS=${EPOCHS:-2}
K=${K:-4}
PY=${PY:-.venv/bin/python}
CONFIG=experiments/configs/fashion_mnist_lenet.py
COMMON="sigma=0.5,epochs=$EPOCHS,warmup_epochs=1"

run() {  # run NAME CONFIG_ARGS: train, then certify
  local name=$1 args=$2
  echo "== $name ($args) $(date -u +%FT%TZ)"
  /usr/bin/time -f "$name train wall %e s" "$PY" experiments/train.py \
    --config "$CONFIG:$args,$COMMON" --workdir "$RUNS/$name"
  /usr/bin/time -f "$name certify wall %e s" "$PY" experiments/certify.py \
    --workdir "$RUNS/$name" --outdir "$RUNS/$name/certify" --skip 20 --n0 100 --n 10000 --alpha 0.001
}

run gaussian "method=gaussian"
run adre_lam0.5 "method=adre,k=$K,lam=0.5"
run adre_adv_lam0.5 "method=adre_adv,k=$K,lam=0.5"
for lam in 0.1 2; do  # the ADRE lambda sweep
  run "adre_lam$lam" "method=adre,k=$K,lam=$lam"
done
# MACER (k = 4, lam = 16, gamma = 8, beta = 16) does not train on this LeNet: it collapses to one class
# in its first steps at lr 0.02 and 0.01 (the hinge's gradient norm is about 100 at step 0), and with
# lam warmed up over the first epoch (macer_warmup=1) once lam reaches about 10. Its runs are kept
# out of the table; rerun with RUN_MACER=1.
if [ "${RUN_MACER:-0}" = 1 ]; then
  run macer_warmup "method=macer,k=$K,macer_warmup=1"
fi
files=() labels=()
for tsv in "$RUNS"/*/certify/*.tsv; do
  files+=("$tsv")
  labels+=("$(basename "$(dirname "$(dirname "$tsv")")")/$(basename "$tsv" .tsv)")
done
"$PY" experiments/analyze.py "${files[@]}" --labels "${labels[@]}" --radii 0 0.25 0.5 0.75 1 1.5 \
  --title "Fashion-MNIST, LeNet, sigma = 0.5, 500 test images, n = 10,000" \
  --plot "$RUNS/certified_accuracy.png" --markdown "$RUNS/table.md" --json "$RUNS/summary.json"
