"""``load(name_or_path)``: find the model, pick its adapter, load weights and processor."""

from __future__ import annotations

import os
import re
from pathlib import Path

from dualview.errors import DualviewError

BUILTIN = "builtin"
BUILTIN_DIR = Path(__file__).resolve().parents[2] / "assets" / "shapes-vlm"

SUPPORTED = ("LLaVA-1.5 (LlavaForConditionalGeneration), LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, "
             "Qwen3-VL, Idefics3, SmolVLM, Gemma 3, InternVL, and any other image-text-to-text class whose "
             "image tokens are placeholder ids in the prompt (generic path)")


def resolve_device(device: str | None) -> str:
    """``device`` as given (refused with one sentence when it is not a device torch knows or is not
    available here), else cuda, then mps, then cpu."""
    import torch

    if device is not None:
        try:
            kind = torch.device(device).type
        except (RuntimeError, ValueError, TypeError):
            raise DualviewError(f"Unknown device {device!r}; use cpu, cuda (cuda:N) or mps.") from None
        available = {"cpu": True, "cuda": torch.cuda.is_available(),
                     "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
        if not available.get(kind, False):
            raise DualviewError(f"Device {device!r} is not available on this machine; use "
                                f"{'cuda' if available['cuda'] else 'cpu'}.")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype, device: str):
    """``dtype`` (a torch dtype or its name) as given, else float32 on CPU, bfloat16 on cuda, float16 on mps."""
    import torch

    if dtype is None:
        return {"cpu": torch.float32, "mps": torch.float16}.get(device.split(":")[0], torch.bfloat16)
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise DualviewError(f"Unknown dtype '{dtype}'; use float32, bfloat16 or float16.")
        return getattr(torch, dtype)
    return dtype


def _locate(name: str) -> str:
    """A local directory for ``name``, or the model id itself when it is not a path."""
    if name == BUILTIN:
        if not (BUILTIN_DIR / "config.json").is_file():
            raise DualviewError(f"The built-in model is not in {BUILTIN_DIR} yet (it is trained separately); "
                                "pass a model directory or Hugging Face id instead.")
        return str(BUILTIN_DIR)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DualviewError(f"'{name}' is a directory but holds no config.json, so it is not a saved model.")
        return str(path)
    if path.exists() or not re.fullmatch(r"[\w-][\w.-]*(/[\w.-]+)?", name):  # not a hub id
        raise DualviewError(f"No model directory at '{name}'; check the path.")
    return name


def _architecture(location: str, name: str) -> str:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        why = "it is not on disk and downloads are off (HF_HUB_OFFLINE=1)" if offline else \
            f"it could not be found or downloaded ({str(error).splitlines()[0][:120]})"
        raise DualviewError(f"Cannot load model '{name}': {why}; download it first or pass a local directory.") from None
    architectures = getattr(config, "architectures", None) or []
    return architectures[0] if architectures else type(config).__name__


def _processor(location: str, family: str, model):
    """The model's processor. Processors with a video slot need torchvision for their video
    processor; without it they are built from the image processor and tokenizer alone."""
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(location)
    except (ImportError, OSError, ValueError, TypeError):
        pass
    classes = {"llava_onevision": "LlavaOnevisionProcessor", "qwen2_vl": "Qwen2VLProcessor",
               "qwen2_5_vl": "Qwen2_5_VLProcessor", "llava": "LlavaProcessor", "llava_next": "LlavaNextProcessor",
               "qwen3_vl": "Qwen3VLProcessor", "smolvlm": "SmolVLMProcessor", "internvl": "InternVLProcessor",
               "idefics3": "Idefics3Processor", "gemma3": "Gemma3Processor"}
    if family not in classes:
        raise DualviewError(f"Cannot build the processor of this {type(model).__name__}: AutoProcessor failed on its "
                            "files and dualview has no adapter that knows how to assemble it.")
    base = getattr(transformers, classes[family])

    class WithoutVideo(base):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    tokenizer = AutoTokenizer.from_pretrained(location)
    image_processor = AutoImageProcessor.from_pretrained(location)
    kwargs = {"chat_template": tokenizer.chat_template}
    config = model.config
    if family == "llava_onevision":
        side = config.vision_config.image_size // config.vision_config.patch_size
        kwargs.update(num_image_tokens=side * side, vision_feature_select_strategy=config.vision_feature_select_strategy,
                      vision_aspect_ratio=config.vision_aspect_ratio)
    if family in ("llava", "llava_next"):
        kwargs.update(patch_size=config.vision_config.patch_size,
                      vision_feature_select_strategy=config.vision_feature_select_strategy)
    if family == "smolvlm":
        vision = config.vision_config
        kwargs.update(image_seq_len=(vision.image_size // vision.patch_size // config.scale_factor) ** 2)
    if family == "internvl":
        kwargs.update(image_seq_length=config.image_seq_length)
    if family in ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm", "internvl"):
        return WithoutVideo(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **kwargs)
    return base(image_processor=image_processor, tokenizer=tokenizer, **kwargs)


def _image_text_to_text(architecture: str) -> bool:
    """Whether transformers maps some config to ``architecture`` for AutoModelForImageTextToText."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return architecture in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values()


def load(name_or_path: str = BUILTIN, device: str | None = None, dtype=None):
    """Load a supported VLM and return a :class:`dualview.engine.session.Session`.

    Args:
        name_or_path: ``"builtin"`` (assets/shapes-vlm), a local directory saved with
            ``save_pretrained``, or a Hugging Face id already on disk (or downloadable).
        device: ``"cuda"``, ``"mps"``, ``"cpu"``...; default: the first available of cuda, mps, cpu.
            On cuda the model loads with ``device_map="auto"`` (spread over all visible GPUs).
        dtype: default float32 on CPU, bfloat16 on GPU.
    Raises:
        DualviewError: a class that is neither supported nor image-text-to-text (or whose decoder
            layers the generic path cannot find), missing path, model not on disk while offline,
            weights not in safetensors form (pickled ``.bin`` checkpoints are never unpickled).
    """
    import transformers

    from dualview.engine.adapters import ADAPTERS, ARCHITECTURES
    from dualview.engine.session import Session

    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise DualviewError("Give a model: 'builtin', a model directory, or a Hugging Face id.")
    name = str(name_or_path)
    location = _locate(name)
    architecture = _architecture(location, name)
    family = ARCHITECTURES.get(architecture) or ("generic" if _image_text_to_text(architecture) else None)
    if family is None:
        raise DualviewError(f"Model '{name}' is a {architecture}, which dualview does not support; "
                            f"supported: {SUPPORTED}.")
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    placement = {"device_map": "auto"} if device.startswith("cuda") else {}
    try:
        model = getattr(transformers, architecture).from_pretrained(location, dtype=torch_dtype, use_safetensors=True,
                                                                    **placement)
    except (OSError, ValueError) as error:
        raise DualviewError(f"Cannot load the weights of '{name}': {str(error).splitlines()[0][:200]}.") from None
    if not placement:
        model = model.to(device)
    model.eval()
    processor = _processor(location, family, model)
    return Session(name, model, processor, ADAPTERS[family](model, processor))
