"""AffectVerse: the Qwen2.5-Omni thinker with an Emotion World Module injecting belief tokens (arXiv 2605.19950).

Remote code: imports only torch, transformers and its sibling files. Shapes: B batch, L tokens, d LLM width.
The processor marks each belief slot with a ``<|belief|>`` placeholder (``config.belief_token_id``): the first
group right after the last audio/video block, the second right before the answer (Eq. 8, 20). Placeholders are
text to ``get_rope_index``, so belief tokens get text positions and audio/video keep theirs.
"""

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, GenerationMixin, Qwen2_5OmniThinkerForConditionalGeneration
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.initialization import constant_, normal_
from transformers.modeling_outputs import MultimodalCausalLMOutputWithPast
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

try:  # remote code: a package in transformers' module cache
    from .configuration_affectverse import AffectVerseConfig
    from .ewm_affectverse import BeliefAggregator, EmotionWorldModule, Imagination, splice_past
except ImportError:  # a clone or an installed wheel: flat top-level modules
    from configuration_affectverse import AffectVerseConfig
    from ewm_affectverse import BeliefAggregator, EmotionWorldModule, Imagination, splice_past

logger = logging.getLogger(__name__)

# A thinker subclass gets none of transformers' key renames for Qwen2.5-Omni checkpoints (`thinker.` prefix,
# flat `model.` LLM keys) unless registered under its class name; without them the LLM silently stays random.
register_checkpoint_conversion_mapping(
    "AffectVerseForConditionalGeneration",
    get_checkpoint_conversion_mapping("Qwen2_5OmniThinkerForConditionalGeneration"),
    overwrite=True,
)


@dataclass
class AffectVerseOutput(MultimodalCausalLMOutputWithPast):
    """Output of [`AffectVerseForConditionalGeneration`]: the stock thinker's fields first (so tuple indices with
    ``return_dict=False`` match it), then AffectVerse's own.

    Args:
        loss: total loss L_lm + lambda * L_img (Eq. 10), when ``labels`` are given.
        logits: `(B, L', vocab)` over the sequence the language model saw (belief tokens included; in training
            the truncated sequence, see ``labels``).
        cache, hidden_states, attentions: as the stock thinker's, over that same sequence.
        lm_loss: cross-entropy on the answer tokens (Eq. 9).
        imagination_loss: Eq. 21; None at inference or without imagination.
        labels: the labels aligned with ``logits`` (training rebuilds them after truncation).
        imagination_cosine: `(S,)` mean cosine of each rollout step with the future (Table 8), on request.
        imagination_mse: `(S,)` mean squared error of each rollout step with the future (Table 8), on request.
        belief_attention: `(B, 2*N_b, 2*S*N_s)` MAMA weights, video memory first (Figure 3), on request.
    """

    lm_loss: torch.FloatTensor | None = None
    imagination_loss: torch.FloatTensor | None = None
    labels: torch.LongTensor | None = None
    imagination_cosine: torch.FloatTensor | None = None
    imagination_mse: torch.FloatTensor | None = None
    belief_attention: torch.FloatTensor | None = None


@dataclass
class _Prepared:
    """Inputs of the language-model pass (pass 2) after belief injection and truncation."""

    embeds: torch.Tensor  # (B, L', d)
    attention_mask: torch.Tensor  # (B, L')
    position_ids: torch.Tensor  # (3 or 4, B, L')
    labels: torch.Tensor | None
    ewm: object | None
    cached: int = 0  # leading columns whose keys/values pass 1 already wrote into the generation cache
    compacted: bool = False  # tokens were removed (training): mask and positions are rebuilt
    image_outputs: object | None = None


def _left_align(values, mask, length):
    """Gather ``values[b, mask[b]]`` into a left-aligned `(B, length, ...)` tensor (zeros after each row's count)."""
    rank = mask.long().cumsum(1) - 1  # (B, L)
    out = values.new_zeros(mask.shape[0], max(length, 1), *values.shape[2:])
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)
    out[rows[mask], rank[mask]] = values[mask]
    return out


def _padding_mask(attention_mask, length):
    """The `(B, length)` 0/1 padding mask behind a 2D, 4D or per-layer-type dict mask (``generate`` builds the
    latter two for static caches); None when there is none. A 4D mask's last query row sees every real key."""
    if isinstance(attention_mask, dict):
        attention_mask = attention_mask.get("full_attention", next(iter(attention_mask.values())))
    if attention_mask is None or attention_mask.ndim == 2:
        return attention_mask
    last = attention_mask[:, 0, -1, :length]
    return (last if last.dtype == torch.bool else last == 0).long()


def _crop(cache, length):
    """Keep the first ``length`` positions of a cache (transformers' ``crop`` takes minus the count to remove)."""
    remove = cache.get_seq_length() - length
    if remove > 0:
        cache.crop(-remove)


LORA_PROBE = 16  # values of one LoRA-A matrix that ``config.merged_adapter`` records to recognise its adapter


