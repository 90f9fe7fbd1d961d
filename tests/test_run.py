"""affectverse.evaluation.runner and affectverse.evaluation.report end to end: a tiny random AffectVerse on generated clips (CPU).

One module-scoped run goes through an interruption (``--max-batches 1``, then a half-written line), a resume and
a no-op rerun; the tests below inspect it. Three clips plus one broken clip, 3 modality settings x 2 keep ratios,
one batch per setting, 3 new tokens.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from affectverse.default.clips import generate_clips, write_bad_media
from affectverse.default.tiny import tiny_config
from affectverse.evaluation import report
from affectverse.evaluation import runner as run
from modeling_affectverse import AffectVerseForConditionalGeneration
from tests.helpers import SHARED, save_tiny_model

WHEEL_DIR = SHARED / "merunibench" / "emotion_wheel"
MODALITIES, KEEP_RATIOS = ("avt", "at", "vt"), ("1.0", "0.5")
N_ROWS = 4  # 3 clips + 1 broken; --batch-size 4: one batch per setting
N_SETTINGS = len(MODALITIES) * len(KEEP_RATIOS)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A saved tiny model + processor and a manifest of 3 test clips with a corrupt video as its second row."""
    root = tmp_path_factory.mktemp("run_inputs")
    save_tiny_model(root / "model")
    manifest = generate_clips(root / "clips", n_clips=3, seed=0, seconds=2.0, val_fraction=0.0, test_fraction=1.0)
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    bad = write_bad_media(root / "bad")
    rows.insert(1, {**rows[0], "video": str(bad["corrupt"]), "audio": "", "name": "broken"})
    with_broken = root / "clips" / "with_broken.csv"
    with open(with_broken, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return SimpleNamespace(model=root / "model", manifest=with_broken, labels={r["name"]: r["label"] for r in rows})


def cli_args(inputs, out, *extra) -> list[str]:
    wheel = ["--emotion-wheel", str(WHEEL_DIR)] if WHEEL_DIR.is_dir() else []
    return ["--model", str(inputs.model), "--manifest", str(inputs.manifest), "--split", "all",
            "--modalities", ",".join(MODALITIES), "--keep-ratios", ",".join(KEEP_RATIOS), "--out", str(out),
            "--batch-size", "4", "--max-new-tokens", "3", "--device", "cpu", "--imagination-clips", "2", *wheel, *extra]


def lines(path: Path) -> list[str]:
    """The prediction lines of a store (its header and setting declarations left out)."""
    return [line for line in path.read_text().splitlines() if '"setting_id"' in line and '"kind"' not in line]


@pytest.fixture(scope="module")
def finished(inputs, tmp_path_factory):
    """Run 1 stops after one batch; a half-written line is appended (a crash); run 2 resumes; run 3 is a no-op."""
    out = tmp_path_factory.mktemp("run_out")
    calls = []
    original = AffectVerseForConditionalGeneration.generate

    def counting(self, *args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AffectVerseForConditionalGeneration, "generate", counting)
        assert run.main(cli_args(inputs, out, "--max-batches", "1")) == 0
        first = lines(out / run.PREDICTIONS)
        calls_first, scored_early = list(calls), (out / run.SCORES).exists()
        with open(out / run.PREDICTIONS, "a") as fh:
            fh.write('{"setting_id": "avt-k1", "name": "clip_00002", "benchmark": "manif')  # killed mid-write
        assert run.main(cli_args(inputs, out)) == 0
        after_resume = lines(out / run.PREDICTIONS)
        calls_resume = calls[len(calls_first):]
        assert run.main(cli_args(inputs, out)) == 0
        calls_noop = calls[len(calls_first) + len(calls_resume):]
    return SimpleNamespace(out=out, first=first, after_resume=after_resume, scored_early=scored_early,
                           calls_first=calls_first,
                           calls_resume=calls_resume, calls_noop=calls_noop)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in lines(out / run.PREDICTIONS)]


# ---------------------------------------------------------------------------------------------- generation
def test_first_batch_is_written_before_the_run_stops(finished):
    assert finished.calls_first == [N_ROWS - 1]  # the broken clip never reaches generate
    assert len(finished.first) == N_ROWS
    first = [json.loads(line) for line in finished.first]
    assert {(r["modality"], r["keep_ratio"]) for r in first} == {("avt", 1.0)}
    assert not finished.scored_early  # stopped early: nothing scored yet


def test_resume_recomputes_nothing(finished):
    assert len(finished.calls_resume) == N_SETTINGS - 1  # every setting but the one already done
    assert finished.after_resume[:N_ROWS] == finished.first  # earlier lines untouched (same seconds, answers)
    assert len(finished.after_resume) == N_ROWS * N_SETTINGS  # the half-written line was dropped
    assert finished.calls_noop == []  # a third run only rescored
    keys = {(r["modality"], r["keep_ratio"], r["name"]) for r in records(finished.out)}
    assert len(keys) == N_ROWS * N_SETTINGS


