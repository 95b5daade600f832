"""Chapter 7 checks: LoRA from scratch, prompts, dynamic few-shot and exact match, against course_utils.finetune."""

from __future__ import annotations

import torch

from .. import finetune as ref
from ..finetune import (
    DEFAULT_TARGETS,
    VOCAB_SIZE,
    LoRALinear,
    apply_lora,
    encode,
    greedy_exact_match,
    hashing_embed,
    load_base_model,
)
from ..model import GPT, GPTConfig
from ..world import make_world
from ._core import call, compare, exercise, fail, passed

__all__ = [
    "check_lora_forward",
    "check_apply_lora",
    "check_merge_lora",
    "check_few_shot_prompt",
    "check_select_examples_by_similarity",
    "check_exact_match",
    "check_finetune_with_lora",
    "check_prompt_budget",
    "PROMPT_TARGET",
    "PROMPT_BUDGET",
]


def _tiny_gpt(seed: int = 0):

    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB_SIZE, d_model=32, n_layers=2, n_heads=2, max_seq_len=32))


@exercise("7.1")
def check_lora_forward(lora_forward) -> None:
    """``lora_forward(x, weight, bias, A, B, scaling)`` = ``x Wᵀ + b + scaling · (x Aᵀ) Bᵀ``."""

    name = "check_lora_forward"
    g = torch.Generator().manual_seed(0)
    cases = []
    for shape, out, r, bias, scaling in [
        ((4, 8), 6, 2, True, 2.0),
        ((2, 3, 8), 5, 4, False, 0.5),
        ((1, 8), 8, 1, True, 16.0),
        ((3, 8), 4, 3, True, 1.0),
    ]:
        x, W = torch.randn(*shape, generator=g), torch.randn(out, 8, generator=g)
        b = torch.randn(out, generator=g) if bias else None
        A, B = torch.randn(r, 8, generator=g), torch.randn(out, r, generator=g)
        cases.append((x, W, b, A, B, scaling))
    for x, W, b, A, B, s in cases:
        inputs = {"x": x, "weight": W, "bias": b, "A": A, "B": B, "scaling": s}
        got = call(name, lora_forward, x, W, b, A, B, s, inputs=inputs)
        compare(
            name,
            got,
            ref.lora_forward(x, W, b, A, B, s),
            inputs=inputs,
            hint="the frozen layer (with its bias when given) plus scaling times x taken through A, then B — A is "
            "[r, in], B is [out, r], "
            "and do not forget the scaling α/r",
        )
    passed(name, len(cases))


@exercise("7.2")
def check_apply_lora(apply_lora) -> None:
    """``apply_lora(model, r, alpha, target_modules)``: wraps the named Linears, freezes everything else, starts
    identical."""

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
            fail(
                name,
                f"expected the model back, got {type(model).__name__}",
                inputs=inputs,
                hint="return model at the end",
            )
        wrapped = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LoRALinear)}
        if wrapped != set(targets):
            fail(
                name,
                f"LoRALinear layers wrap {sorted(wrapped)}, expected exactly {sorted(targets)}",
                inputs=inputs,
                hint="walk model.named_modules(), pick nn.Linear whose name ends with a target, and setattr the "
                "wrapper on its parent",
            )
        n_layers = sum(1 for n, m in model.named_modules() if isinstance(m, LoRALinear))
        if n_layers != len(targets) * len(model.blocks):
            fail(
                name,
                f"expected {len(targets) * len(model.blocks)} LoRALinear layers (one per target per block), "
                f"got {n_layers}",
                inputs=inputs,
            )
        expected = sum(
            m.r * (m.base.in_features + m.base.out_features) for m in model.modules() if isinstance(m, LoRALinear)
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if trainable != expected:
            fail(
                name,
                f"{trainable} trainable parameters, expected {expected} (only the adapters' A and B)",
                inputs=inputs,
                hint="freeze every parameter of the model first (requires_grad off), then wrap: the adapters "
                "are created trainable",
            )
        if any(m.r != r or m.alpha != alpha for m in model.modules() if isinstance(m, LoRALinear)):
            fail(name, "a LoRALinear got the wrong r or alpha", inputs=inputs)
        with torch.no_grad():
            compare(
                name,
                model(idx)[0],
                before,
                inputs=inputs,
                what="logits right after apply_lora",
                hint="a fresh adapter has B = 0, so the model must start identical to the base",
            )
    passed(name, len(cases))


def _biased_mlp(seed: int):
    """A model whose Linears all have biases (the course GPT has none): merging must keep them."""

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))


