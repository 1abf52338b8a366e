"""Pruning inside the language model against independent references, on tiny models of every class.

References: the unmodified model (keep everything); a model that keeps all tokens but masks the
dropped ones out of attention from layer l on (no cache, no slicing, greedy decoding by full
forward passes); for l = 0 the language model run on the shortened input embeddings with the
original position ids. Captured q/k/v are checked against the model's own projections and KV cache.
"""

import pytest
import torch

from dualview.engine.adapters import append_generated
from tests.engine_tiny import FAMILIES, PROMPT, gradient_image, tiny_session

IMAGE = gradient_image(100, 72)
NEW_TOKENS = 5


def kept_subset(session, fraction=0.4, seed=1):
    count = session.prepare(IMAGE, PROMPT).visual_positions.numel()
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[: max(1, int(fraction * count))]


def dropped_positions(prepared, kept) -> torch.Tensor:
    """Sequence positions of the visual tokens not in ``kept`` (indices into the visual tokens)."""
    dropped = torch.ones(prepared.visual_positions.numel(), dtype=torch.bool)
    dropped[kept] = False
    return prepared.visual_positions[dropped]


def extended(session, inputs, extra):
    """Model inputs with generated token ids ``extra`` appended (per-token inputs extended by the
    model's own generation step)."""
    return append_generated(session.model._update_model_kwargs_for_generation, inputs, extra)


