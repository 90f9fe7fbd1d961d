"""AffectVerse vs the LoRA-only thinker at 7B dimensions: step time, tokens/s, peak memory and MFU on one GPU.

``python -m benchmarks.gpu_train_bench`` builds ``AffectVerseConfig()`` (Qwen2.5-Omni-7B thinker dimensions, the
paper's EWM; the vision tower at the released width, see ``RELEASED_VISION``) with random weights directly on the GPU
in bf16 (no checkpoint needed), LoRA r=16 on the language
model's q/k/v/o, the EWM trainable in fp32, and times forward + backward + AdamW under bf16 autocast for a batch of
4 samples x 1024 tokens (video 224x224, audio, subtitle-length text, an answer), the two models alternating step by
step as in ``benchmarks/train_bench.py``. About 3 minutes on one H100 (mostly building the random 8.9B model);
``--tiny`` runs the same code on the tiny preset on a CPU in seconds.

MFU = counted FLOPs / step time / peak dense bf16 FLOP/s (``--peak-tflops``, 989 for H100/H200 SXM). Counted per
sample of T tokens: a language-model forward is 2*N*T + 2*layers*T^2*d (causal attention) plus 2*V*d*T for the LM
head; backward through frozen weights computes input gradients only (one forward's worth again; LoRA adds little);
the vision/audio towers run forward only (no gradients reach them). AffectVerse adds its no-grad prefix pass
(forward, no LM head) over the tokens up to the last audio/video token; its second pass is counted at full length,
although in training kappa ~ U[0.7, 1) removes ~15% of the audio/video tokens (a slight overcount). EWM FLOPs are
ignored (~25M parameters on a few hundred tokens).
"""

from __future__ import annotations

import argparse
import time

import torch

from affectverse.default.tiny import tiny_config
from benchmarks.train_bench import Runner, SampleShape, build_pair, compare, print_table, strip_beliefs, synthetic_batch
from configuration_affectverse import AffectVerseConfig

# transformers' Qwen2.5-Omni vision defaults are 3584 wide (a 3.1B-parameter tower); the released checkpoint's vision
# tower is 1280 wide (0.67B; 8.9B parameters in the whole thinker), so the benchmark sets the released width.
RELEASED_VISION = {"hidden_size": 1280}


def fit_shape(config, seq_len: int, video_grids: int, grid_hw: int, audio_frames: int, answer: int) -> SampleShape:
    """A SampleShape whose text length brings one sample (belief tokens included) to ``seq_len`` tokens."""
    probe = SampleShape(video_grids=video_grids, grid_hw=grid_hw, audio_frames=audio_frames, text=0, answer=answer)
    base = synthetic_batch(config, [probe])["input_ids"].shape[1]
    if base > seq_len:
        raise ValueError(f"media and answer alone take {base} tokens > --seq-len {seq_len}")
    probe.text = seq_len - base
    return probe


def count_flops(thinker, config, batch: dict, with_prefix_pass: bool) -> float:
    """Training FLOPs of one step (see the module docstring); ``thinker`` is the Qwen2_5OmniThinkerModel."""
    lm = thinker.language_model
    cfg = lm.config
    layers_params = sum(p.numel() for n, p in lm.named_parameters() if "lora_" not in n and "embed_tokens" not in n)
    head = cfg.vocab_size * cfg.hidden_size
    mask = batch["attention_mask"].bool()
    ids = batch["input_ids"]
    flops = 0.0
    for row, keep in zip(ids, mask):
        t = int(keep.sum())
        fwd = 2 * layers_params * t + 2 * cfg.num_hidden_layers * t * t * cfg.hidden_size + 2 * head * t
        flops += 2 * fwd  # forward + input-gradient backward
        if with_prefix_pass:
            media = (row == config.video_token_id) | (row == config.audio_token_id)
            p = int(media.nonzero().max()) + 1 if media.any() else 0
            flops += 2 * layers_params * p + 2 * cfg.num_hidden_layers * p * p * cfg.hidden_size
    vis = sum(p.numel() for p in thinker.visual.parameters())
    aud = sum(p.numel() for p in thinker.audio_tower.parameters())
    flops += 2 * vis * batch["pixel_values_videos"].shape[0]
    flops += 2 * aud * int(batch["feature_attention_mask"].sum()) // 2  # the conv stem halves the frame rate
    return flops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny preset on the CPU in fp32 (a smoke test)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed burn-in steps per model")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per sample, belief tokens included")
    parser.add_argument("--video-grids", type=int, default=6, help="temporal grids (2 frames each): 4 s at 3 fps")
    parser.add_argument("--audio-frames", type=int, default=400, help="mel frames (100 per second)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="non-reentrant activation checkpointing")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU, for MFU")
    args = parser.parse_args(argv)

    t_build = time.perf_counter()
    if args.tiny:
        config, device, dtype = tiny_config(), torch.device("cpu"), torch.float32
        seq_len, steps, warmup = min(args.seq_len, 256), min(args.steps, 3), min(args.warmup, 1)
        video_grids, audio_frames = 2, 200
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny for the CPU smoke test")
        config, device, dtype = AffectVerseConfig(vision_config=RELEASED_VISION), torch.device("cuda"), torch.bfloat16
        seq_len, steps, warmup, video_grids, audio_frames = args.seq_len, args.steps, args.warmup, args.video_grids, \
            args.audio_frames
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build the random weights directly in bf16 on the GPU
    try:
        affectverse, thinker = build_pair(config, dtype=dtype, device=device)
    finally:
        torch.set_default_dtype(default_dtype)
    if args.gradient_checkpointing:
        for m in (affectverse.base_model.model, thinker):
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    t_build = time.perf_counter() - t_build

    shape = fit_shape(config, seq_len, video_grids, 16, audio_frames, answer=16)
    batch = synthetic_batch(config, [shape] * args.batch_size, device=device)
    batch["pixel_values_videos"] = batch["pixel_values_videos"].to(dtype)
    batch["input_features"] = batch["input_features"].to(dtype)
    plain = strip_beliefs(batch, config.belief_token_id, config.text_config.pad_token_id or 0)
    autocast = device.type == "cuda" and dtype == torch.bfloat16
    runners = [Runner("AffectVerse (LoRA + EWM)", affectverse, batch, autocast=autocast),
               Runner("thinker (LoRA only)", thinker, plain, autocast=autocast)]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    n_params = sum(p.numel() for p in affectverse.parameters())
    length = batch["input_ids"].shape[1]
    print(f"{'tiny preset' if args.tiny else '7B dimensions'} on {name}: {n_params / 1e6:,.1f}M parameters built in "
          f"{t_build:.0f} s; batch {args.batch_size} x {length} tokens ({runners[0].tokens} in all, "
          f"{runners[1].tokens} without beliefs), {steps} timed steps after {warmup} burn-in")
    results = compare(runners, steps, warmup)
    flops = [count_flops(thinker.model, config, batch, True), count_flops(thinker.model, config, plain, False)]
    mfu = {r["name"]: f"{100 * f / r['step_s'] / (args.peak_tflops * 1e12):.1f}%" for r, f in zip(results, flops)}
    tflops = {r["name"]: f"{f / r['step_s'] / 1e12:.1f}" for r, f in zip(results, flops)}
    print_table(results, "peak allocated" if device.type == "cuda" else "activations saved",
                {"TFLOP/s": tflops, "MFU": mfu})


if __name__ == "__main__":
    main()
