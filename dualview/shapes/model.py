"""The built-in shapes-world VLM: config, offline tokenizer + processor, prompt format.

The model is a stock ``LlavaForConditionalGeneration``: a SigLIP vision tower (no CLS token,
``vision_feature_select_strategy="full"``, last encoder layer), the Llava 2-layer MLP projector
and a Llama decoder (grouped-query attention, RoPE). Nothing custom is saved, so
``AutoProcessor.from_pretrained(BUILTIN_DIR)`` and
``AutoModelForImageTextToText.from_pretrained(BUILTIN_DIR)`` load it with no network.

Prompt format (what :func:`format_prompt` returns and the processor tokenizes)::

    <image>{question}

The tokenizer lowercases, drops every ``?`` and wraps the text as ``<s> <image>x196 {words} <sep>``;
the model then generates the answer words and ``</s>``. So ``"What color is the circle?"``,
``"what color is the circle"`` and ``"WHAT COLOR IS THE CIRCLE ?"`` give the same ids.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from . import world

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "assets" / "shapes-vlm"

PAD, UNK, BOS, EOS, SEP, IMAGE = "[PAD]", "[UNK]", "<s>", "</s>", "<sep>", "<image>"
SPECIALS = (PAD, UNK, BOS, EOS, SEP, IMAGE)


def _words() -> list:
    words = ["what", "color", "colour", "is", "the", "shape", "object", "how", "many", "are", "there",
             "objects", "a", "where", "letter", "written", "yes", "no"]
    words += list(world.SHAPES) + list(world.PLURALS.values()) + list(world.COLOR_NAMES)
    words += [w for cell in world.CELLS for w in cell.split()]
    words += [str(d) for d in range(10)] + list(world.LETTERS)
    out = []
    for w in words:
        if w not in out:
            out.append(w)
    return out


VOCAB = {tok: i for i, tok in enumerate(list(SPECIALS) + _words())}


@dataclass
class ModelSize:
    image_size: int = 224
    patch_size: int = 16
    vision_hidden: int = 160
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp: int = 512
    text_hidden: int = 160
    text_layers: int = 8
    text_heads: int = 4
    text_kv_heads: int = 2
    text_mlp: int = 448

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


TINY = ModelSize(image_size=64, patch_size=16, vision_hidden=32, vision_layers=1, vision_heads=2, vision_mlp=64,
                 text_hidden=32, text_layers=2, text_heads=2, text_kv_heads=1, text_mlp=64)


def format_prompt(question: str) -> str:
    """The text given to the processor with the image: ``<image>`` then the question."""
    return IMAGE + " ".join(question.strip().split())


def normalize_answer(text: str) -> str:
    """Answers compare after whitespace normalisation; lowercase except a single capital letter."""
    text = " ".join(text.strip().split())
    return text if len(text) == 1 and text.isalpha() else text.lower()


def build_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace("?", " ")])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {SEP}", special_tokens=[(BOS, VOCAB[BOS]), (SEP, VOCAB[SEP])])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD, sep_token=SEP,
        extra_special_tokens={"image_token": IMAGE}, padding_side="left", model_max_length=512)
    fast.add_special_tokens({"additional_special_tokens": [IMAGE]})
    return fast


def build_processor(size: ModelSize = ModelSize()):
    from transformers import LlavaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    image_processor = SiglipImageProcessorPil(size={"height": size.image_size, "width": size.image_size})
    return LlavaProcessor(image_processor=image_processor, tokenizer=build_tokenizer(),
                          patch_size=size.patch_size, vision_feature_select_strategy="full",
                          num_additional_image_tokens=0, image_token=IMAGE)


def build_config(size: ModelSize = ModelSize()):
    from transformers import LlamaConfig, LlavaConfig, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=size.vision_hidden, intermediate_size=size.vision_mlp,
                                num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads,
                                image_size=size.image_size, patch_size=size.patch_size, vision_use_head=False)
    text = LlamaConfig(vocab_size=len(VOCAB), hidden_size=size.text_hidden, intermediate_size=size.text_mlp,
                       num_hidden_layers=size.text_layers, num_attention_heads=size.text_heads,
                       num_key_value_heads=size.text_kv_heads, head_dim=size.text_hidden // size.text_heads,
                       max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True,
                       bos_token_id=VOCAB[BOS], eos_token_id=VOCAB[EOS], pad_token_id=VOCAB[PAD])
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=VOCAB[IMAGE],
                      vision_feature_select_strategy="full", vision_feature_layer=-1,
                      image_seq_length=size.num_image_tokens, projector_hidden_act="gelu",
                      tie_word_embeddings=True)
    cfg.shapes_world = {"model_size": asdict(size), "prompt": "<image>{question}"}
    return cfg


def build_model(size: ModelSize = ModelSize(), seed: int = 0):
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(build_config(size))
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = VOCAB[EOS], VOCAB[PAD], VOCAB[BOS]
    gc.do_sample, gc.max_new_tokens = False, 4
    return model


def load_builtin(path: str | Path = BUILTIN_DIR, dtype=None):
    """(model, processor) of the shipped model, fp32 eval mode unless ``dtype`` says otherwise."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(path))
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype or torch.float32)
    return model.eval(), processor


def answer(model, processor, image, question: str, max_new_tokens: int = 4) -> str:
    """Greedy answer of one question about one PIL image."""
    import torch

    inputs = processor(images=image.convert("RGB"), text=format_prompt(question), return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
