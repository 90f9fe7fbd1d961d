"""The ``emotion-recognition`` pipeline: a clip in, AffectVerse's answer and its emotion labels out.

Remote code: imports only torch, transformers, the standard library and its sibling files at module level; nothing
imports it but the library. ``affectverse.hub.export_for_hub`` (``affectverse export`` and train.py's export) copies it
into the folder and writes ``custom_pipelines`` into ``config.json``, so::

    >>> from transformers import pipeline
    >>> pipe = pipeline("emotion-recognition", model="path/to/affectverse", trust_remote_code=True)
    >>> pipe("clip.mp4")                                   # the video with its own audio track
    {'answer': "The character's emotional state is happy.", 'labels': ['happy']}
    >>> pipe({"video": "clip.mp4", "audio": "clip.wav", "subtitle": "I can't believe it!"})
    >>> pipe(["a.mp4", "b.mp4", "c.mp4"], batch_size=2)   # a list of results, 2 clips per generate call
    >>> pipe("clip.mp4", labels=["happy", "sad", "neutral"])  # + label_scores {label: p} (sum 1) and label

Inputs: a path (video, with its own audio track when it has one; ``audio=None`` in a dict turns audio off), or a
dict with ``video`` / ``audio`` / ``subtitle`` / ``question`` as [`AffectVerseProcessor`] takes them. A batch is one
``generate`` call on one padded [`AffectVerseProcessor`] batch. Labels come from the answer by the processor's rule
(``processing_affectverse.extract_labels``), as ``affectverse predict`` and the scorers read them.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.any_to_any import AnyToAnyPipeline

try:  # remote code: a package in transformers' module cache
    from .media_affectverse import probe
    from .processing_affectverse import answer_from_label, extract_labels
except ImportError:  # a clone or an installed wheel: flat top-level modules
    from media_affectverse import probe
    from processing_affectverse import answer_from_label, extract_labels

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


def answer_candidates(tokenizer, answers) -> list[list[int]]:
    """Token ids of each candidate answer text followed by the end of turn (what a trained answer ends with)."""
    return [tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"] for answer in answers]


def next_positions(model, batch) -> torch.Tensor:
    """`(B, 1)` TMRoPE position of the first token after each prompt row (text after the last media block runs
    on from the row's largest position), from the stock ``get_rope_index`` over the augmented ids, or from the
    batch's own ``position_ids`` when it carries them (a live stream's prompt)."""
    if batch.get("position_ids") is not None:
        return batch["position_ids"][-3:].amax(dim=(0, 2))[:, None] + 1
    grid = batch.get("video_grid_thw")
    second = batch.get("video_second_per_grid")
    if grid is not None and second is None:
        second = torch.ones(grid.shape[0], device=grid.device)
    features = batch.get("feature_attention_mask")
    positions, _ = model.get_rope_index(batch["input_ids"], batch.get("image_grid_thw"), grid,
                                        batch["attention_mask"], bool(batch.get("use_audio_in_video")),
                                        features.sum(-1) if features is not None else None, second)
    return positions.amax(dim=(0, 2))[:, None] + 1


def prompt_state(generated, length: int):
    """(first-step logits `(B, V)`, KV cache of the first ``length`` positions) of a ``generate`` output made
    with ``return_dict_in_generate=True, output_logits=True``: what :func:`label_scores` needs of the prompt."""
    cache = generated.cache
    remove = cache.get_seq_length() - length
    if remove > 0:
        cache.crop(-remove)
    return generated.logits[0], cache


@torch.no_grad()
def label_scores(model, batch, candidates, normalise: bool = True, prompt=None) -> torch.Tensor:
    """`(B, C)` probability of each candidate answer (token ids) as the model's answer to each prompt row,
    normalised over the candidates (``normalise=False``: the log-probabilities of the whole sequences).

    One forward over the prompt (beliefs injected as in ``generate``) with ``use_cache=True``, or ``prompt`` =
    (its last-position logits `(B, V)`, its KV cache), e.g. :func:`prompt_state` of the ``generate`` call that gave
    the free-text answer; then every candidate of every row in one batched pass of the language model on copies
    of that KV cache (the candidates are right-padded; a padded position is never read). ``batch``: the
    processor's left-padded prompt batch. The cache is consumed.
    """
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    b, length, c = input_ids.shape[0], input_ids.shape[1], len(candidates)
    if prompt is None:
        out = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=True, logits_to_keep=1)
        prompt = out.logits[:, -1], out.cache
    first = prompt[0].float().log_softmax(-1)  # (B, V): the first answer token
    longest = max(len(cand) for cand in candidates)
    cand = input_ids.new_zeros(c, longest)
    cand_mask = torch.zeros_like(cand)
    for i, tokens in enumerate(candidates):
        cand[i, : len(tokens)], cand_mask[i, : len(tokens)] = torch.as_tensor(list(tokens)), 1
    logp = first[:, cand[:, 0]]  # (B, C)
    if longest > 1:
        cache = prompt[1]
        if cache is None or cache.get_seq_length() != length:
            raise RuntimeError(f"the prompt forward returned a cache of {cache and cache.get_seq_length()} tokens "
                               f"for a prompt of {length}: label scores need the cache of the whole prompt")
        cache.batch_repeat_interleave(c)  # (B*C, ...): row b's cache repeated for its C candidates
        steps = cand[:, :-1].repeat(b, 1)  # (B*C, T-1): token t predicts token t+1
        full_mask = torch.cat([mask.repeat_interleave(c, 0), cand_mask[:, :-1].repeat(b, 1)], dim=1)
        start = next_positions(model, batch).repeat_interleave(c, 0)  # (B*C, 1)
        positions = (start + torch.arange(longest - 1, device=start.device))[None].expand(3, -1, -1)
        logits = model(input_ids=steps, attention_mask=full_mask, position_ids=positions, cache=cache,
                       use_cache=True).logits.float().log_softmax(-1)  # (B*C, T-1, V)
        picked = logits.gather(-1, cand[:, 1:].repeat(b, 1)[..., None])[..., 0]  # (B*C, T-1)
        logp = logp + (picked * cand_mask[:, 1:].repeat(b, 1)).sum(-1).view(b, c)
    return logp.softmax(-1) if normalise else logp


class EmotionRecognitionPipeline(Pipeline):
    """``pipeline("emotion-recognition")`` for AffectVerse; see the module docstring. Generation arguments
    (``max_new_tokens``, default 32; ``generate_kwargs``) may be given at construction or per call."""

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def _sanitize_parameters(self, max_new_tokens=None, generate_kwargs=None, labels=None, **kwargs):
        if kwargs:
            raise TypeError(f"emotion-recognition pipeline: unexpected arguments {sorted(kwargs)}")
        # Pipeline merges these dicts key by key (construction, then call): set a key only when given.
        kwargs_ = {**(generate_kwargs or {}), **({"max_new_tokens": max_new_tokens} if max_new_tokens else {})}
        forward = {"generate_kwargs": kwargs_} if kwargs_ else {}
        post = {}
        if labels is not None:
            labels = [str(label).strip() for label in ([labels] if isinstance(labels, str) else labels)]
            if not labels or not all(labels) or len(set(labels)) != len(labels):
                raise ValueError(f"labels={labels}: at least one label, none empty, no duplicates")
            forward["candidates"] = answer_candidates(self.processor.tokenizer, map(answer_from_label, labels))
            post["labels"] = labels
        return {}, forward, post

    def __call__(self, inputs, batch_size=None, **kwargs):
        """One result dict for one input, a list of them for a list; ``batch_size`` inputs per generate call."""
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        if not items:  # an empty list in, an empty list out (transformers' Pipeline would index its first item)
            return []
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

    def _forward(self, inputs, generate_kwargs=None, candidates=None):
        generate_kwargs = {"max_new_tokens": 32, "do_sample": False, **(generate_kwargs or {})}
        if candidates is not None:  # the prompt's pass serves the answer and the label scores
            generate_kwargs.update(return_dict_in_generate=True, output_logits=True)
        tokens = self.model.generate(**inputs, **generate_kwargs)
        sequences = tokens.sequences if candidates is not None else tokens
        out = {"new_tokens": sequences[:, inputs["input_ids"].shape[1]:]}
        if candidates is not None:
            prompt = prompt_state(tokens, inputs["input_ids"].shape[1])
            out["label_scores"] = label_scores(self.model, inputs, candidates, prompt=prompt)
        return out

    def postprocess(self, outputs, labels=None):
        answers = self.processor.batch_decode(outputs["new_tokens"], skip_special_tokens=True)
        results = [{"answer": a.strip(), "labels": extract_labels(a)} for a in answers]
        if labels is not None:  # the closed-set reading: each label's probability as the answer
            for result, scores in zip(results, outputs["label_scores"].tolist()):
                result["label_scores"] = dict(zip(labels, scores))
                result["label"] = labels[max(range(len(labels)), key=scores.__getitem__)]
        return results


class AffectVerseAnyToAnyPipeline(AnyToAnyPipeline):
    """transformers' ``any-to-any`` pipeline, unchanged: ``pipeline("any-to-any", model=folder,
    trust_remote_code=True)(text=conversation)`` (the conversation as [`AffectVerseProcessor.apply_chat_template`]
    takes it). It exists so that ``custom_pipelines`` can name a class of this folder."""


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=EmotionRecognitionPipeline, pt_model=AutoModelForCausalLM,
                                    type="multimodal")

__all__ = ["CUSTOM_PIPELINES", "AffectVerseAnyToAnyPipeline", "EmotionRecognitionPipeline", "TASK"]
