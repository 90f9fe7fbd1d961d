"""Pre-flight check of a training run's samples, before any model loads: every sample's media and text length.

Media are probed with PyAV: the container must open, hold the streams the sample needs (a video stream; an audio
stream in a ``.wav`` or, when the sample's audio is the video's own track, in the video), declare a duration, and
decode at its start and near its end (a file cut short fails there, or ends early; a ``.wav`` whose header
announces more samples than the file holds is caught the same way). Shortfalls are judged by the processor's
rule (``media_affectverse.AUDIO_SHORTFALL``: more than max(0.25 s, 10 %) missing). Files are probed in
parallel (threads: PyAV decodes outside the GIL) and the verdicts are cached in a JSON file keyed by (path, size,
mtime), so resuming a run does not probe again.

Text: the rendered prompt and the answer are counted with the processor's tokenizer; with the smallest media the
length rule may keep (``temporal_patch_size`` frames, one audio token) they must fit ``max_length`` (the
processor would refuse the sample in the middle of training otherwise).

Measured (``python -m benchmarks.preflight_bench --n 200``): see README, "Training".
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

from affectverse.checkpoint import safetensors_problem  # noqa: F401 - checkpoint files are checked in one place
from affectverse.ownership import atomic_write
from media_affectverse import AUDIO_SHORTFALL, decoder_reason, single_threaded, stream_seconds, wav_duration
from processing_affectverse import answer_from_label

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
END_WINDOW = 1.0  # seconds before the declared end where the last decode must land


@dataclass(frozen=True)
class BadSample:
    """A sample the run cannot use: its split, name, the file at fault (or the field) and why."""

    split: str
    row: int  # index in the split's dataset
    name: str
    file: str
    reason: str


# ----------------------------------------------------------------------------------------------- media probing
def _short(declared: float, got: float) -> bool:
    return declared - got > max(AUDIO_SHORTFALL[0], AUDIO_SHORTFALL[1] * declared)


def _stream_end(container, stream) -> float:
    """Time (s) of the end of the last frame decoded after seeking near the stream's declared end."""
    duration = stream_seconds(stream, container)
    if duration is None or duration <= 0:
        raise ValueError(f"no {stream.type} duration")
    try:
        container.seek(int(max(0.0, duration - END_WINDOW) / stream.time_base), stream=stream, backward=True)
    except av.FFmpegError:  # a file without a seek index: decode on from where we are (slower, same verdict)
        pass
    end = None
    for frame in container.decode(stream):
        if frame.time is not None:
            span = frame.samples / frame.sample_rate if stream.type == "audio" else 1 / float(stream.average_rate or 1)
            end = frame.time + span
    if end is None:
        raise ValueError(f"no {stream.type} frame decodes near the end ({duration:.2f} s)")
    return end


def probe(path: str, video: bool, audio: bool) -> str | None:
    """Why ``path`` cannot give the ``video``/``audio`` streams a sample needs, or None when it can."""
    if not os.path.isfile(path):
        return "file not found"
    if os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    try:
        with av.open(path) as container:
            streams = []
            if video:
                if not container.streams.video:
                    return "no video stream"
                streams.append(single_threaded(container.streams.video[0]))
            if audio:
                if not container.streams.audio:
                    return "no audio track"
                streams.append(single_threaded(container.streams.audio[0]))
            for stream in streams:  # decodes at the start
                container.seek(0, stream=stream)
                if next(container.decode(stream), None) is None:
                    return f"no {stream.type} frame decodes at the start"
            ends = {stream.type: (stream_seconds(stream, container), _stream_end(container, stream))
                    for stream in streams}
    except (av.FFmpegError, ValueError, OSError, StopIteration) as err:
        return f"unreadable, truncated or corrupt ({decoder_reason(err)})"
    declared_wav = wav_duration(path) if audio and path.lower().endswith(".wav") else None
    if declared_wav is not None and _short(declared_wav, ends["audio"][1]):
        return f"truncated audio: the header announces {declared_wav:.2f} s, the file holds {ends['audio'][1]:.2f} s"
    for kind, (declared, end) in ends.items():
        if _short(declared, end):
            return f"truncated {kind}: {end:.2f} s decode of {declared:.2f} s declared"
    if "video" in ends and "audio" in ends and _short(ends["video"][1], ends["audio"][1]):
        return f"truncated audio: {ends['audio'][1]:.2f} s against {ends['video'][1]:.2f} s of video"
    return None


def media_needs(row: dict) -> list[tuple[str, bool, bool]]:
    """(path, needs video, needs audio) per file of a dataset row; audio ``""`` is the video's own track."""
    video, audio = row.get("video") or "", row.get("audio", "")
    needs = []
    if video:
        needs.append((video, True, audio == ""))
    if audio:
        needs.append((audio, False, True))
    return needs


class ProbeCache:
    """Verdicts by (path, needs), valid while the file's size and mtime are unchanged; stored as JSON at ``path``
    (None: kept in memory only). ``save=False`` reads the file but never writes it (processes other than the main)."""

    def __init__(self, path: Path | None, save: bool = True):
        self.path, self.entries, self.writable = path, {}, save
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("version") == CACHE_VERSION:
                    self.entries = data["entries"]
            except (ValueError, KeyError, TypeError):
                logger.warning("%s: unreadable pre-flight cache, probing again", path)

    @staticmethod
    def key(path, video, audio) -> str:
        return f"{'v' if video else ''}{'a' if audio else ''}:{path}"

    @staticmethod
    def stamp(path) -> list | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    def get(self, path, video, audio):
        entry = self.entries.get(self.key(path, video, audio))
        stamp = self.stamp(path)
        if entry is None or stamp is None or entry["stamp"] != stamp:
            return False, None
        return True, entry["reason"]

    def put(self, path, video, audio, reason):
        stamp = self.stamp(path)
        if stamp is not None:  # a missing file is probed again next time
            self.entries[self.key(path, video, audio)] = {"stamp": stamp, "reason": reason}

    def save(self):
        if self.path is not None and self.writable:
            atomic_write(self.path, json.dumps({"version": CACHE_VERSION, "entries": self.entries}) + "\n")


