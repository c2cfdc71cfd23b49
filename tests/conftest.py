"""Test set-up: four host (CPU) devices, forced before JAX initialises its backend.

Invariance tests compare one device with four; everything else simply runs on the CPU.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session's processes (pytest-xdist workers and the scripts
# the smoke tests start, which inherit the environment): the same train and vote-counting steps are
# compiled by many of them. The cache key covers the program, the flags and the versions.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"rsjax-tests-jax-cache-{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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
