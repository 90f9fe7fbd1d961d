"""Reinforcement fine-tuning with trl's GRPO on the emotion-wheel reward: ``train.py --method grpo``.

AffectGPT-R1 (arXiv 2508.01318) trains on the emotion-wheel metrics as the reward with GRPO; this runs that recipe on
AffectVerse through a narrow subclass of trl 1.16's ``GRPOTrainer``. trl forwards only image tensors to the model
(no ``input_features``, ``feature_attention_mask``, ``pixel_values_videos``, ``video_grid_thw``), and its log-prob
pass calls the language model directly (a fused LM head on ``model.base_model``), which would skip the Emotion World
Module: the policy optimised would not be the model served. :class:`AffectVerseGRPOTrainer` keeps each rollout's
processor encoding (ids with the belief placeholders and the audio/video tensors) beside it, and overrides:

- ``_tokenize_prompts``: the prompts are processor samples; each is encoded once by ``AffectVerseProcessor.encode``
  (the length rule, the belief placeholders), even when the group repeats it ``num_generations`` times;
- ``_generate_single_turn``: rollouts through the model's own ``generate`` (beliefs built on the prompt's first pass)
  on the collated encodings, in eval mode as served;
- ``_get_per_token_logps_and_entropies``: the model's own forward on prompt + completion with the same audio/video,
  so beliefs enter the policy, old-policy and reference log-probs alike (reference: the adapter-disabled model);
- ``_generate_and_score_completions`` / ``compute_loss``: carry the encodings with the rollouts through trl's
  shuffle and split (a list per row), and optionally add the imagination loss;
- ``create_model_card`` (the export writes the card) and ``_save_checkpoint`` (a full disk is named).

Everything else (advantages, the clipped objective, KL, logging, resuming, several processes) is trl's.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import HfArgumentParser
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import RepeatSampler

from affectverse import hub
from affectverse.default.wheel import write_mini_wheel
from affectverse.inference.engine import to_device
from affectverse.scoring.wheel import load_wheel
from affectverse.training.arguments import (
    GRPO_RUN_KEYS,
    AffectVerseGRPOConfig,
    DataArguments,
    ModelArguments,
)
from affectverse.training.data import prepare_run_data
from affectverse.training.export import card_facts, export
from affectverse.training.generation import greedy_answers
from affectverse.training.model import keep_trainable_fp32, load_model, lora_config
from affectverse.training.rewards import build_rewards
from affectverse.training.run_folder import (
    explain_disk_full,
    write_results,
    write_run_args,
)
from affectverse.training.trainer import whole_run_train_loss
from processing_affectverse import AffectVerseCollator

logger = logging.getLogger("train")


class EpochRepeatSampler(RepeatSampler):
    """trl's RepeatSampler whose shuffle of epoch ``e`` is drawn from ``seed + e`` (Trainer calls ``set_epoch``): trl's
    draws every epoch from one generator, which a resumed run restarts, so after a resume the prompts of a later epoch
    would differ from an uninterrupted run's."""

    def set_epoch(self, epoch: int):
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed + epoch)


