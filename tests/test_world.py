"""Chapter 7's synthetic knowledge world: deterministic, fictional, and updated by exactly the asked fraction."""

from __future__ import annotations

import pytest

from course_utils.world import ATTRIBUTES, World, make_world, update_world


def test_deterministic_per_seed_and_different_across_seeds():
    a, b, c = make_world(3, 20), make_world(3, 20), make_world(4, 20)
    assert a.facts == b.facts and a.entities == b.entities
    assert a.entities != c.entities


def test_shape_names_and_values():
    w = make_world(0, 25)
    assert len(w.entities) == len(set(w.entities)) == 25
    assert len(w.facts) == 25 * len(ATTRIBUTES)
    assert not set(w.entities) & set(w.values["town"])
    for f in w.facts:
        assert f.value in w.values[f.attribute]
        assert f.entity in f.statement(0) and f.value in f.statement(1)
        assert f.entity in f.question("eval") and f.value not in f.question("train")
    assert len(w.statements(None)) == 2 * len(w.facts)
    assert w.qa_pairs("train")[0][0] != w.qa_pairs("eval")[0][0]  # a held-out phrasing
    assert w.lookup(w.facts[5].entity, w.facts[5].attribute) == w.facts[5].value


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.2, 0.5, 1.0])
def test_update_changes_exactly_the_fraction(fraction):
    w = make_world(0, 30)
    u = update_world(w, fraction)
    differ = [(f, g) for f, g in zip(w.facts, u.facts) if f.value != g.value]
    assert len(differ) == round(fraction * len(w.facts)) == len(u.changed)
    assert all((f.entity, f.attribute) == (g.entity, g.attribute) for f, g in zip(w.facts, u.facts))
    assert [g for _, g in differ] == u.changed
    assert w.facts == make_world(0, 30).facts  # the original is untouched


def test_update_is_deterministic_and_seedable():
    w = make_world(1, 30)
    assert update_world(w, 0.2).facts == update_world(w, 0.2).facts
    assert update_world(w, 0.2, seed=1).facts != update_world(w, 0.2).facts


def test_bad_input():
    with pytest.raises(ValueError, match="n_entities"):
        make_world(0, 0)
    with pytest.raises(TypeError, match="seed"):
        make_world("0", 5)
    with pytest.raises(ValueError, match="fraction"):
        update_world(make_world(0, 5), 1.5)
    with pytest.raises(TypeError, match="world"):
        update_world({"facts": []}, 0.2)
    with pytest.raises(ValueError, match="split"):
        make_world(0, 2).facts[0].question("test")
    with pytest.raises(ValueError, match="phrasing"):
        make_world(0, 2).statements(2)
    assert isinstance(make_world(0, 1), World)
