"""Train the built-in shapes-world VLM.

    python -m dualview.shapes.train --run runs/shapes --minutes 90          # train (or continue)
    python -m dualview.shapes.train --run runs/next --init assets/shapes-vlm --questions 24 \
        --attn-layers 2,3,4,5 --word-layers 0,1 --query-layers 2,3 --lr 5e-4 --minutes 100
        # go on from the shipped model with stage 5's recipe (model card)
    python -m dualview.shapes.train --run runs/stage6 --init assets/shapes-vlm ... --drop-prob 0.5 \
        --styles --naming-words --word-layers 0,1,2,3,4      # stage 6's recipe (model card)
    python -m dualview.shapes.train --run runs/stage8 --init runs/stage7/export ... --drop-prob 0.6 \
        --drop-background 0.3 --drop-evidence 0.4             # stage 8's recipe (model card)
    python -m dualview.shapes.train --run runs/stage9 --init runs/stage8/export ... --drop-evidence 0.5 \
        --share-layers 2,3,4 --share-weight 0.3               # stage 9's recipe (model card)
    python -m dualview.shapes.train --run runs/stage10 --init runs/stage9/export ... \
        --drop-focus count_objects,letter --drop-focus-share 0.5   # stage 10's recipe (model card;
        # stage 11: the same from stage 10's weights, --lr 1e-4 --steps 2600 --drop-focus-share 0.6;
        # stage 12: from stage 11's, --drop-evidence 0.55 --drop-focus-share 0.7, world.P_OUTLINE 0.4)
    python -m dualview.shapes.train --run runs/shapes --export assets/shapes-vlm --export-only

Recipe (built for a 2-core CPU, where compute is everything):

- **Packed questions.** Each scene is asked ``--questions`` questions in one sequence
  ``<s> <image>x196 | q1 <sep> a1 </s> | q2 <sep> a2 </s> | ...``: a block mask lets every question
  segment see the image prefix and itself only, and its positions restart right after the image, so
  each segment sees exactly what it sees at inference. The vision tower and the 197-token prefix
  are paid once per scene instead of once per question.
- **Dense auxiliary supervision** of the vision tower (training-only linear heads on the features
  the projector receives): per patch the colour / shape of the object covering it, the letter
  covering it, and for the patch holding an object's box centre its colour, shape and 3 x 3 cell.
- **Word alignment**: the visual tokens over an object or the letter are pulled towards the input
  embeddings of the words naming it (:func:`word_alignment_loss`).
- **Evidence attention** (``--attn-layers``): head 0 of chosen decoder layers is taught to look at
  the patches a question is about, and for a counting question to spread evenly over ``<s>`` and
  the centre patch of each counted object (:func:`evidence_attention_loss`).
- **Word evidence** (``--word-layers``): at each colour or shape word of a question, head 0 of
  chosen early layers is taught to look at the objects that word (and the key words before it)
  names, so the word's position gathers that object's features or count
  (:func:`word_evidence_loss`).
- **Question attention** (``--query-layers``): the last head of chosen layers is taught to read,
  at ``<sep>``, the question's last key word, where that lookup ended
  (:func:`question_attention_loss`); without these two the stage-3 model never carries a shape
  word to ``<sep>`` (model card, Known limits).
- **Robust to removal** (``--drop-prob``, ``--drop-min-share``; stage 6): in that share of the
  joint steps, visual tokens are removed at random (:func:`draw_removal`: a decoder layer uniform
  over all of them, 0 included; per scene a random subset keeping a share uniform in
  [``--drop-min-share``, 1]) by masking them out of attention from that layer on
  (:func:`keys_removed`, equal to removing them physically), in the answer loss and every
  attention loss; the other steps are unpruned. The removal draws from its own stream
  ``default_rng([seed, DROP_STREAM, step])``, so the batches are those of a run without it.
- **Background removal** (``--drop-background``; stage 7): that share of the removals keeps every
  token overlapping an object, the letter or not (its questions then unlabelled), and a random
  share of the background, often none (:func:`draw_removal`), so that counting stops reading how
  many background tokens survive.
- **Evidence removal** (``--drop-evidence``; stage 8): that share of the removals keeps, per scene,
  only the tokens one drawn question's evidence overlaps, what the evaluation's keep-evidence check
  keeps (:func:`draw_removal`); the scene's questions whose evidence lost a token are unlabelled.
- **Magnitude on the evidence** (``--share-layers``; stage 9): at chosen layers, the information
  magnitude of every head (the question words' mean query, method.md §2) is taught to spread over
  the question's evidence tokens (:func:`magnitude_evidence_loss`), so that they lead its ranking,
  whose top-k the evaluation's evidence share measures; the other attention losses teach one head each.
- **Drawing styles** (``--styles [SHARE]``; stage 6, widened in stage 10, SHARE from stage 19):
  60 % of the training scenes (or SHARE of them) are drawn in a random style
  (``world.training_style``: sizes 134-448 px resampled to the input, anti-aliasing on/off,
  outlines, light/dark/striped/checkered backgrounds, JPEG, objects jittered by
  ``world.jitter_scene``); ``world.HELDOUT_STYLES`` are never drawn.
- **More JPEG** (``--jpeg SHARE``; stage 21, not shipped): the share of the styled scenes
  compressed as JPEG (quality still drawn in ``world.TRAIN_JPEG``; default ``world.P_JPEG``, a
  third). Tried with ``--styles 0.8`` to lift the held-out ``jpeg-12`` style; it did not (model
  card, stages 19-22).
- **JPEG on the generator's own drawing** (``--jpeg-default SHARE``; stage 23, not shipped): that
  share of the scenes drawn in the generator's own style is JPEG-compressed too (quality in
  ``world.TRAIN_JPEG``, objects jittered as in any restyled scene; default 0). Until then JPEG came
  only with a random restyling, and stage 15 over-counts noisy default-drawn scenes under JPEG even
  at quality 20-25, inside the training range. Tried at 0.5 to lift the held-out ``jpeg-12`` style;
  the over-counts stayed (model card, stage 23).
- **Low JPEG qualities** (``--jpeg-quality LO,HI``; stage 28): every JPEG-compressed training
  scene draws its quality from LO to HI instead of ``world.TRAIN_JPEG`` (20-95), a range inside
  it, so the held-out ``jpeg-12`` style stays unseen. Stage 26 over-counts under JPEG at quality
  20-25, inside the training range, which a uniform draw over 20-95 gives only 8 % of the
  compressed scenes.
- **Focused evidence removals** (``--drop-focus``, ``--drop-focus-share``; stage 10): a share of the
  evidence removals keeps the evidence of a question of the named types (counting, letters), the
  types that lost most under the evaluation's keep-evidence check in stage 9.
- **Evidence removals at chosen layers** (``--drop-evidence-layers``; stage 14, not shipped): the
  evidence removals draw their layer among the named ones (the other removals keep every layer),
  e.g. around the evaluation's pruning layer 4. Tried to cut the counting misses under
  evidence-only pruning; it did not (model card, stage 14).
- **Counting code** (``--count-sink``; stage 15, not shipped): the counting targets of the
  attention losses weigh ``<s>`` that many times each centre, so the head's share on ``<s>``,
  ``k / (k + n)``, has wider steps between large counts than the uniform target's ``1 / (n + 1)``.
  Tried at 4 to cut the counting misses under evidence-only pruning; the head learnt the code, the
  misses stayed (model card, stage 15).
- **No idle attention on the background** (``--background-layers``; stage 17, not shipped): at
  each ``<sep>``, every head of the named layers is taught to put no attention on visual tokens
  outside the question's evidence (:func:`background_attention_loss`), where stage 12's late heads
  parked it. Evidence-only pruning then cost 0.1 point overall, but counting every object still
  lost 2.4 (model card, stage 17); continued (stage 18), every type stayed within 2 points, but
  two held-out styles fell below 93 %.
- **No idle attention anywhere** (``--background-queries all``; stage 24, not shipped): the same
  loss also at every question token before ``<sep>`` and at every visual token over an object or
  the letter (whose background is the tokens over neither). Stage 15 keeps its counts under
  evidence-only pruning only because two large shifts cancel: its object tokens and its question
  words put up to 0.76 of a head's attention on the background from layer 4 on. Stage 24 learnt it
  everywhere but at ``<sep>`` (a small share of the rows), and counting every object still lost
  3.5 points under evidence-only pruning on fresh questions; stage 25, with the ``<sep>`` rows
  averaged on their own, 3.2 (model card, stages 24-25).
- **Naming words** (``--naming-words``; stage 6): the word-evidence loss also covers ``object``,
  ``objects``, ``letter`` and ``written`` (:data:`NAMING_WORDS`).
- AdamW, linear warm-up then cosine decay, gradient clipping. Loss only on answer tokens + ``</s>``.
- ``--init DIR`` starts a new run (fresh heads, optimizer, schedule) from an exported model, so
  training can go on across sessions from the shipped weights.

Data streams: training scenes come from ``default_rng([seed, 0x7A1, step])``; held-out sets
(``world.heldout_set``) from ``default_rng([seed, 0xE7A1])``, so they never meet.
The run directory holds ``ckpt.pt`` (model, heads, optimizer, step) and ``log.txt``; rerunning the
same command continues from it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import world
from .model import BOS, EOS, PAD, SEP, VOCAB, ModelSize

IGNORE = -100
TRAIN_STREAM = 0x7A1
# auxiliary per-patch targets: name -> number of classes (class 0 = none / background)
AUX = {"cover_color": 1 + len(world.COLOR_NAMES), "cover_shape": 1 + len(world.SHAPES),
       "letter": 1 + len(world.LETTERS), "center_color": 1 + len(world.COLOR_NAMES),
       "center_shape": 1 + len(world.SHAPES), "center_cell": 1 + len(world.CELLS)}
# questions answered by counting: their evidence is one patch per counted object (its centre)
COUNT_TYPES = ("count_shape", "count_objects")
# the words that say which object a question is about (colours, shapes and their plurals):
# word id -> (attribute, value, counted), what an object must be to be named by that word
KEY_WORDS = {**{VOCAB[c]: ("color", c, False) for c in world.COLOR_NAMES},
             **{VOCAB[s]: ("shape", s, False) for s in world.SHAPES},
             **{VOCAB[p]: ("shape", s, True) for s, p in world.PLURALS.items()}}
KEY_WORD_IDS = list(KEY_WORDS)
# --naming-words: the other question words that name something in the image. ``object`` (after a
# colour) names what the words before it named; ``objects`` every object, counted; ``letter`` and
# ``written`` the letter. The grammar's questions hold no place words (places are only answers).
NAMING_WORDS = {**KEY_WORDS, VOCAB["object"]: (None, None, False), VOCAB["objects"]: (None, None, True),
                VOCAB["letter"]: ("letter", None, False), VOCAB["written"]: ("letter", None, False)}
DROP_STREAM = 0xD50  # the random token removal of step s draws from default_rng([seed, DROP_STREAM, s])
# the head that reads the last key word at <sep>: the last query head (in the shipped model, 4 query
# heads on 2 KV heads, it has another KV head than head 0, which looks at the image)
QUERY_HEAD = -1
SEG_LEN = 11  # longest segment: 6 question words + <sep> + 2 answer words + </s> = 10


@functools.lru_cache(maxsize=None)
def _tokenizer():
    from .model import build_tokenizer

    return build_tokenizer()


@functools.lru_cache(maxsize=4096)
def question_ids(question: str) -> tuple:
    """Word ids of a question exactly as the shipped tokenizer produces them (no specials)."""
    return tuple(_tokenizer()(question, add_special_tokens=False)["input_ids"])


def answer_ids(answer: str) -> list:
    return [VOCAB[w] for w in answer.split()]


def write_segment(seg_row: np.ndarray, lab_row: np.ndarray, question: str, answer: str) -> None:
    """Fill one packed segment ``question <sep> answer </s>`` and its labels (the answer and
    ``</s>``, each predicted from the token before it)."""
    ans = answer_ids(answer)
    ids = list(question_ids(question)) + [VOCAB[SEP]] + ans + [VOCAB[EOS]]
    seg_row[: len(ids)] = ids
    sep = len(ids) - len(ans) - 2
    lab_row[sep: len(ids) - 1] = ids[sep + 1:]


def patch_targets(scene: world.Scene, labels: np.ndarray, patch: int) -> dict:
    """Per-patch auxiliary targets (flattened row-major, like the vision tokens)."""
    g = scene.size // patch
    lab = labels[: g * patch, : g * patch].reshape(g, patch, g, patch).transpose(0, 2, 1, 3).reshape(g * g, -1)
    n = len(scene.objects)
    counts = np.stack([(lab == i + 1).sum(1) for i in range(n)], 1)  # [P, n]
    out = {k: np.zeros(g * g, np.int64) for k in AUX}
    best = counts.argmax(1)
    covered = counts[np.arange(g * g), best] >= max(4, patch * patch // 16)
    for p in np.nonzero(covered)[0]:
        o = scene.objects[best[p]]
        out["cover_color"][p] = 1 + world.COLOR_NAMES.index(o.color)
        out["cover_shape"][p] = 1 + world.SHAPES.index(o.shape)
    if scene.letter:
        lp = (lab == 255).sum(1) >= patch * patch // 8
        out["letter"][lp] = 1 + world.LETTERS.index(scene.letter["char"])
    for o in scene.objects:
        cx, cy = o.center
        p = centre_patch(cx, cy, g, patch)
        out["center_color"][p] = 1 + world.COLOR_NAMES.index(o.color)
        out["center_shape"][p] = 1 + world.SHAPES.index(o.shape)
        out["center_cell"][p] = 1 + world.CELLS.index(world.cell_of(cx, cy, scene.size))
    return out


def word_targets(scene: world.Scene, question: str, size: ModelSize, naming: dict = KEY_WORDS):
    """What each key word of a question should look at in the prefix ``<s> + P`` patches.

    Returns ``targets`` bool [SEG_LEN, 1 + P] and ``counting`` bool [SEG_LEN], per position of the
    question's segment (rows of non-key words are empty). A key word names the objects that match
    it and every key word before it (``red`` then ``circle``: the red circles). A colour or shape
    word looks at the patches of those objects, or at ``<s>`` if there are none; a plural (a
    counting question) spreads over ``<s>`` and each one's centre patch, like
    :func:`evidence_attention_loss`'s counting target. ``naming`` says which words name what
    (:data:`KEY_WORDS`, or :data:`NAMING_WORDS`: also ``object``, ``objects``, ``letter``, ``written``).
    """
    n_prefix = 1 + size.num_image_tokens
    targets = np.zeros((SEG_LEN, n_prefix), bool)
    counting = np.zeros(SEG_LEN, bool)
    objs = list(scene.objects)
    for j, token in enumerate(question_ids(question)):
        if token not in naming:
            continue
        attr, value, counting[j] = naming[token]
        if attr == "letter":
            boxes = [scene.letter["box"]] if scene.letter else []
        else:
            objs = [o for o in objs if attr is None or getattr(o, attr) == value]
            boxes = [o.box for o in objs]
        find = centre_patches if counting[j] else evidence_patches
        targets[j, 1:] = find(boxes, size.image_size, size.patch_size)
        targets[j, 0] = counting[j] or not targets[j, 1:].any()
    return targets, counting


def make_batch(rng: np.random.Generator, n_scenes: int, n_questions: int, size: ModelSize,
               type_weights: dict | None = None, p_letter: float = 0.5, styles: float = 0.0,
               naming: dict = KEY_WORDS, jpeg: float = world.P_JPEG, jpeg_default: float = 0.0,
               jpeg_quality: tuple[int, int] = world.TRAIN_JPEG) -> dict:
    """A packed batch: uint8 images, aux targets, and per scene ``n_questions`` segments.

    ``styles``: the share of scenes, in [0, 1], drawn in a random style of the training mix
    (``world.training_style`` with ``p_default = 1 - styles``; a non-default style also moves its
    objects a little, ``world.jitter_scene``) and resampled to the input size; 0 draws every scene
    in the generator's own style without drawing a style (stages 1-5). ``jpeg``: the share of the
    styled scenes compressed as JPEG (``world.training_style``'s ``p_jpeg``); ``jpeg_default``: the
    share of the scenes drawn in the generator's own style compressed as JPEG (its
    ``p_jpeg_default``; needs ``styles``, which draws the style); ``jpeg_quality``: the range of
    their JPEG qualities (its ``jpeg_quality``). ``naming``: the words :func:`word_targets` supervises.

    Per question (bool [n_scenes, n_questions, P]): ``evidence``, the attention target (patches at
    least 1/8 covered by an evidence box; for counting, the centre patch of each counted object)
    and ``evidence_tokens``, every patch an evidence box overlaps (the evaluation's and the app's
    rule, which :func:`draw_removal` keeps). Per scene (bool [n_scenes, P]): ``objects`` and
    ``letters``, the patches an object's or the letter's box overlaps."""
    P = size.num_image_tokens
    imgs = np.zeros((n_scenes, size.image_size, size.image_size, 3), np.uint8)
    aux = {k: np.zeros((n_scenes, P), np.int64) for k in AUX}
    seg = np.full((n_scenes, n_questions, SEG_LEN), VOCAB[PAD], np.int64)
    lab = np.full((n_scenes, n_questions, SEG_LEN), IGNORE, np.int64)
    evidence = np.zeros((n_scenes, n_questions, P), bool)
    evidence_tokens = np.zeros((n_scenes, n_questions, P), bool)
    counting = np.zeros((n_scenes, n_questions), bool)
    words = np.zeros((n_scenes, n_questions, SEG_LEN, 1 + P), bool)
    word_counting = np.zeros((n_scenes, n_questions, SEG_LEN), bool)
    objects = np.zeros((n_scenes, P), bool)
    letters = np.zeros((n_scenes, P), bool)
    qtypes = []
    w = type_weights or {}
    for b in range(n_scenes):
        scene = world.make_scene(rng, size.image_size, p_letter=p_letter)
        style = (world.training_style(rng, 1 - styles, jpeg, jpeg_default, jpeg_quality) if styles
                 else world.DEFAULT_STYLE)
        if style != world.DEFAULT_STYLE:
            scene = world.jitter_scene(scene, rng, rng.uniform(0, world.TRAIN_JITTER))
        img, labels = world.render(scene, rng, labels=True, style=style)
        imgs[b] = np.asarray(world.to_input(img, size.image_size))
        for k, v in patch_targets(scene, labels, size.patch_size).items():
            aux[k][b] = v
        objects[b] = evidence_patches([o.box for o in scene.objects], size.image_size, size.patch_size, 0)
        if scene.letter:
            letters[b] = evidence_patches([scene.letter["box"]], size.image_size, size.patch_size, 0)
        types = world.feasible_types(scene)
        probs = np.array([w.get(t, 1.0) for t in types], float)
        row = []
        for q in range(n_questions):
            qt = types[rng.choice(len(types), p=probs / probs.sum())]
            qa = world.ask(scene, qt, rng)
            write_segment(seg[b, q], lab[b, q], qa.question, qa.answer)
            counting[b, q] = qt in COUNT_TYPES
            find = centre_patches if counting[b, q] else evidence_patches
            evidence[b, q] = find(qa.evidence, size.image_size, size.patch_size)
            evidence_tokens[b, q] = evidence_patches(qa.evidence, size.image_size, size.patch_size, 0)
            words[b, q], word_counting[b, q] = word_targets(scene, qa.question, size, naming)
            row.append(qt)
        qtypes.append(row)
    return {"images": imgs, "aux": aux, "seg": seg, "labels": lab, "qtypes": qtypes, "evidence": evidence,
            "evidence_tokens": evidence_tokens, "counting": counting, "words": words,
            "word_counting": word_counting, "objects": objects, "letters": letters}


def centre_patch(cx: float, cy: float, grid: int, patch: int) -> int:
    """Row-major index of the patch holding the point (cx, cy) (pixels) on a ``grid`` x ``grid`` image."""
    return min(int(cy // patch), grid - 1) * grid + min(int(cx // patch), grid - 1)


def centre_patches(boxes: list, image_size: int, patch: int) -> np.ndarray:
    """Bool [P] (row-major patches): the patch holding each box's centre, one per counted object."""
    g = image_size // patch
    out = np.zeros(g * g, bool)
    for x0, y0, x1, y1 in boxes:
        out[centre_patch((x0 + x1) / 2, (y0 + y1) / 2, g, patch)] = True
    return out


