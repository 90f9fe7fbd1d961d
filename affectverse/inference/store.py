"""The prediction store: one run's predictions in a JSON-lines file, and the record of what made them.

Its first line records the run's settings (model fingerprint, processor, generation, extractor); every prediction
line names the setting (modality x keep ratio) that made it. Reopened with other settings it stops with the
differences; a file of another kind is refused, never rewritten; only an unterminated last line is dropped;
appends are flushed and fsynced per batch; a kernel lock (:class:`affectverse.ownership.Lock`) keeps a second
writer out. Standard library and filelock only (the scorer reads these files without torch).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from affectverse.ownership import Lock, OwnershipError, atomic_write, disk_full_named

logger = logging.getLogger(__name__)

FORMAT, VERSION = "affectverse-predictions", 1


class StoreError(OwnershipError):
    """A predictions file that cannot be used as asked (other settings, another kind of file, a live writer)."""


def _flat(settings: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(old: dict, new: dict) -> list[str]:
    """``field: X in the file, Y now`` for each field that differs (nested fields dotted)."""
    old, new = _flat(old), _flat(new)
    return [f"{k}: {old.get(k, '(absent)')!r} in the file, {new.get(k, '(absent)')!r} now"
            for k in sorted(set(old) | set(new)) if old.get(k, "(absent)") != new.get(k, "(absent)")]


def fresh_path(path) -> Path:
    """The first free name beside ``path``: ``preds.jsonl`` -> ``preds-2.jsonl``, ``runs/x`` -> ``runs/x-2``."""
    path = Path(path)
    stem, suffix = (path.stem, path.suffix) if path.suffix else (path.name, "")
    for n in range(2, 10_000):
        candidate = path.with_name(f"{stem}-{n}{suffix}")
        if not candidate.exists():
            return candidate
    raise StoreError(f"{path}: no free name beside it")


class PredictionStore:
    """One run's predictions, a JSON-lines file::

        {"format": "affectverse-predictions", "version": 1, "model_path": ..., "run": {settings}}   # line 1
        {"kind": "setting", "setting_id": "avt-k1", "modality": "avt", "keep_ratio": 1.0}        # once per setting
        {"setting_id": "avt-k1", <key fields>, "status": "ok" | "error", ...}                   # one per prediction

    ``run`` holds what must not change within a run (model fingerprint, processor, generation and extractor
    settings); the comparison ignores ``model_path`` (a moved folder keeps its fingerprint). The last record of a
    key wins (``--retry-errors`` appends). Opened for writing (the default) the file is locked; use it as a
    context manager or call :meth:`close`.

    Args:
        key_fields: the record fields that name a clip within a setting, e.g. ``("benchmark", "name")``.
        run: the run's settings; None only with ``readonly`` (then nothing is checked).
    """

    def __init__(self, path, run: dict | None, key_fields: Sequence[str], model_path: str | None = None,
                 readonly: bool = False, claim: Callable[[], object] | None = None,
                 remedy: str = "--new-run to start a fresh run beside it"):
        self.path, self.run, self.key_fields, self.readonly = Path(path), run, tuple(key_fields), readonly
        self.remedy = remedy
        self.model_path = model_path
        self.records: dict[tuple, dict] = {}  # (setting id, *key) -> last record
        self.settings: dict[str, dict] = {}
        self.header: dict | None = None
        self.lock = Lock(self.path)
        if readonly:
            self._open()
            return
        self._check_head()  # a file of another kind is refused before anything is created beside it
        if claim is not None:  # the folder the store lives in (an evaluation folder), claimed only now
            claim()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except OwnershipError as err:
            raise StoreError(str(err)) from None
        try:
            self._open()
        except BaseException:
            self.lock.release()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.lock.release()

    def key(self, record: dict) -> tuple:
        return (record["setting_id"], *(record[f] for f in self.key_fields))

    # ----------------------------------------------------------------------------------------- reading
    def _check_head(self):
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as fh:
                head = fh.read(1 << 16).split(b"\n", 1)[0]
            self._header(head.decode("utf-8", errors="replace"))
        elif self.path.is_dir():
            raise StoreError(f"{self.path} is a folder, not a predictions file; it is left untouched: choose a file "
                             "name")

    def _open(self):
        if not self.path.exists() or self.path.stat().st_size == 0:
            if self.readonly:
                return
            self.header = {"format": FORMAT, "version": VERSION, "model_path": self.model_path, "run": self.run}
            self._create()
            return
        raw = self.path.read_bytes()
        complete = raw.rfind(b"\n") + 1  # bytes up to the last newline; the rest is a cut-off write
        lines = raw[:complete].decode("utf-8", errors="replace").split("\n")[:-1]
        self.header = self._header(lines[0] if lines else raw.decode("utf-8", errors="replace")[:200])
        if self.run is not None:
            diff = differences(self.header.get("run") or {}, self.run)
            if diff:
                raise StoreError(f"{self.path} holds predictions made with other settings:\n  " + "\n  ".join(diff)
                                 + f"\nuse another output, or {self.remedy}")
        for line_no, line in enumerate(lines[1:], 2):
            self._read_line(line_no, line)
        if complete < len(raw):
            logger.warning("%s: dropping an unterminated last line (an interrupted write); it will be recomputed",
                           self.path)
            if not self.readonly:
                os.truncate(self.path, complete)

    def _header(self, line: str) -> dict:
        try:
            header = json.loads(line)
        except ValueError:
            header = None
        if not (isinstance(header, dict) and header.get("format") == FORMAT):
            raise StoreError(f"{self.path} is not an AffectVerse predictions file (its first line is not a "
                             f"{FORMAT!r} header: {line[:80]!r}); it is left untouched: choose another output")
        if header.get("version") != VERSION:
            raise StoreError(f"{self.path}: predictions format version {header.get('version')}; this code reads "
                             f"version {VERSION}")
        return header

    def _read_line(self, line_no: int, line: str):
        try:
            record = json.loads(line)
            if record.get("kind") == "setting":
                self.settings[record["setting_id"]] = record
                return
            if record["setting_id"] not in self.settings:
                raise KeyError(f"setting {record['setting_id']!r} is not declared above")
            self.records[self.key(record)] = record
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise StoreError(f"{self.path}, line {line_no}: not a prediction record ({type(err).__name__}: {err}); "
                             "the file was edited or is corrupt: fix or remove that line") from None

    # ----------------------------------------------------------------------------------------- writing
    def _create(self):
        """Write the header atomically (a temporary file renamed), so a new file is never half a header."""
        atomic_write(self.path, json.dumps(self.header, ensure_ascii=False) + "\n")

    def done(self, key: tuple, retry_errors: bool = False) -> bool:
        record = self.records.get(key)
        return record is not None and not (retry_errors and record.get("status") == "error")

    def append(self, records: Sequence[dict], settings: Sequence[dict] = ()):
        """Append ``records`` (declaring their new settings first), flushed and fsynced."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        lines = []
        for setting in settings:
            if setting["setting_id"] not in self.settings:
                self.settings[setting["setting_id"]] = {"kind": "setting", **setting}
                lines.append(self.settings[setting["setting_id"]])
        for record in records:
            if record["setting_id"] not in self.settings:
                raise StoreError(f"{self.path}: record of undeclared setting {record['setting_id']!r}")
            self.key(record)  # every key field present
        lines += records
        with disk_full_named(self.path), open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())
        for record in records:
            self.records[self.key(record)] = record

    def merge(self, other: PredictionStore):
        """Append ``other``'s records (a shard of this run) that this store lacks or holds an older error of."""
        if differences(other.header.get("run") or {}, self.header.get("run") or {}):
            raise StoreError(f"{other.path}: a shard of another run than {self.path}")
        new = [r for k, r in other.records.items() if k not in self.records or
               (self.records[k].get("status") == "error" and r.get("status") == "ok")]
        self.append(new, [other.settings[s] for s in other.settings])


def is_store(path) -> bool:
    """Whether ``path`` starts with a predictions header (the store's own record)."""
    try:
        with open(path, "rb") as fh:
            header = json.loads(fh.read(1 << 16).split(b"\n", 1)[0])
    except (OSError, ValueError):
        return False
    return isinstance(header, dict) and header.get("format") == FORMAT


def shard_path(path: Path, rank: int, world: int) -> Path:
    return path.with_name(f"{path.stem}.shard{rank}of{world}{path.suffix}")


def shard_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.stem}.shard*of*{path.suffix}"))
