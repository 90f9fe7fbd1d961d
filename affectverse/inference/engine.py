"""The prediction engine under ``affectverse predict``, ``affectverse.evaluation.runner``, the report and train.py.

One job each, used by every caller:

- :func:`resolve_device`, :func:`to_device`, :func:`load_model`: where the model runs, in which dtype, and how a
  checkpoint is loaded (:func:`affectverse.checkpoint.load_verified`: the project's own classes, the weights
  checked against the config before anything is allocated; a folder's code runs only with
  ``trust_remote_code=True``).
- :class:`Engine`: batches of dataset rows in, one result per row out. A torch DataLoader's workers decode the
  media (the package's ``AffectVerseCollator``) ahead of the model; a batch whose generation fails is retried clip
  by clip; a clip whose media cannot be used gets an error result naming the file and the reason.
- :func:`checkpoint_record`: what a run records of its model (its full-content identity, processor and generation
  configs) for :class:`affectverse.inference.store.PredictionStore`, the JSON-lines file every prediction goes to.
- :func:`predict_to_store`: the loop both commands run: resume, shard across ``accelerate launch`` processes (one
  shard file per rank, merged into the store by the main process), progress (:class:`Progress`). The store is
  checked first and created only when the model loaded and its first batch went through.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from tqdm.auto import tqdm
from transformers import AutoProcessor, LogitsProcessor, LogitsProcessorList

from affectverse import checkpoint
from affectverse.inference.store import PredictionStore, StoreError, shard_files, shard_path
from affectverse.ownership import Lock, OwnershipError
from pipeline_affectverse import answer_candidates, label_scores, prompt_state
from processing_affectverse import AffectVerseCollator, AffectVerseProcessor, answer_from_label

logger = logging.getLogger(__name__)

MEDIA_ERRORS = (ValueError, KeyError, OSError, RuntimeError)  # MediaError is a ValueError; decord/av are wrapped


class NonFiniteError(RuntimeError):
    """The model computed NaN or infinite values: no clip's answer can be trusted, so the run stops (it is not
    recorded as one clip's error)."""


def non_finite(what: str, model) -> NonFiniteError:
    return NonFiniteError(f"the model's {what} hold NaN or infinite values (dtype {model.dtype}): nothing of this "
                          "batch was recorded. A float16 overflow or a broken checkpoint: try --dtype bfloat16 or "
                          "float32, or another checkpoint")


