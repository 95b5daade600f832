"""Chapter 5: a tiny Mixture-of-Experts language model — experiments and the statistics that read its router.

Building the models
- :func:`moe_config` — the chapter-3 :class:`~course_utils.model.GPTConfig` with its SwiGLU swapped for a
  :class:`~course_utils.moe.MoELayer` of ``num_experts`` experts, each ``1/top_k`` of the dense width, so that
  a token passes through as many expert weights as the dense model has FFN weights (equal *active* parameters).
- :func:`moe_training_loss` — the language-model loss plus ``coef ·`` the mean over layers of the Switch
  load-balancing loss (and optionally the ST-MoE z-loss).

Balance during training (hooks on every ``MoELayer``, so :func:`course_utils.train.train` needs no change)
- :func:`attach_loss_free_balancing` — DeepSeek-V3's bias update after every training forward pass.
- :class:`ExpertLoadRecorder` — a ``TrainHooks(on_eval=...)`` that records each expert's share of the training
  token-slots between two evaluations (the load heatmap), per layer.
- :func:`utilisation_entropy`, :func:`dead_experts` — one number each for how evenly the load is spread.

What the experts learn (Mixtral paper, §5)
- :func:`collect_routing` — run a model on contiguous validation text and keep each token's experts per layer.
- :func:`token_types` — whitespace/indentation, digits, keywords, words/identifiers, punctuation.
- :func:`routing_stats` — the [group, expert] table: which share of each group's token-slots went to each expert.
- :func:`consecutive_same_expert_rate` — how often token t+1 keeps token t's top-1 expert, and the rate that
  independent draws from the same expert frequencies would give (Σ_e p_e²).
- :func:`expert_colored_html` — the text with every token coloured by its top-1 expert.

The experiment
- :func:`run_variant` — train one model (dense, MoE with an aux-loss coefficient, or MoE with the loss-free bias)
  and return its history and load record; ``scripts/train_ch5.py`` runs all variants and seeds and writes
  ``assets/ch5_results.json`` plus the checkpoint ``assets/ch5_moe.safetensors`` (both sha256-checked on load:
  :func:`load_results`, :func:`load_moe_checkpoint`).
"""

from __future__ import annotations

import html
import json
import keyword
import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoints import load_checkpoint, verify_sha256
from .data import DOMAINS
from .model import GPT, GPTConfig
from .moe import MoELayer
from .plotting import COLORS
from .train import TrainConfig, TrainHooks, train
from .validate import check_int, nonnegative_float, positive_float, positive_int

__all__ = [
    "BASE_CONFIG",
    "moe_config",
    "build_model",
    "moe_training_loss",
    "attach_loss_free_balancing",
    "ExpertLoadRecorder",
    "utilisation_entropy",
    "dead_experts",
    "TOKEN_TYPES",
    "token_type",
    "token_types",
    "collect_routing",
    "routing_stats",
    "consecutive_same_expert_rate",
    "expert_colored_html",
    "domain_losses",
    "VARIANTS",
    "run_variant",
    "RESULTS",
    "MOE_CHECKPOINT",
    "verify_asset",
    "load_results",
    "load_moe_checkpoint",
]

ASSETS = Path(__file__).resolve().parent / "assets"
RESULTS = ASSETS / "ch5_results.json"
MOE_CHECKPOINT = ASSETS / "ch5_moe.safetensors"

# The chapter's dense model: chapter 3's GPT, narrowed to d_model=64 so that 8 runs fit on a laptop CPU.
BASE_CONFIG = GPTConfig(vocab_size=512, d_model=64, n_layers=4, n_heads=4, max_seq_len=128)


