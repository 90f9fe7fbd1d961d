"""Live emotion: beliefs that update as a stream arrives, chunk by chunk, at a cost flat in its length (issue 20).

The paper's observer "does not wait for the full utterance to conclude" (section 1); AffectVerse is trained on
partial observations (the kappa truncation, section 3.2). :class:`LiveSession` reads a stream 2 s at a time
(``config.seconds_per_chunk``, TMRoPE's chunk and the audio encoder's window) and after every chunk gives a
:class:`Reading`: the answer, the label scores over a label set, how far the beliefs moved and the update's latency.

Per chunk it encodes only the new chunk (the vision tower attends within each temporal patch, the audio tower within
each 2 s window), runs the language model over the chunk's tokens on top of the KV cache (pass 1 of the forward,
``model.language_states``), appends the chunk's hidden states to the EWM's stored past, rebuilds the beliefs from
that past (``model.ewm``) and recomputes only the suffix (closing tokens, first belief group, subtitle and question,
second belief group) through the engine's own ``Engine.generate`` (free-text answer, one-pass label scores), the
beliefs handed to the model's forward (``beliefs=``). The chunk's tokens of the interleaved layout (video then audio
per 2 s chunk) are a prefix of the longer clip's, so the reading after k chunks equals ``predict`` on the clip cut
after k chunks with the same processor settings (``audio_layout="interleaved"``, ``audio_features="window"``);
tests/test_live.py checks it. Video-only and audio-only streams have one block, which grows the same way.

Bounded for any length (``window_seconds``): two KV caches, started half a window apart, each extended by every
chunk; a cache is dropped once it spans a window and the reading comes from the older one, so a reading sees the
last W/2 to W seconds, exactly as ``predict`` on that stretch of the stream (its positions start at 0 again), and
memory and per-update cost stay flat (docs/design.md, "Live").

Sources (:func:`open_source`, PyAV): a file (as fast as possible, or at real time), a recording still being
written (``follow``), a capture device, a URL, an FFmpeg lavfi graph; stalls, ends and dropped frames are
:class:`Event` s in the stream of readings (:func:`live`).
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import av
import numpy as np
import torch
from transformers import BatchFeature, DynamicCache

from affectverse.inference.engine import Engine
from media_affectverse import single_threaded
from pipeline_affectverse import label_scores
from processing_affectverse import AUDIO_WINDOW_SECONDS, AffectVerseProcessor

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_SECONDS = 60.0
# What reading a model trained on the separate layout in live's interleaved layout cost on the embedded default
# (python -m benchmarks.layout_ablation: 4 seeds, 200 fresh clips; docs/design.md, "Which layout train.py trains").
SEPARATE_LAYOUT_COST = ("on the embedded default this cost 2.2 points of label-score accuracy on average (6.5 at "
                        "train.py's own seed) and 8.5 points of greedy-answer accuracy")


# ============================================================================================== readings
@dataclass
class Reading:
    """One update of a live stream: what the model believes after ``seconds`` of it."""

    seconds: float  # stream time observed (the end of the last chunk)
    chunk: int  # index of the last chunk (0-based)
    window_start: float  # stream time where the reading's context begins (0 until the stream outgrows the window)
    answer: str | None  # the free-text answer (None with max_new_tokens=0)
    label: str | None  # the most probable label of the label set (None without labels)
    label_scores: dict | None  # {label: probability}, summing to 1
    belief_shift: float | None  # ||b_t - b_prev|| / ||b_prev|| of the belief tokens (None: first reading)
    latency: float  # seconds this update took (encode + extend + read)
    dropped_frames: int = 0  # sampled video slots since the last reading that the source had no frame for

    def record(self) -> dict:
        return {"type": "reading", **asdict(self)}


@dataclass
class Event:
    """Something the source did: ``stall`` (no media for ``seconds``), ``end`` (the stream ended; ``detail`` says
    how, and what was left unread), ``note`` (a one-off remark, e.g. a source slower than the sampling rate)."""

    kind: str
    seconds: float  # stream time when it happened
    detail: str = ""
    waited: float | None = None  # stall: seconds without media so far

    def record(self) -> dict:
        return {"type": "event", **{k: v for k, v in asdict(self).items() if v is not None}}


# ============================================================================================== layout
class _Layout:
    """The token layout of a live prompt, read off the processor's own encoding of a one-chunk clip: the head (system
    prompt up to the media block's opening), one chunk's placeholder tokens, the suffix (closing tokens, beliefs,
    text, generation prompt) and their TMRoPE positions from the stock ``get_rope_index``."""

    def __init__(self, model, processor, has_video: bool, has_audio: bool, subtitle: str, question: str | None):
        cfg = model.config
        self.chunk_seconds = float(cfg.seconds_per_chunk)
        self.fps, self.sr = processor.fps, processor.feature_extractor.sampling_rate
        self.frames = round(self.fps * self.chunk_seconds) if has_video else 0  # sampled frames per chunk
        self.samples = round(self.sr * self.chunk_seconds) if has_audio else 0  # audio samples per chunk
        self.has_video, self.has_audio = has_video, has_audio
        self.subtitle, self.question = subtitle, question
        tps = processor.video_processor.temporal_patch_size
        if has_video and (abs(self.fps * self.chunk_seconds - self.frames) > 1e-9 or self.frames % tps):
            raise ValueError(f"live input needs {self.chunk_seconds:g} s of video at the processor's fps={self.fps:g} "
                             f"to be a whole number of temporal patches ({tps} frames); use an fps that gives that")
        window = 2 * cfg.audio_config.n_window * processor.feature_extractor.hop_length / self.sr
        if has_audio and not (abs(window - AUDIO_WINDOW_SECONDS) < 1e-9 and abs(window - self.chunk_seconds) < 1e-9):
            raise ValueError(f"live audio needs the audio encoder's window ({window:g} s: n_window="
                             f"{cfg.audio_config.n_window}) to equal the {AUDIO_WINDOW_SECONDS:g} s feature window and "
                             f"seconds_per_chunk={self.chunk_seconds:g}")
        enc = processor.encode(self.sample(np.zeros((self.frames, processor.frame_size, processor.frame_size, 3),
                                                    np.uint8) if has_video else None,
                                           np.zeros(self.samples, np.float32) if has_audio else None))
        ids = torch.tensor(enc.input_ids)
        media = ((ids == cfg.video_token_id) | (ids == cfg.audio_token_id)).nonzero().flatten()
        first, last = int(media[0]), int(media[-1]) + 1
        self.head, self.chunk, self.suffix = ids[:first], ids[first:last], ids[last:]
        self.is_video, self.is_audio = self.chunk == cfg.video_token_id, self.chunk == cfg.audio_token_id
        positions = self.positions_of(model, ids, enc.media, enc.interleaved)  # (3, L)
        self.head_positions, self.chunk0 = positions[:, :first], positions[:, first:last]
        self.suffix_offsets = positions[:, last:] - positions[:, :last].max()  # from the prefix's largest position
        self.start = int(self.head_positions.max()) + 1  # st_idx of get_rope_index: the media's first position
        self.spg = enc.media["video_second_per_grid"][0] if has_video else None
        self.patches = self.frames // tps  # temporal patches per chunk
        self.per_patch = int(self.is_video.sum()) // max(self.patches, 1)  # video tokens per temporal patch
        self.pps = cfg.position_id_per_seconds
        self.audio_step = round(self.pps * self.chunk_seconds)  # audio positions per chunk (25 per second)
        self.interleaved = enc.interleaved

    def sample(self, frames, audio) -> dict:
        return {"video": frames, "fps": self.fps, "audio": audio, "subtitle": self.subtitle, "question": self.question}

    @staticmethod
    def positions_of(model, ids, media, interleaved):
        """`(3, L)` TMRoPE positions of one prompt, by the stock ``get_rope_index``."""
        grid, features = media.get("video_grid_thw"), media.get("feature_attention_mask")
        positions, _ = model.get_rope_index(ids[None], None, grid, torch.ones_like(ids)[None], interleaved,
                                            features.sum(-1) if features is not None else None,
                                            media.get("video_second_per_grid"))
        return positions[:, 0]

    def chunk_positions(self, k: int) -> torch.Tensor:
        """`(3, n)` positions of the k-th chunk of a context (as ``get_rope_index`` gives the k-th chunk of a
        clip): audio runs on by 25 per second on every axis, a video patch's temporal position is
        ``long(patch * second_per_grid * 25)`` computed as the stock code does, its height/width positions are the
        first chunk's."""
        out = self.chunk0.clone()
        if self.has_audio:
            out[:, self.is_audio] += self.audio_step * k
        if self.has_video:
            patch = torch.arange(k * self.patches, (k + 1) * self.patches)
            t = (patch * self.spg.float() * self.pps).long() + self.start  # (patches,)
            if bool(((t - self.start) // self.audio_step != k).any()):
                raise ValueError(f"fps={self.fps:g}: video patch positions {t.tolist()} leave chunk {k}'s 2 s range")
            out[0, self.is_video] = t.repeat_interleave(self.per_patch)
        return out


# ============================================================================================== session
@dataclass
class _Context:
    """One KV cache of the stream from chunk ``start`` on: its prefix ids and positions, the EWM's stored past."""

    start: int
    cache: DynamicCache
    ids: list = field(default_factory=list)  # (n,) tensors: head, then one per chunk
    positions: list = field(default_factory=list)  # (3, n) tensors
    video: list = field(default_factory=list)  # (n_v, d) hidden states of the video tokens, per chunk
    audio: list = field(default_factory=list)  # (n_a, d)
    chunks: int = 0
    top: int = 0  # largest position so far


class LiveSession:
    """A model reading one stream: push video frames and audio samples, get a :class:`Reading` per chunk.

    Args:
        model, processor: an AffectVerse model (eval mode) and its processor (``engine.load_model``).
        labels: label set of the readings' ``label_scores`` (None: none).
        modality: ``"avt"`` (video + audio + text), ``"vt"`` (video only) or ``"at"`` (audio only).
        subtitle, question: the prompt's text (the subtitle stays the same for the whole stream).
        window_seconds: the longest stretch a reading sees (bounded memory and cost); None: the whole stream
            (memory grows; refused beyond the thinker's ``max_position_embeddings``).
        max_new_tokens: the free-text answer's budget (0: label scores only, no answer).

    Frames are pushed as `(T, H, W, 3)` uint8 at the processor's ``fps`` (sampled, in order), audio as a mono
    float32 `(N,)` waveform at its sampling rate (16 kHz). :meth:`push` returns the readings of the chunks it
    completed. The session reads with a copy of the processor set to the interleaved layout and window features (what
    live needs); a model trained on the separate layout is warned about (docs/design.md, "Live input").

    Example:

    ```python
    >>> session = LiveSession(model, processor, labels=["happy", "sad", "neutral"])
    >>> for reading in session.push(frames=frames_6_at_3fps, audio=two_seconds_at_16k):
    ...     print(reading.seconds, reading.label, reading.label_scores)
    ```
    """

    def __init__(self, model, processor, labels: Sequence[str] | None = None, modality: str = "avt",
                 subtitle: str = "", question: str | None = None, window_seconds: float | None = DEFAULT_WINDOW_SECONDS,
                 max_new_tokens: int = 16):
        if modality not in ("avt", "vt", "at"):
            raise ValueError(f"modality={modality!r}; expected avt, vt or at")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens}: 0 or more")
        self.model = model
        self.has_video, self.has_audio = modality != "at", modality != "vt"
        warn_layout(processor, self.has_video and self.has_audio)
        self.processor = AffectVerseProcessor.from_model_config(
            model.config, processor, audio_layout="interleaved", audio_features="window",
            max_length=max(processor.max_length, 8192))
        self.layout = _Layout(model, self.processor, self.has_video, self.has_audio, subtitle, question)
        self.engine = Engine(model, self.processor, max(max_new_tokens, 1), batch_size=1, num_workers=0,
                             labels=labels)
        self.labels, self.max_new_tokens = self.engine.labels, max_new_tokens
        self.window = None if not window_seconds else max(2, round(window_seconds / self.layout.chunk_seconds))
        self._check_positions()
        self.head_cache = DynamicCache()  # the head's keys/values: the same for every context
        with torch.no_grad():
            head = self.model.get_input_embeddings()(self.layout.head[None].to(model.device))
            self.model.language_states(head, None, self.layout.head_positions[:, None].to(model.device),
                                       self.head_cache)
        self.contexts: list[_Context] = []
        self.n_chunks = 0
        self._frames, self._audio = [], []  # pending media of the chunk being filled
        self._pending_frames = self._pending_samples = 0
        self._beliefs = None
        self.dropped = 0  # sampled slots without a source frame since the last reading (set by the source)

    @property
    def chunk_seconds(self) -> float:
        return self.layout.chunk_seconds

    def _check_positions(self, chunks: int | None = None):
        """Refuse a window (or, without one, a stream of ``chunks``) whose positions outrun the thinker's
        ``max_position_embeddings``."""
        limit = self.model.config.get_text_config().max_position_embeddings
        if (self.window or chunks) is None:
            return
        top = self.layout.start + self.layout.audio_step * (self.window or chunks)
        top += int(self.layout.suffix_offsets.max()) + self.max_new_tokens + 32  # the answer and label candidates
        if top >= limit and self.window is None:
            raise ValueError(f"the stream has reached TMRoPE position {top}, the thinker's max_position_embeddings="
                             f"{limit}: read long streams with a window (window_seconds, --window)")
        if top >= limit:
            seconds = (limit - self.layout.start - 64 - self.max_new_tokens) / self.layout.pps
            raise ValueError(f"a {self.window * self.chunk_seconds:g} s window reaches TMRoPE position {top}, beyond "
                             f"the thinker's max_position_embeddings={limit}; use a window of at most {seconds:.0f} s")

    # -- input ---------------------------------------------------------------------------------------------------
    def push(self, frames=None, audio=None, read: bool | str = True) -> list[Reading]:
        """Add sampled frames `(T, H, W, 3)` and/or audio samples `(N,)`; returns a reading per completed chunk
        (``read=False``: the chunks extend the caches without a reading; ``read="last"``: only the last chunk this
        push completes is read, so a reader that fell behind catches up with one reading)."""
        if read not in (True, False, "last"):
            raise ValueError(f"read={read!r}; expected True, False or 'last'")
        if frames is not None and len(frames):
            if not self.has_video:
                raise ValueError("this session reads audio only (modality='at'); frames were pushed")
            self._frames.append(np.asarray(frames))
            self._pending_frames += len(frames)
        if audio is not None and len(audio):
            if not self.has_audio:
                raise ValueError("this session reads video only (modality='vt'); audio was pushed")
            self._audio.append(np.asarray(audio, dtype=np.float32).reshape(-1))
            self._pending_samples += len(self._audio[-1])
        readings = []
        while self._whole_chunk():
            frames_chunk = self._take("_frames", "_pending_frames", self.layout.frames) if self.has_video else None
            audio_chunk = self._take("_audio", "_pending_samples", self.layout.samples) if self.has_audio else None
            last = not self._whole_chunk()
            reading = self.update(frames_chunk, audio_chunk, read=read is True or (read == "last" and last))
            if reading is not None:
                readings.append(reading)
        return readings

    def _whole_chunk(self) -> bool:
        """Whether the pending media hold a whole chunk."""
        return self._pending_frames >= self.layout.frames and self._pending_samples >= self.layout.samples

    def _take(self, name, count_name, n):
        parts = getattr(self, name)
        data = np.concatenate(parts) if len(parts) > 1 else parts[0]
        setattr(self, name, [data[n:]] if len(data) > n else [])
        setattr(self, count_name, len(data) - n)
        return data[:n]

    @property
    def pending_seconds(self) -> float:
        """Media received but not yet a whole chunk (what an ended stream leaves unread)."""
        have = [self._pending_frames / self.layout.fps] if self.has_video else []
        have += [self._pending_samples / self.layout.sr] if self.has_audio else []
        return min(have) if have else 0.0

    # -- one chunk -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, frames=None, audio=None, read: bool = True) -> Reading | None:
        """One chunk: `(F, H, W, 3)` frames (F = fps x 2 s) and/or `(2 s x sr,)` samples. Encodes it, extends every
        context, rotates the window and, with ``read``, returns the reading."""
        start = time.perf_counter()
        layout, model = self.layout, self.model
        enc = self.processor.encode(layout.sample(frames, audio))  # the processor's own path: features, grids
        ids = torch.tensor(enc.input_ids)
        body = ids[len(layout.head):len(ids) - len(layout.suffix)]
        if not torch.equal(body, layout.chunk):
            raise RuntimeError(f"chunk {self.n_chunks}: the processor gave {len(body)} media tokens, the live layout "
                               f"expects {len(layout.chunk)} (frame size or fps changed?)")
        media = {k: v.to(model.device) for k, v in enc.media.items() if torch.is_tensor(v)}
        for key in ("pixel_values_videos", "input_features"):
            if key in media:
                media[key] = media[key].to(model.dtype)
        embeds, _ = model.embed_media(body[None].to(model.device), **{k: media.get(k) for k in (
            "input_features", "feature_attention_mask", "pixel_values_videos", "video_grid_thw")})
        n = self.n_chunks
        self._check_positions(n + 1)
        if self.window is not None:  # a context spanning a whole window gives way to the younger one
            self.contexts = [c for c in self.contexts if n - c.start < self.window]
        if not self.contexts or (self.window is not None and n % max(self.window // 2, 1) == 0
                                 and all(c.start != n for c in self.contexts)):
            self.contexts.append(_Context(n, copy.deepcopy(self.head_cache), [layout.head],
                                          [layout.head_positions], top=int(layout.head_positions.max())))
        for ctx in self.contexts:
            positions = layout.chunk_positions(ctx.chunks)
            hidden = model.language_states(embeds, None, positions[:, None].to(model.device), ctx.cache)[0]
            ctx.ids.append(body)
            ctx.positions.append(positions)
            ctx.video.append(hidden[layout.is_video.to(hidden.device)])
            ctx.audio.append(hidden[layout.is_audio.to(hidden.device)])
            ctx.chunks += 1
            ctx.top = max(ctx.top, int(positions.max()))
        self.n_chunks += 1
        if not read:
            return None
        return self.read(start)

    def _beliefs_of(self, ctx: _Context):
        """The EWM's beliefs `(1, 2 N_b, d)` from the context's stored past (``_prepare`` at inference: kappa = 1,
        every present modality read); None for ``belief_construction="none"``."""
        model, cfg = self.model, self.model.config
        if model.ewm is None:
            return None
        d = cfg.get_text_config().hidden_size
        empty = torch.zeros(1, 1, d, device=model.device, dtype=model.dtype)
        video = torch.cat(ctx.video)[None] if self.has_video and cfg.uses_ewm else empty
        audio = torch.cat(ctx.audio)[None] if self.has_audio and cfg.uses_ewm else empty
        lengths = [torch.tensor([x.shape[1] if present else 0], device=model.device)
                   for x, present in ((video, self.has_video), (audio, self.has_audio))]
        use = [torch.tensor([present], device=model.device) for present in (self.has_video, self.has_audio)]
        return model.ewm(video, lengths[0], lengths[0], audio, lengths[1], lengths[1], use[0], use[1]).beliefs

    def read(self, start: float | None = None) -> Reading:
        """The reading of the oldest context (the longest stretch within the window): beliefs, then the suffix,
        the answer and the label scores on top of its cache, which is then cut back to the prefix."""
        start = time.perf_counter() if start is None else start
        ctx, layout, model = self.contexts[0], self.layout, self.model
        beliefs = self._beliefs_of(ctx)
        prefix = sum(len(i) for i in ctx.ids)
        ids = torch.cat(ctx.ids + [layout.suffix])[None]
        positions = torch.cat(ctx.positions + [layout.suffix_offsets + ctx.top], 1)[:, None]
        batch = BatchFeature({"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": positions,
                              "cache": ctx.cache, **({"beliefs": beliefs} if beliefs is not None else {})})
        labels = self.labels
        if self.max_new_tokens:
            answers, _, scores = self.engine.generate(batch, labels)
            answer, scores = answers[0], scores[0]
        else:
            answer, scores = None, self._scores(batch, labels) if labels else None
        cache = ctx.cache  # generate and label scoring grew it (and repeated it per label): back to the prefix
        if cache.layers[0].keys.shape[0] > 1:
            cache.batch_select_indices(torch.tensor([0], device=model.device))
        if cache.get_seq_length() > prefix:
            cache.crop(prefix - cache.get_seq_length())  # crop takes minus the count to remove
        shift = None
        if beliefs is not None:
            flat = beliefs.float().flatten()
            if self._beliefs is not None:
                shift = round(float((flat - self._beliefs).norm() / self._beliefs.norm().clamp(min=1e-12)), 6)
            self._beliefs = flat
        n = self.n_chunks - 1
        reading = Reading(seconds=round((n + 1) * self.chunk_seconds, 3), chunk=n,
                          window_start=round(ctx.start * self.chunk_seconds, 3), answer=answer,
                          label=max(scores, key=scores.get) if scores else None, label_scores=scores,
                          belief_shift=shift, latency=round(time.perf_counter() - start, 4),
                          dropped_frames=self.dropped)
        self.dropped = 0
        return reading

    def _scores(self, batch, labels) -> dict:
        """Label scores without a free-text answer: the suffix's pass on the cache, then one label pass."""
        batch = batch.to(self.model.device)
        prefix = self.contexts[0].cache.get_seq_length()
        out = self.model(input_ids=batch["input_ids"][:, prefix:], position_ids=batch["position_ids"][..., prefix:],
                         cache=batch["cache"], beliefs=batch.get("beliefs"), use_cache=True, logits_to_keep=1)
        probs = label_scores(self.model, batch, self.engine.candidates(labels), prompt=(out.logits[:, -1], out.cache))
        return {label: round(p, 6) for label, p in zip(labels, probs[0].cpu().tolist())}


def warn_layout(processor, both: bool):
    """A model whose processor read audio as a separate block is read in live's interleaved layout with a warning
    naming what that cost on the embedded default; whole-clip features are read per window (measured: no change)."""
    if both and getattr(processor, "audio_layout", "separate") != "interleaved":
        logger.warning("this model was trained with audio_layout='separate'; live reads the audio interleaved in the "
                       "video in 2 s chunks (Qwen2.5-Omni's native layout, which live needs): %s. Train with "
                       "--audio_layout interleaved (train.py's default) for live use.", SEPARATE_LAYOUT_COST)
    if getattr(processor, "audio_features", "clip") != "window":
        logger.info("this model's processor computes the log-mel over the whole clip; live computes it per 2 s window "
                    "(on the embedded default the two gave the same accuracy)")


# ============================================================================================== sources
@dataclass
class _Media:
    kind: str  # "video" (payload: (F, H, W, 3) uint8 sampled frames), "audio" ((N,) float32), "event", "end"
    payload: object
    time: float  # stream time (s)
    dropped: int = 0


def parse_source(source: str) -> tuple[str, str | None]:
    """(what ``av.open`` opens, the FFmpeg input format or None) of a SOURCE: a path, a URL, or ``FORMAT:INPUT``
    (``lavfi:testsrc=size=64x64:rate=6``, ``v4l2:/dev/video0``, ``avfoundation:0:0``, ``dshow:video=Cam``)."""
    if "://" in source:
        return source, None
    match = re.match(r"^([A-Za-z0-9_]{2,}):(.+)$", source)  # two letters at least: C:\\clip.mp4 stays a path
    if match and not os.path.exists(source):
        fmt, target = match.groups()
        if fmt not in av.formats_available:
            raise ValueError(f"SOURCE {source!r}: {fmt!r} is not an FFmpeg input format of this PyAV build (e.g. "
                             "lavfi, v4l2, avfoundation, dshow), nor a file or a URL")
        return target, fmt
    if not os.path.isfile(source):
        raise ValueError(f"SOURCE {source!r}: no such file (a SOURCE is a path, a URL or FORMAT:INPUT, e.g. "
                         "lavfi:testsrc=size=64x64:rate=6:duration=8)")
    return source, None


class StreamReader:
    """Decodes a source with PyAV in a background thread into sampled frames and 16 kHz audio, in order.

    Video frames are sampled at ``fps`` by the same rule as a file's ``sample_indices`` (source frame
    ``round(t * src_fps)`` fills the sample slots up to it), resized to ``size`` like ``load_video``; audio is resampled
    with swresample to mono float32 like ``load_audio``. A file is read as fast as the consumer takes it
    (``realtime``: paced at its own speed); a growing file is read with ``follow`` (FFmpeg's file protocol waits
    for more data); every source ends after ``give_up`` seconds without data. Events: ``stall`` after
    ``stall_timeout`` seconds without media, ``end``. ``options``: FFmpeg options of the input (a device's
    ``video_size``, ``framerate``; a network source's ``rtsp_transport``, ...).
    """

    def __init__(self, source: str, fps: float, size: int, sr: int = 16000, video: bool = True, audio: bool = True,
                 realtime: bool = False, follow: bool = False, stall_timeout: float = 5.0, give_up: float = 60.0,
                 max_seconds: float | None = None, options: dict | None = None):
        target, fmt = parse_source(source)
        follow_options = {"follow": "1", "seekable": "0", "rw_timeout": str(int(give_up * 1e6))}
        options = {**(follow_options if follow else {}), **(options or {})}
        try:
            self.container = av.open(target, format=fmt, options=options, timeout=(give_up, give_up))
        except av.FFmpegError as err:
            raise ValueError(f"SOURCE {source!r}: cannot be opened ({err})") from None
        self.source, self.fps, self.size, self.sr = source, fps, size, sr
        self.realtime, self.stall_timeout, self.give_up = realtime, stall_timeout, give_up
        self.max_seconds = max_seconds
        streams = self.container.streams
        if video and not streams.video:
            self.container.close()
            raise ValueError(f"SOURCE {source!r} has no video stream (read it audio-only: --modality at)")
        if audio and not streams.audio:
            self.container.close()
            raise ValueError(f"SOURCE {source!r} has no audio stream (read it video-only: --modality vt)")
        self.video = single_threaded(streams.video[0]) if video else None
        self.audio = single_threaded(streams.audio[0]) if audio else None
        self.queue: queue.Queue = queue.Queue(maxsize=64)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="affectverse-live-source", daemon=True)
        self.thread.start()

    # -- decoding thread -----------------------------------------------------------------------------------------
    def _run(self):
        reason = "the source ended"
        try:
            self._decode()
        except av.ExitError:  # PyAV's read timeout: nothing arrived for give_up seconds
            reason = f"no data for {self.give_up:g} s: the source is taken as ended"
        except av.FFmpegError as err:
            reason = f"the source failed: {err}"
        except _Stopped:
            reason = "stopped"
        except _Ended:
            reason = f"--max-seconds {self.max_seconds:g} reached"
        except Exception as err:  # noqa: BLE001 - reported as the end of the stream, never a crash of the reader
            reason = f"the source failed: {type(err).__name__}: {err}"
        if reason != "stopped":
            try:  # what the decoders and swresample still hold (a source that did not reach a clean end of file)
                self._flush()
            except (av.FFmpegError, _Stopped, _Ended):
                pass
        self.container.close()
        self._put(_Media("end", reason, 0.0))

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        if item.kind != "end":
            raise _Stopped

    def _decode(self):
        video, audio = self.video, self.audio
        src_fps = float(video.average_rate or video.guessed_rate or 0) if video else 0.0
        self.src_fps = src_fps if src_fps > 0 else self.fps
        if video and self.src_fps < self.fps:
            self._put(_Media("event", Event("note", 0.0, f"the source has {self.src_fps:g} fps, fewer than the "
                                                         f"sampling rate {self.fps:g}: frames are repeated"), 0.0))
        self.base = {s: (s.start_time or 0) for s in (video, audio) if s is not None}
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sr) if audio else None
        self.slot, self.current, self.clock = 0, -1, None
        for packet in self.container.demux(*[s for s in (video, audio) if s is not None]):
            if self._stop.is_set():
                raise _Stopped
            for frame in packet.decode():
                self._frame(packet.stream, frame)

    def _flush(self):
        if not hasattr(self, "base"):
            return
        for stream in self.base:
            try:
                frames = stream.codec_context.decode(None)
            except av.FFmpegError:  # already flushed by the end of file
                frames = []
            for frame in frames:
                self._frame(stream, frame)
        if self.resampler is not None:
            self._audio_out(self.resampler.resample(None), None)  # as load_audio, what swresample holds back

    def _frame(self, stream, frame):
        t = float((frame.pts - self.base[stream]) * stream.time_base) if frame.pts is not None else None
        if self.max_seconds is not None and t is not None and t >= self.max_seconds:
            raise _Ended
        if self.realtime and t is not None:  # pace a file at its own speed
            self.clock = self.clock or (time.monotonic() - t)
            delay = self.clock + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if stream is not self.video:
            self._audio_out(self.resampler.resample(frame), t)
            return
        self.current = round(t * self.src_fps) if t is not None else self.current + 1
        filled = 0
        while int(self.slot * self.src_fps / self.fps + 1e-6) <= self.current:  # sample_indices' rule
            filled, self.slot = filled + 1, self.slot + 1
        if filled:
            image = frame.to_ndarray(width=self.size, height=self.size, format="rgb24", interpolation="BILINEAR")
            skipped = filled - 1 if self.src_fps >= self.fps else 0  # slots whose source frame never came
            self._put(_Media("video", np.repeat(image[None], filled, axis=0), (self.slot - filled) / self.fps,
                             skipped))

    def _audio_out(self, frames, t):
        for out in frames:
            self._put(_Media("audio", out.to_ndarray().reshape(-1).astype(np.float32), t or 0.0))

    # -- consumer ------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[_Media]:
        """Media in order; a ``stall`` event after ``stall_timeout`` s without any, and once more each time as long;
        ends after the ``end`` item."""
        waited, seconds = 0.0, 0.0
        while True:
            try:
                item = self.queue.get(timeout=self.stall_timeout)
            except queue.Empty:
                waited += self.stall_timeout
                yield _Media("event", Event("stall", seconds, "no media from the source", round(waited, 3)), seconds)
                continue
            waited = 0.0
            seconds = max(seconds, item.time)
            yield item
            if item.kind == "end":
                return

    def close(self):
        self._stop.set()
        self.thread.join(timeout=5)


