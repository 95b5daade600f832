"""The training loop: the loss goes down, the schedule has the advertised shape, the history is complete."""

import math

import pytest
import torch

from course_utils.data import corpus_dataset
from course_utils.model import GPT, GPTConfig
from course_utils.train import LiveLossPlot, configure_optimizer, evaluate, lr_at, train


def small_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=64))


def test_twenty_steps_lower_the_loss():
    ds = corpus_dataset()
    model = small_model()
    calls = []
    hist = train(
        model,
        ds,
        20,
        lr=1e-2,
        warmup=2,
        batch_size=8,
        block_size=32,
        eval_every=10,
        eval_iters=2,
        progress=False,
        callback=lambda h: calls.append(len(h["val_loss"])),
    )
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
            3,
            lr=1e-2,
            warmup=1,
            batch_size=4,
            block_size=16,
            eval_every=3,
            eval_iters=1,
            progress=False,
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
    with pytest.raises(ValueError, match="steps"):
        train(model, ds, 0, progress=False)
    with pytest.raises(ValueError, match="block_size"):
        train(model, ds, 1, block_size=65, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(model, ds, 1, lr=0.0, progress=False)


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
    kw = dict(lr=1e-2, warmup=1, batch_size=4, block_size=16, eval_every=2, eval_iters=1, progress=False)
    with_aux = train(moe, ds, 2, aux_loss_coef=0.01, **kw)
    assert all(a > 0.5 for a in with_aux["aux_loss"])  # Switch's loss is ~1 when balanced (times top_k here)
    without = train(small_model(), ds, 2, **kw)
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

    hist = train(
        model,
        ds,
        50,
        lr=1e-2,
        warmup=1,
        batch_size=4,
        block_size=16,
        eval_every=2,
        progress=False,
        eval_fn=eval_fn,
        patience=3,
        restore_best=True,
    )
    assert hist["eval_step"] == [0, 2, 4, 6, 8, 10] and hist["stopped_step"] == 10 and len(hist["step"]) == 10
    assert hist["best_step"] == 4 and hist["best_val_loss"] == 3.0 and hist["extra"] == [1.0] * 6
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

    hist = train(
        model,
        ds,
        50,
        lr=1e-2,
        warmup=1,
        batch_size=4,
        block_size=16,
        eval_every=3,
        progress=False,
        eval_fn=eval_fn,
        patience=2,
    )
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

    hist = train(
        model,
        None,
        40,
        lr=5e-2,
        warmup=0,
        eval_every=None,
        progress=False,
        loss_fn=loss_fn,
        weight_decay=0.0,
        step_callback=lambda h: h["step"][-1] == 25,
    )  # True ends training
    assert seen == list(range(25)) and hist["stopped_step"] == 25 and hist["eval_step"] == []
    assert hist["train_loss"][-1] < hist["train_loss"][0] and hist["best_step"] is None


def test_hooks_reject_bad_arguments():
    ds, model = corpus_dataset(), small_model()
    with pytest.raises(ValueError, match="patience"):
        train(model, ds, 2, patience=0, progress=False)
    with pytest.raises(ValueError, match="eval_every"):
        train(model, ds, 2, patience=2, eval_every=None, progress=False)
    with pytest.raises(ValueError, match="val_loss"):
        train(model, ds, 2, eval_fn=lambda m: {"loss": 1.0}, batch_size=2, block_size=8, progress=False)
    with pytest.raises(TypeError, match="get_batch"):
        train(model, None, 2, progress=False)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), 0.0, -1e-3])
def test_train_rejects_a_learning_rate_that_is_not_finite_and_positive(lr):
    with pytest.raises(ValueError, match="lr"):
        train(torch.nn.Linear(2, 2), None, 1, lr=lr, loss_fn=lambda m, step: m.weight.sum(), eval_every=None)
