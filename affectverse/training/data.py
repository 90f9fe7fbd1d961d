"""A training run's data: sources merged per split, closed label sets checked, the pre-flight screen; the start of a
run that reaches them (inputs checked, data loaded and screened: :func:`prepare_run_data`)."""

from __future__ import annotations

import logging
from pathlib import Path

from affectverse.data.readers import load_benchmark, load_manifest, merge_benchmarks
from affectverse.default.clips import generate_clips
from affectverse.scoring.score import BENCHMARKS as SCORED
from affectverse.scoring.scores import map_to_label_set
from affectverse.training import preflight
from affectverse.training.arguments import RUN_TRAINING_KEYS, config_overrides, run_record
from affectverse.training.model import check_checkpoint, load_config, load_processor
from affectverse.training.run_folder import check_output_dir, check_writable, claim

logger = logging.getLogger("train")


def closed_label_set(benchmark: str, data_args, train_labels: set[str]) -> tuple[str, ...]:
    """The label set emotion-word samples of ``benchmark`` must use."""
    if data_args.label_set:
        return tuple(s.strip().lower() for s in data_args.label_set.split(",") if s.strip())
    if benchmark in SCORED and SCORED[benchmark].label_set:
        return SCORED[benchmark].label_set
    return tuple(sorted(train_labels))


def check_labels(train, evaluation, data_args) -> dict[str, tuple[str, ...]]:
    """Every emotion-word label must be in its benchmark's closed set; returns {benchmark: label set}."""
    seen = {}  # benchmark -> [(split, label, name)]
    for split, ds in (("train", train), ("eval", evaluation)):
        columns = (ds[c] for c in ("benchmark", "task", "emotion", "name")) if ds is not None else ((),)
        for bench, task, label, name in zip(*columns):
            if task == "emotion":
                seen.setdefault(bench, []).append((split, str(label).lower().strip(), name))
    sets, problems = {}, []
    for bench, items in seen.items():
        label_set = closed_label_set(bench, data_args, {label for split, label, _ in items if split == "train"})
        sets[bench] = label_set
        unknown = {}
        for split, label, name in items:
            if map_to_label_set([label], label_set) is None:
                unknown.setdefault((split, label), []).append(name)
        problems += [f"{bench} {split}: {label!r} x{len(names)} (e.g. {names[0]}); expected one of {list(label_set)}"
                     for (split, label), names in unknown.items()]
    if problems:
        raise ValueError("unknown labels for closed-set data (declare the set with --label_set):\n  "
                         + "\n  ".join(problems))
    return sets


def load_split(data_args, split: str):
    """The merged dataset of all sources for ``split``; a clear error when a source gives nothing."""
    parts, skipped = [], []
    for path in filter(None, (p.strip() for p in data_args.manifest.split(","))):
        ds = load_manifest(path, split=split)  # media: the pre-flight check (screen_data) probes every file
        parts.append((path, ds))
    names = [n.strip() for n in data_args.benchmarks.split(",") if n.strip()]
    if names and not data_args.data_root:
        raise ValueError("--benchmarks needs --data_root (the folder holding the packaged benchmarks)")
    for name in names:
        try:
            ds = load_benchmark(name, data_args.data_root, split)
        except ValueError as err:  # a benchmark without this split (e.g. no val): skip it, say so
            if "has no split" not in str(err):
                raise
            logger.warning("%s", err)
            skipped.append(name)
            continue
        parts.append((name, ds))
    if not parts and skipped:
        raise ValueError(f"split {split!r}: none of {skipped} has it")
    if not parts:
        raise ValueError("no data: give --manifest FILE[,FILE] and/or --benchmarks NAMES --data_root DIR")
    empty = [source for source, ds in parts if len(ds) == 0]
    if empty:
        raise ValueError(f"split {split!r} is empty in: {', '.join(empty)}")
    return merge_benchmarks([ds for _, ds in parts])