# ================================================================================================ models
def moe_config(config: GPTConfig, num_experts: int = 8, top_k: int = 2, **moe_options) -> GPTConfig:
    """``config`` with its dense FFN replaced by ``num_experts`` experts of width ``d_ff / top_k`` (top-k routing).

    Each token runs through ``top_k`` experts of width ``d_ff/top_k``: the same number of FFN weights as the dense
    model (plus the router's ``d_model · num_experts``), while the model *holds* ``num_experts/top_k`` times more.
    """
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    if config.ffn != "dense":
        raise ValueError(f"config must describe a dense model (ffn='dense'), got ffn={config.ffn!r}")
    for name, value in (("num_experts", num_experts), ("top_k", top_k)):
        positive_int(name, value)
    if top_k > num_experts:
        raise ValueError(f"top_k ({top_k}) must be <= num_experts ({num_experts})")
    if config.d_ff % top_k:
        raise ValueError(f"the dense width d_ff={config.d_ff} must be divisible by top_k={top_k}")
    return replace(
        config, ffn="moe", d_ff=config.d_ff // top_k, moe=dict(num_experts=num_experts, top_k=top_k, **moe_options)
    )


def build_model(kind: str = "dense", seed: int = 0, config: GPTConfig = BASE_CONFIG) -> GPT:
    """A freshly initialised chapter model: ``kind`` "dense" or "moe" (8 experts, top-2, at equal active params)."""
    if kind not in ("dense", "moe"):
        raise ValueError(f"kind must be 'dense' or 'moe', got {kind!r}")
    torch.manual_seed(seed)
    return GPT(config if kind == "dense" else moe_config(config))


def moe_training_loss(
    lm_loss: torch.Tensor, moe_aux: list[dict], aux_loss_coef: float = 0.01, z_loss_coef: float = 0.0
) -> torch.Tensor:
    """``lm_loss + aux_loss_coef · mean_layers(balancing loss) + z_loss_coef · mean_layers(z-loss)``.

    ``moe_aux`` is ``model.last_moe_aux`` (one dict per MoE layer). The Switch Transformer used a coefficient of
    0.01 for the balancing loss, ST-MoE 0.001 for the z-loss. The result keeps the router in the autograd graph.
    """
    if not isinstance(moe_aux, (list, tuple)):
        raise TypeError(
            f"moe_aux must be a list of per-layer aux dicts (model.last_moe_aux), got {type(moe_aux).__name__}"
        )
    nonnegative_float("aux_loss_coef", aux_loss_coef)
    nonnegative_float("z_loss_coef", z_loss_coef)
    total = lm_loss
    if moe_aux:
        total = total + aux_loss_coef * torch.stack([a["load_balancing_loss"] for a in moe_aux]).mean()
        if z_loss_coef:
            total = total + z_loss_coef * torch.stack([a["z_loss"] for a in moe_aux]).mean()
    return total


def _moe_layers(model) -> list[MoELayer]:
    layers = [m for m in model.modules() if isinstance(m, MoELayer)]
    if not layers:
        raise ValueError("model has no MoELayer (build it with ffn='moe')")
    return layers


def attach_loss_free_balancing(model, gamma: float = 1e-3) -> list:
    """DeepSeek-V3's auxiliary-loss-free balancing: after every *training* forward, ``b_e += γ·sign(mean − load_e)``.

    A forward hook on each :class:`MoELayer` does the update, so the ordinary training loop needs no change (the
    bias only changes the *next* step's choice, so updating right after the forward equals updating after the
    optimizer step). Returns the hook handles (``handle.remove()`` detaches them).
    """
    positive_float("gamma", gamma)

    def hook(layer, _inputs, output):
        if layer.training:
            layer.update_expert_bias(output[1]["tokens_per_expert"], gamma)

    return [layer.register_forward_hook(hook) for layer in _moe_layers(model)]


