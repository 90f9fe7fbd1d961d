"""The Trainer subclass that logs the EWM's losses, and the whole run's training loss across resumes."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from affectverse.training.run_folder import explain_disk_full


class AffectVerseTrainer(Trainer):
    """Trainer that logs L_lm, L_img and the per-step imagination cosine next to the total loss.

    The model's ``loss`` is already L_lm + lambda * L_img (Eq. 10) and a per-batch mean; the model declares
    ``accepts_loss_kwargs = False`` so Trainer divides it by the accumulation steps. The extra terms are summed
    over every training micro-batch since the last log, summed across processes and divided by the micro-batch
    count, so they average exactly like Trainer's ``loss``. At evaluation they are dropped (``EVAL_IGNORE_KEYS``)
    and never reach ``compute_metrics``; the eval loss is L_lm at inference conditions (kappa = 1, no dropout).
    """

    EVAL_IGNORE_KEYS = ("lm_loss", "imagination_loss", "imagination_cosine", "belief_attention", "cache",
                        "hidden_states", "labels")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(LogAtCheckpoints)
        steps = self.accelerator.unwrap_model(self.model).config.rollout_steps
        # [micro-batches, sum lm_loss, n with L_img, sum L_img, n with cosine, sum cosine per step (S)]
        self._sums = torch.zeros(5 + steps, dtype=torch.float64, device=self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = model.training
        if training:
            inputs = {**inputs, "output_imagination": True}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if training:
            self._accumulate(outputs)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _accumulate(self, outputs):
        sums = self._sums
        sums[0] += 1
        sums[1] += outputs.lm_loss.detach().double()
        if outputs.imagination_loss is not None:
            sums[2] += 1
            sums[3] += outputs.imagination_loss.detach().double()
        if outputs.imagination_cosine is not None:
            sums[4] += 1
            sums[5:] += outputs.imagination_cosine.detach().double()

    def log(self, logs, start_time=None):
        if "loss" in logs:  # a training log: every process gets here at the same step
            sums = self.accelerator.reduce(self._sums.clone(), reduction="sum")
            self._sums.zero_()
            n, n_img, n_cos = sums[0].item(), sums[2].item(), sums[4].item()
            if n:
                logs["lm_loss"] = round(sums[1].item() / n, 6)
            if n_img:
                logs["imagination_loss"] = round(sums[3].item() / n_img, 6)
            if n_cos:
                for step, value in enumerate(sums[5:].tolist(), 1):
                    logs[f"imagination_cosine_s{step}"] = round(value / n_cos, 6)
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        ignore = list(self.EVAL_IGNORE_KEYS) + list(ignore_keys or [])
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore)

    def _save_checkpoint(self, model, trial):
        folder = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        with explain_disk_full(folder, "saving checkpoint"):
            super()._save_checkpoint(model, trial)


def whole_run_train_loss(log_history: list[dict], session_loss: float, first_step: int, last_step: int) -> float:
    """Mean training loss per optimizer step over the whole run, resumed or not.

    Trainer's ``train_loss`` covers only this call's steps ``(first_step, last_step]``. The log history (restored
    with the checkpoint) gives each logged interval's mean loss: the steps before ``first_step`` come from it (every
    checkpoint step is logged, see :class:`LogAtCheckpoints`, so it covers them all), the others from
    ``session_loss``. Steps an older checkpoint never logged are left out of the mean.
    """
    before, previous = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry and previous < entry["step"] <= first_step:
            before += entry["loss"] * (entry["step"] - previous)
            previous = entry["step"]
    steps = previous + last_step - first_step
    return (before + session_loss * (last_step - first_step)) / steps if steps > 0 else float("nan")


class LogAtCheckpoints(TrainerCallback):
    """Log the training loss at every step that saves a checkpoint, so the checkpoint's log history covers every
    step before it (a resumed run then knows the loss of the whole run)."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            control.should_log = True

    on_epoch_end = on_step_end