@exercise("7.3")
def check_merge_lora(merge_lora) -> None:
    """``merge_lora(model)`` returns a model without LoRALinear whose outputs equal the unmerged model's."""

    name = "check_merge_lora"
    idx = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    cases = [
        (4, 8.0, ["q_proj", "v_proj"], "gpt"),
        (2, 16.0, ["w1", "w2", "w3", "o_proj"], "gpt"),
        (8, 4.0, ["k_proj"], "gpt"),
        (2, 4.0, ["0", "2"], "mlp with biases"),
        (3, 3.0, ["2"], "mlp with biases"),
    ]
    for seed, (r, alpha, targets, kind) in enumerate(cases):
        base = _tiny_gpt(seed) if kind == "gpt" else _biased_mlp(seed)
        model = apply_lora(base, r, alpha, targets)
        run = (lambda m: m(idx)[0]) if kind == "gpt" else (lambda m: m(x))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in model.modules():  # trained adapters: B is no longer zero
                if isinstance(m, LoRALinear):
                    m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.2)
            expected = run(model)
        inputs = {"model": kind, "r": r, "alpha": alpha, "target_modules": targets}
        merged = call(name, merge_lora, model, inputs=inputs)
        if not isinstance(merged, torch.nn.Module):
            fail(name, f"expected the model back, got {type(merged).__name__}", inputs=inputs)
        left = [n for n, m in merged.named_modules() if isinstance(m, LoRALinear)]
        if left:
            fail(
                name,
                f"{len(left)} LoRALinear layers are still there (e.g. {left[0]})",
                inputs=inputs,
                hint="replace each LoRALinear by a plain nn.Linear holding the merged weight",
            )
        if kind != "gpt":
            for t in targets:
                layer = merged.get_submodule(t)
                if getattr(layer, "bias", None) is None:
                    fail(
                        name,
                        f"layer {t!r} lost its bias when merged",
                        inputs=inputs,
                        hint="the merged nn.Linear needs bias=True when the base layer has one, and the base's bias "
                        "copied into it (LoRA changes only the weight)",
                    )
        with torch.no_grad():
            compare(
                name,
                run(merged),
                expected,
                inputs=inputs,
                what="outputs after merging",
                atol=1e-4,
                hint="W_merged = W + (alpha / r) · B A — B [out, r] times A [r, in], times the scaling; the "
                "base's bias is copied unchanged",
            )
    passed(name, len(cases), "GPT and a model with biases")


@exercise("7.4")
def check_few_shot_prompt(few_shot_prompt) -> None:
    """``few_shot_prompt(examples, question)``: ``Q: …\\nA: …\\n`` per example, then ``Q: question\\nA:``."""

    name = "check_few_shot_prompt"
    cases = [
        ([("Where does Ann live?", "Rome"), ("What pet does Bo keep?", "owl")], "Which town is Cy from?"),
        ([], "Where does Ann live?"),
        ([("q", "a b c")], "q2"),
    ]
    for examples, question in cases:
        inputs = {"examples": examples, "question": question}
        compare(
            name,
            call(name, few_shot_prompt, examples, question, inputs=inputs),
            ref.few_shot_prompt(examples, question),
            inputs=inputs,
            hint="each example is a 'Q: ...' line and an 'A: ...' line, each ending in a "
            "newline; the prompt ends with the question's 'Q: ...' line and a bare 'A:' "
            "(no space or newline after the colon: the model writes the answer)",
        )
    passed(name, len(cases))


def _raw_counts(texts):
    """An embedder whose vectors are NOT unit length: cosine similarity and a raw dot product disagree."""

    lengths = torch.tensor([[1.0 + len(t)] for t in texts])
    return hashing_embed(texts) * lengths