def evidence_patches(boxes: list, image_size: int, patch: int, min_cover: float = 1 / 8) -> np.ndarray:
    """Bool [P] (row-major patches): the patches at least ``min_cover`` covered by one of the
    evidence boxes; ``min_cover=0``: every patch a box overlaps with a positive area (the rule of
    ``evaluate.evidence_tokens``)."""
    g = image_size // patch
    edges = np.arange(g + 1) * patch
    out = np.zeros((g, g), bool)
    for x0, y0, x1, y1 in boxes:
        ox = np.clip(np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0), 0, None)  # [g] overlap per column
        oy = np.clip(np.minimum(edges[1:], y1) - np.maximum(edges[:-1], y0), 0, None)  # [g] per row
        area = np.outer(oy, ox)
        out |= (area >= patch * patch * min_cover) & (area > 0)
    return out.reshape(-1)


def heldout_batch(samples: list, size: ModelSize) -> dict:
    """Pack held-out samples one question per scene (for fast teacher-forced evaluation)."""
    n = len(samples)
    imgs = np.stack([np.asarray(s.image) for s in samples])
    seg = np.full((n, 1, SEG_LEN), VOCAB[PAD], np.int64)
    lab = np.full((n, 1, SEG_LEN), IGNORE, np.int64)
    for b, s in enumerate(samples):
        write_segment(seg[b, 0], lab[b, 0], s.question, s.answer)
    return {"images": imgs, "aux": None, "seg": seg, "labels": lab, "qtypes": [[s.qtype] for s in samples]}


