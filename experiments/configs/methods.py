"""Per-method training settings shared by the dataset configs (not a config itself: no get_config).

Each dataset config calls `training(method, sigma, ...)` for the loss name, k and loss options.
Values follow REFERENCE section 3: ADRE's lam and k are unknown (sweep lam in {0.05, 0.1, 0.5, 1, 2},
k in {4, 8, 16}); SmoothAdv's eps is set to sigma with T = 2 steps; MACER's defaults are those of Zhai
et al. (lam = 16 on MNIST-like data, 12 on CIFAR-10).
"""

METHODS = ("gaussian", "adre", "adre_adv", "smoothadv", "macer")
SIGMAS = (0.25, 0.5, 1.0)


def training(
    method: str,
    sigma: float,
    *,
    mnist_like: bool,
    lam=None,
    k=None,
    eps=None,
    warmup_epochs: int = 10,
    macer_warmup: bool = False,
) -> dict:
    """{"loss", "k", "loss_options", "warmup_epochs"} for one method at one sigma."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    if sigma not in SIGMAS:
        raise ValueError(f"sigma must be one of {SIGMAS} for these configs, got {sigma}")
    eps = sigma if eps is None else float(eps)
    attack = dict(eps=eps, num_steps=2, warmup_steps=0)  # warmup_steps set from warmup_epochs
    if method == "gaussian":
        default_k, options = 1, {}
    elif method == "adre":
        default_k, options = 8, {"lam": 0.5}
    elif method == "adre_adv":
        default_k, options = 8, {"lam": 0.5, "num_noise": 2, **attack}
    elif method == "smoothadv":
        default_k, options = 2, dict(attack)
    else:
        default_k = 16
        options = {"lam": 16.0 if mnist_like else 12.0, "gamma": 8.0, "beta": 16.0}
        if macer_warmup:  # lam warms up over warmup_epochs (rsjax's option, see losses.macer_loss)
            options["warmup_steps"] = 0
    if lam is not None:
        if "lam" not in options:
            raise ValueError(f"method {method!r} has no lam")
        options["lam"] = float(lam)
    return {
        "loss": method,
        "k": default_k if k is None else int(k),
        "loss_options": options,
        "warmup_epochs": warmup_epochs if "warmup_steps" in options or "eps" in options else 0,
    }


def smoke(config: dict) -> dict:
    """The seconds-long CPU version of a config, on any small local copy of the data."""
    config = dict(
        config, epochs=1, batch_size=8, checkpoint_every=2, warmup_epochs=0, lr_warmup_epochs=0
    )
    config["k"] = min(config["k"], 2)
    config["loss_options"] = dict(config["loss_options"])
    if "num_steps" in config["loss_options"]:
        config["loss_options"]["num_steps"] = 1
    return config
