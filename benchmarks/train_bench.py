"""Training throughput of AffectVerse against the LoRA-only thinker, side by side on the same batches.

``python -m benchmarks.train_bench`` (tiny preset, CPU, about a minute). Both models share one backbone and one
set of LoRA weights (the language model's q/k/v/o, r=16 as in train.py): AffectVerse (``belief_construction``
from the config, EWM trained) and the stock ``Qwen2_5OmniThinkerForConditionalGeneration`` built around the same
modules, fed the same batches with the ``<|belief|>`` placeholders removed. Each timed step is forward + backward +
AdamW step; the two models alternate step by step (A B A B ...) after a burn-in, so a noisy shared CPU slows both
alike, and the medians are compared. Target: AffectVerse / thinker step time <= 1.6.

Memory: on CUDA the peak allocated memory of each model's steps; on CPU (no allocator statistics) the bytes autograd
saves for backward (activations, parameters excluded), the part that differs between the two models.

``benchmarks/gpu_train_bench.py`` runs the same comparison at 7B dimensions.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

from affectverse.default.tiny import tiny_config
from modeling_affectverse import AffectVerseForConditionalGeneration

LORA_TARGET = r"model\.language_model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj"  # as train.py
PATCH = 14  # vision patch size of Qwen2.5-Omni


# ------------------------------------------------------------------------------------------------------ batches
@dataclass
class SampleShape:
    """One synthetic chat sample: a video of ``video_grids`` temporal grids of ``grid_hw`` patches, audio frames."""

    video_grids: int = 3  # temporal grids (2 frames each)
    grid_hw: int = 16  # patches per side before the 2x2 merge: 16 -> 224 px
    audio_frames: int = 400  # mel frames (100 per second) -> audio_frames / 4 tokens
    text: int = 24  # prompt text tokens after the media
    answer: int = 8  # answer tokens (the labels)


def audio_tokens(frames: int) -> int:
    """Audio placeholders for ``frames`` mel frames (the audio tower's two stride-2 stages)."""
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


def synthetic_batch(config, shapes: list[SampleShape], seed: int = 0, device="cpu") -> dict:
    """A right-padded training batch in the processor's layout: media, <|belief|> groups, prompt, answer."""
    g = torch.Generator().manual_seed(seed)
    vocab = min(config.text_config.vocab_size, 150000)  # below the special tokens of the released vocabulary
    text_ids = lambda n: torch.randint(30, vocab, (n,), generator=g).tolist()  # noqa: E731
    rows, labels = [], []
    for s in shapes:
        first, second = config.belief_split(2)
        video = [config.video_token_id] * (s.video_grids * (s.grid_hw // 2) ** 2)
        audio = [config.audio_token_id] * audio_tokens(s.audio_frames)
        prompt = (text_ids(4) + [config.vision_start_token_id] + video + [config.vision_end_token_id]
                  + [config.audio_start_token_id] + audio + [config.audio_end_token_id]
                  + [config.belief_token_id] * first + text_ids(s.text) + [config.belief_token_id] * second)
        answer = text_ids(s.answer)
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    length = max(map(len, rows))
    pad = config.text_config.pad_token_id or 0
    batch = {
        "input_ids": torch.tensor([r + [pad] * (length - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows]),
        "labels": torch.tensor([lab + [-100] * (length - len(lab)) for lab in labels]),
        "video_grid_thw": torch.tensor([[s.video_grids, s.grid_hw, s.grid_hw] for s in shapes]),
        "pixel_values_videos": torch.randn(sum(s.video_grids * s.grid_hw**2 for s in shapes), 3 * 2 * PATCH * PATCH,
                                           generator=g),
        "video_second_per_grid": torch.full((len(shapes),), 2 / 3),
        "input_features": torch.randn(len(shapes), config.audio_config.num_mel_bins,
                                      max(s.audio_frames for s in shapes), generator=g),
        "feature_attention_mask": torch.tensor([[1] * s.audio_frames + [0] * (max(x.audio_frames for x in shapes)
                                                                            - s.audio_frames) for s in shapes]),
    }
    return {k: v.to(device) for k, v in batch.items()}


def strip_beliefs(batch: dict, belief_id: int, pad_id: int) -> dict:
    """The same batch without <|belief|> placeholders (rows re-packed to the left, right padding)."""
    keep = (batch["input_ids"] != belief_id) & batch["attention_mask"].bool()
    length = int(keep.sum(1).max())
    out = dict(batch)
    for key, fill in (("input_ids", pad_id), ("labels", -100), ("attention_mask", 0)):
        rows = [row[k] for row, k in zip(batch[key], keep)]
        out[key] = torch.stack([torch.cat([r, r.new_full((length - len(r),), fill)]) for r in rows])
    return out


# ------------------------------------------------------------------------------------------------------- models
def build_pair(config, lora_r: int = 16, dtype=torch.float32, device="cpu"):
    """(AffectVerse + LoRA + trainable EWM, stock thinker sharing its LoRA-wrapped backbone and lm_head)."""
    with torch.device(device):
        model = AffectVerseForConditionalGeneration(config).to(dtype)
    lora = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.05, target_modules=LORA_TARGET,
                      modules_to_save=["ewm"] if model.ewm is not None else None)
    peft_model = get_peft_model(model, lora)
    for param in peft_model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    with torch.device("meta"):  # an empty shell: the real modules are the AffectVerse model's
        thinker = Qwen2_5OmniThinkerForConditionalGeneration(config)
    thinker.model, thinker.lm_head = model.model, model.lm_head
    thinker.train()
    return peft_model, thinker


def trainable(module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def saved_activation_bytes(module):
    """A context manager counting the bytes autograd saves for backward (parameters excluded, storages deduped)."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    return hooks, seen


class Runner:
    """One model, its optimizer and its batch; ``step()`` = forward + backward + AdamW step, timed."""

    def __init__(self, name, model, batch, autocast: bool = False):
        self.name, self.model, self.batch = name, model, batch
        self.autocast = autocast  # bf16 autocast on CUDA, as Trainer's --bf16
        self.optimizer = torch.optim.AdamW(trainable(model), lr=1e-4)  # LoRA + EWM, or LoRA only
        self.times, self.memory = [], 0
        self.tokens = int(batch["attention_mask"].sum())

    def _sync(self):
        if self.batch["input_ids"].device.type == "cuda":
            torch.cuda.synchronize()

    def _loss(self):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(**self.batch).loss

    def step(self, record=True) -> float:
        self._sync()
        t0 = time.perf_counter()
        loss = self._loss()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._sync()
        if record:
            self.times.append(time.perf_counter() - t0)
        return loss.item()

    def measure_memory(self):
        """One more step: peak allocated on CUDA, bytes saved for backward on CPU (hooks slow it: not timed)."""
        cuda = self.batch["input_ids"].device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        hooks, seen = saved_activation_bytes(self.model)
        with hooks:
            loss = self._loss()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.memory = torch.cuda.max_memory_allocated() if cuda else sum(seen.values())


def compare(runners: list[Runner], steps: int, warmup: int) -> list[dict]:
    """Burn in, then alternate timed steps; one result dict per runner."""
    for _ in range(warmup):
        for r in runners:
            r.step(record=False)
    for _ in range(steps):
        for r in runners:
            r.step()
    for r in runners:
        r.measure_memory()
    results = []
    for r in runners:
        t = statistics.median(r.times)
        results.append({"name": r.name, "step_s": t, "samples_s": r.batch["input_ids"].shape[0] / t,
                        "tokens_s": r.tokens / t, "tokens": r.tokens, "memory": r.memory})
    return results


def print_table(results: list[dict], memory_label: str, extra: dict | None = None):
    extra = extra or {}
    head = f"{'model':<28}{'step (s)':>10}{'samples/s':>11}{'tokens/s':>11}{memory_label:>22}"
    head += "".join(f"{k:>10}" for k in extra)
    print(head)
    for r in results:
        line = (f"{r['name']:<28}{r['step_s']:>10.4f}{r['samples_s']:>11.2f}{r['tokens_s']:>11.0f}"
                f"{r['memory'] / 2**20:>19.1f} MB")
        line += "".join(f"{values[r['name']]:>10}" for values in extra.values())
        print(line)
    ratio = results[0]["step_s"] / results[1]["step_s"]
    print(f"step-time ratio AffectVerse / LoRA-only thinker: {ratio:.2f} (target <= 1.6)")
    return ratio


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed burn-in steps per model")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--video-grids", type=int, default=5, help="temporal grids per video (3 s at 3 fps ~ 5)")
    parser.add_argument("--audio-frames", type=int, default=300, help="mel frames per clip (100 per second)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    config = tiny_config()
    affectverse, thinker = build_pair(config)
    shapes = [SampleShape(video_grids=args.video_grids, audio_frames=args.audio_frames - 20 * i, text=24 + 4 * i)
              for i in range(args.batch_size)]
    batch = synthetic_batch(config, shapes, seed=args.seed)
    plain = strip_beliefs(batch, config.belief_token_id, config.text_config.pad_token_id)
    runners = [Runner("AffectVerse (LoRA + EWM)", affectverse, batch), Runner("thinker (LoRA only)", thinker, plain)]
    print(f"tiny preset, batch {args.batch_size}, {runners[0].tokens} tokens with beliefs / {runners[1].tokens} "
          f"without, {torch.get_num_threads()} threads, {args.steps} timed steps after {args.warmup} burn-in")
    results = compare(runners, args.steps, args.warmup)
    print_table(results, "activations saved" if batch["input_ids"].device.type == "cpu" else "peak allocated")


if __name__ == "__main__":
    main()