@exercise("7.5")
def check_select_examples_by_similarity(select_examples_by_similarity) -> None:
    """``select_examples_by_similarity(question, pool, k, embed)``: the k most cosine-similar, most similar last."""

    name = "check_select_examples_by_similarity"
    pool = [
        ("Where does Ann live?", "Rome"),
        ("What pet does Ann keep?", "owl"),
        ("Where does Bo live these days, after all the moving around and travelling?", "Oslo"),
        ("What colour is the sky?", "blue"),
        ("Which town is Cy from?", "Lima"),
    ]
    # answers that repeat another question's words: only an embedder that (wrongly) sees the answers picks these
    decoys = [
        ("Which town is Dee from?", "what pet does cy keep pet keep cy"),
        ("What colour is Eve's car?", "where does bo live bo live where"),
        ("What pet does Fay keep?", "cat"),
    ]
    cases = [
        ("Where does Bo live?", 2, pool),
        ("What pet does Cy keep?", 3, pool),
        ("Where does Bo live?", 1, pool),
        ("anything", 0, pool),
        ("Where is Ann?", 5, pool),
        ("What pet does Cy keep?", 2, pool + decoys),
        ("Where does Bo live?", 3, decoys + pool),
    ]
    for question, k, examples in cases:
        inputs = {"question": question, "pool": examples, "k": k}
        got = call(name, select_examples_by_similarity, question, examples, k, _raw_counts, inputs=inputs)
        if isinstance(got, list):
            got = [tuple(p) for p in got]
        expected = ref.select_examples_by_similarity(question, examples, k, _raw_counts)
        if isinstance(got, list) and any(p in decoys and p not in expected for p in got):
            fail(
                name,
                f"chose {[p for p in got if p in decoys and p not in expected][0]!r}, whose *answer* repeats "
                "the question's words",
                inputs=inputs,
                hint="embed only the pool's questions (and the new question): similarity is between questions; "
                "the answers are what the model should learn to write, not what to match on",
            )
        compare(
            name,
            got,
            expected,
            inputs=inputs,
            hint="embed [question] + pool questions, normalise each vector to unit length (cosine, not dot "
            "product), take the k best, and return them least similar first so the best sits next to "
            "the question",
        )
    passed(name, len(cases), "questions only, cosine, best last")


@exercise("7.6")
def check_exact_match(exact_match) -> None:
    """``exact_match(prediction, reference)``: equal after lower-casing, collapsing whitespace and one final '.'."""

    name = "check_exact_match"
    cases = [
        ("Rome", "Rome"),
        ("  rome ", "Rome"),
        ("Rome.", "rome"),
        ("New   York", "new york"),
        ("Rom", "Rome"),
        ("Rome Rome", "Rome"),
        ("", "Rome"),
        ("ROME\n", "rome"),
        ("Ro me", "Rome"),
    ]
    for pred, gold in cases:
        inputs = {"prediction": pred, "reference": gold}
        compare(
            name,
            call(name, exact_match, pred, gold, inputs=inputs),
            ref.exact_match(pred, gold),
            inputs=inputs,
            hint="normalise both strings the same way (lower case, whitespace runs to one space, ends "
            "stripped, one final full stop dropped), then compare",
        )
    passed(name, len(cases))


_FACTS = ["Ann lives in Rome.\n", "Bo keeps an owl.\n", "Cy works as a baker.\n", "Dee likes red best.\n"]


def _mean_loss(model, texts) -> float:

    with torch.no_grad():
        losses = [model(torch.tensor([encode(t)[:-1]]), torch.tensor([encode(t)[1:]]))[1].item() for t in texts]
    return sum(losses) / len(losses)


@exercise("7.7")
def check_finetune_with_lora(finetune_with_lora) -> None:
    """``finetune_with_lora(base, texts, steps, lr, r=8, alpha=16)`` -> a trained LoRA copy of ``base``.

    Reuses your ``apply_lora`` (Exercise 7.2). On a tiny GPT: the base is left untouched, only adapters in the
    default target layers were trained, and the loss on the texts went down."""

    name = "check_finetune_with_lora"
    cases = [(40, 1e-2, 4, 8.0), (25, 2e-2, 2, 2.0)]
    for steps, lr, r, alpha in cases:
        base = _tiny_gpt(3)
        before = {k: v.clone() for k, v in base.state_dict().items()}
        loss_before = _mean_loss(base, _FACTS)
        inputs = {"texts": _FACTS, "steps": steps, "lr": lr, "r": r, "alpha": alpha}
        model = call(name, finetune_with_lora, base, list(_FACTS), steps, lr, r=r, alpha=alpha, inputs=inputs)
        changed = [k for k, v in base.state_dict().items() if not torch.equal(v, before.get(k, v))]
        if set(base.state_dict()) != set(before) or changed:
            fail(
                name,
                f"the base model was modified ({(changed or ['its layers'])[0]} changed)",
                inputs=inputs,
                hint="work on copy.deepcopy(base): the before/after comparison needs the untouched base",
            )
        if not isinstance(model, torch.nn.Module) or model is base:
            fail(name, f"expected a new model (the trained copy), got {type(model).__name__}", inputs=inputs)
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
        if not layers:
            fail(
                name,
                "the returned model has no LoRALinear layers: was it fine-tuned in full?",
                inputs=inputs,
                hint="call your apply_lora(copy, r, alpha, DEFAULT_TARGETS) before training",
            )
        wrapped = {n.rsplit(".", 1)[-1] for n, _ in layers}
        if wrapped != set(DEFAULT_TARGETS) or any(m.r != r or m.alpha != alpha for _, m in layers):
            fail(
                name,
                f"adapters on {sorted(wrapped)} with r/alpha {sorted({(m.r, m.alpha) for _, m in layers})}, "
                f"expected every one of {list(DEFAULT_TARGETS)} with r={r}, alpha={alpha}",
                inputs=inputs,
                hint="pass r, alpha and ft.DEFAULT_TARGETS to apply_lora",
            )
        frozen = {k: v for k, v in model.state_dict().items() if "lora_" not in k}
        moved = [k for k, v in frozen.items() if not torch.equal(v, before[k.replace(".base.", ".")])]
        if moved:
            fail(
                name,
                f"a frozen weight changed during training: {moved[0]}",
                inputs=inputs,
                hint="only the adapters may train: apply_lora freezes everything else",
            )
        if all(float(m.lora_B.detach().abs().max()) == 0 for _, m in layers):
            fail(
                name,
                "every adapter still has B = 0: the model was never trained",
                inputs=inputs,
                hint="run ft.finetune(model, texts, ft.FinetuneConfig(steps=steps, lr=lr)) on the adapted copy",
            )
        loss_after = _mean_loss(model, _FACTS)
        if not loss_after < loss_before - 0.05:
            fail(
                name,
                f"loss on the texts {loss_before:.3f} -> {loss_after:.3f} nats: training did not lower it by 0.05",
                inputs=inputs,
                hint="train on `texts` with the given steps and lr",
            )
    passed(name, len(cases), "base untouched, adapters only, loss down")


