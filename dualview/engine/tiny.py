"""Random-weight models of every supported class, built offline (for tests, demos and benchmarks).

``build_tiny(family, directory, geometry=...)`` writes a model (``save_pretrained``), its tokenizer
and its image processor to ``directory`` so that ``dualview.load(directory)`` goes through the real
loading path. Their answers are noise. Every model has a byte-level tokenizer with a small chat
template, a 32-wide vision tower of one block (Qwen2.5-VL: a windowed and a full block; Qwen3-VL: one
block per DeepStack level) and a decoder of hidden 64, 4 query heads, 2 KV heads, head dim 16.

Two geometries (:data:`GEOMETRIES`):

- ``"tiny"``: 4 decoder layers and small images (56-pixel tiles, a few to a few dozen visual
  tokens); a forward pass takes milliseconds. For the engine's exactness tests.
- ``"real"``: 8 decoder layers (so that layer 4 is the paper's pruning layer) and the vision
  geometry and processor settings of the public checkpoint :data:`CHECKPOINTS` names for the
  family, so that token counts and token boxes are those of that checkpoint. Copied values
  (:data:`_GEOMETRY`, key ``"real"``):

  - ``llava``: llava-hf/llava-1.5-7b-hf: CLIP 336 px, patch 14, shortest edge 336, centre crop
    336 × 336 -> 576 tokens at any image size.
  - ``llava_next``: llava-hf/llava-v1.6-mistral-7b-hf: CLIP 336 / 14, pinpoints 336 × {672, 1008}
    and 672 × 672.
  - ``llava_onevision``: llava-hf/llava-onevision-qwen2-7b-ov-hf: SigLIP 384 / 14 (729 tokens per
    crop), pinpoints every multiple of 384 up to 2304 on each side, ``anyres_max_9``, image newline.
  - ``qwen2_vl`` / ``qwen2_5_vl``: Qwen/Qwen2-VL-7B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct: patch
    14, merge 2, temporal patch 2, min_pixels 3136, max_pixels 12845056 (up to 16 384 tokens);
    Qwen2.5-VL's window 112.
  - ``qwen3_vl``: Qwen/Qwen3-VL-8B-Instruct: patch 16, merge 2, temporal patch 2, 2304 learned
    position embeddings, 3 DeepStack levels, pixels between 65536 and 16777216.
  - ``idefics3``: HuggingFaceM4/Idefics3-8B-Llama3: SigLIP 364 / 14, pixel shuffle 2 (169 tokens
    per tile), longest edge 1456 (up to 4 × 4 tiles of 364) plus the global image.
  - ``smolvlm``: HuggingFaceTB/SmolVLM-256M-Instruct: SigLIP 512 / 16, pixel shuffle 4 (64 tokens
    per tile), longest edge 2048 (up to 4 × 4 tiles of 512) plus the global image.
  - ``gemma3``: google/gemma-3-4b-it: SigLIP 896 / 14 pooled to 16 × 16 = 256 soft tokens per
    image, pan-and-scan settings (min crop 256, at most 4 crops, ratio 1.2; off by default),
    sliding window 1024 on 5 of every 6 decoder layers.
  - ``internvl``: OpenGVLab/InternVL3-8B-hf: 448 / 14, pixel shuffle 0.5 (256 tokens per tile),
    1 to 12 tiles plus a thumbnail.
  - ``paligemma`` (generic path, :data:`GENERIC`): google/paligemma-3b-pt-224: SigLIP 224 / 14,
    256 tokens, the whole image resized.

Tiny widths do not change the geometry: the number of visual tokens and their boxes depend only on
the values above (stack-notes.md, "At real token counts").
"""

from __future__ import annotations

import json
from pathlib import Path

FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl",
            "idefics3", "smolvlm", "gemma3", "internvl")
GENERIC = ("paligemma",)
"""Classes dualview has no adapter for, built to exercise the generic path (``GenericAdapter``)."""
GEOMETRIES = ("tiny", "real")

CHECKPOINTS = {
    "llava": "llava-hf/llava-1.5-7b-hf",
    "llava_next": "llava-hf/llava-v1.6-mistral-7b-hf",
    "llava_onevision": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "qwen2_vl": "Qwen/Qwen2-VL-7B-Instruct",
    "qwen2_5_vl": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen3_vl": "Qwen/Qwen3-VL-8B-Instruct",
    "idefics3": "HuggingFaceM4/Idefics3-8B-Llama3",
    "smolvlm": "HuggingFaceTB/SmolVLM-256M-Instruct",
    "gemma3": "google/gemma-3-4b-it",
    "internvl": "OpenGVLab/InternVL3-8B-hf",
    "paligemma": "google/paligemma-3b-pt-224",
}
"""The public checkpoint whose geometry ``geometry="real"`` copies, per family."""

