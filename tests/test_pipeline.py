"""pipeline("emotion-recognition", model=folder, trust_remote_code=True) on a saved tiny AffectVerse folder."""

from __future__ import annotations

import json

import pytest
import torch

from affectverse.default.clips import write_bad_media
from affectverse.default.tiny import tiny_config, tiny_processor
from affectverse.hub import export_for_hub
from modeling_affectverse import AffectVerseForConditionalGeneration
from processing_affectverse import extract_labels


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("checkpoint")
    return export_for_hub(AffectVerseForConditionalGeneration(tiny_config()), tiny_processor(), out)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return {k: str(v) for k, v in write_bad_media(tmp_path_factory.mktemp("media")).items()}


def test_saved_folder_carries_the_pipeline(folder):
    assert (folder / "pipeline_affectverse.py").is_file() and (folder / "media_affectverse.py").is_file()
    assert json.loads((folder / "config.json").read_text())["custom_pipelines"]["emotion-recognition"]["impl"] == \
        "pipeline_affectverse.EmotionRecognitionPipeline"


def test_pipeline_takes_a_path_a_dict_and_a_batched_list(folder, media):
    from transformers import pipeline

    pipe = pipeline("emotion-recognition", model=str(folder), trust_remote_code=True, max_new_tokens=4)
    assert type(pipe).__module__.startswith("transformers_modules") and type(pipe.model).__module__.startswith(
        "transformers_modules")
    one = pipe(media["good"])
    assert set(one) == {"answer", "labels"} and isinstance(one["answer"], str) and isinstance(one["labels"], list)
    inputs = [media["good"], {"video": media["good"], "audio": media["good_wav"], "subtitle": "Oh no, not again."},
              {"audio": media["good_wav"], "subtitle": "Thank you so much."}, media["no_audio"]]
    batched = pipe(inputs, batch_size=2)
    assert len(batched) == 4 and batched[0] == one
    assert batched == [pipe(x) for x in inputs]  # batching changes no answer
    # the same as generate on the processor's batch
    model, proc = pipe.model, pipe.processor
    prompts = proc([{"video": media["good"], "audio": "video"}], training=False)
    tokens = model.generate(**prompts, max_new_tokens=4, do_sample=False)
    new = tokens[:, prompts["input_ids"].shape[1]:]
    assert one["answer"] == proc.batch_decode(new, skip_special_tokens=True)[0].strip()
    with pytest.raises(TypeError, match="input 0"):
        pipe([3])


@pytest.mark.parametrize("answer,labels", [
    ("The character's emotional state is happy.", ["happy"]),
    ("The character's emotional state is worried, sad and angry.", ["worried", "sad", "angry"]),
])
def test_labels_from_the_answer(answer, labels):
    assert extract_labels(answer) == labels


def test_transformers_any_to_any_task_serves_the_folder(folder, media):
    from transformers import pipeline

    pipe = pipeline("any-to-any", model=str(folder), trust_remote_code=True)
    conversation = [{"role": "user", "content": [{"type": "video", "video": media["good"]},
                                                 {"type": "text", "text": "How does the character feel?"}]}]
    out = pipe(text=conversation, max_new_tokens=4, load_audio_from_video=True)
    batch = pipe.processor.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                               load_audio_from_video=True)
    tokens = pipe.model.generate(**batch, max_new_tokens=4, do_sample=False)
    expected = pipe.processor.batch_decode(tokens[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    assert out[0]["generated_text"][-1] == {"role": "assistant", "content": expected}


def test_pipeline_gives_label_scores(folder, media):
    """Issue 14: pipe(clip, labels=[...]) adds each label's probability (summing to 1) and the top label."""
    from transformers import pipeline

    pipe = pipeline("emotion-recognition", model=str(folder), trust_remote_code=True, max_new_tokens=4)
    plain = pipe(media["good"])
    scored = pipe(media["good"], labels=["happy", "sad", "neutral"])
    assert scored["answer"] == plain["answer"] and set(scored["label_scores"]) == {"happy", "sad", "neutral"}
    assert abs(sum(scored["label_scores"].values()) - 1) < 1e-5
    assert scored["label"] == max(scored["label_scores"], key=scored["label_scores"].get)
    both = pipe([media["good"], media["no_audio"]], batch_size=2, labels=["happy", "sad", "neutral"])
    assert both[0]["label_scores"] == pytest.approx(scored["label_scores"], abs=1e-4)
