"""Chapter 3: the training loop, small enough to read in one sitting.

- AdamW (Loshchilov & Hutter, 2019) with weight decay on matrices only (not on norms' gains);
- a learning-rate schedule of linear warm-up then cosine decay to ``min_lr_ratio · lr`` (as in GPT-3 / Llama);
- gradient clipping by global norm;
- periodic evaluation on held-out batches, a ``tqdm.auto`` progress bar and an optional callback (e.g.
  :class:`LiveLossPlot`, which redraws a matplotlib figure in a notebook after every evaluation).

For Mixture-of-Experts models (chapter 5) ``aux_loss_coef`` adds the mean over layers of the routers'
load-balancing loss (``model.last_moe_aux``) to the training loss.
"""
from __future__ import annotations

import math
import time

import torch

__all__ = ["lr_at", "configure_optimizer", "evaluate", "train_step", "train", "LiveLossPlot"]


def lr_at(step: int, *, lr: float, warmup: int, steps: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up over ``warmup`` steps, then cosine decay to ``min_lr_ratio·lr``."""
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
def evaluate(model, data, split: str = "val", iters: int = 20, *, batch_size: int = 16, block_size: int = 128,
             seed: int = 1234) -> float:
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


def train_step(model, opt, x: torch.Tensor, y: torch.Tensor, rate: float, *, grad_clip: float | None = 1.0,
               aux_loss_coef: float = 0.0):
    """One optimizer step on the batch ``x``, ``y`` [B, T] at learning rate ``rate``; :func:`train` calls it.

    Sets every group's learning rate, zeroes the old gradients, computes the loss (plus ``aux_loss_coef`` times
    the routers' balancing loss for MoE models), back-propagates, clips the global gradient norm to
    ``grad_clip`` (``None``: no clipping) and steps the optimizer. Returns ``(loss, aux, grad_norm)``: the
    language-model loss (a tensor), the balancing loss (``None`` when not used) and the norm before clipping.
    """
    for group in opt.param_groups:
        group["lr"] = rate
    _, loss = model(x, y)
    aux = _moe_aux_loss(model) if aux_loss_coef > 0 else None
    total = loss if aux is None else loss + aux_loss_coef * aux
    opt.zero_grad(set_to_none=True)
    total.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip else float("inf"))
    opt.step()
    return loss, aux, norm


def train(model, data, steps: int, *, lr: float = 3e-3, warmup: int = 20, batch_size: int = 16,
          block_size: int = 128, eval_every: int = 50, eval_iters: int = 10, grad_clip: float | None = 1.0,
          weight_decay: float = 0.1, seed: int = 0, aux_loss_coef: float = 0.0, min_lr_ratio: float = 0.1,
          callback=None, progress: bool = True) -> dict:
    """Train ``model`` on ``data`` (a :class:`course_utils.data.TokenDataset`) for ``steps`` optimizer steps.

    Returns the history, a dict of lists:

    - per step: ``step``, ``train_loss`` (the batch's language-model loss), ``lr``, ``tokens`` (seen so far),
      ``time`` (seconds since the start), ``grad_norm`` (before clipping), ``aux_loss`` (MoE only, else 0);
    - per evaluation (at step 0, every ``eval_every`` steps and after the last): ``eval_step``, ``val_loss``,
      ``eval_train_loss`` (the same number of training batches, for the generalization gap), ``eval_time``.

    ``callback(history)`` is called after every evaluation. Batches are drawn from a generator seeded with
    ``seed``, so a seeded model trains the same way each run.
    """
    from tqdm.auto import tqdm

    for name, value in (("steps", steps), ("batch_size", batch_size), ("block_size", block_size),
                        ("eval_every", eval_every), ("eval_iters", eval_iters)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be None or > 0, got {grad_clip!r}")
    if aux_loss_coef < 0:
        raise ValueError(f"aux_loss_coef must be >= 0, got {aux_loss_coef!r}")
    max_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    if max_len is not None and block_size > max_len:
        raise ValueError(f"block_size ({block_size}) exceeds the model's max_seq_len ({max_len})")

    torch.manual_seed(seed)  # dropout
    gen = torch.Generator().manual_seed(seed)
    opt = configure_optimizer(model, lr=lr, weight_decay=weight_decay)
    keys = ("step", "train_loss", "lr", "tokens", "time", "grad_norm", "aux_loss",
            "eval_step", "val_loss", "eval_train_loss", "eval_time")
    history: dict = {k: [] for k in keys}
    ev = dict(iters=eval_iters, batch_size=batch_size, block_size=block_size)

    def run_eval(step: int) -> None:
        history["eval_step"].append(step)
        history["val_loss"].append(evaluate(model, data, "val", **ev))
        history["eval_train_loss"].append(evaluate(model, data, "train", **ev))
        history["eval_time"].append(time.perf_counter() - t0)
        if callback is not None:
            callback(history)

    t0 = time.perf_counter()
    model.train()
    run_eval(0)
    bar = tqdm(range(steps), desc="training", disable=not progress, unit="step")
    for step in bar:
        rate = lr_at(step, lr=lr, warmup=warmup, steps=steps, min_lr_ratio=min_lr_ratio)
        x, y = data.get_batch("train", batch_size, block_size, gen)
        loss, aux, norm = train_step(model, opt, x, y, rate, grad_clip=grad_clip, aux_loss_coef=aux_loss_coef)

        history["step"].append(step + 1)
        history["train_loss"].append(loss.item())
        history["lr"].append(rate)
        history["tokens"].append((step + 1) * batch_size * block_size)
        history["time"].append(time.perf_counter() - t0)
        history["grad_norm"].append(float(norm))
        history["aux_loss"].append(aux.item() if aux is not None else 0.0)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            run_eval(step + 1)
            bar.set_postfix(train=f"{history['train_loss'][-1]:.3f}", val=f"{history['val_loss'][-1]:.3f}")
    bar.close()
    model.eval()
    return history


class LiveLossPlot:
    """A training callback that redraws one figure (train and validation loss against step) after each evaluation.

    In Jupyter it updates the figure in place through an IPython display handle; elsewhere it just keeps the
    figure (``.fig``) up to date, so the same code runs in tests and scripts.
    """

    def __init__(self, title: str = "Training a tiny GPT on the course corpus", *, reference: dict | None = None,
                 display: bool = True):
        import matplotlib.pyplot as plt

        from .plotting import label, use_course_style

        use_course_style()
        self.fig, self.ax = plt.subplots()
        plt.close(self.fig)  # shown through the display handle only, not again at the end of the cell
        self.title, self.reference, self.n_updates = title, reference or {}, 0
        self._label = label
        self._handle = None
        if display:
            try:
                from IPython.display import display as ipy_display

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
        for i, (name, value) in enumerate(self.reference.items()):
            ax.axhline(value, linestyle="--", color="grey", alpha=0.7)
            ax.annotate(name, (0, value), xytext=(4, 3), textcoords="offset points", fontsize=9, color="grey")
        self._label(ax, self.title, "optimizer step", "cross-entropy [nats/token]")
        ax.legend(loc="upper right")
        self.n_updates += 1
        if self._handle is not None:
            self._handle.update(self.fig)