def block_mask(n_prefix: int, n_seg: int, seg_len: int, device=None):
    """Bool [L, L] mask: causal prefix; each segment sees the prefix and itself (causally)."""
    import torch

    L = n_prefix + n_seg * seg_len
    m = torch.zeros(L, L, dtype=torch.bool, device=device)
    m[:n_prefix, :n_prefix] = torch.ones(n_prefix, n_prefix, dtype=torch.bool, device=device).tril()
    causal = torch.ones(seg_len, seg_len, dtype=torch.bool, device=device).tril()
    for j in range(n_seg):
        a = n_prefix + j * seg_len
        m[a: a + seg_len, :n_prefix] = True
        m[a: a + seg_len, a: a + seg_len] = causal
    return m


def positions(n_prefix: int, n_seg: int, seg_len: int, device=None):
    import torch

    pre = torch.arange(n_prefix, device=device)
    seg = (n_prefix + torch.arange(seg_len, device=device)).repeat(n_seg)
    return torch.cat([pre, seg])


def to_pixels(images: np.ndarray, device):
    """uint8 [B, H, W, 3] -> the processor's normalisation (SigLIP: mean 0.5, std 0.5)."""
    import torch

    x = torch.tensor(images, device=device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def vision_features(model, pixels):
    """Exactly what ``LlavaModel.get_image_features`` feeds the projector (last layer, all tokens)."""
    out = model.model.vision_tower(pixels, output_hidden_states=True, return_dict=True)
    return out.hidden_states[model.config.vision_feature_layer]


# per-patch targets whose classes are words of the vocabulary (class i + 1 -> word ALIGN_WORDS[k][i])
ALIGN_WORDS = {"cover_color": world.COLOR_NAMES, "cover_shape": world.SHAPES, "letter": world.LETTERS}
ALIGN_SCALE = 10.0


def word_alignment_loss(img, word_emb, aux: dict, device, metrics: dict | None = None):
    """Pull each visual token towards the input embeddings of the words that name what covers it.

    ``img`` [B, P, D] projector outputs; ``word_emb`` [V, D] (detached: the LM's words stay put);
    ``aux`` per-patch class targets [B, P]. For each target in :data:`ALIGN_WORDS`, the cosine
    similarities (times :data:`ALIGN_SCALE`) between a covered patch's token and the candidate
    words are the logits of a cross-entropy whose class is the right word. A token over a red
    circle thus points towards both ``red`` and ``circle``, so a question word can find it by a
    dot product. Training only; nothing of it is saved.
    """
    import torch
    import torch.nn.functional as F

    tokens = F.normalize(img.flatten(0, 1), dim=-1)  # [B*P, D]
    total, terms = 0.0, 0
    for k, words in ALIGN_WORDS.items():
        tgt = torch.from_numpy(aux[k]).to(device).flatten()
        pos = tgt > 0
        if not pos.any():
            continue
        ids = torch.tensor([VOCAB[w] for w in words], device=device)
        logits = ALIGN_SCALE * tokens[pos] @ F.normalize(word_emb[ids], dim=-1).T  # [n, len(words)]
        total = total + F.cross_entropy(logits, tgt[pos] - 1)
        terms += 1
        if metrics is not None:
            metrics["align_" + k] = float((logits.argmax(-1) == tgt[pos] - 1).float().mean())
    return total / max(1, terms)


def head_logits(layer, hidden, cos, sin, query_at, n_keys: int, head: int | None = 0):
    """Query head ``head``'s scaled attention logits [B, Q, n_keys] of ``layer`` (a Llama decoder
    layer) from the query positions ``query_at`` [B, Q] to the first ``n_keys`` positions, rebuilt
    from the layer's own norm, projections and RoPE; ``head`` None: every head's, [B, H, Q, n_keys].
    ``hidden`` [B, L, D] is the layer's input, ``cos``/``sin`` [B, L, head_dim] the rotary tables.
    No mask: callers choose what each query may see."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = layer.self_attn
    x = layer.input_layernorm(hidden)  # [B, L, D]
    B, Q = query_at.shape
    d = attn.head_dim
    take = query_at[..., None].expand(-1, -1, x.shape[-1])
    q = attn.q_proj(x.gather(1, take)).view(B, Q, -1, d).transpose(1, 2)  # [B, H, Q, d]
    k = attn.k_proj(x[:, :n_keys]).view(B, n_keys, -1, d).transpose(1, 2)  # [B, Hkv, n_keys, d]
    if head is None:
        k = k.repeat_interleave(attn.num_key_value_groups, 1)  # the KV head each query head reads
    else:
        head = head % attn.config.num_attention_heads  # -1: the last head
        q, k = q[:, head, None], k[:, head // attn.num_key_value_groups, None]  # [B, 1, ., d]
    q = apply_rotary_pos_emb(q, q, cos.gather(1, take[..., :d]), sin.gather(1, take[..., :d]))[0]
    k = apply_rotary_pos_emb(k, k, cos[:, :n_keys], sin[:, :n_keys])[0]
    logits = (q @ k.transpose(-1, -2)) * attn.scaling
    return logits if head is None else logits[:, 0]


def attention_target_log_prob(logp, target, counting, sink: float = 1.0):
    """Per query, how well log-attention ``logp`` [..., K] meets ``target`` bool [..., K]: the log
    of its mass on the target, or where ``counting`` [...] the weighted mean log-probability over
    the target, key 0 (``<s>``) weighing ``sink`` and every other target key 1 (the cross-entropy
    with the distribution ``sink / (sink + n)`` on ``<s>`` and ``1 / (sink + n)`` on each of the n
    others, up to sign; ``sink`` 1 is the uniform distribution)."""
    import torch

    on_target = torch.logsumexp(logp.masked_fill(~target, float("-inf")), -1)
    weight = target.to(logp.dtype)
    weight[..., 0] *= sink
    # a weight sum below 1 is real (a count of 0 with sink < 1); only an empty target is guarded
    on_spread = (logp.masked_fill(~target, 0.0) * weight).sum(-1) / weight.sum(-1).clamp(min=torch.finfo(weight.dtype).tiny)
    return torch.where(counting, on_spread, on_target)


def sep_positions(seg, n_prefix: int):
    """Sequence index [B, Q] of each packed segment's ``<sep>`` (``seg`` [B, Q, S] tensor of ids)."""
    import torch

    Q, S = seg.shape[1:]
    return n_prefix + torch.arange(Q, device=seg.device) * S + (seg == VOCAB[SEP]).int().argmax(-1)


def draw_removal(rng: np.random.Generator, evidence_tokens, n_layers: int, prob: float, min_share: float, *,
                 background: float = 0.0, objects=None, letters=None, evidence_removal: float = 0.0,
                 focus=None, focus_share: float = 0.0, evidence_layers: tuple = ()):
    """Random visual-token removal for one batch of ``n_scenes`` scenes of ``n_questions`` questions
    over ``n_visual`` tokens: None with probability ``1 - prob``, else ``(layer, kept, unlabelled)``:
    a decoder layer uniform in 0..n_layers-1 from which tokens are removed, ``kept`` bool
    [n_scenes, n_visual] and ``unlabelled`` bool [n_scenes, n_questions] (the questions whose answer
    the removal may have taken: :func:`unlabel` drops their labels).

    ``evidence_tokens``: bool [n_scenes, n_questions, n_visual], :func:`make_batch`'s
    ``evidence_tokens`` (the tokens each question's evidence boxes overlap, the evaluation's rule).
    Three kinds, chosen by one uniform draw (none when both shares are 0):

    - with probability ``background`` (``--drop-background``, stage 7) a **background removal**:
      per scene every token in ``objects`` (bool [n_scenes, n_visual]: overlapping an object's box)
      stays, the tokens in ``letters`` (same shape) that no object's box overlaps all stay or all go
      on a fair coin, and a share ``max(0, u)``, u uniform in [-0.5, 1], of the other tokens stays,
      so a third of these scenes keep no background at all (issue 19, stage 5's over-counting);
    - with probability ``evidence_removal`` (``--drop-evidence``, stage 8) an **evidence removal**:
      per scene one of its questions is drawn and only the tokens its evidence overlaps stay (none
      for a "no"), what ``evaluate.keep_evidence_eval`` keeps; with probability ``focus_share``
      (``--drop-focus-share``, stage 10) the question is drawn among the scene's ``focus`` questions
      (bool [n_scenes, n_questions]; ``--drop-focus`` types) when it has any; when
      ``evidence_layers`` (``--drop-evidence-layers``, stage 14) names layers, the removal's layer
      is drawn among them instead (after the kept tokens, so those are the same as without it);
    - otherwise a **random subset**: per scene ``max(1, round(share * n_visual))`` tokens with
      ``share`` uniform in [min_share, 1], every label kept, as for any random loss.

    In the first two kinds a question loses its label when one of its evidence tokens was removed,
    so every label left is still the answer to what the kept tokens show. Chosen by no scoring
    method: all three are random draws over the scene's own geometry.

    Raises:
        ValueError: ``background`` > 0 without ``objects`` and ``letters``, ``focus_share`` > 0
            without ``focus``, or ``evidence_layers`` outside 0..n_layers-1."""
    if background > 0 and (objects is None or letters is None):
        raise ValueError("a background removal needs the batch's object and letter tokens")
    if focus_share > 0 and focus is None:
        raise ValueError("a focused evidence removal needs the batch's focus questions")
    if any(not 0 <= i < n_layers for i in evidence_layers):
        raise ValueError(f"evidence removal layers {list(evidence_layers)}: the decoder has layers 0 to {n_layers - 1}")
    if rng.random() >= prob:
        return None
    n_scenes, n_questions, n_visual = evidence_tokens.shape
    layer = int(rng.integers(0, n_layers))
    kept = np.zeros((n_scenes, n_visual), bool)
    kind = rng.random() if background > 0 or evidence_removal > 0 else 1.0
    if kind < background:
        for b in range(n_scenes):
            letter_removed = letters[b].any() and rng.random() < 0.5
            kept[b] = objects[b] | (letters[b] & ~letter_removed)
            rest = ~objects[b] & ~letters[b]
            kept[b] |= rest & (rng.random(n_visual) < max(0.0, rng.uniform(-0.5, 1.0)))
            if not kept[b].any():  # an empty scene without a letter: keep one token
                kept[b, rng.integers(n_visual)] = True
    elif kind < background + evidence_removal:
        for b in range(n_scenes):
            pool = np.flatnonzero(focus[b]) if focus_share > 0 and rng.random() < focus_share else []
            kept[b] = evidence_tokens[b, rng.choice(pool) if len(pool) else rng.integers(n_questions)]
        if evidence_layers:
            layer = int(rng.choice(evidence_layers))
    else:
        for b in range(n_scenes):
            count = max(1, int(round(rng.uniform(min_share, 1.0) * n_visual)))
            kept[b, rng.choice(n_visual, count, replace=False)] = True
        return layer, kept, np.zeros((n_scenes, n_questions), bool)
    return layer, kept, (evidence_tokens & ~kept[:, None, :]).any(-1)


def unlabel(batch: dict, unlabelled) -> None:
    """In place: the questions ``unlabelled`` (bool [B, Q], :func:`draw_removal`) lose their answer
    labels, since what they ask is no longer in the kept tokens."""
    batch["labels"][np.asarray(unlabelled, bool)] = IGNORE


@contextlib.contextmanager
def keys_removed(lm, layer: int, key_keep):
    """From decoder layer ``layer`` of ``lm`` on, no query attends to a position where ``key_keep``
    (bool [B, L]) is False: forward pre-hooks mask those keys out of each layer's 4-D attention
    mask (bool: AND; additive float: -inf). With RoPE positions unchanged this equals removing the
    tokens physically from that layer on, as the engine's pruning does (its tests check the
    identity); a removed token's own row is still computed, but nothing reads it any more."""
    import torch

    def hook(module, args, kwargs):
        mask, keep = kwargs["attention_mask"], key_keep[:, None, None, :]
        kwargs["attention_mask"] = mask & keep if mask.dtype == torch.bool else mask.masked_fill(~keep, float("-inf"))
        return args, kwargs

    handles = [block.register_forward_pre_hook(hook, with_kwargs=True) for block in lm.layers[layer:]]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def kept_keys(removed, index: int):
    """Bool [B, n_prefix] of the prefix keys (``<s>`` and the visual tokens) decoder layer
    ``index`` still sees under ``removed`` = ``(layer, kept [B, n_prefix])``; None: all of them."""
    return None if removed is None or index < removed[0] else removed[1]


def masked_mean(values, where):
    """Mean of ``values`` where ``where`` (same shape) holds (``values[where].mean()``, as stages 1-5
    computed it); a zero without gradient where it holds nowhere (every target removed)."""
    return values[where].mean() if bool(where.any()) else values.new_zeros(())


def on_kept_keys(logits, target, supervised, kept):
    """Attention logits [B, N, K], target bool [B, N, K] and supervised bool [B, N] restricted to
    the kept keys ``kept`` bool [B, K] (None: unchanged): removed keys get -inf logits and leave the
    target, and a query whose target is all removed is no longer supervised."""
    if kept is None:
        return logits, target, supervised
    target = target & kept[:, None]
    return logits.masked_fill(~kept[:, None], float("-inf")), target, supervised & target.any(-1)


def question_attention_loss(lm, hidden_states, position_ids, seg, layers, n_prefix: int, device, removed=None):
    """How far head :data:`QUERY_HEAD` of each layer in ``layers`` is from reading, at ``<sep>``,
    the question's last key word.

    Arguments as in :func:`evidence_attention_loss`. The key words are the colour and shape words
    (singular or plural) a question names; they tell *which* object it is about. The last one has
    looked at the objects all of them name (:func:`word_evidence_loss`), so ``<sep>`` finds there
    what the answer needs. Over everything ``<sep>`` sees (the prefix and its own segment up to
    itself), the loss is ``-log`` of the head's softmax probability of the last key word, averaged
    over questions that have one (not `how many objects` nor the letter) and over the layers.
    ``removed`` as in :func:`evidence_attention_loss` (removed visual tokens are not seen). Training only.
    """
    import torch

    seg = torch.as_tensor(seg, device=device)
    B, Q, S = seg.shape
    query_at, sep_at, visible = sep_view(seg, n_prefix)
    in_question = torch.arange(S, device=device) < sep_at[..., None]  # [B, Q, S] (an answer may be a key word)
    is_key = torch.isin(seg, torch.tensor(KEY_WORD_IDS, device=device)) & in_question
    has = is_key.any(-1)
    last = S - 1 - is_key.flip(-1).int().argmax(-1)  # [B, Q]: the last key word's place in its segment
    key = torch.nn.functional.one_hot(last, S).bool() & has[..., None]
    if not has.any():
        return torch.zeros((), device=device)
    block = torch.eye(Q, dtype=torch.bool, device=device)[None, :, :, None]
    target = torch.cat([torch.zeros(B, Q, n_prefix, dtype=torch.bool, device=device),
                        (block & key[:, :, None, :]).reshape(B, Q, Q * S)], -1)
    cos, sin = lm.rotary_emb(hidden_states[0], position_ids)
    total = 0.0
    for index in layers:
        logits = head_logits(lm.layers[index], hidden_states[index], cos, sin, query_at, n_prefix + Q * S, QUERY_HEAD)
        logp = torch.log_softmax(logits.masked_fill(~seen_keys(visible, kept_keys(removed, index), n_prefix),
                                                    float("-inf")), -1)  # [B, Q, L]
        total = total - torch.logsumexp(logp.masked_fill(~target, float("-inf")), -1)[has].mean()
    return total / len(layers)


def sep_view(seg, n_prefix: int):
    """What each packed segment's ``<sep>`` sees: its sequence index ``query_at`` [B, Q], its place in
    its segment ``sep_at`` [B, Q], and ``visible`` bool [B, Q, L] (L = n_prefix + Q * S): the prefix
    and its own segment up to itself, as the block mask (:func:`block_mask`) lets it."""
    import torch

    B, Q, S = seg.shape
    query_at = sep_positions(seg, n_prefix)
    sep_at = query_at - n_prefix - torch.arange(Q, device=seg.device) * S
    own = torch.arange(S, device=seg.device) <= sep_at[..., None]  # [B, Q, S]: its segment, causally
    block = torch.eye(Q, dtype=torch.bool, device=seg.device)[None, :, :, None]  # segment q sees block q only
    visible = torch.cat([torch.ones(B, Q, n_prefix, dtype=torch.bool, device=seg.device),
                         (block & own[:, :, None, :]).reshape(B, Q, Q * S)], -1)
    return query_at, sep_at, visible


def seen_keys(visible, kept, n_prefix: int):
    """``visible`` bool [B, Q, L] (:func:`sep_view`) less the prefix keys a removal took (``kept``
    bool [B, n_prefix] from :func:`kept_keys`; None: none taken)."""
    import torch

    if kept is None:
        return visible
    return torch.cat([visible[..., :n_prefix] & kept[:, None], visible[..., n_prefix:]], -1)


def background_attention_loss(lm, hidden_states, position_ids, seg, evidence_tokens, labelled, layers,
                              n_prefix: int, device, removed=None, scene=None):
    """How much attention every query head of each layer in ``layers`` puts on background visual
    tokens (``--background-layers``; stage 17, ``scene`` from stage 24).

    Arguments as in :func:`evidence_attention_loss`, with ``evidence_tokens`` bool [B, Q, P] (the
    evaluation's overlap rule, :func:`make_batch`) and ``labelled`` bool [B, Q]. The loss per head
    and query is ``-log(1 - m)``, m the softmax mass, over everything the query sees, on the
    visible visual tokens of its background; averaged over heads, over the queries and over the layers.

    - ``scene`` None (stage 17): the queries are the ``<sep>`` of the labelled questions that have
      evidence, and a question's background is the visual tokens outside its evidence. Six of
      stage 12's heads of layers 5-7 park 0.5-0.8 of their attention at the answer position on
      such tokens (model card, "Which heads read the background"), so removing them changes what
      those heads read; a large VLM parks that mass on a few sink tokens instead.
    - ``scene`` bool [B, P], the visual tokens over an object or the letter (``objects | letters``
      of :func:`make_batch`): also every position of those questions before their ``<sep>``, with
      the same background, and every visual token of ``scene`` (not removed) as a query, whose
      background is the visual tokens outside ``scene`` (it cannot know the question, which comes
      after it). Each of the three kinds of query (``<sep>``, the other question positions, the
      visual tokens) is averaged on its own and the three means weigh the same, so the few
      ``<sep>`` rows are not drowned (stage 25; stage 24 pooled every query, code commit
      bb5f38d). Stage 15 keeps its counts under evidence-only pruning only because two large
      shifts cancel: from layer 5 on its object tokens put 0.3-0.8 of each head's attention on
      the background, its question words 0.2-0.8 from layer 4 on (model card, stage 24).

    A batch with no supervised question gives 0, whatever ``scene``. Training only."""
    import torch

    seg = torch.as_tensor(seg, device=device)
    evidence = torch.as_tensor(evidence_tokens, device=device)
    B, Q, S = seg.shape
    supervised = evidence.any(-1) & torch.as_tensor(labelled, device=device)  # [B, Q]
    if not supervised.any():
        return torch.zeros((), device=device)
    query_at, sep_at, visible = sep_view(seg, n_prefix)
    background = torch.cat([torch.zeros(B, Q, 1, dtype=torch.bool, device=device), ~evidence,
                            torch.zeros(B, Q, Q * S, dtype=torch.bool, device=device)], -1)  # [B, Q, L]
    rows = supervised
    if scene is not None:  # every position of a segment up to its <sep>, each seeing its segment causally
        t = torch.arange(S, device=device)
        query_at = (n_prefix + torch.arange(Q, device=device)[:, None] * S + t).reshape(1, Q * S).expand(B, -1)
        own = (t[:, None] >= t[None, :]).reshape(1, 1, S, 1, S)  # [.., position, ., key position]
        block = torch.eye(Q, dtype=torch.bool, device=device).reshape(1, Q, 1, Q, 1)
        visible = torch.cat([torch.ones(B, Q * S, n_prefix, dtype=torch.bool, device=device),
                             (own & block).expand(B, Q, S, Q, S).reshape(B, Q * S, Q * S)], -1)
        background = background.repeat_interleave(S, 1)
        rows = (supervised[..., None] & (t <= sep_at[..., None])).reshape(B, Q * S)
        at_sep = (t == sep_at[..., None]).reshape(B, Q * S)
    cos, sin = lm.rotary_emb(hidden_states[0], position_ids)
    total = 0.0
    for index in layers:
        kept = kept_keys(removed, index)
        seen = seen_keys(visible, kept, n_prefix)[:, None]  # [B, 1, N, L]
        logits = head_logits(lm.layers[index], hidden_states[index], cos, sin, query_at, visible.shape[-1], None)
        logp = torch.log_softmax(logits.masked_fill(~seen, float("-inf")), -1)  # [B, H, N, L]
        rest = torch.logsumexp(logp.masked_fill(background[:, None] | ~seen, float("-inf")), -1)  # log(1 - m)
        per_row = -rest.mean(1)  # [B, N]
        if scene is None:
            total = total + per_row[rows].mean()
        else:
            visual = _visual_background_terms(lm.layers[index], hidden_states[index], cos, sin, scene, kept, n_prefix)
            kinds = [per_row[rows & at_sep], per_row[rows & ~at_sep], visual]
            total = total + torch.stack([k.mean() for k in kinds if k.numel()]).mean()
    return total / len(layers)


def _visual_background_terms(layer, hidden, cos, sin, scene, kept, n_prefix: int):
    """``-log(1 - m)`` averaged over heads for every visual token of ``scene`` (bool [B, P]) that
    ``kept`` (bool [B, n_prefix] or None) keeps, m its attention mass, over ``<s>`` and the visual
    tokens up to itself that are kept, on the visual tokens outside ``scene``: a 1-D tensor, one
    term per such query (see :func:`background_attention_loss`)."""
    import torch

    B = scene.shape[0]
    visual = torch.arange(1, n_prefix, device=scene.device)[None].expand(B, -1)  # prefix index 1..P
    seen = torch.ones(n_prefix, n_prefix, dtype=torch.bool, device=scene.device).tril()[1:][None].expand(B, -1, -1)
    if kept is not None:
        seen = seen & kept[:, None]
    logits = head_logits(layer, hidden, cos, sin, visual, n_prefix, None)
    logp = torch.log_softmax(logits.masked_fill(~seen[:, None], float("-inf")), -1)  # [B, H, P, n_prefix]
    off = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=scene.device), ~scene], -1)[:, None, None]
    rest = torch.logsumexp(logp.masked_fill(off | ~seen[:, None], float("-inf")), -1)  # log(1 - m)
    return -rest.mean(1)[scene if kept is None else scene & kept[:, 1:]]


