"""One process of the multi-host test (tests/test_multihost.py); not collected by pytest.

  python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR

Every process holds 4 / NUM_PROCESSES CPU devices (4 in all); process 0 writes WORKDIR/result.json
with the training metrics, the final parameters and certification counts.
"""

import json
import sys

import jax

process_id, num_processes, port, workdir = (
    int(sys.argv[1]),
    int(sys.argv[2]),
    sys.argv[3],
    sys.argv[4],
)
jax.config.update("jax_num_cpu_devices", 4 // num_processes)
if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
    )

import pathlib  # noqa: E402

import numpy as np  # noqa: E402

import rsjax  # noqa: E402
from rsjax import models, runs, sharding, train  # noqa: E402

assert jax.device_count() == 4 and jax.process_count() == num_processes
rng = np.random.default_rng(0)  # the same data on every process
labels = rng.integers(0, 4, 64)
images = np.clip(labels[:, None, None, None] / 4 + 0.1 * rng.standard_normal((64, 16, 16, 1)), 0, 1)
images = images.astype(np.float32)
workdir = pathlib.Path(workdir)

state = train.fit(
    jax.random.key(0),
    workdir / "train",
    images=images,
    labels=labels,
    model="lenet",
    dataset="mnist",
    num_classes=4,
    sigma=0.25,
    epochs=2,
    batch_size=16,
    learning_rate=0.05,
    checkpoint_every=4,
    log_every=1,
    show_progress=False,
)
params = sharding.gather(state.params)

model = models.make_model("lenet", num_classes=4, dataset="mnist")
fixed = models.init_variables(model, jax.random.key(3), (16, 16, 1))  # identical everywhere
logits_fn = models.make_logits_fn(model)
cert = rsjax.certify(
    jax.random.key(1),
    logits_fn,
    images[:6],
    params=fixed,
    sigma=0.5,
    n0=20,
    n=200,
    alpha=0.01,
    num_classes=4,
    chunk_size=16,
    batch_size=4,
)
runs.certify_dataset(
    jax.random.key(2),
    logits_fn,
    fixed,
    images,
    labels,
    range(0, 12, 2),
    outputs={"cohen": workdir / "cohen.tsv"},
    sigma=0.5,
    n0=20,
    n=200,
    alpha=0.01,
    num_classes=4,
    batch_size=4,
    show_progress=False,
)

if sharding.is_primary():
    metrics = [json.loads(line) for line in open(workdir / "train" / "metrics.jsonl")]
    (workdir / "result.json").write_text(
        json.dumps(
            {
                "losses": [m["loss"] for m in metrics],
                "steps": [m["step"] for m in metrics],
                "params": [np.asarray(leaf).ravel().tolist() for leaf in jax.tree.leaves(params)],
                "prediction": cert.prediction.tolist(),
                "radius": cert.radius.tolist(),
                "tsv": [
                    line.split("\t")[:5] for line in open(workdir / "cohen.tsv").read().splitlines()
                ],
            }
        )
    )
print(f"process {process_id} done", flush=True)
