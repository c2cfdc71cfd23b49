"""Train a base classifier with noise augmentation from a config file; resumes from --workdir.

  python experiments/train.py --config experiments/configs/mnist5k_lenet_gaussian.py \
      --workdir runs/mnist5k_lenet [--smoke] [--fail-on-collapse] [--stop-after-epochs E]

Every epoch's held-out evaluation is checked for collapse (rsjax.monitor.collapse_reason): a warning, or
with --fail-on-collapse an error after that epoch's checkpoint is saved. SIGTERM or Ctrl-C stops the
run after the step in progress, with that step's checkpoint saved (exit status 128 + the signal's
number); rerunning the same command resumes there. The run's config.json is written only once the
workdir's lock is held and its checkpoints are of the same settings: a refused rerun (another
training in the workdir, or a different config) changes no file.
"""

import argparse
import sys

import cli
import jax

from rsjax import preemption, records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="experiments/configs/*.py")
    parser.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings that run in seconds")
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument(
        "--stop-after-step",
        type=int,
        default=None,
        help="stop (with a checkpoint) after this many steps in total",
    )
    stop.add_argument(
        "--stop-after-epochs",
        type=int,
        default=None,
        help="stop (with a checkpoint and that epoch's held-out evaluation) after this many "
        "epochs of the config's schedule (a short check of a long config)",
    )
    parser.add_argument(
        "--fail-on-collapse",
        action="store_true",
        help="stop with an error (after saving that epoch's checkpoint) when the held-out votes "
        "show a collapsed classifier, instead of a warning (classifier and xhat configs)",
    )
    cli.add_data_flags(parser)
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    config = cli.load_config(args.config, smoke=args.smoke)
    if args.fail_on_collapse and config.get("kind", "classifier") == "denoiser":
        parser.error("--fail-on-collapse needs a classifier or xhat config (it reads votes)")
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        parser.error(f"--stop-after-epochs must be >= 1, got {args.stop_after_epochs}")
    train_set, held_out = cli.train_and_test(config, args)
    stop_after_step = args.stop_after_step
    if args.stop_after_epochs is not None:
        stop_after_step = args.stop_after_epochs * (len(train_set.labels) // config["batch_size"])
    records.check_writable(f"{args.workdir}/config.json")

    def write_config():  # once the workdir is locked and checked: a refused run writes nothing
        records.write_json(
            f"{args.workdir}/config.json",
            {
                "config": config,
                "config_file": args.config,
                "smoke": args.smoke,
                **records.environment(),
            },
        )

    try:
        state = cli.fit(
            jax.random.key(config["seed"]),
            args.workdir,
            config,
            train_set,
            held_out,
            stop_after_step=stop_after_step,
            on_start=write_config,
            **({"fail_on_collapse": True} if args.fail_on_collapse else {}),
        )
    except preemption.TrainingInterrupted as stopped:  # SIGTERM / SIGINT: the step is saved
        print(stopped, file=sys.stderr)
        sys.exit(128 + stopped.signum)
    print(
        f"trained to step {int(state.step)}; checkpoints in {args.workdir}/checkpoints",
        file=sys.stderr,
    )


if __name__ == "__main__":
    cli.run(main)
