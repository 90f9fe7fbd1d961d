"""train.py: the Trainer's extra logging, gradient accumulation, LoRA targets, resuming, input checks and export.

Fast tests train a tiny random AffectVerse on hand-made batches (tests/helpers.py, no media decoding); the slow ones
run ``python train.py`` end to end and two CPU processes through ``accelerate launch``.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from affectverse.training import arguments, preflight, run_folder
from affectverse.training import data as training_data
from affectverse.training import export as training_export
from affectverse.training import model as training_model
from affectverse.training import run as training_run
from affectverse.training import trainer as training_trainer
from modeling_affectverse import AffectVerseForConditionalGeneration
from tests.helpers import StopAt, build_batch, cpu_run_args, save_tiny_model, tiny_model, trainable

ROOT = Path(__file__).resolve().parents[1]
SPECS = [(2, 60), (1, 40), (2, 0), (0, 50), (2, 80), (1, 30), (2, 50), (0, 60)]  # (video grids, audio frames)


class SpecDataset(torch.utils.data.Dataset):
    """Rows naming a hand-made sample; the collator builds the batch with tests.helpers.build_batch."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"spec": SPECS[i % len(SPECS)], "seed": i}


def collator(config):
    return lambda rows: build_batch(config, [r["spec"] for r in rows], seed=rows[0]["seed"])


def tiny_peft(seed: int = 0, **overrides):
    model = tiny_model(seed, **overrides)
    return model.config, training_model.add_lora(model, arguments.ModelArguments())


def training_args(out, **kwargs):
    defaults = dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, dataloader_num_workers=0,
                    learning_rate=1e-3, warmup_steps=0, include_num_input_tokens_seen=False)
    return cpu_run_args(arguments.AffectVerseTrainingArguments, out, **{**defaults, **kwargs})


