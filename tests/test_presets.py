"""Ablation presets (Tables 3-6, Figures 4-6) and the issue-13 config fields."""

import pytest

from affectverse.training import model as training_model
from affectverse.training import run as training_run
from configuration_affectverse import PRESETS, AffectVerseConfig, list_presets, preset_fields

COMPONENTS = ("belief_construction", "temporal_split", "imagination_context", "injection", "residual_boundary")
FULL = AffectVerseConfig()


def _differences(config, reference=FULL):
    fields = set(COMPONENTS) | {"imagination_loss_weight", "rollout_steps", "num_belief_queries", "modality_dropout"}
    return {f: getattr(config, f) for f in fields if getattr(config, f) != getattr(reference, f)}


@pytest.mark.parametrize("name, expected", [
    ("table3_a", dict(belief_construction="none", temporal_split=False, injection="single", residual_boundary=False)),
    ("table3_b", dict(belief_construction="imagination", imagination_context="self", injection="single",
                      residual_boundary=False)),
    ("table3_c", dict(belief_construction="imagination", injection="single", residual_boundary=False)),
    ("table3_d", dict(injection="single", residual_boundary=False)),
    ("table3_e", dict(residual_boundary=False)),
    ("table3_f", {}),
    ("table4_none", dict(belief_construction="none", temporal_split=False, injection="single",
                         residual_boundary=False)),
    ("table4_random", dict(belief_construction="random")),
    ("table4_pooling", dict(belief_construction="pooling")),
    ("table4_ewm", {}),
    ("table5_self", dict(imagination_context="self")),
    ("table5_cross", dict(imagination_context="cross")),
    ("table5_full", {}),
    ("table6_lambda0", dict(imagination_loss_weight=0.0)),
    ("table6_lambda0.01", dict(imagination_loss_weight=0.01)),
    ("table6_lambda1", {}),
    ("table6_lambda5", dict(imagination_loss_weight=5.0)),
    ("fig4_s1", dict(rollout_steps=1)),
    ("fig4_s5", dict(rollout_steps=5)),
    ("fig5_nb1", dict(num_belief_queries=1)),
    ("fig5_nb16", dict(num_belief_queries=16)),
    ("fig6_p0", dict(modality_dropout=0.0)),
    ("fig6_p0.3", dict(modality_dropout=0.3)),
])
def test_each_preset_builds_the_row_it_names(name, expected):
    """Each row differs from the full model in exactly the fields its row changes (cumulative rows explicit)."""
    assert _differences(AffectVerseConfig.from_preset(name)) == expected


def test_every_preset_names_all_components_so_no_row_inherits_one():
    """A preset applied on a base that is not the full model still gives its row: all five components are set."""
    base = AffectVerseConfig(belief_construction="random", injection="single", residual_boundary=False,
                             imagination_context="cross", temporal_split=False)
    for name in PRESETS:
        built = AffectVerseConfig(**{**base.to_dict(), **preset_fields(name)})
        assert {f: getattr(built, f) for f in COMPONENTS} == \
               {f: getattr(AffectVerseConfig.from_preset(name), f) for f in COMPONENTS}, name


def test_table3_rows_are_cumulative():
    rows = [AffectVerseConfig.from_preset(f"table3_{r}") for r in "abcdef"]
    assert [r.residual_boundary for r in rows] == [False] * 5 + [True]
    assert [r.injection for r in rows[1:]] == ["single"] * 3 + ["interleaved"] * 2
    assert [r.temporal_split for r in rows] == [False] + [True] * 5
    assert [r.belief_construction for r in rows] == ["none", "imagination", "imagination", "ewm", "ewm", "ewm"]
    # (b) is Table 5's "self-modal only" without MAMA; (c) adds the other modality's past
    assert (rows[1].imagination_context, rows[2].imagination_context) == ("self", "full")


def test_every_paper_row_has_a_preset():
    names = set(list_presets())
    assert {f"table3_{r}" for r in "abcdef"} <= names
    assert {"table4_none", "table4_random", "table4_pooling", "table4_ewm"} <= names
    assert {"table5_self", "table5_cross", "table5_full"} <= names
    assert {f"table6_lambda{w}" for w in ("0", "0.01", "0.1", "0.5", "1", "2", "5")} <= names
    assert {f"fig4_s{s}" for s in range(1, 6)} <= names
    assert {"fig5_nb1", "fig5_nb4", "fig5_nb16", "fig6_p0", "fig6_p0.15", "fig6_p0.3"} <= names
    assert all(list_presets().values())


def test_from_preset_overrides_win_and_unknown_names_are_refused():
    config = AffectVerseConfig.from_preset("table3_b", rollout_steps=2, residual_boundary=True)
    assert (config.rollout_steps, config.residual_boundary, config.imagination_context) == (2, True, "self")
    with pytest.raises(ValueError, match="unknown AffectVerse preset 'table9_z'; known: table3_a"):
        AffectVerseConfig.from_preset("table9_z")


def test_new_fields_round_trip_through_save_pretrained(tmp_path):
    config = AffectVerseConfig.from_preset("table3_c", ewm_observation="past", modality_dropout_scope="both",
                                           eval_keep_ratio=0.7)
    config.save_pretrained(tmp_path)
    loaded = AffectVerseConfig.from_pretrained(tmp_path)
    for field in ("ewm_observation", "modality_dropout_scope", "eval_keep_ratio", *COMPONENTS):
        assert getattr(loaded, field) == getattr(config, field), field
    assert (FULL.ewm_observation, FULL.modality_dropout_scope, FULL.eval_keep_ratio) == ("full", "ewm", 1.0)


@pytest.mark.parametrize("field, value, message", [
    ("ewm_observation", "future", "ewm_observation='future'"),
    ("modality_dropout_scope", "llm", "modality_dropout_scope='llm'"),
    ("eval_keep_ratio", 0.0, "eval_keep_ratio must lie in"),
])
def test_new_fields_are_checked(field, value, message):
    with pytest.raises(ValueError, match=message):
        AffectVerseConfig(**{field: value})


def test_train_preset_argument_builds_the_row_on_the_tiny_model():
    model_args, _, _ = training_run.parse_args(["--preset", "table3_b", "--ewm_overrides", "rollout_steps=2"])
    config = training_model.load_config(model_args)
    assert (config.belief_construction, config.imagination_context, config.injection, config.residual_boundary) == \
           ("imagination", "self", "single", False)
    assert config.rollout_steps == 2  # --ewm_overrides win over the preset
    assert config.text_config.hidden_size == 64  # still the tiny model
    with pytest.raises(ValueError, match="unknown AffectVerse preset 'nope'"):
        training_run.parse_args(["--preset", "nope"])


def test_train_help_lists_the_presets(capsys):
    with pytest.raises(SystemExit):
        training_run.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "table3_b" in text and "fig6_p0.15" in text
