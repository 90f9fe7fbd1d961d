"""train.py --method grpo: trl's GRPOTrainer subclass, the rewards, logging, resuming, the reference policy.

Fast tests run a tiny random AffectVerse on six generated 1-second clips; the slow ones run ``train.py --method grpo``
end to end and two CPU processes through ``accelerate launch``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from trl import GRPOTrainer
from trl.trainer.utils import pad, use_adapter

from affectverse.data.readers import load_manifest
from affectverse.default.clips import generate_clips
from affectverse.default.tiny import tiny_config, tiny_processor
from affectverse.scoring.scores import hit_score, ovmerd_scores
from affectverse.scoring.wheel import EmotionWheel
from affectverse.training import arguments, rewards, run, run_folder
from affectverse.training.arguments import AffectVerseGRPOConfig, ModelArguments
from affectverse.training.grpo import AffectVerseGRPOTrainer, prompt_dataset, reward_curve
from affectverse.training.model import lora_config
from processing_affectverse import AffectVerseCollator
from tests.helpers import StopAt, cpu_run_args, save_tiny_model, tiny_model, trainable, write_mini_wheel

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("angry", "happy", "neutral", "sad")
IM_END = 2  # the tiny tokenizer's <|im_end|> (affectverse/default/tiny.py: TINY_IDS)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpo_clips")
    manifest = generate_clips(folder, n_clips=8, seconds=1.0, size=56, labels=LABELS, test_fraction=0.25)
    return manifest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return EmotionWheel(write_mini_wheel(tmp_path_factory.mktemp("wheel") / "emotion_wheel"))


def grpo_config(out, **kwargs):
    defaults = dict(per_device_train_batch_size=4, num_generations=2, max_completion_length=6, learning_rate=5e-2,
                    beta=0.04, length_budget=4, temperature=0.7,
                    rewards="accuracy=1,answer_format=0.5,length_penalty=0.5")
    return cpu_run_args(AffectVerseGRPOConfig, out, **{**defaults, **kwargs})


def first_token_parity(completion_ids, **kwargs):
    """A test reward that varies between the random tiny model's answers (the real ones are all 0 for them)."""
    return [float(ids[0] % 2) for ids in completion_ids]


def make_trainer(out, manifest, model=None, callbacks=None, **kwargs):
    processor = tiny_processor()
    model = model if model is not None else tiny_model()
    args = grpo_config(out, **kwargs)
    funcs, weights = rewards.build_rewards(args.rewards, {"manifest": LABELS}, [IM_END])
    funcs, args.reward_weights = funcs + [first_token_parity], weights + [1.0]
    train = prompt_dataset(load_manifest(str(manifest), split="train"), processor)
    return AffectVerseGRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=train,
                                  processing_class=processor, callbacks=callbacks,
                                  peft_config=lora_config(model, ModelArguments(), train_ewm=not args.freeze_ewm))


def trl_inputs(prompt_ids, completion_ids, pad_id):
    """Prompt + completion ids and mask as trl builds them: prompts left-padded, completions right-padded."""
    prompts = [torch.tensor(p) for p in prompt_ids]
    completions = [torch.tensor(c) for c in completion_ids]
    ids = torch.cat([pad(prompts, pad_id, "left"), pad(completions, pad_id, "right")], 1)
    mask = torch.cat([pad([torch.ones_like(p) for p in prompts], 0, "left"),
                      pad([torch.ones_like(c) for c in completions], 0, "right")], 1)
    return ids, mask, max(len(c) for c in completion_ids)


