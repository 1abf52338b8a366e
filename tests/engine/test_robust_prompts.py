"""Issue 17, kind 1: text that a model's tokenizer or processor reads as a special token (image
placeholders, chat markers, any added token) in a prompt or an answer to score is refused with one
sentence naming it, before any model work, in every family, from the Python API and the CLI.

The reference for "special" is the tokenizer itself: a text is special for a model when tokenizing
it normally differs from tokenizing it with ``split_special_tokens=True`` (everything as plain text).
"""

import os
import subprocess
import sys
from contextlib import contextmanager

import pytest

from dualview import cli
from dualview.errors import DualviewError
from tests.engine_tiny import FAMILIES, PROMPT, gradient_image, tiny_dir, tiny_session

COMMON_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<start_of_image>", "[INST]", "<s>", "</s>",
                  "<|image|>", "USER:")


def candidates() -> list[str]:
    """Every special added token and processor token string of every family, their upper-case
    forms, and markers of other public models: each family sees the others' tokens too. (Added
    tokens the tokenizer does not mark special, e.g. PaliGemma's 1 152 location and segmentation
    tokens, are tried only on their own family: :func:`own_plain_added`.)"""
    found = set(COMMON_MARKERS)
    for family in FAMILIES:
        processor = tiny_session(family).processor
        found |= {added.content for added in processor.tokenizer.added_tokens_decoder.values() if added.special}
        found |= {v for k, v in vars(processor).items() if k.endswith("_token") and isinstance(v, str)}
    return sorted(found | {c.upper() for c in found})


def own_plain_added(tokenizer, count: int = 8) -> list[str]:
    """A few of this tokenizer's added tokens that it does not mark special."""
    return sorted(added.content for added in tokenizer.added_tokens_decoder.values() if not added.special)[:count]


def is_special(tokenizer, text: str) -> bool:
    """Whether the tokenizer reads a piece of ``text`` as a special token or as any added token."""
    plain = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids != plain or bool(set(ids) & (set(tokenizer.added_tokens_decoder) - {tokenizer.unk_token_id}))


@contextmanager
def no_model_work(session):
    def refuse(*args, **kwargs):
        raise AssertionError("the model ran")

    handle = session.model.register_forward_pre_hook(refuse)
    try:
        yield
    finally:
        handle.remove()


def check_refusal(error: DualviewError, text: str) -> None:
    message = str(error)
    named = message.split("contains ", 1)[1].split(", which", 1)[0].strip("'\"")
    assert named in text and "\n" not in message and message.endswith(".")


@pytest.mark.parametrize("family", FAMILIES)
def test_special_text_in_prompt_is_refused_and_plain_text_kept(family):
    session = tiny_session(family)
    tokenizer = session.processor.tokenizer
    image = gradient_image(70, 50)
    refused = 0
    for candidate in candidates() + own_plain_added(tokenizer):
        for prompt in (f"{candidate}\n{PROMPT}", f"{PROMPT} {candidate}", f"is{candidate}red"):
            if is_special(tokenizer, prompt):
                with no_model_work(session), pytest.raises(DualviewError) as error:
                    session.prepare(image, prompt)
                check_refusal(error.value, prompt)
                refused += 1
            else:  # plain text: its tokens reach the model as the tokenizer reads plain text
                prepared = session.prepare(image, prompt)
                expected = tokenizer(prompt, add_special_tokens=False, split_special_tokens=True)["input_ids"]
                assert prepared.input_ids[prepared.text_positions].tolist() == expected
    special = sum(added.special for added in tokenizer.added_tokens_decoder.values())
    assert refused >= 3 * (special + len(own_plain_added(tokenizer))) - 3  # the unknown token may be plain


@pytest.mark.parametrize("family", FAMILIES)
def test_special_text_in_an_answer_to_score_is_refused(family):
    session = tiny_session(family)
    image = gradient_image(70, 50)
    placeholder = session.processor.image_token
    prepared = session.prepare(image, PROMPT)
    with no_model_work(session), pytest.raises(DualviewError) as error:
        session.answer_logprob(prepared, f"red {placeholder}")
    check_refusal(error.value, f"red {placeholder}")
    assert "answer to score" in str(error.value)
    for added in session.processor.tokenizer.added_tokens_decoder.values():
        if is_special(session.processor.tokenizer, added.content):
            with no_model_work(session), pytest.raises(DualviewError):
                session.answer_logprob(prepared, added.content)
    assert isinstance(session.answer_logprob(prepared, "red"), float)


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_gives_the_api_sentence(family, tmp_path, capsys):
    session = tiny_session(family)
    path = tmp_path / "image.png"
    gradient_image(70, 50).save(path)
    prompt = f"{session.processor.image_token} what color is the circle?"
    with pytest.raises(DualviewError) as error:
        session.prepare(gradient_image(70, 50), prompt)
    capsys.readouterr()
    code = cli.main(["answer", "--model", tiny_dir(family), "--image", str(path), "--prompt", prompt,
                     "--max-new-tokens", "1"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err == f"dualview: error: {error.value}\n"


def test_module_entry_point_exits_2_with_the_api_sentence(tmp_path):
    family = "qwen2_vl"
    path = tmp_path / "image.png"
    gradient_image(70, 50).save(path)
    prompt = "<|vision_start|> what color is the circle?"
    with pytest.raises(DualviewError) as error:
        tiny_session(family).prepare(gradient_image(70, 50), prompt)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-m", "dualview", "answer", "--model", tiny_dir(family), "--image",
                           str(path), "--prompt", prompt], capture_output=True, text=True, cwd=root,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": root})
    assert done.returncode == 2 and done.stdout == "" and done.stderr == f"dualview: error: {error.value}\n"
