"""affectverse.inference.engine: the prediction store (header, settings, lock, cut lines), the engine (DataLoader workers,
per-clip retry, no remote code), progress reporting, scoring of multi-setting files, the module layering."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from affectverse import hub
from affectverse.default.clips import generate_clips, write_bad_media
from affectverse.default.tiny import tiny_config, tiny_processor
from affectverse.inference import engine
from affectverse.inference import store as store_module
from affectverse.inference.engine import MODALITIES, Engine, Progress, Setting
from affectverse.inference.store import PredictionStore, StoreError
from affectverse.scoring import score as score_cli
from modeling_affectverse import AffectVerseForConditionalGeneration
from tests.helpers import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
RUN = {"model": {"fingerprint": "abc"}, "generation": {"max_new_tokens": 4}}
AVT = Setting(MODALITIES["avt"])


def record(name, setting=AVT, status="ok"):
    return {**setting.record(), "name": name, "status": status, "labels": []}


def store(path, run=RUN, **kw):
    return PredictionStore(path, run, ("name",), **kw)


# ================================================================================================== store
def test_store_header_settings_and_resume(tmp_path):
    path = tmp_path / "p.jsonl"
    with store(path) as s:
        s.append([record("a"), record("b", status="error")], [AVT.record()])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["format"] == store_module.FORMAT and lines[0]["run"] == RUN
    assert lines[1] == {"kind": "setting", "setting_id": "avt-k1", "modality": "avt", "keep_ratio": 1.0}
    assert [x["setting_id"] for x in lines[2:]] == ["avt-k1", "avt-k1"]
    with store(path) as s:
        assert s.done(("avt-k1", "a")) and s.done(("avt-k1", "b")) and not s.done(("avt-k1", "b"), True)
        assert not s.done((Setting(MODALITIES["vt"]).id, "a"))


def test_store_keeps_each_setting_apart(tmp_path):
    """Table 2's keep ratios and Table 1's modalities of one clip are separate predictions: each setting declared
    once with its own keep ratio, no record of one setting standing for another."""
    half, vt = Setting(MODALITIES["avt"], 0.5), Setting(MODALITIES["vt"])
    with store(tmp_path / "p.jsonl") as s:
        s.append([record("a", status="error")], [AVT.record()])
        s.append([record("a", half), record("a", vt)], [half.record(), vt.record()])
    with store(tmp_path / "p.jsonl") as s:
        assert {sid: x["keep_ratio"] for sid, x in s.settings.items()} == {"avt-k1": 1.0, "avt-k0.5": 0.5,
                                                                            "vt-k1": 1.0}
        assert {k: r["status"] for k, r in s.records.items()} == {("avt-k1", "a"): "error",
                                                                   ("avt-k0.5", "a"): "ok", ("vt-k1", "a"): "ok"}
        assert not s.done((AVT.id, "a"), retry_errors=True) and s.done((half.id, "a"), retry_errors=True)


def test_store_other_settings_name_each_difference(tmp_path):
    path = tmp_path / "p.jsonl"
    store(path).close()
    other = {"model": {"fingerprint": "def"}, "generation": {"max_new_tokens": 8}, "extractor": "llm"}
    with pytest.raises(StoreError) as err:
        store(path, other)
    message = str(err.value)
    assert "model.fingerprint: 'abc' in the file, 'def' now" in message
    assert "generation.max_new_tokens: 4 in the file, 8 now" in message and "extractor: '(absent)'" in message
    assert store_module.fresh_path(path) == tmp_path / "p-2.jsonl" and store_module.fresh_path(tmp_path) == \
        tmp_path.with_name(tmp_path.name + "-2")


def test_store_drops_only_an_unterminated_last_line(tmp_path):
    path = tmp_path / "p.jsonl"
    with store(path) as s:
        s.append([record("a"), record("b")], [AVT.record()])
    complete = path.read_bytes()
    path.write_bytes(complete + b'{"setting_id": "avt-k1", "name": "c", "sta')
    with store(path) as s:
        assert set(s.records) == {("avt-k1", "a"), ("avt-k1", "b")}
    assert path.read_bytes() == complete
    lines = complete.decode().splitlines()
    path.write_text("\n".join(lines[:2] + ["{not json", lines[3]]) + "\n")
    broken = path.read_bytes()
    with pytest.raises(StoreError, match=r"line 3: not a prediction record"):
        store(path)
    assert path.read_bytes() == broken  # never rewritten


@pytest.mark.parametrize("content", ["name,label\nc1,happy\n", '{"name": "c1", "labels": []}\n', "\n\n"])
def test_store_refuses_another_kind_of_file(tmp_path, content):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(StoreError, match="not an AffectVerse predictions file"):
        store(path)
    assert path.read_text() == content and not (tmp_path / "p.jsonl.lock").exists()


def test_store_lock_refuses_a_second_writer_and_a_dead_writers_lock_holds_nothing(tmp_path):
    """The lock is the kernel's (flock): a second writer is refused while the first lives; a lock file left by a
    dead writer (here in the old "pid host" form) holds nothing, so there is no stale lock to take over."""
    path = tmp_path / "p.jsonl"
    first = store(path)
    with pytest.raises(StoreError, match=rf"being written by another process \(pid {os.getpid()}"):
        store(path)
    store(path, readonly=True)  # readers need no lock
    first.close()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "p.jsonl.lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    with store(path) as again:
        assert again.lock.held


def test_merge_takes_shard_records(tmp_path):
    main = store(tmp_path / "p.jsonl")
    main.append([record("a", status="error")], [AVT.record()])
    with store(store_module.shard_path(tmp_path / "p.jsonl", 1, 2)) as shard:
        shard.append([record("a"), record("b")], [AVT.record()])
    assert store_module.shard_files(tmp_path / "p.jsonl") == [tmp_path / "p.shard1of2.jsonl"]
    with store(tmp_path / "p.shard1of2.jsonl", None) as shard:
        main.merge(shard)
    main.close()
    with store(tmp_path / "p.jsonl") as s:
        assert {k: r["status"] for k, r in s.records.items()} == {("avt-k1", "a"): "ok", ("avt-k1", "b"): "ok"}


def test_merge_keeps_an_ok_record_over_a_shards_error(tmp_path):
    """The last record of a key wins when a store is read: a shard's error must not be appended over an ok one."""
    with store(tmp_path / "p.jsonl") as main, store(tmp_path / "s.jsonl") as shard:
        main.append([record("a"), record("b", status="error")], [AVT.record()])
        shard.append([record("a", status="error"), record("b", status="error"), record("c", status="error")],
                     [AVT.record()])
        main.merge(shard)
    with store(tmp_path / "p.jsonl") as s:
        assert {k[1]: r["status"] for k, r in s.records.items()} == {"a": "ok", "b": "error", "c": "error"}
        assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 2 + 2 + 1  # header, setting, a, b, then c


