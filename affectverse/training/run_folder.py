"""A training run's folder: whether it may be written, which run it holds, its checkpoints, a full disk.

The folder follows :mod:`affectverse.ownership`: train.py writes only into a new or empty folder, or one whose
record (``.affectverse.json``, or ``run_args.json`` of an earlier version) says train.py wrote it. The same run
resumes; another run is refused unless ``--overwrite_output_dir``, which removes what the earlier run wrote
(:data:`RUN_OUTPUTS`) before the new run writes, and leaves anything else in the folder alone.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from affectverse import checkpoint, hub, ownership
from affectverse.training.arguments import RECORD_DEFAULTS

logger = logging.getLogger("train")

KIND = "train"  # the record of a train.py output folder
# Files the pre-flight check writes into a run folder before run_args.json exists (the folder still counts as new).
PREFLIGHT_FILES = ("preflight_cache.json", "bad_samples.jsonl")
# What a run writes into its folder (Trainer, export, records): --overwrite_output_dir removes these, nothing else.
RUN_OUTPUTS = checkpoint.HUB_FILES + hub.TRAINING_STATE + ("runs",)
# What a checkpoint needs to be resumed from: any file matching one pattern of each part.
CHECKPOINT_PARTS = {
    "weights": ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json",
                "pytorch_model_fsdp*"),
    "optimizer": ("optimizer.pt", "optimizer_0", "global_step*"),  # global_step*: a DeepSpeed checkpoint
    "scheduler": ("scheduler.pt", "global_step*"),
    "trainer state": ("trainer_state.json",),
    "RNG state": ("rng_state.pth", "rng_state_*.pth"),
}


def check_writable(folder: Path):
    """Raise ValueError naming ``folder`` when it cannot be created or written (before data or model load); creates
    nothing: the nearest existing folder on its path must be a writable folder."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"--output_dir {folder}: cannot write there ({probe} is a file); choose a writable folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--output_dir {folder}: cannot write there (permission denied in {probe}); choose a "
                         "writable folder")


def legacy_run(folder: Path) -> bool:
    """A run folder from before records: it holds run_args.json, or only the pre-flight check's files."""
    return (folder / "run_args.json").is_file() or all(p.name in PREFLIGHT_FILES for p in folder.iterdir())


def claim(out: Path) -> dict:
    """The run folder, created with its record (or its record added) right before the run's first write."""
    return ownership.claim_folder(out, KIND, legacy=legacy_run, option="--output_dir")


def write_run_args(out: Path, record: dict, training_args, resume: str | None):
    """The run's first own file, written once its model loaded: the folder claimed, an earlier run's outputs
    removed with ``--overwrite_output_dir`` (:func:`start_afresh`), then ``run_args.json`` (atomically)."""
    claim(out)
    if training_args.overwrite_output_dir:  # what an earlier run wrote goes; anything else stays
        start_afresh(out, keep=resume)
    ownership.atomic_write(out / "run_args.json", json.dumps(record, indent=2) + "\n")


def start_afresh(out: Path, keep: str | None = None) -> list[str]:
    """``--overwrite_output_dir``: remove what an earlier run wrote into ``out`` (:data:`RUN_OUTPUTS`, except
    ``keep``, a checkpoint to resume from); anything else stays. Returns the names removed."""
    keep_name = Path(keep).name if keep and Path(keep).parent.resolve() == out.resolve() else None
    names = sorted(p.name for p in out.iterdir() if p.name != keep_name and
                   any(fnmatch.fnmatch(p.name, pattern) for pattern in RUN_OUTPUTS))
    removed = ownership.remove_own(out, names)
    if removed:
        logger.info("--overwrite_output_dir: removed the earlier run's %s", ", ".join(removed))
    return removed


def checkpoint_problems(folder: Path) -> list[str]:
    """What keeps ``folder`` from being resumed: missing parts of CHECKPOINT_PARTS, unreadable state or weights."""
    names = [p.name for p in folder.iterdir()]
    problems = [f"no {part} ({' or '.join(patterns)})" for part, patterns in CHECKPOINT_PARTS.items()
                if not any(fnmatch.filter(names, pattern) for pattern in patterns)]
    state = folder / "trainer_state.json"
    if state.is_file():
        try:
            json.loads(state.read_text())
        except ValueError:
            problems.append("trainer_state.json is not valid JSON (cut short)")
    for weights in sorted(folder.glob("*.safetensors")):
        problem = checkpoint.safetensors_problem(weights)
        if problem:
            problems.append(f"{weights.name}: {problem}")
    return problems