class FiniteLogits(LogitsProcessor):
    """Raise :class:`NonFiniteError` at the first generation step whose scores hold a NaN or +inf, or a row that is
    -inf everywhere (-inf alone is a legitimate mask)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, scores):
        if (torch.isnan(scores).any() | torch.isposinf(scores).any() | torch.isneginf(scores).all(-1).any()).item():
            raise non_finite("logits", self.model)
        return scores


# ============================================================================================ modality settings
@dataclass(frozen=True)
class Modality:
    """One input setting of Table 1 / Table 2."""

    key: str
    name: str  # Table 1 row label
    ablation: str  # Table 2 row label
    video: bool
    audio: bool


MODALITIES = {
    "avt": Modality("avt", "A+V+T", "Full", video=True, audio=True),
    "at": Modality("at", "A+T", "No Video", video=False, audio=True),
    "vt": Modality("vt", "V+T", "No Audio", video=True, audio=False),
}


def modality_row(row: dict, modality: Modality) -> dict:
    """A dataset row with the dropped modality removed, in the form ``AffectVerseCollator.sample`` reads.

    ``audio == ""`` means the video's own track; ``audio=None`` no audio; ``video=""`` no frames.
    """
    row = dict(row)
    if not modality.video:
        row["audio"] = row.get("audio") or row.get("video") or None  # the track, read without the frames
        row["video"] = ""
    if not modality.audio:
        row["audio"] = None
    return row


@dataclass(frozen=True)
class Setting:
    """What varies between the predictions of one run: the modality setting and the keep ratio kappa."""

    modality: Modality
    keep_ratio: float = 1.0

    @property
    def id(self) -> str:
        return f"{self.modality.key}-k{round(float(self.keep_ratio), 6):g}"

    def record(self) -> dict:
        return {"setting_id": self.id, "modality": self.modality.key, "keep_ratio": float(self.keep_ratio)}


# ============================================================================================== label scores
def parse_labels(text: str | None) -> list[str] | None:
    """``"happy, sad,neutral"`` -> ["happy", "sad", "neutral"]; None stays None."""
    if text is None:
        return None
    labels = [label.strip() for label in text.split(",") if label.strip()]
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"--labels {text!r}: a comma-separated list of distinct labels")
    return labels


def label_candidates(processor, labels: Sequence[str]) -> list[list[int]]:
    """Token ids of each label's answer as the model was trained to give it (``answer_from_label`` + the end of
    turn), so "happy" and "happy, sad" are different candidates."""
    labels = [str(label).strip() for label in labels]
    if not labels or any(not label for label in labels) or len(set(labels)) != len(labels):
        raise ValueError(f"label set {labels}: needs at least one label, none empty, no duplicates")
    return answer_candidates(processor.tokenizer, [answer_from_label(label) for label in labels])


# ============================================================================================ device and model
def resolve_device(device: str | None = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """(torch device, torch dtype). ``auto``/None (or ``cuda``) under ``accelerate launch``: this process's own
    device (one GPU per rank); otherwise ``auto`` is CUDA when present, else the CPU; dtype ``auto``: bfloat16 on CUDA
    (float16 without bf16
    support), float32 on the CPU. A device this machine does not have is a ValueError naming ``--device``."""
    if device in (None, "auto", "cuda") and _world_size() > 1:  # one GPU per process, not all on cuda:0
        device = str(_partial_state().device)
    elif device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if torch_device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this machine has no CUDA device (torch.cuda.is_available() is "
                             "False); use --device cpu or auto")
        if torch_device.index is not None and torch_device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif torch_device.type != "cpu" and not (torch_device.type == "mps" and torch.backends.mps.is_available()):
        raise ValueError(f"--device {device}: not available here; use auto, cpu, cuda or cuda:N")
    if dtype == "auto":
        if torch_device.type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise ValueError(f"--dtype {dtype!r}: not a torch dtype; use auto, float32, bfloat16 or float16")
    return torch_device, getattr(torch, dtype)


def to_device(batch, model):
    """Move a processor batch to the model's device; media features take the model's dtype (positions do not)."""
    batch = batch.to(model.device)
    for key in ("pixel_values_videos", "pixel_values", "input_features"):
        if key in batch:
            batch[key] = batch[key].to(model.dtype)
    return batch


def load_model(name: str, device, dtype, trust_remote_code: bool = False):
    """(model in eval mode on ``device``, processor) of ``name``, a folder or a Hub id, loaded verified
    (:func:`affectverse.checkpoint.load_verified`: a folder that is not an AffectVerse model, weights that do not
    fit its config, missing or non-finite weights stop here, named).

    Without ``trust_remote_code`` the project's own classes load it and no Python file of the folder runs; with it,
    the Auto classes load the folder's own code (a checkpoint with changed code, at your own risk).
    """
    folder = checkpoint.resolve(name)
    model = checkpoint.load_verified(folder, dtype, device, trust_remote_code=trust_remote_code)
    checkpoint.register_local_classes()  # the tokenizer then neither prompts nor warns about the model type
    if trust_remote_code:
        processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
    else:
        processor = AffectVerseProcessor.from_pretrained(str(folder), trust_remote_code=False)
    if getattr(processor, "belief_token_id", None) != model.config.belief_token_id:
        raise ValueError(f"{name}: the processor's <|belief|> id {getattr(processor, 'belief_token_id', None)} "
                         f"differs from the model's belief_token_id {model.config.belief_token_id}")
    return model, processor


def fingerprint(name: str) -> str:
    """The model's identity: sha256 over every tensor and its config (:func:`affectverse.checkpoint.model_identity`;
    stored at save, else hashed once and cached by path, size and mtime)."""
    return checkpoint.model_identity(checkpoint.resolve(name))


def _without(value, drop=("auto_map", "transformers_version")):
    if isinstance(value, dict):
        return {k: _without(v, drop) for k, v in value.items() if k not in drop}
    return value


def checkpoint_record(name: str) -> dict:
    """What a run records of its checkpoint, read from its files without loading it: its identity (the full
    content), the processor settings (``processor_config.json``: frame rate, sizes, ``max_length``, feature
    extractor, ...), the generation config and a hash of the tokenizer files. The folder is checked first
    (:func:`affectverse.checkpoint.inspect`): a folder that is not a model is named before anything else."""
    folder = checkpoint.resolve(name)
    checkpoint.inspect(folder)
    record = {"fingerprint": checkpoint.model_identity(folder), "processor": None, "generation_config": None,
              "tokenizer": None}
    for key, file in (("processor", "processor_config.json"), ("generation_config", "generation_config.json")):
        if (folder / file).is_file():
            try:
                record[key] = _without(json.loads((folder / file).read_text(encoding="utf-8")))
            except ValueError as err:
                raise ValueError(f"{folder / file}: not valid JSON ({err})") from None
    digest = hashlib.sha256()
    for file in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja"):
        if (folder / file).is_file():
            digest.update(file.encode() + b":" + (folder / file).read_bytes())
    record["tokenizer"] = digest.hexdigest()
    return record


# ==================================================================================================== engine
def _identity(item):
    return item


def _decode_worker_init(worker_id: int):
    """Decoding workers yield the CPU to the model's process when cores are short (they are ahead anyway)."""
    try:
        os.nice(5)
    except OSError:  # not permitted here: run at the same priority
        pass