_GEOMETRY = {
    "llava": {"tiny": dict(image_size=56, patch_size=14), "real": dict(image_size=336, patch_size=14)},
    "llava_next": {
        "tiny": dict(image_size=56, patch_size=14,
                     pinpoints=[[56, 112], [112, 56], [112, 112], [56, 168], [168, 56]]),
        "real": dict(image_size=336, patch_size=14,
                     pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]),
    },
    "llava_onevision": {  # tiny: up to 4 x 4 crops so that the "anyres_max_9" down-sampling is exercised
        "tiny": dict(image_size=56, patch_size=14,
                     pinpoints=[[56 * a, 56 * b] for a in range(1, 5) for b in range(1, 5)]),
        "real": dict(image_size=384, patch_size=14,
                     pinpoints=[[384 * a, 384 * b] for a in range(1, 7) for b in range(1, 7)]),
    },
    "qwen2_vl": {
        "tiny": dict(patch_size=14, merge=2, temporal=2, min_pixels=56 * 56, max_pixels=140 * 140),
        "real": dict(patch_size=14, merge=2, temporal=2, min_pixels=3136, max_pixels=12845056),
    },
    "qwen2_5_vl": {
        "tiny": dict(patch_size=14, merge=2, temporal=2, min_pixels=56 * 56, max_pixels=140 * 140, window=56),
        "real": dict(patch_size=14, merge=2, temporal=2, min_pixels=3136, max_pixels=12845056, window=112),
    },
    "qwen3_vl": {
        "tiny": dict(patch_size=16, merge=2, temporal=2, min_pixels=64 * 64, max_pixels=160 * 160,
                     positions=16, deepstack=2),
        "real": dict(patch_size=16, merge=2, temporal=2, min_pixels=65536, max_pixels=16777216,
                     positions=2304, deepstack=3),
    },
    "idefics3": {
        "tiny": dict(image_size=56, patch_size=14, scale=2, longest_edge=112),
        "real": dict(image_size=364, patch_size=14, scale=2, longest_edge=1456),
    },
    "smolvlm": {
        "tiny": dict(image_size=64, patch_size=8, scale=4, longest_edge=128),
        "real": dict(image_size=512, patch_size=16, scale=4, longest_edge=2048),
    },
    "gemma3": {
        "tiny": dict(image_size=56, patch_size=14, tokens=4, sliding_window=24, pattern=2, min_crop=32,
                     max_crops=4, ratio=1.2),
        "real": dict(image_size=896, patch_size=14, tokens=256, sliding_window=1024, pattern=6, min_crop=256,
                     max_crops=4, ratio=1.2),
    },
    "internvl": {
        "tiny": dict(image_size=56, patch_size=14, min_patches=1, max_patches=6),
        "real": dict(image_size=448, patch_size=14, min_patches=1, max_patches=12),
    },
    "paligemma": {"tiny": dict(image_size=56, patch_size=14), "real": dict(image_size=224, patch_size=14)},
}

CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ image_slot }}"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_TEXT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


def _tokenizer(special: list[str], image_slot: str, named: dict[str, str] | None = None):
    """A byte-level BPE tokenizer without merges (covers any text) plus ``special`` tokens.

    ``named`` maps attribute names (``image_token``, ``boi_token``...) to tokens among ``special``
    that processors look up on the tokenizer."""
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
    named = named or {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>",
        chat_template=template, extra_special_tokens=named, **named,
    )


