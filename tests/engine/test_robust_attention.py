"""Issue 17, kind 2: every attention implementation transformers offers on this machine, pruning
at every layer (0 = before the language model, where DivPrune and CDPruner prune), every family,
gives the tokens and decoding logits of sdpa; an implementation the pruning hooks cannot slice is
switched to sdpa with a warning. Through the Python API and the CLI (a model whose config.json asks
for eager attention).
"""

import json
import shutil
import warnings

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import dualview
from dualview import cli
from dualview.engine.hooks import SUPPORTED_ATTENTION
from tests.engine_tiny import FAMILIES, PROMPT, gradient_image, tiny_dir

NEW_TOKENS = 5


def implementations() -> list[str]:
    return ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]


def generate(session, image, keep, layer):
    """Tokens of a greedy answer and the logits of every decoding step ``[NEW_TOKENS, V]``."""
    steps = []
    handle = session.model.lm_head.register_forward_hook(lambda m, a, out: steps.append(out[0, -1].float()))
    try:
        answer = session.answer(session.prepare(image, PROMPT), keep=keep, layer=layer, max_new_tokens=NEW_TOKENS)
    finally:
        handle.remove()
    return answer.token_ids, torch.stack(steps)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_attention_implementation_matches_sdpa_at_every_layer(family):
    session = dualview.load(tiny_dir(family), device="cpu")  # its own copy: implementations change
    session.model.generation_config.eos_token_id = None  # decode every step, whatever the noise says
    image = gradient_image(90, 60)
    num_visual = session.prepare(image, PROMPT).visual_positions.numel()
    keep = list(range(0, num_visual, 3))
    layers = range(session.num_layers)
    reference = {layer: generate(session, image, keep, layer) for layer in layers}
    tried = []
    for name in implementations():
        for layer in layers:
            session.model.set_attn_implementation("sdpa")
            try:
                session.model.set_attn_implementation(name)
            except (ValueError, ImportError):  # not installed here, or not offered for this model class
                break
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                tokens, logits = generate(session, image, keep, layer)
            switched = [w for w in caught if "switched this model's attention" in str(w.message)]
            assert len(switched) == (name not in SUPPORTED_ATTENTION), name
            assert tokens == reference[layer][0], (name, layer)
            torch.testing.assert_close(logits, reference[layer][1], atol=2e-5, rtol=1e-4)
        else:
            tried.append(name)
    assert "eager" in tried and "sdpa" in tried


def test_cli_with_a_config_asking_for_eager_matches_sdpa(tmp_path, capsys):
    family = "llava_next"
    eager_dir = tmp_path / "eager"
    shutil.copytree(tiny_dir(family), eager_dir)
    config = json.loads((eager_dir / "config.json").read_text())
    (eager_dir / "config.json").write_text(json.dumps({**config, "attn_implementation": "eager"}))
    assert dualview.load(str(eager_dir), device="cpu").model.config.get_text_config()._attn_implementation == "eager"
    image = tmp_path / "image.png"
    gradient_image(90, 60).save(image)
    outputs = []
    for model in (tiny_dir(family), str(eager_dir)):
        for method in ("divprune", "iwp"):  # layer 0, and the analysis layer
            capsys.readouterr()
            code = cli.main(["answer", "--model", model, "--image", str(image), "--prompt", PROMPT, "--method",
                             method, "--budget", "30%", "--max-new-tokens", "4", "--json"])
            out, err = capsys.readouterr()
            assert code == 0 and err == "", err
            result = json.loads(out)
            outputs.append((result["kept"], result["pruned_answer"]["token_ids"], result["full_answer"]["token_ids"]))
    assert outputs[:2] == outputs[2:]