def evidence_attention_loss(lm, hidden_states, position_ids, seg, evidence, counting, layers, n_prefix: int,
                            device, removed=None, sink: float = 1.0):
    """How far the first query head of each layer in ``layers`` is from looking at the evidence.

    ``lm`` the Llama decoder; ``hidden_states`` its per-layer inputs (``output_hidden_states``;
    entry ``l`` [B, L, D] enters layer ``l``); ``position_ids`` [B, L]; ``seg`` [B, Q, S] packed
    segment ids; ``evidence`` bool [B, Q, P] (the patches holding the objects or letter a question
    is about; for a counting question, the centre patch of each counted object); ``counting`` bool
    [B, Q]; ``n_prefix`` = 1 + P (``<s>`` and the visual tokens).
    At each segment's ``<sep>`` (the token that predicts the answer), head 0's attention logits
    over the prefix are rebuilt from the layer's own norm, projections and RoPE. Per question:

    - to find: ``-log`` of the softmax mass on the evidence patches (questions without evidence,
      a "no", are not supervised);
    - to count: the cross-entropy with the distribution putting ``sink / (sink + n)`` on ``<s>``
      and ``1 / (sink + n)`` on each of the n centres (``sink`` 1: uniform over those n + 1
      positions, stages 3-14; ``--count-sink``). The head's output is then ``(sink v_<s> + sum of
      the centres' values) / (sink + n)``: the share of ``<s>`` in it, ``sink / (sink + n)``, says
      n, and a count of 0 puts all the weight on ``<s>``. A larger ``sink`` widens the steps
      between large counts (5 to 6: 0.024 at 1, 0.044 at 4) at the cost of the small ones.

    Averaged over supervised questions and over the layers. Training only: it teaches the model
    where to look, the answer loss teaches what to do with it. ``removed`` (``(layer, kept bool
    [B, n_prefix])``, see :func:`removed_keys`): from that layer on the head sees the kept keys
    only, the target is its kept part, and a question whose target was all removed is not supervised.
    """
    import torch

    seg = torch.as_tensor(seg, device=device)
    evidence = torch.as_tensor(evidence, device=device)
    counting = torch.as_tensor(counting, device=device)
    query_at = sep_positions(seg, n_prefix)  # [B, Q]
    target = torch.cat([counting[..., None], evidence], -1)  # [B, Q, n_prefix]: <s> too when counting
    has = evidence.any(-1) | counting  # [B, Q]
    if not has.any():
        return torch.zeros((), device=device)
    cos, sin = lm.rotary_emb(hidden_states[0], position_ids)  # [B, L, d], the same for every layer
    total = 0.0
    for index in layers:
        logits = head_logits(lm.layers[index], hidden_states[index], cos, sin, query_at, n_prefix)
        logits, seen, sup = on_kept_keys(logits, target, has, kept_keys(removed, index))
        logp = torch.log_softmax(logits, -1)  # [B, Q, n_prefix]
        total = total - masked_mean(attention_target_log_prob(logp, seen, counting, sink), sup)
    return total / len(layers)


