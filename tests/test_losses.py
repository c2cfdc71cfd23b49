"""Training losses: each against a naive numpy loop on the same noisy copies, ADRE's strongest wrong
class, MACER's hinge set, and finite, correct gradients (also where MACER's margin is infinite)."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import norm

from rsjax import losses, models, train

SIGMA, K = 0.5, 5


def _setup(num_classes=4, batch=8, scale=1.0, seed=0):
    """A linear model on 2x2x1 inputs, its params scaled by `scale`, and a random batch."""
    model = models.LinearClassifier(num_classes=num_classes)
    params = models.init_variables(model, jax.random.key(seed), (2, 2, 1))["params"]
    params = jax.tree.map(lambda p: p * scale, params)
    rng = np.random.default_rng(seed)
    batch_ = {
        "image": jnp.asarray(rng.uniform(0, 1, (batch, 2, 2, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32),
    }
    return model, params, batch_


def _naive_logits(params, x):
    """float64 logits of the linear model (no normalisation) for (N, 2, 2, 1) inputs."""
    kernel = np.asarray(params["Dense_0"]["kernel"], np.float64)
    bias = np.asarray(params["Dense_0"]["bias"], np.float64)
    return np.asarray(x, np.float64).reshape(len(x), -1) @ kernel + bias


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _naive_copies_logits(params, batch, key, *, sigma, k):
    """(B, k, C) float64 logits of the SAME noisy copies the losses draw."""
    x = losses.noisy_copies(key, batch["image"], sigma=sigma, k=k)
    return _naive_logits(params, x).reshape(len(batch["label"]), k, -1)


def naive_gaussian(logits, labels):
    total = 0.0
    for i, y in enumerate(labels):
        for j in range(logits.shape[1]):
            total += -np.log(_softmax(logits[i, j])[y])
    return total / logits.shape[0] / logits.shape[1]


def naive_adre(logits, labels, *, lam):
    B, k, C = logits.shape
    total = 0.0
    for i, y in enumerate(labels):
        G = sum(_softmax(logits[i, j]) for j in range(k)) / k
        ce = sum(-np.log(_softmax(logits[i, j])[y]) for j in range(k)) / k
        c_star = max((c for c in range(C) if c != y), key=lambda c: G[c])
        total += ce + lam * np.log(G[c_star] + 1e-10)
    return total / B


def naive_macer(logits, labels, *, sigma, lam, gamma, beta):
    """(loss, number of points in the hinge set)."""
    B, k, _ = logits.shape
    ce = hinge = 0.0
    count = 0
    for i, y in enumerate(labels):
        G = sum(_softmax(logits[i, j]) for j in range(k)) / k
        Gb = sum(_softmax(beta * logits[i, j]) for j in range(k)) / k
        ce += -np.log(G[y])
        order = np.argsort(-Gb)
        xi = norm.ppf(Gb[order[0]]) - norm.ppf(Gb[order[1]])
        if order[0] == y and np.isfinite(xi):
            hinge += max(0.0, gamma - xi)
            count += 1
    return ce / B + lam * sigma / 2 * hinge / B, count


def _loss(name, model, **options):
    """Jitted (params, batch, key) -> (loss, metrics, grads) of the registered loss (one compile)."""
    fn = functools.partial(losses.LOSSES[name], apply_fn=losses.make_train_apply(model), **options)
    value_and_grad = jax.value_and_grad(lambda p, b, key: fn(p, {}, b, key), has_aux=True)

    def run(params, batch, key):
        (loss, (_, metrics)), grads = value_and_grad(params, batch, key)
        return loss, metrics, grads

    return jax.jit(run)


def _finite(tree):
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


def _check_finite_differences(fn, params, batch, key, *, eps=1e-3, seed=0):
    """Central differences of the loss along two random directions against <grad, direction>.

    float32 with eps = 1e-3: the difference quotient is good to about 1e-3 relative.
    """
    _, _, grads = fn(params, batch, key)
    rng = np.random.default_rng(seed)
    for _ in range(2):
        d = jax.tree.map(lambda g: jnp.asarray(rng.standard_normal(g.shape), g.dtype), grads)
        plus = fn(jax.tree.map(lambda p, v: p + eps * v, params, d), batch, key)[0]
        minus = fn(jax.tree.map(lambda p, v: p - eps * v, params, d), batch, key)[0]
        directional = sum(jax.tree.leaves(jax.tree.map(jnp.vdot, grads, d)))
        np.testing.assert_allclose((plus - minus) / (2 * eps), directional, rtol=3e-3, atol=3e-3)


def test_registry():
    assert losses.LOSSES["gaussian"] is losses.gaussian_augmentation_loss
    assert losses.LOSSES["adre"] is losses.adre_loss
    assert losses.LOSSES["macer"] is losses.macer_loss


def test_gaussian_matches_naive_loop():
    model, params, batch = _setup(scale=3.0)
    key = jax.random.key(7)
    loss, metrics, grads = _loss("gaussian", model, sigma=SIGMA, k=K)(params, batch, key)
    logits = _naive_copies_logits(params, batch, key, sigma=SIGMA, k=K)
    np.testing.assert_allclose(loss, naive_gaussian(logits, np.asarray(batch["label"])), rtol=1e-5)
    assert metrics["ce"] == loss and _finite(grads)


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_adre_matches_naive_loop(lam):
    model, params, batch = _setup(scale=3.0)
    key = jax.random.key(7)
    loss, metrics, grads = _loss("adre", model, sigma=SIGMA, k=K, lam=lam)(params, batch, key)
    labels = np.asarray(batch["label"])
    logits = _naive_copies_logits(params, batch, key, sigma=SIGMA, k=K)
    # The batch must hold both correctly and wrongly classified points (of the soft classifier).
    G = np.exp(logits - logits.max(-1, keepdims=True))
    correct = (G / G.sum(-1, keepdims=True)).mean(1).argmax(-1) == labels
    assert 0 < correct.sum() < len(labels)
    np.testing.assert_allclose(loss, naive_adre(logits, labels, lam=lam), rtol=1e-5)
    np.testing.assert_allclose(loss, metrics["ce"] + lam * metrics["reg"], rtol=1e-6)
    np.testing.assert_allclose(metrics["ce"], naive_gaussian(logits, labels), rtol=1e-5)
    assert _finite(grads)


def test_strongest_wrong_class_in_both_cases():
    G = jnp.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    labels = jnp.array([0, 1, 2, 2])
    # correct -> runner-up (1); wrong -> the wrongly winning class (0), not the overall runner-up
    # (which is the label itself); wrong with the label third -> the winner (0); correct -> 1.
    np.testing.assert_array_equal(losses.strongest_wrong_class(G, labels), [1, 0, 0, 1])


def test_adre_closed_form_with_designed_probabilities():
    """Zero kernel, bias = log p: every noisy copy has softmax p, so the loss is closed-form."""
    p = np.array([0.5, 0.3, 0.2])
    model = models.LinearClassifier(num_classes=3)
    params = {"Dense_0": {"kernel": jnp.zeros((4, 3)), "bias": jnp.log(jnp.asarray(p))}}
    labels = np.array([0, 1, 2])  # correct (c* = 1), wrong (c* = 0), wrong (c* = 0)
    batch = {"image": jnp.full((3, 2, 2, 1), 0.5), "label": jnp.asarray(labels)}
    lam = 0.7
    loss, metrics, _ = _loss("adre", model, sigma=SIGMA, k=3, lam=lam)(
        params, batch, jax.random.key(0)
    )
    c_star = np.array([1, 0, 0])
    expected_reg = np.mean(np.log(p[c_star] + 1e-10))
    expected_ce = np.mean(-np.log(p[labels]))
    np.testing.assert_allclose(metrics["reg"], expected_reg, rtol=1e-6)
    np.testing.assert_allclose(metrics["ce"], expected_ce, rtol=1e-6)
    np.testing.assert_allclose(loss, expected_ce + lam * expected_reg, rtol=1e-6)
    # A runner-up-only implementation (second largest of G) would give log p[[1, 1, 1]] instead.
    assert not np.isclose(expected_reg, np.log(p[1]))


@pytest.mark.parametrize("beta, gamma, scale", [(1.0, 1.0, 3.0), (16.0, 8.0, 0.3)])
def test_macer_matches_naive_loop(beta, gamma, scale):
    model, params, batch = _setup(batch=12, scale=scale, seed=1)
    key = jax.random.key(3)
    options = dict(sigma=SIGMA, k=K, lam=12.0, gamma=gamma, beta=beta)
    loss, metrics, grads = _loss("macer", model, **options)(params, batch, key)
    labels = np.asarray(batch["label"])
    logits = _naive_copies_logits(params, batch, key, sigma=SIGMA, k=K)
    expected, count = naive_macer(logits, labels, **{k: v for k, v in options.items() if k != "k"})
    assert 0 < count < len(labels)  # the hinge set is a proper, non-empty subset
    assert metrics["hinge"] > 0
    np.testing.assert_allclose(metrics["hinge_fraction"], count / len(labels), rtol=1e-6)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(loss, metrics["ce"] + 12.0 * metrics["hinge"], rtol=1e-6)
    assert _finite(grads)


def _macer_fixture(which):
    """Hand-made points: "A" correct with finite xi (in the hinge), "B" misclassified, "C" correct
    with G^beta = (1, 0, 0) exactly in float32 (xi infinite)."""
    kernel = np.zeros((4, 3), np.float32)
    kernel[0] = [0.6, 0.2, 0.0]  # feature 0: point A
    kernel[1] = [0.6, 0.2, 0.0]  # feature 1: point B (label 1, but class 0 wins)
    kernel[2] = [60.0, 0.0, 0.0]  # feature 2: point C (saturated)
    params = {"Dense_0": {"kernel": jnp.asarray(kernel), "bias": jnp.zeros(3)}}
    points = {"A": (0, 0), "B": (1, 1), "C": (2, 0)}
    images = np.zeros((len(which), 4), np.float32)
    for row, name in enumerate(which):
        images[row, points[name][0]] = 1.0
    batch = {
        "image": jnp.asarray(images.reshape(-1, 2, 2, 1)),
        "label": jnp.asarray([points[name][1] for name in which], jnp.int32),
    }
    return models.LinearClassifier(num_classes=3), params, batch


MACER = dict(sigma=0.1, k=4, lam=12.0, gamma=8.0, beta=16.0)


def test_macer_hinge_counts_only_correct_points_with_finite_margin():
    model, params, batch = _macer_fixture("ABC")
    key = jax.random.key(0)
    loss, metrics, grads = _loss("macer", model, **MACER)(params, batch, key)
    logits = _naive_copies_logits(params, batch, key, sigma=MACER["sigma"], k=MACER["k"])
    # Preconditions of the fixture, checked in float32 as the loss sees them.
    Gb = np.asarray(losses.soft_smoothed(jnp.asarray(logits, jnp.float32), beta=MACER["beta"]))
    assert Gb[0].argmax() == 0 and Gb[1].argmax() == 0  # A correct, B wrong (label 1)
    assert Gb[2, 0] == 1.0 and Gb[2, 1] == 0.0  # C: xi = inf
    xi_a = norm.ppf(np.sort(Gb[0])[-1]) - norm.ppf(np.sort(Gb[0])[-2])
    assert 0 < xi_a < MACER["gamma"]
    expected_hinge = MACER["sigma"] / 2 * (MACER["gamma"] - xi_a) / 3  # summed over H, / B
    np.testing.assert_allclose(metrics["hinge"], expected_hinge, rtol=1e-4)
    np.testing.assert_allclose(metrics["hinge_fraction"], 1 / 3)
    assert _finite(grads) and np.isfinite(float(loss))


def test_macer_finite_gradient_with_empty_hinge_set():
    """B is misclassified and C has infinite xi: nobody is in the hinge."""
    model, params, batch = _macer_fixture("BC")
    key = jax.random.key(0)
    loss, metrics, grads = _loss("macer", model, **MACER)(params, batch, key)
    assert metrics["hinge_fraction"] == 0 and metrics["hinge"] == 0
    assert loss == metrics["ce"]
    assert _finite(grads)


@pytest.mark.parametrize(
    "name, options, scale",
    [
        ("gaussian", dict(sigma=SIGMA, k=K), 3.0),
        ("adre", dict(sigma=SIGMA, k=K, lam=0.5), 3.0),
        ("macer", dict(sigma=SIGMA, k=K, lam=12.0, gamma=8.0, beta=16.0), 0.3),
    ],
)
def test_gradient_matches_finite_differences(name, options, scale):
    model, params, batch = _setup(scale=scale, seed=1)
    _check_finite_differences(_loss(name, model, **options), params, batch, jax.random.key(3))


def test_macer_gradient_with_infinite_margin_matches_finite_differences():
    model, params, batch = _macer_fixture("ABC")
    _check_finite_differences(_loss("macer", model, **MACER), params, batch, jax.random.key(0))


@pytest.mark.parametrize(
    "name, options",
    [("adre", dict(lam=0.5)), ("macer", dict(lam=12.0, gamma=8.0, beta=16.0))],
)
def test_one_jitted_train_step(name, options):
    model, params, batch = _setup(seed=2)
    fn = functools.partial(
        losses.LOSSES[name],
        apply_fn=losses.make_train_apply(model),
        sigma=SIGMA,
        k=2,
        **options,
    )
    optimizer = optax.sgd(0.1)
    state = train.TrainState(jnp.zeros((), jnp.int32), params, {}, optimizer.init(params))
    state, metrics = train.make_train_step(fn, optimizer)(state, batch, jax.random.key(0))
    assert int(state.step) == 1
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert {"loss", "ce", "accuracy"} <= set(metrics)


@jax.custom_jvp
def _ndtri_analytic_derivative(p):
    return jax.scipy.special.ndtri(p)


@_ndtri_analytic_derivative.defjvp
def _ndtri_jvp(primals, tangents):
    x = jax.scipy.special.ndtri(primals[0])
    return x, tangents[0] * jnp.sqrt(2 * jnp.pi) * jnp.exp(x**2 / 2)  # inf at p = 0 and p = 1


def test_macer_gradient_finite_even_if_ndtri_derivative_is_infinite(monkeypatch):
    """jax's ndtri has zero derivative at 0 and 1; the textbook derivative 1/phi(Phi^-1(p)) is
    infinite there, and 0 * inf = NaN would leak through a single jnp.where. The double where must
    keep the gradient finite for either."""
    monkeypatch.setattr(losses, "ndtri", _ndtri_analytic_derivative)
    model, params, batch = _macer_fixture("ABC")
    _, _, grads = _loss("macer", model, **MACER)(params, batch, jax.random.key(0))
    assert _finite(grads)


@pytest.mark.parametrize("name", ["smoothadv", "adre_adv"])
def test_adversarial_losses_are_their_base_loss_at_the_attacked_point(name):
    """smoothadv = Gaussian augmentation, adre_adv = ADRE, both at the SmoothAdv point with the
    attack's key and eps warm-up, composed by hand here from the public pieces."""
    from rsjax import attacks

    model, params, batch = _setup(seed=3)
    apply_fn = losses.make_train_apply(model)
    key = jax.random.key(11)
    attack_key, noise_key = jax.random.split(key)
    opts = dict(eps=0.5, num_steps=3, warmup_steps=10, step=5)  # eps in force: 0.25
    num_noise = 4 if name == "smoothadv" else 2
    x_adv = attacks.smoothadv_attack(
        attack_key,
        lambda p, x: apply_fn(p, {}, x, False)[0],
        params,
        batch["image"],
        batch["label"],
        eps=0.25,
        sigma=SIGMA,
        num_steps=3,
        num_noise=num_noise,
    )
    adv = dict(batch, image=x_adv)
    if name == "smoothadv":
        got, (_, metrics) = losses.smoothadv_loss(
            params, {}, batch, key, apply_fn=apply_fn, sigma=SIGMA, k=4, **opts
        )
        want, _ = losses.gaussian_augmentation_loss(
            params, {}, adv, noise_key, apply_fn=apply_fn, sigma=SIGMA, k=4
        )
    else:
        got, (_, metrics) = losses.adre_adv_loss(
            params,
            {},
            batch,
            key,
            apply_fn=apply_fn,
            sigma=SIGMA,
            k=4,
            lam=0.7,
            num_noise=2,
            **opts,
        )
        want, _ = losses.adre_loss(
            params, {}, adv, noise_key, apply_fn=apply_fn, sigma=SIGMA, k=4, lam=0.7
        )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(metrics["eps"], 0.25)
    assert float(jnp.abs(x_adv - batch["image"]).max()) > 0  # the attack moved the points
    clean, _ = losses.gaussian_augmentation_loss(
        params, {}, batch, noise_key, apply_fn=apply_fn, sigma=SIGMA, k=4
    )
    if name == "smoothadv":
        assert float(got) > float(clean)  # attacked points are harder


