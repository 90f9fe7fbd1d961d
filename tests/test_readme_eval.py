"""The README's evaluation commands, run as written on a folder like the one `python train.py` writes."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from affectverse.default.clips import generate_clips
from affectverse.default.tiny import tiny_config, tiny_processor
from modeling_affectverse import AffectVerseForConditionalGeneration

ROOT = Path(__file__).resolve().parents[1]
TRAIN_OUTPUT, TRAIN_DATA = "outputs/affectverse-tiny", "data/tiny_clips"  # train.py's tiny preset


def readme_commands(heading: str) -> list[list[str]]:
    """The commands of the first bash block after ``heading``, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    block = re.search(re.escape(heading) + r".*?```bash\n(.*?)```", text, flags=re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_names_folders_that_train_py_writes():
    """Before: the README evaluated ``runs/affectverse/final``, which train.py never writes."""
    text = (ROOT / "README.md").read_text()
    assert "runs/affectverse/final" not in text
    train = (ROOT / "affectverse" / "training" / "arguments.py").read_text()  # train.py's embedded default
    assert f'"--output_dir", "{TRAIN_OUTPUT}"' in train and f'TINY_CLIPS = "{TRAIN_DATA}/manifest.csv"' in train
    commands = readme_commands("On the folder `python train.py` wrote")
    assert all(TRAIN_OUTPUT in command for command in commands)
    real = readme_commands("On MER-UniBench with the model of the 8-GPU training command above")
    assert all("outputs/affectverse-7b" in " ".join(c) for c in real[:1] + real[2:])
    assert "--output_dir outputs/affectverse-7b" in text
    assert any(c[:3] == ["accelerate", "launch", "--multi_gpu"] and "-m affectverse evaluate" in " ".join(c)
               for c in real)
    assert "--modality" in real[1] and "--keep-ratio" in real[1]  # the run file holds several settings


@pytest.mark.slow
def test_readme_tiny_evaluation_commands_run_as_written(tmp_path):
    torch.manual_seed(0)
    AffectVerseForConditionalGeneration(tiny_config()).save_pretrained(tmp_path / TRAIN_OUTPUT)
    tiny_processor().save_pretrained(tmp_path / TRAIN_OUTPUT)  # what train.py's export writes (merged + processor)
    generate_clips(tmp_path / TRAIN_DATA, n_clips=12)  # train.py generates 120; fewer keep the test short
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    commands = readme_commands("On the folder `python train.py` wrote")
    commands += readme_commands("## Emotion over time, label scores, representations")
    for command in commands:
        head = [sys.executable] if command[0] == "python" else [sys.executable, "-m", "affectverse"]
        assert command[0] in ("python", "affectverse"), command
        done = subprocess.run(head + command[1:], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, (command, done.stderr[-3000:])
    scores = json.loads((tmp_path / "runs" / "tiny-eval" / "scores.json").read_text())["results"]
    assert len(scores) == 6 and (tmp_path / "runs" / "tiny-eval" / "report.md").is_file()
    lines = (tmp_path / "runs" / "tiny-preds.jsonl").read_text().splitlines()
    assert len(lines) == 2 + 12  # header, setting, one line per clip
    assert (tmp_path / "runs" / "traj.png").is_file() and (tmp_path / "runs" / "emb.safetensors").is_file()
    trajectory = [json.loads(line) for line in (tmp_path / "runs" / "traj.jsonl").read_text().splitlines()]
    assert any(r.get("label_scores") for r in trajectory)


@pytest.mark.slow
def test_readme_live_commands_run_as_written(tmp_path):
    torch.manual_seed(0)
    AffectVerseForConditionalGeneration(tiny_config()).save_pretrained(tmp_path / TRAIN_OUTPUT)
    tiny_processor().save_pretrained(tmp_path / TRAIN_OUTPUT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for command in readme_commands("## Live"):
        assert command[0] == "affectverse", command
        done = subprocess.run([sys.executable, "-m", "affectverse"] + command[1:], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (command, done.stderr[-3000:])
    for name, seconds in (("live.jsonl", 12.0), ("live-lavfi.jsonl", 10.0)):
        lines = [json.loads(line) for line in (tmp_path / "runs" / name).read_text().splitlines()]
        readings = [r for r in lines if r["type"] == "reading"]
        assert lines[0]["type"] == "header" and readings[-1]["seconds"] == seconds and lines[-1]["kind"] == "end"
    assert (tmp_path / "runs" / "live.png").is_file()