def test_prediction_records(finished):
    rows = records(finished.out)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == (N_ROWS - 1) * N_SETTINGS
    for r in ok:
        assert {"name", "benchmark", "modality", "keep_ratio", "answer", "labels", "seconds"} <= set(r)
        assert isinstance(r["answer"], str) and isinstance(r["labels"], list) and r["seconds"] > 0
        assert r["setting"] == run.MODALITIES[r["modality"]].name


def test_broken_clip_is_recorded_with_its_reason(finished):
    broken = [r for r in records(finished.out) if r["name"] == "broken"]
    assert len(broken) == N_SETTINGS
    for r in broken:
        assert r["status"] == "error" and "corrupt.mp4" in r["reason"] and r["labels"] == []
        assert ("video" if r["modality"] != "at" else "audio") in r["reason"]  # A+T reads only the track
    scores = json.loads((finished.out / run.SCORES).read_text())["results"]
    assert len(scores) == N_SETTINGS and all(s["n"] == N_ROWS and s["n_errors"] == 1 for s in scores)


@pytest.mark.parametrize("modality, video, audio", [
    ("avt", "clip.mp4", "clip.wav"), ("at", "", "clip.wav"), ("vt", "clip.mp4", None)])
def test_modality_drops_the_input(modality, video, audio):
    row = run.modality_row({"name": "c", "video": "clip.mp4", "audio": "clip.wav"}, run.MODALITIES[modality])
    assert (row["video"], row["audio"]) == (video, audio)
    no_wav = run.modality_row({"name": "c", "video": "clip.mp4", "audio": ""}, run.MODALITIES["at"])
    assert (no_wav["video"], no_wav["audio"]) == ("", "clip.mp4")  # the video file's own track


def test_rerun_with_another_model_or_settings_stops(finished, inputs, tmp_path):
    """Before: "N already", the old predictions reused, and run.json rewritten with the new model's name."""
    out = tmp_path / "copy"
    shutil.copytree(finished.out, out)
    other = tmp_path / "other_model"
    shutil.copytree(inputs.model, other)
    torch.manual_seed(1)
    AffectVerseForConditionalGeneration(tiny_config()).save_pretrained(other)  # retrained: other weights
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    args = cli_args(inputs, out)
    with pytest.raises(SystemExit, match=r"model\.fingerprint: '[0-9a-f]+' in the file"):
        run.main([*args, "--model", str(other)])
    with pytest.raises(SystemExit, match=r"generation\.max_new_tokens: 3 in the file, 2 now"):
        run.main([*args, "--max-new-tokens", "2"])
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    with pytest.MonkeyPatch.context() as mp:  # --new-run: a fresh folder beside it (generation itself not needed)
        mp.setattr(run, "predict_to_store", lambda *a, **k: (False, None, 0))
        assert run.main([*args, "--max-new-tokens", "2", "--new-run"]) == 0
    assert (tmp_path / "copy-2" / "run.json").is_file()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


# ---------------------------------------------------------------------------------------------- scoring
def test_closed_set_scores_on_the_clip_labels(finished, inputs, tmp_path):
    """Answers replaced by the ground truth in a copy of the run: a rerun rescores without generating."""
    out = tmp_path / "edited"
    shutil.copytree(finished.out, out)
    edited = []
    for r in records(out):
        if r["status"] == "ok" and r["modality"] == "avt" and r["keep_ratio"] == 1.0:
            r["labels"] = [inputs.labels[r["name"]]]  # the manifest's label word
        edited.append(json.dumps(r))
    path = out / run.PREDICTIONS
    head = [line for line in path.read_text().splitlines() if line not in set(lines(path))]  # header, settings
    path.write_text("\n".join(head + edited) + "\n")
    assert run.main(cli_args(inputs, out)) == 0
    scores = {(s["modality"], s["keep_ratio"]): s for s in json.loads((out / run.SCORES).read_text())["results"]}
    full = scores[("avt", 1.0)]
    assert full["label_set"] == ["angry", "happy", "sad"]
    assert full["closed_set_accuracy"] == 75.0  # 3 right, the broken clip counts as wrong
    assert full["closed_set_score"] == pytest.approx(83.33)  # weighted F1: happy 2/3 (support 2), sad 1, angry 1
    low, high = full["closed_set_score_ci"]  # 95% bootstrap interval over the 4 clips (the robustness figure's bars)
    assert low <= full["closed_set_score"] <= high and low < high <= 100
    assert full["main_score"] == (75.0 if WHEEL_DIR.is_dir() else None)  # HIT: 3 of 4 hit in every wheel
    assert 0 <= scores[("vt", 0.5)]["closed_set_accuracy"] <= 100


