"""Issue 19: nothing overwritten, nothing leaked, nothing loaded broken.

One test per case an adversarial user found on main at cb4f682 (its docstring says what happened then), plus the
property every writing command must have: pointed at a file or folder it did not write, it leaves it byte-identical.
Everything runs on a tiny random AffectVerse and two generated 1 s clips; nothing here trains or loads a big model.
"""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
import re
import shutil
import socket
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file, save_file

from affectverse import checkpoint, cli, hub, ownership
from affectverse.default.clips import generate_clips
from affectverse.evaluation import runner
from affectverse.inference import engine
from affectverse.inference.embed import read_embeddings, store_path
from affectverse.inference.engine import MODALITIES, Engine, NonFiniteError, Setting
from affectverse.inference.store import PredictionStore, StoreError
from affectverse.training import arguments, run_folder
from affectverse.training import model as training_model
from modeling_affectverse import AffectVerseForConditionalGeneration
from tests.helpers import save_tiny_model, tiny_full_omni

AVT = Setting(MODALITIES["avt"])
FAST = ["--max-new-tokens", "2", "--num-workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, [two 1 s clips], manifest) shared by the tests; tests copy what they damage."""
    root = tmp_path_factory.mktemp("safety")
    save_tiny_model(root / "model")
    manifest = generate_clips(root / "clips", n_clips=2, seconds=1.0, val_fraction=0.0, test_fraction=1.0)
    return root / "model", sorted((root / "clips" / "video").glob("*.mp4")), manifest


def snapshot(path: Path) -> dict:
    """Every file under ``path`` (or ``path`` itself) with its bytes, and the names beside it."""
    files = {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} \
        if path.is_dir() else {"": path.read_bytes()}
    return {"files": files, "beside": sorted(p.name for p in path.parent.iterdir())}


def run(argv) -> int:
    """``affectverse ARGV``'s exit status (argparse's and a delegated job's SystemExit included)."""
    try:
        return cli.main(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 2


def copy_model(tiny, dest: Path) -> Path:
    shutil.copytree(tiny[0], dest)
    return dest


def rewrite_weights(folder: Path, change):
    """Apply ``change(tensors)`` to ``folder/model.safetensors`` and save it back (same layout when shapes stay)."""
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


# ===================================================================================== property: hands off
def _foreign_file(tmp_path, name="features.parquet"):
    path = tmp_path / name
    path.write_bytes(b"PAR1 someone else's data\x00\x01")
    return path


def _foreign_folder(tmp_path, name="mine"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "report.md").write_text("# my own report\n")
    (folder / "scores.json").write_text('{"mine": 1}\n')
    (folder / "config.json").write_text('{"model_type": "mine"}\n')
    (folder / "manifest.csv").write_text("video,label,split\n")
    return folder


WRITERS = {  # subcommand -> (what it is pointed at, its command line)
    "predict": ("file", lambda t, target: ["predict", str(t[0]), str(t[1][0]), "--out", str(target), *FAST]),
    "predict --figure": ("file", lambda t, target: [
        "predict", str(t[0]), str(t[1][0]), "--out", str(target.parent / "p.jsonl"), "--labels", "happy,sad",
        "--trajectory", "--ratios", "0.5,1", "--figure", str(target), *FAST]),
    "embed": ("file", lambda t, target: ["embed", str(t[0]), str(t[1][0]), "--out", str(target), *FAST[2:]]),
    "live": ("file", lambda t, target: ["live", str(t[0]), str(t[1][0]), "--out", str(target),
                                        "--max-new-tokens", "1"]),
    "live --figure": ("file", lambda t, target: [
        "live", str(t[0]), str(t[1][0]), "--out", str(target.parent / "l.jsonl"), "--labels", "happy,sad",
        "--figure", str(target), "--max-new-tokens", "1"]),
    "evaluate": ("folder", lambda t, target: [
        "evaluate", "--model", str(t[0]), "--manifest", str(t[2]), "--split", "all", "--out", str(target),
        "--imagination-clips", "0", *FAST]),
    "report": ("folder", lambda t, target: ["report", "--run", str(target)]),
    "export": ("folder", lambda t, target: ["export", str(t[0]), str(target)]),
    "train": ("folder", lambda t, target: ["train", "--output_dir", str(target), "--use_cpu", "true"]),
    "clips": ("folder", lambda t, target: ["clips", "--out", str(target), "--n", "2", "--seconds", "1"]),
}
READ_ONLY = {"score", "push", "demo"}  # write nothing local (score prints its report; push uploads; demo serves a page)


def test_every_writing_subcommand_is_covered():
    actions = cli.build_parser()._actions
    subcommands = set(next(a for a in actions if isinstance(a, argparse._SubParsersAction)).choices)
    assert subcommands == {name.split()[0] for name in WRITERS} | READ_ONLY


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_pointed_at_something_it_did_not_write_a_command_leaves_it_byte_identical(tiny, tmp_path, name):
    """Before: embed, evaluate's folder, export (and --figure) replaced what they found; train wrote into a
    non-empty folder with --overwrite_output_dir. Now each refuses before loading anything, creating nothing."""
    kind, argv = WRITERS[name]
    if name.endswith("--figure"):
        target = tmp_path / "figure.png"
        target.write_bytes(b"\x89PNG\r\n\x1a\n not a figure predict drew")
    else:
        target = _foreign_file(tmp_path) if kind == "file" else _foreign_folder(tmp_path)
    if name in ("predict", "live"):
        target = _foreign_file(tmp_path, f"{name}.jsonl")
    before = snapshot(target)
    with mock.patch.object(cli, "load_model", side_effect=AssertionError("must stop before loading")), \
            mock.patch.object(runner, "load_model", side_effect=AssertionError("must stop before loading")):
        assert run(argv(tiny, target)) != 0
    assert snapshot(target) == before


# ========================================================================================== data loss
@pytest.mark.parametrize("what", ["a user's features.parquet", "a model folder's own model.safetensors"])
def test_embed_refuses_a_file_it_did_not_write(tiny, tmp_path, caplog, what):
    """Before: `affectverse embed --out FILE` replaced either file with exit code 0."""
    if what.startswith("a user's"):
        target = _foreign_file(tmp_path)
    else:
        target = copy_model(tiny, tmp_path / "model") / "model.safetensors"
    before = snapshot(target)
    assert run(["embed", str(tiny[0]), str(tiny[1][0]), "--out", str(target), *FAST[2:]]) == 2
    assert f"--out {target}: not a file affectverse embed wrote; it is left untouched" in caplog.text
    assert snapshot(target) == before


def test_evaluate_refuses_a_folder_of_someone_elses(tiny, tmp_path, caplog):
    """Before: `benchmarks.run --out DIR` overwrote the folder's report.md and scores.json."""
    folder = _foreign_folder(tmp_path)
    before = snapshot(folder)
    assert run(["evaluate", "--model", str(tiny[0]), "--manifest", str(tiny[2]), "--split", "all", "--out",
                str(folder), *FAST]) == 2
    assert snapshot(folder) == before


def test_export_refuses_a_non_empty_folder_and_replaces_its_own_only_with_overwrite(tiny, tmp_path, caplog):
    """Before: `affectverse export MODEL DIR` into a non-empty folder replaced its README.md and config.json."""
    folder = _foreign_folder(tmp_path)
    before = snapshot(folder)
    assert run(["export", str(tiny[0]), str(folder)]) == 2
    assert "not a folder affectverse export wrote" in caplog.text and snapshot(folder) == before

    out = tmp_path / "hub"
    assert run(["export", str(tiny[0]), str(out), "--max-shard-size", "300KB"]) == 0
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert run(["export", str(tiny[0]), str(out)]) == 2  # its own earlier export: only with --overwrite
    assert "holds an earlier affectverse export; pass --overwrite" in caplog.text
    (out / "notes.txt").write_text("mine")
    assert run(["export", str(tiny[0]), str(out), "--overwrite"]) == 2  # something of someone else's in it
    assert "also holds files affectverse export did not write (notes.txt)" in caplog.text
    (out / "notes.txt").unlink()
    assert run(["export", str(tiny[0]), str(out), "--overwrite"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and not names & set(shards)  # nothing of the earlier export lingers
    record = ownership.read_record(out)
    assert set(record["files"]) == {n for n in names if n != ownership.RECORD} and record["kind"] == "export"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hub.")]  # no temporary folder left


def test_a_second_embed_with_other_clips_keeps_the_first_ones(tiny, tmp_path, capsys):
    """Before: a second embed with another clip set on the same --out left FILE holding only the second set."""
    out = tmp_path / "emb.safetensors"
    base = ["embed", str(tiny[0]), "--out", str(out), *FAST[2:]]
    assert run(base + [str(tiny[1][0])]) == 0
    assert run(base + [str(tiny[1][1])]) == 0
    assert list(read_embeddings(out)) == [tiny[1][0].stem, tiny[1][1].stem]
    assert "2 clips in" in capsys.readouterr().out.splitlines()[-1]


def test_embed_of_other_settings_is_refused_and_overwrite_replaces_everything_it_wrote(tiny, tmp_path, caplog):
    out = tmp_path / "emb.safetensors"
    assert run(["embed", str(tiny[0]), str(tiny[1][0]), "--out", str(out), *FAST[2:]]) == 0
    before = snapshot(tmp_path)
    assert run(["embed", str(tiny[0]), str(tiny[1][1]), "--out", str(out), "--dtype", "bfloat16", *FAST[2:]]) == 2
    assert "dtype: 'float32' in the file, 'bfloat16' now" in caplog.text and "--overwrite to replace it" in caplog.text
    assert snapshot(tmp_path) == before
    assert run(["embed", str(tiny[0]), str(tiny[1][1]), "--out", str(out), "--dtype", "bfloat16", "--overwrite",
                *FAST[2:]]) == 0
    assert list(read_embeddings(out)) == [tiny[1][1].stem]  # only the new run: the old one is gone
    assert len(list((tmp_path / "emb.safetensors.parts").glob("part-*"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.safetensors", "emb.safetensors.jsonl",
                                                          "emb.safetensors.jsonl.lock", "emb.safetensors.parts"]


# =============================================================================================== leak
def _train_output(folder: Path, tiny) -> Path:
    """A train.py output folder as the adversarial user had it: merged model at the top, checkpoints, caches."""
    shutil.copytree(tiny[0], folder)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# card\n")
    (folder / ".env").write_text("HF_TOKEN=hf_" + "a" * 34 + "\n")
    (folder / "preflight_cache.json").write_text('{"entries": {"/home/me/data/clip.mp4": {}}}')
    (folder / "run_args.json").write_text("{}")
    ckpt = folder / "checkpoint-2"
    ckpt.mkdir()
    for name in ("optimizer.pt", "rng_state.pth", "training_args.bin", "scheduler.pt", "trainer_state.json",
                 "adapter_model.safetensors", "adapter_config.json"):
        (ckpt / name).write_bytes(b"state")
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    return folder


def test_push_uploads_only_what_the_model_needs(tiny, tmp_path, capsys):
    """Before: push of a train.py output folder would upload .env, the checkpoints' optimizer.pt, rng_state.pth and
    training_args.bin pickles and preflight_cache.json ("78 files (5.2 MB) would go", no warning)."""
    folder = _train_output(tmp_path / "run", tiny)
    with mock.patch.object(hub, "HfApi", side_effect=AssertionError("a dry run must not reach the Hub")):
        assert run(["push", str(folder), "me/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    going = {line.split()[-1] for line in out.splitlines()[:-1] if line.split()[0] != "skipped"}
    assert going == {p.name for p in tiny[0].iterdir()} | {"README.md"}
    for name, why in ((".env", "looks like a secret"), ("preflight_cache.json", "never uploaded"),
                      ("checkpoint-2/", "training state: pass --include-training-state"),
                      ("adapter/", "training state"), ("run_args.json", "training state")):
        assert any(line.split()[1] == name and why in line for line in out.splitlines() if line.startswith(
            " " * 7 + "skipped")), (name, out)
    with mock.patch.object(hub, "HfApi") as api:
        assert run(["push", str(folder), "me/x", "--include-training-state"]) == 0
    patterns = api.return_value.upload_folder.call_args.kwargs["allow_patterns"]
    assert "checkpoint-2/optimizer.pt" in patterns and "adapter/adapter_config.json" in patterns
    assert not [p for p in patterns if ".env" in p or "preflight" in p]  # never, whatever the flags


def test_push_never_uploads_a_file_holding_a_token(tiny, tmp_path):
    folder = copy_model(tiny, tmp_path / "model")
    (folder / "README.md").write_text("push with token hf_" + "b" * 34 + "\n")
    uploaded, skipped = hub.upload_plan(folder)
    assert "README.md" not in dict(uploaded)
    assert [why for name, _, why in skipped if name == "README.md"] == [
        "holds what looks like an access token or a private key: never uploaded"]


# ================================================================================ silent wrong results
def test_a_change_away_from_the_file_ends_is_another_model(tiny, tmp_path, caplog):
    """Before: the fingerprint read each file's header and its first and last 64 KiB; one EWM tensor changed by
    0.01 left it unchanged, so evaluating that model reused the first one's predictions."""
    other = copy_model(tiny, tmp_path / "other")
    header, start = checkpoint.read_header(other / "model.safetensors")
    size = (other / "model.safetensors").stat().st_size
    name = next(k for k, v in header.items() if k.startswith("ewm.") and
                start + v["data_offsets"][0] > 65536 and size - start - v["data_offsets"][1] > 65536)
    rewrite_weights(other, lambda t: t[name].view(-1)[0].add_(0.01))
    assert (other / "model.safetensors").stat().st_size == size  # same size, same header: only the middle moved
    assert checkpoint.model_identity(other) != checkpoint.model_identity(tiny[0])

    out = tmp_path / "preds.jsonl"

    class Fake(Engine):
        def run(self, jobs):
            for setting, rows in jobs:
                yield setting, rows, [{"status": "ok", "answer": "sad", "seconds": 0.0} for _ in rows]

    with mock.patch.object(cli, "load_model", return_value=(None, None)), mock.patch.object(cli, "Engine", Fake):
        assert run(["predict", str(tiny[0]), str(tiny[1][0]), "--out", str(out), *FAST]) == 0
        assert run(["predict", str(other), str(tiny[1][0]), "--out", str(out), *FAST]) == 2
    assert "holds predictions made with other settings" in caplog.text and "model.fingerprint" in caplog.text


@pytest.mark.parametrize("damage, message", [
    ("one tensor", r"model.safetensors: the weights lack 1 of the \d+ tensors the model needs \(ewm.up.weight\)"),
    ("every tensor", r"model.safetensors: the weights lack all of the \d+ tensors the model needs"),
    ("an extra tensor", r"model.safetensors: the weights hold 1 tensor\(s\) the model does not have "
                        r"\(ewm.extra.weight\)"),
    ("NaN weights", r"NaN or infinite values in 1 of \d+ weight tensors \(ewm.up.weight\)"),
])
def test_incomplete_or_broken_weights_stop_the_run_before_anything_is_written(tiny, tmp_path, caplog, damage,
                                                                               message):
    """Before: a checkpoint missing one tensor or all of them, or holding NaN weights, loaded with random (or NaN)
    weights: predict exited 0, every record `status: ok`, the answers garbage (or empty)."""
    folder = copy_model(tiny, tmp_path / "model")
    change = {
        "one tensor": lambda t: t.pop("ewm.up.weight"),
        "every tensor": lambda t: t.clear() or t.update({"unrelated": torch.zeros(1)}),
        "an extra tensor": lambda t: t.update({"ewm.extra.weight": torch.zeros(2)}),
        "NaN weights": lambda t: t["ewm.up.weight"].fill_(float("nan")),
    }[damage]
    rewrite_weights(folder, change)
    out = tmp_path / "preds.jsonl"
    assert run(["predict", str(folder), str(tiny[1][0]), "--out", str(out), *FAST]) == 2
    assert re.search(message, caplog.text), caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no predictions file, no lock file


def test_the_stale_lock_takeover_race_is_gone(tmp_path):
    """Before: with a dead writer's lock file left behind and four writers starting together, two held the same
    predictions file in 10 of 60 trials. Kernel locks: exactly one, every time."""
    ctx = multiprocessing.get_context("fork")
    path = tmp_path / "p.jsonl"
    run_settings = {"model": {"fingerprint": "abc"}}
    for trial in range(12):
        (tmp_path / "p.jsonl.lock").write_text(f"999999 {socket.gethostname()}\n")  # a dead writer's lock file
        start, held = ctx.Barrier(4), ctx.Queue()

        def writer():
            start.wait()
            try:
                store = PredictionStore(path, run_settings, ("name",))
            except StoreError:
                held.put(0)
                return
            held.put(1)
            time.sleep(0.2)
            store.close()

        procs = [ctx.Process(target=writer) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert sum(held.get(timeout=5) for _ in procs) == 1, f"trial {trial}"


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--limit", "-1"], "argument --limit: must be a whole number >= 1, got '-1'"),
    (["evaluate", "--keep-ratios", "abc"], "argument --keep-ratios: must be comma-separated numbers in (0, 1], got "
                                           "'abc'"),
    (["evaluate", "--keep-ratios", "nan"], "argument --keep-ratios: must be comma-separated numbers in (0, 1]"),
    (["evaluate", "--max-new-tokens", "0"], "argument --max-new-tokens: must be a whole number >= 1, got '0'"),
    (["predict", "--max-new-tokens", "0"], "argument --max-new-tokens: must be a whole number >= 1, got '0'"),
    (["predict", "--batch-size", "-2"], "argument --batch-size: must be a whole number >= 1, got '-2'"),
    (["clips", "--n", "-1"], "argument --n: must be a whole number >= 1, got '-1'"),
])
def test_options_it_cannot_use_are_refused_in_one_line_naming_them(tiny, tmp_path, capsys, argv, message):
    """Before: `--limit -1` silently dropped the last clip; `--keep-ratios abc` ended in a raw traceback."""
    command, *option = argv
    common = {"evaluate": ["--model", str(tiny[0]), "--manifest", str(tiny[2]), "--out", str(tmp_path / "run")],
              "predict": [str(tiny[0]), str(tiny[1][0]), "--out", str(tmp_path / "p.jsonl")],
              "clips": ["--out", str(tmp_path / "clips")]}[command]
    assert run([command, *common, *option]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ===================================================================== failures that blocked the fix
NO_DEVICE = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


@pytest.mark.parametrize("problem", ["device", "truncated weights", "max-new-tokens 0"])
def test_nothing_is_created_before_the_fast_checks_so_the_corrected_command_runs(tiny, tmp_path, caplog, problem):
    """Before: the predictions file and its settings header were written before the device, the model and the
    options were known to work; the corrected command was then refused ("holds predictions made with other
    settings") though the file held none."""
    folder = copy_model(tiny, tmp_path / "model")
    out = tmp_path / "run"
    argv = ["evaluate", "--model", str(folder), "--manifest", str(tiny[2]), "--split", "all", "--out", str(out),
            "--imagination-clips", "0", "--modalities", "avt", "--limit", "1", *FAST]
    weights = (folder / "model.safetensors").read_bytes()
    if problem == "device":
        bad = argv + ["--device", NO_DEVICE]
    elif problem == "truncated weights":
        (folder / "model.safetensors").write_bytes(weights[:-5000])
        bad = argv
    else:
        bad = argv + ["--max-new-tokens", "0"]
    assert run(bad) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no run folder, nothing in it
    (folder / "model.safetensors").write_bytes(weights)
    assert run(argv) == 0
    assert len([r for r in (out / runner.PREDICTIONS).read_text().splitlines() if '"status"' in r]) == 1
    assert "other settings" not in caplog.text


def test_a_config_asking_for_huge_sizes_is_compared_with_the_headers_before_anything_is_allocated(tiny, tmp_path):
    """Before: a config.json asking for huge sizes allocated 256 GiB before its shapes met the weights."""
    folder = copy_model(tiny, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["vocab_size"] = 1_000_000_000  # x 64 wide x 4 bytes: 256 GB for the embedding alone
    (folder / "config.json").write_text(json.dumps(config))
    with mock.patch.object(AffectVerseForConditionalGeneration, "from_pretrained",
                           side_effect=AssertionError("weights were loaded before the shapes were compared")):
        with pytest.raises(checkpoint.CheckpointError, match=r"config.json and the weights disagree on \d+ tensor "
                                                             r"shapes \(.*\[512, 64\] in model.safetensors, "
                                                             r"\[1000000000, 64\] in config.json"):
            engine.load_model(str(folder), "cpu", torch.float32)


def test_an_empty_list_into_the_pipeline_is_an_empty_list_out(tiny):
    """Before: pipe([]) raised IndexError."""
    from transformers import pipeline

    pipe = pipeline("emotion-recognition", model=str(tiny[0]), trust_remote_code=True)
    assert pipe([]) == []


def test_a_full_disk_is_one_line_naming_the_file(tiny, tmp_path, caplog, capsys, monkeypatch):
    """Before: a full disk ended in a raw traceback that did not name the file."""
    out = tmp_path / "run"
    argv = ["evaluate", "--model", str(tiny[0]), "--manifest", str(tiny[2]), "--split", "all", "--out", str(out),
            "--imagination-clips", "0", "--modalities", "avt", "--limit", "1", *FAST]
    assert run(argv) == 0
    scores = (out / runner.SCORES).read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ownership.os, "fsync", full)
    assert run(argv) == 2
    line = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][-1]
    assert line.startswith(f"writing {out / 'run.json'}: no space left on the device (") and "GiB free" in line
    assert "\n" not in line and "Traceback" not in capsys.readouterr().err
    assert (out / runner.SCORES).read_bytes() == scores  # the earlier results stand
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_the_traceback_shows_only_at_debug(tiny, tmp_path, caplog):
    folder = copy_model(tiny, tmp_path / "model")
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-5000])
    argv = ["predict", str(folder), str(tiny[1][0]), "--out", str(tmp_path / "p.jsonl")]
    assert run(argv) == 2
    assert "model.safetensors: truncated" in caplog.text and "Traceback" not in caplog.text
    caplog.clear()
    assert run(["--log-level", "DEBUG", *argv]) == 2
    assert "Traceback" in caplog.text


def test_loading_says_nothing_about_the_model_type(tiny, capfd):
    """Before: every healthy load printed "You are using a model of type affectverse to instantiate a model of
    type ``", which taught users to ignore the load report that matters."""
    engine.load_model(str(tiny[0]), "cpu", torch.float32)
    captured = capfd.readouterr()
    assert "model of type" not in captured.err + captured.out


@pytest.mark.parametrize("kind, message", [
    ("trainer checkpoint", "is a Trainer checkpoint (trainer_state.json, optimizer and RNG states): training state, "
                           "not a model"),
    ("adapter", "is a LoRA adapter (adapter_config.json: LoRA + EWM weights only), not a model"),
    ("base", "is a Qwen2.5-Omni base checkpoint ('qwen2_5_omni') without an Emotion World Module"),
])
def test_a_folder_that_is_not_a_model_is_named_at_once(tmp_path, caplog, kind, message):
    folder = tmp_path / "checkpoint-2"
    if kind == "base":
        tiny_full_omni().save_pretrained(folder)
    else:
        folder.mkdir()
        save_file({"w": torch.zeros(1)}, folder / "adapter_model.safetensors")
        (folder / "adapter_config.json").write_text("{}")
        if kind == "trainer checkpoint":
            (folder / "trainer_state.json").write_text("{}")
            (folder / "optimizer.pt").write_bytes(b"x")
    assert run(["predict", str(folder), str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert message in caplog.text
    assert not (tmp_path / "p.jsonl").exists()


# ============================================================================================= mechanisms
def test_non_finite_logits_stop_the_run_and_nothing_is_recorded(tiny, tmp_path, caplog):
    model, processor = engine.load_model(str(tiny[0]), "cpu", torch.float32)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))  # after the load's own check: as a float16 overflow would
    eng = Engine(model, processor, max_new_tokens=2, batch_size=1, num_workers=0)
    with pytest.raises(NonFiniteError, match="the model's logits hold NaN or infinite values"):
        list(eng.run(eng.batches([(AVT, {"name": str(tiny[1][0]), "video": str(tiny[1][0]), "audio": ""})])))
    out = tmp_path / "p.jsonl"
    with mock.patch.object(cli, "load_model", return_value=(model, processor)):
        assert run(["predict", str(tiny[0]), str(tiny[1][0]), "--out", str(out), *FAST]) == 2
    assert "logits hold NaN or infinite values" in caplog.text and not out.exists()


def test_train_py_loads_through_the_same_checks(tiny, tmp_path):
    folder = copy_model(tiny, tmp_path / "model")
    rewrite_weights(folder, lambda t: t.pop("ewm.up.weight"))
    args = arguments.ModelArguments(model_name_or_path=str(folder))
    with pytest.raises(ValueError, match=r"lack 1 of the \d+ tensors the model needs \(ewm.up.weight\)"):
        training_model.load_model(args, arguments.DataArguments(), arguments.AffectVerseTrainingArguments(
            output_dir=str(tmp_path / "out"), use_cpu=True))
    base = tmp_path / "base"
    tiny_full_omni().save_pretrained(base)  # a Qwen2.5-Omni base: the EWM is new there, nothing else may be
    model = checkpoint.load_verified(base, allowed=training_model.SUPPORTED_MODEL_TYPES)
    assert model.ewm is not None


def test_identity_is_stored_at_export_and_otherwise_hashed_once(tiny, tmp_path):
    out = tmp_path / "hub"
    assert run(["export", str(tiny[0]), str(out)]) == 0
    stored = ownership.read_record(out)["identity"]
    assert checkpoint.model_identity(out) == stored["sha256"] == checkpoint.model_identity(tiny[0])  # same tensors
    with mock.patch.object(checkpoint, "tensor_digests", side_effect=AssertionError("hashed again")):
        checkpoint.model_identity(out)  # the record, while its files are unchanged
        checkpoint.model_identity(tiny[0])  # the cache (path, size, mtime)
    moved = tmp_path / "moved"
    out.rename(moved)  # a moved folder keeps its identity (and its record stays valid)
    assert checkpoint.model_identity(moved) == stored["sha256"]


def test_overwrite_output_dir_removes_the_earlier_runs_files_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    run_folder.claim(out)
    for name in ("run_args.json", "results.json", "config.json", "model-00001-of-00002.safetensors", "README.md",
                 "notes.txt"):
        (out / name).write_text("x")
    (out / "checkpoint-4").mkdir()
    (out / "checkpoint-8").mkdir()
    removed = run_folder.start_afresh(out, keep=str(out / "checkpoint-8"))
    assert removed == ["README.md", "checkpoint-4", "config.json", "model-00001-of-00002.safetensors",
                       "results.json", "run_args.json"]
    assert sorted(p.name for p in out.iterdir()) == [ownership.RECORD, "checkpoint-8", "notes.txt"]


def test_a_redrawn_report_leaves_none_of_an_earlier_reports_files(tmp_path):
    from affectverse.evaluation import report

    run_dir = tmp_path / "run"
    ownership.claim_folder(run_dir, report.KIND)
    entry = {"benchmark": "manifest", "task": "emotion", "modality": "avt", "setting": "A+V+T", "ablation": "Full",
             "keep_ratio": 1.0, "n": 2, "n_errors": 0, "main_score": None, "closed_set_score": 50.0}
    (run_dir / "scores.json").write_text(json.dumps({"errors": "", "results": [entry]}))
    for name in ("calibration.md", "calibration.csv", "imagination.png", "notes.md"):
        (run_dir / name).write_text("from an earlier report (notes.md: the user's)")
    written = {p.name for p in report.write_report(run_dir)}
    names = {p.name for p in run_dir.iterdir()}
    assert "report.md" in written and "robustness.png" in names and "notes.md" in names
    assert not names & {"calibration.md", "calibration.csv", "imagination.png"}  # this report has no such part


def test_readers_refuse_labels_they_cannot_trust_and_accept_a_byte_order_mark(tmp_path):
    import numpy as np

    from affectverse.data import readers

    (tmp_path / "m.csv").write_bytes("\ufeffvideo,label,split\nclip.mp4,happy,train\n".encode())  # Excel's CSV
    assert readers.load_manifest(tmp_path / "m.csv")[0]["emotion"] == "happy"
    spec = readers.BENCHMARKS["meld"]
    np.savez(tmp_path / "label.npz", test_corpus=np.array({"s1": {"emo": 9, "val": 0.0}}, dtype=object))
    with pytest.raises(ValueError, match=r"label.npz, test_corpus, sample 's1': unusable label .*class 9 outside"):
        readers.npz_labels(tmp_path / "label.npz", spec, "test")
    np.savez(tmp_path / "label.npz", test_corpus=np.array({"s1": {"emo": 0, "val": float("nan")}}, dtype=object))
    with pytest.raises(ValueError, match="not a finite number"):
        readers.npz_labels(tmp_path / "label.npz", readers.BENCHMARKS["mosi"], "test")