class ExpertLoadRecorder:
    """A :func:`course_utils.train.train` hook (``TrainHooks.on_eval``) that records the expert load over training.

    Forward hooks add up ``tokens_per_expert`` of every *training* forward pass; each evaluation (when ``train``
    calls the recorder) closes an interval. ``loads`` is a list over intervals of [layers][experts] fractions of
    the interval's token-slots (each row sums to 1); ``steps`` the step at which each interval ended.
    """

    def __init__(self, model):
        self.layers = _moe_layers(model)
        self.num_experts = self.layers[0].num_experts
        self._counts = torch.zeros(len(self.layers), self.num_experts)
        self.loads: list[list[list[float]]] = []
        self.steps: list[int] = []
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]

    def _hook(self, i):
        def hook(layer, _inputs, output):
            if layer.training:
                self._counts[i] += output[1]["tokens_per_expert"].float()

        return hook

    def __call__(self, history) -> None:
        if not history["step"]:  # the evaluation at step 0 closes no interval
            return
        total = self._counts.sum(dim=1, keepdim=True).clamp_min(1)
        self.loads.append((self._counts / total).tolist())
        self.steps.append(history["step"][-1])
        self._counts.zero_()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def utilisation_entropy(load) -> float:
    """Entropy of the expert-load distribution divided by log(E): 1 = perfectly even, 0 = one expert takes all."""
    p = torch.as_tensor(load, dtype=torch.float64).flatten()
    if p.numel() < 2 or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"load must hold >= 2 non-negative counts or fractions with a positive sum, got {p.tolist()}")
    p = p / p.sum()
    h = -(p[p > 0] * p[p > 0].log()).sum()
    return float(h / math.log(p.numel()))


def dead_experts(load, threshold: float = 0.1) -> int:
    """How many experts get less than ``threshold`` × their fair share (1/E) of the token-slots."""
    threshold = nonnegative_float("threshold", threshold)
    p = torch.as_tensor(load, dtype=torch.float64).flatten()
    if p.numel() < 1 or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"load must hold non-negative counts or fractions with a positive sum, got {p.tolist()}")
    p = p / p.sum()
    return int((p < threshold / p.numel()).sum())


# ================================================================================================ routing analysis
TOKEN_TYPES = ("whitespace", "digits", "keyword", "word", "punctuation", "other")


def token_type(piece: str) -> str:
    """The type of one decoded token: see :data:`TOKEN_TYPES` (a leading space is ignored, except when alone)."""
    if piece == "" or piece.isspace():
        return "whitespace"  # indentation, newlines, the spaces between words
    core = piece.lstrip(" ")
    if core.isdigit() and core.isascii():
        return "digits"
    if keyword.iskeyword(core):
        return "keyword"
    if core.replace("_", "a").isalnum() and core.isascii():
        return "word"  # identifiers in code, words (or word pieces) in prose
    if all(not c.isalnum() and not c.isspace() for c in core):
        return "punctuation"  # operators, brackets, '=', '.', ...
    return "other"  # mixed pieces such as '.\n' or 'x(' and bytes of multi-byte characters


def token_types(tokenizer, ids) -> torch.Tensor:
    """Index into :data:`TOKEN_TYPES` for every id in ``ids`` (decoded one token at a time)."""
    ids = torch.as_tensor(ids).flatten().tolist()
    cache: dict[int, int] = {}
    out = []
    for i in ids:
        if i not in cache:
            cache[i] = TOKEN_TYPES.index(token_type(tokenizer.decode([i])))
        out.append(cache[i])
    return torch.tensor(out, dtype=torch.long)


