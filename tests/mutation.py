"""Mutation testing of the statistical core (issue 24, item 6): not collected by pytest.

  python tests/mutation.py [--only NAME ...] [--timeout 900] [--out tests/mutation_results.md]

Each mutant is one textual substitution in rsjax/bounds.py, certify.py, sequential.py, votes.py or
runs.py: the errors a reviewer would try (a level of 2 alpha, the selection and estimation streams
swapped, a count off by one, > for >= at the threshold, the mixture prior from the estimation counts,
alpha_A not reduced, the union split at full alpha, the radius formula, the look levels, the chunk
validity masks...). For each, the driver copies rsjax/, tests/ and setup.cfg into a scratch
directory, applies the substitution there (it must match exactly once, else the mutant is reported
"n/a": the code moved), checks that `import rsjax` in that directory loads the mutated copy (not the
editable install), and runs

  python -m pytest -x -q -n 0 -p no:cacheprovider SELECTION

with a per-mutant timeout. A failing run kills the mutant; a passing one lets it survive. The
selection is the validity and cross-check tests (TESTS below). The table of results is printed and
written to --out (tests/mutation_results.md holds the last recorded run). Run it under `nice`: the
whole list takes about 20 minutes on 2 CPU cores (most mutants are killed in seconds; the JAX
compilation cache of tests/conftest.py is shared, so only mutants of votes.py recompile).
"""

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = [
    "tests/test_bounds.py",
    "tests/test_crosscheck.py",
    "tests/test_coverage.py",
    "tests/test_sequential.py",
]

