"""The miniature ablation driver (benchmarks/ablation.py): a CI-sized run, resumption, the summary's numbers."""

import json

import pytest

from benchmarks import ablation


def test_mean_std_and_verdict_follow_the_numbers():
    assert ablation.mean_std([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    assert ablation.mean_std([5.0]) == (5.0, 0.0) and ablation.mean_std([]) == (None, None)
    cell = lambda m, s: {"mean": m, "std": s, "n_seeds": 2}  # noqa: E731
    summary = {"settings": ["avt@1", "vt"], "rows": {
        "ewm": {"label": "EWM", "seeds": [0, 1], "cells": {"avt@1": cell(60, 2), "vt": cell(50, 5)}},
        "none": {"label": "None", "seeds": [0, 1], "cells": {"avt@1": cell(50, 3), "vt": cell(52, 1)}}}}
    lines = ablation.verdicts(summary)
    assert "better beyond the spread in 1 of 2 settings, worse beyond it in 0" in lines[0]
    assert "κ=1.0 +10.0 (beyond)" in lines[0] and "No Audio -2.0," not in lines[0]
    assert any("random" in line and "not run" in line for line in lines[1:])  # not run: said so


def test_weighted_f1_equals_the_scorers():
    import numpy as np

    from affectverse.scoring.scores import closed_set_scores

    rng = np.random.default_rng(0)
    labels = ["angry", "happy", "sad"]
    truth, pred = rng.integers(0, 3, 50), rng.integers(-1, 3, 50)  # -1: the answer named no label
    expected = closed_set_scores([labels[t] for t in truth], [[labels[p]] if p >= 0 else ["none"] for p in pred],
                                 labels)["weighted_f1"]
    assert ablation.weighted_f1(truth, pred) == pytest.approx(100 * expected)


@pytest.mark.slow
def test_ci_sized_ablation_runs_resumes_and_writes_the_page(tmp_path):
    """1 seed, 2 rows, 2 training steps on 12 short clips: every row x seed folder, the page and both figures."""
    out, doc = tmp_path / "study", tmp_path / "docs" / "ablation.md"
    argv = ["--out", str(out), "--doc", str(doc), "--rows", "none,ewm", "--seeds", "0", "--clips", "12",
            "--clip-seconds", "2", "--max-steps", "2", "--max-new-tokens", "4"]
    assert ablation.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    for row in ("none", "ewm"):
        assert summary["rows"][row]["seeds"] == [0]
        cells = summary["rows"][row]["cells"]
        assert set(cells) == {"avt@1", "avt@0.7", "avt@0.5", "avt@0.3", "vt", "at"}
        assert all(c["n_clips"] == 4 and c["n_seeds"] == 1 and 0 <= c["mean"] <= 100 for c in cells.values())
    assert summary["rows"]["none"]["imagination"] is None  # no imagination without an EWM
    quality = summary["rows"]["ewm"]["imagination"]
    assert quality["n_clips"] == 4 and len(quality["cosine"]) == len(quality["mse"]) == 3
    page = doc.read_text()
    assert "| EWM (full) | `table4_ewm` | 1 |" in page and "n = 4 test clips" in page
    for figure in ("ablation_kappa", "ablation_imagination"):
        assert (doc.parent / f"{figure}.png").is_file() and (doc.parent / f"{figure}.pdf").is_file()
        assert f"]({figure}.png)" in page
    # a rerun finds everything done: nothing retrained, the same numbers
    stamp = (out / "ewm" / "seed0" / "model" / "model.safetensors").stat().st_mtime_ns
    assert ablation.main(argv) == 0
    assert (out / "ewm" / "seed0" / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((out / "summary.json").read_text())["rows"] == summary["rows"]
    # notes written below the marker survive a regeneration of the page
    doc.write_text(doc.read_text() + ablation.HAND_WRITTEN + "\nmy reading\n")
    assert ablation.main(argv + ["--report-only"]) == 0
    assert doc.read_text().endswith(ablation.HAND_WRITTEN + "\nmy reading\n") and "## Set-up" in doc.read_text()