# ------------------------------------------------------------------------------------------------- log-probs
def test_the_optimised_log_probs_are_the_served_models_beliefs_included(clips, tmp_path):
    """The log-probs GRPO optimises equal (a) the probabilities generate sampled the rollouts from, and (b) the
    model's own forward on the processor's training batch of the same prompt and answer; beliefs are in both."""
    trainer = make_trainer(tmp_path, clips)
    model, processor = trainer.model, trainer.processing_class
    rows = list(load_manifest(str(clips), split="train"))[:2]
    prompts = [AffectVerseCollator(processor, training=False).sample(r) for r in rows]
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
    assert all(ids.count(tiny_config().belief_token_id) == 4 for ids in prompt_ids)  # N_q = 2 N_b beliefs each

    # (a) rollouts: generate's processed scores (temperature, suppressed special tokens) vs the trainer's log-probs
    batch = trainer._collate(trainer._rows, model)
    torch.manual_seed(1)
    model.eval()
    with torch.no_grad():
        out = model.generate(**batch, generation_config=trainer.generation_config, return_dict_in_generate=True,
                             output_scores=True)
    steps = torch.stack(out.scores, 1).log_softmax(-1)  # (B, T, V)
    sampled = out.sequences[:, batch["input_ids"].shape[1]:]
    completions = [row[:next((i + 1 for i, t in enumerate(row) if t == IM_END), len(row))]
                   for row in sampled.tolist()]
    ids, mask, n = trl_inputs(prompt_ids, completions, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logps, entropy, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, n, compute_entropy=True)
    expected = steps[:, :n].gather(-1, sampled[:, :n, None]).squeeze(-1)
    real = mask[:, -n:].bool()
    assert torch.allclose(logps[real], expected[real], atol=1e-4), (logps, expected)
    assert (entropy[real] > 0).all()

    # (b) a given answer through the processor's training batch and the model's own forward
    answer = "The character's emotional state is happy."
    train_batch = processor.prepare([{**p, "answer": answer} for p in prompts], training=True, padding_side="left")
    labels = train_batch.pop("labels")
    with torch.no_grad():
        logits = model(**train_batch).logits.float() / trainer.temperature
    logits[..., trainer.never_sampled] = torch.finfo(logits.dtype).min  # the tokens a rollout can never sample
    answer_ids = labels[0][labels[0] != -100].tolist()
    own = logits[:, :-1].log_softmax(-1).gather(-1, train_batch["input_ids"][:, 1:, None]).squeeze(-1)
    own = own[:, -len(answer_ids):]
    ids, mask, n = trl_inputs(prompt_ids, [answer_ids] * 2, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, n)
    assert torch.allclose(logps, own, atol=1e-4), (logps, own)

    # the beliefs take part: moving the EWM moves the log-probs; trl's own pass (no media, no EWM) gives others
    with torch.no_grad():
        stock, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, model, ids, mask, n)
        for name, param in model.named_parameters():
            if ".ewm." in name and "modules_to_save" in name:
                param.add_(0.5 * torch.randn_like(param))
        moved, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, n)
    assert not torch.allclose(moved, logps, atol=1e-3)
    assert not torch.allclose(stock, logps, atol=1e-3)


# ------------------------------------------------------------------------------------------------- training
LOGGED = ("reward", "reward_std", "kl", "completions/mean_length", "completions/clipped_ratio",
          "clip_ratio/region_mean", "rewards/accuracy/mean", "rewards/accuracy/std", "rewards/answer_format/mean",
          "rewards/answer_format/std", "rewards/length_penalty/mean", "rewards/length_penalty/std")


