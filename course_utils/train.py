"""Chapter 3: the training loop, small enough to read in one sitting.

- AdamW (Loshchilov & Hutter, 2019) with weight decay on matrices only (not on norms' gains);
- a learning-rate schedule of linear warm-up then cosine decay to ``min_lr_ratio · lr`` (as in GPT-3 / Llama);
- gradient clipping by global norm;
- periodic evaluation on held-out batches, a ``tqdm.auto`` progress bar and an optional callback (e.g.
  :class:`LiveLossPlot`, which redraws a matplotlib figure in a notebook after every evaluation);
- hooks for the other loops of the course (chapter 7's fine-tuning and base-model pretraining): a loss function,
  an evaluation function, a per-step callback, early stopping with patience and restoring the best weights.

The settings travel as one validated :class:`TrainConfig`, the hooks as :class:`TrainHooks`, and every run returns
a :class:`History` (chapter 7's :func:`course_utils.finetune.finetune` returns the same type).

For Mixture-of-Experts models (chapter 5) ``aux_loss_coef`` adds the mean over layers of the routers'
load-balancing loss (``model.last_moe_aux``) to the training loss.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .plotting import label, use_course_style
from .validate import (
    ArgumentTypeError,
    check_int,
    check_number,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)

__all__ = [
    "TrainConfig",
    "TrainHooks",
    "History",
    "lr_at",
    "configure_optimizer",
    "evaluate",
    "train_step",
    "train",
    "LiveLossPlot",
]


def lr_at(step: int, *, lr: float, warmup: int, steps: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up over ``warmup`` steps, then cosine decay to
    ``min_lr_ratio·lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if steps <= warmup:
        return lr
    progress = min(1.0, (step - warmup) / max(1, steps - 1 - warmup))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def configure_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float, betas=(0.9, 0.95)):
    """AdamW with weight decay on 2-D weights (matrices, embeddings) and none on 1-D ones (norm gains, biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


@torch.no_grad()
def evaluate(
    model, data, split: str = "val", iters: int = 20, *, batch_size: int = 16, block_size: int = 128, seed: int = 1234
) -> float:
    """Mean cross-entropy (nats per token) over ``iters`` batches of ``split``.

    The batches come from a generator seeded with ``seed``, so every evaluation scores the same tokens and
    successive numbers are comparable.
    """
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(iters):
        x, y = data.get_batch(split, batch_size, block_size, gen)
        _, loss = model(x, y)
        total += float(loss)
    model.train(was_training)
    return total / iters


def _moe_aux_loss(model) -> torch.Tensor | None:
    aux = getattr(model, "last_moe_aux", None) or []
    losses = [a["load_balancing_loss"] for a in aux if a.get("load_balancing_loss") is not None]
    return torch.stack([torch.as_tensor(l) for l in losses]).mean() if losses else None


def train_step(
    model,
    opt,
    x: torch.Tensor,
    y: torch.Tensor,
    rate: float,
    *,
    grad_clip: float | None = 1.0,
    aux_loss_coef: float = 0.0,
    loss_fn=None,
):
    """One optimizer step on the batch ``x``, ``y`` [B, T] at learning rate ``rate``; :func:`train` calls it.

    Sets every group's learning rate, zeroes the old gradients, computes the loss (plus ``aux_loss_coef`` times
    the routers' balancing loss for MoE models), back-propagates, clips the global gradient norm to
    ``grad_clip`` (``None``: no clipping) and steps the optimizer. Returns ``(loss, aux, grad_norm)``: the
    language-model loss (a tensor), the balancing loss (``None`` when not used) and the norm before clipping.
    ``loss_fn(model)`` replaces the model's loss on ``x``, ``y`` (:func:`train`'s hook; ``x``, ``y`` are unused then).
    """
    for group in opt.param_groups:
        group["lr"] = rate
    loss = model(x, y)[1] if loss_fn is None else loss_fn(model)
    aux = _moe_aux_loss(model) if aux_loss_coef > 0 else None
    total = loss if aux is None else loss + aux_loss_coef * aux
    opt.zero_grad(set_to_none=True)
    total.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip else float("inf"))
    opt.step()
    return loss, aux, norm


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Every setting of :func:`train`, checked once when the config is built (a bad field raises a ValueError or
    TypeError that names it), so a run never fails half-way on a typo.

    - ``steps``: the schedule's length and the most optimizer steps run;
    - optimizer: ``lr`` (peak), ``warmup`` steps, ``min_lr_ratio`` (the cosine ends at ``min_lr_ratio · lr``),
      ``weight_decay`` (matrices only), ``betas``, ``grad_clip`` (global norm; ``None``: no clipping);
    - batches: ``batch_size`` windows of ``block_size`` tokens, drawn from a generator seeded with ``seed``;
    - ``aux_loss_coef``: weight of the routers' load-balancing loss (MoE models, chapter 5);
    - evaluation: every ``eval_every`` steps (``None``: never) on ``eval_iters`` batches; early stopping after
      ``patience`` evaluations that did not lower the best validation loss by more than ``min_delta``;
      ``restore_best`` loads the weights of the best evaluation at the end;
    - display: ``progress`` (a tqdm bar) and its ``desc``.
    """

    steps: int
    lr: float = 3e-3
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    batch_size: int = 16
    block_size: int = 128
    seed: int = 0
    aux_loss_coef: float = 0.0
    eval_every: int | None = 50
    eval_iters: int = 10
    patience: int | None = None
    min_delta: float = 0.0
    restore_best: bool = False
    progress: bool = True
    desc: str = "training"

    def __post_init__(self):
        name = type(self).__name__
        for f in ("steps", "batch_size", "block_size", "eval_iters"):
            positive_int(f"{name}.{f}", getattr(self, f))
        for f in ("eval_every", "patience"):
            if getattr(self, f) is not None:
                positive_int(f"{name}.{f}", getattr(self, f))
        nonnegative_int(f"{name}.warmup", self.warmup)
        check_int(f"{name}.seed", self.seed)
        positive_float(f"{name}.lr", self.lr)  # finite: an infinite or NaN learning rate turns every weight into NaN
        check_number(f"{name}.min_lr_ratio", self.min_lr_ratio, 0, 1)
        for f in ("weight_decay", "aux_loss_coef", "min_delta"):
            nonnegative_float(f"{name}.{f}", getattr(self, f))
        if self.grad_clip is not None:
            positive_float(f"{name}.grad_clip", self.grad_clip)
        if not isinstance(self.betas, tuple) or len(self.betas) != 2:
            raise ArgumentTypeError(f"{name}.betas must be a tuple of two numbers in [0, 1), got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            check_number(f"{name}.betas[{i}]", beta, 0, 1, high_open=True)
        for f in ("restore_best", "progress"):
            if not isinstance(getattr(self, f), bool):
                raise ArgumentTypeError(f"{name}.{f} must be True or False, got {getattr(self, f)!r}")
        if not isinstance(self.desc, str):
            raise ArgumentTypeError(f"{name}.desc must be a string, got {self.desc!r}")
        if (self.patience is not None or self.restore_best) and self.eval_every is None:
            raise ValueError(f"{name}: early stopping (patience) and restore_best need evaluations: set eval_every")


@dataclass(frozen=True)
class TrainHooks:
    """:func:`train`'s hooks, for loops that are not next-token prediction on one token stream (all optional).

    - ``loss_fn(model, step)`` returns the step's training loss (it draws its own batch); default: the model's
      loss on ``data.get_batch("train", batch_size, block_size, generator)``;
    - ``eval_fn(model)`` returns a dict of numbers with at least ``"val_loss"``; default: :func:`evaluate` on
      ``eval_iters`` validation and training batches (``val_loss``, ``eval_train_loss``);
    - ``on_eval(history)`` after every evaluation, ``on_step(history)`` after every step: either returning True
      ends training after that step (the schedule still spans ``steps``).
    """

    loss_fn: Callable | None = None
    eval_fn: Callable | None = None
    on_eval: Callable | None = None
    on_step: Callable | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and not callable(value):
                raise ArgumentTypeError(f"TrainHooks.{f.name} must be a function or None, got {value!r}")


@dataclass(eq=False)
class History(Mapping):
    """What a run of :func:`train` (or :func:`course_utils.finetune.finetune`) recorded; read it by attribute or
    by key (``history.val_loss`` is ``history["val_loss"]``, the keys of the shipped chapter-5 results).

    - per step: ``step`` (1-based), ``train_loss`` (the batch's loss), ``lr``, ``tokens`` (seen so far; recorded
      only with the default batches, empty when ``TrainHooks.loss_fn`` draws them), ``time`` (seconds since the
      start), ``grad_norm`` (before clipping), ``aux_loss`` (MoE only, else 0);
    - per evaluation (at step 0, every ``eval_every`` steps and after the last): ``eval_step``, ``val_loss``,
      ``eval_train_loss`` (as many training batches, for the generalization gap), ``eval_time``, and under their
      own keys any other numbers an ``eval_fn`` returns (kept in ``metrics``);
    - ``stopped_step`` (the last step run), ``best_step`` / ``best_val_loss`` (the evaluation with the lowest
      validation loss; None without evaluations), ``trainable`` (parameters trained), ``cached`` (True when
      :func:`course_utils.finetune.cached_finetune` loaded the run instead of training); ``seconds`` (a property):
      the training's wall time.
    """

    step: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    time: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    aux_loss: list = field(default_factory=list)
    eval_step: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    eval_train_loss: list = field(default_factory=list)
    eval_time: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    stopped_step: int = 0
    best_step: int | None = None
    best_val_loss: float | None = None
    trainable: int = 0
    cached: bool = False

    def __getitem__(self, key: str):
        if key in self.metrics:
            return self.metrics[key]
        if key in _HISTORY_KEYS:
            return getattr(self, key)
        raise KeyError(f"{key!r}: a History holds {list(self)}")

    def __iter__(self) -> Iterator[str]:
        yield from _HISTORY_KEYS
        yield from self.metrics

    def __len__(self) -> int:
        return len(_HISTORY_KEYS) + len(self.metrics)

    @property
    def seconds(self) -> float:
        """Wall time of the training steps (evaluations included), 0 before the first step."""
        return self.time[-1] if self.time else 0.0

    def record_eval(self, metrics: Mapping) -> None:
        """Append one evaluation's numbers: the two losses to their fields, any other to ``metrics``."""
        if "val_loss" not in metrics:
            raise ValueError(f"eval_fn must return a dict with a 'val_loss', got keys {sorted(metrics)}")
        for name, value in metrics.items():
            if name in _HISTORY_KEYS and name not in ("val_loss", "eval_train_loss"):
                raise ValueError(f"eval_fn's metric {name!r} is a History field; give it another name")
            (getattr(self, name) if name in _HISTORY_KEYS else self.metrics.setdefault(name, [])).append(float(value))

    def to_dict(self) -> dict:
        """A plain dict (JSON-ready) with the same keys."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self.items()}

    @classmethod
    def from_dict(cls, record: Mapping) -> History:
        """The inverse of :meth:`to_dict`: unknown keys are evaluation metrics."""
        known = {k: v for k, v in record.items() if k in _HISTORY_KEYS}
        return cls(**known, metrics={k: v for k, v in record.items() if k not in _HISTORY_KEYS})


_HISTORY_KEYS = tuple(f.name for f in dataclasses.fields(History) if f.name != "metrics")


class _EvalWatch:
    """:func:`train`'s evaluations: record the metrics, track the best validation loss (and, with ``restore_best``,
    a copy of its weights), and say when to stop (the hook asks to, or ``patience`` evaluations did not improve)."""

    def __init__(self, model, history: History, eval_fn, t0: float, config: TrainConfig, on_eval):
        self.model, self.history, self.eval_fn, self.t0 = model, history, eval_fn, t0
        self.min_delta, self.restore_best, self.patience = config.min_delta, config.restore_best, config.patience
        self.on_eval = on_eval
        self.best_state, self.bad_evals = None, 0

    def __call__(self, step: int) -> bool:
        model, history = self.model, self.history
        history.eval_step.append(step)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = self.eval_fn(model)
        model.train(was_training)
        history.record_eval(metrics)
        history.eval_time.append(time.perf_counter() - self.t0)
        val = history.val_loss[-1]
        if history.best_val_loss is None or val < history.best_val_loss - self.min_delta:
            history.best_val_loss, history.best_step, self.bad_evals = val, step, 0
            if self.restore_best:  # a copy on the side: the live weights keep training
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_evals += 1
        stop = self.on_eval(history) if self.on_eval is not None else False
        return bool(stop) or (self.patience is not None and self.bad_evals >= self.patience)


def _check_inputs(model, data, config, hooks) -> None:
    """What a :class:`TrainConfig` cannot check alone: the data, the hooks and the model's window."""
    if not isinstance(config, TrainConfig):
        raise ArgumentTypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(hooks, TrainHooks):
        raise ArgumentTypeError(f"hooks must be a TrainHooks or None, got {type(hooks).__name__}")
    if hooks.loss_fn is None and not hasattr(data, "get_batch"):
        raise ArgumentTypeError(
            f"data must have get_batch(split, batch_size, block_size, generator) when no hooks.loss_fn is "
            f"given, got {type(data).__name__}"
        )
    if config.eval_every is not None and hooks.eval_fn is None and not hasattr(data, "get_batch"):
        raise ArgumentTypeError("evaluation needs data with get_batch or a hooks.eval_fn (or eval_every=None)")
    max_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    if hooks.loss_fn is None and max_len is not None and config.block_size > max_len:
        raise ValueError(f"block_size ({config.block_size}) exceeds the model's max_seq_len ({max_len})")