class _DecodeJobs(torch.utils.data.Dataset):
    """Item i: job i decoded by ``decode_fn(processor, setting(s), rows)`` (inside a DataLoader worker).

    Returns ``(i, batch or None, problems, seconds)``; ``decode_fn`` is a module-level function (picklable).
    """

    def __init__(self, processor, jobs: Sequence[tuple], decode_fn: Callable):
        self.processor, self.jobs, self.decode_fn = processor, jobs, decode_fn

    def __len__(self):
        return len(self.jobs)

    def __getitem__(self, i):
        setting, rows = self.jobs[i]
        start = time.perf_counter()
        batch, problems = self.decode_fn(self.processor, setting, rows)
        return i, batch, problems, time.perf_counter() - start


def _name(row: dict) -> str:
    return str(row.get("name") or row.get("video"))


def decode(processor, setting: Setting, rows: list[dict]):
    """(collated left-padded batch of the rows whose media load, or None; ``{name: reason}`` of the others)."""
    collator = AffectVerseCollator(processor, training=False, on_error="skip", keep_ratio=setting.keep_ratio)
    rows = [modality_row(r, setting.modality) for r in rows]
    try:
        batch = collator(rows)
    except ValueError:  # every clip failed: the reasons are in collator.skipped
        batch = None
    except MEDIA_ERRORS:  # an error the collator does not catch (OSError, RuntimeError): find the clip
        good = []
        for row in rows:
            try:
                collator([row])
                good.append(row)
            except MEDIA_ERRORS as err:
                collator.skipped.append((_name(row), f"{type(err).__name__}: {err}"))
        batch = collator(good) if good else None
    return batch, dict(collator.skipped)


def belief_shares(attention) -> list[dict | None]:
    """Per sample, the share of MAMA attention mass on the video and on the audio memory.

    ``attention`` is `(B, 2*N_b, 2*S*N_s)` with the video memory's columns first; rows of unused belief slots
    are zero, so every used belief query counts equally.
    """
    half = attention.shape[-1] // 2
    video, audio = attention[..., :half].float().sum((1, 2)), attention[..., half:].float().sum((1, 2))  # (B,)
    total = video + audio
    return [None if t <= 0 else {"video": round(float(v / t), 4), "audio": round(float(a / t), 4)}
            for v, a, t in zip(video, audio, total)]


