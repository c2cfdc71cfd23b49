#!/usr/bin/env bash
# The empirical Bayes comparison on MNIST (experiments/README.md): train on all 5,000 mnist5k digits,
# certify every SKIP-th image of the MNIST test set (default 20: 500 images) at n0 = 100, n = N
# (default 10,000), alpha = 0.001, for each sigma in SIGMAS, with CERTIFY and T-CERTIFY:
#   linear      a linear classifier trained on clean data, smoothed directly
#   eb_linear   the same classifier on xhat of the learned energy network (empirical Bayes)
#   lenet       LeNet trained with Gaussian noise augmentation
#   xhat        XHAT(eps = sigma): LeNet trained end-to-end on xhat at SmoothAdv points, energy frozen
#   walk_jump   the clean linear classifier after WALK Langevin steps and a jump (walk-jump classification)
# Per sigma it writes table.md, summary.json and certified_accuracy.png, and margins.md / margins.json:
# how often the rows that use the linear classifier certify beyond its own margin
# (experiments/linear_margin.py). Every step resumes; rerun to continue.
#
#   bash experiments/eb_mnist.sh [RUNS_DIR]                   (default runs/eb_mnist)
#
# Environment: SIGMAS (default "0.25 0.5 1.0"), SKIP, N, WALK (default 5), WALK_SKIP (default 200:
# walk-jump costs WALK + 1 score evaluations per noise sample, so it certifies every 200th image, 50 in
# all, by default), DENOISER_EPOCHS (60), SCORE_MODEL (energy_mnist_mlp),
# PARTS (default "linear eb_linear lenet xhat walk_jump"), MNIST_TEST (../shared/data/mnist-test),
# PY (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/eb_mnist}
SIGMAS=${SIGMAS:-0.25 0.5 1.0}
SKIP=${SKIP:-20}
N=${N:-10000}
WALK=${WALK:-5}
WALK_SKIP=${WALK_SKIP:-200}
DENOISER_EPOCHS=${DENOISER_EPOCHS:-60}
SCORE_MODEL=${SCORE_MODEL:-energy_mnist_mlp}
PARTS=${PARTS:-linear eb_linear lenet xhat walk_jump}
MNIST_TEST=${MNIST_TEST:-../shared/data/mnist-test}
PY=${PY:-.venv/bin/python}
CFG=experiments/configs
DATA=(--data-source-dir "$MNIST_TEST")
CERT=(--dataset mnist --split test "${DATA[@]}" --n0 100 --n "$N" --alpha 0.001)

timed() {  # timed LABEL COMMAND...: runs it and prints its wall time
  local label=$1
  shift
  local t0=$SECONDS
  "$@"
  echo "$label wall $((SECONDS - t0)) s"
}
wants() { [[ " $PARTS " == *" $1 "* ]]; }

timed "linear train" "$PY" experiments/train.py --config "$CFG/mnist5k_linear.py" \
  --workdir "$RUNS/linear" "${DATA[@]}"
for s in $SIGMAS; do
  out=$RUNS/sigma_$s
  if wants eb_linear || wants xhat || wants walk_jump; then
    timed "denoiser $s train" "$PY" experiments/train.py \
      --config "$CFG/mnist5k_denoiser.py:sigma=$s,epochs=$DENOISER_EPOCHS,score_model=$SCORE_MODEL" \
      --workdir "$RUNS/denoiser_$s" "${DATA[@]}"
  fi
  if wants linear; then
    timed "linear $s certify" "$PY" experiments/certify.py --workdir "$RUNS/linear" --sigma "$s" \
      --outdir "$out/linear" --skip "$SKIP" "${CERT[@]}"
  fi
  if wants eb_linear; then
    timed "eb_linear $s certify" "$PY" experiments/certify.py --workdir "$RUNS/linear" \
      --denoiser "$RUNS/denoiser_$s" --outdir "$out/eb_linear" --skip "$SKIP" "${CERT[@]}"
  fi
  if wants lenet; then
    timed "lenet $s train" "$PY" experiments/train.py --config "$CFG/mnist5k_lenet.py:sigma=$s" \
      --workdir "$RUNS/lenet_$s" "${DATA[@]}"
    timed "lenet $s certify" "$PY" experiments/certify.py --workdir "$RUNS/lenet_$s" \
      --outdir "$out/lenet" --skip "$SKIP" "${CERT[@]}"
  fi
  if wants xhat; then
    timed "xhat $s train" "$PY" experiments/train.py \
      --config "$CFG/mnist5k_xhat.py:sigma=$s,eps=$s,denoiser=$RUNS/denoiser_$s" \
      --workdir "$RUNS/xhat_$s" "${DATA[@]}"
    timed "xhat $s certify" "$PY" experiments/certify.py --workdir "$RUNS/xhat_$s" \
      --outdir "$out/xhat" --skip "$SKIP" "${CERT[@]}"
  fi
  if wants walk_jump; then
    timed "walk_jump $s certify" "$PY" experiments/certify.py --workdir "$RUNS/linear" \
      --denoiser "$RUNS/denoiser_$s" --walk-jump "$WALK" --outdir "$out/walk_jump" --skip "$WALK_SKIP" "${CERT[@]}"
  fi
  if wants eb_linear || wants walk_jump; then
    "$PY" experiments/walk_jump_samples.py --denoiser "$RUNS/denoiser_$s" --out "$out/samples.png"
  fi
  files=() labels=()
  for tsv in "$out"/*/*.tsv; do
    files+=("$tsv")
    labels+=("$(basename "$(dirname "$tsv")")/$(basename "$tsv" .tsv)")
  done
  "$PY" experiments/analyze.py "${files[@]}" --labels "${labels[@]}" \
    --radii 0 0.25 0.5 0.75 1 1.5 2 --title "MNIST, sigma = $s, every ${SKIP}th test image (walk-jump every ${WALK_SKIP}th), n = $N" \
    --plot "$out/certified_accuracy.png" --markdown "$out/table.md" --json "$out/summary.json"
  margin_tsvs=() margin_labels=()
  for part in linear eb_linear walk_jump; do  # the rows that classify with the linear classifier
    if [[ -f $out/$part/cohen.tsv ]]; then
      margin_tsvs+=("$out/$part/cohen.tsv")
      margin_labels+=("$part/cohen")
    fi
  done
  if ((${#margin_tsvs[@]})); then
    "$PY" experiments/linear_margin.py --workdir "$RUNS/linear" --tsv "${margin_tsvs[@]}" \
      --labels "${margin_labels[@]}" --dataset mnist "${DATA[@]}" --json "$out/margins.json" \
      | tee "$out/margins.md"
  fi
done
