#!/usr/bin/env bash
# Sequential CERTIFY against fixed-n CERTIFY on the same images (issue 11's evidence): n0 = 100,
# alpha = 0.001, n = n_max = 100,000, sequential goal radii 0, 0.25, ..., 2.0, on the quickstart model
# (runs/quickstart/train, MNIST 5k held-out) and the Fashion-MNIST Gaussian and ADRE (lambda 0.1)
# models of experiments/fashion_mnist_regularized.sh (runs/fashion_mnist_0.5/{gaussian,adre_lam0.1}).
# Both certify every SKIP-th image; wall times go to $RUNS/wall_times.log. Every step resumes.
#
#   bash experiments/sequential_evidence.sh [RUNS_DIR]      (default runs/sequential_evidence)
#
# SKIP_MNIST5K (default 5: 100 of the 500 held-out images), SKIP_FASHION (default 100: 100 test
# images) and PY may be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/sequential_evidence}
PY=${PY:-.venv/bin/python}
SKIP_MNIST5K=${SKIP_MNIST5K:-5}
SKIP_FASHION=${SKIP_FASHION:-100}
mkdir -p "$RUNS"

certify() {  # certify NAME WORKDIR SKIP KIND EXTRA...
  local name=$1 workdir=$2 skip=$3 kind=$4
  shift 4
  /usr/bin/time -a -o "$RUNS/wall_times.log" -f "$name $kind wall %e s" "$PY" experiments/certify.py \
    --workdir "$workdir" --outdir "$RUNS/$name/$kind" --skip "$skip" --n0 100 --alpha 0.001 "$@"
}

for kind in sequential fixed; do
  for spec in "quickstart runs/quickstart/train $SKIP_MNIST5K" \
              "fashion_gaussian runs/fashion_mnist_0.5/gaussian $SKIP_FASHION" \
              "fashion_adre_lam0.1 runs/fashion_mnist_0.5/adre_lam0.1 $SKIP_FASHION"; do
    read -r name workdir skip <<<"$spec"
    if [ "$kind" = sequential ]; then
      certify "$name" "$workdir" "$skip" sequential --sequential --n-max 100000 \
        --radii 0 0.25 0.5 0.75 1 1.25 1.5 1.75 2
    else
      certify "$name" "$workdir" "$skip" fixed --methods cohen --n 100000
    fi
  done
done
"$PY" experiments/sequential_report.py "$RUNS" --out "$RUNS/report.md" --json "$RUNS/summary.json"
