"""Sequential CERTIFY: stop drawing noise for an image as soon as its outcome is decided.

Procedure (per image, top class against the rest as in CERTIFY):
1. Selection: n0 draws, cA = argmax of their counts (the lowest class on ties).
2. Estimation: fresh draws, examined at pre-declared looks n_1 < n_2 < ... < n_L = n_max (the
   estimation draws counted so far): geometric (100, 200, 400, ...) plus, for the radii goal, a look
   at each draw count where an image whose every draw votes cA first certifies a grid radius
   (`radius_looks`; the commonest image of a well-trained model stops there). At look t, k_t is the count of cA among the first n_t draws and
   the procedure computes a lower bound L_t and an upper bound U_t on pA = P(f(x + eps) = cA).
3. It stops at the first look where the stopping goal is met (or at n_max) and returns cA with
   radius sigma * Phi^-1(max_{s <= t} L_s) if that running maximum exceeds 1/2, else ABSTAIN.

Guarantee: with probability >= 1 - alpha over the sampling, the lower bounds hold at every look at
once: L_t <= pA for all t. Hence whatever the stopping time (chosen by looking at the data, as here),
a non-abstaining answer (cA, R) has cA = g(x) (pA > 1/2) and g is constant on the open l2 ball of
radius R (Cohen et al., Theorem 1). Reusing the fixed-n Clopper-Pearson bound at full alpha at every
look does not have this property (tests/test_sequential.py shows it failing coverage).

The two constructions (`bound=`):
- "union" (default): Clopper-Pearson at each look at level alpha_t, with sum_t alpha_t = alpha fixed
  before any draw (`spending`). By the union bound P(exists t: L_t > pA) <= sum_t alpha_t = alpha.
- "mixture": the beta-binomial mixture confidence sequence (rsjax.bounds.mixture_bounds; Robbins
  1970; Howard et al. 2021; the betting view of Waudby-Smith & Ramdas 2024): by Ville's inequality
  it holds at every n at once, looks or not. Its prior Beta(k0 + 1/2, n0 - k0 + 1/2) is centred on
  the selection frequency; the selection draws are independent of the estimation draws, so the
  prior is fixed before them.
Which is tighter: `benchmarks/sequential_bounds.py` measures both on simulated images of every kind
(benchmarks/README.md): the union bound needs fewer draws and certifies larger radii at n_max for the
confident images that dominate the cost, because near pA = 1 Clopper-Pearson loses only
log(1/alpha_t) against log(1/alpha), while the mixture pays the prior's spread. It is the default.

The upper bounds U_t (the same construction, at the same levels) only decide when to stop: they never
enter a certificate, so an upper bound that fails can only stop an image too early (a smaller radius),
never give it a radius it does not have.

Stopping goals (exactly one):
- radii=(r_1 < ... < r_m): stop when every r is decided: certified (R_t >= r, where R_t is the radius
  the running lower bound gives), ruled out by the upper bound (sigma Phi^-1(U_t) < r), or out of
  reach (even if every remaining draw up to n_max voted cA, no later look could certify r).
- radius_tol=t: stop when the upper radius, min(sigma Phi^-1(U_t), the best radius a later look could
  reach), is within t of R_t (both floored at 0 for abstention).

The counts at a look are those of the first n_t estimation draws, the same draws a fixed-n CERTIFY
with the same key uses, so an image that runs to n_max sees exactly the fixed n = n_max counts.

References: Cohen, Rosenfeld & Kolter, ICML 2019; Robbins, "Statistical methods related to the law of
the iterated logarithm", Ann. Math. Statist. 1970; Howard, Ramdas, McAuliffe & Sekhon, "Time-uniform,
nonparametric, nonasymptotic confidence sequences", Ann. Statist. 2021; Waudby-Smith & Ramdas,
"Estimating means of bounded random variables by betting", JRSS-B 2024; rsjax REFERENCE section 1.
"""

import dataclasses
import math
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from rsjax import bounds, votes

ABSTAIN = -1
BOUNDS = ("union", "mixture")
SPENDINGS = ("half_final", "equal")
SCHEDULES = ("radii", "geometric")


