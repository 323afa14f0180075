"""Writers that never leave half a result: build in a temporary path, rename when complete. And read_small,
the bounded reader of small files (keys, tokens, manifests)."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from edgecxr.utils.errors import ConfigError, EdgecxrError

MARKER = ".edgecxr-output"  # in every folder edgecxr builds: --overwrite replaces only folders holding it (or a bundle)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once at import: os.umask is process-wide, not thread-safe


def _input_paths(given: Path) -> list[Path]:
    """What an input stands for: itself, the images a CSV manifest lists, and where the symlinks inside
    a data folder really point."""
    paths = [given]
    if given.is_file() and given.suffix.lower() == ".csv":
        from edgecxr.data.folders import csv_paths
        from edgecxr.utils.errors import DataError

        try:
            paths += csv_paths(given)
        except DataError:
            pass  # an unreadable CSV is reported by the command that reads it
    elif given.is_dir():
        for folder, dirs, files in os.walk(given):
            paths += [Path(folder, n) for n in dirs + files if os.path.islink(os.path.join(folder, n))]
    return paths


def refuse_overlap(path, inputs=(), flag: str = "--out") -> None:
    """Refuse an output that equals, contains or sits inside one of `inputs` (symlinks resolved; a CSV
    manifest's images and the targets of symlinks in a data folder count as inputs too)."""
    out = Path(path).resolve()
    expanded = [(given, p) for given in inputs if given is not None for p in _input_paths(Path(given))]
    for given, src in expanded:
        src = Path(src).resolve()
        what = ("is" if out == src else "contains" if src.is_relative_to(out)
                else "is inside" if out.is_relative_to(src) else None)
        if what:
            named = given if src == Path(given).resolve() else f"{src} (through {given})"
            raise ConfigError(f"{flag} {path} {what} the input {named}; choose an output outside the inputs")


def is_edgecxr_output(path: Path) -> bool:
    """A folder edgecxr wrote: it holds the marker, or it is a bundle (its manifest says so)."""
    path = Path(path)
    if (path / MARKER).is_file():
        return True
    try:
        return json.loads((path / "manifest.json").read_text()).get("format") == "edgecxr-bundle"
    except (OSError, ValueError, AttributeError):
        return False


def check_writable(path: Path, *, overwrite: bool = False, inputs=(), flag: str = "--out") -> None:
    """Fail early (before hours of work) when the output folder `path` cannot or must not be created.

    Refused: a path that overlaps an input, an existing non-empty one without --overwrite, and with
    --overwrite anything edgecxr did not write (a plain file, a folder without the marker).
    """
    path = Path(path)
    refuse_overlap(path, inputs, flag)
    clean_stale(path)  # leftovers of a killed earlier run (and a half-done swap put back)
    exists = path.exists() or path.is_symlink()
    if exists and not (path.is_dir() and not any(path.iterdir())):
        if not path.is_dir() or not is_edgecxr_output(path):
            raise EdgecxrError(f"{flag} {path} exists and is not an edgecxr output (no {MARKER} marker or bundle "
                               f"manifest); --overwrite replaces only what edgecxr wrote: choose another {flag}")
        if not overwrite:
            raise EdgecxrError(f"{path} already exists; choose another {flag} or pass --overwrite")
    parent = path.parent
    parent_exists = parent if parent.exists() else next((p for p in parent.parents if p.exists()), Path("."))
    if not os.access(parent_exists, os.W_OK):
        raise EdgecxrError(f"cannot write to {parent_exists}: permission denied; choose another {flag}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale(final: Path) -> list[Path]:
    """Remove the hidden `.NAME.tmp-PID-*` / `.NAME.old-PID` siblings of `final` left by a killed writer.

    Only leftovers of processes that no longer run are touched. If a writer died between
    its two renames (old result moved aside, new one not yet in place), the old result is
    put back as `final`. Returns the paths removed or restored.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(tmp|old)-(\d+)(?:-.*)?")
    done = []
    for p in sorted(final.parent.iterdir()):
        m = pattern.fullmatch(p.name)
        if not m or _pid_alive(int(m[2])):
            continue
        with contextlib.suppress(OSError):
            if m[1] == "old" and not final.exists() and not final.is_symlink():
                os.rename(p, final)  # the swap was cut in half: the previous result comes back
            elif p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            done.append(p)
    return done


@contextlib.contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False):
    """Yield a temporary folder beside `final`; it replaces `final` only if the block succeeds."""
    final = Path(final)
    check_writable(final, overwrite=overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes it private (0700); results are ordinary folders
    try:
        yield tmp
        (tmp / MARKER).write_text("written by edgecxr: --overwrite may replace this folder\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the OS has no such call."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 (musl before 1.2.3, ...)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # old kernel or a file system without it
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink()


def replace_dir(new: Path, final: Path) -> None:
    """Rename `new` to `final`; an existing `final` is exchanged with it atomically where the OS can, then deleted.

    Elsewhere it is renamed aside first; a writer killed between the two renames leaves it as
    `.FINAL.old-PID`, which `clean_stale` (run by every later writer) puts back.
    """
    if final.exists() or final.is_symlink():
        if _exchange(new, final):  # `final` holds the new result, `new` the previous one: at no moment is it missing
            _remove(new)
            return
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.rename(final, old)
        os.rename(new, final)
        _remove(old)
    else:
        os.rename(new, final)


def sha256_file(path) -> str:
    """SHA-256 of a file, read 1 MB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    if path.exists() and not path.is_file():  # renaming over /dev/null as root would replace the device node
        raise ConfigError(f"{path}: not a regular file (a device, FIFO or folder); pass a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes it private (0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data) -> None:
    """Always valid JSON: a NaN or infinite number is written as null (bare NaN tokens are not JSON)."""
    write_text_atomic(path, json.dumps(finite(data), indent=2, default=str, allow_nan=False) + "\n")


def finite(value):
    """value with every non-finite float replaced by None (dicts, lists and tuples walked)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if hasattr(value, "dtype") and getattr(value, "shape", None) == ():  # a numpy scalar
        return finite(value.item())
    return value


SMALL_FILE = 64 << 10  # keys, tokens, signatures: a PEM key is a few hundred bytes


def read_small(path, what: str, *, limit: int = SMALL_FILE, error=ConfigError) -> bytes:
    """The bytes of a small regular file, or `error` in one line starting with `what` (the option and path):
    /dev/zero would read without end, a FIFO block, a huge file fill the memory."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens without waiting
    except OSError as exc:
        raise error(f"{what}: cannot read it ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what}: not a regular file (a folder, device, FIFO or socket)")
        try:
            data = b"" if info.st_size > limit else fh.read(limit + 1)  # a file that grew is still refused
        except OSError as exc:
            raise error(f"{what}: cannot read it ({exc.strerror or exc})") from None
    if info.st_size > limit or len(data) > limit:
        raise error(f"{what}: larger than {limit:,} bytes, far more than such a file holds")
    return data
