"""Training code of the built-in model: packing is exact, a tiny model learns, export round-trips."""

import dataclasses

import numpy as np
import pytest
import torch

from dualview.shapes import model as M
from dualview.shapes import train as T
from dualview.shapes import world


@pytest.fixture(scope="module")
def tiny():
    return M.build_model(M.TINY, seed=0).eval()


def test_prompt_is_case_and_question_mark_insensitive():
    tok = M.build_tokenizer()
    ref = tok(M.format_prompt("what color is the circle?"))["input_ids"]
    for q in ["What color is the circle", "WHAT COLOR IS THE CIRCLE?", "  what  color is the circle ? "]:
        assert tok(M.format_prompt(q))["input_ids"] == ref
    assert ref[0] == M.VOCAB[M.BOS] and ref[1] == M.VOCAB[M.IMAGE] and ref[-1] == M.VOCAB[M.SEP]
    rng = np.random.default_rng(0)
    for _ in range(200):  # every grammar question and answer is in the vocabulary
        s = world.sample(rng, 64)
        assert M.VOCAB[M.UNK] not in tok(s.question, add_special_tokens=False)["input_ids"]
        assert all(w in M.VOCAB for w in s.answer.split())
        assert tok.decode(T.answer_ids(s.answer)) == s.answer


def test_packed_forward_matches_the_model(tiny):
    """Each packed question segment sees exactly what the stock Llava forward sees."""
    size = M.TINY
    batch = T.make_batch(np.random.default_rng(1), 2, 3, size)
    P = size.num_image_tokens
    _, S = batch["seg"].shape[1:]
    with torch.no_grad():
        px = T.to_pixels(batch["images"], "cpu")
        emb = tiny.model.language_model.get_input_embeddings()
        feats = T.vision_features(tiny, px)
        ref_feats = tiny.model.get_image_features(px, vision_feature_layer=-1,
                                                  vision_feature_select_strategy="full").pooler_output
        assert torch.allclose(tiny.model.multi_modal_projector(feats), torch.stack(ref_feats), atol=1e-6)
        x = torch.cat([emb(torch.full((2, 1), M.VOCAB[M.BOS])), tiny.model.multi_modal_projector(feats),
                       emb(torch.from_numpy(batch["seg"].reshape(2, -1)))], 1)
        mask = T.block_mask(1 + P, 3, S)[None, None].expand(2, 1, -1, -1)
        pos = T.positions(1 + P, 3, S)[None].expand(2, -1)
        h = tiny.model.language_model(inputs_embeds=x, attention_mask=mask, position_ids=pos).last_hidden_state
        packed = tiny.lm_head(h)
        for b in range(2):
            for q in range(3):
                seg = batch["seg"][b, q]
                n = int((seg != M.VOCAB[M.PAD]).sum())
                ids = torch.tensor([[M.VOCAB[M.BOS]] + [M.VOCAB[M.IMAGE]] * P + seg[:n].tolist()])
                ref = tiny(input_ids=ids, pixel_values=px[b: b + 1]).logits[0, 1 + P:]
                a = 1 + P + q * S
                assert torch.allclose(packed[b, a: a + n], ref, atol=1e-5)