class SequentialCertificate(NamedTuple):
    """Result of sequential CERTIFY: scalars from the sampler API, (B,) arrays from the device path.

    prediction: the certified class or ABSTAIN (-1).
    radius: certified l2 radius in [0,1] pixel units (0.0 where abstaining).
    num_samples: all noise draws used, the n0 selection draws included.
    pa_lower, pa_upper: the running confidence bounds on pA when sampling stopped.
    """

    prediction: Any
    radius: Any
    num_samples: Any
    pa_lower: Any
    pa_upper: Any


def geometric_looks(n_max: int, first_look: int = 100, growth: float = 2.0) -> tuple[int, ...]:
    """Looks first_look * growth^t (rounded up) below n_max, then n_max: 100, 200, ..., 51200, 1e5."""
    if growth <= 1.0:
        raise ValueError(f"growth must be > 1, got {growth}")
    looks = []
    t = 0
    while (n := math.ceil(first_look * growth**t)) < n_max:
        if not looks or n > looks[-1]:
            looks.append(n)
        t += 1
    return tuple(looks) + (int(n_max),)


def spend_alpha(alpha: float, num_looks: int, spending: str = "half_final") -> np.ndarray:
    """Levels alpha_t of the looks, summing to alpha.

    "half_final": alpha / 2 at the last look (n_max), the other half shared equally by the earlier
    ones, so an image that runs to n_max loses little against fixed-n CERTIFY (alpha / 2 instead of
    alpha); "equal": alpha / L at every look.
    """
    if spending not in SPENDINGS:
        raise ValueError(f"spending must be one of {SPENDINGS}, got {spending!r}")
    if num_looks == 1:
        return np.array([alpha])
    if spending == "equal":
        return np.full(num_looks, alpha / num_looks)
    return np.append(np.full(num_looks - 1, alpha / (2 * (num_looks - 1))), alpha / 2)


def _all_votes_needed(r: float, sigma: float, alpha_t: float, n_max: int) -> int | None:
    """The fewest estimation draws n < n_max at which k = n votes for cA give a Clopper-Pearson lower
    bound (level alpha_t) certifying radius r: alpha_t^(1 / n) >= Phi(r / sigma) (> 1/2 for r = 0);
    None when there is none below n_max."""
    log_p = float(stats.norm.logcdf(r / sigma)) if r > 0 else math.log(0.5)
    if log_p == 0.0 or math.log(alpha_t) / log_p >= n_max:
        return None
    n = max(1, math.floor(math.log(alpha_t) / log_p))
    while n < n_max and not _radius(sigma, bounds.clopper_pearson_lower(n, n, alpha_t)) >= r:
        n += 1
    return n if n < n_max else None


