"""Parity on a Ray cluster (pip install 'edgecxr[ray]'): Ray Data over the image list, one Classifier per
worker (`map_batches` with a callable class), then the report from the per-image predictions, by the same
function as an unsharded run and `edgecxr device merge` (edgecxr.devices.parity.parity_from_predictions).

    from edgecxr.devices.distributed import parity_ray
    report = parity_ray("bundles/tflite-int8", "data/kermany-cxr-224", address="auto")

The bundle and the images must be readable at the same paths on every node (a shared file system);
a CSV manifest of absolute paths (`path,label`) lists images of any number and location.
"""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from edgecxr.parity.comparison import PARITY_BOOTSTRAP
from edgecxr.data.folders import DEFAULT_CLASSES, Sample
from edgecxr.utils.errors import ConfigError, MissingDependencyError, first_line, require

CONNECT_TIMEOUT = 5.0  # seconds to reach a Ray head given as HOST:PORT



class ParityWorker:
    """One Classifier per Ray worker, kept for every batch it gets."""

    def __init__(self, bundle: str, context: dict, runtime=None, threads=None, trusted_key=None):
        from edgecxr.devices.classifier import Classifier

        self.clf = Classifier.load(bundle, runtime=runtime, threads=threads, trusted_key=trusted_key)
        self.context = context

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from edgecxr.devices.parity import predict_records

        indexed = [(int(i), Sample(Path(p), str(rel), int(label), str(patient)))
                   for i, p, rel, label, patient in zip(batch["index"], batch["path"], batch["rel"], batch["label"],
                                                        batch["patient"])]
        records = predict_records(self.clf, indexed, self.context, workers=1, strict=False)
        return {"record": np.array([json.dumps(r) for r in records], dtype=object)}


def parity_ray(bundle, data, *, split: str = "test", classes=DEFAULT_CLASSES, tolerances=None,
               reference: str = "auto", address: str | None = "local", workers: int | None = None,
               runtime: str | None = None, threads: int | None = 1, trusted_key=None, batch_size: int = 32,
               n_boot: int = PARITY_BOOTSTRAP) -> dict:
    """The parity report of BUNDLE on the images under `data`, classified by Ray workers.

    address: "local" (or None) starts a Ray instance on this machine unless one is running (ray.init was
    called); "auto" or "ray://HOST:PORT" joins a cluster. workers: classifier actors (default: the
    cluster's CPUs, one each). threads: the runtime's threads per worker.
    """
    from edgecxr.parity import shards
    from edgecxr.devices.classifier import Classifier
    from edgecxr.utils.cpu import host_info
    from edgecxr.devices.parity import parity_context, parity_from_predictions, parity_samples

    clf = Classifier.load(bundle, runtime=runtime, threads=threads, trusted_key=trusted_key)
    samples = parity_samples(clf, data, split, classes, reference)
    context = parity_context(clf, samples, split, reference, data)
    started = _connect(address)
    try:
        t0 = time.perf_counter()
        records = _classify(samples, str(Path(bundle).resolve()), context, workers, batch_size,
                            dict(runtime=runtime, threads=threads, trusted_key=trusted_key and str(trusted_key)))
        doc = shards.document("parity", context, samples, (1, 1), records, time.perf_counter() - t0, host_info())
    finally:
        if started:
            require("ray", "ray").shutdown()
    return parity_from_predictions(doc, tolerances, n_boot=n_boot)


def _connect(address: str | None) -> bool:
    """ray.init unless already initialized; True when this call started it."""
    ray = require("ray", "ray")
    if ray.is_initialized():
        return False
    if address not in (None, "local") and not (address == "auto" or address.startswith(("ray://", "http"))
                                              or ":" in address):
        raise ConfigError(f"--ray {address!r}: expected no value (a local Ray), 'auto', or HOST:PORT / ray://HOST:PORT")
    if address not in (None, "local", "auto"):
        _reachable(address)
    try:
        ray.init(address=None if address in (None, "local") else address, include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:  # Ray's own errors derive from these
        raise ConfigError(f"--ray {address}: Ray could not connect ({first_line(exc)}); start the cluster with "
                          f"`ray start --head` or check the address") from None
    return True


def _reachable(address: str, seconds: float = CONNECT_TIMEOUT) -> None:
    """A bounded TCP connect to HOST:PORT first: ray.init waits minutes, silently, for a head that is not there."""
    import socket

    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise MissingDependencyError(f"--ray {address}: Ray Client (ray://) needs grpcio; pip install 'ray[client]'")
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--ray {address!r}: expected HOST:PORT (a port from 1 to 65535) or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=seconds).close()
    except OSError as exc:
        raise ConfigError(f"--ray {address}: nothing answers at {host}:{port} within {seconds:g} s ({exc.strerror or exc}); "
                          f"start the head node (`ray start --head --port {port}`) or check the address") from None


def _classify(samples, bundle: str, context: dict, workers, batch_size: int, load: dict) -> list[dict]:
    import ray

    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    items = [{"index": i, "path": str(s.path), "rel": s.rel, "label": s.label, "patient": s.patient}
             for i, s in enumerate(samples)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), workers * 4)))
    out = ds.map_batches(ParityWorker, fn_constructor_kwargs={"bundle": bundle, "context": context, **load},
                         batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
                         batch_format="numpy")
    return sorted((json.loads(row["record"]) for row in out.iter_rows()), key=lambda r: r["index"])