def test_merge_refuses_a_shard_of_another_run(tmp_path):
    """A shard left by a run of another model (or settings) is refused by the merge and by the next run's start,
    which loads no model; the store and the shard stay as they were."""
    path = tmp_path / "p.jsonl"
    with store(path) as main:
        main.append([record("a")], [AVT.record()])
    shard = store_module.shard_path(path, 1, 2)
    with store(shard, {"model": {"fingerprint": "def"}, "generation": {"max_new_tokens": 4}}) as other:
        other.append([record("b")], [AVT.record()])
    before = path.read_bytes(), shard.read_bytes()
    with store(path) as main, store(shard, None) as other, pytest.raises(StoreError, match="a shard of another run"):
        main.merge(other)
    assert (path.read_bytes(), shard.read_bytes()) == before

    def never():
        raise AssertionError("a model was loaded")

    with pytest.raises(StoreError, match=r"p\.shard1of2\.jsonl: a shard of another run"):
        engine.predict_to_store(path, RUN, "model", ("name",), [(AVT, {"name": "b"})], lambda row: (row["name"],),
                                never, lambda setting, rows, results: [])
    assert (path.read_bytes(), shard.read_bytes()) == before
    with store(path):  # the refused start let go of its (kernel) lock: the next writer gets the file
        pass


def test_store_refuses_another_format_version(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"format": store_module.FORMAT, "version": 2, "run": RUN}) + "\n")
    with pytest.raises(StoreError, match="predictions format version 2; this code reads version 1"):
        store(path)
    assert not (tmp_path / "p.jsonl.lock").exists()


# ================================================================================================= engine
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    model = save_tiny_model(root / "model")
    generate_clips(root / "clips", n_clips=3, seconds=2.0)
    clips = sorted((root / "clips" / "video").glob("*.mp4"))
    bad = write_bad_media(root / "bad")
    rows = [{"name": str(c), "video": str(c), "audio": ""} for c in clips]
    rows.insert(1, {"name": "broken", "video": str(bad["corrupt"]), "audio": ""})
    return model, tiny_processor(), rows, root


def test_each_modality_setting_decodes_only_its_media(tiny):
    """Table 1's settings: A+V+T decodes frames and the clip's audio track, V+T the frames alone, A+T the track
    alone; the prompt then holds only that setting's placeholders."""
    _, processor, rows, _ = tiny
    for key, video, audio in (("avt", True, True), ("vt", True, False), ("at", False, True)):
        batch, failed = engine.decode(processor, Setting(MODALITIES[key]), rows[:1])
        assert not failed
        assert ("pixel_values_videos" in batch, "input_features" in batch) == (video, audio), key
        ids = batch["input_ids"][0]
        assert (bool((ids == processor.video_token_id).any()), bool((ids == processor.audio_token_id).any())) == \
            (video, audio), key