def radius_looks(
    looks: Sequence[int],
    radii: Sequence[float],
    *,
    sigma: float,
    alpha: float,
    spending: str = "half_final",
) -> tuple[int, ...]:
    """`looks` (ending at n_max) plus, for every grid radius r, a look at the first draw count where
    an image whose every estimation draw votes cA certifies r at its look's level.

    Without it, such an image (the commonest kind for a well-trained model) waits for the next
    geometric look: at sigma = 0.5 it can certify r = 1.75 after about 42,600 draws, but the looks
    are at 25,600 and 51,200. Adding looks lowers every level (the alphas are shared by more looks),
    which moves the needed counts up a little, so the counts are recomputed at the new levels until
    the schedule stops changing. The schedule is a function of (looks, radii, sigma, alpha,
    spending) only, fixed before any draw, so the union bound holds for it as for any other.
    """
    base = tuple(int(n) for n in looks)
    n_max = base[-1]
    current = base
    for _ in range(20):
        alpha_t = float(spend_alpha(alpha, len(current), spending)[0])
        needed = {_all_votes_needed(r, sigma, alpha_t, n_max) for r in radii}
        extra = {n for n in needed if n is not None and n > base[0]}
        new = tuple(sorted(set(base) | extra))
        if new == current:
            break
        current = new
    return current


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if value > votes.MAX_COUNT:
        raise ValueError(
            f"{name} = {value:,} exceeds {votes.MAX_COUNT:,}, the largest count of the int32 vote "
            "counters"
        )
    return int(value)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything fixed before the first draw: levels, looks and the stopping goal. Build it with
    `make_plan`, which checks the arguments."""

    sigma: float
    alpha: float
    n0: int
    n_max: int
    looks: tuple[int, ...]
    alphas: tuple[float, ...]
    radii: tuple[float, ...] | None
    radius_tol: float | None
    bound: str

    def describe(self) -> dict:
        """JSON-able record of the procedure (for sidecars and resume checks)."""
        return {
            "procedure": "sequential",
            "bound": self.bound,
            "n_max": self.n_max,
            "looks": list(self.looks),
            "alphas": list(self.alphas),
            "radii": None if self.radii is None else list(self.radii),
            "radius_tol": self.radius_tol,
        }


def make_plan(
    *,
    sigma: float,
    alpha: float,
    n0: int,
    n_max: int,
    radii: Sequence[float] | None = None,
    radius_tol: float | None = None,
    bound: str = "union",
    spending: str = "half_final",
    first_look: int = 100,
    growth: float = 2.0,
    schedule: str = "radii",
) -> Plan:
    """Checks the arguments of sequential CERTIFY and fixes its looks and levels.

    Looks: geometric, first_look * growth^t below n_max, then n_max; with schedule="radii" (the
    default) and the radii goal, plus the looks of `radius_looks` (where an image whose every draw
    votes cA first certifies each grid radius). schedule="geometric" keeps the geometric looks only.

    Raises ValueError naming the problem: sigma <= 0, alpha outside (0, 1), n0 or n_max not integers
    >= 1, n_max < n0, both or neither goal, empty / negative / non-finite / unsorted radii,
    radius_tol <= 0, an unknown bound, spending or schedule.
    """
    sigma = bounds.check_sigma(sigma)
    alpha = bounds.check_alpha(alpha)
    n0 = _check_count("n0", n0)
    n_max = _check_count("n_max", n_max)
    first_look = _check_count("first_look", first_look)
    if n_max < n0:
        raise ValueError(f"n_max = {n_max} must be >= n0 = {n0}")
    if (radii is None) == (radius_tol is None):
        raise ValueError("give exactly one stopping goal: radii=(r_1, ..., r_m) or radius_tol=t")
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if radii is not None:
        grid = np.asarray(radii, dtype=np.float64).ravel()
        if grid.size == 0:
            raise ValueError("radii is empty: give at least one radius, e.g. (0, 0.25, 0.5)")
        if not np.all(np.isfinite(grid)) or np.any(grid < 0):
            raise ValueError(f"radii must be finite and >= 0, got {list(radii)}")
        if np.any(np.diff(grid) <= 0):
            raise ValueError(f"radii must be strictly increasing, got {list(radii)}")
        radii = tuple(float(r) for r in grid)
    else:
        radius_tol = float(radius_tol)
        if not (radius_tol > 0 and math.isfinite(radius_tol)):
            raise ValueError(f"radius_tol must be a finite number > 0, got {radius_tol}")
    bounds.warn_if_never_certifies(n_max, alpha)
    looks = geometric_looks(n_max, first_look, growth)
    if schedule == "radii" and radii is not None:
        looks = radius_looks(looks, radii, sigma=sigma, alpha=alpha, spending=spending)
    return Plan(
        sigma=sigma,
        alpha=alpha,
        n0=n0,
        n_max=n_max,
        looks=looks,
        alphas=tuple(float(a) for a in spend_alpha(alpha, len(looks), spending)),
        radii=radii,
        radius_tol=radius_tol,
        bound=bound,
    )


# --------------------------------------------------------------------------------------------------
# Confidence bounds at one look (vectorized over images; float64 on the host).


def look_bounds(
    plan: Plan, t: ArrayLike, k: ArrayLike, k0: ArrayLike | None = None, lower_only: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """(lower, upper) bounds on pA at look(s) t (an int or an array broadcasting with k) from k votes
    for cA among the first plan.looks[t] draws; k0: the selection count of cA (the mixture's prior).
    float64 arrays of the broadcast shape; upper is None with lower_only."""
    n = np.asarray(plan.looks)[t]
    k = np.asarray(k, np.int64)
    if plan.bound == "union":
        alpha_t = np.asarray(plan.alphas)[t]
        lower = bounds.clopper_pearson_lower(k, n, alpha_t)
        return lower, None if lower_only else bounds.clopper_pearson_upper(k, n, alpha_t)
    return bounds.mixture_bounds(k, n, plan.alpha, k0, plan.n0, lower_only=lower_only)


def _radius(sigma, p):
    """sigma * Phi^-1(p) where p > 1/2, else -inf (no certificate)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0.5, sigma * stats.norm.ppf(np.clip(p, 0.5, 1.0)), -np.inf)