def word_evidence_loss(lm, hidden_states, position_ids, words, word_counting, layers, n_prefix: int, device,
                       removed=None, sink: float = 1.0):
    """How far head 0 of each layer in ``layers`` is, at each key word, from looking at what it names.

    Arguments as in :func:`evidence_attention_loss` (no ``seg``: the key words are the rows of
    ``words`` that have a target), with ``words`` bool [B, Q, S, n_prefix] and
    ``word_counting`` bool [B, Q, S] from :func:`word_targets`. The key word's own embedding is the
    query that finds its objects (the visual tokens are aligned to the words that name them,
    :func:`word_alignment_loss`), so the word's position ends up holding that object's colour,
    shape and place, or the count, for ``<sep>`` to read (:func:`question_attention_loss`).
    Head 0's attention over the prefix is rebuilt as in :func:`evidence_attention_loss`; the loss
    per key word is ``-log`` of its mass on the target, or for a plural the cross-entropy with the
    distribution over ``<s>`` (weight ``sink``) and the centres (weight 1 each), averaged over key
    words and layers. ``removed`` and ``sink`` as in :func:`evidence_attention_loss`. Training only.
    """
    import torch

    words = torch.as_tensor(words, device=device)
    B, Q, S, _ = words.shape
    at_key = words.any(-1).reshape(B, Q * S)  # [B, Q*S]
    if not at_key.any():
        return torch.zeros((), device=device)
    target = words.reshape(B, Q * S, n_prefix)
    spread = torch.as_tensor(word_counting, device=device).reshape(B, Q * S)
    query_at = (n_prefix + torch.arange(Q * S, device=device))[None].expand(B, -1)  # every segment position
    cos, sin = lm.rotary_emb(hidden_states[0], position_ids)
    total = 0.0
    for index in layers:
        logits = head_logits(lm.layers[index], hidden_states[index], cos, sin, query_at, n_prefix)
        logits, seen, sup = on_kept_keys(logits, target, at_key, kept_keys(removed, index))
        logp = torch.log_softmax(logits, -1)  # [B, Q*S, n_prefix]
        total = total - masked_mean(attention_target_log_prob(logp, seen, spread, sink), sup)
    return total / len(layers)


