"""Do two certification runs of the same model on the same images agree within Monte-Carlo noise?

  python experiments/torch_agreement.py rsjax.tsv pytorch.tsv --labels rsjax pytorch \
      [--radii 0 0.25 0.5 0.75] [--level 0.01] [--markdown agreement.md] [--json agreement.json]

Two implementations of CERTIFY (rsjax, and the PyTorch reference loop) certify the same smoothed
classifier with independent noise, so image by image their radii differ; what must agree is the
certified accuracy. The criterion, fixed before the runs are compared:

  For each radius r of --radii, e_i = 1[A certifies image i correctly at radius >= r] - 1[B does],
  over the N images both certified (paired by idx). d_r = mean(e) is the difference of certified
  accuracy, SE_r = std(e, ddof=1) / sqrt(N) its paired standard error. The runs agree at r if
  |d_r| <= z * SE_r with z = Phi^-1(1 - level / (2 * R)): two-sided, Bonferroni over the R radii,
  so that two runs of one classifier fail somewhere with probability about `level` (d_r = 0 when no
  image differs, SE_r = 0 then, and it agrees). Reported beside it, not part of the verdict: the
  exact McNemar p-value at r (the discordant images split as Binomial(m, 1/2) under the same
  hypothesis) and the ACR difference with its paired SE (rsjax.analysis.paired_difference).

The verdict is "agree" when every radius agrees. Exit status 0 either way (it is a report).
"""

import argparse
import json
import math

import numpy as np
from scipy import stats

from rsjax import analysis


def credited(run, r):
    """1 where the image is certified correctly at radius >= r, in idx order."""
    order = np.argsort(run.idx, kind="stable")
    hit = np.asarray(run.correct, bool) & (np.asarray(run.radius, np.float64) >= r)
    return hit[order].astype(np.int64)


def agreement(a, b, radii, level):
    """{"z", "rows": [{radius, acc_a, acc_b, diff, se, bound, agree, discordant, mcnemar_p}],
    "acr": {...}, "agree": bool} for runs a, b (rsjax.analysis.CertResults on the same idx)."""
    paired = analysis.paired_difference(a, b, radii)  # also checks that the idx sets match
    z = float(stats.norm.ppf(1 - level / (2 * len(radii))))
    rows = []
    for r in radii:
        ea, eb = credited(a, r), credited(b, r)
        e = ea - eb
        n = e.size
        se = float(e.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        plus, minus = int((e > 0).sum()), int((e < 0).sum())
        p = 1.0 if plus + minus == 0 else stats.binomtest(plus, plus + minus, 0.5).pvalue
        diff = float(e.mean())
        rows.append(
            dict(
                radius=r,
                acc_a=float(ea.mean()),
                acc_b=float(eb.mean()),
                diff=diff,
                se=se,
                bound=z * se,
                agree=abs(diff) <= z * se + 1e-12,
                a_only=plus,
                b_only=minus,
                mcnemar_p=float(p),
            )
        )
    return {
        "n": paired.n,
        "level": level,
        "z": z,
        "rows": rows,
        "acr": {"diff": paired.acr, "se": paired.acr_se},
        "agree": all(row["agree"] for row in rows),
    }


def markdown(result, labels):
    a, b = labels
    lines = [
        f"| r | {a} | {b} | {a} - {b} | paired SE | bound z*SE (z = {result['z']:.3f}) | agree "
        f"| only {a} / only {b} | McNemar exact p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['radius']:g} | {row['acc_a']:.3f} | {row['acc_b']:.3f} | {row['diff']:+.3f} "
            f"| {row['se']:.4f} | {row['bound']:.4f} | {'yes' if row['agree'] else 'NO'} "
            f"| {row['a_only']} / {row['b_only']} | {row['mcnemar_p']:.3g} |"
        )
    acr = result["acr"]
    lines += [
        "",
        f"{result['n']} images; ACR {a} - {b} = {acr['diff']:+.4f} (paired SE {acr['se']:.4f}). "
        f"Verdict at family-wise level {result['level']}: "
        + ("**agree** at every radius." if result["agree"] else "**do not agree**."),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--labels", nargs=2, default=["a", "b"])
    p.add_argument("--radii", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75])
    p.add_argument("--level", type=float, default=0.01, help="family-wise false-alarm level")
    p.add_argument("--markdown")
    p.add_argument("--json")
    args = p.parse_args(argv)
    result = agreement(analysis.read_tsv(args.a), analysis.read_tsv(args.b), args.radii, args.level)
    text = markdown(result, args.labels)
    print(text, end="")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(result, labels=args.labels, files=[args.a, args.b]), f, indent=1)


if __name__ == "__main__":
    main()