class AffectVerseGRPOTrainer(GRPOTrainer):
    """trl's GRPOTrainer whose rollouts and log-probs go through AffectVerse's forward, beliefs included.

    Dataset rows need a ``prompt`` column holding a processor sample (``{"video", "audio", "subtitle", "question",
    "name"}``, see ``processing_affectverse``) and the columns the rewards read (``task``, ``emotion``, ...).
    ``processing_class`` is the run's ``AffectVerseProcessor``. ``args`` is an ``AffectVerseGRPOConfig`` (or a
    ``GRPOConfig``; then no imagination loss).
    """

    def __init__(self, *args, **kwargs):
        config = kwargs.get("args")
        if config is not None and (config.use_vllm or config.use_transformers_continuous_batching):
            raise ValueError("use_vllm / use_transformers_continuous_batching are refused: both generate from token "
                             "ids alone, without the Emotion World Module's beliefs or the audio/video, so the "
                             "rollouts would not be this model's")
        self._rows = None  # processor encodings of the rows the next generation or log-prob pass works on
        super().__init__(*args, **kwargs)
        keep_trainable_fp32(self.model)  # peft's copy of the EWM keeps the backbone's dtype
        # An answer is text ended by an end-of-turn token. A sampled special token would break the log-prob pass (a
        # media or belief placeholder without its features, a <|audio_bos|> that get_rope_index reads as a block):
        # rollouts never sample one, and the log-probs are those of the same restricted distribution.
        config = self.accelerator.unwrap_model(self.model).config
        special = {i for i, token in self.processing_class.tokenizer.added_tokens_decoder.items() if token.special}
        special |= {config.image_token_id, config.video_token_id, config.audio_token_id, config.belief_token_id}
        self.never_sampled = sorted(special - set(self.eos_token_ids))
        self.generation_config.suppress_tokens = self.generation_kwargs["suppress_tokens"] = self.never_sampled

    def _get_train_sampler(self, dataset=None):
        return EpochRepeatSampler(data_source=dataset if dataset is not None else self.train_dataset,
                                  mini_repeat_count=self.num_generations,
                                  batch_size=self.args.generation_batch_size // self.num_generations,
                                  repeat_count=self.num_iterations * self.args.steps_per_generation,
                                  shuffle=self.shuffle_dataset, seed=self.args.seed)

    # -- rollouts --------------------------------------------------------------------------------------------------
    def _tokenize_prompts(self, prompts: list):
        encoded, rows = {}, []
        for i, sample in enumerate(prompts):
            key = json.dumps(sample, sort_keys=True, default=str)
            if key not in encoded:  # a group repeats its prompt num_generations times: decode its media once
                encoded[key] = self.processing_class.encode(sample, training=False, index=i)
            rows.append(encoded[key])
        self._rows = rows
        return [list(row.input_ids) for row in rows], None, {}

    def _collate(self, rows, model):
        """The left-padded processor batch of ``rows`` on ``model``'s device (media in its dtype)."""
        return to_device(self.processing_class.collate(rows, padding_side="left"), self.accelerator.unwrap_model(model))

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        batch = self._collate(self._rows, self.model)
        with (unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                          gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                          generation_kwargs=self.generation_kwargs,
                                          gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs)
              as model, torch.no_grad(), self._dist.summon_full_params(self.model_wrapped, recurse=False)):
            training = model.training
            model.eval()  # as served: generate then reuses the prompt pass that built the beliefs
            try:
                sequences = model.generate(**batch, generation_config=self.generation_config)
            finally:
                model.train(training)
        eos = set(self.eos_token_ids)
        completions = []
        for row in sequences[:, batch["input_ids"].shape[1]:].tolist():
            end = next((i + 1 for i, token in enumerate(row) if token in eos), len(row))
            completions.append(row[:end])  # up to and with the first end-of-turn token, as trl cuts them
        return completions, None

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        output["rows"] = self._rows  # one encoding per row: trl's shuffle and split move it with its rollout
        return output

    # -- log-probs -------------------------------------------------------------------------------------------------
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **image_inputs):
        """Log-probs `(B, C)` of the last ``logits_to_keep`` tokens (the completion) under AffectVerse's own forward
        with the rows' audio/video, beliefs injected (trl's fused head would call the bare language model)."""
        rows = self._rows
        if rows is None or len(rows) != input_ids.shape[0]:
            raise RuntimeError(f"{0 if rows is None else len(rows)} processor encodings for {input_ids.shape[0]} "
                               "sequences: the rollouts lost their media")
        batch_size = batch_size or input_ids.shape[0]
        logps, entropies = [], []
        for start in range(0, input_ids.shape[0], batch_size):
            media = self._collate(rows[start:start + batch_size], model)
            media = {k: v for k, v in media.items() if k not in ("input_ids", "attention_mask")}
            ids = input_ids[start:start + batch_size]
            with self.accelerator.autocast():
                out = model(input_ids=ids, attention_mask=attention_mask[start:start + batch_size], **media,
                            logits_to_keep=logits_to_keep + 1, use_cache=False)
            logits = out.logits[:, :-1].float() / self.temperature  # (b, C, V): position t predicts token t + 1
            # as the rollouts sample (suppress_tokens); finite, so padding (a special token) gives no inf - inf
            logits[..., self.never_sampled] = torch.finfo(logits.dtype).min
            log_probs = logits.log_softmax(-1)
            real = attention_mask[start:start + batch_size, -logits_to_keep:]  # (b, C): 0 after the completion
            logps.append(log_probs.gather(-1, ids[:, -logits_to_keep:, None]).squeeze(-1) * real)
            if compute_entropy:
                entropies.append(-(log_probs.exp() * log_probs).sum(-1) * real)
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._rows = inputs["rows"]
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        weight = getattr(self.args, "imagination_weight", 0.0)
        if weight and model.training:
            loss = loss + weight * self._imagination_loss(model, inputs) / self.current_gradient_accumulation_steps
        return loss

    def _imagination_loss(self, model, inputs):
        """L_img (Eq. 21) of the rollouts' clips: one training-mode forward with the temporal split (the completion
        stands in as the answer; its LM loss is not used)."""
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :inputs["prompt_ids"].shape[1]] = -100
        media = {k: v for k, v in self._collate(self._rows, model).items() if k not in ("input_ids", "attention_mask")}
        with self.accelerator.autocast():
            out = model(input_ids=ids, attention_mask=mask, labels=labels, **media)
        loss = out.imagination_loss if out.imagination_loss is not None else ids.new_zeros((), dtype=torch.float32)
        self._metrics["train"]["imagination_loss"].append(self.accelerator.gather(loss.detach()).mean().item())
        return loss

    # -- run folder ------------------------------------------------------------------------------------------------
    def create_model_card(self, *args, **kwargs):
        """No trl card in the run folder: the export writes the model card, true to the run."""

    def _save_checkpoint(self, model, trial):
        folder = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        with explain_disk_full(folder, "saving checkpoint"):
            super()._save_checkpoint(model, trial)