class RecordingTrainer(training_trainer.AffectVerseTrainer):
    """Keeps every training micro-batch's (loss, lm_loss, imagination_loss) as the model returned them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.micro = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if model.training:
            self.micro.append((outputs.loss.item(), outputs.lm_loss.item(), outputs.imagination_loss.item()))
        return (loss, outputs) if return_outputs else loss


def train_logs(trainer):
    return [h for h in trainer.state.log_history if "loss" in h]


# ---------------------------------------------------------------------------------------------- logging, GA
def test_logs_both_losses_cosine_and_averages_accumulated_micro_batches(tmp_path):
    config, model = tiny_peft()
    args = training_args(tmp_path, gradient_accumulation_steps=2, max_steps=2)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=SpecDataset(8), data_collator=collator(config))
    trainer.train()
    logs = train_logs(trainer)
    assert len(logs) == 2 and len(trainer.micro) == 4
    for step, log in enumerate(logs):
        micro = torch.tensor(trainer.micro[2 * step: 2 * step + 2])  # (2 micro-batches, 3)
        mean = micro.mean(0)
        assert log["loss"] == pytest.approx(mean[0].item(), rel=1e-5)  # the mean, not the sum
        assert log["lm_loss"] == pytest.approx(mean[1].item(), rel=1e-5)
        assert log["imagination_loss"] == pytest.approx(mean[2].item(), rel=1e-5)
        assert log["loss"] == pytest.approx(log["lm_loss"] + config.imagination_loss_weight * log["imagination_loss"],
                                            rel=1e-5)
        cosines = [log[f"imagination_cosine_s{s}"] for s in range(1, config.rollout_steps + 1)]
        assert all(-1 <= c <= 1 for c in cosines)
        assert f"imagination_cosine_s{config.rollout_steps + 1}" not in log


def test_eval_reports_loss_without_the_extra_outputs(tmp_path):
    config, model = tiny_peft()
    seen = []

    def compute_metrics(pred):
        seen.append(pred)
        return {}

    trainer = training_trainer.AffectVerseTrainer(model=model, args=training_args(tmp_path), train_dataset=SpecDataset(4),
                                       eval_dataset=SpecDataset(4), data_collator=collator(config),
                                       compute_metrics=compute_metrics)
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and not any("imagination" in k or "lm_loss" in k for k in metrics)
    predictions = seen[0].predictions
    assert isinstance(predictions, np.ndarray) and predictions.ndim == 3  # the logits alone reach compute_metrics


# ---------------------------------------------------------------------------------------------------- LoRA
LLM_ATTENTION = {f"model.language_model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkvo"}


@pytest.mark.parametrize("targets, wraps_audio", [
    (arguments.LORA_TARGET, False),
    (["q_proj", "k_proj", "v_proj", "o_proj"], True),  # why train.py uses a regex
])
def test_lora_wraps_only_the_language_model_attention(targets, wraps_audio):
    model = tiny_model()
    args = arguments.ModelArguments()
    args.lora_target_modules = targets
    peft_model = training_model.add_lora(model, args)
    wrapped = {name.removeprefix("base_model.model.") for name, module in peft_model.named_modules()
               if hasattr(module, "lora_A")}
    if wraps_audio:
        assert any("audio_tower" in name for name in wrapped)
        return
    assert wrapped == LLM_ATTENTION
    for name, param in peft_model.named_parameters():
        is_adapter = ".lora_A." in name or ".lora_B." in name
        is_ewm = ".ewm.modules_to_save." in name
        assert param.requires_grad == (is_adapter or is_ewm), name
        if is_adapter:
            assert ".language_model.layers." in name and ".self_attn." in name
    assert sum(p.numel() for n, p in peft_model.named_parameters() if ".ewm.modules_to_save." in n) == \
        sum(p.numel() for p in model.ewm.original_module.parameters())


# ----------------------------------------------------------------------------------------------- resuming
def _run(out, stop_at=None, resume=None, **kwargs):
    config, model = tiny_peft(seed=0)
    args = training_args(out, **{"gradient_accumulation_steps": 2, "max_steps": 5, "save_strategy": "steps",
                                 "save_steps": 3, **kwargs})
    trainer = training_trainer.AffectVerseTrainer(model=model, args=args, train_dataset=SpecDataset(12),
                                       data_collator=collator(config),
                                       callbacks=[StopAt(stop_at)] if stop_at else None)
    trainer.train_output = trainer.train(resume_from_checkpoint=resume)
    keys = ("loss", "lm_loss", "imagination_loss", "imagination_cosine_s1")
    return [[h[k] for k in keys] for h in train_logs(trainer)], trainer


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path):
    # 12 samples / 2 per batch / 2 accumulation = 3 steps per epoch: the checkpoint at step 3 ends epoch 1 and
    # steps 4-5 reshuffle, sample kappa and modality dropout from the restored RNG.
    full, _ = _run(tmp_path / "full")
    stopped, _ = _run(tmp_path / "split", stop_at=3)
    checkpoint = tmp_path / "split" / "checkpoint-3"
    assert len(stopped) == 3 and checkpoint.is_dir()
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert (checkpoint / name).is_file(), name
    with safe_open(checkpoint / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any(".ewm." in k for k in keys) and any("lora_A" in k for k in keys)  # EWM weights are in the checkpoint
    resumed, _ = _run(tmp_path / "split", resume=str(checkpoint))
    assert torch.allclose(torch.tensor(resumed), torch.tensor(full), atol=1e-5), (resumed, full)


def test_resume_skips_checkpoints_left_incomplete_and_reports_the_whole_runs_train_loss(tmp_path, caplog):
    # Logging every 2 steps, saving every 3: the checkpoint step 3 is logged too (LogAtCheckpoints), so the resumed
    # run knows steps 1-3 and its train_loss is the whole run's, not only that of steps 4-5.
    full, full_trainer = _run(tmp_path / "full", logging_steps=2)
    _run(tmp_path / "split", stop_at=3, logging_steps=2)
    split = tmp_path / "split"
    weights = (split / "checkpoint-3" / "adapter_model.safetensors").read_bytes()
    killed = split / "checkpoint-4"  # kill -9 while its weights were written: half a file, nothing else
    killed.mkdir()
    (killed / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    cut = split / "checkpoint-5"  # killed while trainer_state.json was written, everything else there
    shutil.copytree(split / "checkpoint-3", cut)
    (cut / "trainer_state.json").write_text((cut / "trainer_state.json").read_text()[:40])
    with caplog.at_level(logging.WARNING, logger="train"):
        resume = run_folder.last_complete_checkpoint(split)
    assert resume == str(split / "checkpoint-3")
    assert "checkpoint-5 is incomplete (trainer_state.json is not valid JSON" in caplog.text
    assert "checkpoint-4 is incomplete (no optimizer" in caplog.text and "truncated" in caplog.text
    resumed, trainer = _run(split, resume=resume, logging_steps=2)
    assert torch.allclose(torch.tensor(resumed), torch.tensor(full), atol=1e-5), (resumed, full)
    expected, got = trainable(full_trainer.model), trainable(trainer.model)
    assert all(torch.allclose(expected[n], got[n], atol=1e-5) for n in expected)  # identical final weights
    assert (killed / "adapter_model.safetensors").stat().st_size == len(weights) // 2  # left alone
    whole = training_trainer.whole_run_train_loss(trainer.state.log_history, trainer.train_output.training_loss, 3, 5)
    assert whole == pytest.approx(full_trainer.train_output.training_loss, rel=1e-5)
    assert trainer.train_output.training_loss != pytest.approx(whole, rel=1e-3)  # Trainer's own: steps 4-5 only


@pytest.mark.parametrize("target, error", [
    ("torch.save", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4054")),
    ("peft.peft_model.safe_save_file", OSError(errno.ENOSPC, "No space left on device")),
])
def test_a_checkpoint_save_on_a_full_disk_names_the_folder_and_the_free_space(tmp_path, monkeypatch, target, error):
    config, model = tiny_peft()
    args = training_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer = training_trainer.AffectVerseTrainer(model=model, args=args, train_dataset=SpecDataset(4),
                                       data_collator=collator(config))

    def full_disk(*args, **kwargs):
        raise error

    monkeypatch.setattr(target, full_disk)
    message = rf"saving checkpoint {tmp_path / 'checkpoint-2'}: no space left on the device \(\d+\.\d\d GiB free"
    with pytest.raises(OSError, match=message) as caught:
        trainer.train()
    assert caught.value.errno == errno.ENOSPC
    assert run_folder.last_complete_checkpoint(tmp_path) is None  # the half-written checkpoint is never resumed


def test_a_named_checkpoint_that_is_incomplete_is_refused(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    args = training_run.parse_args(["--output_dir", str(tmp_path / "run"), "--use_cpu", "true",
                             "--resume_from_checkpoint", str(tmp_path / "checkpoint-2")])
    with pytest.raises(ValueError, match="checkpoint-2 cannot be resumed: no weights"):
        run_folder.check_output_dir(args[2], arguments.run_record(*args))


def test_whole_run_train_loss_weights_logged_intervals_by_their_steps():
    history = [{"loss": 4.0, "step": 2}, {"loss": 1.0, "step": 3}, {"eval_loss": 9.0, "step": 3},
               {"loss": 7.0, "step": 5}]  # step 5 is after the checkpoint at 3: this call's, not counted twice
    assert training_trainer.whole_run_train_loss(history, 2.0, 3, 6) == pytest.approx((4 * 2 + 1 + 2 * 3) / 6)
    assert training_trainer.whole_run_train_loss(history, 2.0, 0, 4) == pytest.approx(2.0)  # not resumed: Trainer's value


# -------------------------------------------------------------------------------------------- input checks
def _manifest(folder: Path, rows) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "v.mp4").write_bytes(b"x")
    lines = ["video,label,split"] + [f"v.mp4,{label},{split}" for label, split in rows]
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    return folder / "m.csv"


def _data_args(**kwargs):
    args = arguments.DataArguments()
    for k, v in kwargs.items():
        setattr(args, k, v)
    return args


@pytest.mark.parametrize("rows, kwargs, message", [
    ([("happy", "train"), ("sad", "train"), ("joyful", "test")], {}, "'joyful'"),  # not in the train labels
    ([("happy", "train"), ("sad", "test")], {"label_set": "happy,angry"}, "'sad'"),  # not in the declared set
    ([("happy", "train"), ("sad", "val")], {}, "split 'test' is empty"),
    ([("happy", "val"), ("sad", "test")], {}, "split 'train' is empty"),
])
def test_bad_data_is_refused(tmp_path, rows, kwargs, message):
    manifest = _manifest(tmp_path, rows)
    with pytest.raises(ValueError, match=message):
        training_data.load_data(_data_args(manifest=str(manifest), **kwargs))


def test_closed_set_benchmarks_use_their_own_label_set():
    assert training_data.closed_label_set("meld", _data_args(), {"happy"}) == \
        ("anger", "joy", "sadness", "neutral", "disgust", "fear", "surprise")
    assert training_data.closed_label_set("manifest", _data_args(), {"b", "a"}) == ("a", "b")


def test_no_data_is_refused():
    with pytest.raises(ValueError, match="no data"):
        training_data.load_split(_data_args(), "train")
    with pytest.raises(ValueError, match="--data_root"):
        training_data.load_split(_data_args(benchmarks="meld"), "train")


@pytest.mark.parametrize("config, message", [
    ({"model_type": "llama"}, "'llama' checkpoint"),
    (None, "no config.json in this folder"),
])
def test_a_checkpoint_that_is_not_qwen2_5_omni_is_refused(tmp_path, config, message):
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        training_model.check_checkpoint(str(tmp_path))


@pytest.mark.parametrize("model_type", ["qwen2_5_omni", "qwen2_5_omni_thinker", "affectverse"])
def test_qwen2_5_omni_checkpoints_are_accepted(tmp_path, model_type):
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    save_file({"w": torch.zeros(3)}, tmp_path / "model.safetensors")
    assert training_model.check_checkpoint(str(tmp_path)) == model_type


@pytest.mark.parametrize("text, message", [
    ("rollout_step=2", "unknown AffectVerseConfig field 'rollout_step'"),
    ("rollout_steps", "not key=value"),
    ("rollout_steps=two", "not a int"),
    ("injection=sideways", "injection='sideways'"),
])
def test_bad_ewm_overrides_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        arguments.parse_overrides(text)


def test_ewm_overrides_are_parsed():
    assert arguments.parse_overrides("rollout_steps=2, injection=single,imagination_loss_weight=1,temporal_split=false") \
        == {"rollout_steps": 2, "injection": "single", "imagination_loss_weight": 1.0, "temporal_split": False}


def _complete_checkpoint(folder: Path, step: int = 7):
    """A folder with every part run_folder.CHECKPOINT_PARTS asks for (contents are not loaded by the check)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, folder / "adapter_model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (folder / name).write_bytes(b"x")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))


