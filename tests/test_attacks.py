"""Tests for rsjax.attacks (SmoothAdv): feasibility of the attacked point (ball and box), the eps = 0 and
zero-gradient edge cases, the stop_gradient contract, two oracles (the closed-form gradient of a linear
model for one step, and a naive per-example loop with jax.grad for several steps, both with the same
fixed noise), one statistical check that the attack raises the soft smoothed loss on a trained toy model
more than a random perturbation of the same size, and the jit contract (one compilation across eps,
four-device sharded inputs).

Models are tiny: a tanh MLP on 4x4x1 images and rsjax's LinearClassifier. All keys are fixed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rsjax import attacks, models, sharding

SHAPE = (4, 4, 1)
DIM = 16
SIGMA = 0.25


def mlp_logits(params, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def init_mlp(key, *, hidden=16, num_classes=3, scale=1.0):
    k1, k2 = jax.random.split(key)
    return {
        "w1": scale * jax.random.normal(k1, (DIM, hidden)) / np.sqrt(DIM),
        "b1": jnp.zeros(hidden),
        "w2": scale * jax.random.normal(k2, (hidden, num_classes)) / np.sqrt(hidden),
        "b2": jnp.zeros(num_classes),
    }


def l2_dist(a, b):
    return np.linalg.norm(
        (np.asarray(a, np.float64) - np.asarray(b, np.float64)).reshape(len(a), -1), axis=1
    )


def boundary_images(rng, batch):
    """Images whose pixels are mostly at or within 1e-3 of 0 or 1, the rest uniform."""
    values = np.array([0.0, 1e-3, 0.999, 1.0], np.float32)
    x = rng.choice(values, size=(batch, *SHAPE)).astype(np.float32)
    uniform = rng.uniform(size=x.shape).astype(np.float32)
    return np.where(rng.uniform(size=x.shape) < 0.25, uniform, x)


RANDOM_MLP = init_mlp(jax.random.key(1), scale=3.0)
RNG = np.random.default_rng(20240612)
# 32 images at the box's edge, then 16 in its middle (where the ball, not the box, binds).
X_BOUNDARY = boundary_images(RNG, 32)
X_MIXED = np.concatenate([X_BOUNDARY, RNG.uniform(0.4, 0.6, (16, *SHAPE)).astype(np.float32)])
Y_BOUNDARY = RNG.integers(0, 3, size=32)
Y_MIXED = np.concatenate([Y_BOUNDARY, RNG.integers(0, 3, size=16)])


def linear_logits(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


ATTACK_LINEAR = attacks.make_smoothadv_attack(linear_logits, num_steps=3, num_noise=4)
# One jitted attack shared by the tests below (same logits_fn, T, m and batch of 48: one compilation).
ATTACK_4 = attacks.make_smoothadv_attack(mlp_logits, num_steps=4, num_noise=4)


# ---------------------------------------------------------------- feasibility and edge cases


@pytest.mark.parametrize("num_steps", [1, 4])
def test_attacked_point_is_in_ball_and_box(num_steps):
    attack_fn = (
        ATTACK_4
        if num_steps == 4
        else attacks.make_smoothadv_attack(mlp_logits, num_steps=num_steps, num_noise=4)
    )
    x, y = X_MIXED, Y_MIXED
    for eps in (0.1, 0.5, 2.0):
        x_adv = np.asarray(attack_fn(jax.random.key(2), RANDOM_MLP, x, y, eps=eps, sigma=SIGMA))
        dist = l2_dist(x_adv, x)
        assert dist.max() <= eps + 1e-5, (eps, dist.max())
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        # Not vacuous: in the middle of the box the attack spends its whole budget (the ball binds)...
        if eps <= 0.5:
            np.testing.assert_allclose(dist[32:], eps, rtol=1e-5)
    # ...and at eps = 2 the box binds: pixels 1e-3 away from the edge were pushed onto it.
    moved_to_edge = ((x_adv == 0.0) & (x == np.float32(1e-3))) | (
        (x_adv == 1.0) & (x == np.float32(0.999))
    )
    assert moved_to_edge.sum() > 10


def test_projection_keeps_both_constraints_from_far_outside():
    rng = np.random.default_rng(3)
    x = boundary_images(rng, 64)
    x_far = x + rng.normal(scale=2.0, size=x.shape).astype(np.float32)
    for eps in (0.1, 0.5, 2.0):
        p = np.asarray(attacks.project(x_far, x, jnp.float32(eps)))
        assert l2_dist(p, x).max() <= eps + 1e-5
        assert p.min() >= 0.0 and p.max() <= 1.0


def test_eps_zero_returns_x_exactly():
    x_adv = ATTACK_4(jax.random.key(4), RANDOM_MLP, X_MIXED, Y_MIXED, eps=0.0, sigma=SIGMA)
    np.testing.assert_array_equal(np.asarray(x_adv), X_MIXED)


def test_l2_normalize_guards_zero_and_tiny_rows():
    g = np.zeros((3, *SHAPE), np.float32)
    g[1, 0, 0, 0], g[1, 1, 2, 0] = 3.0, -4.0
    g[2, 2, 1, 0], g[2, 3, 3, 0] = 1e-30, 1e-30  # squares underflow to 0 in float32
    u = np.asarray(attacks.l2_normalize(jnp.asarray(g)))
    assert np.all(np.isfinite(u))
    np.testing.assert_array_equal(u[0], 0.0)
    np.testing.assert_allclose(np.linalg.norm(u.reshape(3, -1), axis=1), [0.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(u[1, 0, 0, 0], 0.6, atol=1e-7)


@pytest.mark.parametrize("case", ["constant_model", "saturated_softmax"])
def test_zero_gradient_gives_zero_step_not_nan(case):
    x = jnp.asarray(X_BOUNDARY[:8])
    if case == "constant_model":  # logits ignore the input: the gradient is exactly 0
        params = {"w": jnp.zeros((DIM, 3)), "b": jnp.arange(3.0)}
        y = jnp.zeros(8, jnp.int32)
    else:  # the true class wins by ~1e4 logits under any noise: softmax_y == 1.0 in float32
        params = {"w": jnp.zeros((DIM, 3)), "b": jnp.asarray([0.0, 0.0, 1e4])}
        params["w"] = params["w"].at[:, 2].set(1.0)
        y = jnp.full(8, 2, jnp.int32)
    x_adv = ATTACK_LINEAR(jax.random.key(5), params, x, y, eps=0.5, sigma=SIGMA)
    assert np.all(np.isfinite(np.asarray(x_adv)))
    np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(x))


def test_no_gradient_flows_through_the_attack():
    key = jax.random.key(6)
    x, y = jnp.asarray(X_BOUNDARY[:8] * 0.8 + 0.1), jnp.asarray(Y_BOUNDARY[:8])
    kw = dict(eps=0.5, sigma=SIGMA, num_steps=2, num_noise=2)

    # d x_adv / d x: the attack output is a constant (without stop_gradient this is ~ the identity).
    grad_x = jax.jit(
        jax.grad(lambda x: attacks.smoothadv_attack(key, mlp_logits, RANDOM_MLP, x, y, **kw).sum())
    )(x)
    np.testing.assert_array_equal(np.asarray(grad_x), 0.0)

    # A training loss at x_adv(params) has the gradient of the same loss at a constant x_adv.
    def ce_at(params, images):
        return optax.softmax_cross_entropy_with_integer_labels(mlp_logits(params, images), y).mean()

    def train_loss(params):
        return ce_at(params, attacks.smoothadv_attack(key, mlp_logits, params, x, y, **kw))

    x_adv = jax.jit(lambda p: attacks.smoothadv_attack(key, mlp_logits, p, x, y, **kw))(RANDOM_MLP)
    got = jax.jit(jax.grad(train_loss))(RANDOM_MLP)
    want = jax.jit(jax.grad(ce_at))(RANDOM_MLP, x_adv)
    for name in want:
        np.testing.assert_allclose(
            np.asarray(got[name]), np.asarray(want[name]), rtol=1e-6, atol=1e-7
        )


# ---------------------------------------------------------------- oracles with the same fixed noise


def test_one_step_matches_the_closed_form_gradient_of_a_linear_model():
    """For logits z = W^T x + b, with p_j = softmax(z(x + eta_j)) and G_y = mean_j p_jy,
    grad_x -log G_y = -(1 / (m G_y)) sum_j p_jy (W_y - W p_j); one step of 2 eps along it, projected to
    the ball (norm 2 eps -> eps) and clipped, is clip(x + eps * g / ||g||). Computed in float64 numpy."""
    model = models.LinearClassifier(num_classes=3)
    variables = models.init_variables(model, jax.random.key(7), SHAPE)
    logits_fn = models.make_logits_fn(model)
    w = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)  # (16, 3)
    b = np.asarray(variables["params"]["Dense_0"]["bias"], np.float64)
    rng = np.random.default_rng(8)
    x = rng.uniform(0.05, 0.95, size=(12, *SHAPE)).astype(np.float32)
    y = rng.integers(0, 3, size=12)
    key, eps, m = jax.random.key(9), 0.4, 5

    x_adv = jax.jit(
        lambda v: attacks.smoothadv_attack(
            key, logits_fn, v, x, y, eps=eps, sigma=SIGMA, num_steps=1, num_noise=m
        )
    )(variables)
    noise = np.asarray(
        attacks.attack_noise(key, jnp.asarray(x), sigma=SIGMA, num_noise=m), np.float64
    )

    want = np.empty((12, DIM))
    for i in range(12):
        xi = x[i].reshape(-1).astype(np.float64)
        z = (xi + noise[i].reshape(m, -1)) @ w + b  # (m, 3)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g_y = p[:, y[i]].mean()
        grad = -sum(p[j, y[i]] * (w[:, y[i]] - w @ p[j]) for j in range(m)) / (m * g_y)
        want[i] = np.clip(xi + eps * grad / np.linalg.norm(grad), 0.0, 1.0)
    np.testing.assert_allclose(np.asarray(x_adv).reshape(12, -1), want, atol=1e-5)
    assert np.abs(want - x.reshape(12, -1)).max() > 0.05  # the step is not negligible


def naive_smoothadv(logits_fn, params, x, y, noise, *, eps, num_steps):
    """One example at a time, one noise draw at a time, jax.grad per example, numpy projection."""

    @jax.jit
    @jax.grad
    def grad_one(z, eta, label):  # one image (H, W, C), its m noise draws, its label
        probs = [jax.nn.softmax(logits_fn(params, (z + e)[None]))[0, label] for e in eta]
        return -jnp.log(sum(probs) / len(probs))

    out = []
    for i in range(len(x)):
        xi = np.asarray(x[i], np.float64)
        z = xi.copy()
        for _ in range(num_steps):
            g = np.asarray(grad_one(jnp.asarray(z, jnp.float32), noise[i], y[i]), np.float64)
            z = z + (2 * eps / num_steps) * g / np.linalg.norm(g)
            delta = z - xi
            z = np.clip(xi + delta * min(1.0, eps / np.linalg.norm(delta)), 0.0, 1.0)
        out.append(z)
    return np.stack(out)


def test_several_steps_match_a_naive_per_example_loop():
    rng = np.random.default_rng(10)
    x = jnp.asarray(rng.uniform(size=(4, *SHAPE)).astype(np.float32))
    y = jnp.asarray([0, 1, 2, 1])
    noise = attacks.attack_noise(jax.random.key(11), x, sigma=SIGMA, num_noise=3)
    got = jax.jit(
        lambda p: attacks.smoothadv_from_noise(mlp_logits, p, x, y, noise, eps=0.6, num_steps=4)
    )(RANDOM_MLP)
    want = naive_smoothadv(mlp_logits, RANDOM_MLP, x, y, noise, eps=0.6, num_steps=4)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


# ---------------------------------------------------------------- the attack works on a trained model


def blobs(key, n):
    """Two Gaussian blobs of 4x4x1 images: class c has mean 0.35 + 0.3 c per pixel, std 0.05."""
    k1, k2 = jax.random.split(key)
    y = jax.random.bernoulli(k1, 0.5, (n,)).astype(jnp.int32)
    x = 0.35 + 0.3 * y[:, None, None, None] + 0.05 * jax.random.normal(k2, (n, *SHAPE))
    return jnp.clip(x, 0.0, 1.0), y


@pytest.fixture(scope="module")
def trained_mlp():
    """A 16-16-3 tanh MLP trained with Gaussian augmentation (sigma = 0.25) for 300 Adam steps."""
    params = init_mlp(jax.random.key(12))  # three outputs (class 2 never occurs): shares ATTACK_4
    opt = optax.adam(0.03)

    def step(params, opt_state, key):
        k_data, k_noise = jax.random.split(key)
        x, y = blobs(k_data, 128)
        noisy = x + SIGMA * jax.random.normal(k_noise, x.shape)

        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(mlp_logits(p, noisy), y).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    keys = jax.random.split(jax.random.key(13), 300)
    (params, _), _ = jax.lax.scan(
        lambda c, k: (step(*c, k), None), (params, opt.init(params)), keys
    )
    return params


def test_attack_raises_the_smoothed_loss_more_than_a_random_perturbation(trained_mlp):
    """48 fresh test points, eps = 0.5, T = 4, m = 4; the loss is then re-estimated with 1,000 FRESH
    noise draws per point. Everything is keyed, so the test is deterministic. Across 20 other seeds of
    the data, attack, direction and evaluation keys, every example's loss rose at least 13x over its
    clean loss and beat its random direction, and the mean loss at x' was at least 13x the mean at the
    random points; the thresholds below (90% of examples, a 5x ratio) leave a wide margin, so a failure
    means a broken attack, not bad luck. The 1,000 common fresh draws put the Monte Carlo error of each
    smoothed probability near 1e-3, far below these gaps."""
    x, y = blobs(jax.random.key(14), 48)
    x_adv = ATTACK_4(jax.random.key(15), trained_mlp, x, y, eps=0.5, sigma=SIGMA)

    # A random direction, scaled to each example's actual attack distance, then clipped.
    dist = l2_dist(x_adv, x)
    u = np.asarray(attacks.l2_normalize(jax.random.normal(jax.random.key(16), x.shape)))
    x_rand = jnp.clip(x + dist[:, None, None, None].astype(np.float32) * u, 0.0, 1.0)

    @jax.jit
    def smoothed_ce(images, key):
        noise = attacks.attack_noise(key, images, sigma=SIGMA, num_noise=1000)
        return attacks.soft_smoothed_ce(mlp_logits, trained_mlp, images, y, noise)

    # The same fresh noise at all three points (common random numbers).
    eval_key = jax.random.key(17)
    ce_clean, ce_adv, ce_rand = (np.asarray(smoothed_ce(z, eval_key)) for z in (x, x_adv, x_rand))
    assert ce_clean.mean() < 0.2  # the model is good: the attack has something to undo
    assert (ce_adv > ce_clean).mean() >= 0.9, (ce_adv, ce_clean)
    assert (ce_adv > ce_rand).mean() >= 0.9, (ce_adv, ce_rand)
    assert ce_adv.mean() > 5 * ce_rand.mean(), (ce_adv.mean(), ce_rand.mean())


# ---------------------------------------------------------------- jit contract


def test_one_compilation_across_eps_and_sigma():
    traces = []

    def counting_logits(params, images):
        traces.append(images.shape)
        return mlp_logits(params, images)

    attack_fn = attacks.make_smoothadv_attack(counting_logits, num_steps=2, num_noise=2)
    x, y = X_BOUNDARY[:8], Y_BOUNDARY[:8]
    attack_fn(jax.random.key(18), RANDOM_MLP, x, y, eps=0.0, sigma=SIGMA)
    first = len(traces)
    assert first >= 1 and traces[0] == (16, *SHAPE)  # B * m = 16 noisy inputs in one batch
    for eps, sigma in [(0.25, 0.5), (np.float32(0.5), 0.12), (jnp.asarray(1.0), jnp.float32(0.25))]:
        attack_fn(jax.random.key(19), RANDOM_MLP, x, y, eps=eps, sigma=sigma)
    other_params = jax.tree.map(lambda a: a + 1.0, RANDOM_MLP)
    attack_fn(jax.random.key(20), other_params, x, y, eps=0.3, sigma=SIGMA)
    assert len(traces) == first, traces


def test_sharded_inputs_give_the_single_device_result():
    mesh = sharding.batch_mesh()
    assert mesh.size == 4
    x, y, key = X_MIXED, Y_MIXED, jax.random.key(21)
    single = ATTACK_4(key, RANDOM_MLP, x, y, eps=0.5, sigma=SIGMA)
    x_dev, y_dev = sharding.shard_batch(mesh, x, y)
    key_dev, params_dev = sharding.replicate(mesh, (key, RANDOM_MLP))
    sharded = ATTACK_4(key_dev, params_dev, x_dev, y_dev, eps=0.5, sigma=SIGMA)
    assert len(sharded.sharding.device_set) == 4
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), atol=1e-6)


# ---------------------------------------------------------------- eps warm-up


def test_eps_schedule_warms_up_linearly_then_stays():
    got = [float(attacks.eps_schedule(s, eps=0.5, warmup_steps=10)) for s in (0, 5, 10, 25)]
    np.testing.assert_allclose(got, [0.0, 0.25, 0.5, 0.5], rtol=1e-6)
    assert float(attacks.eps_schedule(0, eps=0.5, warmup_steps=0)) == 0.5
    traced = jax.jit(lambda s: attacks.eps_schedule(s, eps=1.0, warmup_steps=4))
    np.testing.assert_allclose(
        [float(traced(s)) for s in range(6)], [0, 0.25, 0.5, 0.75, 1, 1], rtol=1e-6
    )
