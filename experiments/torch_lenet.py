"""Train rsjax's LeNet *in PyTorch* with Gaussian noise augmentation and save a bare state_dict that
rsjax.torch_import reads as arch `lenet` (keys conv1, conv2, fc1, fc2).

  pip install -e ".[bench]"     # PyTorch
  python experiments/torch_lenet.py --sigma 0.25 --epochs 3 --out runs/torch_lenet/lenet_fashion_0.25.pth
  python experiments/import_torch.py runs/torch_lenet/lenet_fashion_0.25.pth --arch lenet \
      --dataset fashion_mnist --sigma 0.25 --out runs/torch_lenet/imported

The images are rsjax.data.load's (NHWC float32 in [0, 1], transposed to NCHW), so PyTorch and rsjax
see the same pixels; the network normalises them first with the constants rsjax's `lenet` uses for
the dataset (rsjax.models.normalization), which are not in the state_dict. Training: Cohen et al.'s
Gaussian augmentation (cross-entropy on x + sigma * eps, eps ~ N(0, I), no clipping), SGD with
momentum, torch.manual_seed(--seed) for the initial weights, the shuffling and the noise. Writes
OUT (the state_dict) and OUT.json (settings, per-epoch loss and accuracy, clean test accuracy, the
file's sha256, versions, seconds). Refuses to overwrite OUT.

References: Cohen, Rosenfeld & Kolter, ICML 2019 (code/train.py: Gaussian augmentation);
benchmarks/torch_twins.py (the LeNet).
"""

import argparse
import hashlib
import json
import pathlib
import platform
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_twins  # noqa: E402

from rsjax import data, models  # noqa: E402


def train(images, labels, *, sigma, epochs, batch_size, lr, momentum, weight_decay, seed, log):
    """The trained torch_twins.LeNet (in eval mode) and one dict per epoch (loss, noisy accuracy).

    images: (N, C, H, W) float32 tensor in [0, 1]; labels: (N,) int64 tensor."""
    torch.manual_seed(seed)
    dataset = "fashion_mnist"
    net = torch_twins.LeNet(10, (images.shape[2], images.shape[3], images.shape[1]))
    model = nn.Sequential(torch_twins.Normalize(*models.normalization("lenet", dataset)), net)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(labels))
        total_loss, correct, t0 = 0.0, 0, time.perf_counter()
        for start in range(0, len(labels), batch_size):
            batch = order[start : start + batch_size]
            x, y = images[batch], labels[batch]
            logits = model(x + sigma * torch.randn_like(x))
            loss = nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            correct += int((logits.argmax(1) == y).sum())
        row = {
            "epoch": epoch + 1,
            "loss": total_loss / len(labels),
            "noisy_train_accuracy": correct / len(labels),
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        log(
            f"epoch {row['epoch']}: loss {row['loss']:.4f}, noisy train accuracy "
            f"{row['noisy_train_accuracy']:.4f}, {row['seconds']:.0f} s"
        )
    return net.eval(), model.eval(), history


def accuracy(model, images, labels, batch_size=1000) -> float:
    with torch.inference_mode():
        hits = sum(
            int((model(images[s : s + batch_size]).argmax(1) == labels[s : s + batch_size]).sum())
            for s in range(0, len(labels), batch_size)
        )
    return hits / len(labels)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sigma", type=float, required=True, help="training noise, [0,1] pixel units")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--out", required=True, help="the state_dict file to write (.pth)")
    p.add_argument("--data-source-dir", default=None)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    if out.exists():
        p.exit(1, f"{p.prog}: error: {out} exists; choose another --out or delete it\n")
    torch.set_num_threads(args.threads)
    splits = {
        s: data.load("fashion_mnist", s, data_dir=args.data_dir, source_dir=args.data_source_dir)
        for s in ("train", "test")
    }
    tensors = {
        s: (torch_twins.to_nchw(d.images), torch.from_numpy(np.asarray(d.labels, np.int64)))
        for s, d in splits.items()
    }
    t0 = time.perf_counter()
    net, model, history = train(
        *tensors["train"],
        sigma=args.sigma,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        seed=args.seed,
        log=lambda line: print(line, flush=True),
    )
    seconds = time.perf_counter() - t0
    clean = accuracy(model, *tensors["test"])
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.save(net.state_dict(), partial)  # keys conv1, conv2, fc1, fc2: rsjax's `lenet`
    partial.rename(out)
    sha256 = hashlib.sha256(out.read_bytes()).hexdigest()
    record = {
        "command": " ".join(["python", "experiments/torch_lenet.py", *(argv or sys.argv[1:])]),
        "arch": "lenet",
        "dataset": "fashion_mnist",
        "normalization": models.normalization("lenet", "fashion_mnist"),
        **{k: v for k, v in vars(args).items() if k not in ("out", "data_dir", "data_source_dir")},
        "history": history,
        "clean_test_accuracy": clean,
        "train_seconds": seconds,
        "sha256": sha256,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out.with_name(out.name + ".json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out} (sha256 {sha256}); clean test accuracy {clean:.4f}; {seconds:.0f} s")


if __name__ == "__main__":
    main()