def lora_probes(module):
    """(module name, adapter name, first LORA_PROBE values of lora_A) of each peft LoRA layer under ``module``."""
    for name, sub in module.named_modules():
        lora_a = getattr(sub, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict):
            for adapter, linear in lora_a.items():
                yield name, adapter, linear.weight.detach().flatten()[:LORA_PROBE].float().cpu()


# GenerationMixin named among the bases: HF's check
class AffectVerseForConditionalGeneration(Qwen2_5OmniThinkerForConditionalGeneration, GenerationMixin):
    r"""Qwen2.5-Omni thinker + Emotion World Module (section 3, Algorithm 1).

    Training (``model.train()``, ``labels`` given): a no-grad thinker pass over the prompt prefix gives the
    audio/video hidden states; kappa ~ U[0.7, 1) splits each modality; the EWM imagines the future and builds
    beliefs; the language model sees only each modality's past plus the beliefs; loss = L_lm + lambda * L_img.
    Inference: kappa = 1, nothing removed, beliefs injected; ``generate`` reuses the prefix KV cache of the EWM's
    pass so the prompt is not prefilled twice.

    Example:

    ```python
    >>> from transformers import AutoModelForCausalLM, AutoProcessor
    >>> model = AutoModelForCausalLM.from_pretrained("path/to/affectverse", trust_remote_code=True)
    >>> processor = AutoProcessor.from_pretrained("path/to/affectverse", trust_remote_code=True)
    >>> inputs = processor(video="clip.mp4", audio="video", subtitle="I can't believe it.", return_tensors="pt")
    >>> answer = processor.batch_decode(model.generate(**inputs, max_new_tokens=32)[:, inputs["input_ids"].shape[1]:])
    ```
    """

    config_class = AffectVerseConfig
    # The forward returns its own mean loss; Trainer must still divide by gradient-accumulation steps.
    accepts_loss_kwargs = False
    _keys_to_ignore_on_load_unexpected = [r"^talker", r"^token2wav"]

    def __init__(self, config: AffectVerseConfig):
        super().__init__(config)
        self.ewm = EmotionWorldModule(config) if config.belief_construction != "none" else None
        self.post_init()

    def lora_probe(self) -> dict | None:
        """The first LoRA layer's name and LORA_PROBE values of its lora_A: what ``config.merged_adapter["probe"]``
        records when an adapter is merged in (``affectverse.training.export.export``), so the same adapter cannot be
        applied again."""
        return next(({"module": name, "values": values.tolist()} for name, _, values in lora_probes(self)), None)

    def _refuse_merged_adapter_twice(self):
        """peft LoRA on a model that already has the same adapter merged in would apply it twice (silently wrong
        logits). peft copies its ``peft_config`` onto the model it wraps: only then are the layers looked at."""
        probe = (getattr(self.config, "merged_adapter", None) or {}).get("probe")
        peft_config = getattr(self, "peft_config", None)
        if not probe or not peft_config or getattr(self, "_checked_peft", None) == (id(peft_config), len(peft_config)):
            return
        recorded = torch.tensor(probe["values"])
        for name, adapter, values in lora_probes(self):
            if name == probe["module"] and values.shape == recorded.shape and torch.allclose(values, recorded,
                                                                                             rtol=1e-3, atol=1e-6):
                raise ValueError(
                    f"LoRA adapter {adapter!r} is already merged into this model (config.merged_adapter: "
                    f"{self.config.merged_adapter.get('folder')}, sha256 {self.config.merged_adapter.get('sha256')}):"
                    " applying it again would count it twice. Load the adapter onto the base model it names "
                    "(AutoPeftModelForCausalLM.from_pretrained(adapter_dir)), or use this merged model as it is.")
        self._checked_peft = (id(peft_config), len(peft_config))

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.ewm_initializer_range
        if isinstance(module, Imagination):
            normal_(module.future_queries, std=std)
            normal_(module.step_embeddings, std=std)
        elif isinstance(module, BeliefAggregator):
            normal_(module.queries, std=std)
        elif isinstance(module, EmotionWorldModule):
            for name in ("tags", "random_beliefs"):
                if hasattr(module, name):
                    normal_(getattr(module, name), std=std)
            if hasattr(module, "residual_scale"):
                constant_(module.residual_scale, self.config.residual_scale_init)

    # -- inputs ----------------------------------------------------------------------------------------------------
    def embed_media(self, input_ids, input_features=None, feature_attention_mask=None, pixel_values=None,
               image_grid_thw=None, pixel_values_videos=None, video_grid_thw=None):
        """Token embeddings with audio/image/video encoder features scattered into their placeholders, (B, L, d),
        and the image encoder's output (the stock thinker returns it as ``image_outputs``)."""
        embeds = self.get_input_embeddings()(input_ids)
        media, image = [], None
        if input_features is not None:
            audio = self.model.get_audio_features(input_features, feature_attention_mask, return_dict=True)
            media.append((self.config.audio_token_id, audio.last_hidden_state, "audio"))
        if pixel_values is not None:
            image = self.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
            media.append((self.config.image_token_id, torch.cat(image.pooler_output), "image"))
        if pixel_values_videos is not None:
            video = self.model.get_video_features(pixel_values_videos, video_grid_thw, return_dict=True)
            media.append((self.config.video_token_id, torch.cat(video.pooler_output), "video"))
        for token_id, features, name in media:
            mask = input_ids == token_id
            if int(mask.sum()) != features.shape[0]:
                raise ValueError(
                    f"{name} features and {name} placeholder tokens do not match: input_ids hold {int(mask.sum())} "
                    f"{name} tokens, the encoder produced {features.shape[0]} features"
                )
            embeds = embeds.masked_scatter(mask[..., None], features.to(embeds.dtype))
        return embeds, image

    def _positions(self, input_ids, attention_mask, image_grid_thw, video_grid_thw, feature_attention_mask,
                   use_audio_in_video, video_second_per_grid):
        """TMRoPE positions `(3, B, L)` and deltas `(B, 1)` of the full augmented ids (beliefs count as text)."""
        if video_grid_thw is not None and video_second_per_grid is None:
            video_second_per_grid = torch.ones(video_grid_thw.shape[0], device=input_ids.device)
        audio_seqlens = feature_attention_mask.sum(-1) if feature_attention_mask is not None else None
        return self.get_rope_index(input_ids, image_grid_thw, video_grid_thw, attention_mask,
                                   bool(use_audio_in_video), audio_seqlens, video_second_per_grid)

    def _check_beliefs(self, input_ids, n_modalities):
        """Each row must carry exactly the placeholders its modalities call for."""
        expected = torch.tensor([self.config.num_belief_tokens(int(n)) for n in n_modalities],
                                device=input_ids.device)
        found = (input_ids == self.config.belief_token_id).sum(1)
        bad = (found != expected).nonzero().flatten().tolist()
        if bad:
            b = bad[0]
            raise ValueError(
                f"sample {b}: input_ids hold {int(found[b])} <|belief|> placeholder tokens (id "
                f"{self.config.belief_token_id}) but its {int(n_modalities[b])} audio/video modalities with "
                f"belief_construction={self.config.belief_construction!r} need {int(expected[b])}; build inputs "
                "with AffectVerseProcessor from this model's config (a packed row needs `(4, 1, L)` position_ids "
                "whose text row restarts at 0 for each prompt, and no attention_mask)"
            )

    def _prefix_end(self, input_ids):
        """Index just after each row's last audio/video token, (B,); 0 for text-only rows."""
        av = (input_ids == self.config.video_token_id) | (input_ids == self.config.audio_token_id)
        idx = torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device)
        return (av * idx).amax(1)

    def _observe(self, embeds, attention_mask, position_ids, prefix_len, cache=None, start=0):
        """Pass 1: the thinker over the prompt prefix; the hidden layer the EWM reads, `(B, prefix_len - start,
        d)`. With ``cache`` (an empty generation cache, or one holding the first ``start`` columns) its
        keys/values are written there for reuse."""
        return self.language_states(embeds[:, start:prefix_len], attention_mask[:, :prefix_len],
                                    position_ids[..., start:prefix_len], cache)

    def language_states(self, embeds, attention_mask, position_ids, cache=None):
        """The language model over ``embeds`` `(B, n, d)` after the columns ``cache`` holds (their keys/values are
        appended to it): the hidden layer the EWM reads (``config.ewm_hidden_layer``), `(B, n, d)`. The mask
        covers the cached columns and these (None: no padding); pass 1's step, also a live stream's per chunk."""
        layer = self.config.ewm_hidden_layer
        out = self.model.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            use_cache=cache is not None, output_hidden_states=layer != -1, output_attentions=False, return_dict=True,
        )
        return out.last_hidden_state if layer == -1 else out.hidden_states[layer]

    @torch.no_grad()
    def _observe_shared(self, input_ids, embeds, attention_mask, position_ids, prefix_len, cache=None):
        """Pass 1 as :meth:`_observe`, each row's leading tokens that equal the batch's longest prompt's (id, TMRoPE
        position and embedding after the media scatter, the latter within float noise) computed once, on that row
        alone: a trajectory's shorter ratios begin like its full clip (docs/design.md). Causal attention makes
        those tokens' keys, values and states the same in every row that shares them. Returns `(B, prefix, d)`;
        with ``cache`` (empty) its first ``prefix_len`` columns are filled as :meth:`_observe` fills them."""
        if cache is not None and not all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers):
            return self._observe(embeds, attention_mask, position_ids, prefix_len, cache)  # sliding/static layers
        real = attention_mask[:, :prefix_len].bool()  # (B, P)
        ref = int(real.sum(1).argmax())
        start = real.long().argmax(1)  # (B,) first real column (left padding: the longest row starts first)
        s0 = int(start[ref])
        # row b's column start[b] + j against the reference's column s0 + j, j < its prefix length
        j = torch.arange(prefix_len - s0, device=input_ids.device)
        cols = start[:, None] + j[None]  # (B, J)
        inside = cols < prefix_len
        cols = cols.clamp(max=prefix_len - 1)
        ref_cols = s0 + j
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None]
        tol = max(1e-4, 2 * torch.finfo(embeds.dtype).eps) * float(embeds[ref, s0:prefix_len].abs().amax())
        same = (inside & real[rows, cols] & (input_ids[rows, cols] == input_ids[ref, ref_cols])
                & (position_ids[:, rows, cols] == position_ids[:, ref, ref_cols][:, None]).all(0)
                & ((embeds[rows, cols] - embeds[ref, ref_cols]).abs() <= tol).all(-1))
        shared = same.long().cumprod(1).sum(1)  # (B,) leading tokens each row shares with the reference
        split = int((start + shared).min())  # columns [0, split) of every row come from the reference's pass
        if split <= s0 or bool((start < s0).any()):
            return self._observe(embeds, attention_mask, position_ids, prefix_len, cache)
        ref_cache = DynamicCache()
        head = self._observe(embeds[ref:ref + 1, s0:], attention_mask[ref:ref + 1, s0:],
                             position_ids[:, ref:ref + 1, s0:], split - s0, ref_cache)  # (1, split - s0, d)
        src = torch.arange(split, device=input_ids.device)[None] - start[:, None]  # (B, split) reference index
        pad = src < 0
        src = src.clamp(min=0)
        target = cache if cache is not None else DynamicCache()
        for i, ref_layer in enumerate(ref_cache.layers):  # (1, H, split - s0, D) -> (B, H, split, D)
            keys, values = (t[0][:, src].transpose(0, 1).masked_fill(pad[:, None, :, None], 0)
                            for t in (ref_layer.keys, ref_layer.values))
            target.update(keys, values, i)
        hidden = head[0][src].masked_fill(pad[..., None], 0)  # (B, split, d)
        if split < prefix_len:
            tail = self._observe(embeds, attention_mask, position_ids, prefix_len, target, start=split)
            hidden = torch.cat([hidden, tail], 1)
        return hidden

    # -- the EWM pass ----------------------------------------------------------------------------------------------
    def _prepare(self, input_ids, attention_mask, position_ids, labels, media, need_weights=False, cache=None,
                 share_prefix=False):
        """Embed, run the EWM and inject beliefs (Algorithm 1 steps 2-13). ``attention_mask`` `(B, L)`,
        ``position_ids`` `(3 or 4, B, L)`. With ``cache``, pass 1 fills its leading columns (see ``cached``);
        ``share_prefix``: see :meth:`_observe_shared`."""
        cfg = self.config
        embeds, image_outputs = self.embed_media(input_ids, **{k: media.get(k) for k in (
            "input_features", "feature_attention_mask", "pixel_values", "image_grid_thw",
            "pixel_values_videos", "video_grid_thw")})
        is_video, is_audio = input_ids == cfg.video_token_id, input_ids == cfg.audio_token_id
        video_len, audio_len = is_video.sum(1), is_audio.sum(1)  # (B,)
        has_video, has_audio = video_len > 0, audio_len > 0
        n_modalities = has_video.long() + has_audio.long()  # (B,) what the placeholders were laid out for
        self._check_beliefs(input_ids, n_modalities)
        training = self.training and labels is not None
        # An evaluation forward with labels splits at the fixed config.eval_keep_ratio (Table 8 on held-out clips).
        evaluating = not self.training and labels is not None and cfg.eval_keep_ratio < 1.0
        split = (training and cfg.temporal_split) or evaluating

        # Temporal split (Eq. 11-12): kappa per training step; nothing is cut at inference.
        video_past, audio_past = video_len.clone(), audio_len.clone()
        if split:
            kappa = cfg.eval_keep_ratio if evaluating else \
                cfg.keep_ratio_min + (cfg.keep_ratio_max - cfg.keep_ratio_min) * torch.rand(()).item()
            video_past = torch.floor(kappa * video_len.double()).long()
            audio_past = torch.floor(kappa * audio_len.double()).long()
            # A span too short to split (floor(kappa * L) = 0) stays whole and the EWM does not read it.
            too_short = (has_video & (video_past == 0)) | (has_audio & (audio_past == 0))
            if too_short.any():
                logger.warning("%d sample(s) have an audio/video span too short to split at kappa=%.2f; their "
                               "EWM skips that modality and the LLM sees it whole", int(too_short.sum()), kappa)
            video_past = torch.where(has_video & (video_past == 0), video_len, video_past)
            audio_past = torch.where(has_audio & (audio_past == 0), audio_len, audio_past)
        use_video = has_video & (video_past < video_len) if split else has_video.clone()
        use_audio = has_audio & (audio_past < audio_len) if split else has_audio.clone()
        dropped_video = dropped_audio = torch.zeros_like(has_video)
        if training and cfg.modality_dropout > 0:  # drop one whole modality for the EWM with p (D.1)
            both = use_video & use_audio
            drop = both & (torch.rand(both.shape, device=both.device) < cfg.modality_dropout)
            dropped_video = drop & (torch.rand(both.shape, device=both.device) < 0.5)
            dropped_audio = drop & ~dropped_video
            use_video, use_audio = use_video & ~dropped_video, use_audio & ~dropped_audio

        # Which tokens the language model keeps: each modality's past, no padding (and, below, the beliefs the EWM
        # filled); with modality_dropout_scope="both" not the dropped modality either.
        keep = attention_mask.bool()
        rank_v, rank_a = is_video.long().cumsum(1) - 1, is_audio.long().cumsum(1) - 1
        keep &= ~(is_video & (rank_v >= video_past[:, None])) & ~(is_audio & (rank_a >= audio_past[:, None]))
        if cfg.modality_dropout_scope == "both":
            keep &= ~(is_video & dropped_video[:, None]) & ~(is_audio & dropped_audio[:, None])

        ewm_out, cached = None, 0
        if self.ewm is not None:
            prefix = int(self._prefix_end(input_ids).max())
            video = audio = embeds.new_zeros(embeds.shape[0], 1, embeds.shape[-1])  # "random" reads nothing
            if cfg.uses_ewm and prefix > 0:
                with torch.no_grad():  # targets and inputs of the EWM are detached (Algorithm 1, step 2)
                    hidden = (self._observe_shared(input_ids, embeds, attention_mask, position_ids, prefix, cache)
                              if share_prefix else self._observe(embeds, attention_mask, position_ids, prefix, cache))
                if cache is not None:  # keys/values stay valid up to the first belief placeholder of any row
                    beliefs = (input_ids[:, :prefix] == cfg.belief_token_id).any(0).nonzero()
                    cached = int(beliefs[0]) if len(beliefs) else prefix
                    _crop(cache, cached)
                video = _left_align(hidden, is_video[:, :prefix], int(video_len.max()))
                audio = _left_align(hidden, is_audio[:, :prefix], int(audio_len.max()))
                removed = ~keep[:, :prefix] & attention_mask[:, :prefix].bool()  # truncated or dropped tokens
                if cfg.ewm_observation == "past" and bool(removed.any()):
                    # the EWM's past from a pass that never saw the removed tokens; targets stay from the full pass
                    past_video, past_audio = self._observe_past(embeds, keep, position_ids, is_video, is_audio, prefix)
                    video = splice_past(video, past_video, torch.where(use_video, video_past, 0))
                    audio = splice_past(audio, past_audio, torch.where(use_audio, audio_past, 0))
            ewm_out = self.ewm(video, video_len, video_past, audio, audio_len, audio_past, use_video, use_audio,
                               need_weights=need_weights)

        if ewm_out is not None:
            keep, embeds = self._inject(input_ids, embeds, keep, n_modalities, use_video, use_audio, ewm_out)
        if bool((keep == attention_mask.bool()).all()):
            return _Prepared(embeds, attention_mask, position_ids, labels, ewm_out, cached, image_outputs=image_outputs)
        if cached:
            raise RuntimeError("tokens were removed after pass 1 filled the cache")  # training never reuses it
        return self._compact(embeds, keep, position_ids, labels, ewm_out)

    @torch.no_grad()
    def _observe_past(self, embeds, keep, position_ids, is_video, is_audio, prefix):
        """Pass 1 over the kept (past) tokens of the prompt prefix only (``ewm_observation="past"``): the states
        of each row's video and audio tokens, left-aligned `(B, L_v', d)`, `(B, L_a', d)`; none saw the future."""
        keep = keep[:, :prefix]
        count = keep.sum(1)
        length = max(int(count.max()), 1)
        mask = (torch.arange(length, device=keep.device)[None] < count[:, None]).long()  # (B, length)
        positions = torch.stack([_left_align(p[:, :prefix], keep, length) for p in position_ids])
        positions = torch.where(mask.bool()[None], positions, torch.ones_like(positions))
        hidden = self._observe(_left_align(embeds[:, :prefix], keep, length), mask, positions, length)
        video = _left_align(is_video[:, :prefix], keep, length)  # (B, length) bool
        audio = _left_align(is_audio[:, :prefix], keep, length)
        return (_left_align(hidden, video, max(int(video.sum(1).max()), 1)),
                _left_align(hidden, audio, max(int(audio.sum(1).max()), 1)))

    def _inject(self, input_ids, embeds, keep, n_modalities, use_video, use_audio, ewm_out):
        """Scatter beliefs into their placeholders (Eq. 8, 20); after modality dropout a row keeps the first
        tokens of each group and drops the rest."""
        cfg = self.config
        is_belief = input_ids == cfg.belief_token_id
        rank = is_belief.long().cumsum(1) - 1  # (B, L) index among the row's placeholders
        first_in = torch.tensor([cfg.belief_split(int(n))[0] for n in n_modalities],
                                device=input_ids.device)[:, None]
        n_used = use_video.long() + use_audio.long()
        split = [cfg.belief_split(int(n)) for n in n_used]
        first_out = torch.tensor([s[0] for s in split], device=input_ids.device)[:, None]
        second_out = torch.tensor([s[1] for s in split], device=input_ids.device)[:, None]
        in_first = rank < first_in
        slot = torch.where(in_first, rank, first_out + rank - first_in)  # index into this row's beliefs
        used = torch.where(in_first, rank < first_out, rank - first_in < second_out) & is_belief
        keep = keep & (~is_belief | used)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(input_ids)
        values = ewm_out.beliefs[rows[used], slot[used]].to(embeds.dtype)  # (n_used_total, d)
        embeds = embeds.masked_scatter(used[..., None], values) if values.numel() else embeds
        return keep, embeds

    @staticmethod
    def _compact(embeds, keep, position_ids, labels, ewm_out):
        """Remove dropped tokens (D.4), right-pad the shortened rows, rebuild mask, labels and positions."""
        length = int(keep.sum(1).max())
        attention_mask = (torch.arange(length, device=keep.device)[None] < keep.sum(1)[:, None]).long()
        embeds = _left_align(embeds, keep, length)
        positions = torch.stack([_left_align(p, keep, length) for p in position_ids])
        positions = torch.where(attention_mask.bool()[None], positions, torch.ones_like(positions))
        if labels is not None:
            labels = _left_align(labels + 100, keep, length) - 100  # padding becomes -100
        return _Prepared(embeds, attention_mask, positions, labels, ewm_out, compacted=True)

    # -- forward ---------------------------------------------------------------------------------------------------
    def _injects_beliefs(self, input_ids, inputs_embeds, cache, input_features, pixel_values_videos):
        """Beliefs are built on a prompt's first pass: ids and audio/video given, nothing cached yet. Decoding
        steps, ``inputs_embeds`` and ``belief_construction="none"`` take the stock thinker's path unchanged."""
        return (self.ewm is not None and inputs_embeds is None and input_ids is not None
                and (input_features is not None or pixel_values_videos is not None)
                and (cache is None or cache.get_seq_length() == 0))

    def _with_beliefs(self, input_ids, beliefs):
        """Token embeddings of ``input_ids`` `(B, L)` with ``beliefs`` `(B, n, d)` in their `<|belief|>`
        placeholders, row by row in order (a row with fewer placeholders takes its first ones)."""
        embeds = self.get_input_embeddings()(input_ids)
        is_belief = input_ids == self.config.belief_token_id
        rank = is_belief.long().cumsum(1) - 1  # (B, L) index among the row's placeholders
        if int(rank.max()) >= beliefs.shape[1]:
            raise ValueError(f"input_ids hold {int(rank.max()) + 1} <|belief|> placeholders in a row but beliefs "
                             f"has {beliefs.shape[1]} tokens")
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(input_ids)
        values = beliefs[rows[is_belief], rank[is_belief]].to(embeds.dtype)  # (n_placeholders, d)
        return embeds.masked_scatter(is_belief[..., None], values) if values.numel() else embeds

    def _head(self, hidden, logits_to_keep, labels, **kwargs):
        """lm_head on the kept positions (int: the last ones, 0 for all; or a tensor of indices) and the LM loss.
        With beliefs the ``<|belief|>`` placeholder is never predicted (its logit is the dtype's minimum)."""
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep])
        if self.ewm is not None:  # a generated placeholder would take a belief at the next uncached step
            logits[..., self.config.belief_token_id] = torch.finfo(logits.dtype).min
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size,
                                      **kwargs)
        return logits, loss

    def _reuses_prefix(self, cache, use_cache, labels, logits_to_keep, kwargs):
        """Whether pass 1 may write its keys/values into the generation cache: an empty croppable cache, a call
        that needs only the last logits (``generate``) and no per-position outputs (hidden states, attentions).
        The caller also requires a 2D mask or none (``generate`` drops an all-ones mask)."""
        wants_all = any(kwargs.get(k, getattr(self.config, k, False)) for k in ("output_hidden_states",
                                                                               "output_attentions"))
        return (cache is not None and not cache.is_compileable and use_cache is not False and labels is None
                and not self.training and isinstance(logits_to_keep, int) and logits_to_keep > 0 and not wants_all)

    @staticmethod
    def _is_packed(input_ids, position_ids):
        """A padding-free row holding several prompts: `(4, 1, L)` positions whose text row restarts at 0."""
        return (input_ids.shape[0] == 1 and position_ids.ndim == 3 and position_ids.shape[0] == 4
                and int((position_ids[0, 0] == 0).sum()) > 1)

    def _prepare_packed(self, input_ids, position_ids, labels, media, need_weights):
        """Beliefs for a packed row: unpack it into one right-padded row per prompt (its text positions restart at
        0), build each prompt's beliefs, and pack the embeddings back; the stock packed attention does the rest."""
        if self.training and labels is not None:
            raise ValueError("packed (padding-free) rows cannot be truncated for training; pass a padded batch")
        seg = (position_ids[0, 0] == 0).long().cumsum(0) - 1  # (L,) prompt index of each token
        lengths = torch.bincount(seg)
        col = torch.arange(seg.shape[0], device=seg.device) - (lengths.cumsum(0) - lengths)[seg]  # (L,)
        shape = (len(lengths), int(lengths.max()))
        ids = input_ids.new_full(shape, self.config.text_config.pad_token_id or 0)
        ids[seg, col] = input_ids[0]
        mask = torch.zeros_like(ids)
        mask[seg, col] = 1
        positions = position_ids.new_ones(3, *shape)
        positions[:, seg, col] = position_ids[1:, 0]
        prepared = self._prepare(ids, mask, positions, None, media, need_weights=need_weights)
        prepared.embeds = prepared.embeds[seg, col][None]  # (1, L, d): placeholder order is unchanged
        prepared.position_ids, prepared.labels = position_ids, labels
        return prepared

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(self, input_ids=None, input_features=None, pixel_values=None, pixel_values_videos=None,
                image_grid_thw=None, video_grid_thw=None, attention_mask=None, feature_attention_mask=None,
                audio_feature_lengths=None, position_ids=None, cache=None, inputs_embeds=None, labels=None,
                use_cache=None, use_audio_in_video=None, video_second_per_grid=None, logits_to_keep=0,
                output_imagination=False, output_belief_attention=False, reuse_prefix_cache=True,
                share_prefix=False, beliefs=None, **kwargs: Unpack[TransformersKwargs]):
        r"""Two-pass forward (Algorithm 1); the stock thinker's forward where no beliefs are built.

        Args:
            input_ids (`torch.LongTensor` of shape `(B, L)`): ids from [`AffectVerseProcessor`], with audio/video
                and `<|belief|>` placeholders.
            attention_mask (`torch.LongTensor` of shape `(B, L)`, or a 4D float mask), labels (`(B, L)`, -100
                outside the answer).
            position_ids (`(3, B, L)` or `(4, B, L)` with text positions first, as the stock thinker): used as
                given (packed batches); computed with `get_rope_index` otherwise.
            input_features, feature_attention_mask, pixel_values_videos, video_grid_thw, video_second_per_grid,
            use_audio_in_video: the stock Qwen2.5-Omni media inputs.
            cache (`Cache`): the KV cache (`past_key_values` is the deprecated alias, as in the stock thinker).
            logits_to_keep (`int`): compute logits for the last positions only (0: all).
            output_hidden_states / output_attentions / return_dict: as the stock thinker, over the sequence the
                language model saw (belief tokens included).
            output_imagination (`bool`): return the per-step imagination cosine and MSE (Table 8) wherever the
                imagination is supervised: in training, and in evaluation with labels when
                ``config.eval_keep_ratio < 1``.
            output_belief_attention (`bool`): return the MAMA attention weights (Figure 3).
            reuse_prefix_cache (`bool`): in `generate`, let pass 1 prefill the cache (False: the naive two-pass).
            share_prefix (`bool`): rows whose prompts begin like the batch's longest one (same ids, positions and
                media embeddings, e.g. a clip at several observation ratios) reuse its pass-1 keys, values and
                EWM-layer states for those tokens instead of recomputing them; the results equal the unshared
                forward's within float tolerance. Not for packed rows.
            beliefs (`torch.Tensor` of shape `(B, n, d)`, *optional*): belief tokens built elsewhere (a live
                stream's EWM, ``affectverse.inference.live``), written into the `<|belief|>` placeholders of
                ``input_ids`` in order, on a call whose ``cache`` already holds the prompt's audio/video prefix (as
                ``generate`` continuing from it makes); calls whose ids hold no placeholder ignore it.
        """
        self._refuse_merged_adapter_twice()
        media = dict(input_features=input_features, feature_attention_mask=feature_attention_mask,
                     pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                     pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw,
                     use_audio_in_video=use_audio_in_video, video_second_per_grid=video_second_per_grid)
        if beliefs is not None and input_ids is not None and inputs_embeds is None:
            inputs_embeds, input_ids = self._with_beliefs(input_ids, beliefs), None
        if not self._injects_beliefs(input_ids, inputs_embeds, cache, input_features, pixel_values_videos):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             audio_feature_lengths=audio_feature_lengths, position_ids=position_ids, cache=cache,
                             inputs_embeds=inputs_embeds, use_cache=use_cache, **media, **kwargs)
            logits, loss = self._head(out.last_hidden_state, logits_to_keep, labels, **kwargs)
            return AffectVerseOutput(loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states,
                                     attentions=out.attentions, image_outputs=out.image_outputs, lm_loss=loss)

        mask2d = _padding_mask(attention_mask, input_ids.shape[1])
        if position_ids is None:  # as the stock thinker; its rope deltas serve later cached calls
            position_ids, self.model.rope_deltas = self._positions(
                input_ids, mask2d if mask2d is not None else torch.ones_like(input_ids), image_grid_thw,
                video_grid_thw, feature_attention_mask, use_audio_in_video, video_second_per_grid)
        elif position_ids.ndim == 2:
            position_ids = position_ids[None].expand(3, -1, -1)
        plain_mask = attention_mask is None or (torch.is_tensor(attention_mask) and attention_mask.ndim == 2)
        reuse = reuse_prefix_cache and plain_mask and self._reuses_prefix(cache, use_cache, labels, logits_to_keep,
                                                                          kwargs)
        if attention_mask is None and self._is_packed(input_ids, position_ids):
            prepared = self._prepare_packed(input_ids, position_ids, labels, media, output_belief_attention)
        else:
            prepared = self._prepare(input_ids, mask2d if mask2d is not None else torch.ones_like(input_ids),
                                     position_ids, labels, media, need_weights=output_belief_attention,
                                     cache=cache if reuse else None, share_prefix=share_prefix)
        c = min(prepared.cached, prepared.embeds.shape[1] - (logits_to_keep if reuse else 0))
        if c < prepared.cached:
            _crop(cache, c)
        pass2_mask = prepared.attention_mask if prepared.compacted else attention_mask
        out = self.model(inputs_embeds=prepared.embeds[:, c:], attention_mask=pass2_mask,
                         position_ids=prepared.position_ids[..., c:], cache=cache, use_cache=use_cache, **kwargs)
        logits, lm_loss = self._head(out.last_hidden_state, logits_to_keep, prepared.labels, **kwargs)
        ewm = prepared.ewm
        img_loss = ewm.imagination_loss if ewm is not None else None
        loss = lm_loss
        if lm_loss is not None and img_loss is not None:
            loss = lm_loss + self.config.imagination_loss_weight * img_loss  # Eq. 10
        return AffectVerseOutput(
            loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states, attentions=out.attentions,
            image_outputs=prepared.image_outputs, lm_loss=lm_loss, imagination_loss=img_loss, labels=prepared.labels,
            imagination_cosine=ewm.imagination_cosine if ewm is not None and output_imagination else None,
            imagination_mse=ewm.imagination_mse if ewm is not None and output_imagination else None,
            belief_attention=ewm.attention if ewm is not None and output_belief_attention else None,
        )

    # -- generation ------------------------------------------------------------------------------------------------
    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """The stock expansion (beams, ``num_return_sequences``), but image/video patches, grids and seconds per
        grid are repeated per sample, a sample's items together: repeating each patch row scrambles the frames."""
        if expand_size == 1 or input_ids is None:
            return super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids, **model_kwargs)
        visual = {}
        for token_id, keys in ((self.config.image_token_id, ("pixel_values", "image_grid_thw")),
                               (self.config.video_token_id, ("pixel_values_videos", "video_grid_thw",
                                                             "video_second_per_grid"))):
            grid = model_kwargs.get(keys[1])
            if model_kwargs.get(keys[0]) is None or grid is None:
                continue
            patches = grid.prod(-1)  # (n_items,) patch rows of each image/video
            tokens = (patches // self.config.vision_config.spatial_merge_size ** 2).cumsum(0)
            ends = (input_ids == token_id).sum(1).cumsum(0)  # (B,) placeholder count up to each sample
            if int(ends[-1]) != int(tokens[-1]):  # ids without the placeholders (e.g. with inputs_embeds): as stock
                continue
            owner = torch.searchsorted(ends, tokens)  # (n_items,) the sample each item belongs to
            for key in keys:
                value = model_kwargs.get(key)
                if not torch.is_tensor(value):
                    continue
                rows = patches if key.startswith("pixel") else torch.ones_like(patches)
                chunks = value.split(rows.tolist())
                samples = [[c for c, o in zip(chunks, owner.tolist()) if o == b] for b in range(input_ids.shape[0])]
                visual[key] = torch.cat([c for items in samples for _ in range(expand_size) for c in items])
                model_kwargs.pop(key)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs)
        return input_ids, {**model_kwargs, **visual}

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save safetensors, the code files and an ``auto_map`` naming both AutoModelForCausalLM and AutoModel."""
        name = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), "AutoModel": name}
        return super().save_pretrained(save_directory, *args, **kwargs)


AffectVerseForConditionalGeneration.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["AffectVerseForConditionalGeneration", "AffectVerseOutput"]