def test_the_newest_complete_checkpoint_is_resumed_in_step_order(tmp_path, caplog):
    """Steps order the checkpoints (checkpoint-10 after checkpoint-9); the newest complete one is taken and every
    newer, incomplete one is named and left in place."""
    for step in (2, 9, 10):
        _complete_checkpoint(tmp_path / f"checkpoint-{step}", step)
    (tmp_path / "checkpoint-11").mkdir()  # a save cut short before its first file
    (tmp_path / "checkpoint-last").mkdir()  # not a step: not a checkpoint
    assert [p.name for p in run_folder.checkpoints(tmp_path)] == [f"checkpoint-{s}" for s in (2, 9, 10, 11)]
    with caplog.at_level(logging.WARNING, logger="train"):
        assert run_folder.last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert "checkpoint-11 is incomplete" in caplog.text and "checkpoint-9" not in caplog.text
    assert (tmp_path / "checkpoint-11").is_dir()


@pytest.mark.parametrize("missing", ["adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                                     "trainer_state.json"])
def test_a_checkpoint_missing_any_part_is_not_resumed(tmp_path, missing):
    """Weights, optimizer, scheduler, RNG state (kappa and dropout replay from it) and trainer state: without any
    of them a resume would not continue the same run."""
    _complete_checkpoint(tmp_path / "checkpoint-3", 3)
    _complete_checkpoint(tmp_path / "checkpoint-6", 6)
    (tmp_path / "checkpoint-6" / missing).unlink()
    assert run_folder.checkpoint_problems(tmp_path / "checkpoint-3") == []
    assert run_folder.checkpoint_problems(tmp_path / "checkpoint-6")
    assert run_folder.last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")


def test_output_dir_holding_another_run_is_refused_and_the_same_run_resumes(tmp_path):
    args = training_run.parse_args(["--output_dir", str(tmp_path), "--use_cpu", "true"])
    record = arguments.run_record(*args)
    assert run_folder.check_output_dir(args[2], record) is None  # empty: a fresh start
    (tmp_path / "notes.txt").write_text("someone else's")
    with pytest.raises(ValueError, match="holds no run_args.json"):
        run_folder.check_output_dir(args[2], record)
    (tmp_path / "run_args.json").write_text(json.dumps(record))
    assert run_folder.check_output_dir(args[2], record) is None  # the same run, no checkpoint yet
    _complete_checkpoint(tmp_path / "checkpoint-7")
    assert run_folder.check_output_dir(args[2], record) == str(tmp_path / "checkpoint-7")  # auto-resume
    other = training_run.parse_args(["--output_dir", str(tmp_path), "--use_cpu", "true", "--learning_rate", "1e-4"])
    with pytest.raises(ValueError, match="different run.*learning_rate"):
        run_folder.check_output_dir(other[2], arguments.run_record(*other))
    other[2].overwrite_output_dir = True
    assert run_folder.check_output_dir(other[2], arguments.run_record(*other)) is None


def test_a_run_recorded_before_the_audio_layout_options_resumes_only_in_the_layout_it_trained(tmp_path):
    """Older run_args.json files lack audio_layout/audio_features: those runs trained separate, whole-clip."""
    args = training_run.parse_args(["--output_dir", str(tmp_path), "--use_cpu", "true"])
    old = arguments.run_record(*args)
    for key in ("audio_layout", "audio_features"):
        del old["data"][key]
    (tmp_path / "run_args.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="audio_layout: 'separate' -> 'interleaved'"):
        run_folder.check_output_dir(args[2], arguments.run_record(*args))
    same = training_run.parse_args(["--output_dir", str(tmp_path), "--use_cpu", "true", "--audio_layout", "separate",
                                    "--audio_features", "clip"])
    assert run_folder.check_output_dir(same[2], arguments.run_record(*same)) is None


def test_main_refuses_bad_labels_before_loading_a_model(tmp_path, monkeypatch):
    manifest = _manifest(tmp_path / "data", [("happy", "train"), ("joyful", "test")])
    monkeypatch.setattr(training_run, "load_model", lambda *a: pytest.fail("the model was loaded before the data check"))
    with pytest.raises(ValueError, match="unknown labels"):
        training_run.main(["--manifest", str(manifest), "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"])


# ------------------------------------------------------------------------------- pre-flight check, bad samples
@pytest.fixture(scope="module")
def mixed_clips(tmp_path_factory):
    """A manifest of 12 generated clips plus bad ones: a 0-byte, a truncated, a text file named .mp4, an audio-less
    video (its audio is the video's track), a 100k-character subtitle in train, a corrupt clip in test."""
    from affectverse.default.clips import generate_clips, write_bad_media

    folder = tmp_path_factory.mktemp("mixed")
    manifest = generate_clips(folder, n_clips=12, seed=0)
    bad = write_bad_media(folder / "bad")
    (folder / "bad" / "text.mp4").write_text("1\n00:00:01,000 --> 00:00:02,000\nnot a video\n")
    rows = list(csv.DictReader(manifest.open()))
    extra = [("empty.mp4", "", "train"), ("truncated.mp4", "", "train"), ("text.mp4", "", "train"),
             ("no_audio.mp4", "", "train"), ("good.mp4", "word " * 20_000, "train"), ("corrupt.mp4", "", "test")]
    for i, (name, subtitle, split) in enumerate(extra):
        rows.append({"video": f"bad/{name}", "audio": "", "subtitle": subtitle, "label": "happy", "split": split,
                     "name": f"bad_{i}_{Path(name).stem}", "onset": "baseline"})
    path = folder / "mixed.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


TINY_RUN = ["--per_device_train_batch_size", "1", "--per_device_eval_batch_size", "1", "--max_steps", "9",
            "--logging_steps", "3", "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "9",
            "--generation_eval_samples", "2", "--generation_max_new_tokens", "2", "--use_cpu", "true",
            "--disable_tqdm", "true"]


def test_bad_samples_stop_the_run_before_a_model_loads_or_leave_every_split(mixed_clips, tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = ["--manifest", str(mixed_clips), "--output_dir", str(out)] + TINY_RUN
    real_load_model = training_model.load_model
    monkeypatch.setattr(training_run, "load_model", lambda *a: pytest.fail("a model was loaded before the pre-flight check"))
    with pytest.raises(ValueError, match="pre-flight check: 6 bad samples") as caught:
        training_run.main(argv)
    message = str(caught.value)
    for file, reason in [("empty.mp4", "empty file (0 bytes)"), ("truncated.mp4", "unreadable, truncated or corrupt"),
                         ("text.mp4", "no video stream"), ("no_audio.mp4", "no audio track"),  # text: read as srt
                         ("subtitle", "text too long"), ("corrupt.mp4", "unreadable, truncated or corrupt")]:
        assert f"{file}: {reason}" in message, (file, message)

    # --skip_bad_samples in the same folder (the stopped check left only its cache there): with one sample per batch,
    # all 9 good training clips, the evaluation and the generation accuracy run; nothing bad reaches a batch.
    monkeypatch.setattr(training_run, "load_model", real_load_model)
    results = training_run.main(argv + ["--skip_bad_samples"])
    recorded = [json.loads(line) for line in (out / "bad_samples.jsonl").read_text().splitlines()]
    assert [(r["split"], Path(r["file"]).name) for r in recorded] == [
        ("train", "empty.mp4"), ("train", "truncated.mp4"), ("train", "text.mp4"), ("train", "no_audio.mp4"),
        ("train", "subtitle"), ("eval", "corrupt.mp4")]
    saved = json.loads((out / "results.json").read_text())
    assert saved["bad_samples"] == 6 and saved["generation"]["n"] == 2 and saved["eval"]["eval_loss"] > 0
    assert saved["train"]["train_loss"] == pytest.approx(results["train"]["train_loss"])

    # The model card is true to this run.
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "base_model" not in front and "tiny-random" in front
    assert "random tiny AffectVerse" in card and "not Qwen2.5-Omni-7B" in card and f"manifest {mixed_clips}" in card
    assert f"eval loss {saved['eval']['eval_loss']:.4f}" in card
    assert f"accuracy on 2 held-out samples: {saved['generation']['accuracy']:.3f}" in card
    assert f"transformers=={transformers_version()}" in card and "trust_remote_code=True" in card
    assert "@misc{zhao2026affectverse" in card and "eprint        = {2605.19950}" in card
    assert "AffectVerse: Emotional World Models for Multimodal Affective Computing" in card

    # Relaunched, the finished run resumes without probing a clip again; a stage failing after training still leaves
    # results.json, with the error, and the run says which stage failed.
    monkeypatch.setattr(preflight, "probe", lambda *a: pytest.fail("probed again: the cache was not used"))
    monkeypatch.setattr(training_run, "generation_accuracy", lambda *a: (_ for _ in ()).throw(ValueError("clip.mp4: bad")))
    (out / "results.json").unlink()
    with pytest.raises(RuntimeError, match="generation accuracy failed after training"):
        training_run.main(argv + ["--skip_bad_samples"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["errors"] == {"generation accuracy": "ValueError: clip.mp4: bad"} and "eval_loss" in saved["eval"]


def transformers_version():
    from importlib.metadata import version

    return version("transformers")


def test_an_unwritable_output_folder_is_refused_before_the_data_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(training_data, "load_data",
                        lambda *a: pytest.fail("the data was loaded before the output check"))
    (tmp_path / "file").write_text("a file where a folder should be")
    with pytest.raises(ValueError, match=r"--output_dir .*file/run: cannot write there"):
        training_run.main(["--output_dir", str(tmp_path / "file" / "run"), "--use_cpu", "true"])
    if os.geteuid() != 0:  # root writes into read-only folders
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(ValueError, match="ro: cannot write there"):
            training_run.main(["--output_dir", str(tmp_path / "ro"), "--use_cpu", "true"])


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """An AffectVerse folder as train.py exports it (config with auto_map, code files, processor, tokenizer)."""
    folder = tmp_path_factory.mktemp("saved")
    save_tiny_model(folder)
    return folder


def _copy_without(folder: Path, dest: Path, *names) -> Path:
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns(*names))
    return dest


@pytest.mark.parametrize("damage, message", [
    ("truncate", r"model.safetensors: truncated: \d+ bytes, its header describes \d+"),
    ("bin", r"only pickle weights \(pytorch_model.bin\), which are refused"),
    ("index", r"model.safetensors.index.json names shards that are missing: model-00002-of-00002.safetensors"),
])
def test_bad_weight_files_are_named_before_anything_loads(saved_tiny, tmp_path, damage, message):
    folder = _copy_without(saved_tiny, tmp_path / "model")
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif damage == "bin":
        weights.rename(folder / "pytorch_model.bin")
    else:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ValueError, match=message):
        training_model.check_checkpoint(str(folder))


def test_missing_tokenizer_files_are_named(saved_tiny, tmp_path):
    folder = _copy_without(saved_tiny, tmp_path / "model", "tokenizer.json")
    args = arguments.ModelArguments(model_name_or_path=str(folder))
    with pytest.raises(ValueError, match=r"no processor files for tokenizer \(tokenizer.json or vocab.json \+ merges"):
        training_model.load_processor(args, arguments.DataArguments(), training_model.load_config(args))


def test_an_affectverse_folder_loads_with_the_projects_classes_without_a_prompt(saved_tiny, tmp_path, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked whether to run the folder's code"))
    args = arguments.ModelArguments(model_name_or_path=str(saved_tiny))
    model, processor = training_model.load_model(args, arguments.DataArguments(), training_args(tmp_path))
    assert type(model).__module__ == "modeling_affectverse"  # not transformers_modules.*: no code of the folder ran
    assert type(processor).__module__ == "processing_affectverse"
    assert type(processor.tokenizer).__module__.startswith("transformers.")
    assert args.trust_remote_code is False and "trust_remote_code" not in arguments.run_record(
        args, arguments.DataArguments(), training_args(tmp_path))["model"]  # a flag, default off, not part of the run


def test_the_model_card_of_a_real_run_names_its_base_and_data(saved_tiny, tmp_path):
    from affectverse import hub

    base = tmp_path / "Qwen2.5-Omni-7B"
    base.mkdir()
    assert training_export.card_base_model(arguments.ModelArguments(model_name_or_path=str(base))) == "Qwen/Qwen2.5-Omni-7B"
    assert training_export.card_base_model(arguments.ModelArguments(model_name_or_path=str(saved_tiny))) is None  # a local folder
    assert training_export.card_base_model(arguments.ModelArguments(model_name_or_path="org/model")) == "org/model"  # a Hub id
    assert training_export.card_base_model(arguments.ModelArguments()) is None  # the tiny preset
    data_args = _data_args(benchmarks="mer2023,meld", data_root="/data/mer", manifest="")
    state = type("State", (), {"global_step": 120, "epoch": 3.0})()
    results = {"train": {"train_loss": 1.25}, "eval": {"eval_loss": 0.5},
               "generation": {"accuracy": 0.625, "n": 64, "label_set": ["a", "b", "c", "d"], "examples": []}}
    facts = training_export.card_facts(results, arguments.ModelArguments(model_name_or_path=str(base)), data_args, state, 900,
                             [0] * 64, 3)
    card = str(hub.model_card(tiny_model(), base_model="Qwen/Qwen2.5-Omni-7B", datasets=["mer2023", "meld"], run=facts))
    assert "base_model: Qwen/Qwen2.5-Omni-7B" in card and "tiny random" not in card
    assert f"Base model: {base}" in card and "MER-UniBench packaged benchmarks mer2023,meld from /data/mer" in card
    assert "900 training samples; 3 bad samples left out" in card and "120 optimizer steps (3.0 epochs)" in card
    assert "training loss 1.2500" in card and "eval loss 0.5000" in card
    assert "accuracy on 64 held-out samples: 0.625, chance 0.250" in card and "MER-UniBench training data" in card


def test_defaults_are_the_paper_recipe():
    model_args, data_args, args = training_run.parse_args(["--model_name_or_path", "x", "--use_cpu", "true"])
    assert (model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout) == (16, 32, 0.05)
    assert (args.learning_rate, args.weight_decay, args.warmup_steps) == (2e-4, 0.01, 0.03)
    assert str(args.lr_scheduler_type.value if hasattr(args.lr_scheduler_type, "value") else args.lr_scheduler_type) \
        == "cosine"
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.num_train_epochs) == (4, 8, 3)
    assert data_args.max_length == 1024 and args.remove_unused_columns is False
    tiny_model, tiny_data, tiny_args = training_run.parse_args([])  # the embedded default
    assert tiny_model.model_name_or_path is None and tiny_data.manifest == arguments.TINY_CLIPS


# ---------------------------------------------------------------------------------------------------- export
RELOAD = """
import sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]  # hide an editable install
try:
    import modeling_affectverse
    raise SystemExit("the repository is importable: this would not test the remote code")
except ImportError:
    pass
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
batch = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(**batch).logits, sys.argv[3])
"""


def test_export_merges_lora_and_loads_with_trust_remote_code_elsewhere(tmp_path):
    from peft import PeftModel

    from affectverse.default.tiny import tiny_processor

    config, model = tiny_peft()
    trainer = training_trainer.AffectVerseTrainer(model=model, args=training_args(tmp_path / "run", learning_rate=5e-2),
                                       train_dataset=SpecDataset(4), data_collator=collator(config))
    trainer.train()  # LoRA B and the EWM move away from their init, so the merge matters
    batch = build_batch(config, [(2, 60), (0, 50)], seed=3)
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    out = tmp_path / "export"
    merged = training_export.export(trainer, tiny_processor(), arguments.ModelArguments(), arguments.DataArguments(), out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert {"config.json", "model.safetensors", "modeling_affectverse.py", "ewm_affectverse.py",
            "configuration_affectverse.py", "processing_affectverse.py", "tokenizer.json"} <= \
        {p.name for p in out.iterdir()}
    with safe_open(out / "adapter" / "adapter_model.safetensors", "pt") as f:
        assert any(".ewm." in k for k in f.keys())

    torch.save(batch, tmp_path / "batch.pt")
    env = {**os.environ, "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    subprocess.run([sys.executable, "-c", RELOAD, str(out), str(tmp_path / "batch.pt"), str(tmp_path / "logits.pt")],
                   cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), expected, atol=1e-4)

    torch.manual_seed(0)  # the adapter folder alone on a fresh base (same seed) gives the same model
    fresh = PeftModel.from_pretrained(AffectVerseForConditionalGeneration(config), str(out / "adapter")).eval()
    with torch.no_grad():
        assert torch.allclose(fresh(**batch).logits, expected, atol=1e-4)


# ------------------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_train_py_end_to_end(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train.py"), "--output_dir", str(out),
               "--manifest", str(tmp_path / "clips" / "manifest.csv"), "--generate_clips", "12",
               "--max_steps", "4", "--per_device_train_batch_size", "2", "--logging_steps", "2",
               "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "2",
               "--generation_eval_samples", "2", "--generation_max_new_tokens", "4"]
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lm_loss" in result.stdout + result.stderr and "imagination_loss" in result.stdout + result.stderr
    assert f"Wrote to {out}" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["eval"]["eval_loss"] > 0 and results["generation"]["n"] == 2
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "checkpoint-4").is_dir()
    card = (out / "README.md").read_text()  # the model card says what this run was
    assert "tiny random test model" in card and f"eval loss {results['eval']['eval_loss']:.4f}" in card
    assert "synthetic clips generated by `affectverse/default/clips.py` (not MER-UniBench)" in card
    reload = subprocess.run([sys.executable, "-c", "import sys; from transformers import AutoModelForCausalLM, "
                             "AutoProcessor; AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True);"
                             " AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)", str(out)],
                            cwd=tmp_path, env={**env, "PYTHONPATH": ""}, capture_output=True, text=True)
    assert reload.returncode == 0, reload.stderr[-3000:]
    # The same command again resumes the finished run; a different one is refused before training.
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resuming from" in again.stderr, again.stderr[-3000:]
    other = subprocess.run(command + ["--learning_rate", "1e-4"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert other.returncode != 0 and "holds a different run" in other.stderr


def _stock_thinker_folder(folder: Path):
    """A Qwen2.5-Omni thinker checkpoint (stock classes, tiny dimensions) with a stock processor."""
    from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    from affectverse.default.tiny import tiny_config, tiny_processor
    from configuration_affectverse import AffectVerseConfig

    fields = tiny_config().to_dict()
    for key in [*AffectVerseConfig.__annotations__, "model_type", "auto_map", "architectures"]:
        fields.pop(key, None)
    torch.manual_seed(0)
    Qwen2_5OmniThinkerForConditionalGeneration(Qwen2_5OmniThinkerConfig(**fields)).save_pretrained(folder)
    tp = tiny_processor()
    Qwen2_5OmniProcessor(tp.image_processor, tp.video_processor, tp.feature_extractor, tp.tokenizer,
                         chat_template=tp.chat_template).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_train_py_from_a_stock_qwen2_5_omni_thinker_checkpoint(tmp_path):
    from safetensors.torch import load_file

    stock = _stock_thinker_folder(tmp_path / "stock")
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train.py"), "--model_name_or_path", str(stock),
               "--ewm_overrides", "belief_token_id=22,rollout_steps=2",  # the tiny tokenizer's <|belief|> id
               "--manifest", str(tmp_path / "clips" / "manifest.csv"), "--generate_clips", "12",
               "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
               "--gradient_accumulation_steps", "1", "--logging_steps", "1", "--save_strategy", "no",
               "--dataloader_num_workers", "0", "--generation_eval_samples", "2", "--generation_max_new_tokens", "4"]
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "imagination_cosine_s2" in output and "imagination_cosine_s3" not in output
    before, after = load_file(stock / "model.safetensors"), load_file(out / "model.safetensors")
    frozen = [k for k in before if "audio_tower" in k or "visual" in k or "mlp" in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # the backbone loaded, untouched
    assert any(not torch.equal(before[k], after[k]) for k in before if "self_attn.q_proj.weight" in k)  # merged
    assert json.loads((out / "config.json").read_text())["rollout_steps"] == 2


DDP_WORKER = """
import sys, torch
sys.path.insert(0, {root!r})
from tests.test_train import SpecDataset, collator, tiny_peft, training_args
from affectverse.training import trainer as training_trainer
config, model = tiny_peft(seed=0)
args = training_args({out!r}, max_steps=3, gradient_accumulation_steps=2, ddp_backend="gloo")
trainer = training_trainer.AffectVerseTrainer(model=model, args=args, train_dataset=SpecDataset(16),
                                   data_collator=collator(config))
trainer.train()
rank = trainer.args.process_index
assert trainer.args.world_size == 2, trainer.args.world_size
logs = [h for h in trainer.state.log_history if "loss" in h]
assert all("lm_loss" in h and "imagination_cosine_s1" in h for h in logs), logs
# loss (Trainer: mean over ranks of each rank's mean) = lm_loss + img loss (ours: summed over ranks, then divided)
assert all(abs(h["loss"] - h["lm_loss"] - h["imagination_loss"]) < 1e-4 for h in logs), logs
torch.save({{n: p.detach() for n, p in model.named_parameters() if p.requires_grad}}, f"{out}/rank{{rank}}.pt")
trainer.accelerator.end_training()  # as a script should: gloo aborts an exit that skips it
"""


KILL_WORKER = """
import json, os, signal, sys, torch
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.test_train import SpecDataset, collator, tiny_peft, training_args
from affectverse.training import run_folder
from affectverse.training import trainer as training_trainer
out, kill = sys.argv[1], sys.argv[2] == "kill"
save = torch.save
def dying_save(obj, path, *args, **kwargs):  # kill -9 in the middle of checkpoint-4's save: weights written, no more
    if kill and str(path).endswith(os.path.join("checkpoint-4", "optimizer.pt")):
        os.kill(os.getpid(), signal.SIGKILL)
    return save(obj, path, *args, **kwargs)
torch.save = dying_save
config, model = tiny_peft(seed=0)
args = training_args(out, max_steps=5, gradient_accumulation_steps=2, save_strategy="steps", save_steps=2)
trainer = training_trainer.AffectVerseTrainer(model=model, args=args, train_dataset=SpecDataset(12),
                                   data_collator=collator(config))
trainer.train(resume_from_checkpoint=run_folder.last_complete_checkpoint(Path(out)))
logs = [[h["loss"], h["lm_loss"]] for h in trainer.state.log_history if "loss" in h]
weights = {{n: p.detach() for n, p in model.named_parameters() if p.requires_grad}}
torch.save(weights, os.path.join(out, "weights.pt"))
print("LOGS", json.dumps(logs))
"""


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_save_resumes_from_the_previous_checkpoint(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(KILL_WORKER.format(root=str(ROOT)))

    def launch(out, mode):
        return subprocess.run([sys.executable, str(script), str(out), mode], cwd=ROOT, capture_output=True,
                              text=True, timeout=600)

    killed = launch(tmp_path / "split", "kill")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "split" / "checkpoint-4" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "split" / "checkpoint-4" / "trainer_state.json").exists()
    resumed, full = launch(tmp_path / "split", "run"), launch(tmp_path / "full", "run")
    assert resumed.returncode == 0 and full.returncode == 0, resumed.stderr[-2000:] + full.stderr[-2000:]
    assert "checkpoint-4 is incomplete (no optimizer" in resumed.stderr
    logs = [json.loads(r.stdout.split("LOGS ")[1]) for r in (resumed, full)]
    assert torch.allclose(torch.tensor(logs[0]), torch.tensor(logs[1]), atol=1e-5), logs
    weights = [torch.load(tmp_path / name / "weights.pt") for name in ("split", "full")]
    assert all(torch.allclose(weights[0][n], weights[1][n], atol=1e-5) for n in weights[1])


@pytest.mark.slow
def test_two_cpu_processes_through_accelerate_end_identical(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER.format(root=str(ROOT), out=str(tmp_path)))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517", str(script)]
    command[0] = str(Path(sys.executable).parent / "accelerate")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{i}.pt") for i in range(2)]
    assert ranks[0].keys() == ranks[1].keys() and any(".ewm." in k for k in ranks[0])
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    _, initial = tiny_peft(seed=0)
    moved = {n: p for n, p in initial.named_parameters() if p.requires_grad}
    assert any(not torch.equal(moved[n], ranks[0][n]) for n in ranks[0])  # training changed the weights