class _Stopped(Exception):
    """The consumer closed the reader."""


class _Ended(Exception):
    """The stream reached ``max_seconds``."""


def live(model, processor, source: str, labels: Sequence[str] | None = None, modality: str = "avt",
         subtitle: str = "", window_seconds: float | None = DEFAULT_WINDOW_SECONDS, max_new_tokens: int = 16,
         realtime: bool = False, follow: bool = False, stall_timeout: float = 5.0, give_up: float = 60.0,
         max_seconds: float | None = None, options: dict | None = None) -> Iterator[Reading | Event]:
    """Readings of a source as it plays (see :class:`LiveSession`, :class:`StreamReader`), with the source's
    stalls and its end as :class:`Event` s between them.

    Example:

    ```python
    >>> for item in live(model, processor, "lavfi:testsrc=size=64x64:rate=6:duration=8", labels=["happy", "sad"],
    ...                  modality="vt"):
    ...     print(item.record())
    ```
    """
    session = LiveSession(model, processor, labels, modality, subtitle, window_seconds=window_seconds,
                          max_new_tokens=max_new_tokens)
    reader = StreamReader(source, session.processor.fps, session.processor.frame_size, session.layout.sr,
                          video=session.has_video, audio=session.has_audio, realtime=realtime, follow=follow,
                          stall_timeout=stall_timeout, give_up=give_up, max_seconds=max_seconds, options=options)
    try:
        for item in reader:
            if item.kind == "event":
                yield item.payload
            elif item.kind == "end":
                left = session.pending_seconds
                yield Event("end", session.n_chunks * session.chunk_seconds,
                            item.payload + (f"; {left:.2f} s after the last whole chunk left unread" if left else ""))
            else:
                session.dropped += item.dropped
                readings = session.push(frames=item.payload if item.kind == "video" else None,
                                        audio=item.payload if item.kind == "audio" else None)
                yield from readings
    finally:
        reader.close()


__all__ = ["DEFAULT_WINDOW_SECONDS", "Event", "LiveSession", "Reading", "StreamReader", "live", "parse_source"]
