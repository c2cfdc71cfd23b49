#!/usr/bin/env bash
# The regularized-training comparison on full Fashion-MNIST (experiments/README.md has the results):
# LeNet at sigma = 0.5, the same epochs, batch size and stability settings (lr warm-up over epoch 1,
# clipping at global norm 10) for every method, SEEDS seeds each. Each model is certified on every
# 20th test image (500): sequential CERTIFY with n_max = 100,000 deciding the radii 0, 0.25, ..., 1.5
# (the n of the papers' protocol, affordable because confident images stop early), and T-CERTIFY and
# fixed-n CERTIFY at n = 10,000 on shared counts (T-CERTIFY has no sequential form yet); n0 = 100,
# alpha = 0.001. Every step resumes, so a killed run is continued by rerunning; the runs of one seed
# finish before the next seed starts.
#
#   bash experiments/fashion_mnist_regularized.sh [RUNS_DIR]     (default runs/fashion_mnist_0.5_long)
#
# Environment (defaults): EPOCHS (10), SEEDS ("0 1"), K (4: noisy copies for ADRE, ADRE-ADV and
# MACER), LAMBDAS ("0.05 0.1 0.2": ADRE's lambdas, the run of lambda L is adre_lamL), ONLY (run only
# the methods whose run name contains this; gaussian also matches gaussian_bn), SEQUENTIAL (1; 0:
# fixed n only), EXPORT (a folder: after each run, copy its config, metrics, TSVs and sidecars there,
# no checkpoints; experiments/results/fashion_mnist_0.5_long is the committed one), PY
# (.venv/bin/python). MACER trains the config's default for it, LeNet with batch norm (lenet_bn):
# its hinge does not train the plain LeNet (experiments/README.md).
# Runs longer than a working session: stop the training process with SIGTERM (kill -TERM PID of its
# python): it saves the step in progress, and with EXPORT set the script parks the run's config,
# metrics and that checkpoint in EXPORT/inflight/seedS/NAME (about 3 MB; commit it). A later run of
# the script, in any checkout, continues from the parked step; the parked copy is removed once the run
# is exported finished.
# ADV_MICROBATCHES (8) is ADRE-ADV's gradient groups (rsjax.train.make_train_step: the same loss on
# differently drawn noise, 1.3x faster per step here); every other run takes one group (the default).
# gaussian_bn is Gaussian training on that network, the like-for-like control for MACER.
# The 2-epoch table committed in experiments/results/fashion_mnist_0.5/ came from the version of this
# script in commit 2739714 (EPOCHS=2, one seed, lambdas 0.1, 0.5, 2, no warm-up or clipping).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/fashion_mnist_0.5_long}
EPOCHS=${EPOCHS:-10}
SEEDS=${SEEDS:-0 1}
K=${K:-4}
ONLY=${ONLY:-}
SEQUENTIAL=${SEQUENTIAL:-1}
EXPORT=${EXPORT:-}
ADV_MICROBATCHES=${ADV_MICROBATCHES:-8}
LAMBDAS=${LAMBDAS:-0.05 0.1 0.2}
PY=${PY:-.venv/bin/python}
CONFIG=experiments/configs/fashion_mnist_lenet.py
CERT=(--skip 20 --n0 100 --alpha 0.001)

park() {  # park RUN_DIR DEST: the run's config, metrics and newest checkpoint, to continue elsewhere
  local latest
  latest=$(ls "$1/checkpoints" | sort -n | tail -n 1)
  rm -rf "$2" && mkdir -p "$2/checkpoints"
  cp "$1/config.json" "$1/metrics.jsonl" "$2/"
  cp -r "$1/checkpoints/$latest" "$2/checkpoints/"
  echo "parked $1 at step $latest in $2: commit it, and rerun this script to continue"
}

run() {  # run NAME SEED CONFIG_ARGS: train, then certify
  local name=$1 seed=$2 args=$3
  [[ $name == *"$ONLY"* ]] || return 0
  local dir=$RUNS/seed$seed/$name parked="" rc=0
  [ -n "$EXPORT" ] && parked=$EXPORT/inflight/seed$seed/$name
  echo "== seed $seed $name ($args) $(date -u +%FT%TZ)"
  if [ -n "$parked" ] && [ -d "$parked" ] && [ ! -d "$dir/checkpoints" ]; then
    mkdir -p "$dir" && cp -r "$parked/." "$dir/"
    echo "continuing from the parked step $(ls "$dir/checkpoints") of $parked"
  fi
  /usr/bin/time -f "seed $seed $name train wall %e s" "$PY" experiments/train.py \
    --config "$CONFIG:$args,sigma=0.5,epochs=$EPOCHS,seed=$seed" --workdir "$dir" || rc=$?
  if [ "$rc" != 0 ]; then  # 143 / 130: SIGTERM / SIGINT, the step in progress saved
    if [ -n "$parked" ] && { [ "$rc" = 143 ] || [ "$rc" = 130 ]; }; then park "$dir" "$parked"; fi
    return "$rc"
  fi
  /usr/bin/time -f "seed $seed $name certify n=10000 wall %e s" "$PY" experiments/certify.py \
    --workdir "$dir" --outdir "$dir/certify" --n 10000 "${CERT[@]}"
  if [ "$SEQUENTIAL" = 1 ]; then
    /usr/bin/time -f "seed $seed $name certify sequential wall %e s" "$PY" experiments/certify.py \
      --workdir "$dir" --outdir "$dir/certify" --sequential --n-max 100000 \
      --radii 0 0.25 0.5 0.75 1 1.25 1.5 "${CERT[@]}"
  fi
  if [ -n "$EXPORT" ]; then
    local out=$EXPORT/seed$seed/$name
    mkdir -p "$out/certify"
    cp "$dir/config.json" "$dir/metrics.jsonl" "$out/"
    cp "$dir"/certify/*.tsv "$dir"/certify/*.tsv.json "$out/certify/"
    rm -rf "$parked"  # finished: the parked state is no longer needed
  fi
}

for seed in $SEEDS; do
  run gaussian "$seed" "method=gaussian"
  for lam in $LAMBDAS; do  # the ADRE lambda sweep
    run "adre_lam$lam" "$seed" "method=adre,k=$K,lam=$lam"
  done
  run smoothadv "$seed" "method=smoothadv"
  run gaussian_bn "$seed" "method=gaussian,model=lenet_bn"  # MACER's network, for a like-for-like row
  run macer "$seed" "method=macer,k=$K"  # lenet_bn by default (the config)
  run adre_adv_lam0.1 "$seed" "method=adre_adv,k=$K,lam=0.1,microbatches=$ADV_MICROBATCHES"
done
PY=$PY TITLE="Fashion-MNIST, sigma 0.5, $EPOCHS epochs" bash experiments/fashion_mnist_report.sh "$RUNS"
