"""The ``emotion-recognition`` pipeline: a clip in, AffectVerse's answer and its emotion labels out.

Remote code: imports only transformers, the standard library and its sibling file at module level. It travels in
every checkpoint folder (``processing_affectverse`` imports it, so ``save_pretrained`` copies it with the processor's
code; ``train.py``'s export writes ``custom_pipelines`` into ``config.json``), so::

    >>> from transformers import pipeline
    >>> pipe = pipeline("emotion-recognition", model="path/to/affectverse", trust_remote_code=True)
    >>> pipe("clip.mp4")                                   # the video with its own audio track
    {'answer': "The character's emotional state is happy.", 'labels': ['happy']}
    >>> pipe({"video": "clip.mp4", "audio": "clip.wav", "subtitle": "I can't believe it!"})
    >>> pipe(["a.mp4", "b.mp4", "c.mp4"], batch_size=2)   # a list of results, 2 clips per generate call

Inputs: a path (video, with its own audio track when it has one; ``audio=None`` in a dict turns audio off), or a
dict with ``video`` / ``audio`` / ``subtitle`` / ``question`` as [`AffectVerseProcessor`] takes them. A batch is one
``generate`` call on one padded [`AffectVerseProcessor`] batch. Labels come from ``benchmarks.scoring.extract_labels``
where the package is installed, else from the answer's ``"The character's emotional state is a, b."`` form.
"""

from __future__ import annotations

import os
import re

from transformers import AutoModelForCausalLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.any_to_any import AnyToAnyPipeline

try:  # remote code: a package in transformers' module cache
    from .media_affectverse import probe
except ImportError:  # a clone or an installed wheel: flat top-level modules
    from media_affectverse import probe

TASK = "emotion-recognition"
# What config.json's ``custom_pipelines`` holds so that pipeline(TASK, model=folder, trust_remote_code=True) finds it.
# "any-to-any" is transformers' own task (a Qwen2.5-Omni conversation in, text out, through the processor's
# apply_chat_template); it is listed here (not in the global registry, which would replace the task for every model)
# so that the folder's model loads through its auto_map's AutoModelForCausalLM.
CUSTOM_PIPELINES = {
    TASK: {"impl": "pipeline_affectverse.EmotionRecognitionPipeline", "pt": ["AutoModelForCausalLM"],
           "type": "multimodal"},
    "any-to-any": {"impl": "pipeline_affectverse.AffectVerseAnyToAnyPipeline", "pt": ["AutoModelForCausalLM"],
                   "type": "multimodal"},
}


def _answer_labels(answer: str) -> list[str]:
    """Emotion words of an answer in AffectGPT's form ("The character's emotional state is a, b and c.")."""
    try:  # the rule-based extractor of the installed package
        from benchmarks.scoring import extract_labels
    except ImportError:
        text = re.sub(r"^.*?\bemotional state (?:is|was|are)\s*", "", answer.strip(), flags=re.IGNORECASE | re.DOTALL)
        words = (w.strip(" .!\"'").lower() for w in re.split(r",|\band\b|;", text.split(".")[0]))
        return list(dict.fromkeys(w for w in words if w))
    return extract_labels(answer)


class EmotionRecognitionPipeline(Pipeline):
    """``pipeline("emotion-recognition")`` for AffectVerse; see the module docstring. Generation arguments
    (``max_new_tokens``, default 32; ``generate_kwargs``) may be given at construction or per call."""

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def _sanitize_parameters(self, max_new_tokens=None, generate_kwargs=None, **kwargs):
        if kwargs:
            raise TypeError(f"emotion-recognition pipeline: unexpected arguments {sorted(kwargs)}")
        forward = dict(generate_kwargs or {})
        if max_new_tokens is not None:
            forward["max_new_tokens"] = max_new_tokens
        return {}, forward, {}

    def __call__(self, inputs, batch_size=None, **kwargs):
        """One result dict for one input, a list of them for a list; ``batch_size`` inputs per generate call."""
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        size = batch_size or self._batch_size or 1
        chunks = [items[i:i + size] for i in range(0, len(items), size)]  # each chunk is one padded batch
        results = super().__call__(chunks, batch_size=1, **kwargs)
        flat = [r for chunk in results for r in chunk]
        return flat[0] if single else flat

    @staticmethod
    def sample(item, index: int = 0) -> dict:
        """The processor sample of one input: a path (its own audio track) or a dict."""
        if isinstance(item, (str, os.PathLike)):
            return {"video": os.fspath(item), "audio": "video", "name": os.fspath(item)}
        if not isinstance(item, dict):
            raise TypeError(f"input {index}: a clip path or a dict (video/audio/subtitle/question), got "
                            f"{type(item).__name__}")
        sample = dict(item)
        if "audio" not in sample and isinstance(sample.get("video"), (str, os.PathLike)):
            sample["audio"] = "video"
        return sample

    def preprocess(self, chunk):
        samples = [self.sample(item, i) for i, item in enumerate(chunk)]
        for s in samples:  # a clip without an audio track: video only, as when the dict says audio=None
            if s.get("audio") == "video" and probe(s["video"], "av").audio_duration is None:
                s["audio"] = None
        return dict(self.processor.prepare(samples, training=False))

    def _forward(self, inputs, **generate_kwargs):
        generate_kwargs = {"max_new_tokens": 32, "do_sample": False, **generate_kwargs}
        tokens = self.model.generate(**inputs, **generate_kwargs)
        return {"new_tokens": tokens[:, inputs["input_ids"].shape[1]:]}

    def postprocess(self, outputs):
        answers = self.processor.batch_decode(outputs["new_tokens"], skip_special_tokens=True)
        return [{"answer": a.strip(), "labels": _answer_labels(a)} for a in answers]


class AffectVerseAnyToAnyPipeline(AnyToAnyPipeline):
    """transformers' ``any-to-any`` pipeline, unchanged: ``pipeline("any-to-any", model=folder,
    trust_remote_code=True)(text=conversation)`` (the conversation as [`AffectVerseProcessor.apply_chat_template`]
    takes it). It exists so that ``custom_pipelines`` can name a class of this folder."""


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=EmotionRecognitionPipeline, pt_model=AutoModelForCausalLM,
                                    type="multimodal")

__all__ = ["CUSTOM_PIPELINES", "AffectVerseAnyToAnyPipeline", "EmotionRecognitionPipeline", "TASK"]
