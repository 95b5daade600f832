"""The training loop: the loss goes down, the schedule has the advertised shape, the history is complete; its
config is checked when built, and the loop is the one the course has always run (the same losses, step by step)."""

import dataclasses
import inspect
import json
import math

import pytest
import torch

from course_utils.data import corpus_dataset
from course_utils.model import GPT, GPTConfig
from course_utils.train import (
    History,
    LiveLossPlot,
    TrainConfig,
    TrainHooks,
    configure_optimizer,
    evaluate,
    lr_at,
    train,
    train_step,
)


def small_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=64))


def test_twenty_steps_lower_the_loss():
    ds = corpus_dataset()
    model = small_model()
    calls = []
    config = TrainConfig(
        steps=20, lr=1e-2, warmup=2, batch_size=8, block_size=32, eval_every=10, eval_iters=2, progress=False
    )
    hist = train(model, ds, config, hooks=TrainHooks(on_eval=lambda h: calls.append(len(h["val_loss"]))))
    assert isinstance(hist, History) and hist.trainable == sum(p.numel() for p in model.parameters())
    assert hist["step"] == list(range(1, 21)) and len(hist["train_loss"]) == len(hist["lr"]) == 20
    assert hist["eval_step"] == [0, 10, 20] and calls == [1, 2, 3]
    assert hist["tokens"][-1] == 20 * 8 * 32 and hist["time"] == sorted(hist["time"])
    assert abs(hist["val_loss"][0] - math.log(512)) < 0.2  # starts near uniform over the vocabulary
    assert hist["val_loss"][-1] < hist["val_loss"][0] - 0.5
    assert sum(hist["train_loss"][-5:]) / 5 < sum(hist["train_loss"][:5]) / 5 - 0.5
    assert all(n > 0 for n in hist["grad_norm"]) and model.training is False


def test_training_is_reproducible():
    ds = corpus_dataset()
    runs = [
        train(
            small_model(),
            ds,
            TrainConfig(steps=3, lr=1e-2, warmup=1, batch_size=4, block_size=16, eval_every=3, progress=False),
        )
        for _ in range(2)
    ]
    assert runs[0]["train_loss"] == runs[1]["train_loss"]


def test_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, lr=1.0, warmup=10, steps=100, min_lr_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))  # linear ramp up
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then monotone cosine down
    assert lrs[-1] == pytest.approx(0.1) and lrs[55] == pytest.approx(0.55, abs=0.02)  # half-way: the midpoint


def test_weight_decay_skips_norm_gains():
    model = small_model()
    decay, no_decay = configure_optimizer(model, lr=1e-3, weight_decay=0.1).param_groups
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 2 * 2 + 1


def test_evaluate_is_deterministic():
    ds, model = corpus_dataset(), small_model()
    a = evaluate(model, ds, "val", 2, batch_size=4, block_size=16)
    assert a == evaluate(model, ds, "val", 2, batch_size=4, block_size=16) and a > 0


def test_live_plot_updates_a_labelled_figure():
    plot = LiveLossPlot(reference={"unigram": 5.0}, display=False)
    hist = {
        "step": [1, 2],
        "train_loss": [6.0, 5.5],
        "eval_step": [0, 2],
        "val_loss": [6.2, 5.6],
        "eval_train_loss": [6.2, 5.5],
    }
    plot(hist)
    plot(hist)
    ax = plot.fig.axes[0]
    assert plot.n_updates == 2 and len(ax.lines) == 4  # three curves and the reference line, not duplicated
    assert ax.get_title() and "nats" in ax.get_ylabel() and ax.get_xlabel()


def test_train_rejects_bad_arguments():
    ds, model = corpus_dataset(), small_model()
    with pytest.raises(ValueError, match="block_size"):
        train(model, ds, TrainConfig(steps=1, block_size=65, progress=False))
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        train(model, ds, {"steps": 1})
    with pytest.raises(TypeError, match="hooks must be a TrainHooks"):
        train(model, ds, TrainConfig(steps=1), hooks=lambda h: None)
    with pytest.raises(TypeError, match="TrainHooks.on_step"):
        TrainHooks(on_step="print")


