"""Chapter 7 checks: LoRA from scratch, prompts, dynamic few-shot and exact match, against course_utils.finetune."""
from __future__ import annotations

from ._core import call, compare, fail, passed

__all__ = ["check_lora_forward", "check_apply_lora", "check_merge_lora", "check_few_shot_prompt",
           "check_select_examples_by_similarity", "check_exact_match"]


def _tiny_gpt(seed: int = 0):
    import torch

    from course_utils.finetune import VOCAB_SIZE
    from course_utils.model import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB_SIZE, d_model=32, n_layers=2, n_heads=2, max_seq_len=32))


def check_lora_forward(lora_forward) -> None:
    """``lora_forward(x, weight, bias, A, B, scaling)`` = ``x Wᵀ + b + scaling · (x Aᵀ) Bᵀ``."""
    import torch

    from course_utils.finetune import lora_forward as ref

    name = "check_lora_forward"
    g = torch.Generator().manual_seed(0)
    cases = []
    for shape, out, r, bias, scaling in [((4, 8), 6, 2, True, 2.0), ((2, 3, 8), 5, 4, False, 0.5),
                                         ((1, 8), 8, 1, True, 16.0), ((3, 8), 4, 3, True, 1.0)]:
        x, W = torch.randn(*shape, generator=g), torch.randn(out, 8, generator=g)
        b = torch.randn(out, generator=g) if bias else None
        A, B = torch.randn(r, 8, generator=g), torch.randn(out, r, generator=g)
        cases.append((x, W, b, A, B, scaling))
    for x, W, b, A, B, s in cases:
        inputs = {"x": x, "weight": W, "bias": b, "A": A, "B": B, "scaling": s}
        got = call(name, lora_forward, x, W, b, A, B, s, inputs=inputs)
        compare(name, got, ref(x, W, b, A, B, s), inputs=inputs,
                hint="x @ W.T (+ bias if not None) + scaling * (x @ A.T) @ B.T — A is [r, in], B is [out, r], "
                     "and do not forget the scaling α/r")
    passed(name, len(cases))


def check_apply_lora(apply_lora) -> None:
    """``apply_lora(model, r, alpha, target_modules)``: wraps the named Linears, freezes everything else, starts identical."""
    import torch

    from course_utils.finetune import LoRALinear

    name = "check_apply_lora"
    cases = [(4, 8.0, ["q_proj", "v_proj"]), (2, 2.0, ["w1", "w2", "w3"]), (1, 1.0, ["o_proj"])]
    idx = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    for r, alpha, targets in cases:
        base = _tiny_gpt()
        inputs = {"r": r, "alpha": alpha, "target_modules": targets}
        with torch.no_grad():
            before = base(idx)[0]
        model = call(name, apply_lora, base, r, alpha, targets, inputs=inputs)
        if not isinstance(model, torch.nn.Module):
            fail(name, f"expected the model back, got {type(model).__name__}", inputs=inputs,
                 hint="return model at the end")
        wrapped = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LoRALinear)}
        if wrapped != set(targets):
            fail(name, f"LoRALinear layers wrap {sorted(wrapped)}, expected exactly {sorted(targets)}", inputs=inputs,
                 hint="walk model.named_modules(), pick nn.Linear whose name ends with a target, and setattr the "
                      "wrapper on its parent")
        n_layers = sum(1 for n, m in model.named_modules() if isinstance(m, LoRALinear))
        if n_layers != len(targets) * len(model.blocks):
            fail(name, f"expected {len(targets) * len(model.blocks)} LoRALinear layers (one per target per block), "
                       f"got {n_layers}", inputs=inputs)
        expected = sum(m.r * (m.base.in_features + m.base.out_features) for m in model.modules()
                       if isinstance(m, LoRALinear))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if trainable != expected:
            fail(name, f"{trainable} trainable parameters, expected {expected} (only the adapters' A and B)",
                 inputs=inputs, hint="freeze every parameter first: for p in model.parameters(): p.requires_grad_(False)")
        if any(m.r != r or m.alpha != alpha for m in model.modules() if isinstance(m, LoRALinear)):
            fail(name, "a LoRALinear got the wrong r or alpha", inputs=inputs)
        with torch.no_grad():
            compare(name, model(idx)[0], before, inputs=inputs, what="logits right after apply_lora",
                    hint="a fresh adapter has B = 0, so the model must start identical to the base")
    passed(name, len(cases))


