"""Test set-up: four host (CPU) devices, forced before JAX initialises its backend.

Invariance tests compare one device with four; everything else simply runs on the CPU.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def mnist_test_dir():
    """The real MNIST test set beside the checkout (../shared/data/mnist-test)."""
    path = SHARED / "data" / "mnist-test"
    if not (path / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST test set not found at {path}")
    return path