def train(model, data, config: TrainConfig, *, hooks: TrainHooks | None = None) -> History:
    """Train ``model`` on ``data`` (a :class:`course_utils.data.TokenDataset`, or anything with
    ``get_batch(split, batch_size, block_size, generator)``; None when ``hooks`` draw the batches) for at most
    ``config.steps`` optimizer steps; returns the :class:`History`.

    The one training loop of the course (chapters 3, 5, 7, 8 and the chapter-7 pretraining script): AdamW
    (:func:`configure_optimizer`), warm-up then cosine (:func:`lr_at`), clipping by global norm, evaluations and
    early stopping as ``config`` (:class:`TrainConfig`) says, ``hooks`` (:class:`TrainHooks`) for other losses,
    evaluations and callbacks. Batches are drawn from a generator seeded with ``config.seed``, so a seeded model
    trains the same way each run.
    """

    c, hooks = config, hooks or TrainHooks()
    _check_inputs(model, data, c, hooks)
    torch.manual_seed(c.seed)  # dropout
    gen = torch.Generator().manual_seed(c.seed)
    opt = configure_optimizer(model, lr=c.lr, weight_decay=c.weight_decay, betas=c.betas)
    history = History(trainable=sum(p.numel() for p in model.parameters() if p.requires_grad))
    ev = dict(iters=c.eval_iters, batch_size=c.batch_size, block_size=c.block_size)

    def default_loss(model, step):
        x, y = data.get_batch("train", c.batch_size, c.block_size, gen)
        return model(x, y)[1]

    def default_eval(model):
        return {"val_loss": evaluate(model, data, "val", **ev), "eval_train_loss": evaluate(model, data, "train", **ev)}

    t0 = time.perf_counter()
    model.train()
    watch = _EvalWatch(model, history, hooks.eval_fn or default_eval, t0, c, hooks.on_eval)
    stop = watch(0) if c.eval_every is not None else False
    step_loss, clip = hooks.loss_fn or default_loss, dict(grad_clip=c.grad_clip, aux_loss_coef=c.aux_loss_coef)
    bar = tqdm(range(c.steps), desc=c.desc, disable=not c.progress, unit="step")
    for step in bar:
        if stop:
            break
        rate = lr_at(step, lr=c.lr, warmup=c.warmup, steps=c.steps, min_lr_ratio=c.min_lr_ratio)
        loss, aux, norm = train_step(model, opt, None, None, rate, loss_fn=lambda m, s=step: step_loss(m, s), **clip)

        history.step.append(step + 1)
        history.train_loss.append(loss.item())
        history.lr.append(rate)
        if hooks.loss_fn is None:
            history.tokens.append((step + 1) * c.batch_size * c.block_size)
        history.time.append(time.perf_counter() - t0)
        history.grad_norm.append(float(norm))
        history.aux_loss.append(aux.item() if aux is not None else 0.0)
        history.stopped_step = step + 1
        if hooks.on_step is not None and hooks.on_step(history):
            stop = True
        if c.eval_every is not None and ((step + 1) % c.eval_every == 0 or step + 1 == c.steps or stop):
            stop = watch(step + 1) or stop
            bar.set_postfix(train=f"{history.train_loss[-1]:.3f}", val=f"{history.val_loss[-1]:.3f}")
    bar.close()
    if c.restore_best and watch.best_state is not None:
        model.load_state_dict(watch.best_state)
    model.eval()
    return history