def belief_weights(attention) -> list[list[list[float]]]:
    """Per sample, Figure 3's MAMA weights: a row per used belief token (the unused slots' rows are zero and left
    out), a column per imagined memory token, the video memory's first; each row sums to 1."""
    return [[[round(v, 5) for v in row] for row in sample if any(row)] for sample in attention.float().cpu().tolist()]


class Engine:
    """Batches of rows in, one result dict per row out: ``{"status": "ok", "answer", "seconds"}`` (plus
    ``belief_attention`` with ``explain``) or ``{"status": "error", "reason", "seconds"}``.

    Args:
        num_workers: DataLoader worker processes decoding media ahead of the model (0: in this process).
        explain: one more forward per batch for the belief tokens' video/audio attention share
            (``belief_attention: {"video", "audio"}``); ``"weights"`` adds the MAMA weights themselves
            (``belief_attention["weights"]``, :func:`belief_weights`).
        labels: a closed label set, or a function row -> its label set (None: none): each ok result then also
            has ``label_scores`` ``{label: probability}`` (summing to 1 over the set, :func:`label_scores`) and
            ``label``, the most probable one. A batch never mixes label sets.
    """

    def __init__(self, model, processor, max_new_tokens: int = 64, batch_size: int = 4, num_workers: int = 2,
                 explain: bool | str = False,
                 labels: Sequence[str] | Callable[[dict], Sequence[str] | None] | None = None):
        if batch_size < 1 or max_new_tokens < 1 or num_workers < 0:
            raise ValueError(f"batch_size={batch_size}, max_new_tokens={max_new_tokens} (both >= 1), "
                             f"num_workers={num_workers} (>= 0)")
        self.model, self.processor = model, processor
        self.max_new_tokens, self.batch_size, self.num_workers, self.explain = (max_new_tokens, batch_size,
                                                                               num_workers, explain)
        self.labels = labels if callable(labels) or not labels else [str(label).strip() for label in labels]
        self.forward_kwargs: dict = {}  # extra model inputs of every prompt pass (a trajectory's share_prefix)
        self._candidates: dict[tuple, list[list[int]]] = {}
        if self.labels is not None and not callable(self.labels):
            self.candidates(self.labels)  # a bad label set fails here, before any clip

    def label_set(self, rows: Sequence[dict]) -> list[str] | None:
        """The label set of a batch's rows (one set per batch), or None."""
        if not callable(self.labels):
            return self.labels
        found = {tuple(self.labels(row) or ()) for row in rows}
        if len(found) > 1:
            raise ValueError(f"one batch holds rows of {len(found)} label sets")
        labels = list(found.pop()) if found else []
        return labels or None

    def candidates(self, labels: Sequence[str]) -> list[list[int]]:
        key = tuple(labels)
        if key not in self._candidates:
            self._candidates[key] = label_candidates(self.processor, labels)
        return self._candidates[key]

    def batches(self, work: Sequence[tuple[Setting, dict]]) -> list[tuple[Setting, list[dict]]]:
        """``work`` (setting, row) in order, cut into batches of one setting each."""
        jobs: list[tuple[Setting, list[dict]]] = []
        for setting, row in work:
            if jobs and jobs[-1][0] == setting and len(jobs[-1][1]) < self.batch_size and (
                    not callable(self.labels) or self.label_set([jobs[-1][1][0]]) == self.label_set([row])):
                jobs[-1][1].append(row)
            else:
                jobs.append((setting, [row]))
        return jobs

    def run(self, jobs: Sequence[tuple[Setting, list[dict]]]) -> Iterator[tuple[Setting, list[dict], list[dict]]]:
        """(setting, rows, results) per job, in order; the workers decode the next jobs while the model runs."""
        if not jobs:
            return
        for i, batch, failed, decode_seconds in self.decoded(jobs):
            setting, rows = jobs[i]
            yield setting, rows, self._results(setting, rows, batch, failed, decode_seconds)

    def decoded(self, jobs: Sequence[tuple], decode_fn: Callable | None = None):
        """``(i, batch, problems, seconds)`` per job, in order, decoded ahead by ``num_workers`` DataLoader workers
        (``decode_fn``, default :func:`decode`: ``(processor, setting, rows) -> (batch or None, problems)``)."""
        return torch.utils.data.DataLoader(
            _DecodeJobs(self.processor, jobs, decode_fn or decode), batch_size=None, collate_fn=_identity,
            num_workers=self.num_workers, prefetch_factor=2 if self.num_workers else None,
            worker_init_fn=_decode_worker_init)

    def predict(self, setting: Setting, rows: list[dict]) -> list[dict]:
        """Results for one batch, decoded in this process."""
        start = time.perf_counter()
        batch, failed = decode(self.processor, setting, rows)
        return self._results(setting, rows, batch, failed, time.perf_counter() - start)

    def _results(self, setting, rows, batch, failed, decode_seconds) -> list[dict]:
        start = time.perf_counter()
        good = [row for row in rows if _name(row) not in failed]
        outputs, retried = {}, {}
        if good:
            try:
                labels = self.label_set(good)
                outputs = dict(zip(map(_name, good), zip(*(self.generate(batch, labels) if labels else
                                                           self.generate(batch)))))
            except (KeyboardInterrupt, MemoryError, NonFiniteError):
                raise
            except Exception as err:  # noqa: BLE001 - one bad clip must not stop a long run
                if len(good) == 1:
                    logger.warning("%s: %s: %s", _name(good[0]), type(err).__name__, err)
                    failed = {**failed, _name(good[0]): f"{type(err).__name__}: {err}"}
                else:
                    logger.warning("batch of %d failed (%s: %s); retrying clip by clip", len(good),
                                   type(err).__name__, err)
                    retried = {_name(row): self.predict(setting, [row])[0] for row in good}
        seconds = round((decode_seconds + time.perf_counter() - start) / len(rows), 4)
        results = []
        for row in rows:
            name = _name(row)
            if name in retried:
                results.append(retried[name])
            elif name in failed:
                results.append({"status": "error", "reason": failed[name], "seconds": seconds})
            else:
                results.append({"status": "ok", **self.fields(*outputs[name]), "seconds": seconds})
        return results

    def fields(self, answer, share, scores) -> dict:
        """One row's result fields from its share of :meth:`generate`'s outputs."""
        out = {"answer": answer, **({"belief_attention": share} if self.explain else {})}
        if scores is not None:
            out["label_scores"], out["label"] = scores, max(scores, key=scores.get)
        return out

    @torch.no_grad()
    def generate(self, batch, labels: Sequence[str] | None = None) -> tuple[list[str], list, list]:
        """(greedy answers, belief attention shares or Nones, ``{label: probability}`` over ``labels`` or Nones)
        for one collated batch."""
        batch = to_device(batch, self.model)
        generated = self.model.generate(**batch, **self.forward_kwargs, max_new_tokens=self.max_new_tokens,
                                        do_sample=False, pad_token_id=self.processor.tokenizer.pad_token_id,
                                        logits_processor=LogitsProcessorList([FiniteLogits(self.model)]),
                                        **({"return_dict_in_generate": True, "output_logits": True} if labels else {}))
        tokens = generated.sequences if labels else generated
        new_tokens = tokens[:, batch["input_ids"].shape[1]:]  # generate returns the prompt + the new tokens
        answers = [a.strip() for a in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]
        shares = [None] * len(answers)
        if self.explain:
            out = self.model(**batch, **self.forward_kwargs, output_belief_attention=True, logits_to_keep=1)
            if out.belief_attention is not None:
                shares = belief_shares(out.belief_attention)
                if self.explain == "weights":
                    shares = [None if share is None else {**share, "weights": weights}
                              for share, weights in zip(shares, belief_weights(out.belief_attention))]
        scores = [None] * len(answers)
        if labels:  # the prompt's pass is generate's: its first-step logits and its cache cut to the prompt
            prompt = prompt_state(generated, batch["input_ids"].shape[1])
            probs = label_scores(self.model, batch, self.candidates(labels), prompt=prompt)
            if not torch.isfinite(probs).all():
                raise non_finite("label scores", self.model)
            probs = probs.cpu().tolist()
            scores = [{label: round(p, 6) for label, p in zip(labels, row)} for row in probs]
        return answers, shares, scores