def test_fingerprint_follows_the_weights_not_the_folder(tiny, tmp_path):
    import shutil

    _, _, _, root = tiny
    shutil.copytree(root / "model", tmp_path / "copy")
    record = engine.checkpoint_record(str(root / "model"))
    assert engine.checkpoint_record(str(tmp_path / "copy")) == record
    assert record["processor"]["max_length"] == tiny_processor().max_length and "auto_map" not in record["processor"]
    torch.manual_seed(5)
    AffectVerseForConditionalGeneration(tiny_config()).save_pretrained(tmp_path / "copy")
    assert engine.fingerprint(str(tmp_path / "copy")) != record["fingerprint"]


def _decode_in(pid_dir):
    original = engine.decode

    def decode(*args):
        assert torch.utils.data.get_worker_info() is not None, "decoding in the main process"
        (pid_dir / str(os.getpid())).touch()
        return original(*args)

    return decode


def test_workers_decode_ahead_and_give_the_same_results(tiny, tmp_path):
    model, processor, rows, _ = tiny
    serial = Engine(model, processor, max_new_tokens=3, batch_size=2, num_workers=0)
    jobs = serial.batches([(AVT, r) for r in rows])
    expected = [r for _, _, results in serial.run(jobs) for r in results]
    with mock.patch.object(engine, "decode", _decode_in(tmp_path)):
        parallel = Engine(model, processor, max_new_tokens=3, batch_size=2, num_workers=2)
        got = [r for _, _, results in parallel.run(jobs) for r in results]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(got) == strip(expected)
    assert [r["status"] for r in got] == ["ok", "error", "ok", "ok"] and "corrupt.mp4" in got[1]["reason"]
    pids = {int(p.name) for p in tmp_path.iterdir()}
    assert pids and os.getpid() not in pids


def test_a_failed_batch_is_retried_clip_by_clip(tiny):
    model, processor, rows, _ = tiny
    real, calls = Engine.generate, []

    def generate(self, batch):
        calls.append(batch["input_ids"].shape[0])
        if calls[-1] > 1:
            raise RuntimeError("CUDA out of memory")
        if len(calls) == 3:  # the second clip that loads
            raise RuntimeError("bad clip")
        return real(self, batch)

    eng = Engine(model, processor, max_new_tokens=2, batch_size=4, num_workers=0)
    with mock.patch.object(Engine, "generate", generate):
        results = eng.predict(AVT, rows)
    assert calls == [3, 1, 1, 1]
    assert [r["status"] for r in results] == ["ok", "error", "error", "ok"]
    assert "corrupt.mp4" in results[1]["reason"] and results[2]["reason"] == "RuntimeError: bad clip"


def test_no_folder_code_runs_unless_asked(tiny, tmp_path):
    """Before: affectverse.evaluation.runner loaded the processor with trust_remote_code=True, executing the folder's code."""
    import shutil

    _, _, rows, root = tiny
    folder = tmp_path / "model"
    shutil.copytree(root / "model", folder)
    marker = tmp_path / "code_ran"
    future = "from __future__ import annotations\n"
    for code in folder.glob("*.py"):
        text = code.read_text()
        line = f"open({str(marker)!r}, 'a').write({code.name!r})\n"
        code.write_text(text.replace(future, future + line, 1) if future in text else line + text)
    model, processor = engine.load_model(str(folder), "cpu", torch.float32)
    assert type(model).__module__ == "modeling_affectverse" and not marker.exists()
    from affectverse.evaluation import runner as run

    out = tmp_path / "run"
    assert run.main(["--model", str(folder), "--manifest", str(root / "clips" / "manifest.csv"), "--split", "all",
                     "--limit", "1", "--modalities", "vt", "--out", str(out), "--max-new-tokens", "1",
                     "--device", "cpu", "--imagination-clips", "0", "--num-workers", "0"]) == 0
    assert not marker.exists()
    engine.load_model(str(folder), "cpu", torch.float32, trust_remote_code=True)
    assert marker.exists()  # the check above can see code running


def test_train_generation_accuracy_counts_a_bad_clip_as_wrong(tiny):
    """Before: train.py's generation accuracy stopped at the first clip whose media did not load."""
    from affectverse.training import run as training_run

    model, processor, rows, _ = tiny
    data = [{**r, "task": "emotion", "benchmark": "manifest", "label": json.dumps("happy"), "emotion": "happy", "subtitle": ""} for r in rows]
    result = training_run.generation_accuracy(model, processor, data, {"manifest": ("happy", "sad")}, 3, 2, batch_size=2)
    assert result["n"] == 3 and 0 <= result["accuracy"] <= 2 / 3
    broken = result["examples"][1]
    assert broken["name"] == "broken" and "corrupt.mp4" in broken["error"] and broken["prediction"] is None