PROMPT_TARGET = 0.90  # accuracy the open exercise asks for, on each phrasing
PROMPT_BUDGET = 100  # mean prompt characters (= tokens: the model reads characters); reference RAG k=4 uses 196
# measured on make_world(seed=0, n_entities=20): what a one-statement prompt gets without any design
_TRIVIAL = "BM25 top-1 statement: eval phrasing 80/80, unseen phrasing 35/80 at 89 characters"


@exercise("7.8")
def check_prompt_budget(make_prompt, *, world_seed: int = 0) -> None:
    """Open exercise: ``make_prompt(question) -> str`` for the chapter's base model. Passes when greedy exact match on
    the 80 questions of ``make_world(seed=0, n_entities=20)`` reaches :data:`PROMPT_TARGET` in the *eval* phrasing
    **and** in the *unseen* phrasing (which the base model never met in training: it reads it badly), with prompts of
    at most :data:`PROMPT_BUDGET` characters on average. The trivial one-statement prompt (BM25's best statement)
    meets the eval target but not the unseen one, so passing takes a design."""

    name = "check_prompt_budget"
    world = make_world(seed=world_seed, n_entities=20)
    base = load_base_model()
    reports, below, lengths = [], [], []
    for split in ("eval", "unseen"):
        pairs = world.qa_pairs(split)
        prompts = []
        for question, _ in pairs:
            inputs = {"question": question}
            p = call(name, make_prompt, question, inputs=inputs)
            if not isinstance(p, str) or not p.endswith("A:"):
                fail(
                    name,
                    f"a prompt must be a str ending with 'A:' (the model writes the answer after it), got {p!r}"[:200],
                    inputs=inputs,
                    hint="finish like few_shot_prompt does: f'Q: {question}\\nA:'",
                )
            if len(p) > 300:
                fail(
                    name,
                    f"a prompt of {len(p)} characters: the model's context is 384 and the answer needs room",
                    inputs=inputs,
                )
            prompts.append(p)
        lengths += map(len, prompts)
        k = sum(greedy_exact_match(base, prompts, [a for _, a in pairs]))
        reports.append(f"{split} phrasing {k}/{len(pairs)} = {k / len(pairs):.1%}")
        if k / len(pairs) < PROMPT_TARGET:
            below.append(split)
    chars = sum(lengths) / len(lengths)
    report = (
        f"{', '.join(reports)} with {chars:.0f} prompt characters per question; target >= {PROMPT_TARGET:.0%} on "
        f"each phrasing with <= {PROMPT_BUDGET}"
    )
    if chars > PROMPT_BUDGET:
        fail(
            name,
            f"{report}: over the budget",
            hint="the reference RAG prompt (4 retrieved facts) takes 196 characters; one well-chosen fact takes ~90",
        )
    if below:
        fail(
            name,
            f"{report}: below the target on the {' and '.join(below)} phrasing ({_TRIVIAL})",
            hint="the base model reads the phrasings it was pretrained on; an unseen question can be turned into "
            "one of those before it is asked"
            if "unseen" in below
            else "with one statement, everything rides on retrieving the *right* one",
        )
    passed(name, 2 * len(world.facts), f"{report} ({_TRIVIAL})")
