"""What a command may write, and how: one rule under every writer (predictions, evaluation folders, embeddings,
exports, train.py's output folders, generated clips).

- **Own it or leave it.** A command writes only into a file or folder it created or that carries its own record
  (a folder: ``.affectverse.json`` naming the command; a file: its own header or metadata). Anything else that a
  command is pointed at is refused and left byte-identical; no flag overrides that.
- **Continue or replace, never mix.** A command's own earlier output of the same run is continued (resumed); one of
  another run is refused, and replaced only with an explicit flag (``--overwrite``). A replaced folder holds exactly
  what the new write produced: it is written beside, then swapped in (:func:`write_folder`).
- **Check first, create last.** Callers check (:func:`check_folder`, :meth:`Lock.check`) before the slow work and
  create (:func:`claim_folder`, :func:`atomic_write`) only after every fast check passed.
- **Atomic files.** A temporary file in the same folder, fsync, rename, fsync of the folder: a reader sees the old
  file or the new one, never half of one. A full disk is an error naming the file and the free space.
- **Kernel locks.** :class:`Lock` is ``filelock``'s ``flock`` lock: the kernel drops it when its process ends, so a
  lock never goes stale and nothing has to be taken over.

Standard library and ``filelock`` only: the prediction store (and the scorer reading it) use this without torch.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

RECORD = ".affectverse.json"
FORMAT, VERSION = "affectverse-output", 1


class OwnershipError(ValueError):
    """A file or folder the command may not write (not its own, another run's, another writer's)."""


# ------------------------------------------------------------------------------------------------ folders
def read_record(folder) -> dict | None:
    """The record of ``folder`` (``.affectverse.json``), None when it has none."""
    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise OwnershipError(f"{path}: unreadable record ({err}); the folder is left untouched") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise OwnershipError(f"{path}: not an affectverse record; the folder is left untouched")
    return record


def _shown(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_folder(folder, kind: str, option: str = "--out", legacy: Callable[[Path], bool] | None = None) -> dict | None:
    """``folder``'s record when ``kind`` wrote it; None when it is free (absent or empty). Anything else raises
    :class:`OwnershipError`: a file, a folder of another command, a folder without a record. ``legacy(folder)``
    accepts a folder ``kind`` wrote before records existed (its record is then written on the next claim)."""
    folder = Path(folder)
    if not folder.exists():
        return None
    if not folder.is_dir():
        raise OwnershipError(f"{option} {folder}: a file, not a folder; it is left untouched: choose a folder name")
    record = read_record(folder)
    if record is None:  # a record another process is writing right now (its temporary file) counts as nothing
        entries = sorted(p.name for p in folder.iterdir() if not p.name.startswith(f".{RECORD}.tmp-"))
        if not entries:
            return None
        if legacy is not None and legacy(folder):
            return {"format": FORMAT, "version": VERSION, "kind": kind, "legacy": True}
        raise OwnershipError(f"{option} {folder}: not a folder affectverse {kind} wrote (it holds {_shown(entries)} "
                             f"and no {RECORD}); nothing was written there: choose a new or empty folder")
    if record.get("kind") != kind:
        raise OwnershipError(f"{option} {folder}: written by affectverse {record.get('kind')}, not by {kind}; "
                             "nothing was written there: choose another folder")
    return record


def claim_folder(folder, kind: str, legacy: Callable[[Path], bool] | None = None, option: str = "--out",
                 **fields) -> dict:
    """Create ``folder`` (and its record) for ``kind``, or return its record when ``kind`` already owns it. Call it
    after the fast checks, right before the first write."""
    folder = Path(folder)
    record = check_folder(folder, kind, option, legacy)
    if record is not None and not record.get("legacy"):
        return record
    folder.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, "version": VERSION, "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              **fields}
    atomic_write(folder / RECORD, json.dumps(record, indent=2) + "\n")
    return record


def update_record(folder, **fields) -> dict:
    """Add ``fields`` to ``folder``'s record (atomically)."""
    folder = Path(folder)
    record = read_record(folder)
    if record is None:
        raise OwnershipError(f"{folder}: no {RECORD} to update")
    record.update(fields)
    atomic_write(folder / RECORD, json.dumps(record, indent=2) + "\n")
    return record