def test_patch_targets_mark_objects_and_centres():
    rng = np.random.default_rng(2)
    scene = world.make_scene(rng, 224, n_objects=3, letter=True)
    _, labels = world.render(scene, labels=True)
    t = T.patch_targets(scene, labels, 16)
    assert (t["center_shape"] > 0).sum() == len({(int(o.center[1] // 16), int(o.center[0] // 16))
                                                 for o in scene.objects})
    for o in scene.objects:
        p = int(o.center[1] // 16) * 14 + int(o.center[0] // 16)
        assert world.CELLS[t["center_cell"][p] - 1] == world.cell_of(*o.center, 224)
        assert world.COLOR_NAMES[t["center_color"][p] - 1] == o.color
    assert (t["letter"] == 1 + world.LETTERS.index(scene.letter["char"])).sum() >= 1
    assert (t["cover_color"] > 0).sum() >= len(scene.objects)


def test_tiny_training_reduces_loss(tmp_path):
    out = T.train(_args(tmp_path, 30, "--attn-layers", "1", "--query-layers", "0", "--word-layers", "0"))
    assert out["step"] == 30
    assert out["last_loss"] < 0.8 * out["first_loss"], out
    # resuming continues from the checkpoint
    more = T.train(_args(tmp_path, steps=32))
    assert more["step"] == 32


def _args(tmp_path, steps=30, *extra):
    return T.build_parser().parse_args(
        ["--run", str(tmp_path / "run"), "--steps", str(steps), "--scenes", "4", "--vision-scenes", "4",
         "--questions", "4", "--lr", "3e-3", "--warmup", "5", "--threads", "1", "--eval-every", "1000",
         "--eval-n", "0", "--size", "tiny", "--device", "cpu", "--no-progress", *extra])


def test_export_round_trip(tiny, tmp_path):
    out = T.export(tiny, tmp_path / "m", M.TINY)
    model, processor = M.load_builtin(out)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.vision_feature_select_strategy == "full"
    s = world.sample_from_seed(0, size=64)
    inputs = processor(images=s.image, text=M.format_prompt(s.question), return_tensors="pt")
    assert int((inputs["input_ids"] == M.VOCAB[M.IMAGE]).sum()) == M.TINY.num_image_tokens
    px = T.to_pixels(np.asarray(s.image)[None], "cpu")
    assert torch.allclose(inputs["pixel_values"], px, atol=1e-6)  # training normalises like the processor
    with torch.no_grad():
        ref = tiny(**inputs).logits
        got = model(**inputs).logits
    assert torch.allclose(ref, got, atol=0.05)  # fp16 weights, fp32 compute
    assert isinstance(M.answer(model, processor, s.image, s.question), str)


def test_init_starts_from_an_exported_model(tiny, tmp_path):
    src = T.export(tiny, tmp_path / "m", M.TINY)
    run = T.build_parser().parse_args(["--run", str(tmp_path / "warm"), "--init", str(src), "--until", "0",
                                       "--threads", "1", "--eval-n", "0", "--device", "cpu", "--no-progress"])
    T.train(run)  # stops before the first step, checkpointing what it started from
    state = torch.load(tmp_path / "warm" / "ckpt.pt", weights_only=False)
    assert state["size"] == dataclasses.asdict(M.TINY)  # the size comes from the exported config, not --size
    for name, w in tiny.state_dict().items():
        assert torch.equal(state["model"][name], w.half().float()), name  # the fp16 export, read back


def test_word_alignment_loss_matches_a_per_patch_reference():
    g = torch.Generator().manual_seed(0)
    B, P, D = 2, 5, 8
    img = torch.randn(B, P, D, generator=g)
    emb = torch.randn(len(M.VOCAB), D, generator=g)
    aux = {k: np.zeros((B, P), np.int64) for k in T.AUX}
    aux["cover_color"][0, 1], aux["cover_shape"][0, 1] = 3, 2  # a patch over an object
    aux["cover_color"][1, 4], aux["cover_shape"][1, 4] = 7, 5
    aux["letter"][1, 0] = 26  # a patch over the letter Z

    terms = []
    for k, words in T.ALIGN_WORDS.items():
        ces = []
        for b in range(B):
            for p in range(P):
                c = int(aux[k][b, p])
                if c == 0:
                    continue
                sims = [T.ALIGN_SCALE * float(torch.nn.functional.cosine_similarity(img[b, p], emb[M.VOCAB[w]], dim=0))
                        for w in words]
                ces.append(-sims[c - 1] + float(torch.logsumexp(torch.tensor(sims), 0)))
        terms.append(sum(ces) / len(ces))
    got = T.word_alignment_loss(img, emb, aux, "cpu")
    assert abs(float(got) - sum(terms) / len(terms)) < 1e-5

    # tokens equal to the sum of their two words' directions are classified right
    for b, p in [(0, 1), (1, 4)]:
        img[b, p] = (torch.nn.functional.normalize(emb[M.VOCAB[world.COLOR_NAMES[aux["cover_color"][b, p] - 1]]], dim=0)
                     + torch.nn.functional.normalize(emb[M.VOCAB[world.SHAPES[aux["cover_shape"][b, p] - 1]]], dim=0))
    img[1, 0] = emb[M.VOCAB["Z"]]
    metrics = {}
    T.word_alignment_loss(img, emb, aux, "cpu", metrics)
    assert metrics == {"align_cover_color": 1.0, "align_cover_shape": 1.0, "align_letter": 1.0}


def test_evidence_patches_are_the_patches_a_box_covers():
    got = T.evidence_patches([(20, 0, 40, 8)], 64, 16).reshape(4, 4)
    # columns 16-32 (overlap 12 px) and 32-48 (8 px); rows 0-16 (8 px): 96 and 64 >= 32 px
    want = np.zeros((4, 4), bool)
    want[0, 1] = want[0, 2] = True
    assert (got == want).all()
    assert not T.evidence_patches([(30, 30, 34, 34)], 64, 16).any()  # 16 px of one patch < 1/8
    assert not T.evidence_patches([], 64, 16).any()


def test_centre_patches_hold_one_patch_per_counted_object():
    got = T.centre_patches([(0, 0, 10, 10), (40, 20, 64, 30), (34, 18, 46, 30)], 64, 16).reshape(4, 4)
    want = np.zeros((4, 4), bool)
    want[0, 0] = want[1, 3] = want[1, 2] = True  # centres (5, 5), (52, 25), (40, 24)
    assert (got == want).all()
    assert not T.centre_patches([], 64, 16).any()


def test_counting_questions_are_supervised_on_object_centres():
    batch = T.make_batch(np.random.default_rng(5), 6, 12, M.TINY)
    word = {i: w for w, i in M.VOCAB.items()}
    for b in range(6):
        for q in range(12):
            qtype = batch["qtypes"][b][q]
            assert batch["counting"][b, q] == (qtype in T.COUNT_TYPES)
            if qtype in T.COUNT_TYPES:
                labels = batch["labels"][b, q]
                count = int(word[int(labels[labels != T.IGNORE][0])])
                centres = int(batch["evidence"][b, q].sum())
                # one centre patch per counted object (two centres may share a patch, rarely)
                assert (centres == 0) == (count == 0) and centres <= count
    assert batch["counting"].any() and not batch["counting"].all()


def _packed_eager_forward(model_seed: int, batch_seed: int):
    """A tiny model's packed forward (eager attention, all hidden states and attentions) on a
    3-scene x 8-question batch: (batch, decoder, its output, position ids)."""
    model = M.build_model(M.TINY, seed=model_seed).eval()
    model.set_attn_implementation("eager")
    batch = T.make_batch(np.random.default_rng(batch_seed), 3, 8, M.TINY)
    lm = model.model.language_model
    P = M.TINY.num_image_tokens
    B, Q, S = batch["seg"].shape
    feats = T.vision_features(model, T.to_pixels(batch["images"], "cpu"))
    emb = lm.get_input_embeddings()
    x = torch.cat([emb(torch.full((B, 1), M.VOCAB[M.BOS])), model.model.multi_modal_projector(feats),
                   emb(torch.from_numpy(batch["seg"]).reshape(B, Q * S))], 1)
    # eager attention adds a 4-D mask to the logits, so it gets the block mask as 0 / -inf
    mask = torch.zeros(1 + P + Q * S, 1 + P + Q * S).masked_fill(~T.block_mask(1 + P, Q, S), float("-inf"))
    pos = T.positions(1 + P, Q, S)[None].expand(B, -1)
    with torch.no_grad():
        out = lm(inputs_embeds=x, attention_mask=mask[None, None].expand(B, 1, -1, -1), position_ids=pos,
                 output_hidden_states=True, output_attentions=True)
    return batch, lm, out, pos


@pytest.mark.parametrize("sink", [0.5, 1.0, 4.0])
def test_a_counting_target_is_a_cross_entropy_whatever_the_sink(sink):
    """The counting term is -(sink log p_<s> + sum of log p_centre) / (sink + n), also for a count of
    0 (the target is <s> alone: log p_<s>) and for a sink below 1; a query without target gives 0."""
    logp = torch.log_softmax(torch.randn(4, 6, generator=torch.Generator().manual_seed(0)), -1)
    target = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]],
                          dtype=torch.bool)
    got = T.attention_target_log_prob(logp, target, torch.ones(4, dtype=torch.bool), sink)
    want = [float(logp[0, 0]), (sink * float(logp[1, 0]) + float(logp[1, 1] + logp[1, 3])) / (sink + 2),
            (sink * float(logp[2, 0]) + float(logp[2, 1:].sum())) / (sink + 5), 0.0]
    assert torch.allclose(got, torch.tensor(want), atol=1e-6)


@pytest.mark.parametrize("seed,sink", [(3, 1.0), (4, 1.0), (3, 4.0)])
def test_evidence_attention_loss_reads_the_models_own_attention(seed, sink):
    """The rebuilt head-0 logits at each <sep> equal the eager attention of the packed forward; a
    counting target weighs <s> ``sink`` times each centre."""
    batch, lm, out, pos = _packed_eager_forward(1, seed)
    P = M.TINY.num_image_tokens
    B, Q, S = batch["seg"].shape
    with torch.no_grad():
        got = T.evidence_attention_loss(lm, out.hidden_states, pos, batch["seg"], batch["evidence"],
                                        batch["counting"], (1,), 1 + P, "cpu", sink=sink)
    # reference: head 0's attention at <sep>, renormalised over the prefix; mass on the evidence, or
    # for counting questions the cross-entropy with sink/(sink+n) on <s> and 1/(sink+n) per centre
    att = out.attentions[1][:, 0]  # [B, L, L]
    terms, kinds = [], set()
    for b in range(B):
        for q in range(Q):
            at = 1 + P + q * S + int(np.nonzero(batch["seg"][b, q] == M.VOCAB[M.SEP])[0][0])
            row = att[b, at, : 1 + P] / att[b, at, : 1 + P].sum()
            ev = torch.from_numpy(batch["evidence"][b, q])
            if batch["counting"][b, q]:
                n = int(ev.sum())
                terms.append(-(sink * row[0].log() + row[1:][ev].log().sum()) / (sink + n))
                kinds.add("count")
            elif ev.any():
                terms.append(-torch.log(row[1:][ev].sum()))
                kinds.add("find")
    assert kinds == {"count", "find"}, "the batch should hold both kinds of supervised question"
    assert torch.allclose(got, torch.stack(terms).mean(), atol=1e-5)