@torch.no_grad()
def collect_routing(
    model, data, split: str = "val", *, n_windows: int = 24, block_size: int = 128, seed: int = 0
) -> dict:
    """Route ``n_windows`` contiguous windows of ``split`` through ``model`` (eval mode), the same number per domain.

    Each window lies inside one domain's text (windows are spread evenly over the positions where that holds), so
    every domain is represented however the split is ordered. Returns ``ids``, ``domains`` [B, T] and ``experts``
    [L, B, T, k] (each token's chosen experts per MoE layer, best first).
    """
    _moe_layers(model)
    positive_int("n_windows", n_windows)
    check_int("block_size", block_size, 2)
    tokens, dom = data.ids[split], data.domains[split]
    if len(tokens) <= block_size:
        raise ValueError(f"block_size {block_size} is too long for the {split} split ({len(tokens)} tokens)")
    run_id = torch.cat([torch.zeros(1, dtype=torch.long), (dom[1:] != dom[:-1]).long().cumsum(0)])
    first = torch.arange(len(tokens) - block_size + 1)
    inside = run_id[first] == run_id[first + block_size - 1]  # the window does not cross into another domain
    present = [d for d in dom.unique().tolist() if (inside & (dom[first] == d)).any()]
    per = [n_windows // len(present) + (i < n_windows % len(present)) for i in range(len(present))]
    gen = torch.Generator().manual_seed(seed)
    starts = []
    for d, n in zip(present, per):
        valid = first[inside & (dom[first] == d)]
        pick = torch.linspace(0, len(valid) - 1, n + 2)[1:-1].long() if n else torch.zeros(0, dtype=torch.long)
        jitter = torch.randint(-block_size // 2, block_size // 2 + 1, (n,), generator=gen)
        starts.append(valid[(pick + jitter).clamp(0, len(valid) - 1)])
    window = torch.cat(starts)[:, None] + torch.arange(block_size)[None, :]
    ids, domains = tokens[window], dom[window]
    was_training = model.training
    model.eval()
    model(ids)
    model.train(was_training)
    B, T = ids.shape
    experts = torch.stack([a["topk_idx"].view(B, T, -1) for a in model.last_moe_aux])
    return {"ids": ids, "domains": domains, "experts": experts}


def routing_stats(expert_idx: torch.Tensor, labels: torch.Tensor, num_labels: int, num_experts: int) -> torch.Tensor:
    """[num_labels, num_experts]: the share of each label's token-slots that went to each expert (rows sum to 1).

    ``expert_idx`` [N] or [N, k] (a token's k experts count as k slots), ``labels`` [N] in ``0..num_labels-1``.
    A label with no tokens gets a row of zeros.
    """
    positive_int("num_labels", num_labels)
    positive_int("num_experts", num_experts)
    expert_idx = torch.as_tensor(expert_idx).long()
    labels = torch.as_tensor(labels).long()
    if expert_idx.dim() == 1:
        expert_idx = expert_idx[:, None]
    if expert_idx.dim() != 2 or labels.dim() != 1 or labels.shape[0] != expert_idx.shape[0]:
        raise ValueError(
            f"expert_idx must be [N] or [N, k] and labels [N], got {tuple(expert_idx.shape)} and {tuple(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(f"labels must lie in 0..{num_labels - 1}")
    if expert_idx.numel() and (expert_idx.min() < 0 or expert_idx.max() >= num_experts):
        raise ValueError(f"expert_idx must lie in 0..{num_experts - 1}")
    k = expert_idx.shape[1]
    flat = labels.repeat_interleave(k) * num_experts + expert_idx.reshape(-1)
    counts = torch.bincount(flat, minlength=num_labels * num_experts).view(num_labels, num_experts).double()
    return counts / counts.sum(dim=1, keepdim=True).clamp_min(1)


def consecutive_same_expert_rate(expert_ids: torch.Tensor, num_experts: int) -> tuple[float, float]:
    """``(rate, chance)`` for top-1 experts ``expert_ids`` [B, T] (rows are separate texts).

    ``rate``: the share of neighbouring pairs (t, t+1) *within a row* whose tokens have the same expert.
    ``chance``: the rate if every token drew its expert independently with the observed frequencies p_e, i.e.
    Σ_e p_e² — equal to 1/E only when the load is perfectly even.
    """
    positive_int("num_experts", num_experts)
    e = torch.as_tensor(expert_ids).long()
    if e.dim() == 1:
        e = e[None, :]
    if e.dim() != 2 or e.shape[1] < 2:
        raise ValueError(f"expert_ids must be [B, T] with T >= 2, got {tuple(e.shape)}")
    if e.min() < 0 or e.max() >= num_experts:
        raise ValueError(f"expert_ids must lie in 0..{num_experts - 1}")
    rate = (e[:, 1:] == e[:, :-1]).double().mean()
    p = torch.bincount(e.flatten(), minlength=num_experts).double() / e.numel()
    return float(rate), float((p**2).sum())


def expert_colored_html(pieces: list[str], experts, num_experts: int = 8) -> str:
    """HTML with each decoded token on a background of its expert's colour (hover shows the expert)."""
    palette = COLORS + ["#999999", "#66CC99", "#FFB6C1", "#8B4513"]
    spans = []
    for piece, e in zip(pieces, torch.as_tensor(experts).tolist()):
        text = html.escape(piece).replace("\n", "↵<br>").replace(" ", "&nbsp;")
        spans.append(f'<span title="expert {e}" style="background:{palette[e % len(palette)]}55">{text}</span>')
    legend = " ".join(
        f'<span style="background:{palette[e % len(palette)]}55">&nbsp;expert {e}&nbsp;</span>'
        for e in range(num_experts)
    )
    return f'<div style="font-family:monospace;font-size:12px;line-height:1.6">{legend}<hr>' + "".join(spans) + "</div>"


@torch.no_grad()
def domain_losses(
    model, data, split: str = "val", *, iters: int = 10, batch_size: int = 16, block_size: int = 128, seed: int = 1234
) -> dict:
    """Mean next-token cross-entropy [nats/token] per domain (the domain of the input token) on fixed batches."""
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    sums, counts = torch.zeros(len(DOMAINS), dtype=torch.float64), torch.zeros(len(DOMAINS), dtype=torch.float64)
    for _ in range(iters):
        x, y, d = data.get_batch(split, batch_size, block_size, gen, with_domains=True)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").double()
        sums.index_add_(0, d.flatten(), loss)
        counts.index_add_(0, d.flatten(), torch.ones_like(loss))
    model.train(was_training)
    return {dom: float(s / c) if c else float("nan") for dom, s, c in zip(DOMAINS, sums, counts)}


# ================================================================================================ the experiment
# name -> (kind, aux_loss_coef, loss-free bias gamma)
VARIANTS = {
    "dense": ("dense", 0.0, None),
    "moe_aux0.01": ("moe", 0.01, None),
    "moe_aux0": ("moe", 0.0, None),
    "moe_lossfree": ("moe", 0.0, 1e-3),
}


def run_variant(
    name: str,
    data,
    *,
    steps: int,
    seed: int = 0,
    config: GPTConfig = BASE_CONFIG,
    progress: bool = True,
    **train_kwargs,
) -> tuple[GPT, dict]:
    """Train one variant of :data:`VARIANTS`; returns ``(model, result)``.

    ``result`` holds the training ``history``, and for MoE variants the ``load`` record
    (:class:`ExpertLoadRecorder`: ``steps``, ``loads`` [intervals][layers][experts]). Everything else (optimiser,
    schedule, batches) is :func:`course_utils.train.train`'s, seeded by ``seed`` — identical across variants;
    ``train_kwargs`` are the other :class:`~course_utils.train.TrainConfig` fields (``lr``, ``batch_size``, ...).
    """
    if name not in VARIANTS:
        raise ValueError(f"name must be one of {sorted(VARIANTS)}, got {name!r}")
    kind, coef, gamma = VARIANTS[name]
    model = build_model(kind, seed, config)
    recorder = ExpertLoadRecorder(model) if kind == "moe" else None
    handles = attach_loss_free_balancing(model, gamma) if gamma else []
    settings = TrainConfig(steps=steps, seed=seed, aux_loss_coef=coef, progress=progress, **train_kwargs)
    history = train(model, data, settings, hooks=TrainHooks(on_eval=recorder))
    result = {"name": name, "seed": seed, "steps": steps, "params": model.param_counts(), "history": history}
    if recorder is not None:
        recorder.remove()
        result["load"] = {"steps": recorder.steps, "loads": recorder.loads}
    for h in handles:
        h.remove()
    return model, result


def verify_asset(path: str | Path) -> Path:
    """``path`` if its SHA-256 equals the one recorded in ``<path>.sha256``; else a clear error."""
    return verify_sha256(path, rebuild="python scripts/train_ch5.py")


def load_results(path: str | Path = RESULTS) -> dict:
    """The experiment's results written by ``scripts/train_ch5.py`` (checked against its .sha256)."""
    return json.loads(verify_asset(path).read_text())


def load_moe_checkpoint(path: str | Path = MOE_CHECKPOINT) -> GPT:
    """The trained MoE model (aux-loss 0.01, seed 0) from ``scripts/train_ch5.py`` (both files sha256-checked)."""
    return load_checkpoint(path, rebuild="python scripts/train_ch5.py")
