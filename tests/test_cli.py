"""The `affectverse` command: predict (JSON lines, resume, bad clips, --explain), export (Hub folder, model card,
fresh-process reload with the docs snippet) and push (dry run; HfApi calls against a mock, never the network)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from affectverse import cli, hub, ownership
from affectverse.default.clips import generate_clips, write_bad_media
from affectverse.default.tiny import tiny_config, tiny_processor
from affectverse.inference.engine import Engine, modality_row
from modeling_affectverse import AffectVerseForConditionalGeneration
from processing_affectverse import extract_labels

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 6  # new tokens per answer: enough to compare answers, cheap on 2 cores
SUBTITLE = "I can't believe it."  # the docs snippet's subtitle
SCORES = [
    {"benchmark": "mer2023", "main_metric": "HIT", "main_score": 71.25, "closed_set_weighted_f1": 60.1},
    {"benchmark": "mosi", "main_score": 85.5, "acc2": 85.61},
    {"benchmark": "ovmerdplus", "checkpoints": [], "best": {"main_score": 60.0}},
]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """(folder, model, processor): a tiny random AffectVerse and its processor saved into one folder."""
    torch.manual_seed(0)
    model, processor = AffectVerseForConditionalGeneration(tiny_config()).eval(), tiny_processor()
    folder = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """(good clips, {case: bad media path}): 4 generated clips and the broken files of write_bad_media."""
    root = tmp_path_factory.mktemp("media")
    generate_clips(root / "clips", n_clips=4)
    return sorted((root / "clips" / "video").glob("*.mp4")), write_bad_media(root / "bad")


def read_jsonl(path):
    """The prediction records of a store (header and setting declarations left out)."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [r for r in lines if "setting_id" in r and r.get("kind") != "setting"]


@pytest.fixture(scope="module")
def predictions(tiny_folder, media, tmp_path_factory):
    """The output path and records of one predict run over a folder of 4 clips and 2 bad clips."""
    clips, bad = media
    out = tmp_path_factory.mktemp("pred") / "preds.jsonl"
    rc = cli.main(["predict", str(tiny_folder[0]), str(clips[0].parent), str(bad["no_audio"]), str(bad["corrupt"]),
                   "--out", str(out), "--batch-size", "2", "--max-new-tokens", str(TOKENS), "--sentiment"])
    assert rc == 0
    return out, read_jsonl(out)


@pytest.fixture(scope="module")
def exported(tiny_folder, tmp_path_factory):
    """A folder written by `affectverse export` from the saved tiny model (loaded with trust_remote_code)."""
    work = tmp_path_factory.mktemp("export")
    (work / "scores.json").write_text(json.dumps(SCORES))
    out = work / "hub"
    rc = cli.main(["export", str(tiny_folder[0]), str(out), "--eval-summary", str(work / "scores.json"),
                   "--max-shard-size", "300KB", "--datasets", "mer2023", "mosi"])
    assert rc == 0
    return out


def front_matter(readme: Path) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", readme.read_text(), flags=re.S)
    assert match, "README.md has no YAML front matter"
    return yaml.safe_load(match.group(1))


# ---------------------------------------------------------------------------------------------- predict
def test_find_clips_searches_folders_and_keeps_named_files(tmp_path):
    for name in ("a/x.mp4", "a/b/y.MOV", "a/b/z.avi", "a/notes.txt", "c.mkv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = cli.find_clips([tmp_path / "a", tmp_path / "c.mkv", tmp_path / "missing.mp4", tmp_path / "a/x.mp4"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/b/y.MOV", "a/b/z.avi", "a/x.mp4", "c.mkv", "missing.mp4"]


def test_predict_writes_one_line_per_clip_with_bad_clips_recorded(predictions, media):
    out, records = predictions
    clips, bad = media
    assert [r["path"] for r in records] == [str(p) for p in clips] + [str(bad["no_audio"]), str(bad["corrupt"])]
    for record in records[:4]:
        assert record["status"] == "ok" and record["name"] == Path(record["path"]).stem
        assert record["labels"] == extract_labels(record["answer"])
        assert record["primary"] == (record["labels"][0] if record["labels"] else None)
        assert record["sentiment"] in ("positive", "negative", "neutral")
        assert record["seconds"] > 0 and "belief_attention" not in record
    no_audio, corrupt = records[4:]
    assert no_audio["status"] == corrupt["status"] == "error"
    assert no_audio["error"] == "no audio track" and "corrupt" in corrupt["error"]
    assert no_audio["labels"] == [] and "answer" not in no_audio


