"""Training images streamed from disk: read, decoded and preprocessed (PreprocessSpec, Pillow) inside the
tf.data pipeline, in parallel, so memory does not grow with the number of images; optionally cached on disk."""
from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import threading
from pathlib import Path

import numpy as np

from edgecxr.utils.errors import DataError, ImageError
from edgecxr.data.preprocess import PreprocessSpec

CACHE_SHUFFLE_BUFFER = 2048  # images (about 100 MB at 224 px): a cached epoch is shuffled within this window


class Skipped:
    """Unreadable images met while streaming (thread-safe: the loader runs in parallel), reported once each."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.bad: dict[str, str] = {}  # path -> message
        self.error: ImageError | None = None  # the first one, raised again in strict mode
        self.fatal: DataError | None = None  # every file of a pipeline was unreadable
        self._reported = 0
        self._lock = threading.Lock()

    def add(self, path: str, exc: ImageError) -> None:
        with self._lock:
            self.bad.setdefault(path, str(exc))
            self.error = self.error or exc

    def report(self) -> None:
        """One warning line for the files skipped since the last report (as load_pixels prints)."""
        with self._lock:
            new = list(self.bad.values())[self._reported:]
            self._reported = len(self.bad)
        if new:
            print(f"warning: skipped {len(new)} unreadable image(s), first: {new[0]}", file=sys.stderr)

    def kept(self, samples) -> list:
        return [s for s in samples if str(s.path) not in self.bad]

    @contextlib.contextmanager
    def raising(self, tf, samples):
        """Turn a streaming failure into the edgecxr error behind it: the first unreadable file (strict), or
        'no readable images' when every file was skipped."""
        try:
            yield
        except (tf.errors.OpError, ValueError):
            if self.strict and self.error is not None:
                raise self.error from None
            if self.fatal is not None:
                raise self.fatal from None
            if samples and not self.kept(samples):
                raise DataError("no readable images left after skipping unreadable files") from None
            raise
        if samples and not self.kept(samples):
            raise DataError("no readable images left after skipping unreadable files")


def cache_file(cache_dir, name: str, paths, spec: PreprocessSpec, shard: tuple[int, int]) -> str:
    """DIR/NAME-HASH: one cache per file list (in its order), preprocessing and shard; another spec never reads it."""
    key = json.dumps({"files": [str(p) for p in paths], "spec": spec.to_dict(), "shard": list(shard)})
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if not prefix.with_name(prefix.name + ".index").exists():  # unfinished: a run killed while writing it
        for stale in [*folder.glob(f"{prefix.name}_*.lockfile"), *folder.glob(f"{prefix.name}_*.tempstate*")]:
            stale.unlink(missing_ok=True)  # else TensorFlow refuses the prefix for ever
    return str(prefix)


def pixel_dataset(tf, samples, spec: PreprocessSpec, skipped: Skipped, *, shuffle: bool = False, seed: int = 0,
                  cache: str | None = None, shard: tuple[int, int] = (1, 0), name: str = "train"):
    """(uint8 pixels (size, size), float32 label, int index into samples[shard]) per readable image, decoded
    exactly as spec.load_input does.

    Only the file names are held in memory (and shuffled); the images are decoded by parallel calls. `shard`
    (count, index) keeps every count-th file before anything is read (one worker's part). With `cache` (a
    folder), the decoded pixels of the first pass are written there and read back by later epochs and runs.
    """
    samples = list(samples)[shard[1]::shard[0]]
    order = np.random.default_rng(seed).permutation(len(samples)) if (shuffle and cache) else np.arange(len(samples))
    paths = np.array([str(samples[i].path) for i in order], dtype=object).astype(str)
    labels = np.array([samples[i].label for i in order], np.float32)
    size = spec.size
    unreadable: set[str] = set()

    def load(path):
        path = path.decode()
        try:
            return spec.to_pixels(spec.read(path)), True
        except ImageError as exc:
            skipped.add(path, exc)
            if skipped.strict:
                raise
            unreadable.add(path)
            if len(unreadable) == len(paths):  # a repeating pipeline would search for ever
                skipped.fatal = DataError("no readable images left after skipping unreadable files")
                raise skipped.fatal from None
            return np.zeros((size, size), np.uint8), False

    def decode(path, label, index):
        pixels, ok = tf.numpy_function(load, [path], [tf.uint8, tf.bool], stateful=False)
        pixels.set_shape((size, size))
        ok.set_shape(())
        return pixels, label, index, ok

    def readable(pixels, label, index, ok):
        return ok

    def without_flag(pixels, label, index, ok):
        return pixels, label, index

    ds = tf.data.Dataset.from_tensor_slices((paths, labels, order.astype(np.int64)))
    if shuffle and not cache:  # names only: a full shuffle costs a few bytes per image
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache(cache_file(cache, name, paths, spec, shard))
        if shuffle:  # the cached order is already a seeded permutation; reshuffle within a window each epoch
            ds = ds.shuffle(CACHE_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    return ds.filter(readable).map(without_flag)


class Inputs:
    """The images of one training run as tf.data elements (pixels, label, index): streamed from disk (the
    default) or, with in_memory, decoded once into an array (faster epochs for small sets; memory grows)."""

    def __init__(self, tf, spec: PreprocessSpec, *, strict: bool = False, seed: int = 0, cache: str | None = None,
                 in_memory: bool = False):
        self.tf, self.spec, self.seed, self.cache, self.in_memory = tf, spec, seed, cache, in_memory
        self.skipped = Skipped(strict)
        self._arrays: dict = {}

    def elements(self, samples, name: str, *, shuffle: bool = False, shard: tuple[int, int] = (1, 0)):
        if not self.in_memory:
            return pixel_dataset(self.tf, samples, self.spec, self.skipped, shuffle=shuffle, seed=self.seed,
                                 cache=self.cache, shard=shard, name=name)
        pixels, labels, index = self._load(samples, name, shard)
        ds = self.tf.data.Dataset.from_tensor_slices((pixels, labels, index))
        return ds.shuffle(len(pixels), seed=self.seed, reshuffle_each_iteration=True) if shuffle else ds

    def _load(self, samples, name, shard):
        from edgecxr.data import folders as D

        if (name, shard) not in self._arrays:
            part = list(samples)[shard[1]::shard[0]]
            pixels, labels, kept, bad = D.load_pixels(part, self.spec, strict=self.skipped.strict,
                                                      progress=f"loading {name}")
            self.skipped.bad.update((str(s.path), msg) for s, msg in bad)
            self.skipped._reported = len(self.skipped.bad)  # load_pixels printed its warning
            position = {s.path: i for i, s in enumerate(part)}
            index = np.array([position[s.path] for s in kept], np.int64)
            self._arrays[(name, shard)] = (pixels, labels.astype(np.float32), index)
        return self._arrays[(name, shard)]