def test_question_attention_loss_reads_the_models_own_attention():
    """The last head's rebuilt attention at each <sep> equals the eager attention of the packed
    forward (the block mask: the prefix and its own segment); the loss is -log its weight on the
    question's last key word (an answer that is a key word does not count)."""
    batch, lm, out, pos = _packed_eager_forward(2, 4)
    P = M.TINY.num_image_tokens
    B, Q, S = batch["seg"].shape
    with torch.no_grad():
        got = T.question_attention_loss(lm, out.hidden_states, pos, batch["seg"], (0, 1), 1 + P, "cpu")
    key_words = set(world.COLOR_NAMES) | set(world.SHAPES) | set(world.PLURALS.values())
    word = {i: w for w, i in M.VOCAB.items()}
    per_layer = []
    for layer in (0, 1):
        att = out.attentions[layer][:, -1]  # [B, L, L], the last head
        terms = []
        for b in range(B):
            for q in range(Q):
                ids = batch["seg"][b, q]
                at = int(np.nonzero(ids == M.VOCAB[M.SEP])[0][0])
                keys = [j for j in range(at) if word[int(ids[j])] in key_words]
                if keys:
                    terms.append(-torch.log(att[b, 1 + P + q * S + at, 1 + P + q * S + keys[-1]]))
        per_layer.append(torch.stack(terms).mean())
    assert len(terms) < B * Q, "the batch should hold questions without key words too"
    assert torch.allclose(got, torch.stack(per_layer).mean(), atol=1e-5)


def test_key_words_look_at_the_objects_they_name():
    """Each colour or shape word targets the objects named by it and the key words before it, so the
    question's last key word targets the question's own evidence (from world.ask); a plural spreads
    over <s> and the centres; a word naming nothing targets <s>."""
    size = M.ModelSize()
    rng = np.random.default_rng(11)
    seen = set()
    for _ in range(60):
        scene = world.make_scene(rng, size.image_size)
        for qtype in world.feasible_types(scene):
            qa = world.ask(scene, qtype, rng)
            targets, counting = T.word_targets(scene, qa.question, size)
            words = qa.question.rstrip("?").split()
            rows = [j for j in range(T.SEG_LEN) if targets[j].any()]
            named = [j for j, w in enumerate(words) if w in world.COLOR_NAMES or w in world.SHAPES
                     or w in world.PLURALS.values()]
            assert rows == named
            assert counting.tolist() == [j in named and words[j] in world.PLURALS.values() for j in range(T.SEG_LEN)]
            if not named:
                continue
            last = targets[named[-1]]
            if qtype == "count_shape":
                assert last[0] and (last[1:] == T.centre_patches(qa.evidence, size.image_size, size.patch_size)).all()
                seen.add("count")
            elif qa.evidence:
                assert not last[0]
                assert (last[1:] == T.evidence_patches(qa.evidence, size.image_size, size.patch_size)).all()
                seen.add("find")
            else:  # a "no": nothing is named
                assert last[0] and not last[1:].any()
                seen.add("none")
            if len(named) == 2:  # "is there a red circle" / "where is the red circle": "red" alone first
                boxes = [o.box for o in scene.objects if o.color == words[named[0]]]
                want = T.evidence_patches(boxes, size.image_size, size.patch_size)
                assert (targets[named[0], 1:] == want).all() and targets[named[0], 0] == (not want.any())
                seen.add("colour first")
    assert seen == {"count", "find", "none", "colour first"}


@pytest.mark.parametrize("sink", [1.0, 4.0])
def test_word_evidence_loss_reads_the_models_own_attention(sink):
    """Head 0's rebuilt attention at every key word equals the eager attention of the packed forward;
    the loss is -log its mass on the target, or for a plural the cross-entropy with sink/(sink+n) on
    <s> and 1/(sink+n) on each of the n centres."""
    batch, lm, out, pos = _packed_eager_forward(1, 3)
    P = M.TINY.num_image_tokens
    B, Q, S = batch["seg"].shape
    with torch.no_grad():
        got = T.word_evidence_loss(lm, out.hidden_states, pos, batch["words"], batch["word_counting"], (0, 1),
                                   1 + P, "cpu", sink=sink)
    per_layer, kinds = [], set()
    for layer in (0, 1):
        att = out.attentions[layer][:, 0]  # [B, L, L]
        terms = []
        for b, q, j in zip(*np.nonzero(batch["words"].any(-1))):
            at = 1 + P + q * S + j
            row = att[b, at, : 1 + P] / att[b, at, : 1 + P].sum()  # renormalised over the prefix
            target = torch.from_numpy(batch["words"][b, q, j])
            if batch["word_counting"][b, q, j]:
                assert target[0], "a plural's target holds <s>"
                n = int(target[1:].sum())
                terms.append(-(sink * row[0].log() + row[1:][target[1:]].log().sum()) / (sink + n))
                kinds.add("count")
            else:
                terms.append(-row[target].sum().log())
                kinds.add("find")
        per_layer.append(torch.stack(terms).mean())
    assert kinds == {"count", "find"}, "the batch should hold both kinds of key word"
    assert torch.allclose(got, torch.stack(per_layer).mean(), atol=1e-5)


