"""The tiny preset: a random-initialised AffectVerse small enough for CPU tests and the embedded default.

Token ids: the tiny tokenizer puts Qwen2.5-Omni's 22 special tokens first, in their released order
(released id - 151643), then ``<|belief|>``, then its BPE vocabulary, so the ids below are fixed.
"""

from __future__ import annotations

from configuration_affectverse import AffectVerseConfig
from processing_affectverse import AffectVerseProcessor

# Released Qwen2.5-Omni special tokens, in id order (151643 ... 151664).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_bos|>", "<|vision_eos|>", "<|vision_pad|>", "<|IMAGE|>",
    "<|VIDEO|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
TINY_IDS = {tok: i for i, tok in enumerate(QWEN_SPECIAL_TOKENS)}
TINY_IDS["<|belief|>"] = len(QWEN_SPECIAL_TOKENS)  # 22
TINY_VOCAB_SIZE = 512  # embedding rows of the tiny model; the tokenizer must stay below it


def tiny_config(**overrides) -> AffectVerseConfig:
    """A 2-layer, 64-wide AffectVerse with 2-layer vision and audio towers.

    The backbone is initialised with std 0.3 (not 0.02): the tiny preset trains only LoRA and the EWM, and a frozen
    random 64-wide ``lm_head`` at std 0.02 caps every logit near 1, so no answer could ever become likely.
    """
    text = dict(
        vocab_size=TINY_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        pad_token_id=TINY_IDS["<|endoftext|>"], eos_token_id=TINY_IDS["<|im_end|>"],
    )
    vision = dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1],
    )
    audio = dict(
        encoder_layers=2, d_model=32, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=128,
        output_dim=64, max_source_positions=1500, n_window=100,
    )
    kwargs = dict(
        text_config=text, vision_config=vision, audio_config=audio,
        audio_token_index=TINY_IDS["<|AUDIO|>"], image_token_index=TINY_IDS["<|IMAGE|>"],
        video_token_index=TINY_IDS["<|VIDEO|>"], audio_start_token_id=TINY_IDS["<|audio_bos|>"],
        audio_end_token_id=TINY_IDS["<|audio_eos|>"], vision_start_token_id=TINY_IDS["<|vision_bos|>"],
        vision_end_token_id=TINY_IDS["<|vision_eos|>"], belief_token_id=TINY_IDS["<|belief|>"],
        user_token_id=TINY_IDS["<|im_start|>"], initializer_range=0.3,
        ewm_hidden_size=32, ewm_num_heads=4, ewm_ffn_mult=2, future_queries=4, num_belief_queries=2,
    )
    kwargs.update(overrides)
    return AffectVerseConfig(**kwargs)


# ----------------------------------------------------------------------------- tiny tokenizer and processor

# The official Qwen2.5-Omni chat template: the string transformers' own Qwen2.5-Omni processor test passes as
# `chat_template` (tests/models/qwen2_5_omni/test_processing_qwen2_5_omni.py, `prepare_processor_dict`).
QWEN2_5_OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}{% set video_count = "
    "namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in "
    "message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>{% elif content['type'] == 'audio' or 'audio' in content or "
    "'audio_url' in content %}{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio "
    "{{ audio_count.value }}: {% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>{% elif content['type'] == 'video' or "
    "'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)

# Named special tokens the stock Qwen2.5-Omni processor reads from its tokenizer (`tokenizer.video_token`, ...).
QWEN_NAMED_TOKENS = {
    "image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
}

# The built-in corpus of the tiny BPE: the prompt wording, answer forms, emotion words and everyday sentences.
_TINY_CORPUS = """You are an emotion recognition assistant. You are a helpful assistant.
Subtitle: I went to the store this morning. The meeting is scheduled for three o'clock.
Please recognize all possible emotional states of the character.
The character's emotional state is happy. The character's emotional state is sad.
The character's emotional state is angry, worried. The character's emotional state is neutral.
The character's emotional state is positive. The character's emotional state is negative.
happy sad angry neutral worried surprise fear disgust joy sadness anger positive negative surprised
We talked about it on the way home. She said the train would be late today.
I think the report is on the table. He called me after lunch. Let's look at the numbers again.
The weather changed in the afternoon. They moved into the new flat last week.
I need to check my messages first. We can finish this tomorrow. The door was open when I arrived.
My brother is coming over on Sunday. It took longer than I expected. You should read the second page.
That is what he told everyone. I can't believe it! Why would you say that? Oh no, not again.
Thank you so much, this is wonderful. Leave me alone. What are you doing here?
"""


def tiny_tokenizer():
    """A Qwen2 byte-level BPE (< 512 entries) trained offline on a built-in corpus, with Qwen2.5-Omni's chat template.

    Ids 0..21 are Qwen2.5-Omni's special tokens in released order and 22 is ``<|belief|>`` (``TINY_IDS``); the
    named tokens (``video_token`` = ``<|VIDEO|>``, ...) are set as the stock processor expects. Deterministic.
    """
    import json

    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    specials = list(TINY_IDS)  # released order, then <|belief|>
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB_SIZE - 32, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_TINY_CORPUS.splitlines() * 4, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, extra_special_tokens=dict(QWEN_NAMED_TOKENS), model_max_length=32768,
    )
    # Register every special token as an added token (ids unchanged: they are already in the vocab) so none is split.
    tokenizer.add_tokens([AddedToken(tok, special=True, normalized=False) for tok in specials], special_tokens=True)
    tokenizer.chat_template = QWEN2_5_OMNI_CHAT_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids(specials)
    if ids != list(range(len(specials))) or len(tokenizer) >= TINY_VOCAB_SIZE:
        raise RuntimeError(f"tiny tokenizer ids {ids} / size {len(tokenizer)} do not match TINY_IDS")
    return tokenizer


def tiny_processor(**kwargs):
    """An ``AffectVerseProcessor`` on ``tiny_tokenizer()``, the stock Whisper feature extractor (128 mel bins) and the
    stock Qwen2-VL video processor set for 224x224 frames at 3 fps; belief settings follow ``tiny_config()``.
    ``kwargs`` override the processor's settings (``max_length``, ``injection``, ``audio_layout``, ...)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor, WhisperFeatureExtractor

    config = tiny_config()
    settings = {k: getattr(config, k) for k in ("num_belief_queries", "injection", "belief_construction")}
    settings.update(kwargs)
    video = Qwen2VLVideoProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 224 * 224}, fps=3.0,
                                  do_sample_frames=False, cap_pixels_per_frame=False)
    audio = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, return_attention_mask=True)
    return AffectVerseProcessor(Qwen2VLImageProcessor(), video, audio, tiny_tokenizer(),
                                chat_template=QWEN2_5_OMNI_CHAT_TEMPLATE, fps=3.0, frame_size=224, **settings)