def probe_all(needs, cache: ProbeCache, workers: int = 2) -> dict[tuple, str | None]:
    """``{(path, video, audio): reason or None}`` for every distinct need; probes what the cache does not hold."""
    verdicts, todo = {}, []
    for need in dict.fromkeys(needs):
        hit, reason = cache.get(*need)
        if hit:
            verdicts[need] = reason
        else:
            todo.append(need)
    if todo:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for need, reason in zip(todo, pool.map(lambda n: probe(*n), todo)):
                verdicts[need] = reason
                cache.put(*need, reason)
        cache.save()
        logger.info("pre-flight: probed %d media files in %.1f s (%d from the cache)", len(todo),
                    time.perf_counter() - t0, len(verdicts) - len(todo))
    return verdicts


# ------------------------------------------------------------------------------------------------ text length
def _min_video_tokens(processor) -> int:
    """Tokens of the smallest video the length rule keeps (``temporal_patch_size`` frames at ``frame_size``)."""
    tps, size = processor.video_processor.temporal_patch_size, processor.frame_size
    sample = {"video": np.zeros((tps, size, size, 3), dtype=np.uint8), "audio": None}
    encoded = processor.encode(sample, training=False)
    return len(encoded.input_ids) - _text_tokens(processor, [processor.render(True, False)])[0]


def _text_tokens(processor, prompts) -> list[int]:
    """Tokens of rendered prompts, each media placeholder counted as one (as the processor's length rule does)."""
    ids = processor.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    tokens = (processor.video_token, processor.audio_token)
    placeholders = {processor.tokenizer.convert_tokens_to_ids(t) for t in tokens}
    return [sum(i not in placeholders for i in row) for row in ids]


def text_problems(rows: list[dict], processor) -> dict[int, str]:
    """``{row index: reason}`` for rows whose text and answer cannot fit ``processor.max_length`` with any media."""
    if not rows:
        return {}
    min_video = None
    prompts, answers, media = [], [], []
    for row in rows:
        has_video = bool(row.get("video"))
        has_audio = bool(row.get("audio")) or has_video and row.get("audio", "") == ""
        interleaved = processor.audio_layout == "interleaved" and has_video and has_audio
        prompts.append(processor.render(has_video, has_audio, row.get("subtitle") or "", row.get("question"),
                                        interleaved))
        answers.append((row.get("answer") or answer_from_label(row["label"])) + "<|im_end|>")
        if has_video and min_video is None:
            min_video = _min_video_tokens(processor)
        media.append((min_video if has_video else 0) + int(has_audio) + 2 * interleaved)
    n_text = _text_tokens(processor, prompts)
    n_answer = [len(ids) for ids in processor.tokenizer(answers, add_special_tokens=False)["input_ids"]]
    budget = processor.max_length
    return {i: f"text too long: {t} prompt + {a} answer tokens with the smallest media ({m} tokens) exceed "
               f"max_length={budget} (subtitle of {len(rows[i].get('subtitle') or '')} characters)"
            for i, (t, a, m) in enumerate(zip(n_text, n_answer, media)) if t + a + m > budget}


# ------------------------------------------------------------------------------------------------------ check
def check_splits(splits: dict, processor=None, cache_file: Path | None = None, workers: int = 2,
                 save_cache: bool = True) -> list[BadSample]:
    """Every bad sample of ``{split name: dataset}`` (media probed, text measured when ``processor`` is given).

    ``cache_file``: the JSON verdict cache (read, and written unless ``save_cache=False``)."""
    cache = ProbeCache(cache_file, save_cache)
    rows = {split: ds.to_list() for split, ds in splits.items() if ds is not None}
    needs = [need for split_rows in rows.values() for row in split_rows for need in media_needs(row)]
    verdicts = probe_all(needs, cache, workers)
    bad = []
    for split, split_rows in rows.items():
        texts = text_problems(split_rows, processor) if processor is not None else {}
        for i, row in enumerate(split_rows):
            name = str(row.get("name") or row.get("video") or f"row {i}")
            for need in media_needs(row):
                if verdicts[need] is not None:
                    bad.append(BadSample(split, i, name, need[0], verdicts[need]))
            if i in texts:
                bad.append(BadSample(split, i, name, "subtitle", texts[i]))
    return bad


def drop_bad(ds, bad: list[BadSample], split: str):
    """``ds`` without the rows of ``split`` named in ``bad``."""
    rows = {b.row for b in bad if b.split == split}
    if ds is None or not rows:
        return ds
    return ds.select([i for i in range(len(ds)) if i not in rows])


def write_bad_samples(path: Path, bad: list[BadSample]):
    """One JSON line per bad sample: split, name, file, reason."""
    atomic_write(path, "".join(json.dumps(asdict(b), ensure_ascii=False) + "\n" for b in bad))


def describe(bad: list[BadSample], limit: int = 50) -> str:
    lines = [f"  {b.split} {b.name}: {b.file}: {b.reason}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return "\n".join(lines)