def _reach(plan: Plan, t: int, k, k0):
    """The largest radius any later look could certify: every remaining draw voting cA."""
    later = np.arange(t + 1, len(plan.looks))
    if later.size == 0:
        return np.full(np.shape(k), -np.inf)
    extra = np.asarray(plan.looks)[later] - plan.looks[t]
    k0 = None if k0 is None else np.asarray(k0)[:, None]
    lower, _ = look_bounds(plan, later, np.asarray(k)[:, None] + extra, k0, lower_only=True)
    return _radius(plan.sigma, lower).max(axis=1)


def update(
    plan: Plan,
    t: int,
    k: ArrayLike,
    lower: np.ndarray,
    upper: np.ndarray,
    k0: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One look for a batch of images: k (B,) votes for cA among the first plan.looks[t] draws.

    Args:
      lower, upper: (B,) running bounds before this look (0 and 1 before the first).
    Returns:
      (lower, upper, stop): the (B,) float64 running bounds after this look and (B,) bool, whether
      each image stops here.
    """
    lo, hi = look_bounds(plan, t, k, k0)
    lower = np.maximum(lower, lo)
    upper = np.minimum(upper, hi)
    if t == len(plan.looks) - 1:
        return lower, upper, np.ones(np.shape(k), bool)
    certified = _radius(plan.sigma, lower)
    ceiling = np.minimum(_radius(plan.sigma, upper), _reach(plan, t, k, k0))
    if plan.radii is not None:
        grid = np.asarray(plan.radii)
        decided = (certified[:, None] >= grid) | (ceiling[:, None] < grid)
        return lower, upper, decided.all(axis=1)
    gap = np.maximum(ceiling, 0.0) - np.maximum(certified, 0.0)
    return lower, upper, gap <= plan.radius_tol


def finish(plan: Plan, top: ArrayLike, lower: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, radius) from the candidate and the running lower bound at the stop: int64 class
    or ABSTAIN, and float64 radius (0.0 where abstaining), of the shape of lower."""
    r = _radius(plan.sigma, lower)
    certified = np.isfinite(r)
    return np.where(certified, top, ABSTAIN).astype(np.int64), np.where(certified, r, 0.0)


def certify_from_look_counts(
    plan: Plan, top: ArrayLike, k0: ArrayLike, k_looks: ArrayLike
) -> SequentialCertificate:
    """Sequential CERTIFY of many images whose counts at every look are known in advance.

    Args:
      top: (B,) candidate classes; k0: (B,) their selection counts (of n0).
      k_looks: (B, L) cumulative votes for the candidate among the first plan.looks[t] estimation
        draws (nondecreasing along t, k_looks[:, t] <= looks[t]).
    Returns the SequentialCertificate of (B,) arrays, identical image by image to what the sampler
    and device paths return on the same draws (simulations and tests drive the procedure this way).
    """
    k_looks = np.asarray(k_looks, np.int64)
    size = k_looks.shape[0]
    if k_looks.shape != (size, len(plan.looks)):
        raise ValueError(f"k_looks must have shape (B, {len(plan.looks)}), got {k_looks.shape}")
    lower, upper = np.zeros(size), np.ones(size)
    num_samples = np.zeros(size, np.int64)
    running = np.ones(size, bool)
    k0 = np.asarray(k0)
    for t in range(len(plan.looks)):
        ids = np.flatnonzero(running)
        if ids.size == 0:
            break
        lower[ids], upper[ids], stop = update(
            plan, t, k_looks[ids, t], lower[ids], upper[ids], k0[ids]
        )
        num_samples[ids[stop]] = plan.n0 + plan.looks[t]
        running[ids[stop]] = False
    prediction, radius = finish(plan, np.asarray(top), lower)
    return SequentialCertificate(prediction, radius, num_samples, lower, upper)


# --------------------------------------------------------------------------------------------------
# The count-level API: any sampler of class counts.


def _checked_counts(counts, m: int, num_classes: int) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.shape != (num_classes,):
        raise ValueError(
            f"sample({m}) must return the class counts of shape ({num_classes},), got {counts.shape}"
        )
    if not np.issubdtype(counts.dtype, np.integer):
        raise TypeError(f"sample({m}) must return integer counts, got dtype {counts.dtype}")
    if np.any(counts < 0):
        raise ValueError(f"sample({m}) returned negative counts: {counts.tolist()}")
    total = int(counts.sum())
    if total != m:
        which = "more" if total > m else "fewer"
        raise ValueError(
            f"sample({m}) returned counts of {total} draws, {which} than the {m} asked"
        )
    return counts.astype(np.int64)


def sequential_certify_from_sampler(
    sample: Callable[[int], np.ndarray],
    *,
    sigma: float,
    alpha: float,
    n0: int,
    n_max: int,
    num_classes: int,
    radii: Sequence[float] | None = None,
    radius_tol: float | None = None,
    bound: str = "union",
) -> SequentialCertificate:
    """Sequential CERTIFY of one image from a sampler of class counts (numpy only).

    Args:
      sample: sample(m) -> (num_classes,) int counts of m fresh, independent draws of f(x + eps). It
        is called once for the n0 selection draws, then once per look for the draws up to that look.
      sigma, alpha: noise level (> 0) and failure probability in (0, 1).
      n0: selection draws; n_max: the most estimation draws (>= n0).
      num_classes: K >= 2.
      radii / radius_tol: the stopping goal, exactly one (module docstring).
      bound: "union" or "mixture" (module docstring).

    Returns:
      SequentialCertificate of Python scalars. With probability >= 1 - alpha, a non-abstaining
      prediction is the smoothed classifier's class and the class is constant on the l2 ball of that
      radius, whatever the sampler's outcomes made the procedure stop.
    """
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    num_classes = int(num_classes)
    plan = make_plan(
        sigma=sigma,
        alpha=alpha,
        n0=n0,
        n_max=n_max,
        radii=radii,
        radius_tol=radius_tol,
        bound=bound,
    )
    counts0 = _checked_counts(sample(plan.n0), plan.n0, num_classes)
    top = int(counts0.argmax())
    k0 = np.array([counts0[top]])
    k, drawn = 0, 0
    lower, upper = np.zeros(1), np.ones(1)
    for t, n_t in enumerate(plan.looks):
        k += int(_checked_counts(sample(n_t - drawn), n_t - drawn, num_classes)[top])
        drawn = n_t
        lower, upper, stop = update(plan, t, np.array([k]), lower, upper, k0)
        if stop[0]:
            break
    prediction, radius = finish(plan, np.array([top]), lower)
    return SequentialCertificate(
        prediction=int(prediction[0]),
        radius=float(radius[0]),
        num_samples=plan.n0 + drawn,
        pa_lower=float(lower[0]),
        pa_upper=float(upper[0]),
    )


# --------------------------------------------------------------------------------------------------
# The device path: slots of a fixed example batch, refilled as images stop.


def default_round_size(chunk_size: int) -> int:
    """Estimation draws per slot per device call: 4 chunks."""
    return 4 * chunk_size


def run_slots(
    key: jax.Array,
    apply_fn: votes.ApplyFn,
    params: Any,
    x: np.ndarray,
    idx: np.ndarray,
    plan: Plan,
    *,
    num_classes: int,
    chunk_size: int | None = None,
    batch_size: int = 8,
    round_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    on_stop: Callable[[int, SequentialCertificate, float], None] | None = None,
) -> SequentialCertificate:
    """Sequential CERTIFY of x (N, H, W, C) on the device, batch_size images at a time.

    x: an array or an array-like that supports shape and slicing (x[a:b] -> (b - a, H, W, C)
    float32 in [0, 1]); each image is read twice, for its selection draws and when it enters a slot.

    The selection counts of all images come first (n0 draws each). Then each of batch_size slots holds
    one image; one device call draws up to round_size more estimation draws for every slot, counted
    per look interval (votes.count_votes_in_rounds), and the host takes every look those draws
    completed. A slot whose image stops takes the next image at once, so a batch does not cost its
    slowest image. Draw j of image i always has the noise of (key, idx_i, j): the result does not
    depend on chunk_size, batch_size, round_size, the devices or the order of the images.

    on_stop(position, certificate, seconds) is called as each image stops (in stopping order), with
    the wall-clock seconds its slot held it.
    Returns the SequentialCertificate of (N,) arrays, in the order of x.
    """
    size = x.shape[0]
    chunk_size = votes.default_chunk_size() if chunk_size is None else int(chunk_size)
    round_size = default_round_size(chunk_size) if round_size is None else int(round_size)
    if round_size < 1:
        raise ValueError(f"round_size must be >= 1, got {round_size}")
    common = dict(sigma=plan.sigma, num_classes=num_classes, chunk_size=chunk_size, mesh=mesh)
    counts0 = (
        np.concatenate(
            [
                votes.count_votes(
                    key,
                    apply_fn,
                    params,
                    x[s : s + batch_size],
                    idx[s : s + batch_size],
                    num_samples=plan.n0,
                    stream=votes.SELECTION,
                    **common,
                )
                for s in range(0, size, batch_size)
            ]
        )
        if size
        else np.zeros((0, num_classes), np.int64)
    )
    top = counts0.argmax(axis=1)
    k0 = counts0[np.arange(size), top]
    out = dict(
        prediction=np.full(size, ABSTAIN, np.int64),
        radius=np.zeros(size),
        num_samples=np.zeros(size, np.int64),
        pa_lower=np.zeros(size),
        pa_upper=np.ones(size),
    )
    looks = np.asarray(plan.looks, np.int64)
    # The slots' images stay on the host between rounds: x is read once per image that enters a
    # slot (x may be a lazy array that decodes on access, e.g. rsjax.imagefolder.FolderImages).
    held = np.zeros((batch_size, *x.shape[1:]), np.float32)
    slot = np.full(batch_size, -1)  # position in x of each slot's image, -1 when empty
    drawn = np.zeros(batch_size, np.int64)  # estimation draws counted so far
    k = np.zeros(batch_size, np.int64)  # of which for cA
    next_look = np.zeros(batch_size, np.int64)
    lower, upper = np.zeros(batch_size), np.ones(batch_size)
    entered = np.zeros(batch_size)
    queue = 0
    while True:
        for s in np.flatnonzero(slot < 0):
            if queue < size:
                held[s] = x[queue : queue + 1][0]
                slot[s], queue = queue, queue + 1
                entered[s] = time.perf_counter()
                drawn[s] = k[s] = next_look[s] = 0
                lower[s], upper[s] = 0.0, 1.0
        active = slot >= 0
        if not active.any():
            break
        rows = np.where(active, slot, slot[active][0])
        start = np.where(active, drawn, 0)
        stop = np.where(active, np.minimum(drawn + round_size, plan.n_max), 0)
        counts = votes.count_votes_in_rounds(
            key,
            apply_fn,
            params,
            held,  # an empty slot keeps its last image: its draw range is empty
            idx[rows],
            start=start,
            stop=stop,
            looks=looks,
            stream=votes.ESTIMATION,
            **common,
        )  # (batch, L, K)
        # votes for cA per look interval
        per_look = counts[np.arange(batch_size), :, top[rows]]
        cum = k[:, None] + np.cumsum(per_look, axis=1)
        stopped = ~active
        for t in range(len(looks)):
            here = ~stopped & (next_look == t) & (looks[t] <= stop)
            if not here.any():
                continue
            ids = np.flatnonzero(here)
            lo, hi, done = update(plan, t, cum[ids, t], lower[ids], upper[ids], k0[slot[ids]])
            lower[ids], upper[ids] = lo, hi
            next_look[ids] = t + 1
            for s in ids[done]:
                pos = int(slot[s])
                prediction, radius = finish(plan, top[pos : pos + 1], lower[s : s + 1])
                cert = SequentialCertificate(
                    int(prediction[0]),
                    float(radius[0]),
                    plan.n0 + int(looks[t]),
                    lower[s],
                    upper[s],
                )
                for name, value in zip(cert._fields, cert, strict=True):
                    out[name][pos] = value
                if on_stop is not None:
                    on_stop(pos, cert, time.perf_counter() - entered[s])
                slot[s] = -1
                stopped[s] = True
        live = active & ~stopped
        drawn[live] = stop[live]
        k[live] = cum[live, -1]
    return SequentialCertificate(**out)
