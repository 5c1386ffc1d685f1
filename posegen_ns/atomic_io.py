"""Atomic, durable writes for every file posegen-ns writes, and checked reads of its caches.

Every file (a cache, a checkpoint, a report, a dataset file, an image) is written the same way
(:func:`atomic_open`): into a temporary sibling ``.NAME.tmp-<pid>-<random>`` in the target's folder, flushed
and ``fsync``-ed, then renamed over the target with ``os.replace`` (atomic on POSIX within one file system),
and the folder is ``fsync``-ed so the rename itself survives a power loss. A process killed at any moment
therefore leaves either the old file or the new one, never a truncated one; an error while writing removes
the temporary file and re-raises. Temporaries left by a killed process are swept by
:func:`remove_stale_temporaries` where a folder is reused (the export's partial folder).

The helpers, one per kind of content: :func:`write_bytes`, :func:`write_text`, :func:`write_json`,
:func:`torch_save`, :func:`save_npz`; PNG images go through the project's one PNG writer
(:func:`posegen_ns.data.capture_data.write_png`), which encodes in memory and calls :func:`write_bytes`.

Caches are read with :func:`read_cache`: a file that cannot be read (a 0-byte or truncated file from an
older version or a damaged disk) is reported in one line naming it, removed, and the caller rebuilds it.
:func:`check_writable` tests an output path up front, so a long job does not fail only at its final write.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Optional, TypeVar

from posegen_ns.errors import PoseGenInputError

T = TypeVar("T")

TEMP_MARK = ".tmp-"
"""Part of every temporary file name (``.NAME.tmp-<pid>-<hex>``), so stale ones can be recognised."""


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_dir(folder: Path | str) -> None:
    """``fsync`` a folder (makes a rename in it durable); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync on folders
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_dir(output_dir: Path | str, overwrite: bool = False, flag: str = "output folder") -> Iterator[Path]:
    """A folder written as a whole: yields a new temporary sibling ``.NAME.tmp-<hex>`` of ``output_dir`` to fill;
    on a clean exit of the ``with`` block it is ``fsync``-ed and renamed to ``output_dir`` (an existing one is
    moved aside first and removed only once the new one is in place, so a kill leaves the old folder or the new
    one, never a half-written one); on an error the temporary folder is removed and the error re-raised.

    Raises:
        PoseGenInputError: ``output_dir`` exists and ``overwrite`` is False (the message names ``flag``).
    """
    out = Path(output_dir).expanduser()
    if out.exists() and not overwrite:
        raise PoseGenInputError(f"{flag} {out} already exists; pass --overwrite (overwrite=True) or choose another folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_dir(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_open(path: Path | str, mode: str = "wb", fsync: bool = True, check: Optional[Callable[[Path], Any]] = None,
                **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit of the ``with`` block it is flushed,
    ``fsync``-ed (unless ``fsync=False``) and renamed to ``path``; on an exception it is removed.

    Args:
        path: the file to (re)place; its folder is created if needed.
        mode: ``'wb'`` or ``'w'`` (text; ``open_kwargs`` such as ``encoding`` are passed to :func:`open`).
        fsync: make the content and the rename durable (a power loss then leaves the old or the new file).
        check: called with the complete temporary file before the rename; if it raises, ``path`` is left as it
            was (e.g. validate a new pose bank before it replaces the old one).

    Raises:
        OSError: the folder cannot be created or written (``ENOSPC``, ``EROFS``, ``EACCES``, ...); ``path`` is
            then unchanged and no temporary file is left.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    if fsync:
        fsync_dir(path.parent)


def write_bytes(path: Path | str, data: bytes, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_open`); returns ``path``."""
    with atomic_open(path, "wb", fsync=fsync) as f:
        f.write(data)
    return Path(path)


def write_text(path: Path | str, text: str, fsync: bool = True, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_open`); returns ``path``."""
    return write_bytes(path, text.encode(encoding), fsync=fsync)


def write_json(path: Path | str, obj: Any, indent: Optional[int] = 1, fsync: bool = True, **dumps_kwargs: Any) -> Path:
    """Write ``json.dumps(obj, indent=indent, **dumps_kwargs)`` to ``path`` atomically; returns ``path``.

    The text is made before the file is opened, so an object that cannot be serialised leaves ``path`` as it was.
    """
    return write_text(path, json.dumps(obj, indent=indent, **dumps_kwargs), fsync=fsync)


def torch_save(obj: Any, path: Path | str, fsync: bool = True) -> Path:
    """``torch.save(obj, path)`` atomically (:func:`atomic_open`); returns ``path``."""
    import torch

    with atomic_open(path, "wb", fsync=fsync) as f:
        torch.save(obj, f)
    return Path(path)


def save_npz(path: Path | str, arrays: dict[str, Any], compressed: bool = False, fsync: bool = True,
             check: Optional[Callable[[Path], Any]] = None) -> Path:
    """``np.savez`` (``np.savez_compressed`` when ``compressed``) of ``arrays`` to ``path`` atomically, under
    exactly that name (no ``.npz`` is appended); ``check`` as in :func:`atomic_open`. Returns ``path``."""
    import numpy as np

    with atomic_open(path, "wb", fsync=fsync, check=check) as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)
    return Path(path)


def remove_stale_temporaries(folder: Path | str, recursive: bool = True) -> int:
    """Delete the temporary files :func:`atomic_open` leaves when its process is killed mid-write (names
    ``.NAME.tmp-<pid>-<hex>``) in ``folder`` (and its sub-folders); returns how many were removed.

    Only call it on a folder no other live process is writing (e.g. under the export's lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in (folder.rglob if recursive else folder.glob)(f".*{TEMP_MARK}*"):
        if p.is_file():
            try:
                p.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_cache(path: Path | str, reader: Callable[[Path], T], what: str = "cache file",
               say: Callable[[str], None] = print) -> Optional[T]:
    """``reader(path)`` for a cache file, or ``None`` when the caller must (re)build it.

    ``None`` when ``path`` does not exist; also when ``reader`` raises (a 0-byte or truncated file, a file of
    another version that the reader rejects): then ``say`` gets one line naming the file and the reason, and the
    file is removed.

    Args:
        path: the cache file.
        reader: reads and checks it; any exception means "damaged".
        what: what the file holds, for the message (e.g. ``"default critic"``).
        say: where the message goes (default ``print``).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return reader(path)
    except Exception as err:  # noqa: BLE001 - any failure to read a cache means: rebuild it
        say(f"posegen-ns: the cached {what} {path} is damaged ({_one_line(err)}); rebuilding it")
        try:
            path.unlink()
        except OSError:
            pass
        return None


def check_torch_file(path: Path | str) -> bool:
    """Raise if ``path`` is not a complete ``torch.save`` file (its zip directory is read, not the tensors:
    a 0-byte or truncated file fails; cheap for large checkpoints); returns True. Files in torch's legacy
    (pre-1.6, non-zip) format fail too: use it on files this project wrote."""
    import torch

    if Path(path).stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        raise ValueError(f"incomplete torch file ({str(err).splitlines()[0][:100]})") from err
    return True


def check_npz(path: Path | str, full: bool = False) -> bool:
    """Raise if ``path`` is not a complete ``.npz``: its zip directory (at the end of the file, so a 0-byte or
    truncated file fails) is read, and with ``full`` every array. Returns True."""
    import numpy as np

    with np.load(str(path), allow_pickle=False) as npz:
        for key in npz.files if full else ():
            npz[key]
    return True


def check_writable(path: Path | str, flag: str) -> Path:
    """Check, before any work, that the file ``path`` can be written (its folder is created if missing and a
    probe file is written into it and removed); returns ``path`` expanded.

    Raises:
        PoseGenInputError: ``path`` is a folder, or its folder cannot be created or written (the message
            names ``flag``, the path and the reason).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise PoseGenInputError(f"{flag} {path} is a folder; pass a file path (e.g. {path / 'results.json'}).")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path.with_name(f".{path.name}.probe"), b"", fsync=False).unlink()
    except OSError as err:
        raise PoseGenInputError(
            f"{flag} {path} cannot be written ({err.strerror or err}); pass a path in a writable folder "
            f"or make {path.parent} writable."
        ) from err
    return path


IO_ERRNOS_FULL = frozenset(e for e in (getattr(errno, "ENOSPC", None), getattr(errno, "EDQUOT", None)) if e is not None)
"""``errno`` values meaning "no room": a full disk or an exhausted quota."""
IO_ERRNOS_DENIED = frozenset(e for e in (errno.EROFS, errno.EACCES, errno.EPERM) if e is not None)
"""``errno`` values meaning "not allowed": a read-only file system or missing permissions."""


def folder_size(folder: Path | str) -> int:
    """Bytes of the regular files under ``folder`` (0 if it is missing)."""
    total = 0
    for p in Path(folder).rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def human_bytes(n: float) -> str:
    """``n`` bytes as ``'12.3 MB'`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"

