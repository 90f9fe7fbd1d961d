"""Fine-tune AffectVerse (arXiv 2605.19950, Appendix A.3): LoRA on the thinker's language model + the full EWM.

``python train.py`` with no arguments runs the embedded default (``TINY_TRAINING_ARGS``, ``TINY_DATA_ARGS`` in
:mod:`affectverse.training.arguments`): a tiny random AffectVerse (``affectverse/default/tiny.py``) on synthetic clips
(``affectverse/default/clips.py``, generated into ``data/tiny_clips`` if absent), under a minute on an idle 2-core
CPU. A real run names a checkpoint and data:

    accelerate launch --config_file configs/accelerate_deepspeed_zero2.yaml train.py \\
        --model_name_or_path /models/Qwen2.5-Omni-7B --benchmarks mer2023,mer2024,meld,iemocap,mosi,mosei,sims,simsv2 \\
        --data_root /data/merunibench --output_dir outputs/affectverse-7b

Every other default is the paper's recipe (A.3): LoRA r=16, alpha=32, dropout 0.05 on the language model's
q/k/v/o projections; the EWM fully trained; everything else frozen; AdamW, lr 2e-4, cosine with 3% linear
warm-up, weight decay 0.01, 4 per device x 8 accumulation steps, 3 epochs, bf16 where the GPU has it, max length
1024. ``python train.py --help`` lists every option. The script reads top to bottom: arguments, checks of the
inputs (all before any training), data, model, the Trainer, training, evaluation, export.

Before any model loads, a pre-flight check (``affectverse/training/preflight.py``) probes every sample's video/audio
and measures its text against ``--max_length``; bad samples stop the run, listed with file and reason, or with
``--skip_bad_samples`` leave every split and are recorded in ``bad_samples.jsonl``.

Output folder: ``run_args.json`` (what makes this run this run; a second launch with the same arguments resumes
from the newest complete checkpoint, different arguments are refused), ``checkpoint-N/`` (Trainer checkpoints: LoRA
adapter and EWM weights in ``adapter_model.safetensors``, optimizer, scheduler, RNG states), the merged model at the
top level (LoRA folded in; ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``) with the processor
files and the model card ``README.md``, ``adapter/`` (LoRA + EWM weights alone, for ``PeftModel.from_pretrained``),
``results.json`` (written once training finished, whatever fails after), ``preflight_cache.json`` and
``bad_samples.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import transformers
from transformers import HfArgumentParser

from affectverse import hub
from affectverse.training import grpo
from affectverse.training.arguments import (
    TINY_DATA_ARGS,
    TINY_GRPO_ARGS,
    TINY_GRPO_START,
    TINY_GRPO_START_ARGS,
    TINY_TRAINING_ARGS,
    AffectVerseTrainingArguments,
    DataArguments,
    ModelArguments,
)
from affectverse.training.data import prepare_run_data
from affectverse.training.export import card_base_model, card_facts, export
from affectverse.training.generation import generation_accuracy
from affectverse.training.model import add_lora, load_model
from affectverse.training.run_folder import checkpoints, write_results, write_run_args
from affectverse.training.trainer import AffectVerseTrainer, whole_run_train_loss
from processing_affectverse import AffectVerseCollator

logger = logging.getLogger("train")


def given_options(argv) -> set[str]:
    return {a.split("=")[0] for a in argv if a.startswith("--")}


def method_of(argv) -> str:
    """The value of ``--method`` in ``argv`` (sft when absent; ModelArguments checks it)."""
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    return "sft"


def grpo_args(argv: list) -> list:
    """The arguments of a GRPO run; without ``--model_name_or_path`` the embedded default's (``TINY_GRPO_ARGS``),
    whose starting model is a one-epoch sft run of the tiny preset, trained once into ``TINY_GRPO_START``."""
    given = given_options(argv)
    if "--model_name_or_path" in given or "--help" in given:
        return argv
    if not (Path(TINY_GRPO_START) / "model.safetensors").is_file():
        logger.info("embedded default: training the starting model of the GRPO run (one sft epoch) into %s",
                    TINY_GRPO_START)
        main(TINY_GRPO_START_ARGS)
    data = [] if given & {"--manifest", "--benchmarks"} else TINY_DATA_ARGS
    return TINY_GRPO_ARGS + ["--model_name_or_path", TINY_GRPO_START] + data + argv


def parse_args(argv=None):
    """(ModelArguments, DataArguments, AffectVerseTrainingArguments); the tiny preset's defaults without a model."""
    argv = sys.argv[1:] if argv is None else list(argv)
    given = given_options(argv)
    if "--model_name_or_path" not in given:
        argv = TINY_TRAINING_ARGS + ([] if given & {"--manifest", "--benchmarks"} else TINY_DATA_ARGS) + argv
    prog = "train.py" if Path(sys.argv[0]).name == "train.py" else "affectverse train"
    parser = HfArgumentParser((ModelArguments, DataArguments, AffectVerseTrainingArguments), prog=prog,
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if method_of(argv) == "grpo":  # reinforcement fine-tuning: affectverse/training/grpo.py
        return grpo.main(grpo_args(argv))
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    t0 = time.time()
    out, is_main = Path(training_args.output_dir), training_args.process_index == 0

    # 1. Inputs, all checked before anything heavy is loaded (affectverse.training.data.prepare_run_data): output
    #    folder, checkpoint files, data, processor, then every sample's media and text (the pre-flight check).
    record, resume, train_ds, eval_ds, label_sets, processor, n_bad = prepare_run_data(model_args, data_args,
                                                                                       training_args)
    logger.info("data: %d train / %s eval samples; closed label sets %s", len(train_ds),
                len(eval_ds) if eval_ds is not None else 0, label_sets)

    # 2. Model: AffectVerse + LoRA on the language model's q/k/v/o + the full EWM; the rest frozen.
    model, processor = load_model(model_args, data_args, training_args, processor)
    model = add_lora(model, model_args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)

    # 3. Train.
    collator = AffectVerseCollator(processor, training=True,
                                   on_error="skip" if data_args.skip_bad_samples else "raise")
    trainer = AffectVerseTrainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                                 data_collator=collator, processing_class=processor)
    if is_main:  # the model loaded: the run's own files may be written now
        write_run_args(out, record, training_args, resume)
    if resume:
        logger.info("resuming from %s", resume)
    first_step = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"] if resume else 0
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(train_result.metrics)
    metrics["train_loss_this_call"] = metrics.get("train_loss")
    metrics["train_loss"] = whole_run_train_loss(trainer.state.log_history, train_result.training_loss, first_step,
                                                 trainer.state.global_step)
    results = {"train": metrics, "bad_samples": n_bad}
    if is_main:  # from here on results.json always exists; each later stage adds to it
        write_results(out, results)

    # 4. Evaluate (eval loss on the held-out split), export (merged model, processor, adapter, model card), then
    #    greedy-generation accuracy on the merged model. A failing stage is recorded and the next ones still run.
    failed = []

    def attempt(stage, run):
        try:
            return run()
        except Exception as err:  # noqa: BLE001 - recorded, reported, re-raised at the end
            logger.exception("%s failed", stage)
            results.setdefault("errors", {})[stage] = f"{type(err).__name__}: {err}"
            failed.append((stage, err))
            return None

    if eval_ds is not None:
        results["eval"] = attempt("eval", trainer.evaluate)

    def facts():
        return card_facts(results, model_args, data_args, trainer.state, len(train_ds), eval_ds, n_bad)

    merged = None
    if training_args.export_merged:
        merged = attempt("export", lambda: export(trainer, processor, model_args, data_args, out, record, facts()))
    if eval_ds is not None and training_args.generation_eval_samples > 0 and trainer.is_world_process_zero():
        model = merged if merged is not None else trainer.accelerator.unwrap_model(trainer.model)
        results["generation"] = attempt("generation accuracy", lambda: generation_accuracy(
            model, processor, eval_ds, label_sets, training_args.generation_eval_samples,
            training_args.generation_max_new_tokens, training_args.per_device_eval_batch_size))
        if merged is not None:  # the card gains the accuracy
            attempt("model card", lambda: hub.model_card(
                merged, training_args=record, base_model=card_base_model(model_args),
                datasets=hub.card_datasets(record), run=facts()).save(out / "README.md"))
    if trainer.is_world_process_zero():
        write_results(out, results)
        summarize(facts(), out, time.time() - t0, merged is not None)
    if failed:
        stage, err = failed[0]
        raise RuntimeError(f"{', '.join(s for s, _ in failed)} failed after training (results.json records the "
                           f"rest; the checkpoints are intact): {stage}: {err}") from err
    return results


def summarize(run: dict, out: Path, seconds: float, exported: bool):
    """Print what the run did (``card_facts``, as the model card says it) and where it wrote."""
    lines = [f"Trained AffectVerse in {seconds / 60:.1f} min.", *hub.run_lines(run)]
    if run.get("bad_samples"):
        lines.append(f"The bad samples are listed in {out / 'bad_samples.jsonl'}.")
    lines.append(f"Wrote to {out.resolve()}:")
    if exported:
        lines.append("  merged model + processor + model card README.md "
                     "(AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True))")
        lines.append(f"  {out / 'adapter'}: LoRA adapter + EWM weights (PeftModel.from_pretrained)")
    lines.append(f"  checkpoints: {', '.join(p.name for p in checkpoints(out)) or 'none'}; "
                 "results.json, run_args.json")
    print("\n".join(lines))
