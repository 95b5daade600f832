"""Chapter 7 on SmolLM2 (``assets/ch7_smollm2.json``, from ``scripts/study_ch7_smollm2.py``): the file is intact,
its per-question results follow from its stored answers by the stated rule, and the paired verdicts recomputed from
them are the ones notebook 07 asserts."""

import ast
import json
import shutil
from pathlib import Path

import pytest

from course_utils import finetune as ft
from course_utils import rag_llm
from course_utils.world import make_world

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "07_finetune_vs_prompt.ipynb"


@pytest.fixture(scope="module")
def real():
    return rag_llm.load_ch7_results()


def notebook_dict(name: str) -> dict:
    """The literal ``name = {...}`` assigned in a code cell of notebook 07."""
    for cell in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] == "code":
            for node in ast.parse("".join(cell["source"])).body:
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
                    return ast.literal_eval(node.value)
    raise AssertionError(f"notebook 07 assigns no {name}")


def test_sidecar_verifies_and_a_corrupted_copy_names_the_rebuild(real, tmp_path):
    copy = tmp_path / rag_llm.CH7_ASSET.name
    shutil.copy(rag_llm.CH7_ASSET, copy)
    shutil.copy(rag_llm.CH7_ASSET.with_name(rag_llm.CH7_ASSET.name + ".sha256"), tmp_path)
    assert rag_llm.load_ch7_results(copy) == real
    text = copy.read_text(encoding="utf-8")
    copy.write_text(text.replace('"eval": "', '"eval": "1', 1), encoding="utf-8")
    with pytest.raises(ValueError, match="scripts/study_ch7_smollm2.py"):
        rag_llm.load_ch7_results(copy)


def test_bits_follow_from_the_stored_answers(real):
    """Every 0/1 is ``names_value`` of the stored answer: the scoring rule is the stated one, not a hand edit."""
    n = real["meta"]["n_entities"] * 4
    for w in real["meta"]["worlds"]:
        world = make_world(w, real["meta"]["n_entities"])
        trained = [i for i in range(n) if i not in set(ft.knowledge_split(world)["val_facts"])]
        cells = real["prompting"][str(w)]
        sources = {f"{w}/{m}/{s}": cell[s] for m, cell in cells.items() for s in ("eval", "unseen") if s in cell}
        for key, run in real["runs"].items():
            if not key.startswith(f"{w}/"):  # a run of another world: its own facts
                continue
            sources |= {f"{key}/{where}/{s}": bits for where in ("closed", "rag") for s, bits in run[where].items()}
        # the eval phrasing for every prompting method and every LoRA seed, closed book and with RAG
        need = {f"{w}/{m}/eval" for m in ft.PROMPT_METHODS}
        need |= {f"{w}/{s}/LoRA/{where}/eval" for s in real["meta"]["seeds"] for where in ("closed", "rag")}
        assert need <= set(sources) and real["meta"]["seeds"]
        for key, bits in sources.items():
            idx = trained if key.endswith("/trained") else range(n)
            facts = [world.facts[i] for i in idx]
            said = real["answers"][key]
            assert len(bits) == len(said) == len(facts), key
            assert bits == "".join(
                str(rag_llm.names_value(a, f.value, world.values[f.attribute])) for a, f in zip(said, facts)
            ), key


def test_recomputed_verdicts_equal_the_notebooks(real):
    pinned = notebook_dict("PINNED_SMOLLM2")
    assert set(pinned) == set(rag_llm.CH7_CLAIMS)
    got = {
        claim: ft.study_claim(real, a, b)["verdict"]
        if ft.study_share(real, *a) and ft.study_share(real, *b)
        else "not measured"
        for claim, (a, b) in rag_llm.CH7_CLAIMS.items()
    }
    assert got == pinned
    assert sum(v != "not measured" for v in got.values()) >= 5  # the eval-phrasing claims at least
    # the same claims on the toy study, as the notebook's ledger states them
    study = ft.load_study()
    toy = {claim: ft.study_claim(study, a, b)["verdict"] for claim, (a, b) in rag_llm.CH7_CLAIMS.items()}
    assert toy == notebook_dict("PINNED_TOY")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Quessa", 1),
        ("Vela Dorrin lives in quessa.", 1),
        ("QUESSA!", 1),
        ("Thozir", 0),  # another town
        ("Quessa or Thozir", 0),  # two candidates: not an answer
        ("Quessaville", 0),  # a different word that starts with the value
        ("", 0),
    ],
)
def test_names_value(answer, expected):
    assert rag_llm.names_value(answer, "Quessa", ("Quessa", "Thozir", "Siava")) == expected


def test_names_value_refuses_a_value_outside_the_candidates():
    with pytest.raises(ValueError, match="value"):
        rag_llm.names_value("Quessa", "Paris", ("Quessa", "Thozir"))
    with pytest.raises(TypeError, match="answer"):
        rag_llm.names_value(None, "Quessa", ("Quessa",))