def test_moe_aux_loss_is_added_and_recorded():
    ds = corpus_dataset()
    torch.manual_seed(0)
    moe = GPT(
        GPTConfig(
            vocab_size=512,
            d_model=32,
            n_layers=2,
            n_heads=2,
            max_seq_len=64,
            ffn="moe",
            moe=dict(num_experts=4, top_k=2),
        )
    )
    config = TrainConfig(
        steps=2, lr=1e-2, warmup=1, batch_size=4, block_size=16, eval_every=2, eval_iters=1, progress=False
    )
    with_aux = train(moe, ds, dataclasses.replace(config, aux_loss_coef=0.01))
    assert all(a > 0.5 for a in with_aux["aux_loss"])  # Switch's loss is ~1 when balanced (times top_k here)
    without = train(small_model(), ds, config)
    assert without["aux_loss"] == [0.0, 0.0]


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    ds, model = corpus_dataset(), small_model()
    scripted = iter([5.0, 4.0, 3.0, 3.5, 3.2, 9.0, 1.0])  # best at the 3rd evaluation (step 4), then 3 worse ones
    snapshots = []

    def eval_fn(m):
        snapshots.append(_snapshot(m))
        return {"val_loss": next(scripted), "extra": 1.0}

    config = TrainConfig(
        steps=50, lr=1e-2, warmup=1, batch_size=4, block_size=16, eval_every=2, patience=3, restore_best=True
    )
    hist = train(model, ds, dataclasses.replace(config, progress=False), hooks=TrainHooks(eval_fn=eval_fn))
    assert hist["eval_step"] == [0, 2, 4, 6, 8, 10] and hist["stopped_step"] == 10 and len(hist["step"]) == 10
    assert hist["best_step"] == 4 and hist["best_val_loss"] == 3.0 and hist["extra"] == [1.0] * 6
    assert hist.metrics == {"extra": [1.0] * 6} and "extra" in hist and hist.eval_train_loss == []
    best = snapshots[2]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, snapshots[-1][k]) for k, v in model.state_dict().items())  # it did train on


def test_without_restore_best_the_last_weights_stay():
    ds, model = corpus_dataset(), small_model()
    scripted = iter([1.0, 2.0, 3.0])
    snapshots = []

    def eval_fn(m):
        snapshots.append(_snapshot(m))
        return {"val_loss": next(scripted)}

    config = TrainConfig(steps=50, lr=1e-2, warmup=1, batch_size=4, block_size=16, eval_every=3, patience=2)
    hist = train(model, ds, dataclasses.replace(config, progress=False), hooks=TrainHooks(eval_fn=eval_fn))
    assert hist["stopped_step"] == 6 and hist["best_step"] == 0
    assert all(torch.equal(v, snapshots[-1][k]) for k, v in model.state_dict().items())


def test_loss_fn_and_step_callback_hooks():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    seen = []

    def loss_fn(m, step):
        seen.append(step)
        return torch.nn.functional.mse_loss(m(x), y)

    config = TrainConfig(steps=40, lr=5e-2, warmup=0, eval_every=None, progress=False, weight_decay=0.0)
    hooks = TrainHooks(loss_fn=loss_fn, on_step=lambda h: h["step"][-1] == 25)  # True ends training
    hist = train(model, None, config, hooks=hooks)
    assert seen == list(range(25)) and hist["stopped_step"] == 25 and hist["eval_step"] == []
    assert hist.tokens == []  # the hook drew the batches: no token count to report
    assert hist["train_loss"][-1] < hist["train_loss"][0] and hist["best_step"] is None


def test_hooks_reject_bad_arguments():
    ds, model = corpus_dataset(), small_model()
    config = TrainConfig(steps=2, batch_size=2, block_size=8, progress=False)
    with pytest.raises(ValueError, match="val_loss"):
        train(model, ds, config, hooks=TrainHooks(eval_fn=lambda m: {"loss": 1.0}))
    with pytest.raises(ValueError, match="'step' is a History field"):
        train(model, ds, config, hooks=TrainHooks(eval_fn=lambda m: {"val_loss": 1.0, "step": 2}))
    with pytest.raises(TypeError, match="get_batch"):
        train(model, None, config)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), 0.0, -1e-3])
