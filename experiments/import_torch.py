"""Convert a PyTorch checkpoint into an rsjax checkpoint that experiments/certify.py certifies (without
torch): Cohen et al.'s released models, or a state_dict of an rsjax architecture trained in PyTorch.

  pip install -e ".[torch]"      # only this conversion needs torch
  python experiments/import_torch.py models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar \
      --out runs/cohen_cifar10_resnet110_0.25
  python experiments/certify.py --workdir runs/cohen_cifar10_resnet110_0.25 --skip 20 --n 100000 \
      --outdir runs/cohen_cifar10_resnet110_0.25/certify

The architecture comes from the file (Cohen et al.'s "arch") or --arch, the dataset from the
architecture (cifar_resnet*: cifar10, resnet50: imagenet) or --dataset, sigma from --sigma or a
`noise_S` component of the path (else none is recorded and certify.py needs --sigma). The file is
read with torch.load(weights_only=True): nothing in it runs (rsjax.torch_import). The meta records
the file's path and sha256.
"""

import argparse

from rsjax import torch_import


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="the PyTorch file (.pth, .pth.tar)")
    p.add_argument("--out", required=True, help="run directory to create (writes OUT/checkpoints)")
    p.add_argument(
        "--arch",
        default=None,
        choices=torch_import.ARCHITECTURES,
        help="default: the file's 'arch' (needed for a bare state_dict)",
    )
    p.add_argument(
        "--dataset", default=None, help="default: the architecture's (cifar10, imagenet)"
    )
    p.add_argument(
        "--sigma",
        type=float,
        default=None,
        help="the noise level it was trained with (default: from a noise_S path component)",
    )
    args = p.parse_args(argv)
    sigma = args.sigma if args.sigma is not None else torch_import.sigma_from_path(args.checkpoint)
    try:
        imported = torch_import.load_checkpoint(
            args.checkpoint, arch=args.arch, dataset=args.dataset
        )
        ckpt_dir = torch_import.write_checkpoint(imported, args.out, sigma=sigma)
    except torch_import.CheckpointImportError as e:
        p.exit(1, f"{p.prog}: error: {e}\n")
    print(
        f"wrote {ckpt_dir}: {imported.arch} on {imported.dataset}, {imported.num_classes} classes, "
        f"sigma {sigma if sigma is not None else 'not recorded (pass --sigma to certify.py)'}, "
        f"from {imported.source['path']} (sha256 {imported.source['sha256']})"
    )


if __name__ == "__main__":
    main()