# ----------------------------------------------------------------------------------------------------- the run
def prompt_dataset(dataset, processor):
    """``dataset`` with a ``prompt`` column: each row's processor sample (what the collator would encode)."""
    sample = AffectVerseCollator(processor, training=False).sample
    return dataset.map(lambda row: {"prompt": sample(row)})


def reward_means(funcs, weights, rows: list[dict], answers: list[str], tokenizer, eos_id: int,
                 max_new_tokens: int) -> dict:
    """Each reward's mean over ``rows`` (where it applies) for the given answers, and the weighted total.

    The answers come decoded; their token ids are re-tokenized, ending with ``eos_id`` unless the answer filled the
    whole budget (then it was cut)."""
    ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    ids = [t if len(t) >= max_new_tokens else t + [eos_id] for t in ids]
    columns = {k: [row.get(k) for row in rows] for k in rows[0]} if rows else {}
    columns.pop("prompt", None)
    out, total = {}, np.zeros(len(rows))
    for func, weight in zip(funcs, weights):
        name = getattr(func, "func", func).__name__
        values = np.array([np.nan if v is None else v for v in func(prompts=[r.get("prompt") for r in rows],
                                                                    completions=answers, completion_ids=ids,
                                                                    **columns)], dtype=float)
        out[name] = None if np.isnan(values).all() else float(np.nanmean(values))
        total += weight * np.nan_to_num(values)
    out["reward"] = float(total.mean()) if len(rows) else None
    return out


def held_out(model, processor, funcs, weights, rows, args, label_sets) -> dict | None:
    """Greedy answers of the held-out ``rows``: each reward's mean, the weighted total and closed-set accuracy."""
    if not rows:
        return None
    results = greedy_answers(model, processor, rows, args.max_completion_length, args.per_device_eval_batch_size)
    answers = [r.get("answer", "") if r["status"] == "ok" else "" for r in results]
    tokenizer = processor.tokenizer
    scores = reward_means(funcs, weights, rows, answers, tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"),
                          args.max_completion_length)
    accuracy = scores.get("accuracy")
    closed = [r for r in rows if r["task"] == "emotion" and r["benchmark"] in label_sets]
    sets = {tuple(label_sets[r["benchmark"]]) for r in closed}
    return {"n": len(rows), **scores,
            "generation": {"accuracy": accuracy, "n": len(closed), "label_set": list(sets.pop()) if len(sets) == 1
                           else None} if accuracy is not None else None,
            "examples": [{"name": r["name"], "answer": a} for r, a in zip(rows[:6], answers)]}


def reward_curve(log_history: list[dict]) -> dict | None:
    """The training reward (mean of the sampled groups) of the first and the last fifth of the logged steps."""
    rewards = [h["reward"] for h in log_history if h.get("reward") is not None]
    if len(rewards) < 5:
        return None
    fifth = len(rewards) // 5
    return {"steps_logged": len(rewards), "first_fifth": float(np.mean(rewards[:fifth])),
            "last_fifth": float(np.mean(rewards[-fifth:]))}


