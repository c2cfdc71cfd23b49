"""Shared command-line pieces of the experiment scripts: config loading and data selection.

Kept in experiments/ (rsjax never imports flag parsing); everything substantive is in rsjax.
"""

import argparse
import importlib.util
import pathlib
import sys

from rsjax import (
    checkpoint,
    data,
    empirical_bayes,
    imagefolder,
    locks,
    monitor,
    records,
    torch_import,
    train,
    votes,
)

# The library's errors whose message is written for people (what is wrong, the path or option to
# fix it): a script prints it as one line instead of a traceback; --debug shows the traceback.
KNOWN_ERRORS = (
    checkpoint.CheckpointError,
    data.DatasetNotFoundError,
    imagefolder.BadImageError,
    locks.OutputLockedError,
    records.RunRecordError,
    votes.NonFiniteLogitsError,
    torch_import.CheckpointImportError,
    train.DifferentRunError,
    train.NonFiniteLossError,
    monitor.CollapseError,
)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of a known error instead of its one-line message",
    )


def run(main, argv=None) -> None:
    """Runs a script's main(argv); a known rsjax error (KNOWN_ERRORS) is printed on stderr as one
    line, `NAME: error: MESSAGE`, with exit status 1, unless argv holds --debug (then it is raised
    with its traceback). Everything written before the error (rows, checkpoints) stays."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        main(argv)
    except KNOWN_ERRORS as e:
        if "--debug" in argv:
            raise
        name = pathlib.Path(sys.argv[0]).name or "rsjax"
        message = " ".join(str(e).split())
        print(f"{name}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        sys.exit(1)


def load_config(spec: str, *, smoke: bool) -> dict:
    """Runs get_config(smoke, **args) of a config file: "path.py" or "path.py:name=value,..."
    (values parsed as numbers where they are numbers), as ml_collections config strings do."""
    path, _, arg_text = str(spec).partition(":")
    path = pathlib.Path(path)
    if not path.is_file():
        raise SystemExit(f"config file not found: {path}")
    args = {}
    for item in filter(None, arg_text.split(",")):
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"config argument {item!r} is not name=value")
        args[name.strip()] = _number_or_text(value.strip())
    if str(path.parent) not in sys.path:  # configs may share experiments/configs/methods.py
        sys.path.insert(0, str(path.parent))
    module_spec = importlib.util.spec_from_file_location(f"rsjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        return module.get_config(smoke=smoke, **args)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"config {spec}: {e}") from e


def _number_or_text(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=None,
        help="tfds data directory (default: $RSJAX_DATA_DIR or ~/.cache/rsjax/tensorflow_datasets)",
    )
    parser.add_argument(
        "--data-source-dir",
        default=None,
        help="folder with the raw dataset files (IDX .gz for mnist/fashion_mnist, "
        "cifar-10-batches-py or its tar.gz for cifar10, the folder holding val/ for imagenet "
        "(default $IMAGENET_DIR), the folder holding SPLIT/ for image_folder)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="download the raw files when nothing local is found (needs a network)",
    )


def train_and_test(config: dict, args) -> tuple[data.Dataset, data.Dataset]:
    """(train, test) splits of the config's dataset; mnist5k holds out every k-th image as test, or
    with holdout_every = 0 trains on all 5,000 and tests on the MNIST test split (--data-source-dir)."""
    kw = dict(data_dir=args.data_dir, source_dir=args.data_source_dir, download=args.download)
    if config["dataset"] == "mnist5k":
        if config["holdout_every"] == 0:  # --data-source-dir is the MNIST test split's then
            return data.load("mnist5k", "train", data_dir=args.data_dir), data.load(
                "mnist", "test", **kw
            )
        return data.holdout(data.load("mnist5k", "train", **kw), every=config["holdout_every"])
    return data.load(config["dataset"], "train", **kw), data.load(config["dataset"], "test", **kw)


def fit(key, workdir, config: dict, train_set: data.Dataset, held_out: data.Dataset, **overrides):
    """Trains what the config names (`pieces`) with its schedule: the one place a config's settings
    become keyword arguments. Held-out metrics are logged after every epoch."""
    trainer, pieces = _pieces(config, train_set, held_out)
    return trainer(
        key,
        workdir,
        images=train_set.images,
        **pieces,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        learning_rate=config["learning_rate"],
        momentum=config.get("momentum", 0.9),
        weight_decay=config.get("weight_decay", 0.0),
        schedule=config["schedule"],
        decay_every_epochs=config.get("decay_every_epochs", 0),
        lr_warmup_epochs=config.get("lr_warmup_epochs", 0),
        clip_norm=config.get("clip_norm"),
        microbatches=config.get("microbatches", 1),
        checkpoint_every=config["checkpoint_every"],
        **overrides,
    )


def _pieces(config: dict, train_set: data.Dataset, held_out: data.Dataset):
    """(trainer, its model and loss options) that the config names: a registered classifier and a
    loss of rsjax.losses for rsjax.train.fit (the default kind), a score model for
    rsjax.empirical_bayes.fit_denoiser (kind "denoiser", on the images alone), or a classifier on
    the xhat of the denoiser in denoiser_workdir for fit_xhat (kind "xhat"). Both wrap train.fit."""
    kind = config.get("kind", "classifier")
    if kind == "denoiser":
        return empirical_bayes.fit_denoiser, dict(
            score_model=config["score_model"],
            dataset=config["dataset"],
            sigma=config["sigma"],
            eval_images=held_out.images,
        )
    classifier = dict(
        labels=train_set.labels,
        model=config["model"],
        dataset=config["dataset"],
        num_classes=data.num_classes(config["dataset"]),
        k=config["k"],
        eval_images=held_out.images,
        eval_labels=held_out.labels,
    )
    if kind == "xhat":
        return empirical_bayes.fit_xhat, dict(
            classifier,
            denoiser_dir=config["denoiser_workdir"],
            sigma=config["sigma"],  # the denoiser's, checked
            eps=config["eps"],
            num_steps=config["num_steps"],
            warmup_steps=_warmup_steps(config, len(train_set.labels)),
            finetune=config["finetune"],
        )
    if kind != "classifier":
        raise SystemExit(f"config kind must be classifier, denoiser or xhat, got {kind!r}")
    return train.fit, dict(
        classifier,
        loss=config["loss"],
        sigma=config["sigma"],
        loss_options=_with_warmup(config, len(train_set.labels)),
    )


def _warmup_steps(config: dict, num_train: int) -> int:
    """The attack's (or MACER's lam) warm-up, config warmup_epochs, in steps."""
    return config.get("warmup_epochs", 0) * (num_train // config["batch_size"])


def _with_warmup(config: dict, num_train: int) -> dict:
    """Loss options, with the attack's eps warm-up converted from epochs to steps."""
    options = dict(config["loss_options"])
    if "warmup_steps" in options:
        options["warmup_steps"] = _warmup_steps(config, num_train)
    return options
