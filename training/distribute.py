"""Several workers (TF_CONFIG) or GPUs: the strategy, each worker's share of the input, and BackupAndRestore
state so that a run whose worker was lost resumes at its last finished epoch."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from edgecxr.utils.errors import ConfigError


def get_strategy(tf):
    """Several machines (TF_CONFIG), several GPUs, or the default (one GPU or the CPU). Create it before any
    other TensorFlow op: multi-worker collectives are configured at start-up."""
    import os

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """The worker that writes results (TF_CONFIG task 'chief', or worker 0 without one); True on one machine."""
    return bool(strategy.extended.should_checkpoint)


def distribute(tf, strategy, build, batch_size: int, count: int):
    """(dataset, steps per epoch or None) from build((shards, index), batch) -> tf.data.Dataset.

    With several workers, each worker's pipeline lists only its share of the `count` files (nothing is read
    twice) and batches per replica. Keras needs a step count for such a dataset: it repeats, and an epoch is
    one pass over the largest share, so every worker runs the same number of steps."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ConfigError(f"--batch-size {batch_size} must be a multiple of the {replicas} replicas "
                          "(workers x GPUs per worker); it is the global batch")
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return build((1, 0), batch_size), None
    cluster = strategy.cluster_resolver.cluster_spec()
    workers = sum(cluster.num_tasks(job) for job in ("chief", "worker") if job in cluster.jobs)

    def per_worker(context):
        shard = (context.num_input_pipelines, context.input_pipeline_id)
        return build(shard, context.get_per_replica_batch_size(batch_size)).repeat()

    share = -(-count // workers)
    return strategy.distribute_datasets_from_function(per_worker), -(-share // (batch_size // workers))


class Backup:
    """BackupAndRestore in FOLDER: one checkpoint folder per fit (fold, phase), and the chief's per-epoch log,
    so a run restarted with the same command resumes at its last finished epoch with its whole history."""

    def __init__(self, folder, chief: bool):
        self.folder, self.chief = Path(folder), chief
        self.prefix = ""  # "fold2-" in cross-validation
        self.resumed_at: dict[str, int] = {}  # fit name -> first epoch (1-based) run after a restart

    def check(self, config: dict, defaults: dict | None = None) -> None:
        """Refuse a backup left by a different configuration (it would resume someone else's training). An option
        added to edgecxr after the backup was made counts as the same configuration while it keeps its default."""
        saved = self.folder / "config.json"
        text = _dump(config)
        if saved.is_file():
            older = saved.read_text()
            known = json.loads(older)
            same = {k: v for k, v in config.items()
                    if k in known or k not in (defaults or {}) or _dump(v) != _dump(defaults[k])}
            if older != _dump(same):
                raise ConfigError(f"--backup-dir {self.folder} holds the backup of a different training configuration; "
                                  "delete it, or rerun the command that made it, or choose another --backup-dir")
        if self.chief:
            from edgecxr.utils.atomic import write_text_atomic

            write_text_atomic(saved, text)  # the other workers read it at the same time

    def callbacks(self, keras, phase: str, others: list) -> list:
        """BackupAndRestore first (it restores before the others start), the epoch log last (it sees the
        metrics every other callback added, such as the learning rate)."""
        name = self.prefix + phase
        callbacks = [keras.callbacks.BackupAndRestore(str(self.folder / name)), *others]
        if self.chief:
            log = self.folder / f"{name}.epochs.jsonl"

            def write(epoch, logs):
                with log.open("a") as fh:
                    fh.write(json.dumps({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}) + "\n")

            callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=write))
        return callbacks

    def resumed(self, phase: str, epochs_run: list) -> dict[str, list]:
        """The history of the epochs a restarted fit skipped (from the epoch log); {} for a fit from epoch 1."""
        name = self.prefix + phase
        log = self.folder / f"{name}.epochs.jsonl"
        rows = {}
        if log.is_file():
            for line in log.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    rows[row.pop("epoch")] = row  # a repeated epoch: the last run of it
        first = epochs_run[0] if epochs_run else len(rows)
        if first == 0:
            return {}
        self.resumed_at[name] = first + 1
        done = "epoch 1 was" if first == 1 else f"epochs 1-{first} were"
        print(f"resumed from the backup in {self.folder / name}: {done} done, continuing at epoch {first + 1}",
              file=sys.stderr)
        keys = dict.fromkeys(k for row in rows.values() for k in row)
        return {k: [rows.get(epoch, {}).get(k, float("nan")) for epoch in range(first)] for k in keys}

    def discard_if_unused(self) -> None:
        """After a failure: remove the folder unless it holds a finished epoch to resume from."""
        if not any(self.folder.glob("*.epochs.jsonl")):
            self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _dump(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=list) + "\n"
