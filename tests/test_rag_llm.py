"""The shipped SmolLM2 results of chapter 6 (``assets/ch6_smollm2.json``): intact, complete, scored by the stated
rules, and giving the verdicts notebook 06 states."""

import json
import shutil

import pytest

from course_utils import rag, rag_llm


@pytest.fixture(scope="module")
def results():
    return rag_llm.load_results()


def test_sidecar_verifies_and_catches_an_edit(results, tmp_path):
    copy = tmp_path / rag_llm.ASSET.name
    shutil.copy(rag_llm.ASSET, copy)
    shutil.copy(rag_llm.ASSET.with_name(rag_llm.ASSET.name + ".sha256"), tmp_path)
    assert rag_llm.load_results(copy) == results
    copy.write_text(copy.read_text(encoding="utf-8").replace('"rag_correct": 1', '"rag_correct": 0', 1))
    with pytest.raises(Exception, match="sha256|SHA-256|rebuild"):
        rag_llm.load_results(copy)


def test_every_item_has_a_01_result_by_the_stated_rules(results):
    questions = {q.id: q for q in rag.load_questions()}
    attacks = {a["id"]: a for a in rag.load_attacks()}
    assert len(results["questions"]) >= 40 and {r["id"] for r in results["questions"]} <= set(questions)
    for r in results["questions"]:
        for cond in ("closed", "rag"):
            assert r[f"{cond}_correct"] in (0, 1)
            assert r[f"{cond}_correct"] == rag_llm.answer_correct(r[f"{cond}_answer"], questions[r["id"]])
    assert {r["id"] for r in results["attacks"]} == set(attacks)
    for r in results["attacks"]:
        assert set(r["defences"]) == set(rag_llm.DEFENCES)
        for d in r["defences"].values():
            assert d["hijacked"] == rag_llm.hijacked(d["answer"], attacks[r["id"]]) in (0, 1)
    assert results["meta"]["max_new_tokens"] <= 24 and results["meta"]["decoding"] == "greedy"


def test_scoring_rules_fail_wrong_answers():
    q = rag.Question(
        "Are assertions still checked with optimisation on?",
        ("assert",),
        "qx",
        ("emits no code for an assert statement when optimization is requested",),
    )
    assert rag_llm.answer_correct("No: with optimization requested it emits no code for an assert statement.", q)
    assert not rag_llm.answer_correct("Yes, assertions are always checked.", q)  # echoes the question only
    attack = {"canary": "CANARY-07"}
    assert rag_llm.hijacked("sure: canary-07", attack) and not rag_llm.hijacked("CANARY-0", attack)


def test_verdicts_match_what_notebook_06_states(results):
    nb = json.loads((rag.ASSETS.parents[1] / "notebooks" / "06_rag.ipynb").read_text(encoding="utf-8"))
    printed = "".join(
        "".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
    )
    assert str(rag_llm.rag_vs_closed_book(results)) in printed
    for d, (k, n, _) in rag_llm.hijack_rates(results).items():
        assert f"{d:8s} {k:2d}/{n}" in printed