def _special_ids(tokenizer) -> dict:
    return {"bos_token_id": None, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def _text(tokenizer, layers: int, **extra) -> dict:
    """Decoder settings; the real geometry's 8 layers get room for 16 384 visual tokens and more."""
    positions = 4096 if layers == 4 else 32768
    return dict(_TEXT, num_hidden_layers=layers, max_position_embeddings=positions, vocab_size=len(tokenizer),
                **_special_ids(tokenizer), **extra)


def _llava(family, g, layers):
    import transformers as tf

    tokenizer = _tokenizer(["<image>", "<video>"], "<image>", {"image_token": "<image>"})
    text = tf.LlamaConfig(**_text(tokenizer, layers))
    vision_kw = dict(_VISION, image_size=g["image_size"], patch_size=g["patch_size"])
    common = dict(text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                  projector_hidden_act="gelu")
    side = {"shortest_edge": g["image_size"]}
    crop = {"height": g["image_size"], "width": g["image_size"]}
    if family == "llava":
        config = tf.LlavaConfig(vision_config=tf.CLIPVisionConfig(**vision_kw),
                                vision_feature_select_strategy="default", **common)
        image_processor = tf.CLIPImageProcessorPil(size=side, crop_size=crop)
        processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                      patch_size=g["patch_size"], vision_feature_select_strategy="default",
                                      num_additional_image_tokens=1)
        return tf.LlavaForConditionalGeneration(config), tokenizer, image_processor, processor
    if family == "llava_next":
        config = tf.LlavaNextConfig(vision_config=tf.CLIPVisionConfig(**vision_kw),
                                    vision_feature_select_strategy="default",
                                    image_grid_pinpoints=g["pinpoints"], **common)
        image_processor = tf.LlavaNextImageProcessorPil(size=side, crop_size=crop, image_grid_pinpoints=g["pinpoints"])
        processor = tf.LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                          patch_size=g["patch_size"], vision_feature_select_strategy="default",
                                          num_additional_image_tokens=1)
        return tf.LlavaNextForConditionalGeneration(config), tokenizer, image_processor, processor
    config = tf.LlavaOnevisionConfig(vision_config=tf.SiglipVisionConfig(**vision_kw),
                                     vision_feature_select_strategy="full", vision_feature_layer=-1,
                                     vision_aspect_ratio="anyres_max_9", image_grid_pinpoints=g["pinpoints"], **common)
    image_processor = tf.LlavaOnevisionImageProcessorPil(size=crop, image_grid_pinpoints=g["pinpoints"])
    return tf.LlavaOnevisionForConditionalGeneration(config), tokenizer, image_processor, None


def _qwen(family, g, layers):
    import transformers as tf

    tokenizer = _tokenizer(["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"],
                           "<|vision_start|><|image_pad|><|vision_end|>")
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    text = _text(tokenizer, layers,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    grid = dict(patch_size=g["patch_size"], spatial_merge_size=g["merge"], temporal_patch_size=g["temporal"])
    if family == "qwen2_vl":
        vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, **grid)
        model = tf.Qwen2VLForConditionalGeneration(tf.Qwen2VLConfig(vision_config=vision, text_config=text, **ids))
    elif family == "qwen2_5_vl":
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      window_size=g["window"], fullatt_block_indexes=[1], **grid)
        config = tf.Qwen2_5_VLConfig(vision_config=vision, text_config=text, **ids)
        model = tf.Qwen2_5_VLForConditionalGeneration(config)
    else:  # one vision block per DeepStack level, each feeding one early decoder layer
        text["rope_parameters"]["mrope_interleaved"] = True
        vision = dict(depth=g["deepstack"], hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      num_position_embeddings=g["positions"], deepstack_visual_indexes=list(range(g["deepstack"])),
                      **grid)
        model = tf.Qwen3VLForConditionalGeneration(tf.Qwen3VLConfig(vision_config=vision, text_config=text, **ids))
    image_processor = tf.Qwen2VLImageProcessorPil(
        size={"shortest_edge": g["min_pixels"], "longest_edge": g["max_pixels"]},
        patch_size=g["patch_size"], merge_size=g["merge"], temporal_patch_size=g["temporal"])
    return model, tokenizer, image_processor, None


def _idefics(family, g, layers):
    import transformers as tf

    markers = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    tokenizer = _tokenizer(["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<video>"]
                           + markers, "<image>", {"image_token": "<image>"})
    text = tf.LlamaConfig(**_text(tokenizer, layers))
    vision = dict(_VISION, image_size=g["image_size"], patch_size=g["patch_size"])
    image_kw = dict(size={"longest_edge": g["longest_edge"]}, max_image_size={"longest_edge": g["image_size"]})
    seq_len = (g["image_size"] // g["patch_size"] // g["scale"]) ** 2
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    if family == "idefics3":
        config = tf.Idefics3Config(vision_config=vision, text_config=text, scale_factor=g["scale"],
                                   image_token_id=image_token_id)
        image_processor = tf.Idefics3ImageProcessorPil(**image_kw)
        processor = tf.Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len)
        return tf.Idefics3ForConditionalGeneration(config), tokenizer, image_processor, processor
    config = tf.SmolVLMConfig(vision_config=vision, text_config=text, scale_factor=g["scale"],
                              image_token_id=image_token_id)
    image_processor = tf.SmolVLMImageProcessorPil(**image_kw)
    return tf.SmolVLMForConditionalGeneration(config), tokenizer, image_processor, None


