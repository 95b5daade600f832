"""Interactive explorers for the notebooks (ipywidgets), each split into a pure part and a thin UI.

The routing explorer of chapter 4: real tokens with fixed random embeddings go through a router; sliders set the
number of experts, top-k, capacity factor, router temperature and noise, and a box runs DeepSeek-V3's loss-free
bias update. Three layers, so that tests need no browser:

- :func:`routing_scene` — the tokens, their vectors and a router matrix (data; seeded);
- :func:`explore_routing` — the routing for one setting of the controls (pure: tensors and a summary line);
- :func:`routing_explorer` — the ipywidgets UI and its ``update(**controls)`` function, which draws the figure
  (token → expert grid, ✕ = slot dropped by capacity; load per expert against the capacity line).

To change the explorer: the controls are :data:`ROUTING_CONTROLS` (name → slider settings; the names are the
keyword arguments of :func:`explore_routing`), the computation is :func:`explore_routing`, the drawing is
:func:`draw_routing`; ``tests/course/test_widgets.py`` covers all three.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch

from ..moe import apply_capacity, expert_capacity, route
from ..plotting import COLORS, label
from ..tokenization import get_encoding
from ..validate import check_int, check_number, nonnegative_float, positive_float

__all__ = [
    "RoutingScene",
    "RoutingView",
    "ROUTING_CONTROLS",
    "routing_scene",
    "explore_routing",
    "draw_routing",
    "routing_explorer",
]

DEFAULT_TEXT = "The router sends every token to a few experts; the busiest experts drop tokens when capacity runs out."

# name -> (kind, default, min, max, step, label); the names are explore_routing's keyword arguments
ROUTING_CONTROLS = {
    "num_experts": ("int", 8, 2, 16, 1, "experts"),
    "top_k": ("int", 2, 1, 4, 1, "top-k"),
    "capacity_factor": ("float", 1.0, 0.25, 4.0, 0.25, "capacity factor"),
    "temperature": ("float", 1.0, 0.1, 3.0, 0.1, "temperature"),
    "noise": ("float", 0.0, 0.0, 2.0, 0.1, "noise std"),
    "balancing": ("bool", False, None, None, None, "balancing (loss-free bias)"),
}


@dataclass
class RoutingScene:
    tokens: list[str]  # the text's tokens, as strings
    vectors: torch.Tensor  # [T, dim] fixed random embeddings sharing one direction (like a residual stream)
    router: torch.Tensor  # [max_experts, dim] router weights; the first num_experts rows are used


@dataclass
class RoutingView:
    weight: torch.Tensor  # [T, k] routing weights
    idx: torch.Tensor  # [T, k] chosen experts
    keep: torch.Tensor  # [T, k] False where capacity dropped the slot
    capacity: int  # token-slots per expert
    load: torch.Tensor  # [num_experts] kept slots per expert
    summary: str  # one line: top-k, experts, dropped slots


def routing_scene(
    text: str = DEFAULT_TEXT,
    *,
    dim: int = 32,
    max_experts: int = 16,
    shared: float = 1.0,
    seed: int = 0,
    encoding: str = "cl100k_base",
) -> RoutingScene:
    """Tokens of ``text`` (``encoding``) with seeded random vectors plus ``shared`` × one common direction."""
    if not isinstance(text, str) or not text:
        raise TypeError(f"text must be a non-empty str, got {text!r}")
    check_int("dim", dim, 1)
    check_int("max_experts", max_experts, 2)
    enc = get_encoding(encoding)
    ids = enc.encode(text)
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(len(ids), dim, generator=g) + shared * torch.randn(dim, generator=g)
    router = torch.randn(max_experts, dim, generator=g) / dim**0.5
    return RoutingScene([enc.decode([i]) for i in ids], vectors, router)


def explore_routing(
    scene: RoutingScene,
    num_experts: int = 8,
    top_k: int = 2,
    capacity_factor: float = 1.0,
    temperature: float = 1.0,
    noise: float = 0.0,
    balancing: bool = False,
    *,
    seed: int = 0,
    balance_steps: int = 200,
    gamma: float = 0.02,
) -> RoutingView:
    """Route ``scene``'s tokens with one setting of the controls (``top_k`` is capped at ``num_experts``).

    Logits are ``vectors · routerᵀ / temperature`` plus ``noise`` × N(0, 1); ``balancing`` runs DeepSeek-V3's
    bias update (``b_e += gamma · sign(mean load − load_e)``) ``balance_steps`` times on these tokens first.
    """
    check_int("num_experts", num_experts, 2, scene.router.shape[0])
    top_k = min(check_int("top_k", top_k, 1), num_experts)
    positive_float("capacity_factor", capacity_factor)
    positive_float("temperature", temperature)
    nonnegative_float("noise", noise)
    check_number("gamma", gamma, 0)
    logits = scene.vectors @ scene.router[:num_experts].T / temperature
    logits = logits + noise * torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed))
    bias = torch.zeros(num_experts)
    for _ in range(balance_steps if balancing else 0):  # run to equilibrium on these tokens
        load = torch.bincount(route(logits, top_k, bias=bias)[1].reshape(-1), minlength=num_experts).float()
        bias += gamma * torch.sign(load.mean() - load)
    weight, idx = route(logits, top_k, bias=bias)
    T = len(scene.tokens)
    capacity = expert_capacity(T, top_k, num_experts, capacity_factor)
    keep = apply_capacity(idx, num_experts, capacity)
    load = torch.bincount(idx[keep], minlength=num_experts)
    summary = f"top-k = {top_k}, experts = {num_experts}, dropped = {int((~keep).sum())} of {T * top_k} slots"
    return RoutingView(weight, idx, keep, capacity, load, summary)


def draw_routing(scene: RoutingScene, view: RoutingView):
    """The figure: token → expert grid (colour = weight, ✕ = dropped) and load per expert vs capacity."""
    T, num_experts = len(scene.tokens), view.load.numel()
    grid = torch.zeros(T, num_experts).scatter_(1, view.idx, view.weight).numpy()
    load = view.load.numpy()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 6.5), gridspec_kw={"width_ratios": [3, 2]})
    a.imshow(grid, aspect="auto", cmap="Blues", vmin=0, vmax=1)
    a.set_yticks(range(T), [repr(t)[1:-1] for t in scene.tokens], fontsize=7)
    a.set_xticks(range(num_experts))
    for t, j in (~view.keep).nonzero().tolist():
        a.text(int(view.idx[t, j]), t, "✕", ha="center", va="center", color=COLORS[3], fontsize=9, fontweight="bold")
    label(a, view.summary, "expert", "token")
    colors = [COLORS[3] if n >= view.capacity else COLORS[0] for n in load.tolist()]
    b.barh(range(num_experts), load, color=colors)
    b.axvline(view.capacity, color="grey", ls="--", label=f"capacity = {view.capacity}")
    b.legend()
    b.invert_yaxis()
    label(b, "Load per expert (kept slots)", "token-slots", "expert")
    fig.tight_layout()
    return fig


# The controls' column keeps its width (flex 0 0 auto): left to shrink, the figure squeezed it to 0 px and the
# sliders were drawn over and under the figure. The row wraps: where the figure does not fit beside the controls
# it goes under them, so the controls are always beside or above it.
CONTROLS_LAYOUT = {"flex": "0 0 auto", "min_width": "max-content"}
UI_LAYOUT = {"flex_flow": "row wrap", "align_items": "flex-start"}


def _control(widgets, kind, default, low, high, step, description):
    if kind == "bool":
        w = widgets.Checkbox(value=default, description=description)
    else:
        cls = widgets.IntSlider if kind == "int" else widgets.FloatSlider
        w = cls(value=default, min=low, max=high, step=step, description=description)
    w.style.description_width = "120px"
    return w


def routing_explorer(scene: RoutingScene | None = None, *, display=None):
    """``(ui, update)``: the ipywidgets explorer and the function its sliders call.

    ``update(**controls)`` draws the figure for one setting (through ``display``, default IPython's), prints
    and returns the summary line; call it once in a plain cell so the notebook's test runs the code path.
    """
    import ipywidgets as widgets  # noqa: PLC0415 — ipywidgets (~1 s) for the interactive UI only

    if display is None:
        from IPython.display import display  # noqa: PLC0415 — IPython (~0.7 s) only inside a notebook
    scene = scene if scene is not None else routing_scene()

    def update(**controls) -> str:
        view = explore_routing(scene, **controls)
        fig = draw_routing(scene, view)
        display(fig)
        plt.close(fig)
        print(view.summary)
        return view.summary

    controls = {name: _control(widgets, *spec) for name, spec in ROUTING_CONTROLS.items()}
    output = widgets.interactive_output(update, controls)
    ui = widgets.HBox([widgets.VBox(list(controls.values()), layout=CONTROLS_LAYOUT), output], layout=UI_LAYOUT)
    return ui, update
