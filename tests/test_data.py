"""Dataset readers: real MER-UniBench label/subtitle files from ../shared, and small hand-made layouts."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from affectverse.data.readers import (
    FEATURES,
    decode_label,
    label_value,
    load_benchmark,
    load_manifest,
    load_meld_original,
    load_mmsa,
    merge_benchmarks,
    parse_word_list,
)
from tests.helpers import SHARED

LABELS = SHARED / "merunibench" / "labels"
needs_shared = pytest.mark.skipif(not LABELS.is_dir(), reason=f"{LABELS} not found (a user's clone has no ../shared)")

SHIPPED = {"mer2023": "mer2023-dataset-process", "meld": "meld-process", "mosi": "cmumosi-process", "sims": "sims-process"}
MOSI_FIRST_TEST = ["k5Y_838nuGo_1", "k5Y_838nuGo_2"]


@pytest.fixture(scope="module")
def shipped_root(tmp_path_factory):
    """A packaged-layout root: the shared label and subtitle files linked in, placeholder media for two MOSI clips."""
    if not LABELS.is_dir():
        pytest.skip(f"{LABELS} not found")
    root = tmp_path_factory.mktemp("merunibench")
    for folder in SHIPPED.values():
        (root / folder).mkdir()
        for src in (LABELS / folder).iterdir():
            os.symlink(src, root / folder / src.name)
    for sub in ("subvideo", "subaudio"):
        (root / "cmumosi-process" / sub).mkdir()
    for name in MOSI_FIRST_TEST:
        (root / "cmumosi-process" / "subvideo" / f"{name}.mp4").touch()
        (root / "cmumosi-process" / "subaudio" / f"{name}.wav").touch()
    return root


def write_label_npz(path: Path, **corpora):
    """Write a label file in the packaged format: each key a 0-d object array holding a dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: np.array(v, dtype=object) for k, v in corpora.items()})


def write_subtitles(path: Path, names, column="english"):
    """A subtitle CSV with ``name, chinese, <column>``; the second name's cell in ``column`` is empty."""
    df = pd.DataFrame({"name": list(names), "chinese": "中文"})
    df[column] = ["" if i == 1 else f"line {n}" for i, n in enumerate(names)]
    df.to_csv(path, index=False)


# ----------------------------------------------------------------------------- real files


@needs_shared
@pytest.mark.parametrize("name,size", [("mer2023", 411), ("meld", 2610), ("mosi", 686), ("sims", 457)])
def test_test_split_sizes_match_merunibench(shipped_root, name, size):
    ds = load_benchmark(name, shipped_root)
    assert len(ds) == size
    assert set(ds.column_names) >= set(FEATURES)
    assert set(ds["split"]) == {"test"} and set(ds["benchmark"]) == {name}


@needs_shared
def test_label_types_and_values(shipped_root):
    meld = load_benchmark("meld", shipped_root)
    assert meld[0]["name"] == "test_dia0_utt0" and decode_label(meld[0]["label"]) == "surprise"  # int 6
    assert {decode_label(x) for x in meld["label"]} <= {"anger", "joy", "sadness", "neutral", "disgust", "fear", "surprise"}
    mer = load_benchmark("mer2023", shipped_root)
    assert {decode_label(x) for x in mer["label"]} == {"neutral", "angry", "happy", "sad", "worried", "surprise"}
    for name, bound in (("mosi", 3.0), ("sims", 1.0)):
        ds = load_benchmark(name, shipped_root)
        values = [decode_label(x) for x in ds["label"]]
        assert all(isinstance(v, float) and -bound <= v <= bound for v in values)
        assert set(ds["task"]) == {"sentiment"}
    assert decode_label(load_benchmark("mosi", shipped_root)[0]["label"]) == -1.6


@needs_shared
def test_train_and_val_splits(shipped_root):
    assert len(load_benchmark("meld", shipped_root, "train")) == 9989
    assert len(load_benchmark("meld", shipped_root, "val")) == 1109
    assert len(load_benchmark("mosi", shipped_root, "val")) == 229
    assert len(load_benchmark("mer2023", shipped_root, "train")) == 3373
    with pytest.raises(ValueError, match="no split 'val'"):
        load_benchmark("mer2023", shipped_root, "val")


@needs_shared
def test_subtitles_joined_and_empty_cells_become_empty_strings(shipped_root):
    df = pd.read_csv(LABELS / SHIPPED["mer2023"] / "transcription-engchi-polish.csv")
    empty = set(df.loc[df["english"].isna(), "name"])
    text = dict(zip(df["name"], df["english"]))
    for split in ("train", "test"):
        ds = load_benchmark("mer2023", shipped_root, split)
        for name, subtitle in zip(ds["name"], ds["subtitle"]):
            assert subtitle == ("" if name in empty else text[name])
    assert empty & set(load_benchmark("mer2023", shipped_root, "train")["name"])