class LiveLossPlot:
    """A training callback that redraws one figure (train and validation loss against step) after each evaluation.

    In Jupyter it updates the figure in place through an IPython display handle; elsewhere it just keeps the
    figure (``.fig``) up to date, so the same code runs in tests and scripts.
    """

    def __init__(
        self,
        title: str = "Training a tiny GPT on the course corpus",
        *,
        reference: dict | None = None,
        display: bool = True,
    ):
        import matplotlib.pyplot as plt  # noqa: PLC0415 — matplotlib (~1.5 s with pyplot) for a live plot only

        use_course_style()
        self.fig, self.ax = plt.subplots()
        plt.close(self.fig)  # shown through the display handle only, not again at the end of the cell
        self.title, self.reference, self.n_updates = title, reference or {}, 0
        self._label = label
        self._handle = None
        if display:
            try:
                from IPython.display import display as ipy_display  # noqa: PLC0415 — IPython (~0.7 s) only inside a notebook

                self._handle = ipy_display(self.fig, display_id=True)
            except ImportError:  # pragma: no cover - IPython ships with Jupyter
                self._handle = None

    def __call__(self, history: History) -> None:
        ax = self.ax
        ax.clear()
        if history["step"]:
            ax.plot(history["step"], history["train_loss"], alpha=0.35, label="train (batch)")
        ax.plot(history["eval_step"], history["eval_train_loss"], marker=".", label="train (eval)")
        ax.plot(history["eval_step"], history["val_loss"], marker="o", label="validation")
        for name, value in self.reference.items():
            ax.axhline(value, linestyle="--", color="grey", alpha=0.7)
            ax.annotate(name, (0, value), xytext=(4, 3), textcoords="offset points", fontsize=9, color="grey")
        self._label(ax, self.title, "optimizer step", "cross-entropy [nats/token]")
        ax.legend(loc="upper right")
        self.n_updates += 1
        if self._handle is not None:
            self._handle.update(self.fig)