def test_log_soft_smoothed_is_exact_where_float32_softmax_underflows():
    """A copy whose label logit is 120 below the top has softmax 0 in float32; log G stays exact
    (float64 reference) and its gradient nonzero, so a collapsed MACER model can still recover."""
    logits = jnp.array([[[0.0, 120.0, 0.0], [0.0, 130.0, 0.0]]])  # (B=1, k=2, C=3), label 0
    labels = jnp.array([0])
    reference = np.logaddexp(-120.0 - np.log1p(2 * np.exp(-120.0)), -130.0) - np.log(2)
    value = losses.log_soft_smoothed_at(logits, labels)
    np.testing.assert_allclose(float(value[0]), reference, rtol=1e-6)
    grad = jax.grad(lambda z: losses.log_soft_smoothed_at(z, labels).sum())(logits)
    assert float(jnp.abs(grad).sum()) > 0
    assert float(jax.nn.softmax(logits, axis=-1)[0, 0, 0]) == 0.0  # the naive form's zero


def test_macer_lam_warm_up():
    """With warmup_steps = 10 the hinge weight is lam * step / 10: 0 at step 0, half at step 5,
    lam from step 10 on (and warmup_steps = 0 is the published loss)."""
    model, params, batch = _macer_fixture("ABC")
    key = jax.random.key(0)
    full, metrics, _ = _loss("macer", model, **MACER)(params, batch, key)
    assert float(metrics["hinge"]) > 0
    for step, weight in ((0, 0.0), (5, 0.5), (10, 1.0), (50, 1.0)):
        loss, m, _ = _loss("macer", model, **MACER, warmup_steps=10, step=step)(params, batch, key)
        expected = float(m["ce"]) + weight * MACER["lam"] * float(m["hinge"])
        np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    np.testing.assert_allclose(float(loss), float(full), rtol=1e-6)