# ================================================================================================ progress
def test_progress_logs_every_five_percent_or_thirty_seconds_when_not_a_terminal(caplog):
    now = [0.0]
    progress = Progress(100, "generating", file=io.StringIO(), clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="affectverse.inference.engine"):
        for i in range(9):
            now[0] += 1.0
            progress.update(["ok"] if i != 3 else ["error"])
        assert len(caplog.records) == 1  # 5 of 100 clips
        assert "generating: 5/100 clips (5%), ok 4, error 1, 1.00 clips/s, ETA 00:01:35" in caplog.text
        now[0] += 40.0
        progress.update(["ok"])
        assert len(caplog.records) == 2 and "10/100" in caplog.text  # 10%
        now[0] += 31.0
        progress.update(["ok"])
        assert len(caplog.records) == 3 and "11/100" in caplog.text  # 30 s since the last line


def test_progress_bar_shows_description_and_counts_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    progress = Progress(3, "generating", file=screen)
    progress.update(["ok", "error"])
    progress.update(["ok"])
    progress.close()
    assert "generating" in screen.getvalue() and "ok=2, error=1" in screen.getvalue()


# ================================================================================================ scoring
def test_score_refuses_several_settings_unless_one_is_chosen(tmp_path, capsys):
    """Before: keyed by name only, the last setting of each clip (here V+T) was scored as if it were A+V+T."""
    labels = tmp_path / "label.npz"
    np.savez(labels, test_corpus=np.array({"s1": {"emo": 0, "val": 1.0}, "s2": {"emo": 0, "val": -1.0}},
                                          dtype=object))
    vt = Setting(MODALITIES["vt"], 0.5)
    lines = [{"format": store_module.FORMAT, "version": 1, "run": {}}, {"kind": "setting", **AVT.record()},
             {"kind": "setting", **vt.record()}]
    for name, right, wrong in (("s1", "positive", "negative"), ("s2", "negative", "positive")):
        lines += [{**AVT.record(), "name": name, "benchmark": "mosi", "sentiment": right, "labels": []},
                  {**vt.record(), "name": name, "benchmark": "mosi", "sentiment": wrong, "labels": []},
                  {**AVT.record(), "name": name + "x", "benchmark": "meld", "labels": ["happy"]}]
    preds = tmp_path / "predictions.jsonl"
    preds.write_text("".join(json.dumps(line) + "\n" for line in lines))
    base = ["--benchmark", "mosi", "--labels", str(labels), "--predictions", str(preds)]
    with pytest.raises(SystemExit):
        score_cli.main(base)
    assert "2 settings (modality=avt keep_ratio=1, modality=vt keep_ratio=0.5)" in capsys.readouterr().err
    assert score_cli.main(base + ["--modality", "avt"]) == 0
    assert json.loads(capsys.readouterr().out)["main_score"] == 100.0
    assert score_cli.main(base + ["--modality", "vt", "--keep-ratio", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["main_score"] == 0.0


def test_eval_summary_reads_benchmarks_run_scores(tmp_path):
    """Before: ``affectverse export --eval-summary runs/x/scores.json`` failed with "unknown benchmark 'errors'"."""
    entry = {"task": "emotion", "setting": "A+V+T", "n": 4, "n_errors": 0, "main_metric": "HIT"}
    scores = {"errors": "...", "results": [
        {**entry, "benchmark": "mer2023", "modality": "avt", "keep_ratio": 1.0, "main_score": 70.0},
        {**entry, "benchmark": "mer2023", "modality": "vt", "keep_ratio": 1.0, "main_score": 50.0},
        {**entry, "benchmark": "mer2023", "modality": "avt", "keep_ratio": 0.5, "main_score": 40.0},
        {**entry, "benchmark": "mosi", "modality": "avt", "keep_ratio": 1.0, "main_score": 80.0, "acc2": 81.0},
        {**entry, "benchmark": "manifest", "modality": "avt", "keep_ratio": 1.0, "main_score": 10.0}]}
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    reports = hub.read_eval_summary(tmp_path / "scores.json")
    assert {k: r["main_score"] for k, r in reports.items()} == {"mer2023": 70.0, "mosi": 80.0}
    with pytest.raises(ValueError, match="no scored MER-UniBench benchmark"):
        hub.read_eval_summary({"errors": "", "results": scores["results"][-1:]})