def checkpoints(out: Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``out``, oldest step first."""
    found = [p for p in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def last_complete_checkpoint(out: Path) -> str | None:
    """The newest checkpoint holding everything a resume needs; each newer incomplete one is named in a warning
    and left as it is (a run killed or out of space while saving leaves one)."""
    for folder in reversed(checkpoints(out)):
        problems = checkpoint_problems(folder)
        if not problems:
            return str(folder)
        logger.warning("checkpoint %s is incomplete (%s): not resumed from, left in place", folder,
                       "; ".join(problems))
    return None


def check_output_dir(training_args, record: dict) -> str | None:
    """Refuse an output folder holding another run; return the checkpoint to resume from (None: start afresh).

    The same run resumes from ``--resume_from_checkpoint`` if given, else from its newest complete ``checkpoint-N``.
    """
    out, resume = Path(training_args.output_dir), training_args.resume_from_checkpoint
    if resume:
        if not Path(resume).is_dir():
            raise ValueError(f"--resume_from_checkpoint {resume}: no such checkpoint folder (the last checkpoint of "
                             "the same run in --output_dir is resumed without it)")
        problems = checkpoint_problems(Path(resume))
        if problems:
            raise ValueError(f"--resume_from_checkpoint {resume} cannot be resumed: {'; '.join(problems)}")
    try:
        owned = ownership.check_folder(out, KIND, "--output_dir", legacy=legacy_run)
    except ownership.OwnershipError as err:
        if ownership.read_record(out) is not None:  # another command's folder
            raise
        entries = sorted(p.name for p in out.iterdir())
        raise ValueError(f"--output_dir {out} is not empty and holds no run_args.json (not a train.py run: "
                         f"{', '.join(entries[:4])}{' ...' if len(entries) > 4 else ''}); nothing was written "
                         "there: choose a new or empty folder") from err
    saved = out / "run_args.json"
    if owned is None or not saved.is_file() or training_args.overwrite_output_dir:
        return resume or None  # new, only the pre-flight check's files, or started afresh
    try:
        old = json.loads(saved.read_text())
    except ValueError:
        raise ValueError(f"{saved}: not valid JSON; pass --overwrite_output_dir to start afresh, or choose another "
                         "folder") from None
    was = lambda group, key: old.get(group, {}).get(key, RECORD_DEFAULTS.get(key))  # noqa: E731
    diffs = [f"{group}.{key}: {was(group, key)!r} -> {value!r}"
             for group, values in record.items() for key, value in values.items() if was(group, key) != value]
    if diffs:
        raise ValueError(f"--output_dir {out} holds a different run ({'; '.join(diffs)}); choose another folder, "
                         "pass the same arguments to resume it, or --overwrite_output_dir")
    return resume or last_complete_checkpoint(out)


DISK_FULL_SIGNS = ("no space left", "unexpected pos", "storagefull", "code: 28", "disk quota", "file write failed")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is a write that ran out of space: ENOSPC/EDQUOT, torch's zip writer
    ("inline_container.cc ... unexpected pos") or safetensors' ("StorageFull")."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(sign in str(err).lower() for sign in DISK_FULL_SIGNS):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextmanager
def explain_disk_full(folder: Path, what: str):
    """Turn a write that ran out of space inside the block into an OSError(ENOSPC) naming ``folder`` and the free
    space of its file system; any other error passes unchanged."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if not is_disk_full(err):
            raise
        probe = Path(folder)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        raise OSError(errno.ENOSPC, f"{what} {folder}: no space left on the device ({free / 2**30:.2f} GiB free "
                      f"there). The folder is incomplete: a resume skips it and starts from the newest complete "
                      f"checkpoint. Free some space (or lower --save_total_limit) and run the same command again "
                      f"({type(err).__name__}: {str(err)[:200]})") from err


def write_results(out: Path, results: dict):
    """results.json, replaced atomically (a kill while writing leaves the previous one)."""
    with explain_disk_full(out, "writing results.json to"):
        ownership.atomic_write(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