@pytest.mark.parametrize("freeze_ewm", [False, True])
def test_steps_log_each_reward_kl_and_lengths_train_lora_and_the_ewm_against_the_adapter_disabled_reference(
        clips, tmp_path, freeze_ewm):
    model = tiny_model()
    start = copy.deepcopy(model).eval()
    trainer = make_trainer(tmp_path, clips, model=model, freeze_ewm=freeze_ewm, max_steps=2)
    peft_model = trainer.model
    assert list(peft_model.peft_config) == ["default"] and trainer.ref_model is None  # no reference copy
    before = trainable(peft_model)
    assert any(".ewm." in n for n in before) != freeze_ewm and any("lora_B" in n for n in before)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 2 and all(key in h for h in logs for key in LOGGED), logs[0].keys()
    after = trainable(peft_model)
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    if not freeze_ewm:
        assert any(not torch.equal(before[n], after[n]) for n in before if ".ewm." in n)
    else:
        start_ewm = dict(start.ewm.named_parameters())
        assert all(torch.equal(p, start_ewm[n.split(".ewm.")[1]])
                   for n, p in peft_model.named_parameters() if ".ewm." in n)

    # the reference (adapter disabled) is the model as loaded; the trained policy has moved away from it
    rows = list(load_manifest(str(clips), split="train"))[:2]
    processor = trainer.processing_class
    prompt_ids, _, _ = trainer._tokenize_prompts([AffectVerseCollator(processor, training=False).sample(r)
                                                  for r in rows])
    answer = processor.tokenizer("The character's emotional state is sad.<|im_end|>")["input_ids"]
    ids, mask, n = trl_inputs(prompt_ids, [answer] * 2, processor.tokenizer.pad_token_id)
    peft_model.eval()
    with torch.no_grad():
        with use_adapter(peft_model, None):
            reference, _, _ = trainer._get_per_token_logps_and_entropies(peft_model, ids, mask, n)
        policy, _, _ = trainer._get_per_token_logps_and_entropies(peft_model, ids, mask, n)
        loaded, _, _ = trainer._get_per_token_logps_and_entropies(start, ids, mask, n)  # the model as loaded
    assert torch.allclose(reference, loaded, atol=1e-5) and not torch.allclose(policy, loaded, atol=1e-3)


def test_a_resumed_run_logs_what_an_uninterrupted_one_does(clips, tmp_path):
    keys = ("reward", "kl", "loss", "completions/mean_length", "rewards/answer_format/mean")

    def run_(out, stop=None, resume=None):
        trainer = make_trainer(out, clips, max_steps=4, save_strategy="steps", save_steps=2,
                               callbacks=[StopAt(stop)] if stop else None)
        trainer.train(resume_from_checkpoint=resume)
        return [[h[k] for k in keys] for h in trainer.state.log_history if "reward" in h]

    full = run_(tmp_path / "full")
    assert len(run_(tmp_path / "split", stop=2)) == 2
    checkpoint = run_folder.last_complete_checkpoint(tmp_path / "split")
    assert checkpoint == str(tmp_path / "split" / "checkpoint-2")
    resumed = run_(tmp_path / "split", resume=checkpoint)
    assert len(full) == 4 and np.allclose(resumed, full, atol=1e-5), (resumed, full)


def test_the_imagination_loss_joins_the_grpo_loss_with_its_weight(clips, tmp_path):
    trainer = make_trainer(tmp_path, clips, imagination_weight=0.5, max_steps=1)
    trainer.train()
    (log,) = [h for h in trainer.state.log_history if "reward" in h]
    assert log["imagination_loss"] > 0


# ------------------------------------------------------------------------------------------------- rewards
def test_the_emotion_wheel_reward_is_the_mer_unibench_score_of_each_answer(wheel):
    answers = ["The character's emotional state is joyful.", "The character's emotional state is sad.",
               "The character's emotional state is surprised.", "The character's emotional state is happy.",
               "The character's emotional state is happy, angry.", "The character's emotional state is calm."]
    tasks = ["emotion", "emotion", "emotion", "emotion", "openset", "emotion"]
    truth = ["happy", "happy", "surprise", "neutral", None, "sad"]
    sets = [None, None, None, None, ["happy", "sad"], None]
    got = rewards.emotion_wheel(answers, tasks, truth, sets, wheel=wheel)
    # joyful is happy's; sad misses; surprise: wheels 1-4 hit, wheel 5 skips it; neutral maps nowhere: no reward;
    # {happy, angry} vs {happy, sad}: P = R = 1/2 in every wheel; calm is not in the wheel: a miss
    assert got == [1.0, 0.0, 1.0, None, pytest.approx(0.5), 0.0]
    # the per-answer HIT averages to the benchmark's HIT wherever every wheel scores each answer
    preds = [["joyful"], ["sad"], ["happy", "sad"]]
    assert np.mean(rewards.emotion_wheel([f"[{', '.join(p)}]" for p in preds], ["emotion"] * 3, ["happy"] * 3,
                                         [None] * 3, wheel=wheel)) == pytest.approx(
        hit_score(["happy"] * 3, preds, wheel)["hit"])
    assert ovmerd_scores([["happy", "sad"]], [["happy", "angry"]], wheel)["f1"] == pytest.approx(got[4])