def magnitude_evidence_loss(lm, hidden_states, seg, evidence_tokens, labelled, layers, n_prefix: int, device,
                            removed=None):
    """How far the information magnitude at each layer in ``layers`` is from ranking every evidence
    token of a question above the other visual tokens (``--share-layers``; stage 9), the ranking
    whose top-k ``evaluate``'s evidence share measures.

    Per question, ``q_T`` is the mean pre-RoPE query of its question words (the segment before
    ``<sep>``, the engine's text positions, method.md §2), and per query head the score of visual
    token i is ``log P^h_i = q_T·k_i/√d + log‖v_i‖`` (``dual_form.magnitude_terms``, pre-RoPE keys,
    the layer's own norm and projections). The loss is, per head, the cross-entropy between the
    head's softmax over the P visual tokens and the uniform distribution on the question's evidence
    tokens (``-mean log p`` over them; a ``-log`` of their total mass would be met by one evidence
    token, leaving the rest of them below the background), averaged over heads, over the labelled
    questions that have evidence, and over the layers: every head, not only the head 0 that
    :func:`word_evidence_loss` teaches, since the magnitude averages them all. A surrogate: the
    evaluation ranks the mean over heads of each head's max-shifted magnitude.

    ``seg`` [B, Q, S] packed segment ids; ``evidence_tokens`` bool [B, Q, P] (:func:`make_batch`, the
    evaluation's overlap rule); ``labelled`` bool [B, Q] (questions a removal left a label);
    ``removed`` as in :func:`evidence_attention_loss` (removed tokens leave the softmax and the
    target, a question with no evidence left is not supervised). Training only.
    """
    import torch

    from ..dual_form import magnitude_terms

    seg = torch.as_tensor(seg, device=device)
    evidence = torch.as_tensor(evidence_tokens, device=device)
    B, Q, S = seg.shape
    P = evidence.shape[-1]
    sep_at = (seg == VOCAB[SEP]).int().argmax(-1)  # [B, Q], within the segment
    words = (torch.arange(S, device=device) < sep_at[..., None]).float()  # [B, Q, S]: the question words
    supervised = evidence.any(-1) & torch.as_tensor(labelled, device=device)
    if not supervised.any():
        return torch.zeros((), device=device)
    terms = torch.func.vmap(torch.func.vmap(magnitude_terms, in_dims=(0, None, None)))  # over scenes, then questions
    total = 0.0
    for index in layers:
        attn = lm.layers[index].self_attn
        x = lm.layers[index].input_layernorm(hidden_states[index])  # [B, L, D]
        d = attn.head_dim
        q = attn.q_proj(x[:, n_prefix:]).view(B, Q, S, -1, d)  # [B, Q, S, H, d]
        q_text = (q * words[..., None, None]).sum(2) / words.sum(-1)[..., None, None]  # [B, Q, H, d]
        k = attn.k_proj(x[:, 1:n_prefix]).view(B, P, -1, d).transpose(1, 2)  # [B, Hkv, P, d]
        v = attn.v_proj(x[:, 1:n_prefix]).view(B, P, -1, d).transpose(1, 2)
        logits, norms, _ = terms(q_text[..., None, :], k, v)  # [B, Q, H, P] each
        H = logits.shape[2]
        scores = (logits + torch.log(norms)).reshape(B, Q * H, P)
        kept = kept_keys(removed, index)
        scores, target, sup = on_kept_keys(scores, evidence.repeat_interleave(H, 1), supervised.repeat_interleave(H, 1),
                                           None if kept is None else kept[:, 1:])
        spread = torch.ones_like(sup)
        total = total - masked_mean(attention_target_log_prob(torch.log_softmax(scores, -1), target, spread), sup)
    return total / len(layers)


def forward(model, heads, batch: dict, device, vision_only: bool = False, metrics: dict | None = None,
            attn_layers: tuple = (), query_layers: tuple = (), word_layers: tuple = (), share_layers: tuple = (),
            removal=None, count_sink: float = 1.0, background_layers: tuple = (), background_queries: str = "sep"):
    """Losses (dict) and, for the QA part, per-segment exact-match flags.

    ``count_sink``: the weight of ``<s>`` in the counting targets of the attention losses
    (:func:`evidence_attention_loss`); ``background_layers``: the layers of
    :func:`background_attention_loss`, at the ``<sep>`` only (``background_queries`` "sep") or
    at every object, letter and question token too ("all", its ``scene`` argument).

    ``removal``: None, or ``(layer, kept bool [B, P])`` from :func:`draw_removal`: from that
    decoder layer on the visual tokens not kept are removed (:func:`keys_removed`), in the answer
    loss and in every attention loss."""
    import torch
    import torch.nn.functional as F

    pixels = to_pixels(batch["images"], device)
    feats = vision_features(model, pixels)  # [B, P, Dv]
    img = model.model.multi_modal_projector(feats)  # [B, P, D]: the visual tokens the LM reads
    emb = model.model.language_model.get_input_embeddings()
    losses = {}
    if heads is not None and batch["aux"] is not None:
        # class-balanced: the mean loss over patches that hold something (an object, a letter, a
        # centre) plus the mean over the empty ones, so sparse targets (centres) are not drowned
        aux = 0.0
        for k, head in heads.items():
            tgt = torch.from_numpy(batch["aux"][k]).to(device).flatten()
            logits = head(feats).flatten(0, 1)
            ce = F.cross_entropy(logits, tgt, reduction="none")
            pos = tgt > 0
            aux = aux + ce[~pos].mean() + (ce[pos].mean() if pos.any() else 0.0)
            if metrics is not None and pos.any():
                metrics[k] = float((logits[pos].argmax(-1) == tgt[pos]).float().mean())
        losses["aux"] = aux / len(heads)
        losses["align"] = word_alignment_loss(img, emb.weight.detach(), batch["aux"], device, metrics)
    if vision_only:
        return losses, None
    B, Q, S = batch["seg"].shape
    P = feats.shape[1]
    bos = emb(torch.full((B, 1), VOCAB[BOS], device=device))
    seg = torch.from_numpy(batch["seg"]).to(device).reshape(B, Q * S)
    x = torch.cat([bos, img, emb(seg)], 1)
    n_prefix = 1 + P
    mask = block_mask(n_prefix, Q, S, device)[None, None].expand(B, 1, -1, -1)
    pos = positions(n_prefix, Q, S, device)[None].expand(B, -1)
    lm = model.model.language_model
    removed, removing = None, contextlib.nullcontext()
    if removal is not None:
        kept = torch.cat([torch.ones(B, 1, dtype=torch.bool), torch.as_tensor(removal[1])], 1).to(device)
        removed = (removal[0], kept)  # [B, n_prefix]
        removing = keys_removed(lm, removal[0], torch.cat([kept, torch.ones(B, Q * S, dtype=torch.bool,
                                                                              device=device)], 1))
    with removing:
        out = lm(inputs_embeds=x, attention_mask=mask, position_ids=pos,
                 output_hidden_states=bool(attn_layers or query_layers or word_layers or share_layers
                                           or background_layers))
    hidden = out.last_hidden_state
    if attn_layers and batch.get("evidence") is not None:
        losses["attn"] = evidence_attention_loss(lm, out.hidden_states, pos, batch["seg"], batch["evidence"],
                                                 batch["counting"],
                                                 attn_layers, n_prefix, device, removed, count_sink)
    if word_layers and batch.get("words") is not None:
        losses["word"] = word_evidence_loss(lm, out.hidden_states, pos, batch["words"], batch["word_counting"],
                                            word_layers, n_prefix, device, removed, count_sink)
    if query_layers:
        losses["query"] = question_attention_loss(lm, out.hidden_states, pos, batch["seg"], query_layers, n_prefix,
                                                  device, removed)
    if share_layers and batch.get("evidence_tokens") is not None:
        losses["share"] = magnitude_evidence_loss(lm, out.hidden_states, batch["seg"], batch["evidence_tokens"],
                                                  (batch["labels"] != IGNORE).any(-1), share_layers, n_prefix, device,
                                                  removed)
    if background_layers and batch.get("evidence_tokens") is not None:
        losses["background"] = background_attention_loss(lm, out.hidden_states, pos, batch["seg"],
                                                         batch["evidence_tokens"], (batch["labels"] != IGNORE).any(-1),
                                                         background_layers, n_prefix, device, removed,
                                                         scene=None if background_queries == "sep" else
                                                         torch.as_tensor(batch["objects"] | batch["letters"],
                                                                         device=device))
    labels = torch.from_numpy(batch["labels"]).to(device).reshape(B, Q * S)
    sel = labels != IGNORE
    logits = model.lm_head(hidden[:, n_prefix:][sel])
    losses["qa"] = F.cross_entropy(logits, labels[sel])
    # exact match per segment = greedy decoding gives the answer and stops
    ok = torch.ones(B, Q * S, dtype=torch.bool, device=device)
    ok[sel] = logits.argmax(-1) == labels[sel]
    correct = ok.reshape(B, Q, S).all(-1)
    return losses, correct


def build_heads(size: ModelSize):
    import torch

    return torch.nn.ModuleDict({k: torch.nn.Linear(size.vision_hidden, n) for k, n in AUX.items()})