@needs_shared
def test_media_paths_and_check_media(shipped_root):
    ds = load_benchmark("mosi", shipped_root)
    folder = shipped_root / "cmumosi-process"
    assert ds[0]["video"] == str(folder / "subvideo" / f"{MOSI_FIRST_TEST[0]}.mp4")
    assert ds[0]["audio"] == str(folder / "subaudio" / f"{MOSI_FIRST_TEST[0]}.wav")
    with pytest.raises(FileNotFoundError, match=r"1368 media files missing"):
        load_benchmark("mosi", shipped_root, check_media=True)
    # the benchmark folder itself is accepted as root
    assert load_benchmark("mosi", folder)[0]["video"] == ds[0]["video"]


def test_errors_name_root_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_benchmark("mosi", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"cmumosei-process/label\.npz"):
        load_benchmark("mosei", tmp_path)
    write_label_npz(tmp_path / "sims-process" / "label.npz", train_corpus={"video_0001_0001": {"emo": 0, "val": 0.2}})
    with pytest.raises(KeyError, match=r"label\.npz: no key 'test_corpus'"):
        load_benchmark("sims", tmp_path)
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("affwild", tmp_path)


# ----------------------------------------------------------------------------- hand-made layouts


def test_iemocap_session5_rule(tmp_path):
    corpus = {"Ses01F_impro01_F000": {"emo": 0, "val": -10}, "Ses04M_script01_M002": {"emo": 1, "val": -10},
              "Ses05F_script03_1_F033": {"emo": 3, "val": -10}, "Ses05M_impro02_M010": {"emo": 2, "val": -10}}
    folder = tmp_path / "iemocap-process"
    write_label_npz(folder / "label_4way.npz", whole_corpus=corpus)
    write_subtitles(folder / "transcription-engchi-polish.csv", corpus)
    test, train = load_benchmark("IEMOCAPFour", tmp_path), load_benchmark("iemocap", tmp_path, "train")
    assert test["name"] == ["Ses05F_script03_1_F033", "Ses05M_impro02_M010"]
    assert [decode_label(x) for x in test["label"]] == ["anger", "neutral"]
    assert [decode_label(x) for x in train["label"]] == ["happy", "sad"]
    assert test[0]["video"] == str(folder / "subvideo-tgt" / "Ses05F_script03_1_F033.avi")
    assert train["subtitle"] == ["line Ses01F_impro01_F000", ""] and test[1]["subtitle"] == "line Ses05M_impro02_M010"


def test_ovmerdplus_lists(tmp_path):
    folder = tmp_path / "ovmerdplus-process"
    folder.mkdir()
    pd.DataFrame({"name": ["a", "b", "c"], "openset": ["[worried, sad]", "['happy']", "[]"]}).to_csv(folder / "ovlabel.csv", index=False)
    pd.DataFrame({"name": ["a", "b", "c"], "sentence": ["hi", "", "yo"]}).to_csv(folder / "subtitle_eng.csv", index=False)
    ds = load_benchmark("ovmerdplus", tmp_path)
    assert [decode_label(x) for x in ds["label"]] == [["worried", "sad"], ["happy"], ["neutral"]]
    assert ds["subtitle"] == ["hi", "", "yo"] and set(ds["task"]) == {"openset"}
    with pytest.raises(ValueError, match="no split 'train'"):
        load_benchmark("ovmerdplus", tmp_path, "train")


@pytest.mark.parametrize("name,folder,video_dir,audio_dir,key", [
    ("mer2024", "mer2024-dataset-process", "video", "audio", "test1_corpus"),
    ("mosei", "cmumosei-process", "subvideo_new", "subaudio", "test_corpus"),
    ("simsv2", "simsv2-process", "video_new", "audio", "test_corpus"),
])
def test_unshipped_layouts(tmp_path, name, folder, video_dir, audio_dir, key):
    sentiment = name != "mer2024"
    corpus = {f"s{i}": {"emo": 0 if sentiment else "happy", "val": 0.5 * i} for i in range(3)}
    write_label_npz(tmp_path / folder / ("label.npz" if sentiment else "label-6way.npz"), **{key: corpus})
    subtitle_file, column = ("transcription-engchi-polish.csv", "english") if sentiment else ("transcription_merge.csv", "chinese")
    write_subtitles(tmp_path / folder / subtitle_file, corpus, column)
    (tmp_path / folder / video_dir).mkdir()
    (tmp_path / folder / video_dir / "s2.avi").touch()  # an .avi is found when no .mp4 exists
    ds = load_benchmark(name, tmp_path)
    assert len(ds) == 3
    assert ds[0]["video"] == str(tmp_path / folder / video_dir / "s0.mp4")
    assert ds[2]["video"] == str(tmp_path / folder / video_dir / "s2.avi")
    assert ds[0]["audio"] == str(tmp_path / folder / audio_dir / "s0.wav")
    assert [decode_label(x) for x in ds["label"]] == ([0.0, 0.5, 1.0] if sentiment else ["happy"] * 3)
    assert ds["subtitle"][:2] == ["line s0", ""]