def load_data(data_args):
    """(train, eval or None, label sets); all data errors surface here, before any model is loaded."""
    manifest = data_args.manifest.split(",")[0].strip()
    if data_args.generate_clips > 0 and manifest and not Path(manifest).exists():
        logger.info("generating %d synthetic clips into %s", data_args.generate_clips, Path(manifest).parent)
        generate_clips(Path(manifest).parent, n_clips=data_args.generate_clips, seed=0)
    train = load_split(data_args, data_args.train_split)
    evaluation = None if data_args.eval_split.lower() == "none" else load_split(data_args, data_args.eval_split)
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if evaluation is not None and data_args.max_eval_samples:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    return train, evaluation, check_labels(train, evaluation, data_args)


def screen_data(train, evaluation, processor, data_args, out: Path, main_process: bool = True):
    """The pre-flight check (``affectverse.training.preflight``): (train, eval) without bad samples, or ValueError
    listing them.

    Every sample's media are probed and its text measured against ``max_length`` (cache: ``out/preflight_cache.json``).
    By default any bad sample stops the run; with ``--skip_bad_samples`` bad samples leave both splits (so no batch,
    evaluation or generation meets them) and are written to ``out/bad_samples.jsonl``.
    """
    if not data_args.check_media:
        return train, evaluation
    if main_process:  # its verdicts are the run's first file: the folder is claimed for them (ownership)
        claim(out)
    bad = preflight.check_splits({"train": train, "eval": evaluation}, processor, out / "preflight_cache.json",
                                 data_args.preflight_workers, save_cache=main_process)
    if not bad:
        logger.info("pre-flight check: all %d samples usable", len(train) + (len(evaluation) if evaluation else 0))
        if main_process and (out / "bad_samples.jsonl").is_file():  # an earlier check's list: no longer true
            (out / "bad_samples.jsonl").unlink()
        return train, evaluation
    if not data_args.skip_bad_samples:
        raise ValueError(f"pre-flight check: {len(bad)} bad samples; nothing was trained. Fix or remove them, or pass "
                         f"--skip_bad_samples to leave them out (recorded in bad_samples.jsonl):\n"
                         + preflight.describe(bad))
    if main_process:
        preflight.write_bad_samples(out / "bad_samples.jsonl", bad)
    logger.warning("pre-flight check: leaving out %d bad samples (listed in %s):\n%s", len(bad),
                   out / "bad_samples.jsonl", preflight.describe(bad, limit=10))
    train, evaluation = preflight.drop_bad(train, bad, "train"), preflight.drop_bad(evaluation, bad, "eval")
    for role, ds in (("train", train), ("eval", evaluation)):
        if ds is not None and len(ds) == 0:
            raise ValueError(f"pre-flight check: every {role} sample is bad (see {out / 'bad_samples.jsonl'})")
    return train, evaluation


def prepare_run_data(model_args, data_args, training_args, keys=RUN_TRAINING_KEYS, before_data=None):
    """A run's inputs, checked before any model loads: (record, resume, train, eval, label_sets, processor, n_bad)."""
    # Output folder (writable; new, empty or this command's own: affectverse.ownership), checkpoint files, the run
    # record (``keys``: its training arguments), then ``before_data()`` (a method's own step, e.g. GRPO's wheel), data,
    # processor, and every sample's media and text (the pre-flight check: its verdicts claim the folder).
    out, is_main = Path(training_args.output_dir), training_args.process_index == 0
    check_writable(out)
    if model_args.model_name_or_path is not None:
        check_checkpoint(model_args.model_name_or_path)
    config_overrides(model_args)
    record = run_record(model_args, data_args, training_args, keys)
    resume = check_output_dir(training_args, record)
    if before_data is not None:
        before_data()
    with training_args.main_process_first(desc="data"):
        train, evaluation, label_sets = load_data(data_args)
    processor = load_processor(model_args, data_args, load_config(model_args))
    n_before = len(train) + (len(evaluation) if evaluation is not None else 0)
    with training_args.main_process_first(desc="pre-flight check"):
        train, evaluation = screen_data(train, evaluation, processor, data_args, out, is_main)
    n_bad = n_before - len(train) - (len(evaluation) if evaluation is not None else 0)
    return record, resume, train, evaluation, label_sets, processor, n_bad
