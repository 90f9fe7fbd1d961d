"""affectverse.evaluation.runner across processes: two gloo ranks on the CPU give the predictions of one process, merged into
one file and scored once; a shard left by an interrupted run is merged, not recomputed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from affectverse.default.clips import generate_clips
from affectverse.evaluation import runner as run
from affectverse.inference.store import shard_files, shard_path
from modeling_affectverse import AffectVerseForConditionalGeneration
from tests.helpers import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """A saved tiny model, 5 clips, and a one-process run over 2 settings."""
    root = tmp_path_factory.mktemp("shard")
    save_tiny_model(root / "model")
    manifest = generate_clips(root / "clips", n_clips=5, seed=0, seconds=2.0, val_fraction=0.0, test_fraction=1.0)
    args = ["--model", str(root / "model"), "--manifest", str(manifest), "--split", "all", "--modalities", "avt,vt",
            "--max-new-tokens", "3", "--device", "cpu", "--imagination-clips", "0", "--batch-size", "2",
            "--num-workers", "0"]
    assert run.main([*args, "--out", str(root / "single")]) == 0
    return root, args


def predictions(out: Path) -> list[dict]:
    lines = [json.loads(line) for line in (out / run.PREDICTIONS).read_text().splitlines()]
    return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in lines
                   if "setting_id" in r and r.get("kind") != "setting"), key=lambda r: (r["setting_id"], r["name"]))


@pytest.mark.slow
def test_two_processes_give_the_predictions_of_one(single):
    root, args = single
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                           "affectverse.evaluation.runner", *args, "--out", str(root / "multi")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "(5 on process 0 of 2)" in done.stderr and "(5 on process 1 of 2)" in done.stderr
    assert predictions(root / "multi") == predictions(root / "single")
    assert not shard_files(root / "multi" / run.PREDICTIONS)  # merged and removed
    strip = lambda out: [{k: v for k, v in s.items() if k != "seconds_per_clip"}  # noqa: E731
                         for s in json.loads((out / run.SCORES).read_text())["results"]]
    assert strip(root / "multi") == strip(root / "single")  # scored once, on the merged file
    assert json.loads((root / "multi" / "run.json").read_text())["processes"] == 2


def test_a_shard_left_by_an_interrupted_run_is_merged_not_recomputed(single, monkeypatch):
    """A sharded run killed before its merge: its shard files hold the work; the next run takes them over."""
    root, args = single
    out = root / "resumed"
    out.mkdir()
    lines = (root / "single" / run.PREDICTIONS).read_text().splitlines()
    header, rest = lines[0], lines[1:]
    shard = [line for line in rest if '"kind"' in line or '"vt-k1"' not in line]  # the avt half, as rank 1 wrote it
    shard_path(out / run.PREDICTIONS, 1, 2).write_text("\n".join([header, *shard]) + "\n")
    calls = []
    original = AffectVerseForConditionalGeneration.generate

    def counting(self, *a, **kw):
        calls.append(kw["input_ids"].shape[0])
        return original(self, *a, **kw)

    monkeypatch.setattr(AffectVerseForConditionalGeneration, "generate", counting)
    assert run.main([*args, "--out", str(out)]) == 0
    assert sum(calls) == 5  # only the vt clips ran
    assert predictions(out) == predictions(root / "single") and not shard_files(out / run.PREDICTIONS)



@pytest.mark.slow
def test_predict_under_two_processes_gives_the_predictions_of_one(single, tmp_path):
    root, _ = single
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    common = ["-m", "affectverse", "predict", str(root / "model"), str(root / "clips" / "video"),
              "--max-new-tokens", "3", "--device", "cpu", "--num-workers", "0", "--batch-size", "2"]
    outs = {}
    for name, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--nproc_per_node", "2"])):
        outs[name] = tmp_path / f"{name}.jsonl"
        done = subprocess.run([sys.executable, *launcher, *common, "--out", str(outs[name])], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
    assert "5 predicted, 0 errors, 0 already" in done.stdout and "2 processes" in done.stdout

    def records(path):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in lines if "path" in r),
                      key=lambda r: r["path"])

    assert records(outs["two"]) == records(outs["one"]) and len(records(outs["one"])) == 5
    assert not shard_files(outs["two"])