def _three_sources(tmp_path, openset: str, manifest_text: str) -> list:
    """An OV-MERD+ clip labelled ``openset``, a CH-SIMS clip of valence -0.4 and a manifest, loaded."""
    folder = tmp_path / "ovmerdplus-process"
    folder.mkdir()
    pd.DataFrame({"name": ["a"], "openset": [openset]}).to_csv(folder / "ovlabel.csv", index=False)
    pd.DataFrame({"name": ["a"], "sentence": ["hi"]}).to_csv(folder / "subtitle_eng.csv", index=False)
    write_label_npz(tmp_path / "sims-process" / "label.npz", test_corpus={"v_1": {"emo": 0, "val": -0.4}})
    write_subtitles(tmp_path / "sims-process" / "transcription-engchi-polish.csv", ["v_1"])
    manifest = tmp_path / "m.csv"
    manifest.write_text(manifest_text)
    return [load_benchmark("ovmerdplus", tmp_path), load_benchmark("sims", tmp_path), load_manifest(manifest)]


def test_merge_benchmarks_keeps_types_decodable(tmp_path):
    merged = merge_benchmarks(_three_sources(tmp_path, "[calm]", "video,label,split,extra\nx.mp4,happy,test,1\n"))
    assert merged.column_names == list(FEATURES)
    assert [decode_label(x) for x in merged["label"]] == [["calm"], -0.4, "happy"]
    assert merged["task"] == ["openset", "sentiment", "emotion"]
    with pytest.raises(ValueError, match="no datasets"):
        merge_benchmarks([])


def test_typed_label_columns_merge_and_read_directly(tmp_path):
    """An emotion-word, a valence and a label-list column, None where they do not apply, through a merge."""
    merged = merge_benchmarks(_three_sources(tmp_path, "[calm, tired]", "video,label,split\nx.mp4,happy,test\n"))
    assert merged["emotion"] == [None, None, "happy"]
    assert merged["valence"] == [None, -0.4, None]
    assert merged["labels"] == [["calm", "tired"], None, None]
    assert (merged.features["valence"].dtype, merged.features["labels"].feature.dtype) == ("float64", "string")
    assert [label_value(r) for r in merged] == [["calm", "tired"], -0.4, "happy"]
    assert label_value({"name": "old", "label": '"sad"'}) == "sad"  # a row from before the typed columns
    old = merged.remove_columns(["emotion", "valence", "labels"])  # a dataset saved before them still merges
    assert merge_benchmarks([old])["labels"] == merged["labels"]
    with pytest.raises(KeyError, match="'x' has no label column"):
        label_value({"name": "x"})


def test_parse_word_list():
    assert parse_word_list("[worried, sad]") == ["worried", "sad"]
    assert parse_word_list("['a', \"b\"]") == ["a", "b"]
    assert parse_word_list("a，b") == ["a", "b"]
    assert parse_word_list("[]") == []


# ----------------------------------------------------------------------------- manifests and original releases