def test_predict_resumes_without_loading_the_model(predictions, tiny_folder, media, capsys):
    out, records = predictions
    clips, bad = media
    before = out.read_text()
    with mock.patch.object(cli, "load_model", side_effect=AssertionError("nothing left to predict")):
        assert cli.main(["predict", str(tiny_folder[0]), str(clips[0].parent), str(bad["no_audio"]),
                         str(bad["corrupt"]), "--out", str(out), "--max-new-tokens", str(TOKENS), "--sentiment"]) == 0
    assert out.read_text() == before
    assert "0 predicted, 0 errors, 6 already" in capsys.readouterr().out.splitlines()[-1]


def test_predict_with_other_settings_stops_naming_them_and_new_run_starts_beside(predictions, tiny_folder, media,
                                                                                 caplog):
    """Before: "6 already" and the old answers reused for --max-new-tokens 1 / no --sentiment."""
    out, _ = predictions
    clips, _ = media
    before = out.read_bytes()
    args = ["predict", str(tiny_folder[0]), str(clips[0]), "--out", str(out), "--max-new-tokens", "1"]
    with mock.patch.object(cli, "load_model", side_effect=AssertionError("must stop before loading")):
        assert cli.main(args) == 2
    assert "generation.max_new_tokens: 6 in the file, 1 now" in caplog.text and "sentiment: True" in caplog.text
    assert "--new-run" in caplog.text and out.read_bytes() == before
    assert cli.main(args + ["--new-run"]) == 0
    fresh = out.with_name("preds-2.jsonl")
    assert out.read_bytes() == before and [r["path"] for r in read_jsonl(fresh)] == [str(clips[0])]
    header = json.loads(fresh.read_text().splitlines()[0])
    assert header["run"]["generation"]["max_new_tokens"] == 1 and header["run"]["model"]["fingerprint"]


def test_predict_without_audio_is_a_new_setting_not_the_old_answers(predictions, tiny_folder, media, tmp_path):
    """Before: rerun with --audio none into the same file, predict said "6 already" and kept the A+V answers."""
    clips, bad = media
    out = tmp_path / "preds.jsonl"
    out.write_bytes(predictions[0].read_bytes())
    seen = []

    class FakeEngine(Engine):
        def run(self, jobs):
            for setting, rows in jobs:
                seen.extend(modality_row(r, setting.modality) for r in rows)
                yield setting, rows, [{"status": "ok", "answer": "sad", "seconds": 0.0} for _ in rows]

    with mock.patch.object(cli, "load_model", return_value=(None, None)), mock.patch.object(cli, "Engine", FakeEngine):
        assert cli.main(["predict", str(tiny_folder[0]), str(clips[0].parent), str(bad["no_audio"]),
                         str(bad["corrupt"]), "--out", str(out), "--max-new-tokens", str(TOKENS), "--sentiment",
                         "--audio", "none"]) == 0
    assert len(seen) == 6 and all(r["audio"] is None for r in seen)
    records = read_jsonl(out)
    assert [r["modality"] for r in records] == ["avt"] * 6 + ["vt"] * 6
    assert records[:6] == predictions[1]


def test_export_reads_the_scores_json_of_benchmarks_run(tiny_folder, tmp_path):
    """Before: `affectverse export --eval-summary runs/x/scores.json` failed with "unknown benchmark 'errors'"."""
    scores = {"errors": "a clip that failed to load counts as an empty answer", "results": [
        {"benchmark": "mosi", "task": "sentiment", "modality": "avt", "setting": "A+V+T", "keep_ratio": 1.0,
         "n": 4, "n_errors": 0, "main_metric": "non-zero weighted F1 (WAF)", "main_score": 80.0, "acc2": 81.0},
        {"benchmark": "mosi", "task": "sentiment", "modality": "vt", "setting": "V+T", "keep_ratio": 1.0,
         "n": 4, "n_errors": 0, "main_score": 10.0, "acc2": 11.0}]}
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    assert cli.main(["export", str(tiny_folder[0]), str(tmp_path / "hub"), "--eval-summary",
                     str(tmp_path / "scores.json")]) == 0
    results = front_matter(tmp_path / "hub" / "README.md")["model-index"][0]["results"]
    assert {m["value"] for r in results for m in r["metrics"]} == {80.0, 81.0}