def test_train_rejects_a_learning_rate_that_is_not_finite_and_positive(lr):
    with pytest.raises(ValueError, match="TrainConfig.lr"):
        TrainConfig(steps=1, lr=lr)


@pytest.mark.parametrize(
    "field, value",
    [
        ("steps", 0),
        ("steps", 2.0),
        ("warmup", -1),
        ("min_lr_ratio", 1.5),
        ("weight_decay", -0.1),
        ("betas", (0.9,)),
        ("betas", (0.9, 1.0)),
        ("grad_clip", 0.0),
        ("batch_size", True),
        ("block_size", 0),
        ("seed", "0"),
        ("aux_loss_coef", float("nan")),
        ("eval_every", 0),
        ("eval_iters", 0),
        ("patience", 0),
        ("min_delta", -1.0),
        ("restore_best", 1),
        ("progress", None),
        ("desc", 3),
    ],
)
def test_config_names_the_bad_field(field, value):
    with pytest.raises((ValueError, TypeError), match=rf"TrainConfig\.{field}"):
        TrainConfig(**{"steps": 10, field: value})


def test_config_is_checked_as_a_whole_and_frozen():
    with pytest.raises(ValueError, match="need evaluations: set eval_every"):
        TrainConfig(steps=2, patience=2, eval_every=None)
    with pytest.raises(ValueError, match="eval_every"):
        TrainConfig(steps=2, restore_best=True, eval_every=None)
    config = TrainConfig(steps=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    with pytest.raises(ValueError, match="TrainConfig.lr"):  # a changed copy is checked again
        dataclasses.replace(config, lr=-1.0)
    assert len(inspect.signature(train).parameters) <= 6


def test_train_runs_the_loop_it_always_ran():
    # the same steps written out by hand (the loop before TrainConfig): AdamW groups, warm-up + cosine, clipping,
    # batches from a generator seeded with the config's seed; every loss and gradient norm equal, bit for bit
    ds = corpus_dataset()
    config = TrainConfig(steps=6, lr=1e-2, warmup=2, batch_size=4, block_size=16, eval_every=None, progress=False)
    hist = train(small_model(), ds, config)
    model = small_model()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    opt = configure_optimizer(model, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas)
    losses, norms = [], []
    model.train()
    for step in range(config.steps):
        rate = lr_at(step, lr=config.lr, warmup=config.warmup, steps=config.steps, min_lr_ratio=config.min_lr_ratio)
        x, y = ds.get_batch("train", config.batch_size, config.block_size, gen)
        loss, _, norm = train_step(model, opt, x, y, rate, grad_clip=config.grad_clip)
        losses.append(loss.item())
        norms.append(float(norm))
    assert hist["train_loss"] == losses and hist["grad_norm"] == norms
    another = dataclasses.replace(config, seed=1)  # the seed is read: another seed, other batches
    assert train(small_model(), ds, another)["train_loss"] != losses


def test_history_reads_by_key_and_round_trips_through_json():
    hist = History(step=[1, 2], train_loss=[3.0, 2.5], time=[0.1, 0.2], eval_step=[2], val_loss=[2.4])
    hist.metrics["val_acc"] = [0.5]
    assert hist["train_loss"] is hist.train_loss and hist["val_acc"] == [0.5] and hist.seconds == 0.2
    assert set(hist) >= {"step", "train_loss", "val_loss", "stopped_step", "best_step", "trainable", "val_acc"}
    with pytest.raises(KeyError, match="loss"):
        hist["loss"]  # one naming: the batch losses are train_loss, in train and finetune alike
    again = History.from_dict(json.loads(json.dumps(hist.to_dict())))
    assert again == hist and again.metrics == {"val_acc": [0.5]} and History().seconds == 0.0