def test_the_wheel_level_of_the_reward_chooses_the_ring_that_must_match(tmp_path):
    """One branch happy > {joy > joyful, content > pleased}: joyful and pleased share their level-1 root only."""
    import pandas as pd

    words = ["happy", "joy", "joyful", "content", "pleased"]
    pd.DataFrame({"name": words, "format": ["[]"] * 5}).to_csv(tmp_path / "format.csv", index=False)
    runs = {f"{kind}_run{r}": (words if kind == "word" else ["[]"] * 5) for r in range(1, 9) for kind in
            ("word", "synonym")}
    pd.DataFrame(runs).to_excel(tmp_path / "synonym.xlsx", index=False)
    for w in range(1, 6):
        pd.DataFrame([("happy", "joy", "joyful"), ("happy", "content", "pleased")],
                     columns=["level1", "level2", "level3"]).to_excel(tmp_path / f"wheel{w}.xlsx", index=False)
    wheel = EmotionWheel(tmp_path)
    assert [wheel.cluster("joyful", 1, level) for level in (1, 2, 3)] == ["happy", "joy", "joyful"]
    assert [wheel.cluster("happy", 1, level) for level in (1, 2, 3)] == ["happy"] * 3  # a root stays itself
    answers = ["[pleased]", "[joyful]"]
    assert [rewards.emotion_wheel(answers, ["emotion"] * 2, ["joyful"] * 2, [None] * 2, wheel=wheel, level=level)
            for level in (1, 2, 3)] == [[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]]


def test_accuracy_format_and_length_rewards():
    answers = ["The character's emotional state is happy.", "The character's emotional state is joy.",
               "The character's emotional state is sad.", "happy", "The character's emotional state is"]
    ids = [[5, 6, IM_END], [5, IM_END], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [5, 6, 7, 8, 9, 10], [5, 6]]
    tasks = ["emotion"] * 4 + ["sentiment"]
    got = rewards.accuracy(answers, tasks, ["happy", "happy", "happy", "happy", None], ["m"] * 5,
                           label_sets={"m": LABELS})
    assert got == [1.0, 1.0, 0.0, 1.0, None]  # joy is happy's alias; a sentiment row has no closed set
    assert rewards.answer_format(answers, ids, eos_token_ids=[IM_END]) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert rewards.length_penalty(ids, budget=4) == [0.0, 0.0, -1.0, -0.5, 0.0]


@pytest.mark.parametrize("text, message", [
    ("accuracy=1,bogus=2", "unknown reward 'bogus'"), ("accuracy=x", "not a number"),
    ("accuracy=1,accuracy=2", "twice"), ("", "is empty"),
])
def test_bad_rewards_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        rewards.parse_rewards(text)


def test_the_wheel_reward_needs_a_wheel_and_vllm_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs --emotion_wheel"):
        rewards.build_rewards("emotion_wheel=1", {}, [IM_END])
    with pytest.raises(ValueError, match="needs --emotion_wheel"):  # before anything loads
        grpo_config(tmp_path, rewards="emotion_wheel=1,accuracy=1")
    with pytest.raises(ValueError, match="vLLM would sample .* without the Emotion World Module"):
        grpo_config(tmp_path, use_vllm=True)


def test_reward_curve_compares_the_first_and_last_fifth():
    history = [{"reward": float(i)} for i in range(10)] + [{"loss": 1.0}]
    assert reward_curve(history) == {"steps_logged": 10, "first_fifth": 0.5, "last_fifth": 8.5}