@pytest.mark.parametrize("kind", ["csv", "run_predictions", "broken_middle"])
def test_predict_refuses_a_file_it_did_not_write_and_leaves_it_intact(predictions, tiny_folder, media, tmp_path,
                                                                      caplog, kind):
    """Before: the CSV (121 lines) or a affectverse.evaluation.runner file lost every line predict did not recognise, and a broken
    line in the middle of a predictions file was silently dropped."""
    clips, _ = media
    target = tmp_path / "target.jsonl"
    if kind == "csv":
        target.write_text("name,label\n" + "".join(f"clip_{i},happy\n" for i in range(120)))
    elif kind == "run_predictions":
        target.write_text("".join(json.dumps({"name": f"c{i}", "benchmark": "mer2023", "modality": "avt",
                                              "keep_ratio": 1.0, "status": "ok", "labels": []}) + "\n"
                                  for i in range(22)))
    else:
        lines = predictions[0].read_text().splitlines()
        lines[3] = lines[3][:20]
        target.write_text("\n".join(lines) + "\n")
    before = target.read_bytes()
    with mock.patch.object(cli, "load_model", side_effect=AssertionError("must stop before loading")):
        assert cli.main(["predict", str(tiny_folder[0]), str(clips[0]), "--out", str(target),
                         "--max-new-tokens", str(TOKENS), "--sentiment"]) == 2
    assert target.read_bytes() == before
    assert ("line 4: not a prediction record" if kind == "broken_middle" else "not an AffectVerse predictions file") \
        in caplog.text


def test_predict_passes_subtitles_and_audio_choice(tmp_path, media, tiny_folder):
    clips, _ = media
    (tmp_path / "subs.csv").write_text(f'name,chinese,english\n{clips[0].stem},你好,"Hello, there."\n')
    seen = []

    class FakeEngine(Engine):
        def run(self, jobs):
            for setting, rows in jobs:
                seen.extend(modality_row(r, setting.modality) for r in rows)
                yield setting, rows, [{"status": "ok", "answer": "", "seconds": 0.0} for _ in rows]

    with mock.patch.object(cli, "load_model", return_value=(None, None)), mock.patch.object(cli, "Engine", FakeEngine):
        cli.main(["predict", str(tiny_folder[0]), str(clips[0]), str(clips[1]), "--out", str(tmp_path / "p.jsonl"),
                  "--audio", "none", "--subtitle-file", str(tmp_path / "subs.csv")])
    assert [(r["video"], r["audio"], r["subtitle"]) for r in seen] == [
        (str(clips[0]), None, "Hello, there."), (str(clips[1]), None, "")]
    assert {r["modality"] for r in read_jsonl(tmp_path / "p.jsonl")} == {"vt"}


def test_explain_reports_belief_attention_shares(tiny_folder, media, predictions, tmp_path):
    clips, _ = media
    args = ["predict", str(tiny_folder[0]), str(clips[0]), str(clips[1]), "--batch-size", "2",
            "--max-new-tokens", str(TOKENS), "--explain"]
    assert cli.main(args + ["--out", str(tmp_path / "av.jsonl")]) == 0
    records = read_jsonl(tmp_path / "av.jsonl")
    for record, plain in zip(records, predictions[1]):
        share = record["belief_attention"]
        assert 0 < share["video"] < 1 and share["video"] + share["audio"] == pytest.approx(1, abs=1e-3)
        assert record["answer"] == plain["answer"]  # the explaining forward does not change generation
    assert cli.main(args[:3] + ["--explain", "--audio", "none", "--max-new-tokens", "1",
                                "--out", str(tmp_path / "v.jsonl")]) == 0
    assert read_jsonl(tmp_path / "v.jsonl")[0]["belief_attention"] == {"video": 1.0, "audio": 0.0}


# ---------------------------------------------------------------------------------------------- export
def test_export_writes_a_hub_folder(exported):
    files = {p.name for p in exported.iterdir()}
    assert set(hub.REMOTE_CODE_FILES) | {"README.md", "config.json", "model.safetensors.index.json",
                                         "tokenizer.json", "processor_config.json"} <= files
    assert len([f for f in files if f.endswith(".safetensors")]) > 1 and not any(f.endswith(".bin") for f in files)
    auto_map = json.loads((exported / "config.json").read_text())["auto_map"]
    assert set(auto_map) >= {"AutoConfig", "AutoModelForCausalLM", "AutoModel"}
    assert "AutoProcessor" in json.loads((exported / "processor_config.json").read_text())["auto_map"]


