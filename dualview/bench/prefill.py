"""Prefill and end-to-end time, full versus pruned, per method and budget, with the FLOP bound.

``python -m dualview.bench prefill [--model builtin] [--n 10] [--repeats 3] [--quick]``
``python -m dualview.bench prefill --device cuda --shape llava-7b``  (random weights; GPU only)

Every configuration (all tokens; each method at 35.3 / 22.2 / 11.1 %) answers the same
questions; the configurations run interleaved (one question, every configuration in a rotated
order, then the next question; the whole pass ``--repeats`` times), and each figure is the
median over questions × repeats. Prefill is the first forward pass of ``model.generate``
(vision tower included); end-to-end is the whole greedy generation (at most 4 new tokens on
the built-in model, 8 on the random-weight model). Kept sets are chosen before timing; the
median selection time (kept indices from the analysis) is reported beside them. dualview's
analysis is a separate forward pass up to the pruning layer; a fused implementation would score
inside the prefill, so that pass is reported once, not added.

FLOP bound = full FLOPs / pruned FLOPs of the prefill: vision tower and projector unchanged,
decoder layers below the method's pruning layer at full length, the rest at the kept length
(matrix multiplications only: 2 FLOPs per multiply-add; causal attention counts S²/2 scores).

``--shape llava-7b`` builds a LLaVA-1.5-7B-shaped model (CLIP ViT-L/14 at 336 px, 576 visual
tokens, Llama 4096 × 32 layers) with random bf16 weights directly on the GPU. Unverified on a GPU:
the machine that wrote this suite has none; the tests run the same construction with small
dimensions on the CPU.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from dualview.bench import common


def vision_flops(vision, tokens: int) -> int:
    """Prefill FLOPs of a ViT with ``tokens`` positions (non-causal attention)."""
    d, f = vision.hidden_size, vision.intermediate_size
    per_layer = 2 * tokens * (4 * d * d + 2 * d * f) + 2 * 2 * tokens * tokens * d
    return vision.num_hidden_layers * per_layer


def decoder_layer_flops(text, length: int) -> int:
    """FLOPs of one Llama-style decoder layer on ``length`` positions (causal attention)."""
    d, f = text.hidden_size, text.intermediate_size
    head_dim = getattr(text, "head_dim", None) or d // text.num_attention_heads
    q, kv = text.num_attention_heads * head_dim, text.num_key_value_heads * head_dim
    projections = 2 * length * (d * q + 2 * d * kv + q * d + 3 * d * f)
    attention = 2 * 2 * (length * length // 2) * q
    return projections + attention


def prefill_flops(config, full_length: int, kept_length: int, layer: int) -> int:
    """Prefill FLOPs with decoder layers ``< layer`` at ``full_length`` and the rest at ``kept_length``."""
    text, vision = config.text_config, config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    projector = 2 * patches * (vision.hidden_size * text.hidden_size + text.hidden_size * text.hidden_size)
    head = 2 * text.hidden_size * text.vocab_size  # logits of the last position only
    decoder = layer * decoder_layer_flops(text, full_length) + \
        (text.num_hidden_layers - layer) * decoder_layer_flops(text, kept_length)
    return vision_flops(vision, patches) + projector + decoder + head


LLAVA_7B = {
    "text": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32),
    "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
}
"""LLaVA-1.5-7B: Llama-2-7B language model, CLIP ViT-L/14 at 336 px (576 visual tokens)."""


def random_llava_session(device: str, shape: dict = LLAVA_7B, dtype=None):
    """A Session over a LLaVA-1.5-style model of ``shape`` with random weights (bf16 by default),
    built directly on ``device``; the tokenizer and processor come from the tiny LLaVA builder,
    with images at 336 px. Nothing is written to disk."""
    import torch
    import transformers as tf

    from dualview.engine.adapters import ADAPTERS
    from dualview.engine.session import Session
    from dualview.engine.tiny import build_tiny

    directory = build_tiny("llava", tempfile.mkdtemp(prefix="dualview-shaped-"))  # tokenizer + processor files
    processor = tf.AutoProcessor.from_pretrained(directory)
    processor.image_processor.size = {"shortest_edge": 336}
    processor.image_processor.crop_size = {"height": 336, "width": 336}
    small = tf.AutoConfig.from_pretrained(directory)
    text = tf.LlamaConfig(vocab_size=small.text_config.vocab_size, max_position_embeddings=4096,
                          eos_token_id=small.text_config.eos_token_id, pad_token_id=small.text_config.pad_token_id,
                          **shape["text"])
    vision = tf.CLIPVisionConfig(image_size=336, patch_size=14, **shape["vision"])
    config = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_index=small.image_token_index,
                            vision_feature_select_strategy="default", vision_feature_layer=-2,
                            projector_hidden_act="gelu")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or torch.bfloat16)
    try:
        with torch.device(device):
            model = tf.LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = text.eos_token_id
    model.generation_config.pad_token_id = text.pad_token_id
    name = "llava-7b-shaped (random weights)" if shape is LLAVA_7B else "llava-shaped (random weights)"
    return Session(name, model, processor, ADAPTERS["llava"](model, processor))


def random_samples(n: int, seed: int, size: int = 336):
    """``n`` held-out shapes-world scenes with a generic prompt (for the random-weight model)."""
    from dualview.shapes import world

    samples = world.heldout_set(n, seed, size)
    for s in samples:
        s.question = "Describe the objects in this image."
    return samples


def timed_runs(session, prepared: list, configs, repeats: int, max_new_tokens: int) -> dict:
    """config name -> {"prefill": [s], "total": [s], "new_tokens": [int]}, interleaved (module docstring).
    ``prepared``: one ``session.prepare`` per question."""
    times = {name: {"prefill": [], "total": [], "new_tokens": []} for name in configs}
    names = list(configs)
    session.answer(prepared[0], max_new_tokens=max_new_tokens)  # warm-up
    steps = common.progress(range(repeats * len(prepared)), "prefill")
    for step in steps:
        repeat, index = divmod(step, len(prepared))
        order = names[(step % len(names)):] + names[:(step % len(names))]
        for name in order:
            keep, layer = configs[name][index]
            result = session.answer(prepared[index], keep=keep, layer=layer, max_new_tokens=max_new_tokens)
            times[name]["prefill"].append(result.prefill_seconds)
            times[name]["total"].append(result.total_seconds)
            times[name]["new_tokens"].append(len(result.token_ids))
    return times


PAPER_EFFICIENCY = {"prefill": (1.13, 0.39), "end-to-end": (1.37, 0.64)}
"""method.md §7: LLaVA-OneVision-7B at 11.1 % kept, one A6000: seconds, full vs. IWP."""


def markdown(rows: list[dict], record: dict) -> str:
    """README table: prefill and end-to-end medians, speedups, FLOP bound, selection time."""
    lines = [f"Medians over {record['n']} questions × {record['repeats']} interleaved passes "
             f"({record['threads']} torch threads; load average {record['load_average'][0]:.1f} before, "
             f"{record['load_average'][1]:.1f} after); selection time not included in prefill.", "",
             "| method | kept | layer | prefill ms | speedup | FLOP bound | end-to-end ms | speedup | selection ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        label = r["method"] if r["method"] == "full" else f"{r['method']} {100 * r['budget']:.1f} %"
        lines.append(f"| {label} | {r['kept_tokens']} | {r['layer']} | {r['prefill_ms']:.1f} | {r['speedup']:.2f} | "
                     f"{r['flop_bound']:.2f} | {r['total_ms']:.1f} | {r['total_speedup']:.2f} | {r['selection_ms']:.2f} |")
    (pf, pp), (ef, ep) = PAPER_EFFICIENCY["prefill"], PAPER_EFFICIENCY["end-to-end"]
    lines += ["", f"Paper (LLaVA-OneVision-7B, 11.1 %, A6000): prefill {pp} s vs. {pf} s ({pf / pp:.2f}×), "
              f"end-to-end {ep} s vs. {ef} s ({ef / ep:.2f}×)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = common.parser("prefill", __doc__.split("\n")[0], n=10, quick_n=2)
    p.add_argument("--repeats", type=int, default=3, help="passes over the questions (1 with --quick)")
    p.add_argument("--methods", default=",".join(common.MAIN_METHODS), help="comma-separated registry names")
    p.add_argument("--device", default="cpu", help="cpu (the built-in or --model), or cuda with --shape")
    p.add_argument("--shape", choices=["llava-7b"], default=None, help="random-weight 7B-shaped model (GPU)")
    args = p.parse_args(argv)
    n = common.question_count(args)
    repeats = 1 if args.quick else args.repeats
    import torch

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.shape:
        if not (args.device.startswith("cuda") and torch.cuda.is_available()):
            common.fail("--shape llava-7b needs --device cuda and a CUDA GPU; none is available here.")
        session = random_llava_session(args.device)
        model = {"name": session.name, "visual_tokens": 576, "decoder_layers": session.num_layers}
        samples, max_new_tokens = random_samples(n, args.seed), 8
    else:
        if args.device != "cpu":
            common.fail("The built-in model is timed on the CPU; use --device cuda only with --shape llava-7b.")
        session, model = common.load(args)
        samples, max_new_tokens = common.questions(session, n, args.seed), common.MAX_NEW_TOKENS
    from dualview.errors import DualviewError
    from dualview.methods import get_method

    configs = {"full": [(None, None)] * n}
    selection_ms: dict = {}
    analysis_ms, lengths = [], []
    kept_tokens = {}
    prepared = []
    try:
        for index, sample in enumerate(samples):
            prepared.append(session.prepare(sample.image, sample.question))
            start = time.perf_counter()
            analysis = session.analyze(prepared[-1])
            analysis_ms.append(1000 * (time.perf_counter() - start))
            lengths.append(analysis.prepared.length)
            for method in methods:
                for budget in common.PAPER_BUDGETS:
                    start = time.perf_counter()
                    kept = get_method(method).select(analysis, budget).kept
                    selection_ms.setdefault((method, budget), []).append(1000 * (time.perf_counter() - start))
                    configs.setdefault(f"{method}@{budget}", []).append((kept, get_method(method).prune_layer(analysis)))
                    kept_tokens[method, budget] = int(kept.numel())
    except DualviewError as error:
        common.fail(str(error))
    num_visual = analysis.num_visual
    load_before = os.getloadavg()
    times = timed_runs(session, prepared, configs, repeats, max_new_tokens)
    load_after = os.getloadavg()

    def median_ms(name, key):
        return 1000 * statistics.median(times[name][key])

    full_prefill, full_total = median_ms("full", "prefill"), median_ms("full", "total")

    def flop_bound(kept: int, layer: int) -> float:
        """Mean over the questions (their prompts differ in length)."""
        config = session.model.config
        return statistics.mean(prefill_flops(config, length, length, 0) /
                               prefill_flops(config, length, length - num_visual + kept, layer) for length in lengths)

    rows = [{"method": "full", "budget": 1.0, "kept_tokens": num_visual, "layer": "", "prefill_ms": full_prefill,
             "speedup": 1.0, "flop_bound": 1.0, "total_ms": full_total, "total_speedup": 1.0,
             "new_tokens": statistics.mean(times["full"]["new_tokens"]), "selection_ms": 0.0}]
    for method in methods:
        for budget in common.PAPER_BUDGETS:
            name, layer = f"{method}@{budget}", configs[f"{method}@{budget}"][0][1]
            prefill, total = median_ms(name, "prefill"), median_ms(name, "total")
            rows.append({"method": method, "budget": budget, "kept_tokens": kept_tokens[method, budget],
                         "layer": layer, "prefill_ms": prefill, "speedup": full_prefill / prefill,
                         "flop_bound": flop_bound(kept_tokens[method, budget], layer),
                         "total_ms": total, "total_speedup": full_total / total,
                         "new_tokens": statistics.mean(times[name]["new_tokens"]),
                         "selection_ms": statistics.median(selection_ms[method, budget])})
    print(f"\n{session.name}: {statistics.median(lengths):.0f} prompt tokens ({num_visual} visual), {n} questions x {repeats} passes, "
          f"medians; load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"{'method':<20}{'kept':>6}{'layer':>6}{'prefill ms':>12}{'speedup':>9}{'FLOP bound':>12}"
          f"{'e2e ms':>9}{'speedup':>9}{'select ms':>11}")
    for r in rows:
        label = r["method"] if r["method"] == "full" else f"{r['method']} {100 * r['budget']:.1f}%"
        print(f"{label:<20}{r['kept_tokens']:>6}{str(r['layer']):>6}{r['prefill_ms']:>12.1f}{r['speedup']:>9.2f}"
              f"{r['flop_bound']:>12.2f}{r['total_ms']:>9.1f}{r['total_speedup']:>9.2f}{r['selection_ms']:>11.2f}")
    print(f"analysis pass (dualview's separate scoring forward up to layer {session.default_layer}): "
          f"median {statistics.median(analysis_ms):.1f} ms")
    record = common.header("prefill", args, model, n)
    record.update(device=args.device, repeats=repeats, prompt_tokens=lengths, num_visual=num_visual,
                  max_new_tokens=max_new_tokens, analysis_ms=statistics.median(analysis_ms),
                  load_average=[load_before[0], load_after[0]], threads=torch.get_num_threads())
    stem = "prefill" + ("-" + args.shape if args.shape else "") + common.suffix(args)
    written = common.write(args.out, stem, record, rows)
    written.append(common.write_markdown(args.out, stem, record, markdown(rows, record)))
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