def parse_args(argv=None):
    """(ModelArguments, DataArguments, AffectVerseGRPOConfig) of ``train.py --method grpo``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, AffectVerseGRPOConfig),
                              prog="train.py --method grpo", description=__doc__.splitlines()[0])
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    if model_args.model_name_or_path is None:
        raise ValueError("--method grpo starts from a model: pass --model_name_or_path (an AffectVerse folder, "
                         "typically an sft run's output)")
    return model_args, data_args, args


def emotion_wheel(args):
    """The rewards' emotion wheel (None without ``--emotion_wheel``); ``--generate_wheel`` writes the mini one first."""
    if args.emotion_wheel and args.generate_wheel and not Path(args.emotion_wheel).exists() and args.process_index == 0:
        write_mini_wheel(args.emotion_wheel)
    args.distributed_state.wait_for_everyone()
    return load_wheel(args.emotion_wheel) if args.emotion_wheel else None


def main(argv=None):
    model_args, data_args, args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    t0, out, is_main = time.time(), Path(args.output_dir), args.process_index == 0

    # 1. Inputs, checked before anything heavy loads (as sft: affectverse.training.data.prepare_run_data); the emotion
    #    wheel, GRPO's own, is written and read once the output folder passed its check, before the data loads.
    wheel = []
    record, resume, train_ds, eval_ds, label_sets, processor, n_bad = prepare_run_data(
        model_args, data_args, args, GRPO_RUN_KEYS, before_data=lambda: wheel.append(emotion_wheel(args)))
    eos_ids = {processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.eos_token_id} - {None}
    funcs, weights = build_rewards(args.rewards, label_sets, eos_ids, wheel[0], args.wheel_level, args.length_budget)
    args.reward_weights = weights
    logger.info("data: %d train / %s eval samples; rewards %s", len(train_ds),
                len(eval_ds) if eval_ds is not None else 0, args.rewards)

    # 2. Model: the starting AffectVerse; trl wraps it with LoRA (+ the EWM unless --freeze_ewm). The reference policy
    #    is the same model with the adapter disabled.
    model, processor = load_model(model_args, data_args, args, processor)
    trainer = AffectVerseGRPOTrainer(model=model, reward_funcs=funcs, args=args,
                                     train_dataset=prompt_dataset(train_ds, processor), processing_class=processor,
                                     peft_config=lora_config(model, model_args, train_ewm=not args.freeze_ewm))
    results = {"bad_samples": n_bad}
    rows = [r for r in eval_ds if r["task"] in ("emotion", "openset")][:args.held_out_samples] \
        if eval_ds is not None and args.held_out_samples > 0 else []
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if rows and is_main and not resume:
        results["held_out_before"] = held_out(policy, processor, funcs, weights, rows, args, label_sets)
        logger.info("held-out before GRPO: %s", {k: v for k, v in results["held_out_before"].items()
                                                  if k not in ("examples", "generation")})
    if is_main:
        write_run_args(out, record, args, resume)
        if resume and (out / "results.json").is_file():  # the first launch measured the starting model
            results["held_out_before"] = json.loads((out / "results.json").read_text()).get("held_out_before")

    # 3. Train.
    if resume:
        logger.info("resuming from %s", resume)
    first_step = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"] if resume else 0
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(train_result.metrics)
    metrics["train_loss"] = whole_run_train_loss(trainer.state.log_history, train_result.training_loss, first_step,
                                                 trainer.state.global_step)
    results.update(train=metrics, curve=reward_curve(trainer.state.log_history))
    if is_main:
        write_results(out, results)

    # 4. Held-out rewards after training, export (merged model, adapter, model card).
    if rows and is_main:
        results["held_out_after"] = held_out(policy, processor, funcs, weights, rows, args, label_sets)
        results["generation"] = (results["held_out_after"] or {}).get("generation")
    facts = {**card_facts(results, model_args, data_args, trainer.state, len(train_ds), eval_ds, n_bad),
             "method": "grpo", "rewards": args.rewards, "curve": results["curve"],
             "held_out": {k: {m: v for m, v in (results.get(f"held_out_{k}") or {}).items()
                              if m not in ("examples", "generation")} for k in ("before", "after")}}
    if args.export_merged:
        export(trainer, processor, model_args, data_args, out, record, facts)
    if trainer.is_world_process_zero():
        write_results(out, results)
        print("\n".join([f"GRPO: trained AffectVerse in {(time.time() - t0) / 60:.1f} min.", *hub.run_lines(facts),
                         f"Wrote to {out.resolve()} (results.json, run_args.json"
                         + (", the merged model, adapter/)" if args.export_merged else ")")]))
    return results


__all__ = ["AffectVerseGRPOTrainer", "main"]