def test_model_card_metadata(exported):
    meta = front_matter(exported / "README.md")
    assert meta["library_name"] == "transformers" and meta["base_model"] == "Qwen/Qwen2.5-Omni-7B"
    assert meta["pipeline_tag"] == "video-text-to-text" and meta["license"] == "apache-2.0"
    assert set(meta["tags"]) >= {"affective-computing", "emotion-recognition", "multimodal", "qwen2.5-omni",
                                 "custom_code"}
    assert meta["datasets"] == ["mer2023", "mosi"]
    results = meta["model-index"][0]["results"]
    got = {(r["dataset"]["name"], m["type"]): m["value"] for r in results for m in r["metrics"]}
    assert got == {("MER2023", "hit"): 71.25, ("MER2023", "f1"): 60.1, ("CMU-MOSI", "f1"): 85.5,
                   ("CMU-MOSI", "accuracy"): 85.61, ("OV-MERD+", "f1"): 60.0}
    assert all(r["task"]["type"] == "video-text-to-text" and r["dataset"]["type"] for r in results)
    parsed = ModelCard.load(exported / "README.md").data  # huggingface_hub reads its model-index back
    assert len(parsed.eval_results) == 5 and parsed.model_name == "AffectVerse"
    body = (exported / "README.md").read_text()
    assert "trust_remote_code=True" in body and "r=16, alpha=32, dropout 0.05" in body and "lr 2e-4" in body


def test_export_for_hub_without_summary_and_with_run_args(tiny_folder, tmp_path):
    _, model, processor = tiny_folder
    run = {"training": {"learning_rate": 2e-4, "num_train_epochs": 3.0}, "data": {"benchmarks": "mer2023, meld"}}
    out = hub.export_for_hub(model, processor, tmp_path / "hub", training_args=run)
    meta = front_matter(out / "README.md")
    assert "model-index" not in meta and "model_name" not in meta and meta["datasets"] == ["mer2023", "meld"]
    assert "`training.learning_rate`" in (out / "README.md").read_text()
    assert (out / "model.safetensors").is_file()  # under 2GB: one file


def test_export_for_hub_merges_a_peft_model(tiny_folder, tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = AffectVerseForConditionalGeneration(tiny_config()).eval()
    target = r"model\.language_model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj"  # as train.py
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=target, modules_to_save=["ewm"]))
    out = hub.export_for_hub(lora, tiny_processor(), tmp_path / "hub")
    saved = load_file(out / "model.safetensors")
    assert not [k for k in saved if "lora" in k or "modules_to_save" in k]
    assert set(saved) == set(load_file(tiny_folder[0] / "model.safetensors"))  # the plain model's keys


def test_export_refuses_a_stock_processor(tiny_folder, tmp_path):
    _, model, processor = tiny_folder
    from transformers import Qwen2_5OmniProcessor

    stock = Qwen2_5OmniProcessor(processor.image_processor, processor.video_processor, processor.feature_extractor,
                                 processor.tokenizer, chat_template=processor.chat_template)
    with pytest.raises(ValueError, match="AffectVerseProcessor"):
        hub.export_for_hub(model, stock, tmp_path / "hub")


def test_eval_summary_forms_and_mean():
    assert hub.read_eval_summary({"CMU-MOSI": 80.0, "OV-MERD+": {"main_score": 60}}) == {
        "mosi": {"main_score": 80.0}, "ovmerdplus": {"main_score": 60}}
    assert set(hub.read_eval_summary({"benchmark": "meld", "main_score": 1.0})) == {"meld"}
    with pytest.raises(ValueError, match="unknown benchmark"):
        hub.read_eval_summary({"imdb": 90})
    results = hub.eval_results({key: {"main_score": 50.0 + i} for i, key in enumerate(hub.MER_UNIBENCH)})
    assert results[-1].dataset_name == "MER-UniBench" and results[-1].metric_value == 54.0


def test_docs_snippet_is_the_card_snippet():
    docs = (ROOT / "docs" / "usage.md").read_text()
    block = re.search(r"## From Python\n\n```python\n(.*?)```", docs, flags=re.S).group(1)
    assert block == hub.USAGE_SNIPPET.format(model="your-name/affectverse-7b")


