"""Hand-built multimodal batches for tests and benchmarks: tiny configs, no tokenizer needed."""

from __future__ import annotations

import torch

from affectverse.default.tiny import TINY_IDS, tiny_config

PATCH_DIM = 3 * 2 * 14 * 14  # channels * temporal_patch * patch * patch


def audio_tokens(frames: int) -> int:
    """Audio placeholders for ``frames`` mel frames (the audio tower's two stride-2 stages)."""
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


def build_sample(config, video_t=0, audio_frames=0, text=5, answer=3, seed=0, generation=False, grid=4):
    """Token ids (list) and labels for one chat-shaped sample; ``video_t`` temporal grids of grid x grid patches."""
    g = torch.Generator().manual_seed(seed)
    words = lambda n: torch.randint(30, 200, (n,), generator=g).tolist()  # noqa: E731
    n_mod = int(video_t > 0) + int(audio_frames > 0)
    first, second = config.belief_split(n_mod)
    ids = [TINY_IDS["<|im_start|>"]] + words(3) + [TINY_IDS["<|im_end|>"], TINY_IDS["<|im_start|>"]] + words(1)
    if video_t:
        ids += [config.vision_start_token_id] + [config.video_token_id] * (video_t * (grid // 2) ** 2)
        ids += [config.vision_end_token_id]
    if audio_frames:
        ids += [config.audio_start_token_id] + [config.audio_token_id] * audio_tokens(audio_frames)
        ids += [config.audio_end_token_id]
    ids += [config.belief_token_id] * first + words(text) + [TINY_IDS["<|im_end|>"], TINY_IDS["<|im_start|>"]]
    ids += words(1) + [config.belief_token_id] * second
    labels = [-100] * len(ids)
    if not generation:
        ans = words(answer) + [TINY_IDS["<|im_end|>"]]
        ids, labels = ids + ans, labels + ans
    return ids, labels


def build_batch(config, specs, padding="right", generation=False, seed=0, grid=4, text=4):
    """A padded batch for ``specs`` = [(video_t, audio_frames), ...] with random media tensors."""
    g = torch.Generator().manual_seed(seed)
    samples = [build_sample(config, v, a, text=text + i, seed=seed + i, generation=generation, grid=grid)
               for i, (v, a) in enumerate(specs)]
    length = max(len(ids) for ids, _ in samples)
    pad = config.text_config.pad_token_id
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, labels in samples:
        n = length - len(ids)
        left = padding == "left"
        batch["input_ids"].append([pad] * n + ids if left else ids + [pad] * n)
        batch["attention_mask"].append([0] * n + [1] * len(ids) if left else [1] * len(ids) + [0] * n)
        batch["labels"].append([-100] * n + labels if left else labels + [-100] * n)
    out = {k: torch.tensor(v) for k, v in batch.items()}
    videos = [v for v, _ in specs if v]
    if videos:
        out["video_grid_thw"] = torch.tensor([[v, grid, grid] for v in videos])
        out["pixel_values_videos"] = torch.randn(sum(v * grid * grid for v in videos), PATCH_DIM, generator=g)
        out["video_second_per_grid"] = torch.full((len(videos),), 2 / 3)
    audios = [a for _, a in specs if a]
    if audios:
        frames = max(audios)
        out["input_features"] = torch.randn(len(audios), 128, frames, generator=g)
        out["feature_attention_mask"] = torch.tensor([[1] * a + [0] * (frames - a) for a in audios])
    if generation:
        out.pop("labels")
    return out


def tiny(**overrides):
    return tiny_config(**overrides)


def tiny_full_omni():
    """A tiny random full Qwen2.5-Omni (thinker + talker + token2wav) around the tiny thinker."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    thinker = tiny_config().to_dict()
    thinker["model_type"] = "qwen2_5_omni_thinker"
    ids = {k: TINY_IDS[v] for k, v in dict(
        audio_token_index="<|AUDIO|>", image_token_index="<|IMAGE|>", video_token_index="<|VIDEO|>",
        vision_start_token_id="<|vision_bos|>", vision_end_token_id="<|vision_eos|>",
        audio_start_token_id="<|audio_bos|>", audio_end_token_id="<|audio_eos|>").items()}
    talker = dict(
        vocab_size=64, embedding_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        tts_text_start_token_id=40, tts_text_end_token_id=41, tts_text_pad_token_id=42,
        tts_codec_start_token_id=50, tts_codec_end_token_id=51, tts_codec_pad_token_id=52,
        tts_codec_mask_token_id=53, **ids)
    dit = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ff_mult=1, emb_dim=16, head_dim=16,
               num_embeds=64, mel_dim=16, enc_emb_dim=16, enc_dim=16, enc_channels=[16, 16, 16, 16, 48],
               enc_attention_channels=8, enc_se_channels=8, look_ahead_layers=[0], look_backward_layers=[0])
    bigvgan = dict(mel_dim=16, upsample_initial_channel=32, upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4],
                   resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]])
    config = Qwen2_5OmniConfig(thinker_config=thinker, talker_config=talker,
                               token2wav_config=dict(dit_config=dit, bigvgan_config=bigvgan))
    return Qwen2_5OmniForConditionalGeneration(config)