def test_bad_training_options_give_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        T.build_parser().parse_args(["--attn-layers", "2,x"])
    assert "is not a comma-separated list of layer numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="this model's decoder has layers 0 to 1"):
        T.train(_args(tmp_path, 2, "--attn-layers", "1,2"))  # the tiny decoder has 2 layers
    with pytest.raises(SystemExit, match="--query-layers 5: this model's decoder has layers 0 to 1"):
        T.train(_args(tmp_path, 2, "--query-layers", "5"))
    with pytest.raises(SystemExit, match="--word-layers 2: this model's decoder has layers 0 to 1"):
        T.train(_args(tmp_path, 2, "--word-layers", "2"))
    with pytest.raises(SystemExit, match="--share-layers 3: this model's decoder has layers 0 to 1"):
        T.train(_args(tmp_path, 2, "--share-layers", "3"))
    with pytest.raises(SystemExit, match="--background-layers 2: this model's decoder has layers 0 to 1"):
        T.train(_args(tmp_path, 2, "--background-layers", "2"))
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(SystemExit, match=f"--count-sink {float(bad)}: the weight of <s>, a positive number"):
            T.train(_args(tmp_path, 2, "--count-sink", bad))
    for bad in (["--drop-background", "1.5", "--drop-prob", "0.5"], ["--drop-background", "0.5"],
                ["--drop-evidence", "-0.1", "--drop-prob", "0.5"], ["--drop-evidence", "0.5"]):
        with pytest.raises(SystemExit, match=f"{bad[0]} {float(bad[1])}: a share of the removals, in \\[0, 1\\], "
                                             "and only with a positive --drop-prob"):
            T.train(_args(tmp_path, 2, *bad))
    for option, bad in (("--drop-prob", "-0.5"), ("--drop-prob", "1.5"), ("--drop-prob", "nan"),
                        ("--drop-min-share", "2"), ("--styles", "1.5"), ("--styles", "-0.2"), ("--styles", "nan"),
                        ("--jpeg", "1.2"), ("--jpeg-default", "-0.5"), ("--jpeg-default", "nan")):
        with pytest.raises(SystemExit, match=f"{option} {float(bad)}: a share, in \\[0, 1\\]"):
            T.train(_args(tmp_path, 2, option, bad))
    with pytest.raises(SystemExit, match="--jpeg 0.5: a share of the styled scenes, so only with a positive --styles"):
        T.train(_args(tmp_path, 2, "--jpeg", "0.5"))
    with pytest.raises(SystemExit, match="--background-queries all: where --background-layers look, so only with "
                                         "some --background-layers"):
        T.train(_args(tmp_path, 2, "--background-queries", "all"))
    for styles in ((), ("--styles", "1")):  # no styles drawn, or no scene left in the default style
        with pytest.raises(SystemExit, match="--jpeg-default 0.5: a share of the scenes drawn in the generator's own "
                                             "style, so only with a --styles share between 0 and 1"):
            T.train(_args(tmp_path, 2, "--jpeg-default", "0.5", *styles))
    for bad in ("12,40", "30,20", "20,96"):  # jpeg-12 stays unseen
        with pytest.raises(SystemExit, match=f"--jpeg-quality {bad}: a range of JPEG qualities inside 20,95, so "
                                             "that the held-out jpeg-12 style stays unseen"):
            T.train(_args(tmp_path, 2, "--styles", "0.6", "--jpeg-quality", bad))
    with pytest.raises(SystemExit, match="--jpeg-quality 20,40: the qualities of the styled scenes, so only with a "
                                         "positive --styles"):
        T.train(_args(tmp_path, 2, "--jpeg-quality", "20,40"))
    with pytest.raises(SystemExit):  # argparse: not two numbers
        T.build_parser().parse_args(["--jpeg-quality", "20"])
    assert "is not two JPEG qualities LO,HI" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--drop-prob nan: a share"):  # NaN never lets another share through
        T.train(_args(tmp_path, 2, "--drop-prob", "nan", "--drop-evidence", "0.5"))
    with pytest.raises(SystemExit, match="shares of the same removals, so they may add up to 1 at most"):
        T.train(_args(tmp_path, 2, "--drop-prob", "0.5", "--drop-background", "0.6", "--drop-evidence", "0.5"))
    for bad in (["--drop-focus-share", "0.5"], ["--drop-focus-share", "1.5", "--drop-prob", "1", "--drop-evidence",
                "1", "--drop-focus", "letter"], ["--drop-focus-share", "0.5", "--drop-prob", "1", "--drop-evidence", "1"]):
        with pytest.raises(SystemExit, match=f"--drop-focus-share {float(bad[1])}: a share of the evidence removals"):
            T.train(_args(tmp_path, 2, *bad))
    with pytest.raises(SystemExit):  # argparse: not a question type
        T.build_parser().parse_args(["--drop-focus", "letter,colour"])
    assert "not a question type" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # a refused run leaves no directory behind
    with pytest.raises(SystemExit, match="--init .*missing: no such folder"):
        T.train(_args(tmp_path / "b", 2, "--init", str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no exported model there"):
        T.train(_args(tmp_path / "b", 2, "--init", str(tmp_path / "empty")))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "llava"}')
    with pytest.raises(SystemExit, match="not a shapes-world model"):
        T.train(_args(tmp_path / "c", 2, "--init", str(tmp_path / "other")))


def test_evaluate_refuses_a_plain_scale_below_one(capsys):
    from dualview.shapes import evaluate

    with pytest.raises(SystemExit):
        evaluate.main(["--n", "1", "--plain", "0"])
    assert "--plain 0: the scale must be a whole number of at least 1" in capsys.readouterr().err
    for n in ("0", "-1"):
        with pytest.raises(SystemExit):
            evaluate.main(["--n", n])
        assert f"--n {n}: the number of held-out questions must be at least 1" in capsys.readouterr().err


def _eager_inputs(model_seed: int, batch_seed: int, naming=T.KEY_WORDS, size=M.TINY):
    """A tiny eager model (``size``) and the inputs of its packed forward on a 3-scene x 8-question
    batch: (model, batch, decoder, input embeddings [B, L, D], additive mask [B, 1, L, L], positions [B, L])."""
    model = M.build_model(size, seed=model_seed).eval()
    model.set_attn_implementation("eager")
    batch = T.make_batch(np.random.default_rng(batch_seed), 3, 8, size, naming=naming)
    lm = model.model.language_model
    P = size.num_image_tokens
    B, Q, S = batch["seg"].shape
    with torch.no_grad():
        emb = lm.get_input_embeddings()
        x = torch.cat([emb(torch.full((B, 1), M.VOCAB[M.BOS])),
                       model.model.multi_modal_projector(T.vision_features(model, T.to_pixels(batch["images"], "cpu"))),
                       emb(torch.from_numpy(batch["seg"]).reshape(B, Q * S))], 1)
    mask = torch.zeros(1 + P + Q * S, 1 + P + Q * S).masked_fill(~T.block_mask(1 + P, Q, S), float("-inf"))
    return model, batch, lm, x, mask[None, None].expand(B, 1, -1, -1), T.positions(1 + P, Q, S)[None].expand(B, -1)


def test_draw_removal_keeps_random_shares_from_random_layers():
    P, L = 196, 8
    every = np.ones((4, 3, P), bool)  # each question's evidence covers the image: any removal touches it
    assert T.draw_removal(np.random.default_rng(0), every, L, 0.0, 0.05) is None
    layers, shares = set(), []
    for seed in range(300):
        drawn = T.draw_removal(np.random.default_rng(seed), every, L, 1.0, 0.05)
        layer, kept, unlabelled = drawn
        assert unlabelled.shape == (4, 3) and not unlabelled.any()  # a random subset keeps every label
        assert kept.shape == (4, P) and kept.dtype == bool and kept.sum(1).min() >= 1
        layers.add(layer)
        shares += (kept.sum(1) / P).tolist()
    assert layers == set(range(L))  # layer 0 included
    assert min(shares) >= 0.05 - 0.5 / P and max(shares) <= 1.0
    assert min(shares) < 0.1 and max(shares) > 0.95 and abs(np.mean(shares) - 0.525) < 0.03  # uniform in [0.05, 1]
    rng = np.random.default_rng(1)
    assert sum(T.draw_removal(rng, every[:1], L, 0.5, 0.05) is None for _ in range(400)) in range(160, 241)
    with pytest.raises(ValueError, match="a background removal needs the batch's object and letter tokens"):
        T.draw_removal(rng, every, L, 1.0, 0.05, background=0.5)


def test_object_tokens_follow_the_evaluations_overlap_rule():
    from dualview.shapes.evaluate import evidence_tokens

    patch, size = 16, 224
    g = size // patch
    token_boxes = [(c * patch, r * patch, (c + 1) * patch, (r + 1) * patch) for r in range(g) for c in range(g)]
    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0 = rng.uniform(0, size - 2, 2)
        boxes = [(x0, y0, x0 + rng.uniform(0.5, 60), y0 + rng.uniform(0.5, 60))]
        mask = T.evidence_patches(boxes, size, patch, 0)
        assert sorted(np.nonzero(mask)[0].tolist()) == sorted(evidence_tokens(token_boxes, boxes))


def test_the_styled_share_of_a_batch_is_the_styles_option(monkeypatch):
    size = M.ModelSize(image_size=64, patch_size=16)
    asked, draw = [], world.training_style
    monkeypatch.setattr(world, "training_style",
                        lambda rng, *shares: asked.append(shares) or draw(rng, *shares))
    T.make_batch(np.random.default_rng(11), 3, 1, size)
    assert asked == []  # stages 1-5: no style is drawn, so their random stream is unchanged
    for share in (0.6, 0.8, 1.0):
        T.make_batch(np.random.default_rng(11), 3, 1, size, styles=share)
        assert asked[-3:] == [(pytest.approx(1 - share), world.P_JPEG, 0.0, world.TRAIN_JPEG)] * 3
    T.make_batch(np.random.default_rng(11), 3, 1, size, styles=0.8, jpeg=0.7, jpeg_default=0.4, jpeg_quality=(20, 40))
    assert asked[-3:] == [(pytest.approx(0.2), 0.7, 0.4, (20, 40))] * 3
    assert T.build_parser().parse_args(["--jpeg-quality", "20,40"]).jpeg_quality == (20, 40)
    assert T.build_parser().parse_args([]).jpeg_quality == world.TRAIN_JPEG
    assert T.build_parser().parse_args(["--jpeg", "0.7"]).jpeg == 0.7
    assert T.build_parser().parse_args(["--jpeg-default", "0.5"]).jpeg_default == 0.5
    assert T.build_parser().parse_args([]).jpeg_default == 0.0
    assert T.build_parser().parse_args(["--styles"]).styles == 1 - world.P_DEFAULT_STYLE
    assert 1 - T.build_parser().parse_args(["--styles"]).styles == world.P_DEFAULT_STYLE  # stages 6-18's draws
    assert T.build_parser().parse_args([]).styles == 0.0
    assert T.build_parser().parse_args(["--styles", "0.8"]).styles == 0.8


def test_background_removal_keeps_every_object_token_and_drops_background():
    size = M.ModelSize()  # the shipped geometry, 196 tokens
    P = size.num_image_tokens
    batch = T.make_batch(np.random.default_rng(3), 6, 8, size, styles=1 - world.P_DEFAULT_STYLE)
    objects, letters = batch["objects"], batch["letters"]
    # every token an object's pixels or centre fall in is an object token; letter questions have letter tokens
    assert (objects >= (batch["aux"]["cover_color"] > 0)).all() and (objects >= (batch["aux"]["center_color"] > 0)).all()
    assert (letters >= (batch["aux"]["letter"] > 0)).all()
    assert all(letters[b].any() for b, qtypes in enumerate(batch["qtypes"]) if "letter" in qtypes)
    ev = batch["evidence_tokens"]
    shares, letter_drops, none_kept = [], 0, 0
    for seed in range(200):
        layer, kept, unlabelled = T.draw_removal(np.random.default_rng(seed), ev, 8, 1.0, 0.05, background=1.0,
                                                 objects=objects, letters=letters)
        assert (kept | ~objects).all()  # no object token removed
        own = letters & ~objects  # letter tokens no object overlaps: they stay or go together
        own_kept = (kept & own).sum(1)
        assert ((own_kept == 0) | (own_kept == own.sum(1))).all()
        letter_removed = own.any(1) & (own_kept == 0)
        rest = ~objects & ~letters
        share = (kept & rest).sum(1) / rest.sum(1)
        shares += share.tolist()
        none_kept += int((share == 0).sum())
        letter_drops += int(letter_removed.sum())
        # exactly the letter questions of a scene whose letter went lose their labels
        for b, qtypes in enumerate(batch["qtypes"]):
            assert [bool(u) for u in unlabelled[b]] == [bool(letter_removed[b] and t == "letter") for t in qtypes]
    assert 0.25 < none_kept / len(shares) < 0.42  # a third keep no background
    assert max(shares) > 0.95
    assert letter_drops > 0


def test_evidence_removal_keeps_one_questions_evidence_and_unlabels_what_it_took():
    size = M.ModelSize()
    P = size.num_image_tokens
    batch = T.make_batch(np.random.default_rng(4), 6, 8, size, styles=1 - world.P_DEFAULT_STYLE)
    ev, objects, letters, qtypes = batch["evidence_tokens"], batch["objects"], batch["letters"], batch["qtypes"]
    # the evaluation's rule: the tokens the question's evidence boxes overlap; counting targets lie within
    assert (ev >= batch["evidence"]).all()
    kinds = {"random": 0, "background": 0, "evidence": 0}
    drawn_empty, evidence_draw = 0, None
    for seed in range(300):
        layer, kept, unlabelled = T.draw_removal(np.random.default_rng(seed), ev, 8, 1.0, 0.05, background=0.3,
                                                 objects=objects, letters=letters, evidence_removal=0.5)
        if not unlabelled.any() and not (kept | ~objects).all():
            kinds["random"] += 1
            continue
        if not all(any((kept[b] == ev[b, q]).all() for q in range(8)) for b in range(6)):
            kinds["background"] += 1
            continue
        kinds["evidence"] += 1
        evidence_draw = evidence_draw or (kept, unlabelled)
        drawn_empty += int((~kept.any(1)).sum())
        # what each label means, checked per question type against the scene's own object and letter tokens
        for b in range(6):
            for q, qtype in enumerate(qtypes[b]):
                if (ev[b, q] == kept[b]).all() or not ev[b, q].any():  # the drawn question; a "no" or a 0
                    assert not unlabelled[b, q]
                if qtype == "count_objects":  # needs every object
                    assert unlabelled[b, q] == (not (kept[b] >= objects[b]).all())
                if qtype == "letter":
                    assert unlabelled[b, q] == (not (kept[b] >= letters[b]).all())
                if not kept[b].any():  # nothing kept: only questions about nothing keep their labels
                    assert unlabelled[b, q] == bool(ev[b, q].any())
    assert all(abs(kinds[k] / 300 - share) < 0.1 for k, share in (("random", 0.2), ("background", 0.3),
                                                                   ("evidence", 0.5)))
    assert drawn_empty > 0  # a "no" question's evidence is empty: no visual token stays
    kept, unlabelled = evidence_draw
    assert unlabelled.any() and not unlabelled.all()
    labels = batch["labels"].copy()
    T.unlabel(batch, unlabelled)
    assert (batch["labels"][unlabelled] == T.IGNORE).all()
    assert (batch["labels"][~unlabelled] == labels[~unlabelled]).all()


def test_a_focused_evidence_removal_keeps_a_focus_questions_evidence():
    batch = T.make_batch(np.random.default_rng(5), 6, 8, M.ModelSize(), styles=1 - world.P_DEFAULT_STYLE)
    ev = batch["evidence_tokens"]
    focus = np.isin(batch["qtypes"], ("count_objects", "letter"))
    assert focus.any(1).sum() >= 3 and not focus.all()
    rows = np.flatnonzero(focus.any(1))
    # a focus question's evidence, kept: with no focus, as often as a uniform draw lands on one
    like_focus = [[((ev[b, q] == ev[b][focus[b]]).all(-1)).any() for q in range(8)] for b in rows]
    for share, expect in ((1.0, 1.0), (0.0, np.mean(like_focus))):
        hits = []
        for seed in range(200):
            _, kept, _ = T.draw_removal(np.random.default_rng(seed), ev, 8, 1.0, 0.05, evidence_removal=1.0,
                                        focus=focus, focus_share=share)
            hits += [((ev[b][focus[b]] == kept[b]).all(-1)).any() for b in rows]
        assert abs(np.mean(hits) - expect) < 0.08, (share, np.mean(hits), expect)
    assert np.mean(like_focus) < 0.8
    # stage 9's draws stay bit for bit: no focus draws no extra random number
    for seed in range(20):
        a = T.draw_removal(np.random.default_rng(seed), ev, 8, 1.0, 0.05, evidence_removal=1.0)
        b = T.draw_removal(np.random.default_rng(seed), ev, 8, 1.0, 0.05, evidence_removal=1.0, focus=focus)
        assert a[0] == b[0] and (a[1] == b[1]).all()
    with pytest.raises(ValueError, match="focus questions"):
        T.draw_removal(np.random.default_rng(0), ev, 8, 1.0, 0.05, evidence_removal=1.0, focus_share=0.5)


def test_evidence_removals_draw_their_layer_among_the_named_ones():
    batch = T.make_batch(np.random.default_rng(7), 6, 8, M.ModelSize(), styles=1 - world.P_DEFAULT_STYLE)
    ev = batch["evidence_tokens"]
    layers = {True: set(), False: set()}  # evidence removal or not: the layers drawn
    for seed in range(300):
        free = T.draw_removal(np.random.default_rng(seed), ev, 8, 1.0, 0.05, evidence_removal=0.5)
        named = T.draw_removal(np.random.default_rng(seed), ev, 8, 1.0, 0.05, evidence_removal=0.5,
                               evidence_layers=(3, 4))
        # the same tokens kept and the same labels taken: only the layer may move
        assert (free[1] == named[1]).all() and (free[2] == named[2]).all()
        # an evidence removal keeps exactly one question's evidence per scene; a random subset does not
        is_evidence = all(((ev[b] == named[1][b]).all(-1)).any() for b in range(6))
        layers[is_evidence].add(named[0])
        if not is_evidence:
            assert named[0] == free[0]
    assert layers[True] == {3, 4} and len(layers[False]) == 8
    with pytest.raises(ValueError, match=r"evidence removal layers \[8\]: the decoder has layers 0 to 7"):
        T.draw_removal(np.random.default_rng(0), ev, 8, 1.0, 0.05, evidence_removal=1.0, evidence_layers=(8,))
    with pytest.raises(SystemExit, match="--drop-evidence-layers 4: the layers of the evidence removals"):
        T.train(T.build_parser().parse_args(["--drop-evidence-layers", "4"]))


def test_training_with_every_kind_of_removal_runs(tmp_path):
    out = T.train(_args(tmp_path, 4, "--drop-prob", "1", "--drop-background", "0.5", "--drop-evidence", "0.5",
                        "--share-layers", "0,1", "--drop-focus", "count_objects,letter", "--drop-focus-share", "0.5",
                        "--drop-evidence-layers", "0,1", "--background-layers", "1", "--count-sink", "4",
                        "--background-queries", "all"))
    assert out["step"] == 4 and np.isfinite(out["last_loss"])


@pytest.mark.parametrize("layer", [0, 1])
def test_a_removed_token_gets_no_attention_from_its_layer_on(layer):
    model, batch, lm, x, mask, pos = _eager_inputs(0, 5)
    B, L = x.shape[:2]
    P = M.TINY.num_image_tokens
    kept = np.random.default_rng(2).random((B, P)) < 0.4
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[:, 1: 1 + P] = torch.from_numpy(kept)
    with torch.no_grad(), T.keys_removed(lm, layer, keep):
        out = lm(inputs_embeds=x, attention_mask=mask, position_ids=pos, output_attentions=True)
    with torch.no_grad():
        ref = lm(inputs_embeds=x, attention_mask=mask, position_ids=pos, output_attentions=True)
    removed = ~keep  # [B, L]
    for index, att in enumerate(out.attentions):  # [B, H, L, L]
        got = att.masked_select(removed[:, None, None, :])
        if index >= layer:
            assert torch.all(got == 0)
        else:  # before the removal layer everything is as without removal
            assert torch.equal(att, ref.attentions[index]) and got.max() > 0
    assert not torch.allclose(out.last_hidden_state, ref.last_hidden_state)


def test_removal_from_layer_0_is_physical_removal():
    """Masking removed keys from layer 0 on gives every kept position exactly what it gets when
    the removed visual tokens are not in the input at all (positions unchanged)."""
    model, batch, lm, x, mask, pos = _eager_inputs(1, 6)
    B, L = x.shape[:2]
    P = M.TINY.num_image_tokens
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[:, 1: 1 + P] = torch.from_numpy(np.random.default_rng(3).random((B, P)) < 0.5)
    with torch.no_grad(), T.keys_removed(lm, 0, keep):
        masked = lm(inputs_embeds=x, attention_mask=mask, position_ids=pos).last_hidden_state
    for b in range(B):
        idx = torch.nonzero(keep[b]).reshape(-1)
        with torch.no_grad():
            alone = lm(inputs_embeds=x[b: b + 1, idx], attention_mask=mask[b: b + 1][:, :, idx][..., idx],
                       position_ids=pos[b: b + 1, idx]).last_hidden_state[0]
        assert torch.allclose(masked[b, idx], alone, atol=1e-5)


def test_keeping_every_token_is_the_unpruned_loss():
    model = M.build_model(M.TINY, seed=2).train()
    heads = T.build_heads(M.TINY)
    batch = T.make_batch(np.random.default_rng(7), 3, 6, M.TINY, naming=T.NAMING_WORDS)
    layers = dict(attn_layers=(0, 1), query_layers=(0, 1), word_layers=(0, 1), share_layers=(0, 1))
    with torch.no_grad():
        ref, ref_ok = T.forward(model, heads, batch, "cpu", **layers)
        for layer in (0, 1):
            got, ok = T.forward(model, heads, batch, "cpu", removal=(layer, np.ones((3, 16), bool)), **layers)
            assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
            assert torch.equal(ok, ref_ok)
        part, _ = T.forward(model, heads, batch, "cpu", removal=(1, np.eye(3, 16, dtype=bool)), **layers)
    assert not torch.equal(part["qa"], ref["qa"])
    # an evidence removal for a "no" keeps no visual token at all: every loss stays finite, with gradients
    none, _ = T.forward(model, heads, batch, "cpu", removal=(0, np.zeros((3, 16), bool)), **layers)
    total = sum(none.values())
    total.backward()
    assert all(torch.isfinite(v) for v in none.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_evidence_attention_loss_under_removal_reads_the_models_own_attention():
    """From the removal layer on, the rebuilt head-0 attention at <sep> is the eager attention (which
    gives removed tokens nothing); the target is its kept part, and a question whose evidence was
    all removed is not supervised."""
    model, batch, lm, x, mask, pos = _eager_inputs(1, 3)
    B, L = x.shape[:2]
    P = M.TINY.num_image_tokens
    Q, S = batch["seg"].shape[1:]
    kept = np.random.default_rng(4).random((B, P)) < 0.3
    prefix = torch.cat([torch.ones(B, 1, dtype=torch.bool), torch.from_numpy(kept)], 1)
    keep = torch.cat([prefix, torch.ones(B, Q * S, dtype=torch.bool)], 1)
    with torch.no_grad(), T.keys_removed(lm, 1, keep):
        out = lm(inputs_embeds=x, attention_mask=mask, position_ids=pos, output_hidden_states=True,
                 output_attentions=True)
        got = T.evidence_attention_loss(lm, out.hidden_states, pos, batch["seg"], batch["evidence"],
                                        batch["counting"], (1,), 1 + P, "cpu", removed=(1, prefix))
    att = out.attentions[1][:, 0]
    terms, dropped = [], 0
    for b in range(B):
        for q in range(Q):
            at = 1 + P + q * S + int(np.nonzero(batch["seg"][b, q] == M.VOCAB[M.SEP])[0][0])
            row = att[b, at, : 1 + P] / att[b, at, : 1 + P].sum()
            ev = torch.from_numpy(batch["evidence"][b, q] & kept[b])
            if batch["counting"][b, q]:
                terms.append(-torch.cat([row[:1], row[1:][ev]]).log().mean())
            elif ev.any():
                terms.append(-torch.log(row[1:][ev].sum()))
            elif batch["evidence"][b, q].any():
                dropped += 1
    assert dropped > 0, "some question should have lost all its evidence"
    assert torch.allclose(got, torch.stack(terms).mean(), atol=1e-5)


def _background_case(model_seed: int, batch_seed: int, kept_seed: int, removed: bool):
    """An eager forward for the background-attention tests, visual tokens removed at random from
    layer 1 when ``removed``: (batch, output with attentions, the loss of layers 0 and 1 as a
    function of its ``scene`` argument, kept bool [B, P], labelled bool [B, Q])."""
    model, batch, lm, x, mask, pos = _eager_inputs(model_seed, batch_seed)
    B, Q, S = batch["seg"].shape
    P = M.TINY.num_image_tokens
    kept = np.random.default_rng(kept_seed).random((B, P)) < (0.5 if removed else 1.1)
    prefix = torch.cat([torch.ones(B, 1, dtype=torch.bool), torch.from_numpy(kept)], 1)
    keep = torch.cat([prefix, torch.ones(B, Q * S, dtype=torch.bool)], 1)
    labelled = np.random.default_rng(kept_seed + 1).random((B, Q)) < 0.8
    with torch.no_grad(), T.keys_removed(lm, 1, keep):
        out = lm(inputs_embeds=x, attention_mask=mask, position_ids=pos, output_hidden_states=True,
                 output_attentions=True)

    def loss(scene=None):
        with torch.no_grad():
            return T.background_attention_loss(lm, out.hidden_states, pos, batch["seg"], batch["evidence_tokens"],
                                               labelled, (0, 1), 1 + P, "cpu", removed=(1, prefix), scene=scene)
    return batch, out, loss, kept, labelled


@pytest.mark.parametrize("removed", [False, True])
def test_background_attention_loss_is_each_heads_mass_outside_the_evidence(removed):
    """At every <sep>, -log(1 - m) per head, m the eager attention's mass on visual tokens outside the
    question's evidence (removed tokens get none), averaged over heads and the labelled questions
    that have evidence."""
    batch, out, loss, kept, labelled = _background_case(1, 3, 4, removed)
    B, Q, S = batch["seg"].shape
    P = M.TINY.num_image_tokens
    got = loss()
    per_layer, skipped = [], 0
    for layer in (0, 1):
        terms = []
        for b in range(B):
            for q in range(Q):
                if not (labelled[b, q] and batch["evidence_tokens"][b, q].any()):
                    skipped += 1
                    continue
                at = 1 + P + q * S + int(np.nonzero(batch["seg"][b, q] == M.VOCAB[M.SEP])[0][0])
                rows = out.attentions[layer][b, :, at, 1: 1 + P]  # [H, P], the visual tokens
                m = rows[:, torch.from_numpy(~batch["evidence_tokens"][b, q])].sum(-1)
                terms.append(-torch.log1p(-m).mean())
        per_layer.append(torch.stack(terms).mean())
    assert skipped > 0 and len(terms) > 0
    assert torch.allclose(got, torch.stack(per_layer).mean(), atol=1e-5)


@pytest.mark.parametrize("removed", [False, True])
def test_background_attention_at_every_object_and_question_token(removed):
    """With ``scene``: -log(1 - m) per head and query, m the eager attention's mass on background
    visual tokens, averaged over heads and queries: every position of a labelled question with
    evidence up to its <sep> (background: outside the question's evidence), and every kept visual
    token of the scene (background: outside the scene, among the tokens before it); the <sep>, the
    other question positions and the visual tokens each averaged on their own, then the three."""
    batch, out, loss, kept, labelled = _background_case(2, 6, 7, removed)
    B, Q, S = batch["seg"].shape
    P = M.TINY.num_image_tokens
    scene = batch["objects"] | batch["letters"]
    assert scene.any() and (~scene).any()
    got, at_sep = loss(torch.from_numpy(scene)), loss()
    per_layer = []
    for layer in (0, 1):
        terms = {"sep": [], "question": [], "visual": []}
        for b in range(B):
            for q in range(Q):
                if not (labelled[b, q] and batch["evidence_tokens"][b, q].any()):
                    continue
                sep = int(np.nonzero(batch["seg"][b, q] == M.VOCAB[M.SEP])[0][0])
                for t in range(sep + 1):
                    rows = out.attentions[layer][b, :, 1 + P + q * S + t, 1: 1 + P]
                    outside = torch.from_numpy(~batch["evidence_tokens"][b, q])
                    terms["sep" if t == sep else "question"].append(-torch.log1p(-rows[:, outside].sum(-1)).mean())
            for i in np.nonzero(scene[b] & (kept[b] | (layer < 1)))[0]:
                rows = out.attentions[layer][b, :, 1 + i, 1: 1 + P]
                terms["visual"].append(-torch.log1p(-rows[:, torch.from_numpy(~scene[b])].sum(-1)).mean())
        assert all(terms.values())
        per_layer.append(torch.stack([torch.stack(kind).mean() for kind in terms.values()]).mean())
    assert torch.allclose(got, torch.stack(per_layer).mean(), atol=1e-5)
    assert not torch.allclose(got, at_sep, atol=1e-3)  # the extra queries count


def _magnitude_reference(lm, img, ids, layer: int, evidence, kept, removal_layer: int):
    """Per query head, the mean over the kept evidence tokens of ``-log(P^h_i / sum_j P^h_j)``, the
    sum over the kept visual tokens, with ``P^h_i = exp(q_T.k_i / sqrt(d)) * ||v_i||`` (method.md §2;
    q_T the mean pre-RoPE query of the question words, k, v of the KV head query head h reads):
    from the question alone, unpacked (``<s>``, the P visual tokens ``img`` [P, D], the question
    ``ids`` and ``<sep>``; tokens not ``kept`` removed from ``removal_layer`` on), with the layer's
    projections captured by hooks and the sums taken in Python floats."""
    captured = {}
    attn = lm.layers[layer].self_attn
    hooks = [getattr(attn, name).register_forward_hook(lambda m, a, out, name=name: captured.__setitem__(name, out[0]))
             for name in ("q_proj", "k_proj", "v_proj")]
    emb = lm.get_input_embeddings()
    x = torch.cat([emb(torch.tensor([M.VOCAB[M.BOS]])), img, emb(torch.as_tensor(ids))])[None]
    keep = torch.ones(1, x.shape[1], dtype=torch.bool)
    keep[0, 1: 1 + img.shape[0]] = torch.from_numpy(kept)
    with torch.no_grad(), T.keys_removed(lm, removal_layer, keep):
        L = x.shape[1]
        causal = torch.zeros(L, L).masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
        lm(inputs_embeds=x, attention_mask=causal[None, None], position_ids=torch.arange(x.shape[1])[None])
    for h in hooks:
        h.remove()
    P, d = img.shape[0], attn.head_dim
    words = slice(1 + P, x.shape[1] - 1)  # the question words: not <s>, the image or <sep>
    q = captured["q_proj"].double().view(x.shape[1], -1, d)[words].mean(0)  # [H, d]
    k = captured["k_proj"].double().view(x.shape[1], -1, d)[1: 1 + P]  # [P, Hkv, d]
    v = captured["v_proj"].double().view(x.shape[1], -1, d)[1: 1 + P]
    seen = kept if layer >= removal_layer else np.ones(P, bool)
    terms = []
    for h in range(q.shape[0]):
        g = h // (q.shape[0] // k.shape[1])
        mag = [float(torch.exp(q[h] @ k[i, g] / d ** 0.5) * v[i, g].norm()) for i in range(P)]
        total = sum(m for i, m in enumerate(mag) if seen[i])
        terms.append(np.mean([-np.log(mag[i] / total) for i in range(P) if evidence[i] and seen[i]]))
    return terms


@pytest.mark.parametrize("heads", [(2, 1), (4, 2)])
@pytest.mark.parametrize("removal", [False, True])
def test_magnitude_evidence_loss_is_the_magnitude_of_each_question_alone(removal, heads):
    """Per head, the loss is the cross-entropy between the magnitude's softmax over the visual tokens
    and the uniform distribution on the evidence, averaged over heads, over the labelled questions
    with evidence and over layers, as computed from each question alone and unpacked (query heads
    paired with KV heads as GQA does). Under a removal from layer 1 the removed tokens leave layer
    1's sums, not layer 0's, and a question whose evidence was all removed, or that lost its label,
    is not supervised."""
    size = dataclasses.replace(M.TINY, text_heads=heads[0], text_kv_heads=heads[1])
    model, batch, lm, x, mask, pos = _eager_inputs(1, 3, size=size)
    with torch.no_grad():  # sharper queries than a random init's, so that every term matters
        for block in lm.layers:
            block.self_attn.q_proj.weight.mul_(6.0)
    P = size.num_image_tokens
    B, Q, S = batch["seg"].shape
    kept = np.random.default_rng(5).random((B, P)) < (0.4 if removal else 2.0)
    prefix = torch.cat([torch.ones(B, 1, dtype=torch.bool), torch.from_numpy(kept)], 1)
    keep = torch.cat([prefix, torch.ones(B, Q * S, dtype=torch.bool)], 1)
    labelled = np.random.default_rng(6).random((B, Q)) < 0.8
    with torch.no_grad(), T.keys_removed(lm, 1, keep):
        out = lm(inputs_embeds=x, attention_mask=mask, position_ids=pos, output_hidden_states=True)
        got = T.magnitude_evidence_loss(lm, out.hidden_states, batch["seg"], batch["evidence_tokens"], labelled,
                                        (0, 1), 1 + P, "cpu", removed=(1, prefix))
    per_layer, skipped = [], 0
    for layer in (0, 1):
        terms = []
        for b in range(B):
            for q in range(Q):
                ev = batch["evidence_tokens"][b, q]
                if not labelled[b, q] or not (ev & (kept[b] if layer >= 1 else True)).any():
                    skipped += bool(ev.any())
                    continue
                ids = batch["seg"][b, q][: int(np.nonzero(batch["seg"][b, q] == M.VOCAB[M.SEP])[0][0]) + 1]
                terms.append(np.mean(_magnitude_reference(lm, x[b, 1: 1 + P], ids, layer, ev, kept[b], 1)))
        per_layer.append(np.mean(terms))
    assert skipped > 0 and len(terms) > 0, "the batch should hold supervised and unsupervised questions"
    assert abs(float(got) - float(np.mean(per_layer))) < 1e-5 * max(1.0, abs(float(got)))


def test_naming_words_look_at_what_they_name():
    """With NAMING_WORDS, 'letter' and 'written' look at the letter's patches, 'objects' spreads over
    <s> and every object's centre, and 'object' looks where the colour word before it does; the
    colour and shape words keep their targets."""
    size = M.ModelSize()
    rng = np.random.default_rng(12)
    seen = set()
    for _ in range(40):
        scene = world.make_scene(rng, size.image_size)
        for qtype in world.feasible_types(scene):
            qa = world.ask(scene, qtype, rng)
            old, old_counting = T.word_targets(scene, qa.question, size)
            new, counting = T.word_targets(scene, qa.question, size, T.NAMING_WORDS)
            words = qa.question.rstrip("?").split()
            for j, w in enumerate(words):
                if w in ("letter", "written"):
                    want = T.evidence_patches([scene.letter["box"]], size.image_size, size.patch_size)
                    assert not new[j, 0] and (new[j, 1:] == want).all() and not counting[j]
                    seen.add("letter")
                elif w == "objects":
                    want = T.centre_patches([o.box for o in scene.objects], size.image_size, size.patch_size)
                    assert new[j, 0] and (new[j, 1:] == want).all() and counting[j]
                    seen.add("objects")
                elif w == "object":
                    assert (new[j] == new[j - 1]).all() and not counting[j]
                    assert (new[j, 1:] == T.evidence_patches(qa.evidence, size.image_size, size.patch_size)).all()
                    seen.add("object")
                elif old[j].any():
                    assert (new[j] == old[j]).all() and counting[j] == old_counting[j]
                else:
                    assert not new[j].any()
    assert seen == {"letter", "objects", "object"}


def test_word_evidence_loss_on_naming_words_reads_the_models_own_attention():
    """The naming words' rows go through the same rebuilt attention: the loss equals the eager
    attention's -log mass (or mean -log over <s> and the centres for 'objects')."""
    model, batch, lm, x, mask, pos = _eager_inputs(2, 8, T.NAMING_WORDS)
    P = M.TINY.num_image_tokens
    Q, S = batch["seg"].shape[1:]
    with torch.no_grad():
        out = lm(inputs_embeds=x, attention_mask=mask, position_ids=pos, output_hidden_states=True,
                 output_attentions=True)
        got = T.word_evidence_loss(lm, out.hidden_states, pos, batch["words"], batch["word_counting"], (0,),
                                   1 + P, "cpu")
    att = out.attentions[0][:, 0]
    word = {i: w for w, i in M.VOCAB.items()}
    terms, names = [], set()
    for b, q, j in zip(*np.nonzero(batch["words"].any(-1))):
        names.add(word[int(batch["seg"][b, q, j])])
        row = att[b, 1 + P + q * S + j, : 1 + P]
        row = row / row.sum()
        target = torch.from_numpy(batch["words"][b, q, j])
        terms.append(-row[target].log().mean() if batch["word_counting"][b, q, j] else -row[target].sum().log())
    assert {"letter", "written", "objects", "object"} <= names
    assert torch.allclose(got, torch.stack(terms).mean(), atol=1e-5)


def test_styled_training_batches_are_resampled_to_the_input():
    batch = T.make_batch(np.random.default_rng(9), 12, 2, M.ModelSize(), styles=1 - world.P_DEFAULT_STYLE)
    assert batch["images"].shape == (12, 224, 224, 3) and batch["images"].dtype == np.uint8
    plain = T.make_batch(np.random.default_rng(9), 12, 2, M.ModelSize())
    assert not np.array_equal(batch["images"], plain["images"])