# ================================================================================================== progress
class Progress:
    """A tqdm bar with a description and running ok/error counts on a terminal; elsewhere (a log file, a CI job)
    a log line every 5% of the clips or every 30 s: clips done, ok/error, clips/s and ETA."""

    def __init__(self, total: int, desc: str, file=None, disable: bool = False, clock=time.monotonic,
                 every_seconds: float = 30.0):
        self.total, self.desc, self.clock, self.every_seconds = total, desc, clock, every_seconds
        self.counts = {"ok": 0, "error": 0}
        self.done, self.start = 0, clock()
        self.last_time, self.last_step = self.start, 0
        file = file if file is not None else sys.stderr
        self.disabled = disable or total == 0
        self.bar = None
        if not self.disabled and getattr(file, "isatty", lambda: False)():
            self.bar = tqdm(total=total, desc=desc, unit="clip", file=file, dynamic_ncols=True)
            self.bar.set_postfix(self.counts)

    def update(self, statuses: Sequence[str]):
        for status in statuses:
            self.counts[status] = self.counts.get(status, 0) + 1
        self.done += len(statuses)
        if self.disabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(self.counts, refresh=False)
            self.bar.update(len(statuses))
            return
        now, step = self.clock(), math.ceil(self.total * 0.05)
        if self.done // step > self.last_step or now - self.last_time >= self.every_seconds or self.done >= self.total:
            self.last_step, self.last_time = self.done // step, now
            self.log(now)

    def log(self, now: float):
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = "?" if math.isinf(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        logger.info("%s: %d/%d clips (%.0f%%), ok %d, error %d, %.2f clips/s, ETA %s", self.desc, self.done,
                    self.total, 100 * self.done / max(self.total, 1), self.counts.get("ok", 0),
                    self.counts.get("error", 0), rate, eta_text)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ======================================================================================================= loop
def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _partial_state():
    """accelerate's process state; on a machine without CUDA (or with ACCELERATE_USE_CPU) the ranks talk gloo."""
    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=cpu)