# ---------------------------------------------------------------------------------------------- report
def test_tables_and_plots(finished):
    out = finished.out
    for stem in ("table1", "table2", "table1_closed_set", "table2_closed_set"):
        assert (out / f"{stem}.md").read_text().startswith("| ")
    with open(out / "table1.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0][:2] == ["Setting", "MER2023"] and table[0][10:] == ["Mean", "manifest"]
    assert [r[0] for r in table[1:]] == ["A+T", "V+T", "A+V+T"]
    settings = ["Full", "No Audio", "No Video"]
    for stem in ("table2", "table2_closed_set"):
        with open(out / f"{stem}.csv", newline="") as fh:
            table = list(csv.reader(fh))
        assert table[0] == ["Dataset", "Setting", "1.0", "0.5", "Avg."]
        # closed-set rows always; the main score (HIT) only with the emotion wheel (a user's clone has none)
        has_rows = stem == "table2_closed_set" or WHEEL_DIR.is_dir()
        assert [r[1] for r in table[1:]] == (settings if has_rows else [])
        said = "needs --emotion-wheel DIR" in (out / f"{stem}.md").read_text()
        assert said == (stem == "table2" and not WHEEL_DIR.is_dir())
    assert ("needs --emotion-wheel DIR" in (out / "report.md").read_text()) == (not WHEEL_DIR.is_dir())
    for png in ("robustness.png", "imagination.png", "belief_attention.png"):
        with Image.open(out / png) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 100
    imagination = json.loads((out / run.IMAGINATION).read_text())
    assert len(imagination["cosine_per_step"]) == tiny_config().rollout_steps
    attention = json.loads((out / run.ATTENTION).read_text())
    cfg = tiny_config()
    assert len(attention["attention"]) == 2 * cfg.num_belief_queries
    assert len(attention["attention"][0]) == 2 * cfg.rollout_steps * cfg.future_queries
    assert sum(attention["attention"][0]) == pytest.approx(1.0, abs=1e-4)


def test_report_cli_rebuilds_from_the_run_folder(finished, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(finished.out, out, ignore=shutil.ignore_patterns("*.png", "table*"))
    assert report.main(["--run", str(out)]) == 0
    assert (out / "table2.md").exists() and (out / "belief_attention.png").exists()
    assert "report.md" in capsys.readouterr().out


# Published A+V+T rows of Table 1: the MER-UniBench Mean is their plain mean.
AFFECTVERSE = dict(mer2023=80.92, mer2024=82.39, meld=58.47, iemocap=63.87, mosi=84.45, mosei=86.60, sims=86.60,
                   simsv2=86.30, ovmerdplus=66.50)
AFFECTGPT = dict(mer2023=78.54, mer2024=78.80, meld=55.65, iemocap=60.54, mosi=81.30, mosei=80.90, sims=88.49,
                 simsv2=86.18, ovmerdplus=62.52)


def test_unibench_mean_arithmetic():
    assert report.unibench_mean(AFFECTVERSE) == (77.34, [])
    assert report.unibench_mean(AFFECTGPT) == (74.77, [])
    partial = {**{k: v for k, v in AFFECTGPT.items() if k not in ("mosei", "ovmerdplus")}, "manifest": 0.0}
    mean, missing = report.unibench_mean(partial)
    assert missing == ["mosei", "ovmerdplus"] and mean == round(sum(partial.values()) / 7, 2)
    assert report.unibench_mean({}) == (None, list(report.UNIBENCH))


def test_table1_names_missing_benchmarks():
    results = [{"benchmark": b, "task": "emotion", "modality": "avt", "setting": "A+V+T", "ablation": "Full",
                "keep_ratio": 1.0, "main_score": v, "closed_set_score": None}
               for b, v in AFFECTVERSE.items() if b != "meld"]
    header, rows, note = report.table1(results)
    assert rows[0][header.index("Mean")] == f"{round((sum(AFFECTVERSE.values()) - 58.47) / 8, 2):.2f}"
    assert rows[0][header.index("MELD")] == report.MISSING and "missing: MELD." in note


def test_label_scores_and_calibration_per_keep_ratio(finished):
    """Issue 14: closed-set records carry label scores; scores.json and the report give ECE and Brier per kappa."""
    ok = [r for r in records(finished.out) if r["status"] == "ok"]
    for r in ok:
        assert set(r["label_scores"]) == {"angry", "happy", "sad"} and r["label"] in r["label_scores"]
        assert sum(r["label_scores"].values()) == pytest.approx(1.0, abs=1e-4)
    results = json.loads((finished.out / run.SCORES).read_text())["results"]
    assert {(s["modality"], s["keep_ratio"]) for s in results if s.get("ece") is not None} == {
        (m, float(k)) for m in MODALITIES for k in KEEP_RATIOS}
    for s in results:
        assert 0 <= s["ece"] <= 1 and 0 <= s["brier"] <= 2 and s["n_calibrated"] == N_ROWS - 1
    table = (finished.out / "calibration.md").read_text()
    assert table.startswith("| Benchmark | Setting | 0.5 | 1.0 |") and "Calibration" in (
        finished.out / "report.md").read_text()
