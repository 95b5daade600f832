"""course_utils.widgets: the routing explorer's pure part, its drawing, and its UI (no browser needed)."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from course_utils import moe  # noqa: E402
from course_utils.widgets import ROUTING_CONTROLS, draw_routing, explore_routing, routing_explorer, routing_scene  # noqa: E402


@pytest.fixture(scope="module")
def scene():
    return routing_scene()


def test_scene_is_seeded_real_tokens(scene):
    assert "".join(scene.tokens).startswith("The router sends every token")
    assert scene.vectors.shape == (len(scene.tokens), 32) and scene.router.shape == (16, 32)
    assert torch.equal(routing_scene().vectors, scene.vectors)


def test_explore_routing_matches_the_moe_functions(scene):
    view = explore_routing(scene, num_experts=8, top_k=2, capacity_factor=1.0)
    T = len(scene.tokens)
    weight, idx = moe.route(scene.vectors @ scene.router[:8].T, 2)
    assert torch.equal(view.idx, idx) and torch.allclose(view.weight, weight)
    assert view.capacity == moe.expert_capacity(T, 2, 8, 1.0)
    assert int(view.load.sum()) == int(view.keep.sum()) and int(view.load.max()) <= view.capacity
    assert view.summary == f"top-k = 2, experts = 8, dropped = {int((~view.keep).sum())} of {2 * T} slots"
    # a generous capacity drops nothing; top_k is capped at num_experts
    assert explore_routing(scene, num_experts=4, top_k=4, capacity_factor=4.0).keep.all()
    assert explore_routing(scene, num_experts=2, top_k=4).idx.shape == (T, 2)


def test_balancing_spreads_the_load(scene):
    skewed = explore_routing(scene, num_experts=8, capacity_factor=4.0)
    balanced = explore_routing(scene, num_experts=8, capacity_factor=4.0, balancing=True)
    assert balanced.load.float().std() < skewed.load.float().std()


def test_bad_controls_are_rejected(scene):
    with pytest.raises(ValueError, match="num_experts"):
        explore_routing(scene, num_experts=17)
    with pytest.raises(ValueError, match="temperature"):
        explore_routing(scene, temperature=0)


def test_draw_and_ui(scene):
    fig = draw_routing(scene, explore_routing(scene, capacity_factor=0.5))
    grid, bars = fig.axes
    assert any(t.get_text() == "✕" for t in grid.texts)  # dropped slots are marked at capacity 0.5
    assert grid.get_xlabel() and bars.get_xlabel() == "token-slots"
    matplotlib.pyplot.close(fig)

    shown = []
    ui, update = routing_explorer(scene, display=shown.append)
    sliders = ui.children[0].children
    assert [w.description for w in sliders] == [spec[-1] for spec in ROUTING_CONTROLS.values()]
    assert update().startswith("top-k = 2, experts = 8") and len(shown) >= 1
    sliders[0].value = 4  # moving a slider re-runs update with the new value
    assert shown and update(num_experts=4).startswith("top-k = 2, experts = 4")
