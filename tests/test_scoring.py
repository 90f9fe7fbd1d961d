"""MER-UniBench scorers: the emotion wheel, the score functions, the evaluate modules and the CLI.

The reference tests re-score AffectGPT's released outputs in ../shared/merunibench and must reproduce the
README's "Expected numbers" to the hundredth; they skip when ../shared is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from affectverse.data.safe_npz import load_npz
from affectverse.scoring import score as score_cli
from affectverse.scoring.scores import (
    LABEL_PROMPT,
    SAMPLING,
    SENTIMENT_PROMPT,
    LLMExtractor,
    clean_llm_output,
    closed_set_scores,
    extract_labels,
    hit_score,
    map_to_label_set,
    ovmerd_scores,
    parse_llm_labels,
    sentiment_from_answer,
    sentiment_from_labels,
    sentiment_scores,
)
from affectverse.scoring.wheel import EmotionWheel, EmotionWheelError, load_wheel, parse_label_list
from tests.helpers import SHARED, write_mini_wheel, write_rules_wheel

ROOT = Path(__file__).resolve().parents[1]
BENCH = SHARED / "merunibench"
WHEEL_DIR = BENCH / "emotion_wheel"
needs_shared = pytest.mark.skipif(
    not BENCH.is_dir(), reason=f"{BENCH} not found: the MER-UniBench reference files come from ../shared"
)

# README "Expected numbers from the shipped files": epochs 30..60 step 5, x100.
EXPECTED = {
    "mer2023": dict(
        folder="results-mer2023", labels="mer2023-dataset-process/label-6way.npz",
        main=[72.55, 76.79, 73.44, 74.64, 78.54, 75.70, 73.69], n_scored=[323, 323, 323, 323, 305], best=78.54,
    ),
    "meld": dict(
        folder="results-meld", labels="meld-process/label.npz",
        main=[55.65, 55.42, 54.06, 54.80, 53.81, 54.98, 52.09], n_scored=[1354, 1354, 1286, 1354, 1005], best=55.65,
    ),
    "mosi": dict(
        folder="results-cmumosi", labels="cmumosi-process/label.npz",
        main=[81.21, 78.48, 81.30, 80.74, 79.85, 79.53, 78.30], acc2=[81.10, 78.35, 81.25, 80.64, 79.73, 79.42, 78.20],
        n_scored=656, best=81.30, best_acc2=81.25,
    ),
    "sims": dict(
        folder="results-sims", labels="sims-process/label.npz",
        main=[88.49, 88.02, 84.29, 86.71, 87.23, 87.90, 85.28], acc2=[88.40, 87.89, 84.28, 86.60, 87.11, 87.89, 85.05],
        n_scored=388, best=88.49, best_acc2=88.40,
    ),
}


def pct(value: float) -> float:
    return round(float(value) * 100, 2)


@pytest.fixture(scope="module")
def wheel() -> EmotionWheel:
    if not WHEEL_DIR.is_dir():
        pytest.skip(f"{WHEEL_DIR} not found: the emotion-wheel files come from ../shared")
    return load_wheel(WHEEL_DIR)


@pytest.fixture(scope="module", params=["hand-made", "MER-UniBench"])
def wheel_dir(request, tmp_path_factory) -> Path:
    """An emotion-wheel folder: a hand-made one (always), and the real one when ../shared is here."""
    if request.param == "hand-made":
        return write_mini_wheel(tmp_path_factory.mktemp("mini_wheel") / "emotion_wheel")
    if not WHEEL_DIR.is_dir():
        pytest.skip(f"{WHEEL_DIR} not found: the emotion-wheel files come from ../shared")
    return WHEEL_DIR


@pytest.fixture(scope="module")
def any_wheel(wheel_dir) -> EmotionWheel:
    return load_wheel(wheel_dir)


@pytest.fixture(scope="module")
def metrics(tmp_path_factory):
    """The four evaluate modules, loaded from their folders with a throw-away HF_MODULES_CACHE."""
    import evaluate

    from affectverse.scoring.metric_modules import METRIC_NAMES, load_metric

    cache = tmp_path_factory.mktemp("hf_modules")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_MODULES_CACHE", str(cache))
        mp.setattr(evaluate.config, "HF_MODULES_CACHE", cache)
        yield {name: load_metric(name, keep_in_memory=True) for name in METRIC_NAMES}


def checkpoint_files(dataset: str, suffix: str) -> list[Path]:
    files = sorted((BENCH / "affectgpt_outputs" / EXPECTED[dataset]["folder"]).glob(f"checkpoint_*{suffix}"))
    assert len(files) == 7, files
    return files


def openset(path: Path) -> dict[str, str]:
    data = load_npz(path)
    return dict(zip(data["filenames"].tolist(), data["fileitems"].tolist()))


# ------------------------------------------------------------------------------------------- the wheel
@needs_shared
def test_wheel_quirks(wheel):
    clusters = lambda word: [wheel.cluster(word, w) for w in wheel.wheel_indices]  # noqa: E731
    assert clusters("neutral") == [None] * 5
    # fear lands in the positive cluster (via fearless/brave) everywhere but wheel 1
    assert clusters("fear") == ["scared", "happy", "joyful", "genius", "joyful"]
    disgust, surprise = clusters("disgust"), clusters("surprise")
    assert disgust[2] is None and disgust[4] is None and None not in (disgust[0], disgust[1], disgust[3])
    assert surprise[4] is None and None not in surprise[:4]
    for a, b in [("happy", "joy"), ("anger", "angry"), ("sad", "sadness")]:
        assert clusters(a) == clusters(b) and None not in clusters(a)
    assert clusters("  Happiness ") == clusters("happy")
    assert clusters("no-such-emotion") == [None] * 5


@needs_shared
def test_wheel_candidates_sorted_and_index_checked(wheel):
    candidates = wheel.candidates("fear")
    assert candidates == sorted(candidates) and "fearful" in candidates
    with pytest.raises(ValueError, match="wheel_index"):
        wheel.cluster("happy", 0)


@pytest.mark.parametrize(
    "breakage, message",
    [("remove:wheel3.xlsx", "wheel3.xlsx"), ("columns:format.csv", "format.csv: missing column")],
)
def test_wheel_errors_name_the_file(tmp_path, wheel_dir, breakage, message):
    action, name = breakage.split(":")
    folder = tmp_path / "emotion_wheel"
    shutil.copytree(wheel_dir, folder)
    (folder / name).chmod(0o644)
    if action == "remove":
        (folder / name).unlink()
    else:
        (folder / name).write_text("word,forms\nhappy,happy\n")
    with pytest.raises(EmotionWheelError, match=message):
        EmotionWheel(folder)
    with pytest.raises(EmotionWheelError, match="not found"):
        EmotionWheel(tmp_path / "missing")


# The rules themselves on the hand-made wheel (tests/helpers.py:write_rules_wheel, the mini wheel plus a word per
# rule), so that they are tested on a user's clone too, where the real wheel (test_wheel_quirks) is absent.
@pytest.fixture(scope="module")
def rules_wheel(tmp_path_factory) -> EmotionWheel:
    return EmotionWheel(write_rules_wheel(tmp_path_factory.mktemp("rules") / "emotion_wheel"))


def test_wheel_maps_level2_and_level3_words_to_their_ancestor_at_each_level(rules_wheel):
    # cheerfully -> cheerful -> (synonym run 3) joy, level 2 of happy; gleefully -> gleeful -> (run 6) joyful, level 3
    # under happy > joy; peacefully -> peaceful -> tranquil, level 3 under calm > relaxed in merged cells
    assert [rules_wheel.candidates(w) for w in ("cheerfully", "gleefully", "peacefully")] == [["joy"], ["joyful"],
                                                                                               ["tranquil"]]
    for word, at_level in (("cheerfully", ("happy", "joy", "joy")), ("gleefully", ("happy", "joy", "joyful")),
                           ("peacefully", ("calm", "relaxed", "tranquil")), ("happiness", ("happy",) * 3)):
        for level, node in enumerate(at_level, 1):
            assert [rules_wheel.cluster(word, w, level) for w in range(1, 6)] == [node] * 5, (word, level)
    assert hit_score(["happy", "happy"], [["gleefully"], ["cheerfully"]], rules_wheel)["hit"] == 1.0


def test_wheel_merges_all_synonym_runs_and_takes_the_alphabetically_first_candidate(rules_wheel):
    assert rules_wheel.candidates("bittersweet") == ["joy", "sad"]  # joy from run 3, sad from run 6
    assert [rules_wheel.cluster("bittersweet", w) for w in range(1, 6)] == ["happy"] * 5
    assert rules_wheel.candidates("sad") == ["sad"] and rules_wheel.candidates("sadness") == ["sad"]  # a head is its own


def test_wheel_words_ignore_case_and_spaces_and_unknown_words_map_to_nothing(rules_wheel):
    assert rules_wheel.cluster("  Happiness ", 1) == "happy" and rules_wheel.cluster("GLEEFULLY", 2, 2) == "joy"
    assert rules_wheel.cluster("neutral", 1) is None and rules_wheel.cluster("no-such-emotion", 1) is None
    assert rules_wheel.cluster("surprise", 4) == "surprise" and rules_wheel.cluster("surprise", 5) is None


def test_parse_label_list():
    assert parse_label_list("[concerned, 'anxious', \"sad\"]") == ["concerned", "anxious", "sad"]
    assert parse_label_list("[]") == [] and parse_label_list(float("nan")) == [] and parse_label_list(None) == []
    assert parse_label_list(["a ", " b"]) == ["a", "b"]


# --------------------------------------------------------------------------------- hand-made scores
def test_hit_hand_made(any_wheel):
    wheel = any_wheel
    gt = ["happy", "neutral", "sad", "surprise"]
    pred = [["happiness"], ["happy"], ["angry"], ["surprised", "angry"]]
    assert [wheel.cluster("surprised", w) for w in range(1, 5)] == [wheel.cluster("surprise", w) for w in range(1, 5)]
    result = hit_score(gt, pred, wheel)
    # wheels 1-4 score happy, sad, surprise (2 hits of 3); wheel 5 drops surprise (1 hit of 2)
    assert result["n_scored"] == [3, 3, 3, 3, 2]
    assert result["per_wheel"] == pytest.approx([2 / 3] * 4 + [1 / 2])
    assert result["hit"] == pytest.approx(19 / 30)
    # extra predictions are never penalised; ground-truth aliases score alike
    assert hit_score(["sad"], [["angry", "sad", "happy"]], wheel)["hit"] == 1.0
    assert hit_score(["joy", "angry"], [["joyful"], ["mad"]], wheel) == hit_score(["happy", "anger"], ["[joyful]", "[mad]"], wheel)


def test_ovmerd_hand_made(any_wheel):
    wheel = any_wheel
    gt = [["happy", "sad"], ["neutral"], ["angry"]]
    pred = [["happy"], ["happy"], []]
    result = ovmerd_scores(gt, pred, wheel)
    # sample 1: P=1, R=1/2; sample 2 skipped; sample 3 empty prediction: P=R=0 -> P_w=1/2, R_w=1/4, F_w=1/3
    assert result["n_scored"] == [2] * 5
    assert result["precision"] == pytest.approx(0.5) and result["recall"] == pytest.approx(0.25)
    assert result["f1"] == pytest.approx(1 / 3)
    assert ovmerd_scores([["happy"]], [["happiness", "joyful"]], wheel)["f1"] == pytest.approx(1.0)


def test_sentiment_hand_made():
    result = sentiment_scores([1.2, -0.4, 0.0, 2.0], ["positive", "neutral", "positive", "negative"])
    # the zero-valence sample is dropped; true [+, -, +] vs predicted [+, -, -]
    assert result["n_scored"] == 3 and result["acc2"] == pytest.approx(2 / 3)
    assert result["weighted_f1"] == pytest.approx((2 * 2 / 3 + 1 * 2 / 3) / 3)
    assert sentiment_scores([-1.0], ["mixed"])["acc2"] == 1.0  # "other" counts as 0, i.e. not positive
    with pytest.raises(ValueError, match="valence is 0"):
        sentiment_scores([0.0], ["positive"])


CLOSED_GT = ["happy", "happy", "sad", "angry", "sad", "angry"]
CLOSED_PRED = [["joy"], ["sad"], ["sad", "happy"], ["bored"], ["sadness"], ["angry"]]
# mapped: [happy, sad, happy (set order), none, sad, angry]; per class F1: happy 1/2, sad 1/2, angry 2/3
CLOSED_F1 = (0.5 * 2 + 0.5 * 2 + (2 / 3) * 2) / 6  # = 5/9
CLOSED_SET = ["happy", "sad", "angry"]


def test_closed_set_hand_made():
    result = closed_set_scores(CLOSED_GT, CLOSED_PRED, CLOSED_SET)
    assert result["weighted_f1"] == pytest.approx(5 / 9) == pytest.approx(CLOSED_F1)
    assert result["accuracy"] == pytest.approx(0.5) and result["n_unmapped"] == 1
    assert map_to_label_set(["sad", "happy"], CLOSED_SET) == "happy"  # first label of the set, not of the answer
    with pytest.raises(ValueError, match="not in the label set"):
        closed_set_scores(["bored"], [["happy"]], CLOSED_SET)


# ---------------------------------------------------------------------------------------- extraction
@pytest.mark.parametrize(
    "answer, labels",
    [
        ("The character's emotional state is happy, sad.", ["happy", "sad"]),
        ("The character's emotional state is Happy, excited, and HAPPY.", ["happy", "excited"]),
        ("[Concerned, Anxious]", ["concerned", "anxious"]),
        ("Output: [worried, anxious, worried]", ["worried", "anxious"]),
        ("happy and sad", ["happy", "sad"]),
        ("  'Angry';  frustrated!  ", ["angry", "frustrated"]),
        ("Emotions: joy / surprise", ["joy", "surprise"]),
        ("He seems to be nervous or scared.", ["nervous", "scared"]),
        ("The character's emotional state is anxious, tense, under pressure.", ["anxious", "tense", "under pressure"]),
        ("[]", []),
        ("", []),
    ],
)
def test_extract_labels(answer, labels):
    assert extract_labels(answer) == labels


def test_rule_based_sentiment():
    assert sentiment_from_labels(["happy", "excited"]) == "positive"
    assert sentiment_from_labels(["sad", "angry", "happy"]) == "negative"
    assert sentiment_from_labels([]) == sentiment_from_labels(["sad", "happy"]) == "neutral"
    assert sentiment_from_answer("Output: Positive") == "positive"
    assert sentiment_from_answer("The character's emotional state is frustrated.") == "negative"


# ------------------------------------------------------------------------------------ LLM extractor
class _FakeTokenizer:
    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return f"<user>{messages[0]['content']}</user><assistant>" if len(messages) == 1 else "?"


def test_llm_prompt_construction():
    extractor = LLMExtractor("no-such-model")  # nothing is loaded before the first generate
    prompt = extractor.label_prompt("He looks happy")
    assert prompt.startswith("Please assume the role of an expert in the field of emotions.")
    assert prompt.endswith("Output: [happy, sad, angry] Input: He looks happy; Output: ")
    assert extractor.sentiment_prompt(["joyful", "calm"]).endswith("Input: [joyful, calm]; Output: ")
    extractor._tokenizer, extractor._model = _FakeTokenizer(), object()
    assert extractor.chat_text("hi") == "<user>hi</user><assistant>"
    assert SAMPLING == {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "repetition_penalty": 1.05, "max_new_tokens": 512}


@needs_shared
def test_llm_prompts_match_readme():
    readme = (BENCH / "README.md").read_text()

    def quoted(heading: str) -> str:
        lines = readme.split(heading, 1)[1].splitlines()[1:]
        block = [line[2:].strip() for line in lines[: lines.index("")] if line.startswith("> ")]
        return " ".join(block)

    assert LABEL_PROMPT.format(answer="{answer}").strip() == quoted("Answer -> label list")
    assert SENTIMENT_PROMPT.format(labels="{labels}").strip() == quoted("Label list -> sentiment")


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("Output: [happy, sad]", "[happy, sad]"),
        ("\nInput:\n[anxious,\nworried]\n", "[anxious,worried]"),
        ("  : [calm]", "[calm]"),
        ("[]", "[]"),
    ],
)
def test_llm_output_cleaning(raw, cleaned):
    assert clean_llm_output(raw) == cleaned


def test_llm_answer_parsing(monkeypatch):
    assert parse_llm_labels("Output: [Happy, sad, happy]") == ["happy", "sad"]
    assert parse_llm_labels("[]") == []
    extractor = LLMExtractor("no-such-model")
    monkeypatch.setattr(extractor, "generate", lambda prompts: ["[Happy, sad]"] * len(prompts))
    assert extractor.labels(["a", "b"]) == [["happy", "sad"]] * 2
    monkeypatch.setattr(extractor, "generate", lambda prompts: ["Positive "])
    assert extractor.sentiments([["joyful"]]) == ["positive"]


# ------------------------------------------------------------------------- AffectGPT's released outputs
@needs_shared
@pytest.mark.parametrize("dataset", ["mer2023", "meld"])
def test_reference_hit_through_evaluate(dataset, wheel, metrics):
    spec = EXPECTED[dataset]
    gt = score_cli.read_labels(dataset, BENCH / "labels" / spec["labels"])
    scores = []
    for path in checkpoint_files(dataset, "-openset.npz"):
        pred = openset(path)
        result = metrics["mer_hit"].compute(
            predictions=[parse_label_list(pred[name]) for name in gt], references=list(gt.values()), emotion_wheel=wheel
        )
        assert result["n_scored"] == spec["n_scored"]
        scores.append(pct(result["hit"]))
    assert scores == spec["main"]
    assert max(scores) == spec["best"]


@needs_shared
@pytest.mark.parametrize("dataset", ["mosi", "sims"])
def test_reference_sentiment_through_evaluate(dataset, metrics):
    spec = EXPECTED[dataset]
    gt = score_cli.read_labels(dataset, BENCH / "labels" / spec["labels"])
    waf, acc2 = [], []
    for path in checkpoint_files(dataset, "-openset-sentiment.npz"):
        pred = openset(path)
        result = metrics["mer_sentiment"].compute(predictions=[pred[n] for n in gt], references=list(gt.values()))
        assert result["n_scored"] == spec["n_scored"]
        waf.append(pct(result["weighted_f1"]))
        acc2.append(pct(result["acc2"]))
    assert (waf, acc2) == (spec["main"], spec["acc2"])
    best = int(np.argmax(waf))
    assert (waf[best], acc2[best]) == (spec["best"], spec["best_acc2"])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "affectverse.scoring.score", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@needs_shared
@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_reference_numbers_through_cli(dataset):
    spec = EXPECTED[dataset]
    proc = run_cli(
        "--benchmark", dataset, "--labels", str(BENCH / "labels" / spec["labels"]),
        "--predictions", str(BENCH / "affectgpt_outputs" / spec["folder"]), "--emotion-wheel", str(WHEEL_DIR),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    checkpoints = report["checkpoints"]
    suffix = "-openset-sentiment.npz" if "acc2" in spec else "-openset.npz"
    assert [Path(c["predictions"]).name for c in checkpoints] == [p.name for p in checkpoint_files(dataset, suffix)]
    assert [c["main_score"] for c in checkpoints] == spec["main"]
    assert all(c["n_scored"] == spec["n_scored"] for c in checkpoints)
    assert report["best"]["main_score"] == spec["best"]
    assert report["selection_rule"].startswith("oracle best main score, as AffectGPT's table does")
    if "acc2" in spec:
        assert [c["acc2"] for c in checkpoints] == spec["acc2"]
        assert report["best"]["acc2"] == spec["best_acc2"]
    else:
        assert {"closed_set_weighted_f1", "closed_set_accuracy"} <= set(report["best"])


# ---------------------------------------------------------------------- the CLI on small hand-made files
def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **{k: np.array(v, dtype=object) if isinstance(v, dict) else v for k, v in arrays.items()})
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def mer_files(tmp_path):
    corpus = {"s1": {"emo": "happy", "val": 1.0}, "s2": {"emo": "sad", "val": -1.0}, "s3": {"emo": "angry", "val": -2.0}}
    labels = write_npz(tmp_path / "label-6way.npz", test1_corpus=corpus)
    good = write_jsonl(tmp_path / "good.jsonl", [
        {"name": "s1", "answer": "The character's emotional state is joyful."},
        {"name": "s2", "labels": ["Sad"]},
        {"name": "s3", "labels": ["angry", "sad"]},
    ])
    poor = write_jsonl(tmp_path / "poor.jsonl", [{"name": n, "labels": ["unknown-word"]} for n in ("s1", "s2", "s3")])
    return labels, good, poor


def cli_json(capsys, *args) -> dict:
    assert score_cli.main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def cli_error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        score_cli.main(list(args))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_cli_jsonl_and_checkpoint_choice(capsys, mer_files, wheel_dir):
    labels, good, poor = mer_files
    common = ("--benchmark", "mer2023", "--labels", str(labels), "--emotion-wheel", str(wheel_dir))
    single = cli_json(capsys, *common, "--predictions", str(good))
    assert single["main_score"] == 100.0 and single["n_scored"] == [3] * 5
    # closed set: s1 "joyful" names no label of the set; s3 maps to "angry"
    assert single["closed_set_accuracy"] == pytest.approx(66.67) and single["closed_set_n_unmapped"] == 1
    both = cli_json(capsys, *common, "--predictions", str(poor), "--predictions", str(good))
    assert [c["main_score"] for c in both["checkpoints"]] == [0.0, 100.0]
    assert both["best"]["predictions"] == str(good)


def test_cli_errors(capsys, tmp_path, mer_files):
    labels, good, _ = mer_files
    base = ("--labels", str(labels), "--predictions", str(good))
    assert "invalid choice" in cli_error(capsys, "--benchmark", "mer2099", *base)
    assert "needs --emotion-wheel" in cli_error(capsys, "--benchmark", "mer2023", *base)
    wrong_key = write_npz(tmp_path / "wrong.npz", train_corpus={"s1": {"emo": "happy", "val": 1.0}})
    err = cli_error(capsys, "--benchmark", "mosi", "--labels", str(wrong_key), "--predictions", str(good))
    assert "wrong.npz" in err and "'test_corpus'" in err
    (tmp_path / "empty.jsonl").write_text("")
    err = cli_error(capsys, "--benchmark", "sims", "--labels", str(labels).replace("label-6way", "x"),
                    "--predictions", str(good))
    assert "label file not found" in err
    sims_labels = write_npz(tmp_path / "label.npz", test_corpus={"s1": {"emo": 0, "val": 0.5}})
    err = cli_error(capsys, "--benchmark", "sims", "--labels", str(sims_labels), "--predictions", str(tmp_path / "empty.jsonl"))
    assert "empty.jsonl" in err and "empty" in err
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"name": "s1", "sentiment": "positive"}, {"name": "zz", "sentiment": "negative"}])
    err = cli_error(capsys, "--benchmark", "sims", "--labels", str(sims_labels), "--predictions", str(extra))
    assert "extra.jsonl" in err and "not in the labels" in err and "zz" in err


def test_label_readers(tmp_path):
    corpus = {"Ses05F_a": {"emo": 1, "val": -10}, "Ses01F_b": {"emo": 0, "val": -10}, "Ses05M_c": {"emo": 3, "val": -10}}
    iemocap = write_npz(tmp_path / "label_4way.npz", whole_corpus=corpus)
    assert score_cli.read_labels("iemocap", tmp_path) == {"Ses05F_a": "sad", "Ses05M_c": "anger"}
    (tmp_path / "ovlabel.csv").write_text('name,openset\nv1,"[happy, relaxed]"\nv2,[]\n')
    assert score_cli.read_labels("ovmerdplus", tmp_path / "ovlabel.csv") == {"v1": ["happy", "relaxed"], "v2": []}


# ----------------------------------------------------------------------------- evaluate-module details
def test_closed_set_through_evaluate(metrics):
    result = metrics["closed_set"].compute(predictions=CLOSED_PRED, references=CLOSED_GT, label_set=CLOSED_SET)
    assert result["weighted_f1"] == pytest.approx(5 / 9) and result["accuracy"] == pytest.approx(0.5)
    info = metrics["closed_set"]._info()
    assert "weighted F1" in info.description and "AffectGPT" in info.citation


def test_ovmerd_through_evaluate(metrics, wheel_dir):
    result = metrics["ovmerd_f"].compute(
        predictions=[["happy"], ["happy"], []], references=[["happy", "sad"], ["neutral"], ["angry"]],
        emotion_wheel=str(wheel_dir),
    )
    assert result["f1"] == pytest.approx(1 / 3)


def test_metric_script_explains_missing_package(tmp_path):
    """Loaded by path where `affectverse` is not importable, a metric says how to make it importable. (Before: the
    test skipped whenever the project was installed, i.e. always under the documented install.)"""
    code = (
        "import sys\n"
        "sys.modules['affectverse'] = None  # as in an environment without the package\n"
        f"import evaluate; evaluate.load({str(ROOT / 'affectverse/scoring/metric_modules/mer_sentiment')!r})\n"
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "mer_sentiment needs the AffectVerse `affectverse` package" in proc.stderr \
        and "pip install -e <repo>" in proc.stderr, proc.stderr[-2000:]


def test_calibration_scores_on_a_hand_made_case():
    """Issue 14: ECE over 5 equal-width bins and the multi-class Brier score, computed by hand."""
    from affectverse.scoring.scores import calibration_scores

    gts = ["a", "b", "b", "b", "a"]
    probs = [{"a": 0.95, "b": 0.05},  # right, confidence 0.95 -> bin (0.8, 1.0]
             {"a": 0.85, "b": 0.15},  # wrong, 0.85 -> (0.8, 1.0]
             {"a": 0.35, "b": 0.65},  # right, 0.65 -> (0.6, 0.8]
             {"a": 0.25, "b": 0.75},  # right, 0.75 -> (0.6, 0.8]
             None]                    # a failed clip: left out
    out = calibration_scores(gts, probs, ["a", "b"], n_bins=5)
    # bin (0.8, 1]: accuracy 1/2, confidence 0.9 -> 0.4 * 2/4; bin (0.6, 0.8]: 1 vs 0.7 -> 0.3 * 2/4
    assert out["ece"] == pytest.approx(0.2 + 0.15)
    # Brier: 0.05^2*2 + 0.85^2*2 + 0.35^2*2 + 0.25^2*2, over 4 samples
    assert out["brier"] == pytest.approx((0.005 + 1.445 + 0.245 + 0.125) / 4)
    assert out["accuracy"] == 0.75 and out["n_scored"] == 4 and out["n_missing"] == 1
    perfect = calibration_scores(["a", "b"], [{"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 1.0}], ["a", "b"])
    assert perfect["ece"] == 0 and perfect["brier"] == 0
    assert calibration_scores(["a"], [{"b": 1.0}], ["a", "b"])["brier"] == 2  # sure and wrong: the worst
    with pytest.raises(ValueError, match="not in the label set"):
        calibration_scores(["c"], [{"a": 1.0}], ["a", "b"])