def masked_logits(session, inputs, dropped, layer):
    """Full-length forward; layers >= ``layer`` cannot attend to positions ``dropped``, and otherwise
    attend as the model's own mask says (causal, or its sliding window, or image tokens both ways)."""
    length = inputs["input_ids"].shape[1]
    dtype = session.model.dtype

    def hook(module, args, kwargs):
        own = kwargs.get("attention_mask")
        if isinstance(own, torch.Tensor):
            allowed = (own if own.dtype == torch.bool else own == 0)[0, 0].clone()
        else:
            allowed = torch.ones(length, length, dtype=torch.bool).tril()
        allowed[:, dropped] = False
        allowed[dropped, dropped] = True  # a dropped row sees itself (its output is never used)
        mask = torch.zeros(1, 1, length, length, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        return args, {**kwargs, "attention_mask": mask}

    handles = [l.register_forward_pre_hook(hook, with_kwargs=True) for l in list(session.adapter.layers)[layer:]]
    try:
        with torch.no_grad():
            return session.model(**inputs, use_cache=False).logits[0].float()
    finally:
        for h in handles:
            h.remove()


def masked_greedy(session, prepared, dropped, layer, steps):
    eos = session.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    generated = []
    for _ in range(steps):
        token = int(masked_logits(session, extended(session, prepared.inputs, generated), dropped, layer)[-1].argmax())
        generated.append(token)
        if token in eos:
            break
    return generated


@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_every_token_is_the_unmodified_model(family):
    session = tiny_session(family)
    prepared = session.prepare(IMAGE, PROMPT)
    everything = torch.arange(prepared.visual_positions.numel())
    with torch.no_grad():
        plain = session.model(**prepared.inputs, use_cache=False).logits[0].float()
        plain_tokens = session.model.generate(**prepared.inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    for layer in (0, session.default_layer):
        logits, positions = session.logits(prepared, keep=everything, layer=layer)
        assert torch.equal(positions, torch.arange(prepared.length))
        assert torch.equal(logits, plain)
        # the head on the last rows only: those rows, at their positions, as the stock model gives them
        with torch.no_grad():
            plain_last = session.model(**prepared.inputs, use_cache=False, logits_to_keep=3).logits[0].float()
        last, last_positions = session.logits(prepared, keep=everything, layer=layer, last=3)
        assert torch.equal(last_positions, torch.arange(prepared.length)[-3:]) and torch.equal(last, plain_last)
        assert torch.allclose(last, plain[-3:], atol=1e-5)
        answer = session.answer(prepared, keep=everything, layer=layer, max_new_tokens=NEW_TOKENS)
        assert answer.token_ids == plain_tokens[0, prepared.length:].tolist()
        assert answer.kept_tokens == answer.prompt_tokens == prepared.length


@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_matches_masking_the_dropped_tokens(family):
    session = tiny_session(family)
    prepared = session.prepare(IMAGE, PROMPT)
    kept = kept_subset(session)
    dropped = dropped_positions(prepared, kept)
    for layer in sorted({0, session.default_layer, session.num_layers - 1}):
        logits, positions = session.logits(prepared, keep=kept, layer=layer)
        assert positions.numel() == prepared.length - dropped.numel()
        assert not set(positions.tolist()) & set(dropped.tolist())
        reference = masked_logits(session, prepared.inputs, dropped, layer)[positions]
        assert (logits - reference).abs().max() <= 1e-5
        answer = session.answer(prepared, keep=kept, layer=layer, max_new_tokens=NEW_TOKENS)
        assert answer.token_ids == masked_greedy(session, prepared, dropped, layer, NEW_TOKENS)
        assert answer.kept_tokens == positions.numel()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_decoding_step_matches_the_masked_reference(family):
    """The logits of each generated token (cached, pruned layers hold shorter caches; Gemma 3's
    sliding-window caches) equal a full forward pass of the masked reference on the same tokens."""
    from dualview.engine import hooks

    session = tiny_session(family)
    prepared = session.prepare(IMAGE, PROMPT)
    kept = kept_subset(session)
    dropped = dropped_positions(prepared, kept)
    layer = session.default_layer
    with torch.no_grad(), hooks.prune_from(session.adapter.layers, layer, prepared.keep_positions(kept),
                                           prepared.length):
        out = session.model.generate(**prepared.inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                     do_sample=False, output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, prepared.length:].tolist()
    assert len(out.logits) == NEW_TOKENS
    for step, logits in enumerate(out.logits):
        reference = masked_logits(session, extended(session, prepared.inputs, tokens[:step]), dropped, layer)[-1]
        assert (logits[0].float() - reference).abs().max() <= 1e-5, step


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_zero_equals_the_shortened_input_with_original_positions(family):
    session = tiny_session(family)
    prepared = session.prepare(IMAGE, PROMPT)
    kept = kept_subset(session, fraction=0.3, seed=2)
    language_model = session.adapter.language_model
    seen = {}

    class Stop(Exception):
        pass

    def grab(module, args, kwargs):
        seen.update(kwargs)
        raise Stop

    handle = language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad(), pytest.raises(Stop):
            session.model(**prepared.inputs, use_cache=False)
    finally:
        handle.remove()
    keep = prepared.keep_positions(kept)
    embeds = seen["inputs_embeds"][:, keep]
    positions = seen.get("position_ids")
    positions = torch.arange(prepared.length)[None] if positions is None else positions
    # An explicit mask: without one (and without a cache) transformers reads position-id gaps as
    # packed sequences and builds a block-diagonal mask. A model that hands its language model
    # ready 4-D masks (Gemma 3: image tokens both ways, sliding windows) gets them cut to the kept rows
    # and columns; otherwise a 2-D mask of ones.
    own = seen.get("attention_mask")
    if isinstance(own, dict):
        mask = {name: m[:, :, keep][..., keep] for name, m in own.items()}
    else:
        mask = torch.ones(1, keep.numel(), dtype=torch.long)
    extra = {}
    if seen.get("deepstack_visual_embeds") is not None:  # Qwen3-VL: DeepStack features of the kept visual tokens
        is_visual = seen["visual_pos_masks"][0]
        kept_rows = torch.nonzero(is_visual).reshape(-1).tolist()
        rows = [kept_rows.index(p) for p in keep.tolist() if is_visual[p]]
        extra = {"visual_pos_masks": seen["visual_pos_masks"][:, keep],
                 "deepstack_visual_embeds": [e[rows] for e in seen["deepstack_visual_embeds"]]}
    with torch.no_grad():
        hidden = language_model(inputs_embeds=embeds, position_ids=positions[..., keep], use_cache=False,
                                attention_mask=mask, **extra)
        reference = session.model.lm_head(hidden.last_hidden_state)[0].float()
    logits, got_positions = session.logits(prepared, keep=kept, layer=0)
    assert torch.equal(got_positions, keep)
    assert (logits - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_qkv_equal_the_models_own(family):
    session = tiny_session(family)
    layer = session.default_layer
    analysis = session.analyze(session.prepare(IMAGE, PROMPT), layer=layer)
    attention = session.adapter.layers[layer].self_attn
    outputs = {}
    # q and k before RoPE: the projections' outputs, or the per-head norms' (Gemma 3, Qwen3) that follow them
    names = ("q_norm", "k_norm") if getattr(attention, "q_norm", None) is not None else ("q_proj", "k_proj")
    handles = [getattr(attention, name).register_forward_hook(
        lambda m, a, out, name=name[0]: outputs.__setitem__(name, out[0])) for name in names]
    try:
        with torch.no_grad():
            result = session.model(**analysis.prepared.inputs, use_cache=True)
    finally:
        for h in handles:
            h.remove()
    cache = result.cache if hasattr(result, "cache") else result.past_key_values
    p = analysis.projections
    d = attention.head_dim
    length = analysis.prepared.length

    def heads(t):  # [S, H * d] or [S, H, d] (before the head transpose) or [H, S, d] (after) -> [H, S, d]
        return t if t.dim() == 3 and t.shape[1] == length != t.shape[0] else t.reshape(length, -1, d).transpose(0, 1)

    assert torch.allclose(p.q_pre, heads(outputs["q"]), atol=1e-6)
    assert torch.allclose(p.k_pre, heads(outputs["k"]), atol=1e-6)
    keys, values = cache.layers[layer].keys[0].float(), cache.layers[layer].values[0].float()
    window = getattr(attention, "sliding_window", None)
    cached = min(length, window - 1) if window else length  # a sliding-window cache keeps the last window - 1
    assert keys.shape[-2] == values.shape[-2] == cached
    assert torch.allclose(p.k_post[:, length - cached:], keys, atol=1e-6)
    assert torch.allclose(p.v[:, length - cached:], values, atol=1e-6)
    assert p.q_post.shape == p.q_pre.shape and not torch.allclose(p.q_post, p.q_pre)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_tokens_are_the_instruction(family):
    session = tiny_session(family)
    prepared = session.prepare(IMAGE, PROMPT)
    text = session.adapter.tokenizer.decode(prepared.input_ids[prepared.text_positions])
    expected = PROMPT.rstrip("?") if family == "shapes" else PROMPT  # its tokenizer drops "?"
    assert text.strip() == expected
    assert not set(prepared.text_positions.tolist()) & set(prepared.visual_positions.tolist())


def test_answer_logprob_is_teacher_forced_log_likelihood_of_the_generated_ids():
    session = tiny_session("llava")
    prepared = session.prepare(IMAGE, PROMPT)
    answer = session.answer(prepared, max_new_tokens=3)
    stops = {session.adapter.tokenizer.eos_token_id}
    ids = []
    for token in answer.token_ids:  # the answer as generated, up to and with the token that ended it
        ids.append(token)
        if token in stops:
            break
    assert session.answer_ids(answer) == ids
    with torch.no_grad():
        logits = session.model(**extended(session, prepared.inputs, ids), use_cache=False).logits[0].float()
    steps = torch.log_softmax(logits[prepared.length - 1:-1], dim=-1)
    expected = float(steps[torch.arange(len(ids)), torch.tensor(ids)].sum())
    assert session.answer_logprob(prepared, answer) == pytest.approx(expected, abs=1e-4)
    assert session.answer_logprob(prepared, ids) == pytest.approx(expected, abs=1e-4)
    assert answer.logprob_of(ids) == pytest.approx(expected, abs=1e-4)  # the generation's own terms
    assert answer.logprob_of([ids[0] + 1]) is None  # another answer is not read off this generation
    kept = kept_subset(session)
    dropped = torch.ones(prepared.visual_positions.numel(), dtype=torch.bool)
    dropped[kept] = False
    masked = masked_logits(session, extended(session, prepared.inputs, ids), prepared.visual_positions[dropped], 1)
    steps = torch.log_softmax(masked[prepared.length - 1:-1], dim=-1)
    expected = float(steps[torch.arange(len(ids)), torch.tensor(ids)].sum())
    assert session.answer_logprob(prepared, answer, keep=kept, layer=1) == pytest.approx(expected, abs=1e-4)


def test_answer_text_is_scored_only_when_it_round_trips_through_the_tokenizer():
    """The built-in layout's word-level tokenizer lowercases: "U" would be scored as [UNK]."""
    from dualview.errors import DualviewError

    session = tiny_session("shapes")
    prepared = session.prepare(IMAGE, PROMPT)
    ids = session.answer_ids("red")
    assert session.answer_logprob(prepared, "red") == session.answer_logprob(prepared, ids)
    for text in ("U", "Red", "red!"):
        with pytest.raises(DualviewError, match="does not survive this model's tokenizer"):
            session.answer_logprob(prepared, text)
    with pytest.raises(DualviewError, match="empty"):
        session.answer_logprob(prepared, "")


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "qwen3_vl", "gemma3", "shapes"])
def test_selection_fused_into_the_forward_pass_equals_analyse_then_answer(family):
    from dualview.errors import DualviewError
    from dualview.methods import get_method

    session = tiny_session(family)
    prepared = session.prepare(IMAGE, PROMPT)
    for name, layer in (("iwp", None), ("divprune", 0)):
        method = get_method(name)
        analysis = session.analyze(prepared, layer=layer)
        selection = method.select(analysis, 0.3)
        two_step = session.answer(prepared, keep=selection.kept, layer=analysis.layer, max_new_tokens=NEW_TOKENS)
        fused = session.answer(prepared, method=method, budget=0.3, layer=layer, max_new_tokens=NEW_TOKENS)
        assert fused.kept == selection.kept.tolist()
        assert fused.token_ids == two_step.token_ids and fused.kept_tokens == two_step.kept_tokens
        assert fused.selection_seconds > 0
    for name in ("cdpruner", "fastv"):
        with pytest.raises(DualviewError, match="cannot select inside the pruned pass"):
            session.answer(prepared, method=get_method(name), budget=0.3, layer=1)


def test_every_call_takes_a_prepared_input():
    from dualview.errors import DualviewError

    session = tiny_session("llava")
    for call in (lambda: session.analyze(IMAGE), lambda: session.answer(IMAGE), lambda: session.logits("x")):
        with pytest.raises(DualviewError, match="session.prepare"):
            call()
