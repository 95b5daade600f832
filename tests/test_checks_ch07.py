"""Chapter 7 lab checks accept the reference and reject plausible wrong implementations."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_check_accepts, assert_check_rejects
from test_finetune import one_thread  # noqa: F401  (the autouse fixture: one torch thread for these tiny models)

from course_utils import finetune as ft
from course_utils.checks import ch07


@pytest.mark.parametrize("check,impl", [
    (ch07.check_lora_forward, ft.lora_forward), (ch07.check_apply_lora, ft.apply_lora),
    (ch07.check_merge_lora, ft.merge_lora), (ch07.check_few_shot_prompt, ft.few_shot_prompt),
    (ch07.check_select_examples_by_similarity, ft.select_examples_by_similarity),
    (ch07.check_exact_match, ft.exact_match),
])
def test_reference_passes(check, impl, capsys):
    assert_check_accepts(check, impl, capsys)


def test_lora_forward_rejects_missing_scaling():
    def no_scaling(x, weight, bias, A, B, scaling):
        return F.linear(x, weight, bias) + (x @ A.T) @ B.T

    assert_check_rejects(ch07.check_lora_forward, no_scaling, match="values differ")


def test_apply_lora_rejects_unfrozen_base_and_random_B():
    def not_frozen(model, r, alpha, target_modules):
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in target_modules:
                parent, _, child = name.rpartition(".")
                layer = ft.LoRALinear(module, r, alpha)
                module.weight.requires_grad_(True)  # forgot to freeze: the base trains too
                setattr(model.get_submodule(parent), child, layer)
        return model

    assert_check_rejects(ch07.check_apply_lora, not_frozen, match="trainable parameters")

    def random_b(model, r, alpha, target_modules):
        ft.apply_lora(model, r, alpha, target_modules)
        for m in model.modules():
            if isinstance(m, ft.LoRALinear):
                nn.init.normal_(m.lora_B, std=0.5)  # B initialised random: the model no longer starts identical
        return model

    assert_check_rejects(ch07.check_apply_lora, random_b, match="start identical")


def test_merge_lora_rejects_forgotten_scaling():
    def merge_without_scaling(model):
        for name, m in list(model.named_modules()):
            if isinstance(m, ft.LoRALinear):
                lin = nn.Linear(m.base.in_features, m.base.out_features, bias=m.base.bias is not None)
                with torch.no_grad():
                    lin.weight.copy_(m.base.weight + m.lora_B @ m.lora_A)
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, lin)
        return model

    assert_check_rejects(ch07.check_merge_lora, merge_without_scaling, match="alpha / r")


def test_few_shot_prompt_rejects_trailing_space():
    def trailing_space(examples, question):
        return "".join(f"Q: {q}\nA: {a}\n" for q, a in examples) + f"Q: {question}\nA: "

    assert_check_rejects(ch07.check_few_shot_prompt, trailing_space, match="expected")


def test_select_examples_rejects_dot_product_and_wrong_order():
    def dot_product(question, pool, k, embed):
        v = torch.as_tensor(embed([question] + [q for q, _ in pool]), dtype=torch.float64)
        sims = v[1:] @ v[0]  # not normalised: long questions win
        order = sorted(range(len(pool)), key=lambda i: (-float(sims[i]), i))[:k]
        return [pool[i] for i in reversed(order)]

    assert_check_rejects(ch07.check_select_examples_by_similarity, dot_product, match="cosine")

    def best_first(question, pool, k, embed):
        return list(reversed(ft.select_examples_by_similarity(question, pool, k, embed)))

    assert_check_rejects(ch07.check_select_examples_by_similarity, best_first, match="least similar first")


def test_exact_match_rejects_case_sensitive_and_unnormalised_whitespace():
    assert_check_rejects(ch07.check_exact_match, lambda p, r: p.strip() == r.strip(), match="lower")
    def no_inner_whitespace(p, r):  # lower-cases and drops the dot, but "New   York" != "new york"
        return p.lower().strip().rstrip(".") == r.lower().strip().rstrip(".")

    assert_check_rejects(ch07.check_exact_match, no_inner_whitespace, match="prediction='New   York'")