def check_merge_lora(merge_lora) -> None:
    """``merge_lora(model)`` returns a model without LoRALinear whose outputs equal the unmerged model's."""
    import torch

    from course_utils.finetune import LoRALinear, apply_lora

    name = "check_merge_lora"
    idx = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    cases = [(4, 8.0, ["q_proj", "v_proj"]), (2, 16.0, ["w1", "w2", "w3", "o_proj"]), (8, 4.0, ["k_proj"])]
    for seed, (r, alpha, targets) in enumerate(cases):
        model = apply_lora(_tiny_gpt(seed), r, alpha, targets)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in model.modules():  # trained adapters: B is no longer zero
                if isinstance(m, LoRALinear):
                    m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.2)
            expected = model(idx)[0]
        inputs = {"r": r, "alpha": alpha, "target_modules": targets}
        merged = call(name, merge_lora, model, inputs=inputs)
        if not isinstance(merged, torch.nn.Module):
            fail(name, f"expected the model back, got {type(merged).__name__}", inputs=inputs)
        left = [n for n, m in merged.named_modules() if isinstance(m, LoRALinear)]
        if left:
            fail(name, f"{len(left)} LoRALinear layers are still there (e.g. {left[0]})", inputs=inputs,
                 hint="replace each LoRALinear by a plain nn.Linear holding the merged weight")
        with torch.no_grad():
            compare(name, merged(idx)[0], expected, inputs=inputs, what="logits after merging", atol=1e-4,
                    hint="W_merged = W + (alpha / r) * B @ A — B [out, r] times A [r, in], times the scaling; "
                         "keep the bias")
    passed(name, len(cases))


def check_few_shot_prompt(few_shot_prompt) -> None:
    """``few_shot_prompt(examples, question)``: ``Q: …\\nA: …\\n`` per example, then ``Q: question\\nA:``."""
    from course_utils.finetune import few_shot_prompt as ref

    name = "check_few_shot_prompt"
    cases = [([("Where does Ann live?", "Rome"), ("What pet does Bo keep?", "owl")], "Which town is Cy from?"),
             ([], "Where does Ann live?"), ([("q", "a b c")], "q2")]
    for examples, question in cases:
        inputs = {"examples": examples, "question": question}
        compare(name, call(name, few_shot_prompt, examples, question, inputs=inputs), ref(examples, question),
                inputs=inputs, hint='each example is f"Q: {q}\\nA: {a}\\n"; the prompt ends with "Q: {question}\\nA:" '
                                    "(no space or newline after the colon: the model writes the answer)")
    passed(name, len(cases))


def _raw_counts(texts):
    """An embedder whose vectors are NOT unit length: cosine similarity and a raw dot product disagree."""
    import torch

    from course_utils.finetune import hashing_embed

    lengths = torch.tensor([[1.0 + len(t)] for t in texts])
    return hashing_embed(texts) * lengths


def check_select_examples_by_similarity(select_examples_by_similarity) -> None:
    """``select_examples_by_similarity(question, pool, k, embed)``: the k most cosine-similar, most similar last."""
    from course_utils.finetune import select_examples_by_similarity as ref

    name = "check_select_examples_by_similarity"
    pool = [("Where does Ann live?", "Rome"), ("What pet does Ann keep?", "owl"),
            ("Where does Bo live these days, after all the moving around and travelling?", "Oslo"),
            ("What colour is the sky?", "blue"), ("Which town is Cy from?", "Lima")]
    cases = [("Where does Bo live?", 2), ("What pet does Cy keep?", 3), ("Where does Bo live?", 1),
             ("anything", 0), ("Where is Ann?", 5)]
    for question, k in cases:
        inputs = {"question": question, "pool": pool, "k": k}
        got = call(name, select_examples_by_similarity, question, pool, k, _raw_counts, inputs=inputs)
        if isinstance(got, list):
            got = [tuple(p) for p in got]
        compare(name, got, ref(question, pool, k, _raw_counts), inputs=inputs,
                hint="embed [question] + pool questions, normalise each vector to unit length (cosine, not dot "
                     "product), take the k best, and return them least similar first so the best sits next to "
                     "the question")
    passed(name, len(cases))


def check_exact_match(exact_match) -> None:
    """``exact_match(prediction, reference)``: equal after lower-casing, collapsing whitespace and one final '.'."""
    from course_utils.finetune import exact_match as ref

    name = "check_exact_match"
    cases = [("Rome", "Rome"), ("  rome ", "Rome"), ("Rome.", "rome"), ("New   York", "new york"), ("Rom", "Rome"),
             ("Rome Rome", "Rome"), ("", "Rome"), ("ROME\n", "rome"), ("Ro me", "Rome")]
    for pred, gold in cases:
        inputs = {"prediction": pred, "reference": gold}
        compare(name, call(name, exact_match, pred, gold, inputs=inputs), ref(pred, gold), inputs=inputs,
                hint="normalise both: lower(), ' '.join(s.split()), drop one trailing '.', then compare with ==")
    passed(name, len(cases))
