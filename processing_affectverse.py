"""AffectVerse processor: AffectGPT-style emotion chats for the Qwen2.5-Omni thinker, with belief placeholders.

Remote code: imports only torch, transformers and its sibling files at module level; decord and PyAV are imported
inside the media loaders of ``media_affectverse`` (a checkpoint folder loads without them). Shapes: T frames, N audio
samples, L tokens.

One sample is a dict ``{"video", "audio", "subtitle", "question", "answer", "name"}``, every key optional:

- ``video``: a path (decoded with decord or PyAV at ``fps``, resized to ``frame_size`` x ``frame_size``), a
  [`VideoClip`], or frames `(T, H, W, 3)` uint8 (numpy or torch) already sampled at the processor's ``fps`` (or at
  ``sample["fps"]``);
- ``audio``: a path, a 16 kHz mono waveform `(N,)`, ``"video"`` for the video file's own track, or None;
- ``subtitle``: the transcript; ``question``: defaults to the processor's ``question``;
- ``answer``: the target text (training); without it the prompt ends with the generation prompt;
- ``text``, ``system``: the user's text verbatim (instead of subtitle and question) and a system prompt (how
  [`~AffectVerseProcessor.apply_chat_template`] passes a conversation on).

Chat (paper Appendix A; the official Qwen2.5-Omni chat template renders it), e.g. for audio + video in training::

    <|im_start|>system
    You are an emotion recognition assistant<|im_end|>
    <|im_start|>user
    <|vision_bos|><|VIDEO|>...<|vision_eos|><|audio_bos|><|AUDIO|>...<|audio_eos|><|belief|>x4Subtitle: {subtitle}
    {question}<|im_end|>
    <|im_start|>assistant
    <|belief|>x4{answer}<|im_end|>

The user text is ``"Subtitle: {subtitle}\\n{question}"`` (just ``question`` when the subtitle is empty). Belief
placeholders (``belief_split`` of the configuration): the first group right after the closing token of the last
media block, the second right after ``<|im_start|>assistant\\n``; none for text-only samples. Labels are -100
everywhere except the answer and its closing ``<|im_end|>`` (the template's newline after it is not added: it is
never generated). With ``audio_layout="interleaved"`` the audio rides inside the video block (Qwen's
``use_audio_in_video``: ``<|vision_bos|><|audio_bos|>`` video and audio chunks ``<|audio_eos|><|vision_eos|>``);
that flag is one per batch, so every sample of such a batch must have both video and audio.

Length rule (``max_length``, default 1024 tokens): text and answer are never cut. When a sample is too long, its
video keeps the largest number of frames that fits, a multiple of ``temporal_patch_size`` and at least
``temporal_patch_size`` of them, picked uniformly over the clip (its fps, hence ``video_second_per_grid``, scales
by the kept share); if even that is too long, the audio keeps its longest prefix that fits. Audio is read up to the
feature extractor's 30 s (what the audio encoder takes). The rule runs on the counts a file's metadata gives before
anything is decoded, and only the kept frames and audio samples are decoded, so memory is bounded by ``max_length``,
not by the clip's length. A warning names the sample and says exactly what was kept (frames of how many, seconds of
audio of how many). If text, answer and the minimal media still exceed ``max_length``, a ValueError names the sample.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import NamedTuple

import torch
from transformers import AddedToken, BatchFeature, Qwen2_5OmniProcessor

try:  # remote code: a package in transformers' module cache
    from .configuration_affectverse import BELIEF_TOKEN, belief_split
    from .media_affectverse import (
        MediaError,
        VideoClip,
        audio_seconds,
        load_audio,
        load_video,
        probe,
        sample_indices,
        uniform_subset,
    )
except ImportError:  # a clone or an installed wheel: flat top-level modules
    from configuration_affectverse import BELIEF_TOKEN, belief_split
    from media_affectverse import (
        MediaError,
        VideoClip,
        audio_seconds,
        load_audio,
        load_video,
        probe,
        sample_indices,
        uniform_subset,
    )

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "You are an emotion recognition assistant"
QUESTION = "Please recognize all possible emotional states of the character."  # AffectGPT's evaluation question
ANSWER_TEMPLATE = "The character's emotional state is {label}."  # AffectGPT's trained answer form
_MIN_PIXELS = 56 * 56  # smallest frame area the video processor may produce (no upscaling above it)
AUDIO_WINDOW_SECONDS = 2.0  # Qwen2.5-Omni's audio encoder attends within n_window * 2 = 200 mel frames (2 s)
AUDIO_FEATURES = ("clip", "window")


def answer_from_label(label) -> str:
    """AffectGPT's answer for a label: a word, a list of words (joined by ", "; empty: neutral), a valence
    (> 0 positive, < 0 negative, 0 neutral), or any of these JSON-encoded as ``affectverse.data.readers`` stores
    them."""
    if isinstance(label, str):
        try:
            decoded = json.loads(label)
            label = decoded if isinstance(decoded, (str, list, int, float)) and not isinstance(decoded, bool) else label
        except ValueError:
            pass
    if isinstance(label, (list, tuple)):
        label = ", ".join(str(w).strip() for w in label if str(w).strip()) or "neutral"
    elif isinstance(label, (int, float)) and not isinstance(label, bool):
        label = "positive" if label > 0 else "negative" if label < 0 else "neutral"
    return ANSWER_TEMPLATE.format(label=str(label).strip())


# The inverse, by rule: an answer's emotion words (what scoring, predict and the pipeline read from the free text).
_LEAD_INS = (  # "The character's emotional state is ...", "Emotions: ...", "She seems to be ..."
    re.compile(
        r"^[^.\[]*?\b(?:emotional\s+states?|emotions?|feelings?|moods?|sentiments?|labels?)\b[^.:,]*?"
        r"(?:\bis\b|\bare\b|\bincludes?\b|:)\s*",
        flags=re.IGNORECASE,
    ),
    re.compile(
        r"^(?:he|she|they|it|the\s+(?:main\s+)?(?:character|speaker|person|man|woman))\s+"
        r"(?:is|are|feels?|seems?|appears?|looks?)(?:\s+to\s+(?:be|feel))?\s+(?:feeling\s+)?",
        flags=re.IGNORECASE,
    ),
)
_SPLIT = re.compile(r"[,;/|\n]|\band\b|\bor\b|&", flags=re.IGNORECASE)
_EMPTY_ANSWERS = {"", "none", "n/a", "unknown", "nothing", "no emotion", "empty"}


def _clean_label(text: str) -> str:
    text = text.strip().strip("'\"`*.!?()[]{}<>-:").strip()
    return re.sub(r"\s+", " ", text).lower()


def extract_labels(answer: str) -> list[str]:
    """Rule-based label list from a free-text answer: lower-cased, de-duplicated, order kept.

    Handles ``"[a, b]"``, ``"The character's emotional state is a, b."``, ``"a and b"`` and a leading
    ``Output:``. Prefer :class:`LLMExtractor` for long free-form reasoning.

    >>> extract_labels("The character's emotional state is Happy, excited and happy.")
    ['happy', 'excited']
    """
    text = str(answer or "").strip()
    text = re.sub(r"^(?:output|answer)\s*:\s*", "", text, flags=re.IGNORECASE)
    bracket = re.search(r"\[([^\]]*)\]", text)
    if bracket:
        text = bracket.group(1)
    else:
        for lead_in in _LEAD_INS:
            text = lead_in.sub("", text, count=1)
        text = re.split(r"(?<=[a-z])\.(?:\s|$)", text, maxsplit=1, flags=re.IGNORECASE)[0]
    labels: list[str] = []
    for piece in _SPLIT.split(text):
        label = _clean_label(piece)
        if label not in _EMPTY_ANSWERS and label not in labels:
            labels.append(label)
    return labels


# ----------------------------------------------------------------------------- processor


def window_features(feature_extractor, audio, window_seconds: float = AUDIO_WINDOW_SECONDS):
    """Whisper log-mel features of ``audio`` `(N,)` computed window by window: `(1, mel, frames)` features and
    `(1, frames)` mask, the same frame count as one pass over the whole clip.

    Each ``window_seconds`` of samples is its own feature-extractor call (its own STFT edges and its own
    ``max - 8`` log floor), so a window's features depend on its own samples only: the features of a clip cut at a
    window boundary are a prefix of the longer clip's, which live input needs (``audio_features="window"``). The
    audio encoder already attends within 2 s windows; only the window's first and last mel frames (STFT padding)
    and the floor differ from one pass over the clip (docs/design.md, "Live").
    """
    sr, hop = feature_extractor.sampling_rate, feature_extractor.hop_length
    size = round(window_seconds * sr)
    if size % hop:
        raise ValueError(f"window_seconds={window_seconds}: {size} samples is not a whole number of {hop}-sample hops")
    audio = torch.as_tensor(audio, dtype=torch.float32).flatten().numpy()
    features, masks = [], []
    for start in range(0, len(audio), size):
        piece = audio[start:start + size]
        frames = math.ceil(len(piece) / hop)
        n = max(hop * frames, feature_extractor.n_fft)  # a tail shorter than one STFT window is zero-padded
        out = feature_extractor(piece, sampling_rate=sr, max_length=n, truncation=True, padding="max_length",
                                return_attention_mask=True, return_tensors="pt")
        features.append(out["input_features"][..., :frames])
        masks.append(out["attention_mask"][..., :frames])
    return torch.cat(features, -1), torch.cat(masks, -1)


class _Encoded(NamedTuple):
    """One processed sample before padding."""

    name: str
    input_ids: list
    labels: list | None
    media: dict  # the stock processor's media tensors for this sample
    interleaved: bool


class AffectVerseProcessor(Qwen2_5OmniProcessor):
    r"""The stock [`Qwen2_5OmniProcessor`] plus AffectVerse's chat, belief placeholders, media loading and length rule.

    Args:
        image_processor, video_processor, feature_extractor, tokenizer, chat_template: the stock components (the
            official Qwen2.5-Omni chat template). ``<|belief|>`` is added to the tokenizer as a special token when
            missing (it then takes the first free id: 151665 on the released tokenizer).
        num_belief_queries, injection, belief_construction: as in [`AffectVerseConfig`] (use
            [`~AffectVerseProcessor.from_model_config`] to copy them from a model).
        fps (`float`, defaults to 3.0): video sampling rate (Appendix A.3).
        frame_size (`int`, defaults to 224): frames are decoded at `(frame_size, frame_size)` and never upscaled.
        max_length (`int`, defaults to 1024): token budget per sample; see the module docstring for the rule.
        audio_layout (`str`, defaults to `"separate"`): `"separate"` audio block after the video block, or
            `"interleaved"` audio inside the video block (Qwen's `use_audio_in_video`; homogeneous batches only).
        audio_features (`str`, defaults to `"clip"`): `"clip"` Whisper's log-mel over the whole clip (the stock
            processor), or `"window"` computed per 2 s audio-encoder window ([`window_features`]), which live
            input needs; with `"window"` audio is not capped at the feature extractor's 30 s (the encoder reads
            any number of windows).
        system_prompt, question: the chat's system prompt and default question (Appendix A; AffectGPT's question).
        video_backend (`str`, *optional*): `"decord"` or `"av"` (PyAV); unset: `$AFFECTVERSE_VIDEO_BACKEND`, else
            decord where it imports, else PyAV (see `media_affectverse`).

    Example:

    ```python
    >>> processor = AutoProcessor.from_pretrained("path/to/affectverse", trust_remote_code=True)
    >>> batch = processor([{"video": "clip.mp4", "audio": "video", "subtitle": "I can't believe it.",
    ...                     "answer": "The character's emotional state is surprise."}])  # training batch
    >>> batch = processor(video="clip.mp4", audio="video", subtitle="I can't believe it.")  # generation prompt
    ```
    """

    def __init__(self, image_processor=None, video_processor=None, feature_extractor=None, tokenizer=None,
                 chat_template=None, num_belief_queries=4, injection="interleaved", belief_construction="ewm",
                 fps=3.0, frame_size=224, max_length=1024, audio_layout="separate", system_prompt=SYSTEM_PROMPT,
                 question=QUESTION, video_backend=None, audio_features="clip"):
        if injection not in ("interleaved", "single"):
            raise ValueError(f"injection={injection!r}; expected 'interleaved' or 'single'")
        if audio_layout not in ("separate", "interleaved"):
            raise ValueError(f"audio_layout={audio_layout!r}; expected 'separate' or 'interleaved'")
        if audio_features not in AUDIO_FEATURES:
            raise ValueError(f"audio_features={audio_features!r}; expected one of {AUDIO_FEATURES}")
        if tokenizer is not None and BELIEF_TOKEN not in tokenizer.get_added_vocab():
            tokenizer.add_tokens([AddedToken(BELIEF_TOKEN, special=True, normalized=False)], special_tokens=True)
        super().__init__(image_processor, video_processor, feature_extractor, tokenizer, chat_template=chat_template)
        self.num_belief_queries, self.injection, self.belief_construction = num_belief_queries, injection, \
            belief_construction
        self.fps, self.frame_size, self.max_length, self.audio_layout = float(fps), frame_size, max_length, audio_layout
        self.audio_features = audio_features
        self.system_prompt, self.question = system_prompt, question
        self.video_backend = video_backend  # None: decord where it imports, else PyAV (media_affectverse)
        self.belief_token = BELIEF_TOKEN
        self.belief_token_id = self.tokenizer.convert_tokens_to_ids(BELIEF_TOKEN)

    @classmethod
    def from_model_config(cls, config, base_processor, **kwargs):
        """An AffectVerseProcessor on ``base_processor``'s components (a stock Qwen2.5-Omni or an AffectVerse
        processor) with the belief settings of ``config`` (an AffectVerseConfig); ``kwargs`` override settings."""
        names = ("fps", "frame_size", "max_length", "audio_layout", "system_prompt", "question", "video_backend",
                 "audio_features")
        settings = {k: getattr(base_processor, k) for k in names if hasattr(base_processor, k)}
        settings.update({k: getattr(config, k) for k in ("num_belief_queries", "injection", "belief_construction")})
        settings.update(kwargs)
        processor = cls(base_processor.image_processor, base_processor.video_processor,
                        base_processor.feature_extractor, base_processor.tokenizer,
                        chat_template=base_processor.chat_template, **settings)
        if processor.belief_token_id != config.belief_token_id:
            raise ValueError(f"the tokenizer gives {BELIEF_TOKEN} id {processor.belief_token_id} but the config "
                             f"expects belief_token_id={config.belief_token_id}")
        return processor

    # -- public entry points ---------------------------------------------------------------------------------------
    def __call__(self, samples=None, images=None, videos=None, audio=None, *, text=None, video=None, subtitle=None,
                 question=None, answer=None, training=None, padding_side=None, keep_ratio=1.0, **kwargs):
        """Process ``samples`` (a dict or a list of dicts, see the module docstring) or one sample given by keywords
        (``video``, ``audio``, ``subtitle``, ``question``, ``answer``) into a padded batch; see [`prepare`].

        Called with ``text`` (or a string first argument) it is the stock Qwen2.5-Omni call (see [`stock_call`]).
        """
        if text is not None or isinstance(samples, (str, list)) and samples and isinstance(samples[0], str):
            return self.stock_call(text if text is not None else samples, images, videos, audio, **kwargs)
        if kwargs.pop("return_tensors", "pt") not in ("pt", None):
            raise ValueError("AffectVerseProcessor returns PyTorch tensors only")
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if samples is None:
            samples = {"video": video, "audio": audio, "subtitle": subtitle, "question": question, "answer": answer}
        return self.prepare(samples, training=training, padding_side=padding_side, keep_ratio=keep_ratio)

    def stock_call(self, text, images=None, videos=None, audio=None, **kwargs) -> BatchFeature:
        """The stock ``Qwen2_5OmniProcessor(text=..., videos=..., audio=...)`` call, with AffectVerse's additions.

        ``text`` is chat text with the template's media placeholders (``<|vision_bos|><|VIDEO|><|vision_eos|>``,
        ``<|audio_bos|><|AUDIO|><|audio_eos|>``), e.g. from ``apply_chat_template(..., tokenize=False)``. Video and
        audio paths are decoded with AffectVerse's own loaders (no torchcodec) at ``fps`` and ``frame_size``; frames
        are taken as sampled at ``fps``. Belief placeholders are inserted where the paper puts them (the module
        docstring) in every text that has media and none yet. Raises ValueError when media are given without their
        placeholders in the text (the stock processor would drop them silently) or a text with media has no
        ``<|im_start|>assistant\\n`` to put the second belief group after. No length rule here: use samples or
        [`apply_chat_template`] for it.
        """
        texts = [text] if isinstance(text, str) else list(text)
        videos = None if videos is None else [videos] if not isinstance(videos, (list, tuple)) else list(videos)
        audio = None if audio is None else [audio] if not isinstance(audio, (list, tuple)) or audio and \
            isinstance(audio[0], (int, float)) else list(audio)
        if kwargs.pop("use_audio_in_video", False) or kwargs.get("load_audio_from_video"):
            raise ValueError("load_audio_from_video / use_audio_in_video: pass the video's audio as a sample "
                             "(processor({'video': path, 'audio': 'video', ...})) or through apply_chat_template")
        for kind, items, token in (("videos", videos, self.video_token), ("audio", audio, self.audio_token)):
            found = sum(t.count(token) for t in texts)
            if items is not None and found != len(items):
                raise ValueError(f"{len(items)} {kind} given but the text has {found} {token} placeholders: the "
                                 f"stock processor would silently drop them. Put {token} in the chat text (e.g. via "
                                 f"processor.apply_chat_template(conversation)), or pass samples")
        if images is not None:
            raise ValueError("AffectVerse takes video, audio and text; images are not supported")
        sr = self.feature_extractor.sampling_rate
        if videos is not None:
            videos = [load_video(v, self.fps, self.frame_size, backend=self.video_backend).frames
                      if isinstance(v, (str, os.PathLike)) else v for v in videos]
            kwargs["videos_kwargs"] = {**self._videos_kwargs(self.fps), **kwargs.get("videos_kwargs", {})}
        if audio is not None:
            audio = [load_audio(a, sr) if isinstance(a, (str, os.PathLike)) else a for a in audio]
        texts = [self._insert_beliefs(t) for t in texts]
        return super().__call__(text=texts, videos=videos, audio=audio, **kwargs)

    def _insert_beliefs(self, text: str) -> str:
        """``text`` with the two belief groups after its last media block and after the assistant prompt."""
        has_video = self.video_token in text
        has_audio = self.audio_token in text
        if not (has_video or has_audio) or self.belief_token in text:
            return text
        n_first, n_second = belief_split(int(has_video) + int(has_audio), self.num_belief_queries, self.injection,
                                         self.belief_construction)
        marker = "<|im_start|>assistant\n"
        end = max(text.rfind(t) + len(t) for t in ("<|vision_eos|>", "<|audio_eos|>") if t in text)
        reply = text.rfind(marker)
        if reply < end:
            raise ValueError(f"a text with media must end its user turn with the generation prompt {marker!r} (the "
                             f"second belief group goes right after it): {text[:80]!r}...")
        reply += len(marker)
        return (text[:end] + self.belief_token * n_first + text[end:reply] + self.belief_token * n_second
                + text[reply:])

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """The stock ``apply_chat_template``; with ``tokenize=True`` a Qwen2.5-Omni conversation becomes an
        AffectVerse batch (media decoded with AffectVerse's loaders, the length rule, belief placeholders).

        A conversation: an optional system message, one user message whose content holds at most one
        ``{"type": "video", "video": path or frames}``, one ``{"type": "audio", "audio": path or waveform}`` and
        text items, and optionally an assistant message (then a training sample, with ``labels``). The media blocks
        come first and the text follows, as in AffectVerse's chat (module docstring).
        ``load_audio_from_video=True`` (or ``use_audio_in_video``) takes the audio from the video file. A list of
        conversations makes a batch. Returns the [`BatchFeature`] of [`prepare`] (with ``return_dict=True``) or
        its ``input_ids``.
        """
        if not kwargs.get("tokenize") or chat_template is not None:
            return super().apply_chat_template(conversation, chat_template, **kwargs)
        from_video = bool(kwargs.pop("load_audio_from_video", False) or kwargs.pop("use_audio_in_video", False))
        if kwargs.get("continue_final_message") or kwargs.get("tools") or kwargs.get("documents"):
            raise ValueError("AffectVerse conversations take no continue_final_message, tools or documents")
        conversations = conversation if conversation and isinstance(conversation[0], (list, tuple)) else [conversation]
        samples = [self.sample_from_conversation(c, from_video, f"conversation {i}")
                   for i, c in enumerate(conversations)]
        batch = self.prepare(samples, padding_side=kwargs.get("padding_side"))
        return batch if kwargs.get("return_dict") else batch["input_ids"]

    @staticmethod
    def sample_from_conversation(conversation, audio_from_video: bool = False, name: str = "conversation") -> dict:
        """The sample (module docstring) of a Qwen2.5-Omni conversation; see [`apply_chat_template`]."""
        sample, texts, roles = {"name": name}, [], [m.get("role") for m in conversation]
        if roles.count("user") != 1 or any(r not in ("system", "user", "assistant") for r in roles) or \
                "assistant" in roles and roles.index("assistant") < roles.index("user") or roles.count("assistant") > 1:
            raise ValueError(f"{name}: AffectVerse takes one exchange (optional system, one user turn, optional "
                             f"assistant answer); got roles {roles}")
        for message in conversation:
            content = message["content"]
            items = [{"type": "text", "text": content}] if isinstance(content, str) else content
            if message["role"] != "user":
                key = "system" if message["role"] == "system" else "answer"
                sample[key] = "".join(i.get("text", "") for i in items if i.get("type") == "text")
                continue
            for item in items:
                kind = item.get("type")
                if kind in ("video", "audio"):
                    value = next((item[k] for k in (kind, "path", "url") if item.get(k) is not None), None)
                    if value is None or kind in sample:
                        raise ValueError(f"{name}: each {kind} item needs a {kind!r} (path or array), at most one")
                    sample[kind] = value
                elif kind == "text":
                    texts.append(item["text"])
                else:
                    raise ValueError(f"{name}: content type {kind!r}; AffectVerse takes video, audio and text")
        if audio_from_video and "video" in sample:
            if "audio" in sample:
                raise ValueError(f"{name}: load_audio_from_video with an audio item as well")
            sample["audio"] = "video"
        sample["text"] = "".join(texts)
        return sample

    def prepare(self, samples, training: bool | None = None, padding_side: str | None = None,
                keep_ratio: float = 1.0) -> BatchFeature:
        """Load media, render the chats and build one padded batch.

        Args:
            samples (`dict` or `list[dict]`): see the module docstring.
            training (`bool`, *optional*): append the answers and return ``labels``; default: whether every sample
                has an answer.
            padding_side (`str`, *optional*): default ``"right"`` in training, ``"left"`` for generation.
            keep_ratio (`float`): keep only the first fraction of each clip's video and audio (Table 2 setting).

        Returns:
            [`BatchFeature`] with ``input_ids``, ``attention_mask`` `(B, L)`, ``labels`` `(B, L)` in training, and the
            stock media inputs: ``pixel_values_videos`` `(patches, 1176)`, ``video_grid_thw`` `(V, 3)`,
            ``video_second_per_grid`` `(V,)`, ``input_features`` `(A, 128, frames)`, ``feature_attention_mask``
            `(A, frames)`, plus ``use_audio_in_video`` (bool).
        """
        samples = [samples] if isinstance(samples, dict) else list(samples)
        if padding_side not in (None, "left", "right") or not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"padding_side={padding_side!r} (left or right), keep_ratio={keep_ratio} (in (0, 1])")
        if training is None:
            with_answer = [bool(s.get("answer")) for s in samples]
            if any(with_answer) and not all(with_answer):
                raise ValueError("some samples have an answer and some do not; pass training=True or False")
            training = all(with_answer)
        encoded = [self.encode(s, training=training, keep_ratio=keep_ratio, index=i) for i, s in enumerate(samples)]
        return self.collate(encoded, padding_side or ("right" if training else "left"))

    def encode(self, sample: dict, training: bool = False, keep_ratio: float = 1.0, index: int = 0) -> _Encoded:
        """One sample: plan its media to ``max_length``, decode only what is kept, render the chat, run the stock
        processor."""
        video, audio = sample.get("video"), sample.get("audio")
        video = None if isinstance(video, str) and not video else video
        audio = None if isinstance(audio, str) and not audio else audio
        name = str(sample.get("name") or (video if isinstance(video, (str, os.PathLike)) else f"sample {index}"))
        answer_ids = []
        if training:
            if not sample.get("answer"):
                raise ValueError(f"{name}: training sample without an answer")
            answer_ids = self.tokenizer(sample["answer"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        interleaved = self.audio_layout == "interleaved" and video is not None and audio is not None
        prompt = self.render(video is not None, audio is not None, sample.get("subtitle") or "",
                             sample.get("question") or self.question, interleaved, text=sample.get("text"),
                             system_prompt=sample.get("system"))
        n_text = self._text_tokens(prompt, interleaved)
        # 1. what the clip holds, from its metadata (nothing decoded yet), and what the length rule keeps of it
        source = self._video_source(video, keep_ratio, sample.get("fps") or self.fps)
        sr = self.feature_extractor.sampling_rate
        n_audio = self._audio_samples(audio, source, keep_ratio, sr)
        plan = self._plan(name, n_text, len(answer_ids), source and source[1:], n_audio)
        # 2. decode (or slice) only that, then the rule once more on what was actually decoded
        frames, fps = self._take_video(source, plan[0], keep_ratio)
        wave_ = self._take_audio(audio, source, keep_ratio, plan[2])
        frames_shape = None if frames is None else (frames.shape[0], frames.shape[1], frames.shape[2], fps)
        keep_t, fps, keep_a = self._plan(name, n_text, len(answer_ids), frames_shape,
                                         None if wave_ is None else len(wave_))
        if frames is not None and keep_t < frames.shape[0]:
            frames = frames[uniform_subset(frames.shape[0], keep_t)]
        cut_audio = wave_ is not None and (plan[2] < n_audio or keep_a < len(wave_))
        wave_ = None if wave_ is None else wave_[:keep_a]
        self._report(name, source, n_audio if cut_audio else None, frames, fps, wave_, n_text + len(answer_ids))
        expected = n_text + sum(self._media_tokens(frames, fps, wave_))
        ids, media = self._stock(prompt, frames, fps, wave_, interleaved)
        if len(ids) != expected:  # the length rule relies on this count
            raise RuntimeError(f"{name}: expected {expected} prompt tokens, the stock processor gave {len(ids)}")
        labels = None
        if training:
            labels, ids = [-100] * len(ids) + answer_ids, ids + answer_ids
        return _Encoded(name, ids, labels, media, interleaved)

    def render(self, has_video: bool, has_audio: bool, subtitle: str = "", question: str | None = None,
               interleaved: bool = False, text: str | None = None, system_prompt: str | None = None) -> str:
        """The prompt text (placeholders not expanded) up to and including the second belief group. ``text``: the
        user's text verbatim (instead of the subtitle and question); ``system_prompt``: instead of the default."""
        n_first, n_second = belief_split(int(has_video) + int(has_audio), self.num_belief_queries, self.injection,
                                         self.belief_construction)
        if text is None:
            text = f"Subtitle: {subtitle.strip()}\n{question or self.question}" if subtitle.strip() else \
                (question or self.question)
        content = [{"type": "video"}] if has_video else []
        content += [{"type": "audio"}] if has_audio and not interleaved else []
        # The first group opens the text item, which the template puts right after the last media block.
        content.append({"type": "text", "text": self.belief_token * n_first + text})
        messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt or self.system_prompt}]},
                    {"role": "user", "content": content}]
        prompt = super().apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt + self.belief_token * n_second

    def collate(self, encoded: list, padding_side: str = "right") -> BatchFeature:
        """Pad processed samples into one batch (see [`prepare`] for the keys)."""
        if not encoded:
            raise ValueError("no samples to collate")
        interleaved = [e.interleaved for e in encoded]
        if any(interleaved) and not all(interleaved):
            bad = encoded[interleaved.index(False)].name
            raise ValueError(f"audio_layout='interleaved' needs every sample of a batch to have video and audio "
                             f"(use_audio_in_video is one flag per batch); {bad} lacks one")
        length = max(len(e.input_ids) for e in encoded)
        data = {"input_ids": [], "attention_mask": []}
        if encoded[0].labels is not None:
            data["labels"] = []
        for e in encoded:
            pad, real = length - len(e.input_ids), len(e.input_ids)
            rows = {"input_ids": (e.input_ids, self.tokenizer.pad_token_id), "attention_mask": ([1] * real, 0),
                    "labels": (e.labels, -100)}
            for key in data:
                values, fill = rows[key]
                data[key].append([fill] * pad + values if padding_side == "left" else values + [fill] * pad)
        batch = {k: torch.tensor(v) for k, v in data.items()}
        batch.update(_stack_media([e.media for e in encoded]))
        batch["use_audio_in_video"] = all(interleaved)
        return BatchFeature(batch)

    # -- internals -------------------------------------------------------------------------------------------------
    def _video_source(self, video, keep_ratio, fps):
        """What a sample's video holds before decoding: (kind, T, h, w, fps, payload) or None.

        kind ``"file"`` (payload: (path, [`MediaInfo`]); T frames at ``self.fps`` over the first ``keep_ratio``),
        ``"clip"`` (a [`VideoClip`]) or ``"frames"`` (an array `(T, H, W, 3)` at ``fps``).
        """
        if video is None:
            return None
        if isinstance(video, (str, os.PathLike)):
            info = probe(video, self.video_backend)
            t = len(sample_indices(info.n_frames, info.fps, self.fps, keep_ratio)[0])
            return "file", t, self.frame_size, self.frame_size, min(self.fps, info.fps), (os.fspath(video), info)
        if isinstance(video, VideoClip):
            return "clip", video.frames.shape[0], video.frames.shape[1], video.frames.shape[2], video.fps, video
        t = max(1, math.ceil(len(video) * keep_ratio - 1e-9))
        return "frames", t, video.shape[1], video.shape[2], fps, video

    def _take_video(self, source, keep, keep_ratio):
        """(frames `(keep, H, W, 3)`, fps) of a source: only the kept frames are decoded."""
        if source is None:
            return None, None
        kind, t, _, _, fps, payload = source
        if kind == "file":
            clip = load_video(payload[0], self.fps, self.frame_size, keep_ratio, max_frames=keep,
                              backend=self.video_backend, info=payload[1])
            return clip.frames, clip.fps
        frames = payload.frames if kind == "clip" else payload[:t]
        return frames[uniform_subset(t, keep)], fps * keep / t

    def _audio_samples(self, audio, source, keep_ratio, sr):
        """Samples a sample's audio holds (after ``keep_ratio``) before decoding, or None without audio."""
        if audio is None:
            return None
        if isinstance(audio, str) and audio == "video":
            if source is None or source[0] != "file":
                raise ValueError("audio='video' needs the video as a file path")
            seconds = source[5][1].duration  # the video's own track is read over the video's duration
        elif isinstance(audio, (str, os.PathLike)):
            seconds = audio_seconds(audio)
        else:
            return max(1, round(len(audio) * keep_ratio))
        if seconds is None:  # unknown length: decode at most what the audio encoder reads
            return self._audio_cap()
        return max(1, round(seconds * keep_ratio * sr))

    def _take_audio(self, audio, source, keep_ratio, keep):
        """Mono float32 `(N,)` at the feature extractor's rate, at most ``keep`` samples decoded, or None."""
        sr = self.feature_extractor.sampling_rate
        if audio is None:
            return None
        if isinstance(audio, str) and audio == "video":
            path, info = source[5]
            return load_audio(path, sr, keep_ratio, expected_duration=info.duration, max_samples=keep)
        if isinstance(audio, (str, os.PathLike)):
            return load_audio(audio, sr, keep_ratio, max_samples=keep)
        wave_ = torch.as_tensor(audio, dtype=torch.float32).flatten()
        return wave_[: min(keep, max(1, round(len(wave_) * keep_ratio)))].numpy()

    def _videos_kwargs(self, fps):
        """The stock video processor's arguments: pre-sampled frames at ``fps``, ``frame_size``^2 never upscaled."""
        area = self.frame_size**2
        return {"fps": fps, "do_sample_frames": False, "cap_pixels_per_frame": False,
                "size": {"shortest_edge": min(_MIN_PIXELS, area), "longest_edge": area}}

    def _media_tokens(self, frames, fps, audio):
        """Placeholder tokens the stock processor will expand for these media (arrays or counts): (video, audio).
        ``frames``: an array `(T, H, W, 3)` or a shape (T, H, W[, fps]); ``audio``: a waveform or a sample count."""
        video = 0
        if frames is not None:
            t, h, w = frames.shape[:3] if hasattr(frames, "shape") else frames[:3]
            video = self.video_processor.get_num_of_video_patches(t, h, w, self._videos_kwargs(fps)) \
                // self.video_processor.merge_size**2
        n = audio if isinstance(audio, int) or audio is None else len(audio)
        return video, 0 if n is None else int(self._get_num_audio_tokens(n))

    def _text_tokens(self, prompt, interleaved):
        """Tokens of ``prompt`` other than the media placeholders the stock processor expands."""
        n_text = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        n_text -= prompt.count(self.video_token) + prompt.count(self.audio_token)  # each placeholder is one token
        return n_text + 2 * interleaved  # the interleaved block adds <|audio_bos|> and <|audio_eos|> in the video

    def _get_num_audio_tokens(self, audio_length: int, **kwargs) -> int:
        """Audio tokens of ``audio_length`` samples: the stock count, without its 30 s cap for window features."""
        if self.audio_features != "window":
            return super()._get_num_audio_tokens(audio_length, **kwargs)
        frames = math.ceil(audio_length / self.feature_extractor.hop_length)
        return ((frames - 1) // 2 + 1 - 2) // 2 + 1  # the encoder's conv stride 2, then its pooling stride 2

    def _audio_cap(self) -> int:
        """Most audio samples a sample keeps: the feature extractor's 30 s with ``audio_features="clip"``; with
        ``"window"`` only the length rule binds (the samples of ``max_length`` audio tokens, 4 mel hops each)."""
        if self.audio_features == "window":
            return 4 * self.feature_extractor.hop_length * (self.max_length + 1)
        return self.feature_extractor.n_samples

    def _plan(self, name, n_text, n_answer, video, n_audio):
        """The length rule (module docstring) on counts: ``video`` (T, H, W, fps) or None, ``n_audio`` samples or
        None. Returns (frames kept, their fps, audio samples kept); audio is capped at the feature extractor's
        ``n_samples`` (30 s: what the audio encoder reads). Raises ValueError when even the smallest media do not fit.
        """
        t, fps = (video[0], video[3]) if video else (None, None)
        audio = None if n_audio is None else min(n_audio, self._audio_cap())
        n_video, n_tokens = self._media_tokens(video, fps, audio)
        budget = self.max_length - n_answer
        if n_text + n_video + n_tokens <= budget:
            return t, fps, audio
        if video:
            tps = self.video_processor.temporal_patch_size
            per_grid = n_video // math.ceil(t / tps)
            keep = min(t, max(1, (budget - n_text - n_tokens) // per_grid) * tps)
            t, fps = keep, fps * keep / t
            n_video = self._media_tokens((t, video[1], video[2]), fps, None)[0]
        if audio is not None and n_text + n_video + n_tokens > budget:
            audio = self._trim_audio(audio, budget - n_text - n_video)  # None: not even one audio token fits
            n_tokens = budget + 1 if audio is None else self._media_tokens(None, fps, audio)[1]
        if n_text + n_video + n_tokens > budget:
            raise ValueError(f"{name}: the text ({n_text} tokens) and answer ({n_answer}) with the smallest media "
                             f"({n_video} video tokens + at least 1 audio token if any) exceed "
                             f"max_length={self.max_length}")
        return t, fps, audio

    def _trim_audio(self, n, budget):
        """The longest prefix of ``n`` samples (whole mel hops) with 1 to ``budget`` tokens, or None when none fits."""
        hop = self.feature_extractor.hop_length
        n = min(n, self._audio_cap(), hop * (4 * budget + 4))
        while n > 0 and self._get_num_audio_tokens(n) > budget:  # about 4 mel frames per token
            n -= hop
        return n if n > 0 and self._get_num_audio_tokens(n) >= 1 else None

    def _report(self, name, source, n_audio, frames, fps, audio, n_other):
        """Log exactly what was kept when the length rule or the 30 s audio cap dropped part of a sample
        (``n_audio``: the samples the audio had, None when all of it was kept)."""
        sr = self.feature_extractor.sampling_rate
        if not (source is not None and frames.shape[0] < source[1] or n_audio is not None):
            return
        parts = [] if source is None else [f"{frames.shape[0]} of {source[1]} frames ({fps:.3g} fps)"]
        if n_audio is not None:
            parts.append(f"the first {len(audio) / sr:.2f} s of {n_audio / sr:.2f} s of audio")
        why = f"max_length={self.max_length} ({n_other} text and answer tokens)"
        if n_audio is not None and n_audio > self._audio_cap():
            why += f"; audio is read up to the feature extractor's {self.feature_extractor.chunk_length} s"
        logger.warning("%s: kept %s to fit %s", name, " and ".join(parts), why)

    def _stock(self, prompt, frames, fps, audio, interleaved):
        """Expand the media placeholders with the stock processor; (input ids, media tensors) of one sample."""
        kwargs = {"videos_kwargs": self._videos_kwargs(fps), "return_tensors": "pt"}
        if audio is not None:
            hop = self.feature_extractor.hop_length
            max_samples = min(hop * math.ceil(len(audio) / hop), self._audio_cap())
            kwargs["audio_kwargs"] = {"max_length": max_samples, "truncation": True}
        if interleaved:
            kwargs.update(load_audio_from_video=True, audio_from_video_indices=[0])
        out = super().__call__(text=[prompt], videos=None if frames is None else [frames],
                               audio=None if audio is None else [audio], **kwargs)
        media = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask")}
        if audio is not None and self.audio_features == "window":  # same frame count, features window by window
            features, mask = window_features(self.feature_extractor, audio[:max_samples])
            if features.shape[-1] != media["input_features"].shape[-1]:
                raise RuntimeError(f"window features have {features.shape[-1]} frames, the stock features "
                                   f"{media['input_features'].shape[-1]}")
            media["input_features"], media["feature_attention_mask"] = features, mask
        return out["input_ids"][0].tolist(), media


def _stack_media(media: list) -> dict:
    """Concatenate per-sample media tensors in sample order; audio features are right-padded to the longest."""
    out = {}
    for key in ("pixel_values_videos", "video_grid_thw", "video_second_per_grid"):
        parts = [m[key] for m in media if key in m]
        if parts:
            out[key] = torch.cat([torch.as_tensor(p) for p in parts])
    audio = [m for m in media if "input_features" in m]
    if audio:
        frames = max(m["input_features"].shape[-1] for m in audio)
        pad = lambda x: torch.nn.functional.pad(x, (0, frames - x.shape[-1]))  # noqa: E731
        out["input_features"] = torch.cat([pad(m["input_features"]) for m in audio])  # (A, 128, frames)
        out["feature_attention_mask"] = torch.cat([pad(m["feature_attention_mask"]) for m in audio])  # (A, frames)
    return out


# ----------------------------------------------------------------------------- collator


class AffectVerseCollator:
    """``data_collator`` for Trainer and ``collate_fn`` for DataLoaders: rows in, one [`AffectVerseProcessor`] batch
    out.

    Rows are dicts as ``affectverse.data.readers`` readers produce (``name``, ``video``, ``audio``, ``subtitle``, and
    the label in ``emotion`` / ``valence`` / ``labels``, or JSON in ``label``) or samples with an ``answer``.
    ``audio == ""`` (or no ``audio`` key) means the video's own track, None no audio. In training the answer comes
    from the label (``answer_from_label``). Media are loaded here, i.e. inside the DataLoader worker.
    ``on_error="skip"`` drops samples whose media are bad (or that cannot fit ``max_length``), logs a warning and
    appends ``(name, reason)`` to ``self.skipped`` (per worker process when ``num_workers > 0``); ``"raise"`` stops at
    the first. A batch whose samples all fail raises ValueError.
    """

    def __init__(self, processor: AffectVerseProcessor, training: bool = True, on_error: str = "raise",
                 keep_ratio: float = 1.0, padding_side: str | None = None):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error={on_error!r}; expected 'raise' or 'skip'")
        self.processor, self.training, self.on_error = processor, training, on_error
        self.keep_ratio, self.padding_side = keep_ratio, padding_side
        self.skipped: list[tuple[str, str]] = []

    def sample(self, row: dict) -> dict:
        """The processor sample of a dataset row."""
        video = row.get("video") or None
        audio = row.get("audio", "")
        audio = ("video" if video else None) if audio == "" else audio
        sample = {"name": row.get("name"), "video": video, "audio": audio, "subtitle": row.get("subtitle") or "",
                  "question": row.get("question")}
        if self.training:
            # the typed label columns of affectverse.data.readers
            typed = [row[c] for c in ("emotion", "valence", "labels") if row.get(c) is not None]
            sample["answer"] = row.get("answer") or answer_from_label(typed[0] if typed else row["label"])
        return sample

    def __call__(self, rows: list) -> BatchFeature:
        encoded, failures = [], []
        for i, row in enumerate(rows):
            name = str(row.get("name") or row.get("video") or f"row {i}")
            try:
                encoded.append(self.processor.encode(self.sample(row), self.training, self.keep_ratio, i))
            except (ValueError, KeyError) as err:  # MediaError is a ValueError
                if self.on_error == "raise":
                    raise
                logger.warning("skipping %s: %s", name, err)
                failures.append((name, str(err)))
        self.skipped.extend(failures)
        if not encoded:
            raise ValueError(f"all {len(rows)} samples of the batch failed: {failures}")
        return self.processor.collate(encoded, self.padding_side or ("right" if self.training else "left"))


AffectVerseProcessor.register_for_auto_class()

__all__ = ["AffectVerseCollator", "AffectVerseProcessor", "MediaError", "VideoClip", "answer_from_label",
           "extract_labels", "load_audio", "load_video", "sample_indices", "window_features"]
