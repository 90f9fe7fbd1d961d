"""AffectVerse vs the stock thinker, side by side in one run on the same inputs (CPU or GPU).

    python -m benchmarks.model_bench [--hidden 512 --layers 8 --vocab 152064 --new-tokens 20 --repeats 3]

Prints medians and ratios: generate (AffectVerse with prefix-KV reuse, the naive two-pass design, the stock
thinker as is, and the stock thinker with ``logits_to_keep``), and one LoRA training step (AffectVerse: LoRA + EWM,
kappa-truncated second pass, with ``ewm_observation`` "full" and "past"; baseline: the LoRA-only thinker on the
same clips without belief tokens).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from benchmarks.synthetic import build_batch, tiny
from modeling_affectverse import AffectVerseForConditionalGeneration

logger = logging.getLogger("model_bench")


def bench_config(args, **overrides):
    text = dict(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
                max_position_embeddings=32768, pad_token_id=0, eos_token_id=2,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                 "mrope_section": [args.hidden // 64, 3 * args.hidden // 128,
                                                   3 * args.hidden // 128]})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=args.hidden,
                  fullatt_block_indexes=[1])
    audio = dict(encoder_layers=2, d_model=32, encoder_attention_heads=2, encoder_ffn_dim=64,
                 output_dim=args.hidden)
    return tiny(text_config=text, vision_config=vision, audio_config=audio, ewm_hidden_size=args.hidden // 4,
                ewm_num_heads=8, ewm_ffn_mult=4, future_queries=8, num_belief_queries=4, **overrides)


def _timed(fn):
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_times(fns: dict, repeats: int) -> dict:
    """Median wall time of each function, run round-robin (burn-in round first) so load drifts hit all alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def strip_beliefs(batch, belief_id):
    """The same batch without belief placeholders (left padding kept), for the stock thinker."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    keep = ids != belief_id
    rows = [(i[k], m[k]) for i, m, k in zip(ids, mask, keep)]
    length = max(len(r[0]) for r in rows)
    new_ids = torch.stack([torch.cat([i.new_zeros(length - len(i)), i]) for i, _ in rows])
    new_mask = torch.stack([torch.cat([m.new_zeros(length - len(m)), m]) for _, m in rows])
    return {**batch, "input_ids": new_ids, "attention_mask": new_mask}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=152064)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip-train", action="store_true", help="measure generate only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    cfg = bench_config(args)
    ours = AffectVerseForConditionalGeneration(cfg).to(args.device, dtype).eval()
    stock_cfg = Qwen2_5OmniThinkerConfig(**{k: v for k, v in cfg.to_dict().items() if k != "model_type"})
    # The models share one copy of every weight (assign=True): where a copy's pages land moves a bandwidth-bound
    # matmul by several percent (measured here: the same 152064-row lm_head on two equal copies, 5%), which would
    # otherwise tilt the comparison. "own copy" keeps the former measurement beside it.
    stock = Qwen2_5OmniThinkerForConditionalGeneration(stock_cfg).to(args.device, dtype).eval()
    stock.load_state_dict(ours.state_dict(), strict=False, assign=True)
    fixed = AffectVerseForConditionalGeneration(bench_config(args, belief_construction="none"))
    fixed = fixed.to(args.device, dtype).eval()
    fixed.load_state_dict(stock.state_dict(), strict=False, assign=True)
    copied = AffectVerseForConditionalGeneration(bench_config(args, belief_construction="none"))
    copied = copied.to(args.device, dtype).eval()
    copied.load_state_dict(stock.state_dict(), strict=False)

    specs = [(6, 1600)] * args.batch  # per clip: 6 grids x 64 video tokens + 400 audio tokens
    to = lambda b: {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in b.items()}  # noqa: E731
    gen = to(build_batch(cfg, specs, padding="left", generation=True, grid=16, text=40))
    gen_stock = strip_beliefs(gen, cfg.belief_token_id)
    av = int(((gen["input_ids"] == cfg.video_token_id) | (gen["input_ids"] == cfg.audio_token_id))[0].sum())
    logger.info("device %s %s | hidden %d, %d layers, vocab %d | batch %d, prompt %d tokens (%d audio/video), "
                "%d new tokens", args.device, args.dtype, args.hidden, args.layers, args.vocab, args.batch,
                gen["input_ids"].shape[1], av, args.new_tokens)
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
              suppress_tokens=[cfg.video_token_id, cfg.audio_token_id, cfg.image_token_id, cfg.belief_token_id])
    with torch.no_grad():
        times = median_times({
            "stock thinker generate": lambda: stock.generate(**gen_stock, **kw),
            "stock + logits_to_keep": lambda: fixed.generate(**gen_stock, **kw),
            "same, own weight copy": lambda: copied.generate(**gen_stock, **kw),
            "AffectVerse (prefix reuse)": lambda: ours.generate(**gen, **kw),
            "AffectVerse naive two-pass": lambda: ours.generate(**gen, reuse_prefix_cache=False, **kw),
        }, args.repeats)
    base = times["stock thinker generate"]
    for name, t in times.items():
        logger.info("  %-28s %8.3f s  ratio vs stock %.2f  vs stock+logits_to_keep %.2f", name, t, t / base,
                    t / times["stock + logits_to_keep"])

    logger.info("generate ratio AffectVerse / stock+logits_to_keep with its own weight copy (the former "
                "measurement): %.2f", times["AffectVerse (prefix reuse)"] / times["same, own weight copy"])
    if args.skip_train:
        return
    train = to(build_batch(cfg, specs, padding="right", grid=16, text=40))
    train_stock = {**strip_beliefs(train, cfg.belief_token_id)}
    train_stock["labels"] = torch.where(train_stock["attention_mask"].bool(), train_stock["input_ids"], -100)
    train_stock["labels"][:, :-4] = -100
    lora = dict(r=16, lora_alpha=32, lora_dropout=0.05,
                target_modules=r"model\.language_model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj")
    peft_ours = get_peft_model(ours, LoraConfig(modules_to_save=["ewm"], **lora)).train()
    peft_stock = get_peft_model(stock, LoraConfig(**lora)).train()

    def step(model, batch):
        optimizer = model._bench_opt
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for m in (peft_ours, peft_stock):
        m._bench_opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
    def step_past(model, batch):  # ewm_observation="past": one more no-grad pass over the truncated prefix
        ours.config.ewm_observation = "past"
        try:
            step(model, batch)
        finally:
            ours.config.ewm_observation = "full"

    train_times = median_times({"stock": lambda: step(peft_stock, train_stock),
                                "ours": lambda: step(peft_ours, train),
                                "ours past": lambda: step_past(peft_ours, train)}, args.repeats)
    t_stock, t_ours, t_past = train_times["stock"], train_times["ours"], train_times["ours past"]
    logger.info("  %-28s %8.3f s", "train step LoRA-only thinker", t_stock)
    logger.info("  %-28s %8.3f s  ratio %.2f (target <= 1.6)", "train step AffectVerse", t_ours, t_ours / t_stock)
    logger.info("  %-28s %8.3f s  ratio %.2f, vs ewm_observation=full %.2f", "train step, observation=past",
                t_past, t_past / t_stock, t_past / t_ours)
    logger.info("generate ratio AffectVerse / stock: %.2f (target <= 1.10); vs stock+logits_to_keep: %.2f",
                times["AffectVerse (prefix reuse)"] / base,
                times["AffectVerse (prefix reuse)"] / times["stock + logits_to_keep"])


if __name__ == "__main__":
    main()
