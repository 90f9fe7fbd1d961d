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
    "ewm_observation": ("full", "past"),
    "modality_dropout_scope": ("ewm", "both"),
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
        ewm_observation (`str`, defaults to `"full"`): where the EWM's *inputs* come from in training. `"full"`:
            the no-grad pass over the whole prompt prefix (Algorithm 1 step 2), so with the layout [video; audio]
            the past audio states have attended to the truncated future video. `"past"`: the EWM's past states come
            from a no-grad pass over the truncated sequence (each modality's past only, beliefs not yet present),
            the imagination targets still from the full pass. Identical at inference (nothing is truncated).
        modality_dropout_scope (`str`, defaults to `"ewm"`): what modality dropout (D.1) removes: `"ewm"` only the
            EWM's input (the literal reading); `"both"` also the dropped modality's tokens from the language-model
            pass, so the language model trains without it (Figure 6's missing-modality setting).
        eval_keep_ratio (`float`, defaults to 1.0): a fixed kappa for evaluation-mode forwards given ``labels``.
            Below 1 the sequence is split as in training (no modality dropout), the imagination loss and per-step
            MSE and cosine are returned, and the language model sees only the past: held-out imagination quality
            as in Figure 4 / Table 8. 1.0: inference keeps everything and splits nothing. ``generate`` never
            splits.
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
    ewm_observation: str = "full"
    modality_dropout_scope: str = "ewm"
    eval_keep_ratio: float = 1.0
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
        if not 0.0 < self.eval_keep_ratio <= 1.0:
            raise ValueError(f"AffectVerseConfig.eval_keep_ratio must lie in (0, 1], got {self.eval_keep_ratio}")
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

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "AffectVerseConfig":
        """The config of ablation preset ``name`` (``list_presets()``) on the paper's defaults; ``overrides`` win.

        Example: ``AffectVerseConfig.from_preset("table3_b", rollout_steps=2)``.
        """
        return cls(**{**preset_fields(name), **overrides})


# ------------------------------------------------------------------------------------------------------ presets
# Every row of the paper's ablations (Tables 3-6, Figures 4-6; Table 8 shares Figure 4's rows) as config values.
# Each preset names all five component fields, so a row never inherits a component from its base config; the
# varied field follows. See docs/design.md ("Ablation presets") for the readings, Table 3 row (b) especially.
_FULL = dict(belief_construction="ewm", temporal_split=True, imagination_context="full", injection="interleaved",
             residual_boundary=True)


def _row(description: str, **fields) -> tuple[str, dict]:
    return description, {**_FULL, **fields}


PRESETS: dict[str, tuple[str, dict]] = {
    # Table 3: cumulative; rows b-e have no residual boundary, rows b-d inject at a single position.
    "table3_a": _row("Table 3 (a) Qwen2.5-Omni + LoRA: no beliefs, no temporal split", belief_construction="none",
                     temporal_split=False, injection="single", residual_boundary=False),
    "table3_b": _row("Table 3 (b) + temporal splitting: self-modal imagination pooled to beliefs, no MAMA (= Table 5 "
                     "self-modal only's numbers)", belief_construction="imagination", imagination_context="self",
                     injection="single", residual_boundary=False),
    "table3_c": _row("Table 3 (c) + cross-modal imagination, pooled to beliefs, no MAMA",
                     belief_construction="imagination", injection="single", residual_boundary=False),
    "table3_d": _row("Table 3 (d) + MAMA, single-position injection", injection="single", residual_boundary=False),
    "table3_e": _row("Table 3 (e) + interleaved injection (2 positions)", residual_boundary=False),
    "table3_f": _row("Table 3 (f) + residual boundary injection: full AffectVerse"),
    # Table 4: belief construction, every other component as in the full model.
    "table4_none": _row("Table 4 None: no beliefs (the LoRA baseline, = Table 3 a)", belief_construction="none",
                        temporal_split=False, injection="single", residual_boundary=False),
    "table4_random": _row("Table 4 Random tokens: learned input-independent beliefs", belief_construction="random"),
    "table4_pooling": _row("Table 4 Pooling: observed audio/video states average-pooled to beliefs",
                           belief_construction="pooling"),
    "table4_ewm": _row("Table 4 EWM: full AffectVerse"),
    # Table 5: imagination context.
    "table5_self": _row("Table 5 self-modal only", imagination_context="self"),
    "table5_cross": _row("Table 5 cross-modal only", imagination_context="cross"),
    "table5_full": _row("Table 5 full cross-modal: full AffectVerse"),
    # Table 6: lambda_img (0 keeps the EWM, trained through L_lm only).
    **{f"table6_lambda{w:g}": _row(f"Table 6 lambda_img = {w:g}", imagination_loss_weight=w)
       for w in (0.0, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0)},
    # Figure 4 / Table 8: rollout depth S.
    **{f"fig4_s{s}": _row(f"Figure 4 / Table 8 rollout steps S = {s}", rollout_steps=s) for s in (1, 2, 3, 4, 5)},
    # Figure 5: base belief count N_b (2 N_b tokens with both modalities); the text names 1, 4 and 16.
    **{f"fig5_nb{n}": _row(f"Figure 5 N_b = {n} belief queries", num_belief_queries=n) for n in (1, 2, 4, 8, 16)},
    # Figure 6: modality dropout p; the text names 0, 0.15 and 0.30.
    **{f"fig6_p{p:g}": _row(f"Figure 6 modality dropout p = {p:g}", modality_dropout=p) for p in (0.0, 0.15, 0.3)},
}


def preset_fields(name: str) -> dict:
    """The config fields of ablation preset ``name`` (a copy); a clear error listing the names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown AffectVerse preset {name!r}; known: {', '.join(PRESETS)}")
    return dict(PRESETS[name][1])


def list_presets() -> dict[str, str]:
    """``{preset name: the paper row it reproduces}``, in the paper's order."""
    return {name: description for name, (description, _) in PRESETS.items()}



__all__ = ["AffectVerseConfig", "BELIEF_TOKEN", "PRESETS", "belief_split", "list_presets", "preset_fields"]

AffectVerseConfig.register_for_auto_class()
