"""Emotion over time: a clip's answer, label and label scores at growing observation ratios (issue 14).

The observation ratio r keeps the first fraction r of the clip, the paper's kappa truncation (section 3.2, Eq.
11-12) applied at inference: the processor's ``keep_ratio``. The case study of Figure 7 / Appendix A.4 reads a
clip at 10 % ("stress") and at 100 % ("neutral"); :func:`trajectory` gives that reading at every ratio
(default 0.1, 0.2, ..., 1.0) and :func:`plot_trajectories` draws it like Figure 7.

Two ways to compute it, the same results (tests/test_trajectory.py):

- ``reuse=False``: one independent prediction per ratio (``Engine.predict`` at ``Setting(modality, r)``).
- ``reuse=True`` (default): the clip is decoded once, each ratio's frames and samples are cut from that decode
  by the processor's own counting rule for a file at that ratio (so each ratio's input is exactly what the
  file gives at that ``keep_ratio``), and all the ratios of a clip go through the model as one batch (one
  ``generate`` and one label-scoring pass). With ``share_prefix=True`` (default) that batch's prompt pass also
  shares the KV cache across ratios: each shorter ratio's prompt begins like the full clip's (the system
  prompt and every audio/video token before the first one the cut changes), and those tokens' keys, values and
  EWM-layer states are computed once, on the longest prompt (the model's ``share_prefix``; docs/design.md,
  "Trajectory"; benchmarks/trajectory_bench.py prints how many tokens that is).
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from affectverse import ownership
from affectverse.inference.engine import MEDIA_ERRORS, MODALITIES, Engine, NonFiniteError, Setting, _name, modality_row
from media_affectverse import audio_seconds, load_audio, load_video, probe, sample_indices
from processing_affectverse import AffectVerseCollator

logger = logging.getLogger(__name__)

DEFAULT_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 11))
FIGURE_MARK = "affectverse predict --figure"  # the PNG text chunk by which predict knows its own figure


def parse_ratios(text: str | Sequence[float] | None) -> tuple[float, ...]:
    """``"0.1,0.5,1"`` (or a sequence) -> sorted unique ratios in (0, 1]; None: :data:`DEFAULT_RATIOS`."""
    if text is None:
        return DEFAULT_RATIOS
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip()]
    except (TypeError, ValueError):
        values = []
    if not values or not all(0 < v <= 1 for v in values):  # NaN fails too
        raise ValueError(f"--ratios {text!r}: comma-separated observation ratios, each in (0, 1]")
    return tuple(sorted(set(values)))


# ================================================================================================ decoding
def ratio_samples(processor, sample: dict, ratios: Sequence[float]) -> list[tuple[dict, float]]:
    """(processor sample, keep_ratio to encode it with) for each ratio, the clip's media decoded once.

    A video file is decoded at the largest ratio; ratio r keeps the first ``len(sample_indices(..., r))`` of its
    frames (``sample_indices`` at r gives a prefix of the indices at a larger ratio) and the first
    ``round(duration * r * sr)`` audio samples, the counts the processor takes from the file at ``keep_ratio=r``;
    those samples are then encoded with ``keep_ratio=1``. Anything else (arrays, audio of unknown length) is left
    to the processor at ``keep_ratio=r``.
    """
    video, audio = sample.get("video"), sample.get("audio")
    top, sr = max(ratios), processor.feature_extractor.sampling_rate
    out = [dict(sample) for _ in ratios]
    cut_video = cut_audio = video is None
    if isinstance(video, (str, os.PathLike)):
        info = probe(video, processor.video_backend)
        clip = load_video(video, processor.fps, processor.frame_size, top, backend=processor.video_backend, info=info)
        for s, r in zip(out, ratios):
            n = len(sample_indices(info.n_frames, info.fps, processor.fps, r)[0])
            s["video"], s["fps"] = clip.frames[:n], clip.fps
        cut_video = True
    seconds = None
    if audio == "video" and cut_video and video is not None:
        seconds, wave_ = info.duration, load_audio(video, sr, top, expected_duration=info.duration)
    elif isinstance(audio, (str, os.PathLike)) and audio != "video":
        seconds = audio_seconds(audio)
        wave_ = load_audio(audio, sr, top) if seconds is not None else None
    if seconds is not None:
        for s, r in zip(out, ratios):
            s["audio"] = wave_[: max(1, round(seconds * r * sr))]
        cut_audio = True
    elif audio is None:
        cut_audio = True
    if cut_video and cut_audio:
        return [(s, 1.0) for s in out]
    return [(dict(sample), r) for r in ratios]  # not cut here: the processor reads each ratio itself


def decode_trajectory(processor, settings: Sequence[Setting], row: dict):
    """(left-padded batch of one clip at each setting's ratio, or None; the reason when it failed)."""
    sample = AffectVerseCollator(processor, training=False).sample(modality_row(row, settings[0].modality))
    try:
        pairs = ratio_samples(processor, sample, [s.keep_ratio for s in settings])
        encoded = [processor.encode(s, False, keep, i) for i, (s, keep) in enumerate(pairs)]
        return processor.collate(encoded, padding_side="left"), None
    except (ValueError, KeyError) as err:  # MediaError names the file
        return None, str(err)
    except MEDIA_ERRORS as err:
        return None, f"{type(err).__name__}: {err}"


def _decode_clip(processor, settings: list[Setting], rows: list[dict]):
    """A clip's ratios decoded once (:func:`decode_trajectory`), for :meth:`Engine.decoded`."""
    return decode_trajectory(processor, settings, rows[0])


# ================================================================================================== engine
def accepts(model, name: str) -> bool:
    """Whether ``model``'s forward (under a peft wrapper, its base model's) takes the input ``name``: a model
    folder's own older code may not know ``share_prefix``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


class TrajectoryEngine(Engine):
    """An :class:`Engine` whose jobs are clips: the pending ratios of one clip form one job (``reuse=True``:
    decoded once, one batch through the model; ``reuse=False``: one independent prediction per ratio). ``run``
    yields (setting, [row], [result]) per ratio, as ``predict_to_store`` expects."""

    def __init__(self, *args, reuse: bool = True, share_prefix: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.reuse = reuse
        if reuse and share_prefix and accepts(self.model, "share_prefix"):
            self.forward_kwargs = {"share_prefix": True}

    def batches(self, work: Sequence[tuple[Setting, dict]]) -> list[tuple[list[Setting], list[dict]]]:
        jobs: list[tuple[list[Setting], list[dict]]] = []
        for setting, row in work:
            last = jobs[-1] if jobs else None
            if last and _name(last[1][0]) == _name(row) and last[0][0].modality == setting.modality:
                last[0].append(setting)
                last[1].append(row)
            else:
                jobs.append(([setting], [row]))
        return jobs

    def run(self, jobs) -> Iterator[tuple[Setting, list[dict], list[dict]]]:
        if not jobs:
            return
        if not self.reuse:
            for settings, rows in jobs:
                for setting, row in zip(settings, rows):
                    yield setting, [row], self.predict(setting, [row])
            return
        for i, batch, reason, decode_seconds in self.decoded(jobs, _decode_clip):
            settings, rows = jobs[i]
            for setting, row, result in zip(settings, rows, self._clip_results(settings, rows, batch, reason,
                                                                                decode_seconds)):
                yield setting, [row], [result]

    def _clip_results(self, settings, rows, batch, reason, decode_seconds) -> list[dict]:
        start = time.perf_counter()
        if batch is None:
            seconds = round(decode_seconds / len(rows), 4)
            return [{"status": "error", "reason": reason, "seconds": seconds} for _ in rows]
        try:
            labels = self.label_set(rows)
            outputs = list(zip(*(self.generate(batch, labels) if labels else self.generate(batch))))
        except (KeyboardInterrupt, MemoryError, NonFiniteError):
            raise
        except Exception as err:  # noqa: BLE001 - fall back to one prediction per ratio
            logger.warning("%s: trajectory batch failed (%s: %s); predicting ratio by ratio", _name(rows[0]),
                           type(err).__name__, err)
            return [self.predict(s, [row])[0] for s, row in zip(settings, rows)]
        seconds = round((decode_seconds + time.perf_counter() - start) / len(rows), 4)
        return [{"status": "ok", **self.fields(*values), "seconds": seconds} for values in outputs]


def trajectory(model, processor, rows: Sequence[dict], ratios: Sequence[float] = DEFAULT_RATIOS,
               labels: Sequence[str] | None = None, modality: str = "avt", max_new_tokens: int = 64,
               reuse: bool = True, num_workers: int = 0, share_prefix: bool = True,
               explain: bool | str = False) -> list[list[dict]]:
    """Per row (``{"name", "video", "audio", "subtitle"}`` as ``affectverse predict`` builds them), its results
    at each ratio in ascending order: ``{"keep_ratio", "status", "answer", "label", "label_scores", ...}``.
    ``reuse`` and ``share_prefix``: see the module docstring (the results are the same either way); ``explain``:
    each result's ``belief_attention`` (:class:`Engine`).

    Example:

    ```python
    >>> [curve] = trajectory(model, processor, [{"name": "clip.mp4", "video": "clip.mp4", "audio": ""}],
    ...                      labels=["happy", "sad", "neutral", "worried"])
    >>> [(r["keep_ratio"], r["label"]) for r in curve]
    ```
    """
    ratios = parse_ratios(ratios)
    engine = TrajectoryEngine(model, processor, max_new_tokens, batch_size=1, num_workers=num_workers,
                              explain=explain, labels=labels, reuse=reuse, share_prefix=share_prefix)
    work = [(Setting(MODALITIES[modality], r), row) for row in rows for r in ratios]
    out: dict[str, list[dict]] = {}
    for setting, [row], [result] in engine.run(engine.batches(work)):
        out.setdefault(_name(row), []).append({"keep_ratio": setting.keep_ratio, **result})
    return [out[_name(row)] for row in rows]


# ================================================================================================== figure
def is_figure(path) -> bool:
    """Whether ``path`` is a PNG :func:`plot_trajectories` drew (its text chunk ``Software`` says so)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.info.get("Software") == FIGURE_MARK
    except (OSError, ValueError):
        return False


def plot_trajectories(curves: dict[str, list[dict]], path, labels: Sequence[str] | None = None,
                      columns: int = 2, source=None, x: str = "keep_ratio", max_strip: int = 20) -> Path:
    """A PNG like Figure 7: per clip, a strip of the top label with its probability at each observed fraction,
    above the per-label probability curves. ``curves``: ``{clip name: records}`` with ``keep_ratio``,
    ``label_scores`` (and ``label``); several clips make a grid of ``columns`` columns. ``x="seconds"`` draws a
    live stream's readings over stream time (``affectverse live``); the strip then shows at most ``max_strip``
    readings, evenly spread."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    curves = {name: sorted((r for r in recs if r.get("label_scores")), key=lambda r: r[x])
              for name, recs in curves.items()}
    curves = {name: recs for name, recs in curves.items() if recs}
    if not curves:
        raise ValueError("no records with label_scores to plot (predict with --labels)")
    labels = list(labels or next(iter(curves.values()))[0]["label_scores"])
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    columns = max(1, min(columns, len(curves)))
    n_rows = -(-len(curves) // columns)
    fig = plt.figure(figsize=(5.2 * columns, 3.6 * n_rows))
    grid = fig.add_gridspec(2 * n_rows, columns, height_ratios=[1, 3.2] * n_rows, hspace=0.55, wspace=0.25)
    for k, (name, recs) in enumerate(curves.items()):
        row, col = divmod(k, columns)
        strip, ax = fig.add_subplot(grid[2 * row, col]), fig.add_subplot(grid[2 * row + 1, col])
        xs = [r[x] for r in recs]
        shown = recs if len(recs) <= max_strip else [recs[round(i * (len(recs) - 1) / (max_strip - 1))]
                                                     for i in range(max_strip)]
        for i, r in enumerate(shown):
            top = max(r["label_scores"], key=r["label_scores"].get)
            strip.add_patch(plt.Rectangle((i, 0), 1, 1, color=colours.get(top, "grey"), alpha=0.85))
            strip.text(i + 0.5, 0.5, f"{top}\n{r['label_scores'][top]:.2f}", ha="center", va="center", fontsize=6)
        strip.set_xlim(0, len(shown))
        strip.set_ylim(0, 1)
        tick = (lambda v: f"{v:.0%}") if x == "keep_ratio" else (lambda v: f"{v:g}s")
        strip.set_xticks([i + 0.5 for i in range(len(shown))], [tick(r[x]) for r in shown], fontsize=6)
        strip.set_yticks([])
        strip.set_title(Path(str(name)).name, fontsize=8)
        for label in labels:
            ax.plot(xs, [r["label_scores"].get(label, float("nan")) for r in recs],
                    marker="o" if len(recs) <= 60 else None, ms=3, color=colours[label], label=label)
        ax.set_xlabel("observed fraction of the clip" if x == "keep_ratio" else "seconds of the stream")
        ax.set_ylabel("label probability")
        ax.set_ylim(0, 1)
        ax.set_xlim(0, 1.02 if x == "keep_ratio" else max(xs) * 1.02)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=6, ncol=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ownership.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png",
                    metadata={"Software": FIGURE_MARK, "Source": str(source or "")})
    plt.close(fig)
    return path