def init_size(model_dir) -> ModelSize:
    """The ModelSize an exported model was built with (``config.json: shapes_world.model_size``)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return ModelSize(**cfg["shapes_world"]["model_size"])


def init_weights(model_dir) -> dict:
    """fp32 state dict of an exported model, keyed like :func:`build_model`'s."""
    import torch
    from transformers import AutoModelForImageTextToText

    exported = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32)
    return exported.state_dict()


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def evaluate_tf(model, samples: list, size: ModelSize, device, batch: int = 50) -> dict:
    """Teacher-forced exact match per question type (equal to greedy-decoding accuracy)."""
    import torch

    model.eval()
    hits: dict = {}
    with torch.no_grad():
        for i in range(0, len(samples), batch):
            chunk = samples[i: i + batch]
            _, correct = forward(model, None, heldout_batch(chunk, size), device)
            for s, c in zip(chunk, correct[:, 0].tolist()):
                hits.setdefault(s.qtype, []).append(c)
    model.train()
    acc = {t: float(np.mean(v)) for t, v in sorted(hits.items())}
    acc["overall"] = float(np.mean([c for v in hits.values() for c in v]))
    return acc


def export(model, out_dir, size: ModelSize, dtype: str = "float16", card_extra: dict | None = None):
    """Save the HF model (weights in ``dtype``) and the processor to ``out_dir``."""
    import copy

    import torch

    from .model import build_processor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).to(getattr(torch, dtype)).eval()
    m.config.shapes_world = {"model_size": asdict(size), "prompt": "<image>{question}", **(card_extra or {})}
    m.save_pretrained(out)
    build_processor(size).save_pretrained(out)
    return out


def layer_list(text: str) -> tuple:
    """``--attn-layers`` / ``--query-layers`` value: comma-separated decoder layer indices (empty: none)."""
    try:
        return tuple(int(i) for i in text.split(",") if i.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of layer numbers (e.g. 2,3,4,5)") from None


def _quality_range(text: str) -> tuple:
    """``--jpeg-quality`` value: ``LO,HI``, two JPEG qualities (the range is checked in :func:`train`)."""
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not two JPEG qualities LO,HI (e.g. 20,50)")
    return tuple(int(p) for p in parts)


def question_types(text: str) -> tuple:
    """``--drop-focus`` value: comma-separated names of ``world.QUESTION_TYPES`` (empty: none)."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in world.QUESTION_TYPES]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)}: not a question type (the types are "
                                         f"{', '.join(world.QUESTION_TYPES)})")
    return names


def check_init(model_dir, name: str = "--init") -> None:
    """A clear error (SystemExit naming the option ``name``) unless ``model_dir`` is a model exported
    by :func:`export`."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise SystemExit(f"error: {name} {model_dir}: no such folder")
    config = folder / "config.json"
    if not config.is_file():
        raise SystemExit(f"error: {name} {model_dir}: no exported model there (config.json is missing)")
    try:
        size = json.loads(config.read_text()).get("shapes_world", {}).get("model_size")
    except (ValueError, AttributeError):
        raise SystemExit(f"error: {name} {model_dir}: its config.json is not a JSON object") from None
    if size is None:
        raise SystemExit(f"error: {name} {model_dir}: not a shapes-world model exported by this trainer "
                         "(its config.json has no shapes_world.model_size)")


def check_new_folder(out, inputs, name: str) -> None:
    """ValueError (naming the option ``name``) unless ``out`` is a new or empty folder outside every
    folder in ``inputs``, so writing there can neither overwrite an input nor mix with older files."""
    out = Path(out)
    if any(out.resolve().is_relative_to(Path(d).resolve()) for d in inputs):
        raise ValueError(f"{name} {out}: would write into an input; give a new directory")
    if (out.exists() or out.is_symlink()) and not (out.is_dir() and not any(out.iterdir())):
        raise ValueError(f"{name} {out}: already exists and is not an empty directory; give a new one")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/shapes", help="checkpoint/log directory (continued if it exists)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=6000, help="total optimizer steps of the schedule")
    ap.add_argument("--minutes", type=float, default=None, help="stop this slice after so many minutes")
    ap.add_argument("--until", type=int, default=None, help="stop this slice at this step (schedule unchanged)")
    ap.add_argument("--vision-steps", type=int, default=0, help="first steps train the aux heads only (no LM)")
    ap.add_argument("--scenes", type=int, default=16, help="scenes per step")
    ap.add_argument("--vision-scenes", type=int, default=32, help="scenes per vision-only step")
    ap.add_argument("--questions", type=int, default=6, help="questions per scene")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--aux-weight", type=float, default=1.0)
    ap.add_argument("--align-weight", type=float, default=1.0,
                    help="weight of the word-alignment loss on the visual tokens (see word_alignment_loss)")
    ap.add_argument("--attn-layers", type=layer_list, default=(),
                    help="comma-separated decoder layers whose head 0 is taught to look at the evidence "
                         "(see evidence_attention_loss); empty: none")
    ap.add_argument("--attn-weight", type=float, default=1.0)
    ap.add_argument("--query-layers", type=layer_list, default=(),
                    help="comma-separated decoder layers whose last head is taught to read the question's last "
                         "colour or shape word at <sep> (see question_attention_loss); empty: none")
    ap.add_argument("--query-weight", type=float, default=1.0)
    ap.add_argument("--word-layers", type=layer_list, default=(),
                    help="comma-separated decoder layers whose head 0 is taught, at each colour or shape word, to "
                         "look at the objects it names (see word_evidence_loss); empty: none")
    ap.add_argument("--word-weight", type=float, default=1.0)
    ap.add_argument("--share-layers", type=layer_list, default=(),
                    help="comma-separated decoder layers whose information magnitude (every head, the question words' "
                         "mean query) is taught to rank the question's evidence tokens first (see "
                         "magnitude_evidence_loss); empty: none")
    ap.add_argument("--share-weight", type=float, default=1.0, help="weight of that loss")
    ap.add_argument("--drop-prob", type=float, default=0.0,
                    help="share of joint steps whose visual tokens are removed (random subsets, or background or "
                         "evidence removals by the two shares below; see draw_removal), in [0, 1]")
    ap.add_argument("--drop-min-share", type=float, default=0.05,
                    help="smallest kept share of the visual tokens when removing (uniform up to 1)")
    ap.add_argument("--drop-background", type=float, default=0.0,
                    help="share of the removals that keep every object token and drop background (see draw_removal); "
                         "needs a positive --drop-prob, and adds up with --drop-evidence to 1 at most")
    ap.add_argument("--drop-evidence", type=float, default=0.0,
                    help="share of the removals that keep only one drawn question's evidence tokens (see "
                         "draw_removal); needs a positive --drop-prob, and adds up with --drop-background to 1 at most")
    ap.add_argument("--drop-focus", type=question_types, default=(),
                    help="comma-separated question types (world.QUESTION_TYPES) that evidence removals draw more "
                         "often, by --drop-focus-share; empty: none")
    ap.add_argument("--drop-focus-share", type=float, default=0.0,
                    help="share of the evidence removals whose kept question is drawn among the --drop-focus types "
                         "(when the scene has one), in [0, 1]; needs --drop-evidence and --drop-focus")
    ap.add_argument("--drop-evidence-layers", type=layer_list, default=(),
                    help="comma-separated decoder layers the evidence removals are drawn from (see draw_removal); "
                         "empty: every layer, like the other removals")
    ap.add_argument("--background-layers", type=layer_list, default=(),
                    help="decoder layers whose every head is taught to put no attention, at <sep>, on visual "
                         "tokens outside the question's evidence (see background_attention_loss and "
                         "--background-queries); empty: none")
    ap.add_argument("--background-queries", choices=("sep", "all"), default="sep",
                    help="where --background-layers look: at <sep> only (stage 17) or also at every object, "
                         "letter and question token (see background_attention_loss)")
    ap.add_argument("--background-weight", type=float, default=1.0, help="weight of that loss")
    ap.add_argument("--count-sink", type=float, default=1.0,
                    help="weight of <s> in the counting targets of --attn-layers and --word-layers: the head "
                         "puts sink/(sink+n) on <s> for n objects (1: uniform, stages 3-14; see "
                         "evidence_attention_loss)")
    ap.add_argument("--styles", type=float, nargs="?", const=1 - world.P_DEFAULT_STYLE, default=0.0,
                    metavar="SHARE",
                    help="draw that share of the training scenes in a random style of world.training_style "
                         f"(alone: {1 - world.P_DEFAULT_STYLE:g}, stages 6-18; default 0: the generator's own style)")
    ap.add_argument("--jpeg", type=float, default=world.P_JPEG, metavar="SHARE",
                    help=f"share of the styled training scenes compressed as JPEG (default {world.P_JPEG:.3g}, "
                         "stages 6-20); needs --styles")
    ap.add_argument("--jpeg-default", type=float, default=0.0, metavar="SHARE",
                    help="share of the training scenes drawn in the generator's own style that are compressed "
                         "as JPEG too (default 0, stages 6-22); needs a --styles share between 0 and 1")
    ap.add_argument("--jpeg-quality", type=_quality_range, default=world.TRAIN_JPEG, metavar="LO,HI",
                    help="the JPEG qualities of the training scenes, drawn uniformly from LO to HI inclusive, "
                         f"inside {world.TRAIN_JPEG[0]},{world.TRAIN_JPEG[1]} (the default, stages 6-27), so that the "
                         "held-out jpeg-12 style stays unseen; needs --styles")
    ap.add_argument("--naming-words", action="store_true",
                    help="word evidence also for 'object', 'objects', 'letter', 'written' (train.NAMING_WORDS)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-n", type=int, default=700)
    ap.add_argument("--eval-seed", type=int, default=1, help="held-out seed for periodic evaluation")
    ap.add_argument("--save-every", type=float, default=5.0, help="minutes between checkpoints")
    ap.add_argument("--size", default="default", choices=["default", "tiny"])
    ap.add_argument("--size-json", default=None, help="ModelSize fields as JSON (overrides --size)")
    ap.add_argument("--init", default=None,
                    help="start a new run from an exported model directory (e.g. assets/shapes-vlm): its weights "
                         "and size; fresh auxiliary heads, optimizer and schedule")
    ap.add_argument("--export", default=None, help="export the model to this directory at the end")
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv=None) -> None:
    train(build_parser().parse_args(argv))