# (name, module, old text, new text). Each `old` must occur exactly once in the module.
MUTANTS = [
    # rsjax/bounds.py
    (
        "cp_lower_at_2alpha",
        "bounds",
        "lower = stats.beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0)",
        "lower = stats.beta.ppf(2 * alpha, np.maximum(k, 1.0), n - k + 1.0)",
    ),
    (
        "cp_lower_beta_b_off_by_one",
        "bounds",
        "lower = stats.beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0)",
        "lower = stats.beta.ppf(alpha, np.maximum(k, 1.0), n - k + 0.0)",
    ),
    (
        "cp_lower_k_plus_one",
        "bounds",
        "lower = stats.beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0)",
        "lower = stats.beta.ppf(alpha, np.minimum(k + 1.0, n), n - k + 1.0)",
    ),
    (
        "cp_lower_of_k_plus_one_out_of_n",
        "bounds",
        "lower = stats.beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0)",
        "lower = stats.beta.ppf(alpha, np.minimum(k + 1.0, n), np.maximum(n - k, 1.0))",
    ),
    (
        "cp_lower_nonzero_at_k0",
        "bounds",
        "return np.where(k == 0, 0.0, lower)",
        "return lower",
    ),
    (
        "cp_upper_at_2alpha",
        "bounds",
        "upper = stats.beta.isf(alpha, k + 1.0, np.maximum(n - k, 1.0))",
        "upper = stats.beta.isf(2 * alpha, k + 1.0, np.maximum(n - k, 1.0))",
    ),
    (
        "cp_upper_k_minus_one",
        "bounds",
        "upper = stats.beta.isf(alpha, k + 1.0, np.maximum(n - k, 1.0))",
        "upper = stats.beta.isf(alpha, np.maximum(k, 1.0), np.maximum(n - k, 1.0))",
    ),
    (
        "cp_upper_below_one_at_kn",
        "bounds",
        "return np.where(k == n, 1.0, upper)",
        "return upper",
    ),
    (
        "radius_cohen_doubled",
        "bounds",
        "return sigma * stats.norm.ppf(pa_lower)",
        "return 2 * sigma * stats.norm.ppf(pa_lower)",
    ),
    (
        "radius_two_sided_without_half",
        "bounds",
        "return 0.5 * sigma * (stats.norm.ppf(pa_lower) - stats.norm.ppf(pb_upper))",
        "return sigma * (stats.norm.ppf(pa_lower) - stats.norm.ppf(pb_upper))",
    ),
    (
        "mixture_at_2alpha",
        "bounds",
        "level = math.log(1.0 / alpha)",
        "level = math.log(0.5 / alpha)",
    ),
    (
        "mixture_at_4alpha",
        "bounds",
        "level = math.log(1.0 / alpha)",
        "level = math.log(0.25 / alpha)",
    ),
    (
        "mixture_prior_from_estimation_counts",
        "bounds",
        "a, b = k0 + 0.5, n0 - k0 + 0.5",
        "a, b = k + 0.5, n - k + 0.5",
    ),
    (
        "mixture_prior_uniform_pseudocounts",
        "bounds",
        "a, b = k0 + 0.5, n0 - k0 + 0.5",
        "a, b = k0 + 1.0, n0 - k0 + 1.0",
    ),
    (
        "mixture_bisection_inner_end",
        "bounds",
        "        out, inn = np.where(ok, out, mid), np.where(ok, mid, inn)\n    return out",
        "        out, inn = np.where(ok, out, mid), np.where(ok, mid, inn)\n    return inn",
    ),
    (
        "mixture_bisection_10_iterations",
        "bounds",
        "    iterations: int = 60,\n",
        "    iterations: int = 10,\n",
    ),
    (
        "pvalue_one_sided",
        "bounds",
        "out[index] = stats.binomtest(a, a + b, 0.5).pvalue",
        "out[index] = stats.binomtest(a, a + b, 0.5, alternative='greater').pvalue",
    ),
    # rsjax/certify.py
    (
        "certify_every_stream_drawn_as_selection",
        "certify",
        "                    stream=stream,\n",
        "                    stream=votes.SELECTION,\n",
    ),
    (
        "certify_estimation_counts_are_selection_counts",
        "certify",
        "counts0, counts = counts[votes.SELECTION], counts[votes.ESTIMATION]",
        "counts0, counts = counts[votes.SELECTION], counts[votes.SELECTION]",
    ),
    (
        "certify_n0_n_swapped",
        "certify",
        "draws={votes.SELECTION: n0, votes.ESTIMATION: n},",
        "draws={votes.SELECTION: n, votes.ESTIMATION: n0},",
    ),
    (
        "cohen_at_2alpha",
        "certify",
        "r, pa_lower, pb_upper = _two_sided(counts, top, sigma, alpha, 0.0)",
        "r, pa_lower, pb_upper = _two_sided(counts, top, sigma, 2 * alpha, 0.0)",
    ),
    (
        "certified_at_ge",
        "certify",
        "certified = pa_lower > pb_upper",
        "certified = pa_lower >= pb_upper",
    ),
    (
        "candidate_from_estimation_counts",
        "certify",
        "    top = counts0.argmax(axis=1)\n\n    if method",
        "    top = counts.argmax(axis=1)\n\n    if method",
    ),
    (
        "tcertify_selection_alpha_a_not_reduced",
        "certify",
        "counts, top, sigma, (1 - fraction) * alpha, fraction * alpha",
        "counts, top, sigma, alpha, fraction * alpha",
    ),
    (
        "tcertify_selection_alpha_b_full",
        "certify",
        "counts, top, sigma, (1 - fraction) * alpha, fraction * alpha",
        "counts, top, sigma, (1 - fraction) * alpha, alpha * (fraction > 0)",
    ),
    (
        "tcertify_union_alpha_a_not_reduced",
        "certify",
        "_two_sided(counts, top, sigma, (1 - f) * share, f * share)",
        "_two_sided(counts, top, sigma, share, f * share)",
    ),
    (
        "tcertify_union_at_full_alpha",
        "certify",
        "share = alpha / len(grid)",
        "share = alpha",
    ),
    (
        "tcertify_no_bonferroni",
        "certify",
        "np.asarray(alpha_b)[..., None] / (num_classes - 1)",
        "np.asarray(alpha_b)[..., None]",
    ),
    (
        "tcertify_bonferroni_over_k",
        "certify",
        "np.asarray(alpha_b)[..., None] / (num_classes - 1)",
        "np.asarray(alpha_b)[..., None] / num_classes",
    ),
    (
        "tcertify_pb_not_capped",
        "certify",
        "np.minimum(pb_upper, _runner_up_upper(counts, top, np.where(spend, alpha_b, 1.0))),",
        "_runner_up_upper(counts, top, np.where(spend, alpha_b, 1.0)),",
    ),
    (
        "tcertify_split_from_estimation_counts",
        "certify",
        "fraction = _select_split(counts0, top, sigma, alpha, n, grid)",
        "fraction = _select_split(counts, top, sigma, alpha, n, grid)",
    ),
    (
        "predict_at_2alpha",
        "certify",
        "prediction = np.where(pvalue <= alpha, order[:, 0], ABSTAIN)",
        "prediction = np.where(pvalue <= 2 * alpha, order[:, 0], ABSTAIN)",
    ),
    # rsjax/votes.py
    (
        "votes_stream_ignored",
        "votes",
        "jax.random.fold_in(jax.random.fold_in(key, i), stream)",
        "jax.random.fold_in(key, i)",
    ),
    (
        "votes_index_ignored",
        "votes",
        "jax.random.fold_in(jax.random.fold_in(key, i), stream)",
        "jax.random.fold_in(key, stream)",
    ),
    (
        "noise_at_2sigma",
        "votes",
        "return image + sigma * eps",
        "return image + 2 * sigma * eps",
    ),
    (
        "noise_one_draw_for_every_sample",
        "votes",
        "jax.random.fold_in(example_key, j)",
        "example_key",
    ),
    (
        "votes_padded_samples_counted",
        "votes",
        "valid = (sample_ids < num_samples)[None, :]",
        "valid = (sample_ids <= num_samples)[None, :]",
    ),
    (
        "votes_balanced_chunk_short",
        "votes",
        "return num_chunks, -(-num_samples // num_chunks)",
        "return num_chunks, num_samples // num_chunks",
    ),
    (
        "rounds_stop_inclusive",
        "votes",
        "in_range = sample_ids < stop[:, None]",
        "in_range = sample_ids <= stop[:, None]",
    ),
    (
        "rounds_look_interval_left",
        "votes",
        'interval = jnp.searchsorted(looks, sample_ids, side="right")',
        'interval = jnp.searchsorted(looks, sample_ids, side="left")',
    ),
    # rsjax/sequential.py
    (
        "spend_earlier_looks_doubled",
        "sequential",
        "np.full(num_looks - 1, alpha / (2 * (num_looks - 1)))",
        "np.full(num_looks - 1, alpha / (num_looks - 1))",
    ),
    (
        "spend_last_look_full_alpha",
        "sequential",
        "alpha / (2 * (num_looks - 1))), alpha / 2)",
        "alpha / (2 * (num_looks - 1))), alpha)",
    ),
    (
        "look_level_full_alpha",
        "sequential",
        "alpha_t = np.asarray(plan.alphas)[t]",
        "alpha_t = plan.alpha",
    ),
    (
        "look_level_doubled",
        "sequential",
        "alpha_t = np.asarray(plan.alphas)[t]",
        "alpha_t = 2 * np.asarray(plan.alphas)[t]",
    ),
    (
        "look_level_of_the_next_look",
        "sequential",
        "alpha_t = np.asarray(plan.alphas)[t]",
        "alpha_t = np.asarray(plan.alphas)[np.minimum(np.asarray(t) + 1, len(plan.alphas) - 1)]",
    ),
    (
        "sequential_mixture_prior_from_estimation",
        "sequential",
        "bounds.mixture_bounds(k, n, plan.alpha, k0, plan.n0, lower_only=lower_only)",
        "bounds.mixture_bounds(k, n, plan.alpha, k, n, lower_only=lower_only)",
    ),
    (
        "sequential_mixture_at_2alpha",
        "sequential",
        "bounds.mixture_bounds(k, n, plan.alpha, k0, plan.n0, lower_only=lower_only)",
        "bounds.mixture_bounds(k, n, 2 * plan.alpha, k0, plan.n0, lower_only=lower_only)",
    ),
    (
        "sequential_last_look_bound_only",
        "sequential",
        "    lower = np.maximum(lower, lo)\n",
        "    lower = lo\n",
    ),
    (
        "sequential_certified_at_half",
        "sequential",
        "np.where(p > 0.5, sigma * stats.norm.ppf(np.clip(p, 0.5, 1.0)), -np.inf)",
        "np.where(p >= 0.5, sigma * stats.norm.ppf(np.clip(p, 0.5, 1.0)), -np.inf)",
    ),
    (
        "slots_estimation_from_selection_stream",
        "sequential",
        "            stream=votes.ESTIMATION,\n",
        "            stream=votes.SELECTION,\n",
    ),
    (
        "slots_prior_of_the_wrong_image",
        "sequential",
        "lower[ids], upper[ids], k0[slot[ids]])",
        "lower[ids], upper[ids], k0[ids])",
    ),
    (
        "slots_num_samples_without_n0",
        "sequential",
        "                    plan.n0 + int(looks[t]),\n",
        "                    int(looks[t]),\n",
    ),
    # rsjax/runs.py
    (
        "runs_estimation_from_selection_stream",
        "runs",
        "num_samples=n, stream=votes.ESTIMATION,",
        "num_samples=n, stream=votes.SELECTION,",
    ),
    (
        "runs_selection_draws_n",
        "runs",
        "num_samples=n0, stream=votes.SELECTION,",
        "num_samples=n, stream=votes.SELECTION,",
    ),
    (
        "runs_at_2alpha",
        "runs",
        "                    alpha=alpha,\n                    method=method,",
        "                    alpha=2 * alpha,\n                    method=method,",
    ),
    (
        "runs_alpha_split_ignored",
        "runs",
        "                    alpha_split=alpha_split,\n",
        '                    alpha_split="selection",\n',
    ),
    (
        "runs_index_not_passed_to_noise",
        "runs",
        "key, logits_fn, params, x, rows, num_samples=n, stream=votes.ESTIMATION,",
        "key, logits_fn, params, x, rows - rows.min(), num_samples=n, stream=votes.ESTIMATION,",
    ),
    (
        "runs_correct_column_wrong",
        "runs",
        "int(p == labels[i])",
        "int(p != -1)",
    ),
    (
        "runs_sequential_bound_ignored",
        "runs",
        "        radius_tol=radius_tol,\n        bound=bound,\n    )\n    indices",
        '        radius_tol=radius_tol,\n        bound="union",\n    )\n    indices',
    ),
]


