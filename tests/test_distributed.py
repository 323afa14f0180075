"""Multi-worker training (two TF_CONFIG workers on 127.0.0.1) and resuming a killed run from its backup."""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import pytest

pytestmark = pytest.mark.slow
TRAIN = ["train", "--arch", "tiny_cnn", "--augment", "none", "--batch-size", "32", "--seed", "1",
         "--val-fraction", "0.3"]


@pytest.fixture(scope="module")
def manifest(kermany, tmp_path_factory):
    """A few hundred real training images (every 8th of each class), listed by absolute path: nothing copied."""
    path = tmp_path_factory.mktemp("mw") / "subset.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        for cls in ("NORMAL", "PNEUMONIA"):
            for f in sorted((kermany / "train" / cls).iterdir())[::8][:200]:
                writer.writerow([f, cls, "train"])
    return path


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_workers(args, log_dir, tag):
    """Two `edgecxr train` workers with one TF_CONFIG each; returns [(process, log path), ...]."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    workers = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        log = log_dir / f"{tag}-worker{index}.log"
        with log.open("w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "edgecxr.cli", *args], env=env, stdout=fh, stderr=fh)
        workers.append((proc, log))
    return workers


def _wait(workers, timeout=600):
    for proc, log in workers:
        assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    return [log.read_text() for _, log in workers]


def _metrics(run):
    return json.loads((run / "val_metrics.json").read_text())


def test_two_workers_write_one_run_folder_with_single_worker_metrics(manifest, tmp_path):
    args = [*TRAIN, "--data", str(manifest), "--epochs", "1"]
    single = subprocess.run([sys.executable, "-m", "edgecxr.cli", *args, "--out", str(tmp_path / "single")],
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    out = tmp_path / "multi" / "run"
    logs = _wait(_start_workers([*args, "--out", str(out)], tmp_path, "two"))
    # one complete run folder, written by the chief only: nothing else beside it, no backup left behind
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]
    for name in ("model.keras", "model.json", "split.json", "history.csv", "val_metrics.json", "val_predictions.npz",
                 "training_curves.png", ".edgecxr-output"):
        assert (out / name).is_file(), name
    assert all("run written to" in log for log in logs)
    one, two = _metrics(tmp_path / "single"), _metrics(out)
    assert one["n"] == two["n"] > 100
    multi = np.load(out / "val_predictions.npz")
    assert list(multi["rel"]) == list(np.load(tmp_path / "single" / "val_predictions.npz")["rel"])
    # the same model trained on the same images; only the order of the batches differs (each worker shuffles
    # its half): one epoch of a tiny CNN lands within a few points of AUC
    assert abs(one["roc_auc"] - two["roc_auc"]) < 0.08 and two["roc_auc"] > 0.7, (one, two)
    assert abs(one["accuracy"] - two["accuracy"]) < 0.12, (one, two)


def test_killed_worker_resumes_at_the_last_finished_epoch(manifest, tmp_path):
    out = tmp_path / "run"
    args = [*TRAIN, "--data", str(manifest), "--epochs", "4", "--out", str(out)]
    epochs_log = tmp_path / "run.backup" / "phase1.epochs.jsonl"
    workers = _start_workers(args, tmp_path, "first")
    deadline = time.time() + 600
    while not (epochs_log.is_file() and epochs_log.read_text().count("\n") >= 1):
        assert time.time() < deadline and all(p.poll() is None for p, _ in workers), workers[0][1].read_text()[-3000:]
        time.sleep(0.2)
    workers[1][0].send_signal(signal.SIGKILL)  # a lost worker, mid-training
    workers[1][0].wait()
    try:  # the chief cannot go on alone: it stops with one line saying how to resume
        assert workers[0][0].wait(timeout=120) == 2
        assert "error: a training worker was lost" in workers[0][1].read_text()
    finally:
        if workers[0][0].poll() is None:
            workers[0][0].send_signal(signal.SIGKILL)
            workers[0][0].wait()
    assert not out.exists()
    done = [json.loads(line) for line in epochs_log.read_text().splitlines()]
    assert 1 <= len(done) < 4 and (tmp_path / "run.backup" / "phase1" / "chief").is_dir()

    logs = _wait(_start_workers(args, tmp_path, "restart"))  # both started again with the same command
    resumed = len(done) + 1
    assert f"continuing at epoch {resumed}" in logs[0]
    assert _metrics(out)["resumed_at_epoch"] == {"phase1": resumed}
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]  # the whole history, not only the resumed epochs
    assert float(rows[0]["loss"]) == pytest.approx(done[0]["loss"])
    assert not (tmp_path / "run.backup").exists()  # removed once the run is complete


def test_backup_of_another_configuration_is_refused(manifest, tmp_path):
    from edgecxr.utils.errors import ConfigError
    from edgecxr.training.distribute import Backup

    Backup(tmp_path / "b", chief=True).check({"epochs": 3})
    Backup(tmp_path / "b", chief=False).check({"epochs": 3})
    with pytest.raises(ConfigError, match="different training configuration"):
        Backup(tmp_path / "b", chief=True).check({"epochs": 4})
    # an option edgecxr gained after the backup was made resumes while it keeps its default, and only then
    Backup(tmp_path / "b", chief=True).check({"epochs": 3, "consistency": 0.0}, defaults={"consistency": 0.0})
    Backup(tmp_path / "c", chief=True).check({"epochs": 3})
    with pytest.raises(ConfigError, match="different training configuration"):
        Backup(tmp_path / "c", chief=True).check({"epochs": 3, "consistency": 1.0}, defaults={"consistency": 0.0})


def test_backup_accepts_the_same_folder_named_relative_or_absolute(tmp_path, monkeypatch):
    from edgecxr.training.distribute import Backup
    from edgecxr.training.train import TrainConfig, resolved_paths

    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    relative, absolute = TrainConfig(data="data"), TrainConfig(data=str(tmp_path / "data"))
    Backup(tmp_path / "b", chief=True).check(asdict(relative) | resolved_paths(relative))
    Backup(tmp_path / "b", chief=True).check(asdict(absolute) | resolved_paths(absolute))
    assert resolved_paths(TrainConfig(data="data", split_file=None)) == {"data": str(tmp_path / "data")}