# ------------------------------------------------------------------------------------------------- command
def test_method_grpo_dispatches_and_its_run_record_differs_from_sfts(tmp_path, capsys):
    assert run.method_of(["--x", "1", "--method", "grpo"]) == "grpo" and run.method_of(["--method=sft"]) == "sft"
    with pytest.raises(SystemExit):
        run.main(["--method", "grpo", "--help"])
    assert "--num_generations" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--method 'ppo'"):
        ModelArguments(method="ppo")
    # an sft folder refuses a grpo run (and a record written before --method existed counts as sft)
    sft = arguments.run_record(ModelArguments(), arguments.DataArguments(),
                               arguments.AffectVerseTrainingArguments(output_dir=str(tmp_path)))
    del sft["model"]["method"]
    (tmp_path / "run_args.json").write_text(json.dumps(sft))
    grpo = arguments.run_record(ModelArguments(method="grpo"), arguments.DataArguments(), grpo_config(tmp_path),
                                arguments.GRPO_RUN_KEYS)
    with pytest.raises(ValueError, match="model.method: 'sft' -> 'grpo'"):
        run_folder.check_output_dir(grpo_config(tmp_path), grpo)


# ------------------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_train_py_method_grpo_end_to_end(clips, tmp_path):
    save_tiny_model(tmp_path / "start")
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train.py"), "--method", "grpo", "--model_name_or_path",
               str(tmp_path / "start"), "--manifest", str(clips), "--output_dir", str(out), "--max_steps", "2",
               "--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "6",
               "--save_steps", "1", "--held_out_samples", "2", "--emotion_wheel", str(tmp_path / "wheel"),
               "--generate_wheel", "--length_budget", "4"]
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "rewards/emotion_wheel/mean" in output and "'kl'" in output and "GRPO: trained AffectVerse" in output
    results = json.loads((out / "results.json").read_text())
    assert results["held_out_before"]["n"] == 2 and "reward" in results["held_out_after"]
    assert (out / "checkpoint-2").is_dir() and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert "GRPO" in (out / "README.md").read_text()
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "resuming from" in again.stderr, again.stderr[-3000:]
    other = subprocess.run(command + ["--beta", "0.1"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert other.returncode != 0 and "holds a different run" in other.stderr


DDP_WORKER = """
import sys, torch
sys.path.insert(0, {root!r})
from tests.test_grpo import make_trainer
trainer = make_trainer({out!r}, {manifest!r}, max_steps=2, ddp_backend="gloo")
trainer.train()
assert trainer.args.world_size == 2, trainer.args.world_size
logs = [h for h in trainer.state.log_history if "reward" in h]
assert len(logs) == 2 and all("kl" in h and "rewards/accuracy/mean" in h for h in logs), logs
rank = trainer.args.process_index
weights = {{n: p.detach() for n, p in trainer.model.named_parameters() if p.requires_grad}}
torch.save({{"weights": weights, "logs": logs}}, f"{out}/rank{{rank}}.pt")
trainer.accelerator.end_training()  # as a script should: gloo aborts an exit that skips it
"""


@pytest.mark.slow
def test_two_cpu_processes_through_accelerate_end_identical(clips, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER.format(root=str(ROOT), out=str(tmp_path), manifest=str(clips)))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               "29519", str(script)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{i}.pt") for i in range(2)]
    timing = ("step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second")
    logs = [[{k: v for k, v in h.items() if k not in timing} for h in r["logs"]] for r in ranks]
    assert logs[0] == logs[1], logs  # rewards, KL, lengths and clip fractions are gathered over both processes
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), name
    assert any(".ewm." in n for n in ranks[0]["weights"])
    # train.py --method grpo itself under two processes: held-out rewards on the main one, export after both
    save_tiny_model(tmp_path / "start")
    out = tmp_path / "run"
    train = command[:-1] + [str(ROOT / "train.py"), "--method", "grpo", "--model_name_or_path", str(tmp_path / "start"),
                            "--manifest", str(clips), "--output_dir", str(out), "--max_steps", "2",
                            "--per_device_train_batch_size", "2", "--num_generations", "2", "--max_completion_length",
                            "6", "--held_out_samples", "2", "--rewards", "accuracy=1,length_penalty=1",
                            "--ddp_backend", "gloo"]
    result = subprocess.run(train, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert (out / "model.safetensors").is_file() and results["held_out_after"]["n"] == 2