def apply(root: pathlib.Path, module: str, old: str, new: str) -> bool:
    path = root / "rsjax" / f"{module}.py"
    text = path.read_text()
    if text.count(old) != 1:
        return False
    path.write_text(text.replace(old, new))
    return True


def scratch_copy() -> pathlib.Path:
    root = pathlib.Path(tempfile.mkdtemp(prefix="rsjax-mutant-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "rsjax", root / "rsjax", ignore=ignore)
    shutil.copytree(REPO / "tests", root / "tests", ignore=ignore)
    shutil.copy(REPO / "setup.cfg", root / "setup.cfg")
    return root


def environment(root: pathlib.Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    loaded = subprocess.run(
        [sys.executable, "-c", "import rsjax; print(rsjax.__file__)"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if pathlib.Path(loaded).resolve() != (root / "rsjax" / "__init__.py").resolve():
        raise RuntimeError(f"import rsjax loads {loaded}, not the mutated copy in {root}")
    return env


def run_tests(root: pathlib.Path, tests, timeout: float) -> tuple[str, float, str]:
    env = environment(root)
    start = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider"]
    try:
        out = subprocess.run(
            command + list(tests),
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return "killed (timeout)", time.perf_counter() - start, ""
    seconds = time.perf_counter() - start
    failed = [line for line in out.stdout.splitlines() if line.startswith("FAILED")]
    if out.returncode == 0:
        return "survived", seconds, out.stdout.strip().splitlines()[-1]
    if out.returncode == 1:
        return "killed", seconds, failed[0][7:] if failed else out.stdout.splitlines()[-1]
    return f"error (exit {out.returncode})", seconds, out.stdout[-300:] + out.stderr[-300:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="mutant names to run")
    parser.add_argument("--tests", nargs="*", default=TESTS)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant")
    parser.add_argument("--out", default=str(REPO / "tests" / "mutation_results.md"))
    parser.add_argument("--baseline", action="store_true", help="also run the unmutated copy")
    args = parser.parse_args(argv)
    names = [m[0] for m in MUTANTS]
    assert len(set(names)) == len(names), "duplicate mutant names"
    chosen = [m for m in MUTANTS if args.only is None or m[0] in args.only]
    rows = []
    if args.baseline:
        root = scratch_copy()
        try:
            verdict, seconds, detail = run_tests(root, args.tests, args.timeout)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(f"baseline: {verdict} ({seconds:.0f} s) {detail}", flush=True)
        if verdict != "survived":
            raise SystemExit("the unmutated library fails the selection: fix that first")
    for name, module, old, new in chosen:
        root = scratch_copy()
        try:
            if apply(root, module, old, new):
                verdict, seconds, detail = run_tests(root, args.tests, args.timeout)
            else:
                verdict, seconds, detail = "n/a (text not found once)", 0.0, ""
        finally:
            shutil.rmtree(root, ignore_errors=True)
        rows.append((name, module, verdict, seconds, detail))
        print(f"{name:48s} {module:10s} {verdict:18s} {seconds:6.0f} s  {detail}", flush=True)
    applicable = [r for r in rows if not r[2].startswith("n/a")]
    killed = [r for r in applicable if r[2].startswith("killed")]
    lines = [
        f"Mutation score: {len(killed)} of {len(applicable)} applicable mutants killed "
        f"({len(rows) - len(applicable)} not applicable)",
        "",
        f"Command: python tests/mutation.py (tests: {' '.join(args.tests)})",
        "",
        "| mutant | module | verdict | seconds | first failing test |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {m} | {v} | {s:.0f} | {d} |" for n, m, v, s, d in rows]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
