#!/usr/bin/env bash
# Tables, paired differences, curves and summary of the Fashion-MNIST comparison at length, from the
# certification TSVs of DIR/seedS/NAME/certify/ (experiments/fashion_mnist_regularized.sh writes them;
# experiments/results/fashion_mnist_0.5_long is the committed copy):
#
#   bash experiments/fashion_mnist_report.sh [DIR]     (default experiments/results/fashion_mnist_0.5_long)
#
# Writes DIR/table.md, DIR/summary.json and DIR/certified_accuracy.png. The paired rows (run a minus
# run b on the same images, rsjax.analysis.paired_difference) are those whose two runs exist in some
# seed: each method against Gaussian training and its neighbours, and T-CERTIFY against CERTIFY.
# Environment: PY (.venv/bin/python), TITLE (the plot's title).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-experiments/results/fashion_mnist_0.5_long}
PY=${PY:-.venv/bin/python}
TITLE=${TITLE:-Fashion-MNIST, sigma 0.5, 10 epochs}
has() { compgen -G "$DIR/seed*/$1/certify/cohen.tsv" > /dev/null; }
PAIRS=()
for pair in "adre_lam0.1 gaussian" "adre_lam0.05 gaussian" "adre_lam0.2 gaussian" \
  "adre_lam0.5 gaussian" "adre_lam0.05 adre_lam0.1" "adre_lam0.2 adre_lam0.1" \
  "adre_lam0.5 adre_lam0.2" "adre_lam1.0 gaussian" "adre_lam1.0 adre_lam0.5" \
  "smoothadv gaussian" "adre_lam0.1 smoothadv" \
  "adre_adv_lam0.1 gaussian" "adre_adv_lam0.1 adre_lam0.1" "adre_adv_lam0.1 smoothadv" \
  "macer gaussian_bn" "macer gaussian" "gaussian_bn gaussian" "macer adre_lam0.1"; do
  read -r a b <<< "$pair"
  if has "$a" && has "$b"; then PAIRS+=(--paired "$a/cohen" "$b/cohen"); fi
done
for run in gaussian adre_lam0.1 adre_lam0.05 adre_lam0.2 adre_lam0.5 adre_lam1.0 smoothadv adre_adv_lam0.1 gaussian_bn macer; do
  if has "$run"; then PAIRS+=(--paired "$run/tcertify" "$run/cohen"); fi
done
"$PY" experiments/analyze.py --seeds "$DIR" --radii 0 0.25 0.5 0.75 1 1.5 \
  --title "$TITLE" --plot "$DIR/certified_accuracy.png" \
  --markdown "$DIR/table.md" --json "$DIR/summary.json" "${PAIRS[@]}"
