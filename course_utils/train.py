"""Chapter 3: the training loop, small enough to read in one sitting.

- AdamW (Loshchilov & Hutter, 2019) with weight decay on matrices only (not on norms' gains);
- a learning-rate schedule of linear warm-up then cosine decay to ``min_lr_ratio · lr`` (as in GPT-3 / Llama);
- gradient clipping by global norm;
- periodic evaluation on held-out batches, a ``tqdm.auto`` progress bar and an optional callback (e.g.
  :class:`LiveLossPlot`, which redraws a matplotlib figure in a notebook after every evaluation);
- hooks for the other loops of the course (chapter 7's fine-tuning and base-model pretraining): a loss function,
  an evaluation function, a per-step callback, early stopping with patience and restoring the best weights.

For Mixture-of-Experts models (chapter 5) ``aux_loss_coef`` adds the mean over layers of the routers'
load-balancing loss (``model.last_moe_aux``) to the training loss.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from .plotting import label, use_course_style
from .validate import nonnegative_float, nonnegative_int, positive_float, positive_int

__all__ = ["lr_at", "configure_optimizer", "evaluate", "train_step", "train", "LiveLossPlot"]


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


_HISTORY_KEYS = (
    "step",
    "train_loss",
    "lr",
    "tokens",
    "time",
    "grad_norm",
    "aux_loss",
    "eval_step",
    "val_loss",
    "eval_train_loss",
    "eval_time",
)


def _check_train_args(
    model,
    data,
    steps,
    batch_size,
    block_size,
    eval_every,
    eval_iters,
    warmup,
    lr,
    grad_clip,
    aux_loss_coef,
    patience,
    restore_best,
    min_delta,
    loss_fn,
    eval_fn,
) -> None:
    """:func:`train`'s argument checks: a ValueError/TypeError naming the argument before any step runs."""
    for name, value in (
        ("steps", steps),
        ("batch_size", batch_size),
        ("block_size", block_size),
        ("eval_iters", eval_iters),
    ):
        positive_int(name, value)
    if eval_every is not None:
        positive_int("eval_every", eval_every)
    nonnegative_int("warmup", warmup)
    positive_float("lr", lr)  # finite: an infinite or NaN learning rate turns every weight into NaN
    if grad_clip is not None:
        positive_float("grad_clip", grad_clip)
    nonnegative_float("aux_loss_coef", aux_loss_coef)
    if patience is not None:
        positive_int("patience", patience)
    if (patience is not None or restore_best) and eval_every is None:
        raise ValueError("early stopping (patience) and restore_best need evaluations: set eval_every")
    nonnegative_float("min_delta", min_delta)
    if loss_fn is None and not hasattr(data, "get_batch"):
        raise TypeError(
            f"data must have get_batch(split, batch_size, block_size, generator) when no loss_fn is "
            f"given, got {type(data).__name__}"
        )
    if eval_every is not None and eval_fn is None and not hasattr(data, "get_batch"):
        raise TypeError("evaluation needs data with get_batch or an eval_fn (or eval_every=None)")
    max_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    if loss_fn is None and max_len is not None and block_size > max_len:
        raise ValueError(f"block_size ({block_size}) exceeds the model's max_seq_len ({max_len})")


class _EvalWatch:
    """:func:`train`'s evaluations: record the metrics, track the best validation loss (and, with ``restore_best``,
    a copy of its weights), and say when to stop (the callback asks to, or ``patience`` evaluations did not improve)."""

    def __init__(self, model, history, eval_fn, t0, min_delta, restore_best, patience, callback):
        self.model, self.history, self.eval_fn, self.t0 = model, history, eval_fn, t0
        self.min_delta, self.restore_best, self.patience, self.callback = min_delta, restore_best, patience, callback
        self.best_state, self.bad_evals = None, 0

    def __call__(self, step: int) -> bool:
        model, history = self.model, self.history
        history["eval_step"].append(step)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = self.eval_fn(model)
        model.train(was_training)
        if "val_loss" not in metrics:
            raise ValueError(f"eval_fn must return a dict with a 'val_loss', got keys {sorted(metrics)}")
        for name, value in metrics.items():
            history.setdefault(name, []).append(float(value))
        history["eval_time"].append(time.perf_counter() - self.t0)
        val = history["val_loss"][-1]
        if history["best_val_loss"] is None or val < history["best_val_loss"] - self.min_delta:
            history["best_val_loss"], history["best_step"], self.bad_evals = val, step, 0
            if self.restore_best:  # a copy on the side: the live weights keep training
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_evals += 1
        stop = self.callback(history) if self.callback is not None else False
        return bool(stop) or (self.patience is not None and self.bad_evals >= self.patience)