def test_make_loss_builds_by_name_and_checks_options_before_compiling():
    model = models.make_model("lenet", num_classes=4)
    with pytest.raises(ValueError, match=r"unknown loss 'adr'; available: \['adre', 'adre_adv'"):
        losses.make_loss("adr", model, sigma=0.25, k=2)
    with pytest.raises(ValueError, match=r"missing options \['lam'\]"):
        losses.make_loss("adre", model, sigma=0.25, k=2)
    with pytest.raises(ValueError, match=r"unknown options \['lamda'\]"):
        losses.make_loss("gaussian", model, sigma=0.25, k=1, lamda=1.0)
    plain = losses.make_loss("gaussian", model, sigma=0.25, k=1)
    warmed = losses.make_loss("smoothadv", model, sigma=0.25, k=1, eps=0.5, num_steps=1)
    assert list(inspect.signature(plain).parameters) == ["params", "model_state", "batch", "key"]
    assert list(inspect.signature(warmed).parameters)[-1] == "step"


def test_train_apply_of_a_module_without_train_and_of_batch_norm():
    """A module without `train` is applied without it (and keeps model_state {}); a batch-norm
    module updates its statistics in training mode only; batch statistics on a module without
    `train` are refused."""
    import flax.linen as nn

    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    class NormNoTrain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.BatchNorm(use_running_average=False)(x.reshape(x.shape[0], -1)))

    x = jax.random.uniform(jax.random.key(0), (6, 2, 2, 1))
    plain = Plain()
    params = models.init_variables(plain, jax.random.key(1), (2, 2, 1))["params"]
    logits, state = losses.make_train_apply(plain)(params, {}, x, True)
    np.testing.assert_array_equal(logits, plain.apply({"params": params}, x))
    assert state == {}
    bn = models.make_model("lenet_bn", num_classes=3)
    variables = models.init_variables(bn, jax.random.key(1), (28, 28, 1))
    apply_fn = losses.make_train_apply(bn)
    y = jax.random.uniform(jax.random.key(2), (4, 28, 28, 1))
    _, updated = apply_fn(variables["params"], variables["batch_stats"], y, True)
    _, kept = apply_fn(variables["params"], variables["batch_stats"], y, False)
    changed = jax.tree.map(lambda a, b: bool((a != b).any()), updated, variables["batch_stats"])
    assert all(jax.tree.leaves(changed))
    assert kept is variables["batch_stats"]
    norm = NormNoTrain()
    stats = models.init_variables(norm, jax.random.key(1), (2, 2, 1))
    with pytest.raises(ValueError, match="takes no `train` argument"):
        losses.make_train_apply(norm)(stats["params"], stats["batch_stats"], x, True)
