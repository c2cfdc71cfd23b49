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
CONSTRUCTIONS = (("union", "half_final"), ("union", "equal"), ("mixture", "half_final"))


def simulate(plan, pa, trials, rng):
    """(k0, k_looks) for `trials` images whose candidate has vote probability pa."""
    k0 = rng.binomial(plan.n0, pa, size=trials)
    steps = np.diff(np.concatenate([[0], plan.looks]))
    return k0, np.cumsum(rng.binomial(steps[None, :], pa, size=(trials, len(steps))), axis=1)


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
        for pa in pas:
            rng = np.random.default_rng(0)
            base = sequential.make_plan(
                sigma=sigma, alpha=alpha, n0=n0, n_max=args.n_max, radii=radii
            )
            k0, k_looks = simulate(base, pa, trials, rng)
            fixed_lower = bounds.clopper_pearson_lower(k_looks[:, -1], args.n_max, alpha)
            fixed = sequential.finish(base, np.zeros(trials, int), fixed_lower)[1]
            for bound, spending in CONSTRUCTIONS:
                plan = sequential.make_plan(
                    sigma=sigma,
                    alpha=alpha,
                    n0=n0,
                    n_max=args.n_max,
                    radii=radii,
                    bound=bound,
                    spending=spending,
                )
                cert = sequential.certify_from_look_counts(plan, np.zeros(trials, int), k0, k_looks)
                grid = np.asarray(radii)
                seq_frac = ((cert.prediction[:, None] == 0) & (cert.radius[:, None] >= grid)).mean(
                    0
                )
                fix_frac = ((fixed_lower[:, None] > 0.5) & (fixed[:, None] >= grid)).mean(0)
                gap = seq_frac - fix_frac
                worst = float(gap[np.argmax(np.abs(gap))])
                mean = float(cert.num_samples.mean())
                name = f"{bound}/{spending}"
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