def train(args) -> dict:
    import torch
    from tqdm import tqdm

    from .model import TINY, build_model

    # every option is checked before the run directory is made, so a refused run leaves nothing behind
    for option, share in (("--drop-prob", args.drop_prob), ("--drop-min-share", args.drop_min_share),
                          ("--styles", args.styles), ("--jpeg", args.jpeg), ("--jpeg-default", args.jpeg_default)):
        if not 0.0 <= share <= 1.0:  # NaN fails too
            raise SystemExit(f"error: {option} {share}: a share, in [0, 1]")
    for option, share in (("--drop-background", args.drop_background), ("--drop-evidence", args.drop_evidence)):
        if not 0.0 <= share <= 1.0 or (share and not args.drop_prob):
            raise SystemExit(f"error: {option} {share}: a share of the removals, in [0, 1], "
                             "and only with a positive --drop-prob")
    if not 0.0 <= args.drop_focus_share <= 1.0 or (args.drop_focus_share and not (args.drop_evidence and args.drop_focus)):
        raise SystemExit(f"error: --drop-focus-share {args.drop_focus_share}: a share of the evidence removals, "
                         "in [0, 1], and only with a positive --drop-evidence and some --drop-focus types")
    if args.jpeg != world.P_JPEG and not args.styles:
        raise SystemExit(f"error: --jpeg {args.jpeg}: a share of the styled scenes, so only with a positive --styles")
    try:
        world.check_jpeg_quality(args.jpeg_quality)
    except ValueError as exc:
        raise SystemExit(f"error: --jpeg-quality {exc}") from None
    if args.jpeg_quality != world.TRAIN_JPEG and not args.styles:
        raise SystemExit(f"error: --jpeg-quality {','.join(map(str, args.jpeg_quality))}: the qualities of the "
                         "styled scenes, so only with a positive --styles")
    if args.jpeg_default and not 0.0 < args.styles < 1.0:
        raise SystemExit(f"error: --jpeg-default {args.jpeg_default}: a share of the scenes drawn in the "
                         "generator's own style, so only with a --styles share between 0 and 1")
    if not 0.0 < args.count_sink < math.inf:  # NaN fails too
        raise SystemExit(f"error: --count-sink {args.count_sink}: the weight of <s>, a positive number")
    if args.background_queries != "sep" and not args.background_layers:
        raise SystemExit(f"error: --background-queries {args.background_queries}: where --background-layers "
                         "look, so only with some --background-layers")
    if args.drop_evidence_layers and not args.drop_evidence:
        raise SystemExit(f"error: --drop-evidence-layers {','.join(map(str, args.drop_evidence_layers))}: "
                         "the layers of the evidence removals, so only with a positive --drop-evidence")
    if args.drop_background + args.drop_evidence > 1.0:
        raise SystemExit(f"error: --drop-background {args.drop_background} and --drop-evidence {args.drop_evidence}: "
                         "shares of the same removals, so they may add up to 1 at most")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run = Path(args.run)
    ckpt_path = run / "ckpt.pt"
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path.exists() else None
    init = args.init if state is None else None
    if state is not None:
        size = ModelSize(**state["size"])
    elif init:
        check_init(init)
        size = init_size(init)
    elif args.size_json:
        size = ModelSize(**json.loads(args.size_json))
    else:
        size = TINY if args.size == "tiny" else ModelSize()
    attn_layers, query_layers, word_layers = args.attn_layers, args.query_layers, args.word_layers
    share_layers = args.share_layers
    for option, chosen in (("--attn-layers", attn_layers), ("--query-layers", query_layers),
                           ("--word-layers", word_layers), ("--share-layers", share_layers),
                           ("--background-layers", args.background_layers),
                           ("--drop-evidence-layers", args.drop_evidence_layers)):
        if any(not 0 <= i < size.text_layers for i in chosen):
            raise SystemExit(f"error: {option} {','.join(map(str, chosen))}: this model's decoder has layers "
                             f"0 to {size.text_layers - 1}")
    run.mkdir(parents=True, exist_ok=True)
    model = build_model(size, seed=args.seed)
    if init:
        model.load_state_dict(init_weights(init))
    model = model.to(device)
    heads = build_heads(size).to(device)
    params = list(model.parameters()) + list(heads.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    step, elapsed0, seen = 0, 0.0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["opt"])
        step, elapsed0, seen = state["step"], state["elapsed"], state["seen"]
    log = open(run / "log.txt", "a")

    def say(msg):
        tqdm.write(msg)
        log.write(msg + "\n")
        log.flush()

    def save():
        nonlocal_elapsed = elapsed0 + time.time() - t0
        torch.save({"model": model.state_dict(), "heads": heads.state_dict(), "opt": opt.state_dict(),
                    "step": step, "elapsed": nonlocal_elapsed, "seen": seen, "size": asdict(size), "args": vars(args)},
                   run / "ckpt.tmp")
        (run / "ckpt.tmp").replace(ckpt_path)

    heldout = world.heldout_set(args.eval_n, args.eval_seed, size.image_size) if args.eval_n else []
    n_params = sum(p.numel() for p in model.parameters())
    say(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} device={device} threads={args.threads} params={n_params / 1e6:.2f}M "
        f"size={asdict(size)} step={step} args={vars(args)}")
    if args.export_only:
        export(model, args.export, size)
        return {}
    t0, last_save = time.time(), time.time()
    model.train()
    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress, dynamic_ncols=True)
    type_weights = None
    acc: dict = {}
    first_loss = last_loss = None
    while step < args.steps:
        if args.minutes is not None and time.time() - t0 > 60 * args.minutes:
            break
        if args.until is not None and step >= args.until:
            break
        rng = np.random.default_rng([args.seed, TRAIN_STREAM, step])
        vision_only = step < args.vision_steps
        n_scenes = args.vision_scenes if vision_only else args.scenes
        batch = make_batch(rng, n_scenes, args.questions, size, type_weights, styles=args.styles,
                           naming=NAMING_WORDS if args.naming_words else KEY_WORDS, jpeg=args.jpeg,
                           jpeg_default=args.jpeg_default, jpeg_quality=args.jpeg_quality)
        removal = None if vision_only else draw_removal(
            np.random.default_rng([args.seed, DROP_STREAM, step]), batch["evidence_tokens"], size.text_layers,
            args.drop_prob, args.drop_min_share, background=args.drop_background, objects=batch["objects"],
            letters=batch["letters"], evidence_removal=args.drop_evidence,
            focus=np.isin(batch["qtypes"], args.drop_focus), focus_share=args.drop_focus_share,
            evidence_layers=args.drop_evidence_layers)
        if removal is not None:
            unlabel(batch, removal[2])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        metrics = {} if (step + 1) % 25 == 0 else None
        losses, correct = forward(model, heads, batch, device, vision_only=vision_only, metrics=metrics,
                                  attn_layers=attn_layers, query_layers=query_layers, word_layers=word_layers,
                                  share_layers=share_layers, removal=removal, count_sink=args.count_sink,
                                  background_layers=args.background_layers,
                                  background_queries=args.background_queries)
        # the share of right answers among the questions that kept a label (a removal can take some)
        labelled = torch.from_numpy((batch["labels"] != IGNORE).any(-1))
        train_acc = None if correct is None else float(correct[labelled.to(correct.device)].float().mean())
        loss = (losses.get("qa", 0.0) + args.aux_weight * losses["aux"] + args.align_weight * losses["align"]
                + args.attn_weight * losses.get("attn", 0.0) + args.query_weight * losses.get("query", 0.0)
                + args.word_weight * losses.get("word", 0.0)
                + args.share_weight * losses.get("share", 0.0)
                + args.background_weight * losses.get("background", 0.0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        seen += args.scenes * (0 if vision_only else args.questions)
        last_loss = float(loss.detach())
        first_loss = last_loss if first_loss is None else first_loss
        bar.update(1)
        bar.set_postfix({k: f"{float(v.detach()):.3f}" for k, v in losses.items()}
                        | ({"acc": f"{train_acc:.2f}"} if train_acc is not None else {}))
        if step % 25 == 0:
            say(f"step {step} " + " ".join(f"{k}={float(v.detach()):.4f}" for k, v in losses.items())
                + (f" train_acc={train_acc:.3f}" if train_acc is not None else "")
                + " " + " ".join(f"{k}={v:.2f}" for k, v in (metrics or {}).items())
                + f" lr={opt.param_groups[0]['lr']:.2e} seen={seen} min={(elapsed0 + time.time() - t0) / 60:.1f}")
        if heldout and (step % args.eval_every == 0 or step == args.steps) and not vision_only:
            acc = evaluate_tf(model, heldout, size, device)
            say(f"eval step {step} " + json.dumps({k: round(v, 3) for k, v in acc.items()}))
            # rebalance: lagging types are asked more often in training
            type_weights = {t: 0.5 + (1.0 - a) * 2 for t, a in acc.items() if t != "overall"}
        if time.time() - last_save > 60 * args.save_every:
            save()
            last_save = time.time()
    bar.close()
    save()
    say(f"# stop at step {step}: {(elapsed0 + time.time() - t0) / 60:.1f} min, {seen} QA samples seen, last acc {json.dumps(acc)}")
    if args.export:
        export(model, args.export, size)
        say(f"# exported to {args.export}")
    log.close()
    return {"first_loss": first_loss, "last_loss": last_loss, "step": step, "acc": acc}


if __name__ == "__main__":
    main()