def _gemma3(family, g, layers):
    import transformers as tf

    named = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    tokenizer = _tokenizer(list(named.values()), "<start_of_image>", named)
    ids = {key: tokenizer.convert_tokens_to_ids(named[name]) for key, name in
           [("image_token_index", "image_token"), ("boi_token_index", "boi_token"), ("eoi_token_index", "eoi_token")]}
    # Every pattern-th layer global, the others local (checkpoint: 5 local, then 1 global; tiny: alternating,
    # so that 4 layers hold both kinds)
    pattern = ["sliding_attention"] * (g["pattern"] - 1) + ["full_attention"]
    text = tf.Gemma3TextConfig(**_text(tokenizer, layers, head_dim=16, query_pre_attn_scalar=16,
                                       sliding_window=g["sliding_window"],
                                       layer_types=[pattern[i % g["pattern"]] for i in range(layers)]))
    vision = tf.SiglipVisionConfig(**_VISION, image_size=g["image_size"], patch_size=g["patch_size"])
    config = tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=g["tokens"], **ids)
    image_processor = tf.Gemma3ImageProcessorPil(
        size={"height": g["image_size"], "width": g["image_size"]}, do_pan_and_scan=False,
        pan_and_scan_min_crop_size=g["min_crop"], pan_and_scan_max_num_crops=g["max_crops"],
        pan_and_scan_min_ratio_to_activate=g["ratio"])
    processor = tf.Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=g["tokens"])
    return tf.Gemma3ForConditionalGeneration(config), tokenizer, image_processor, processor


def _internvl(family, g, layers):
    import transformers as tf

    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    tokenizer = _tokenizer(list(named.values()), "<IMG_CONTEXT>", named)
    text = tf.Qwen2Config(**_text(tokenizer, layers))
    vision = tf.InternVLVisionConfig(**_VISION, image_size=[g["image_size"]] * 2, patch_size=[g["patch_size"]] * 2)
    config = tf.InternVLConfig(vision_config=vision, text_config=text, downsample_ratio=0.5,
                               image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
                               image_seq_length=(g["image_size"] // g["patch_size"] // 2) ** 2)
    image_processor = tf.GotOcr2ImageProcessorPil(
        size={"height": g["image_size"], "width": g["image_size"]}, crop_to_patches=True,
        min_patches=g["min_patches"], max_patches=g["max_patches"])
    return tf.InternVLForConditionalGeneration(config), tokenizer, image_processor, None


def _paligemma(family, g, layers):
    import transformers as tf

    tokenizer = _tokenizer(["<image>", "<bos>"], "<image>", {"image_token": "<image>"})
    tokenizer.bos_token = "<bos>"
    image_processor = tf.SiglipImageProcessorPil(size={"height": g["image_size"], "width": g["image_size"]})
    image_processor.image_seq_length = (g["image_size"] // g["patch_size"]) ** 2
    processor = tf.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds its location tokens
    text = tf.GemmaConfig(**_text(tokenizer, layers, head_dim=16))
    vision = tf.SiglipVisionConfig(**_VISION, image_size=g["image_size"], patch_size=g["patch_size"])
    config = tf.PaliGemmaConfig(vision_config=vision, text_config=text, projection_dim=64,
                                image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    return tf.PaliGemmaForConditionalGeneration(config), tokenizer, image_processor, processor


_BUILDERS = {"llava": _llava, "llava_next": _llava, "llava_onevision": _llava, "qwen2_vl": _qwen,
             "qwen2_5_vl": _qwen, "qwen3_vl": _qwen, "idefics3": _idefics, "smolvlm": _idefics,
             "gemma3": _gemma3, "internvl": _internvl, "paligemma": _paligemma}


def build_tiny(family: str, directory: str | Path, seed: int = 0, geometry: str = "tiny") -> Path:
    """Write a random ``family`` model (one of :data:`FAMILIES` or :data:`GENERIC`) with its processor files.

    Args:
        family: adapter family.
        directory: created if missing; receives ``config.json``, ``model.safetensors``, the tokenizer,
            the image processor (and ``processor_config.json`` where the processor saves without
            torchvision) and ``dualview_tiny.json``.
        seed: torch seed for the random weights.
        geometry: ``"tiny"`` or ``"real"`` (see the module docstring; the checkpoint copied is
            ``CHECKPOINTS[family]``).
    Raises:
        ValueError: unknown family or geometry.
    """
    import torch

    if family not in _BUILDERS or geometry not in GEOMETRIES:
        raise ValueError(f"family must be one of {FAMILIES + GENERIC} and geometry one of {GEOMETRIES}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    layers = 8 if geometry == "real" else 4
    model, tokenizer, image_processor, processor = _BUILDERS[family](family, _GEOMETRY[family][geometry], layers)
    model.generation_config.update(**_special_ids(tokenizer))
    model.eval()
    model.save_pretrained(directory)
    if processor is not None:
        processor.save_pretrained(directory)
    else:  # processors with a video slot cannot be saved without torchvision (stack-notes.md)
        tokenizer.save_pretrained(directory)
        image_processor.save_pretrained(directory)
    (directory / "dualview_tiny.json").write_text(json.dumps({"family": family, "seed": seed, "geometry": geometry}))
    return directory