def listing(folder) -> dict[str, int]:
    """``{relative path: size}`` of every file under ``folder`` except its record."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != RECORD}


def unlisted(folder, record: dict) -> list[str]:
    """Files under ``folder`` its record does not list (what someone else put there)."""
    return [name for name in listing(folder) if name not in (record.get("files") or {})]


def write_folder(dest, kind: str, fill: Callable[[Path], None], overwrite: bool = False, option: str = "--out",
                 **fields) -> Path:
    """Write the folder ``dest`` whole: ``fill(tmp)`` writes into a new folder beside it, its files are fsynced, the
    record (``kind``, the files, ``fields``) is added, and the folder is renamed into place. An earlier ``kind``
    folder at ``dest`` is replaced only with ``overwrite`` (and only if it holds nothing it did not write); a
    failure leaves ``dest`` as it was."""
    dest = Path(dest)
    record = check_folder(dest, kind, option)
    if record is not None:
        if not overwrite:
            raise OwnershipError(f"{option} {dest} holds an earlier affectverse {kind} output; pass --overwrite to "
                                 "replace it (everything it wrote goes), or choose another folder")
        foreign = unlisted(dest, record) if not record.get("legacy") else []
        if foreign:
            raise OwnershipError(f"{option} {dest} also holds files affectverse {kind} did not write "
                                 f"({_shown(foreign)}); move them away first: --overwrite replaces only its own")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        fill(tmp)
        files = listing(tmp)
        for name in files:
            _fsync_file(tmp / name)
        extra = fields.pop("record", None)
        extra = extra(tmp) if callable(extra) else (extra or {})
        record = {"format": FORMAT, "version": VERSION, "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "files": files, **fields, **extra}
        atomic_write(tmp / RECORD, json.dumps(record, indent=2) + "\n")
        _swap(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _swap(tmp: Path, dest: Path):
    """Put the finished folder ``tmp`` at ``dest`` (an empty or replaceable folder, or nothing)."""
    old = None
    if dest.exists() and any(dest.iterdir()):
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
    os.replace(tmp, dest)  # an empty dest is replaced by rename(2) itself
    _fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old)


def remove_own(folder, names) -> list[str]:
    """Remove the files/folders ``names`` of ``folder`` (the caller's own earlier output); returns those removed."""
    removed = []
    for name in names:
        path = Path(folder) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


# -------------------------------------------------------------------------------------------------- files
def check_file(path, is_ours: Callable[[Path], bool], what: str, option: str = "--out") -> bool:
    """True when ``path`` exists and ``is_ours(path)`` (the command's own file), False when it does not exist;
    anything else raises :class:`OwnershipError` (and is left untouched)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return False
    if path.is_dir():
        raise OwnershipError(f"{option} {path}: a folder, not a file; it is left untouched: choose a file name")
    try:
        ours = is_ours(path)
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise OwnershipError(f"{option} {path}: not a file affectverse {what} wrote; it is left untouched: choose "
                             "another name")
    return True


def _fsync_file(path: Path):
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")


@contextmanager
def atomic_path(path):
    """A temporary path beside ``path`` for a tool that writes by name (savefig, save_file, write_table); on
    success it is fsynced and renamed onto ``path``, on failure removed."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        with disk_full_named(path):
            yield tmp
            _fsync_file(tmp)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path, data: str | bytes):
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def disk_full_named(path):
    """An ENOSPC/EDQUOT inside the block becomes an OSError naming ``path`` and its file system's free space."""
    try:
        yield
    except OSError as err:
        if not is_disk_full(err) or str(path) in str(err):
            raise
        probe = Path(path).parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        raise OSError(err.errno, f"writing {path}: no space left on the device ({free / 2**30:.2f} GiB free "
                                 "there); nothing was replaced: free some space and run the same command again") \
            from err


# -------------------------------------------------------------------------------------------------- locks
class Lock:
    """A kernel lock (``flock`` through filelock) on ``TARGET.lock`` beside ``target``: one writer at a time.

    :meth:`check` tells whether another process holds it without creating anything; :meth:`acquire` takes it
    (creating the empty lock file, which stays after release so every writer locks the same inode).
    """

    def __init__(self, target):
        self.target = Path(target)
        self.path = self.target.with_name(self.target.name + ".lock")
        self._lock = FileLock(self.path, timeout=0, fallback_to_soft=False)

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def _busy(self) -> OwnershipError:
        try:  # what the holder wrote into the lock file: "pid host"
            pid, host = self.path.read_text().split()[:2]
            holder = f"pid {int(pid)} on {host}, "
        except (OSError, ValueError):
            holder = ""
        return OwnershipError(f"{self.target} is being written by another process ({holder}lock file {self.path}); "
                              "wait for it to finish, or write elsewhere")

    def check(self):
        """Raise when another process holds the lock; creates nothing."""
        if self.held or not self.path.exists():
            return
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise self._busy() from None
        self._lock.release()

    def acquire(self):
        if self.held:
            return
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise self._busy() from None
        try:  # who holds it, for the message a second writer gets (the kernel lock is what counts)
            with open(self.path, "w") as fh:
                fh.write(f"{os.getpid()} {socket.gethostname()}\n")
        except OSError:
            pass

    def release(self):
        if self.held:
            self._lock.release(force=True)
