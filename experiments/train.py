"""Train a base classifier with noise augmentation from a config file; resumes from --workdir.

  python experiments/train.py --config experiments/configs/mnist5k_lenet_gaussian.py \
      --workdir runs/mnist5k_lenet [--smoke]
"""

import argparse
import sys

import cli
import jax

from rsjax import records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="experiments/configs/*.py")
    parser.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings that run in seconds")
    parser.add_argument(
        "--stop-after-step",
        type=int,
        default=None,
        help="stop (with a checkpoint) after this many steps in total",
    )
    cli.add_data_flags(parser)
    args = parser.parse_args(argv)
    config = cli.load_config(args.config, smoke=args.smoke)
    train_set, held_out = cli.train_and_test(config, args)
    records.check_writable(f"{args.workdir}/config.json")
    records.write_json(
        f"{args.workdir}/config.json",
        {
            "config": config,
            "config_file": args.config,
            "smoke": args.smoke,
            **records.environment(),
        },
    )
    state = cli.fit(
        jax.random.key(config["seed"]),
        args.workdir,
        config,
        train_set,
        held_out,
        stop_after_step=args.stop_after_step,
    )
    print(
        f"trained to step {int(state.step)}; checkpoints in {args.workdir}/checkpoints",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