# The docs snippet, in a process whose working directory is elsewhere and which cannot import the project.
FRESH = textwrap.dedent("""
    import json, sys
    for name in ("modeling_affectverse", "configuration_affectverse", "ewm_affectverse",
                 "processing_affectverse", "benchmarks", "affectverse"):
        sys.modules[name] = None
    snippet, folder, clips, tokens = sys.argv[1], sys.argv[2], sys.argv[3:-1], sys.argv[-1]
    answers = []
    for clip in clips:
        scope = {}
        code = (snippet.replace("your-name/affectverse-7b", folder).replace('"clip.mp4"', repr(clip))
                .replace("max_new_tokens=64", "max_new_tokens=" + tokens))
        exec(code, scope)
        assert type(scope["model"]).__module__.startswith("transformers_modules"), type(scope["model"])
        answers.append(scope["answer"])
    print(json.dumps(answers))
""")


def test_export_reloads_in_a_fresh_process_and_predicts_the_same(exported, tiny_folder, media, tmp_path):
    _, model, processor = tiny_folder
    clips = [str(p) for p in media[0][:2]]
    snippet = hub.USAGE_SNIPPET.format(model="your-name/affectverse-7b")
    assert '"clip.mp4"' in snippet and "max_new_tokens=64" in snippet  # what FRESH replaces
    expected = []
    for clip in clips:
        inputs = processor(video=clip, audio="video", subtitle=SUBTITLE)
        tokens = model.generate(**inputs, max_new_tokens=TOKENS)[:, inputs["input_ids"].shape[1]:]
        expected.append(processor.batch_decode(tokens, skip_special_tokens=True)[0])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", FRESH, snippet, str(exported), *clips, str(TOKENS)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


# ---------------------------------------------------------------------------------------------- push
def test_push_dry_run_lists_files_and_calls_nothing(exported, capsys):
    with mock.patch.object(hub, "HfApi", side_effect=AssertionError("a dry run must not reach the Hub")):
        assert cli.main(["push", str(exported), "me/affectverse", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[-1]: int(line.split()[0].replace(",", "")) for line in lines[:-1]
              if line.split()[0] != "skipped"}
    skipped = [line.split()[1] for line in lines[:-1] if line.split()[0] == "skipped"]
    assert listed == {p.name: p.stat().st_size for p in exported.iterdir() if p.name != ownership.RECORD}
    assert skipped == [ownership.RECORD]  # the folder's own record stays local
    assert lines[-1].startswith(f"affectverse push --dry-run: {len(listed)} files")


def test_push_creates_the_repo_then_uploads(exported):
    with mock.patch.object(hub, "HfApi") as hf_api:
        assert cli.main(["push", str(exported), "me/affectverse", "--private", "--revision", "v1",
                         "--commit-message", "first"]) == 0
    assert hf_api.return_value.method_calls == [
        mock.call.create_repo("me/affectverse", private=True, exist_ok=True, repo_type="model"),
        mock.call.create_branch("me/affectverse", branch="v1", exist_ok=True, repo_type="model"),
        mock.call.upload_folder(repo_id="me/affectverse", folder_path=str(exported), repo_type="model",
                                revision="v1", commit_message="first",
                                allow_patterns=sorted(p.name for p in exported.iterdir() if p.name != ownership.RECORD)),
    ]
    with mock.patch.object(hub, "HfApi") as hf_api:
        cli.main(["push", str(exported), "me/affectverse"])
    assert hf_api.return_value.method_calls[0] == mock.call.create_repo(
        "me/affectverse", private=None, exist_ok=True, repo_type="model")
    assert [c[0] for c in hf_api.return_value.method_calls] == ["create_repo", "upload_folder"]


@pytest.mark.parametrize("fails", [False, True])
def test_a_job_leaves_no_process_group_behind(tmp_path, fails):
    """Under ``accelerate launch`` a command joins a process group; gloo's threads abort an exit that did not destroy
    it (SIGABRT after a finished run), so run_job destroys it whether the job ends well or not."""
    dist = torch.distributed

    def job(_):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        dist.barrier()
        if fails:
            raise ValueError("the job failed")
        return 0

    assert cli.run_job(job, []) == (2 if fails else 0)
    assert not dist.is_initialized()
