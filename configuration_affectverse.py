# Copyright 2026 The AffectVerse authors. Licensed under the Apache License, Version 2.0.
"""AffectVerse configuration: the Qwen2.5-Omni thinker config plus the Emotion World Module (EWM).

Remote code: imports only transformers (``save_pretrained`` copies this file into every checkpoint).
"""

from transformers import Qwen2_5OmniThinkerConfig

BELIEF_TOKEN = "<|belief|>"

_CHOICES = {
    "belief_construction": ("none", "random", "pooling", "imagination", "ewm"),
    "injection": ("interleaved", "single"),
    "imagination_context": ("full", "self", "cross"),
}


def belief_split(n_modalities: int, num_belief_queries: int = 4, injection: str = "interleaved",
                 belief_construction: str = "ewm") -> tuple[int, int]:
    """(tokens at the AV-text boundary, tokens at the text-answer boundary) for one sample (Eq. 18, 20).

    N_q = 2*N_b with both modalities, N_b with one, 0 for text only or ``belief_construction="none"``. The first
    group holds ``ceil(N_q / 2)``, so an odd N_q (e.g. N_b = 1) keeps its extra token next to the media;
    ``injection="single"`` puts all N_q at the AV-text boundary.
    """
    if belief_construction == "none" or n_modalities == 0:
        return 0, 0
    n = num_belief_queries * (2 if n_modalities == 2 else 1)
    if injection == "single":
        return n, 0
    return (n + 1) // 2, n // 2


