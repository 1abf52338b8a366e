"""Tiny random-weight models of every supported class, built offline (for tests and demos).

``build_tiny(family, directory)`` writes a model (``save_pretrained``), its tokenizer and its
image processor to ``directory`` so that ``dualview.load(directory)`` goes through the real
loading path. The models are a few hundred kilobytes and run a forward pass in milliseconds;
their answers are noise. Each has 4 decoder layers (hidden 64, 4 query heads, 2 KV heads,
head dim 16), a byte-level tokenizer with a small chat template, and a vision tower with
14-pixel patches.
"""

from __future__ import annotations

import json
from pathlib import Path

FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ image_slot }}"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=4096,
)


def _tokenizer(special: list[str], image_slot: str):
    """A byte-level BPE tokenizer without merges (covers any text) plus ``special`` tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    base = ["<|end|>", "<|pad|>", "<|user|>", "<|assistant|>"]
    tok.add_special_tokens(base + special)
    template = CHAT_TEMPLATE.replace("{{ image_slot }}", image_slot)
    extra = {"image_token": special[0]} if special[0] == "<image>" else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>",
        chat_template=template, extra_special_tokens=extra, **extra,
    )


def _special_ids(tokenizer) -> dict:
    return {"bos_token_id": None, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def build_tiny(family: str, directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``family`` model (one of :data:`FAMILIES`) with its processor files."""
    import torch
    import transformers as tf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if family in ("llava", "llava_next", "llava_onevision"):
        tokenizer = _tokenizer(["<image>", "<video>"], "<image>")
        image_token_id = tokenizer.convert_tokens_to_ids("<image>")
        text = tf.LlamaConfig(vocab_size=len(tokenizer), **_TEXT, **_special_ids(tokenizer))
        vision_kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, image_size=56, patch_size=14)
        common = dict(text_config=text, image_token_index=image_token_id, projector_hidden_act="gelu")
        if family == "llava":
            config = tf.LlavaConfig(vision_config=tf.CLIPVisionConfig(**vision_kw),
                                    vision_feature_select_strategy="default", **common)
            model = tf.LlavaForConditionalGeneration(config)
            image_processor = tf.CLIPImageProcessorPil(
                size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
            processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                          patch_size=14, vision_feature_select_strategy="default",
                                          num_additional_image_tokens=1)
        elif family == "llava_next":
            pinpoints = [[56, 112], [112, 56], [112, 112], [56, 168], [168, 56]]
            config = tf.LlavaNextConfig(vision_config=tf.CLIPVisionConfig(**vision_kw),
                                        vision_feature_select_strategy="default",
                                        image_grid_pinpoints=pinpoints, **common)
            model = tf.LlavaNextForConditionalGeneration(config)
            image_processor = tf.LlavaNextImageProcessorPil(
                size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56},
                image_grid_pinpoints=pinpoints)
            processor = tf.LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                              patch_size=14, vision_feature_select_strategy="default",
                                              num_additional_image_tokens=1)
        else:
            # Up to 4 x 4 crops so that the "anyres_max_9" down-sampling is exercised.
            pinpoints = [[56 * a, 56 * b] for a in range(1, 5) for b in range(1, 5)]
            config = tf.LlavaOnevisionConfig(vision_config=tf.SiglipVisionConfig(**vision_kw),
                                             vision_feature_select_strategy="full",
                                             vision_feature_layer=-1,
                                             image_grid_pinpoints=pinpoints, **common)
            model = tf.LlavaOnevisionForConditionalGeneration(config)
            image_processor = tf.LlavaOnevisionImageProcessorPil(
                size={"height": 56, "width": 56}, image_grid_pinpoints=pinpoints)
            processor = None
    else:
        tokenizer = _tokenizer(["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"],
                               "<|vision_start|><|image_pad|><|vision_end|>")
        ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
            ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
        text = dict(_TEXT, vocab_size=len(tokenizer), **_special_ids(tokenizer),
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
        if family == "qwen2_vl":
            vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
            config = tf.Qwen2VLConfig(vision_config=vision, text_config=text, **ids)
            model = tf.Qwen2VLForConditionalGeneration(config)
        else:
            vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                          fullatt_block_indexes=[1])
            config = tf.Qwen2_5_VLConfig(vision_config=vision, text_config=text, **ids)
            model = tf.Qwen2_5_VLForConditionalGeneration(config)
        image_processor = tf.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=140 * 140)
        processor = None
    model.generation_config.update(**_special_ids(tokenizer))
    model.eval()
    model.save_pretrained(directory)
    if processor is not None:
        processor.save_pretrained(directory)
    else:  # processors with a video slot cannot be saved without torchvision (stack-notes.md)
        tokenizer.save_pretrained(directory)
        image_processor.save_pretrained(directory)
    (directory / "dualview_tiny.json").write_text(json.dumps({"family": family, "seed": seed}))
    return directory