def train(
    model,
    data,
    steps: int,
    *,
    lr: float = 3e-3,
    warmup: int = 20,
    batch_size: int = 16,
    block_size: int = 128,
    eval_every: int | None = 50,
    eval_iters: int = 10,
    grad_clip: float | None = 1.0,
    weight_decay: float = 0.1,
    seed: int = 0,
    aux_loss_coef: float = 0.0,
    min_lr_ratio: float = 0.1,
    callback=None,
    progress: bool = True,
    loss_fn=None,
    eval_fn=None,
    step_callback=None,
    patience: int | None = None,
    min_delta: float = 0.0,
    restore_best: bool = False,
    betas: tuple[float, float] = (0.9, 0.95),
    desc: str = "training",
) -> dict:
    """Train ``model`` on ``data`` (a :class:`course_utils.data.TokenDataset`) for at most ``steps`` optimizer steps.

    The one training loop of the course (chapters 3, 5, 7, 8 and the chapter-7 pretraining script): AdamW
    (:func:`configure_optimizer`), warm-up then cosine (:func:`lr_at`), clipping by global norm. Returns the
    history, a dict of lists:

    - per step: ``step``, ``train_loss`` (the batch's loss), ``lr``, ``tokens`` (seen so far, with the default
      batches), ``time`` (seconds since the start), ``grad_norm`` (before clipping), ``aux_loss`` (MoE only, else 0);
    - per evaluation (at step 0, every ``eval_every`` steps and after the last): ``eval_step``, ``val_loss``,
      ``eval_train_loss`` (the same number of training batches, for the generalization gap), ``eval_time``;
    - ``stopped_step`` (the last step run), ``best_step`` / ``best_val_loss`` (the evaluation with the lowest
      validation loss; None without evaluations).

    Hooks, for loops that are not next-token prediction on one token stream:

    - ``loss_fn(model, step)`` returns the step's training loss (it draws its own batch); default: the model's
      loss on ``data.get_batch("train", batch_size, block_size, generator)`` (``data`` may then be None);
    - ``eval_fn(model)`` returns a dict of numbers with at least ``"val_loss"``, each appended to the history under
      its name; default: :func:`evaluate` on ``eval_iters`` validation and training batches of ``data``.
      ``eval_every=None`` turns periodic evaluation off;
    - ``callback(history)`` is called after every evaluation, ``step_callback(history)`` after every step; either
      returning True ends training after that step (the schedule still spans ``steps``);
    - early stopping: with ``patience``, training stops once ``patience`` evaluations in a row failed to lower the
      best validation loss by more than ``min_delta``; ``restore_best`` then loads the weights of the best evaluation.

    Batches are drawn from a generator seeded with ``seed``, so a seeded model trains the same way each run.
    """

    _check_train_args(
        model,
        data,
        steps,
        batch_size,
        block_size,
        eval_every,
        eval_iters,
        warmup,
        lr,
        grad_clip,
        aux_loss_coef,
        patience,
        restore_best,
        min_delta,
        loss_fn,
        eval_fn,
    )
    torch.manual_seed(seed)  # dropout
    gen = torch.Generator().manual_seed(seed)
    opt = configure_optimizer(model, lr=lr, weight_decay=weight_decay, betas=betas)
    history: dict = {k: [] for k in _HISTORY_KEYS}
    history.update(stopped_step=0, best_step=None, best_val_loss=None)
    ev = dict(iters=eval_iters, batch_size=batch_size, block_size=block_size)

    def default_loss(model, step):
        x, y = data.get_batch("train", batch_size, block_size, gen)
        return model(x, y)[1]

    def default_eval(model):
        return {"val_loss": evaluate(model, data, "val", **ev), "eval_train_loss": evaluate(model, data, "train", **ev)}

    t0 = time.perf_counter()
    model.train()
    watch = _EvalWatch(model, history, eval_fn or default_eval, t0, min_delta, restore_best, patience, callback)
    stop = watch(0) if eval_every is not None else False
    step_loss, clip = loss_fn or default_loss, dict(grad_clip=grad_clip, aux_loss_coef=aux_loss_coef)
    bar = tqdm(range(steps), desc=desc, disable=not progress, unit="step")
    for step in bar:
        if stop:
            break
        rate = lr_at(step, lr=lr, warmup=warmup, steps=steps, min_lr_ratio=min_lr_ratio)
        loss, aux, norm = train_step(model, opt, None, None, rate, loss_fn=lambda m, s=step: step_loss(m, s), **clip)

        history["step"].append(step + 1)
        history["train_loss"].append(loss.item())
        history["lr"].append(rate)
        history["tokens"].append((step + 1) * batch_size * block_size)
        history["time"].append(time.perf_counter() - t0)
        history["grad_norm"].append(float(norm))
        history["aux_loss"].append(aux.item() if aux is not None else 0.0)
        history["stopped_step"] = step + 1
        if step_callback is not None and step_callback(history):
            stop = True
        if eval_every is not None and ((step + 1) % eval_every == 0 or step + 1 == steps or stop):
            stop = watch(step + 1) or stop
            bar.set_postfix(train=f"{history['train_loss'][-1]:.3f}", val=f"{history['val_loss'][-1]:.3f}")
    bar.close()
    if restore_best and watch.best_state is not None:
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

    def __call__(self, history: dict) -> None:
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