class Processes:
    """This process's rank among those ``accelerate launch`` / torchrun started (one process: no accelerate)."""

    def __init__(self):
        self.world, self.state = _world_size(), None
        if self.world > 1:
            self.state = _partial_state()
            self.world = self.state.num_processes
        self.rank = self.state.process_index if self.state else 0
        self.main = self.rank == 0

    def barrier(self):
        if self.state:
            self.state.wait_for_everyone()

    def from_main(self, value):
        """``value`` of the main process, on every process."""
        if not self.state:
            return value
        return broadcast_object_list([value], from_process=0)[0]

    def all(self, flag: bool) -> bool:
        return all(self._gather(flag))

    def total(self, n: int) -> int:
        return sum(self._gather(n))

    def _gather(self, value) -> list:
        if not self.state:
            return [value]
        return gather_object([value])

    def split(self, items: list) -> list:
        if not self.state:
            return items
        with self.state.split_between_processes(items) as mine:
            return list(mine)


def predict_to_store(path, run: dict, model_path: str, key_fields: Sequence[str],
                     work: Sequence[tuple[Setting, dict]], key_of: Callable[[dict], tuple],
                     make_engine: Callable[[], Engine],
                     to_records: Callable[[Setting, list[dict], list[dict]], list[dict]], *,
                     retry_errors: bool = False, max_batches: int | None = None,
                     desc: str = "predicting", claim: Callable[[], object] | None = None,
                     remedy: str = "--new-run to start a fresh run beside it"
                     ) -> tuple[bool, PredictionStore | None, int]:
    """Predict every (setting, row) of ``work`` not yet in the store at ``path``; return (finished, the store
    read back on the main process (None on the others), clips run by all processes).

    Order (nothing is created before every fast check passed): the store at ``path`` is read and checked (a file
    of another kind, other settings, a live writer: refused, nothing written); ``make_engine`` loads the model
    (only when there is work, so a finished run loads none); the first batch runs; only then is the store file
    created (``claim`` first: the folder it lives in) and its lines appended, one fsynced write per batch.

    One process writes the store directly. Under ``accelerate launch`` the pending clips are split between the
    processes, each appends to its own shard file, and the main process merges the shards into the store at the
    end (and any left by an interrupted run at the start). ``to_records`` turns an engine batch into the records to
    store (without the setting fields, which are added here); ``key_of(row)`` is the row's key fields, in
    ``key_fields`` order.
    """
    path, procs = Path(path), Processes()
    error, view = None, None
    if procs.main:
        try:
            view = PredictionStore(path, run, key_fields, readonly=True, remedy=remedy)  # another kind, other settings
            Lock(path).check()  # a live writer (nothing is created to find out)
            leftovers = shard_files(path)
            if leftovers:  # an interrupted sharded run's work: the same run's results, merged before anything
                with PredictionStore(path, run, key_fields, model_path, claim=claim) as store:
                    for shard in leftovers:
                        with PredictionStore(shard, None, key_fields) as part:
                            store.merge(part)
                        shard.unlink()
                        logger.info("merged %s (left by an interrupted run) into %s", shard, path)
                view = PredictionStore(path, None, key_fields, readonly=True)
        except OwnershipError as err:  # StoreError too
            error = str(err)
    error = procs.from_main(error)
    if error:
        raise StoreError(error)
    if view is None:
        view = PredictionStore(path, None, key_fields, readonly=True)
    if view.records and procs.main:
        logger.info("%s: %d predictions from an earlier run", path, len(view.records))
    todo = [(s, row) for s, row in work if not view.done((s.id, *key_of(row)), retry_errors)]
    mine = procs.split(todo)
    logger.info("%d of %d clips x settings to predict%s", len(todo), len(work),
                f" ({len(mine)} on process {procs.rank} of {procs.world})" if procs.world > 1 else "")
    finished, n_run = True, 0
    if mine:
        target = path if procs.world == 1 else shard_path(path, procs.rank, procs.world)
        finished, n_run = _predict(lambda: PredictionStore(target, run, key_fields, model_path, claim=claim), mine,
                                   make_engine, to_records, max_batches, desc, procs)
    finished, n_run = procs.all(finished), procs.total(n_run)
    procs.barrier()
    store = None
    if procs.main:
        if procs.world > 1 and shard_files(path):
            with PredictionStore(path, run, key_fields, model_path, claim=claim) as merged:
                for shard in shard_files(path):
                    with PredictionStore(shard, None, key_fields) as part:
                        merged.merge(part)
                    shard.unlink()
        store = PredictionStore(path, None, key_fields, readonly=True)  # what the file holds now
    procs.barrier()
    return finished, store, n_run


def _predict(open_store, mine, make_engine, to_records, max_batches, desc, procs) -> tuple[bool, int]:
    """Run the engine over ``mine``; the store (``open_store()``) is opened at the first batch's results."""
    engine = make_engine()
    jobs = engine.batches(mine)
    if max_batches is not None and len(jobs) > max_batches:
        jobs, finished = jobs[:max_batches], False
    else:
        finished = True
    progress = Progress(sum(len(rows) for _, rows in jobs), desc if procs.world == 1 else f"{desc} [{procs.rank}]")
    n, out = 0, None
    try:
        for setting, rows, results in engine.run(jobs):
            records = [{**setting.record(), **r} for r in to_records(setting, rows, results)]
            if out is None:  # the model loaded and the first batch went through: now the file may be created
                out = open_store()
            out.append(records, [setting.record()])
            progress.update([r["status"] for r in records])
            n += len(records)
    finally:
        progress.close()
        if out is not None:
            out.close()
    if not finished:
        logger.warning("stopped after --max-batches=%d; rerun the same command to resume", max_batches)
    return finished, n