def test_manifest_csv_and_jsonl(tmp_path):
    (tmp_path / "m.csv").write_text(
        "video,audio,subtitle,label,split\n"
        "clips/a.mp4,wav/a.wav,hello,happy,train\n"
        "clips/b.mp4,,,-1.5,test\n"
        "/abs/c.mp4,,\"x, y\",\"[sad, calm]\",train\n"
    )
    ds = load_manifest(tmp_path / "m.csv")
    assert ds["video"] == [str(tmp_path / "clips/a.mp4"), str(tmp_path / "clips/b.mp4"), "/abs/c.mp4"]
    assert ds["audio"] == [str(tmp_path / "wav/a.wav"), "", ""]
    assert ds["name"] == ["a", "b", "c"] and ds["subtitle"] == ["hello", "", "x, y"]
    assert [decode_label(x) for x in ds["label"]] == ["happy", -1.5, ["sad", "calm"]]
    assert ds["task"] == ["emotion", "sentiment", "openset"]
    assert len(load_manifest(tmp_path / "m.csv", split="train")) == 2

    records = [{"video": "a.mp4", "audio": "", "subtitle": "hi", "label": ["joy"], "split": "val", "name": "n1"},
               {"video": "b.mp4", "label": 0.5, "split": "val", "task": "sentiment", "speaker": {"id": 3}}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    ds = load_manifest(tmp_path / "m.jsonl")
    assert ds["name"] == ["n1", "b"] and [decode_label(x) for x in ds["label"]] == [["joy"], 0.5]
    assert ds["speaker"] == ["", '{"id": 3}']

    (tmp_path / "m2.csv").write_text("video,label,split,task,note\na.mp4,calm,test,openset\nb.mp4,sad,test\n")
    ds = load_manifest(tmp_path / "m2.csv")
    assert [decode_label(x) for x in ds["label"]] == [["calm"], "sad"] and ds["task"] == ["openset", "emotion"]
    assert ds["note"] == ["", ""]
    (tmp_path / "m3.csv").write_text("video,label,split\na.mp4,calm,test,extra\n")
    with pytest.raises(ValueError, match=r"m3\.csv, line 2, more fields than the header"):
        load_manifest(tmp_path / "m3.csv")

    with pytest.raises(FileNotFoundError, match=r"2 media files missing"):
        load_manifest(tmp_path / "m.jsonl", check_media=True)


@pytest.mark.parametrize("body,line,field", [
    ("video,label,split\na.mp4,happy,train\nb.mp4,,train\n", 3, "label"),
    ("video,label,split\na.mp4,happy,train\nb.mp4,sad,training\n", 3, "split"),
    ("video,label,split\n,happy,train\n", 2, "video"),
    ("video,label,split,task\na.mp4,happy,train,sentiment\n", 2, "label"),
    ("video,label,split,task\na.mp4,happy,train,mood\n", 2, "task"),
])
def test_manifest_bad_row_names_file_line_and_field(tmp_path, body, line, field):
    (tmp_path / "bad.csv").write_text(body)
    with pytest.raises(ValueError, match=rf"bad\.csv, line {line}, field '{field}'"):
        load_manifest(tmp_path / "bad.csv")


def test_manifest_bad_json_and_missing_column(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"video": "a.mp4", "label": "x", "split": "test"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "nolabel.csv").write_text("video,split\na.mp4,test\n")
    with pytest.raises(ValueError, match=r"nolabel\.csv: no column 'label'"):
        load_manifest(tmp_path / "nolabel.csv")


def test_meld_original(tmp_path):
    columns = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
               "Season", "Episode", "StartTime", "EndTime"]
    rows = [[1, "Oh my God!", "Monica", "Surprise", "positive", 0, 0, 3, 19, "0:0:1,0", "0:0:2,0"],
            [2, "Whatever.", "Ross", "neutral", "neutral", 0, 1, 3, 19, "0:0:3,0", "0:0:4,0"]]
    pd.DataFrame(rows, columns=columns).to_csv(tmp_path / "dev_sent_emo.csv", index=False)
    ds = load_meld_original(tmp_path, "dev")
    assert ds["name"] == ["val_dia0_utt0", "val_dia0_utt1"] and set(ds["split"]) == {"val"}
    assert [decode_label(x) for x in ds["label"]] == ["surprise", "neutral"]
    assert ds[0]["video"] == str(tmp_path / "dev_splits_complete" / "dia0_utt0.mp4") and ds[0]["audio"] == ""
    assert ds["subtitle"] == ["Oh my God!", "Whatever."]
    with pytest.raises(FileNotFoundError, match="test_sent_emo.csv"):
        load_meld_original(tmp_path, "test")


def test_mmsa_label_csv(tmp_path):
    pd.DataFrame({
        "mode": ["train", "valid", "test", "test"], "label": ["0.8", "-0.2", "-1.0", "0.0"],
        "clip_id": ["0001", "0002", "0003", "0010"], "text": ["a", "b", "c", ""],
        "video_id": ["video_0001"] * 4, "annotation": ["Positive", "Negative", "Negative", "Neutral"],
        "label_T": ["0"] * 4, "label_A": ["0"] * 4, "label_V": ["0"] * 4,
    }).to_csv(tmp_path / "label.csv", index=False)
    ds = load_mmsa(tmp_path, "test", "SIMS")
    assert ds["name"] == ["video_0001_0003", "video_0001_0010"] and set(ds["benchmark"]) == {"sims"}
    assert [decode_label(x) for x in ds["label"]] == [-1.0, 0.0] and ds["subtitle"] == ["c", ""]
    assert ds[0]["video"] == str(tmp_path / "Raw" / "video_0001" / "0003.mp4")
    val = load_mmsa(tmp_path, "val", "sims")
    assert val["name"] == ["video_0001_0002"] and val["split"] == ["val"]
    (tmp_path / "label.csv").write_text("video_id,clip_id,text,label,mode\nv,1,t,high,test\n")
    with pytest.raises(ValueError, match=r"label\.csv, line 2, field 'label'"):
        load_mmsa(tmp_path, "test", "mosi")