class AffectVerseConfig(Qwen2_5OmniThinkerConfig):
    r"""Configuration of [`AffectVerseForConditionalGeneration`] (arXiv 2605.19950).

    ``AffectVerseConfig()`` describes AffectVerse on Qwen2.5-Omni-7B: the thinker fields keep
    [`Qwen2_5OmniThinkerConfig`]'s defaults (7B dimensions, the released special-token ids) and every EWM field
    has the paper's default (Table 7, Appendix A.3). Each ablation of Tables 3-6 and Figures 4-6 is one field;
    see ``docs/design.md`` for the mapping.

    Args:
        ewm_hidden_size (`int`, defaults to 512): working dimension d_w of the EWM (Eq. 2).
        ewm_num_heads (`int`, defaults to 8): attention heads of every EWM cross-attention block.
        ewm_ffn_mult (`int`, defaults to 4): FFN width multiplier (GELU FFN of d_w * mult); not given by the
            paper, 4 gives the paper's ~25M EWM parameters at 7B.
        imagination_layers (`int`, defaults to 2): cross-attention layers of each imagination module (D.2).
        future_queries (`int`, defaults to 8): N_s learnable future queries per rollout step (Eq. 4).
        rollout_steps (`int`, defaults to 3): S rollout steps sharing one cross-attention block (Eq. 14-16).
        num_belief_queries (`int`, defaults to 4): N_b; 2*N_b belief tokens with both modalities, N_b with one
            (Eq. 18).
        aggregator_layers (`int`, defaults to 1): cross-attention layers of each MAMA aggregator (Eq. 19).
        num_type_embeddings (`int`, defaults to 6): rows of the MAMA type-embedding table (Eq. 17).
        modality_dropout (`float`, defaults to 0.15): probability of dropping one whole modality for the EWM in
            training (D.1).
        residual_boundary (`bool`, defaults to `True`): add alpha * W_r * mean(boundary tokens) to the beliefs.
        residual_scale_init (`float`, defaults to 0.1): initial value of the learnable alpha.
        temporal_split (`bool`, defaults to `True`): in training, split each modality at floor(kappa * L_m) and
            show the language model only the past (Eq. 11, D.4). Off: kappa = 1 and no imagination loss.
        keep_ratio_min / keep_ratio_max (`float`, defaults to 0.7 / 1.0): kappa ~ U[min, max) in training (Eq. 12);
            inference always uses kappa = 1.
        imagination_loss_weight (`float`, defaults to 1.0): lambda_img of Eq. 10.
        imagination_cosine_weight (`float`, defaults to 0.5): weight of (1 - cos) in Eq. 5.
        imagination_context (`str`, defaults to `"full"`): context of each imagination branch: `"full"` own +
            other modality's past with self/cross tags (Eq. 3), `"self"` own past only, `"cross"` the other
            modality's past only (Table 5). Falls back to own past when the other modality is absent.
        belief_construction (`str`, defaults to `"ewm"`): `"ewm"` imagination + MAMA; `"imagination"` imagined
            memory average-pooled to N_q tokens without MAMA (Table 3 row c); `"pooling"` observed audio/video
            states average-pooled to N_q tokens, no imagination (Table 4); `"random"` learned input-independent
            tokens (Table 4); `"none"` no belief tokens: the stock thinker (Table 3 row a/b, Table 4).
        injection (`str`, defaults to `"interleaved"`): `"interleaved"` splits the beliefs between the AV-text
            and the text-answer boundary (Eq. 8, 20); `"single"` puts all at the AV-text boundary (Table 3 row d).
        ewm_hidden_layer (`int`, defaults to -1): which thinker hidden state the EWM reads (-1: after the final
            norm, the paper's H of Eq. 1; 0: the merged input embeddings; k: after decoder layer k).
        ewm_initializer_range (`float`, defaults to 0.02): std of the EWM's normal initialisation.
        belief_token_id (`int`, defaults to 151665): id of the `<|belief|>` placeholder (the first free row of
            the 7B embedding).
        vision_start_token_id / vision_end_token_id (`int`): ids read by the thinker's `get_rope_index`.
    """

    model_type = "affectverse"

    ewm_hidden_size: int = 512
    ewm_num_heads: int = 8
    ewm_ffn_mult: int = 4
    imagination_layers: int = 2
    future_queries: int = 8
    rollout_steps: int = 3
    num_belief_queries: int = 4
    aggregator_layers: int = 1
    num_type_embeddings: int = 6
    modality_dropout: float = 0.15
    residual_boundary: bool = True
    residual_scale_init: float = 0.1
    temporal_split: bool = True
    keep_ratio_min: float = 0.7
    keep_ratio_max: float = 1.0
    imagination_loss_weight: float = 1.0
    imagination_cosine_weight: float = 0.5
    imagination_context: str = "full"
    belief_construction: str = "ewm"
    injection: str = "interleaved"
    ewm_hidden_layer: int = -1
    ewm_initializer_range: float = 0.02
    belief_token_id: int = 151665
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for field, choices in _CHOICES.items():
            if getattr(self, field) not in choices:
                raise ValueError(f"AffectVerseConfig.{field}={getattr(self, field)!r}; expected one of {choices}")
        positive = ("ewm_hidden_size", "ewm_num_heads", "ewm_ffn_mult", "imagination_layers", "future_queries",
                    "rollout_steps", "num_belief_queries", "aggregator_layers", "num_type_embeddings")
        for field in positive:
            if int(getattr(self, field)) < 1:
                raise ValueError(f"AffectVerseConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.ewm_hidden_size % self.ewm_num_heads:
            raise ValueError(
                f"AffectVerseConfig.ewm_hidden_size={self.ewm_hidden_size} is not divisible by "
                f"ewm_num_heads={self.ewm_num_heads}"
            )
        if not 0.0 < self.keep_ratio_min <= self.keep_ratio_max <= 1.0:
            raise ValueError(
                f"AffectVerseConfig keep ratios need 0 < keep_ratio_min <= keep_ratio_max <= 1, got "
                f"{self.keep_ratio_min}, {self.keep_ratio_max}"
            )
        if not 0.0 <= self.modality_dropout <= 1.0:
            raise ValueError(f"AffectVerseConfig.modality_dropout must lie in [0, 1], got {self.modality_dropout}")
        if self.num_type_embeddings < 2:
            raise ValueError("AffectVerseConfig.num_type_embeddings must be >= 2 (video and audio imagination)")

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """Read ``config.json``; from a full Qwen2.5-Omni checkpoint take its ``thinker_config`` part."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if "thinker_config" in config_dict:
            config_dict = dict(config_dict["thinker_config"])
        config_dict["model_type"] = cls.model_type
        return config_dict, kwargs

    @property
    def uses_ewm(self) -> bool:
        """Whether beliefs are built from the thinker's audio/video states (any construction but none/random)."""
        return self.belief_construction in ("pooling", "imagination", "ewm")

    @property
    def uses_imagination(self) -> bool:
        return self.belief_construction in ("imagination", "ewm")

    def num_belief_tokens(self, n_modalities: int) -> int:
        """N_q for a sample with ``n_modalities`` audio/video streams (Eq. 18): 2*N_b, N_b, or 0 (text only)."""
        return sum(self.belief_split(n_modalities))

    def belief_split(self, n_modalities: int) -> tuple[int, int]:
        """See the module-level ``belief_split``, with this config's N_b, injection and construction."""
        return belief_split(n_modalities, self.num_belief_queries, self.injection, self.belief_construction)


__all__ = ["AffectVerseConfig", "BELIEF_TOKEN", "belief_split"]

AffectVerseConfig.register_for_auto_class()
