"""Sequential CERTIFY's confidence sequences compared on simulated images, against fixed-n CERTIFY.

  python benchmarks/sequential_bounds.py [--trials 2000] [--sigma 0.25 0.5] [--quick] [--out PATH]

For each pA (the candidate's true vote probability) and sigma, --trials images are simulated: k0 ~
Bin(n0, pA), estimation votes ~ Bin(look increments, pA), the same draws for every construction, and
fixed-n CERTIFY on the first n_max of them (Clopper-Pearson at the full alpha). Constructions: the
union bound over the looks with half of alpha at n_max ("union/half_final", the default) or alpha / L
at every look ("union/equal"), and the beta-binomial mixture ("mixture"). Columns: mean estimation
draws per image (n0 included), the saving against n0 + n_max, and the largest gap in certified
fraction over the radius grid against fixed n (negative: sequential certifies fewer).

Settings: n0 = 100, n_max = 100,000, alpha = 0.001, radii 0, 0.25, ..., 2.0 (issue 11's protocol).
Rows are printed as markdown and appended as JSON lines to --out (with --quick, nowhere unless given).
"""

import argparse

import numpy as np

from rsjax import bounds, records, sequential

DEFAULT_OUT = "benchmarks/results/sequential_bounds.jsonl"
PAS = (1.0, 0.99999, 0.9999, 0.999, 0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.3)
# (bound, spending, schedule, growth of the geometric looks)
CONSTRUCTIONS = (
    ("union", "half_final", "radii", 2.0),
    ("union", "half_final", "geometric", 2.0),
    ("union", "half_final", "radii", 1.5),
    ("union", "equal", "radii", 2.0),
    ("mixture", "half_final", "radii", 2.0),
)


def simulate(n0, looks, pa, trials, rng):
    """(k0, k_looks) for `trials` images whose candidate has vote probability pa: cumulative votes
    for it among the first looks[t] estimation draws."""
    k0 = rng.binomial(n0, pa, size=trials)
    steps = np.diff(np.concatenate([[0], looks]))
    return k0, np.cumsum(rng.binomial(steps[None, :], pa, size=(trials, len(steps))), axis=1)


def construction_name(bound, spending, schedule, growth):
    return f"{bound}/{spending}/{schedule}" + ("" if growth == 2.0 else f"/growth {growth}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--sigma", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--n-max", type=int, default=100_000)
    p.add_argument("--quick", action="store_true", help="200 trials, 4 values of pA")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    trials = 200 if args.quick else args.trials
    pas = (1.0, 0.999, 0.9, 0.6) if args.quick else PAS
    out = args.out if args.out is not None else ("" if args.quick else DEFAULT_OUT)
    env = records.environment()
    radii = tuple(np.arange(0, 2.01, 0.25))
    alpha, n0 = 1e-3, 100
    print("| sigma | pA | construction | mean samples | saving vs fixed | worst gap in certified |")
    print("|---:|---:|---|---:|---:|---:|")
    for sigma in args.sigma:
        plans = {
            c: sequential.make_plan(
                sigma=sigma,
                alpha=alpha,
                n0=n0,
                n_max=args.n_max,
                radii=radii,
                bound=c[0],
                spending=c[1],
                schedule=c[2],
                growth=c[3],
            )
            for c in CONSTRUCTIONS
        }
        # every plan's looks are columns of one simulation: the same draws for all constructions
        all_looks = np.unique(np.concatenate([plan.looks for plan in plans.values()]))
        for pa in pas:
            rng = np.random.default_rng(0)
            k0, k_all = simulate(n0, all_looks, pa, trials, rng)
            fixed_lower = bounds.clopper_pearson_lower(k_all[:, -1], args.n_max, alpha)
            base = plans[CONSTRUCTIONS[0]]
            fixed = sequential.finish(base, np.zeros(trials, int), fixed_lower)[1]
            for construction, plan in plans.items():
                k_looks = k_all[:, np.searchsorted(all_looks, plan.looks)]
                cert = sequential.certify_from_look_counts(plan, np.zeros(trials, int), k0, k_looks)
                grid = np.asarray(radii)
                seq_frac = ((cert.prediction[:, None] == 0) & (cert.radius[:, None] >= grid)).mean(
                    0
                )
                fix_frac = ((fixed_lower[:, None] > 0.5) & (fixed[:, None] >= grid)).mean(0)
                gap = seq_frac - fix_frac
                worst = float(gap[np.argmax(np.abs(gap))])
                mean = float(cert.num_samples.mean())
                name = construction_name(*construction)
                print(
                    f"| {sigma} | {pa} | {name} | {mean:,.0f} | "
                    f"{(n0 + args.n_max) / mean:.1f}x | {worst:+.3f} |"
                )
                records.append_result(
                    out,
                    dict(
                        benchmark="sequential_bounds",
                        sigma=sigma,
                        pa=pa,
                        construction=name,
                        looks=list(plan.looks),
                        trials=trials,
                        n0=n0,
                        n_max=args.n_max,
                        alpha=alpha,
                        mean_samples=mean,
                        median_samples=float(np.median(cert.num_samples)),
                        saving=(n0 + args.n_max) / mean,
                        certified_fraction_sequential=seq_frac.tolist(),
                        certified_fraction_fixed=fix_frac.tolist(),
                        radii=list(radii),
                    ),
                    env,
                )


if __name__ == "__main__":
    main()
