"""Chapter-3 lab checks accept the reference and reject plausible wrong implementations."""

import contextlib
import functools
import io
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_check_accepts, assert_check_rejects

from course_utils.attention import apply_rope as ref_apply_rope
from course_utils.attention import rope_frequencies
from course_utils.checks import (
    check_apply_rope,
    check_kv_cache_step,
    check_rms_norm,
    check_sample_next_token,
    check_swiglu,
)
from course_utils.model import kv_cache_step, rms_norm, sample_next_token, swiglu


@pytest.fixture(autouse=True)
def one_thread():
    """One thread, as in the labs: these small tensors and short trainings run many times slower with two threads
    on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------- rms_norm
def test_rms_norm_check_accepts_a_right_answer(capsys):
    assert_check_accepts(check_rms_norm, rms_norm, capsys)


def test_rms_norm_check():

    def layer_norm_instead(x, weight, eps=1e-6):  # subtracts the mean: that is LayerNorm, not RMSNorm
        return F.layer_norm(x, x.shape[-1:], weight, eps=eps)

    def eps_outside_sqrt(x, weight, eps=1e-6):
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * weight

    assert_check_rejects(check_rms_norm, layer_norm_instead, match="subtracts no mean")
    assert_check_rejects(check_rms_norm, eps_outside_sqrt, match="values differ")


# ----------------------------------------------------------------------------------------------- RoPE
def _rope_ref(x, offset=0, base=10000.0):
    cos, sin = rope_frequencies(x.shape[-1], offset + x.shape[-2], base)
    return ref_apply_rope(x, cos, sin, offset)


def test_apply_rope_check_accepts_a_right_answer(capsys):
    assert_check_accepts(check_apply_rope, _rope_ref, capsys)


def test_apply_rope_check():

    def adjacent_pairs(x, offset=0, base=10000.0):  # GPT-J / original-paper layout: pairs (0,1), (2,3), ...
        d, T = x.shape[-1], x.shape[-2]
        theta = base ** (-torch.arange(0, d, 2).float() / d)
        ang = torch.arange(offset, offset + T).float()[:, None] * theta
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack([x1 * ang.cos() - x2 * ang.sin(), x1 * ang.sin() + x2 * ang.cos()], -1)
        return out.flatten(-2)

    def ignores_offset(x, offset=0, base=10000.0):
        return _rope_ref(x, 0, base)

    assert_check_rejects(check_apply_rope, adjacent_pairs, match="rotate half")
    assert_check_rejects(check_apply_rope, ignores_offset, match="offset=7")


# ----------------------------------------------------------------------------------------------- SwiGLU
def test_swiglu_check_accepts_a_right_answer(capsys):
    assert_check_accepts(check_swiglu, swiglu, capsys)


def test_swiglu_check():

    def gate_on_wrong_branch(x, w1, w3, w2):
        return F.linear(F.silu(F.linear(x, w3)) * F.linear(x, w1), w2)

    def gelu_instead_of_silu(x, w1, w3, w2):
        return F.linear(F.gelu(F.linear(x, w1)) * F.linear(x, w3), w2)

    assert_check_rejects(check_swiglu, gate_on_wrong_branch, match="gate w1 goes through SiLU")
    assert_check_rejects(check_swiglu, gelu_instead_of_silu, match="values differ")


# ----------------------------------------------------------------------------------------------- KV cache
def test_kv_cache_step_check_accepts_a_right_answer(capsys):
    assert_check_accepts(check_kv_cache_step, kv_cache_step, capsys)


def test_kv_cache_step_check():

    def unshifted_causal_mask(q, k_new, v_new, k_cache=None, v_cache=None):
        # top-left aligned triangle: a single new query sees only the *first* cached key
        k = k_new if k_cache is None else torch.cat([k_cache, k_new], 2)
        v = v_new if v_cache is None else torch.cat([v_cache, v_new], 2)
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), k, v

    def forgets_the_cache(q, k_new, v_new, k_cache=None, v_cache=None):
        return F.scaled_dot_product_attention(q, k_new, v_new, is_causal=True), k_new, v_new

    def no_scaling(q, k_new, v_new, k_cache=None, v_cache=None):
        out, k, v = kv_cache_step(q * math.sqrt(q.shape[-1]), k_new, v_new, k_cache, v_cache)
        return out, k, v

    assert_check_rejects(check_kv_cache_step, unshifted_causal_mask, match="shifted by the cache length")
    assert_check_rejects(check_kv_cache_step, forgets_the_cache, match="k_cache: expected shape")
    assert_check_rejects(check_kv_cache_step, no_scaling, match="1/sqrt")


# ----------------------------------------------------------------------------------------------- sampling
def test_sample_next_token_check_accepts_a_right_answer(capsys):
    assert_check_accepts(check_sample_next_token, sample_next_token, capsys)


def test_sample_next_token_check():

    def top_p_excludes_crossing_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        if temperature == 0 or top_p is None or top_p >= 1.0:
            return sample_next_token(logits, temperature, top_k, top_p, generator)
        logits = logits / temperature
        if top_k is not None:
            logits = logits.masked_fill(logits < torch.topk(logits, top_k).values[:, -1:], float("-inf"))
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum > top_p  # wrong: drops the token whose probability crosses top_p
        drop[:, 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)

    def temperature_multiplies(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        if temperature == 0:
            return logits.argmax(-1)
        return sample_next_token(logits * temperature**2, 1.0 if temperature else 0.0, top_k, top_p, generator)

    def greedy_samples_anyway(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        return sample_next_token(logits, temperature or 1.0, top_k, top_p, generator)

    def keeps_shape_b1(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        return sample_next_token(logits, temperature, top_k, top_p, generator)[:, None]

    assert_check_rejects(check_sample_next_token, top_p_excludes_crossing_token, match="including the one that crosses")
    assert_check_rejects(check_sample_next_token, temperature_multiplies, match="temperature=0.5")
    assert_check_rejects(check_sample_next_token, greedy_samples_anyway, match="greedy")
    assert_check_rejects(check_sample_next_token, keeps_shape_b1, match=r"shape \[B\]|expected shape")


def test_sample_next_token_check_wants_the_generator_and_the_vocabulary_order():
    def written_differently(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        """Right: masks probabilities instead of logits, top-p with torch.where; draws in vocabulary order."""
        if temperature == 0:
            return logits.max(dim=-1).indices
        probs = (logits / temperature).softmax(-1)
        if top_k is not None:
            keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, probs.topk(top_k).indices, True)
            probs = torch.where(keep, probs, torch.zeros_like(probs))
            probs = probs / probs.sum(-1, keepdim=True)
        if top_p is not None:
            sorted_p, order = probs.sort(-1, descending=True)
            sorted_p = torch.where(sorted_p.cumsum(-1) - sorted_p < top_p, sorted_p, torch.zeros_like(sorted_p))
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def ignores_generator(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        return sample_next_token(logits, temperature, top_k, top_p, None)  # draws from the global RNG

    def draws_in_sorted_order(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        if temperature == 0:
            return logits.argmax(-1)
        sorted_logits, order = logits.sort(-1, descending=True)  # right distribution, other tokens per seed
        picked = sample_next_token(sorted_logits, temperature, top_k, top_p, generator)
        return order.gather(-1, picked[:, None]).squeeze(-1)

    assert_check_accepts(check_sample_next_token, written_differently)
    assert_check_rejects(check_sample_next_token, ignores_generator, match="ignores its `generator`")
    assert_check_rejects(check_sample_next_token, draws_in_sorted_order, match="not sorted")


# ----------------------------------------------------------------------------------------------- the model, written out
# A correct functional model written differently from the lab's solution: the library's RoPE table and repeat_kv,
# PyTorch's fused causal attention, einsum projections.
from course_utils.attention import repeat_kv  # noqa: E402
from course_utils.checks import (  # noqa: E402
    CheckFailed,  # noqa: E402
    check_block_forward,
    check_gpt_forward,
    check_lr_schedule,
    check_next_token_loss,
    check_train_step,
    check_train_within_budget,
    check_trained_gpt,
)


def _heads(t, n):
    B, T, _ = t.shape
    return t.view(B, T, n, -1).permute(0, 2, 1, 3)


def _attention(block, h, *, causal=True, rope=True, rope_v=False, scale=None):
    a = block.attn
    q, k, v = (
        _heads(torch.einsum("btd,od->bto", h, w.weight), n)
        for w, n in ((a.q_proj, a.n_heads), (a.k_proj, a.n_kv_heads), (a.v_proj, a.n_kv_heads))
    )
    if rope:
        q, k = _rope_ref(q), _rope_ref(k)
    if rope_v:
        v = _rope_ref(v)
    k, v = repeat_kv(k, a.n_rep), repeat_kv(v, a.n_rep)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return torch.einsum("bto,do->btd", out.permute(0, 2, 1, 3).flatten(2), a.o_proj.weight)


def _ffn(block, h):
    return swiglu(h, block.ffn.w1.weight, block.ffn.w3.weight, block.ffn.w2.weight)


def block_forward(block, x):
    x = x + _attention(block, rms_norm(x, block.attn_norm.weight, block.attn_norm.eps))
    return x + _ffn(block, rms_norm(x, block.ffn_norm.weight, block.ffn_norm.eps))


def gpt_forward(model, idx):
    x = F.embedding(idx, model.tok_emb.weight)
    for block in model.blocks:
        x = block_forward(block, x)
    return rms_norm(x, model.norm.weight, model.norm.eps) @ model.tok_emb.weight.T


def next_token_loss(logits, tokens):
    logp = logits[:, :-1].log_softmax(-1)
    return -logp.gather(-1, tokens[:, 1:, None]).mean()


def test_block_forward_check_accepts_a_right_answer(capsys):
    assert_check_accepts(check_block_forward, block_forward, capsys)


def test_block_forward_check():

    def no_causal_mask(block, x):
        x = x + _attention(block, rms_norm(x, block.attn_norm.weight), causal=False)
        return x + _ffn(block, rms_norm(x, block.ffn_norm.weight))

    def no_rope(block, x):
        x = x + _attention(block, rms_norm(x, block.attn_norm.weight), rope=False)
        return x + _ffn(block, rms_norm(x, block.ffn_norm.weight))

    def post_norm(block, x):  # the original transformer's order: normalize after the residual sum
        x = rms_norm(x + _attention(block, x), block.attn_norm.weight)
        return rms_norm(x + _ffn(block, x), block.ffn_norm.weight)

    def forgets_second_residual(block, x):
        x = x + _attention(block, rms_norm(x, block.attn_norm.weight))
        return _ffn(block, rms_norm(x, block.ffn_norm.weight))

    def forgets_first_residual(block, x):
        x = _attention(block, rms_norm(x, block.attn_norm.weight))
        return x + _ffn(block, rms_norm(x, block.ffn_norm.weight))

    def rope_on_values(block, x):
        x = x + _attention(block, rms_norm(x, block.attn_norm.weight), rope_v=True)
        return x + _ffn(block, rms_norm(x, block.ffn_norm.weight))

    def scaled_by_d_model(block, x):
        x = x + _attention(block, rms_norm(x, block.attn_norm.weight), scale=block.attn.d_model**-0.5)
        return x + _ffn(block, rms_norm(x, block.ffn_norm.weight))

    def one_norm_for_both(block, x):
        x = x + _attention(block, rms_norm(x, block.attn_norm.weight))
        return x + _ffn(block, rms_norm(x, block.attn_norm.weight))

    assert_check_rejects(check_block_forward, no_causal_mask, match="sees the future")
    assert_check_rejects(check_block_forward, no_rope, match="apply_rope to q and to k")
    # each common mistake is named, not reported as "N values differ"
    assert_check_rejects(check_block_forward, post_norm, match="POST-norm block")
    assert_check_rejects(check_block_forward, forgets_second_residual, match="WITHOUT the residual around the feed")
    assert_check_rejects(check_block_forward, forgets_first_residual, match="WITHOUT the residual around attention")
    assert_check_rejects(check_block_forward, rope_on_values, match="rotates the VALUES")
    assert_check_rejects(check_block_forward, scaled_by_d_model, match="scaled by 1/√d_model")
    assert_check_rejects(check_block_forward, one_norm_for_both, match="reuses attn_norm's gain")


def test_block_variants_default_to_the_reference_block():
    from course_utils.checks.ch03 import _block, _block_variant

    block, x = _block(3, n_heads=4, n_kv_heads=2), torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(_block_variant(block, x), block(x)[0], atol=1e-5, rtol=1e-5)


def test_gpt_forward_check_accepts_a_right_answer(capsys):
    assert_check_accepts(check_gpt_forward, gpt_forward, capsys)


def test_gpt_forward_check():

    def skips_final_norm(model, idx):
        x = model.tok_emb.weight[idx]
        for block in model.blocks:
            x = block_forward(block, x)
        return x @ model.tok_emb.weight.T

    def scales_embeddings(model, idx):  # a habit from the original transformer, not Llama's
        x = model.tok_emb.weight[idx] * model.config.d_model**0.5
        for block in model.blocks:
            x = block_forward(block, x)
        return rms_norm(x, model.norm.weight) @ model.tok_emb.weight.T

    def last_position_only(model, idx):
        return gpt_forward(model, idx)[:, -1]

    assert_check_rejects(check_gpt_forward, skips_final_norm, match="skip the final RMSNorm")
    assert_check_rejects(check_gpt_forward, scales_embeddings, match="values differ")
    assert_check_rejects(check_gpt_forward, last_position_only, match=r"\[B, T, vocab_size\]")


def test_next_token_loss_check_accepts_a_right_answer(capsys):
    assert_check_accepts(check_next_token_loss, next_token_loss, capsys)


def test_next_token_loss_check():

    def no_shift(logits, tokens):
        return F.cross_entropy(logits.flatten(0, 1), tokens.flatten())

    def shift_backwards(logits, tokens):
        return F.cross_entropy(logits[:, 1:].flatten(0, 1), tokens[:, :-1].flatten())

    def summed(logits, tokens):
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum")

    def rolled(logits, tokens):
        return F.cross_entropy(logits.flatten(0, 1), tokens.roll(-1, 1).flatten())

    assert_check_rejects(check_next_token_loss, no_shift, match="no shift")
    assert_check_rejects(check_next_token_loss, shift_backwards, match="PREVIOUS token")
    assert_check_rejects(check_next_token_loss, summed, match="summed, not averaged")
    assert_check_rejects(check_next_token_loss, rolled, match="wrap around")


def lr_schedule(step, lr, warmup, steps, min_lr_ratio=0.1):
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, steps - 1 - warmup)
    frac = min(1.0, (step - warmup) / span) if steps > warmup else 0.0
    return lr * min_lr_ratio + lr * (1 - min_lr_ratio) * (math.cos(math.pi * frac) + 1) / 2


def test_lr_schedule_check_accepts_a_right_answer(capsys):
    assert_check_accepts(check_lr_schedule, lr_schedule, capsys)


def test_lr_schedule_check():

    def warmup_from_zero(step, lr, warmup, steps, min_lr_ratio=0.1):
        return lr * step / warmup if step < warmup else lr_schedule(step, lr, warmup, steps, min_lr_ratio)

    def decays_to_zero(step, lr, warmup, steps, min_lr_ratio=0.1):
        return lr_schedule(step, lr, warmup, steps, 0.0)

    def cosine_from_step_zero(step, lr, warmup, steps, min_lr_ratio=0.1):
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * (min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * step / (steps - 1))) / 2)

    assert_check_rejects(check_lr_schedule, warmup_from_zero, match="step 0 already trains")
    assert_check_rejects(check_lr_schedule, decays_to_zero, match="not at 0")
    assert_check_rejects(check_lr_schedule, cosine_from_step_zero, match="progress = ")

    def unguarded_denominator(step, lr, warmup, steps, min_lr_ratio=0.1):  # 0/0 when steps == warmup + 1
        if step < warmup:
            return lr * (step + 1) / warmup
        if steps <= warmup:
            return lr
        progress = (step - warmup) / (steps - 1 - warmup)
        return lr * (min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * progress)) / 2)

    def last_step_is_the_floor(step, lr, warmup, steps, min_lr_ratio=0.1):  # right everywhere but that one step
        if step == steps - 1 and steps > warmup:
            return lr * min_lr_ratio
        return lr_schedule(step, lr, warmup, steps, min_lr_ratio)

    assert_check_rejects(check_lr_schedule, unguarded_denominator, match=r"ZeroDivisionError(.*\n)*.*steps == warmup")
    assert_check_rejects(check_lr_schedule, last_step_is_the_floor, match=r"steps=4(.*\n)*.*keeps lr")


def _make_train_step(*, zero=True, clip=True, schedule=True, loss_after=False):
    def train_step(model, optimizer, tokens, step, *, lr, warmup, steps, grad_clip=1.0):
        for group in optimizer.param_groups:
            group["lr"] = lr_schedule(step, lr, warmup, steps) if schedule else lr
        if zero:
            for p in model.parameters():
                p.grad = None
        _, loss = model(tokens[:, :-1], tokens[:, 1:])  # the fused reference forward: also correct
        loss.backward()
        if clip:
            norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters() if p.grad is not None))
            scale = min(1.0, grad_clip / (float(norm) + 1e-6))
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        optimizer.step()
        if loss_after:
            return model(tokens[:, :-1], tokens[:, 1:])[1].item()
        return loss.item()

    return train_step


def test_train_step_check_accepts_a_right_answer(capsys):
    assert_check_accepts(check_train_step, _make_train_step(), capsys)


def test_train_step_check():
    assert_check_rejects(check_train_step, _make_train_step(zero=False), match="zero_grad")
    assert_check_rejects(check_train_step, _make_train_step(clip=False), match="clip_grad_norm_")
    assert_check_rejects(check_train_step, _make_train_step(schedule=False), match="learning rate")
    assert_check_rejects(check_train_step, _make_train_step(loss_after=True), match="before the update")


def test_trained_gpt_check():
    from course_utils.data import corpus_dataset
    from course_utils.model import GPT, GPTConfig
    from course_utils.train import configure_optimizer

    cfg = GPTConfig(vocab_size=512, d_model=32, n_layers=1, n_heads=2, max_seq_len=64)
    torch.manual_seed(0)
    untrained = GPT(cfg)
    assert_check_rejects(check_trained_gpt, untrained, match="not below the target")
    assert_check_rejects(check_trained_gpt, {"val_loss": [3.0]}, match="expected the course_utils.model.GPT")
    # the off-by-one in training: a model taught to copy its input scores far worse on real next tokens
    copier = GPT(cfg)
    opt = configure_optimizer(copier, lr=1e-2, weight_decay=0.0)
    data, gen = corpus_dataset(), torch.Generator().manual_seed(0)
    for _ in range(40):
        x, _ = data.get_batch("train", 8, 32, gen)
        loss = F.cross_entropy(copier(x)[0].flatten(0, 1), x.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1.0  # it did learn to copy
    assert_check_rejects(check_trained_gpt, copier, match="not shifted")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        check_trained_gpt(untrained, target=7.0)  # the uniform guess, log(512) = 6.24, passes a loose target
    assert "✅ check_trained_gpt" in out.getvalue()


def test_train_within_budget_check():
    from course_utils.model import GPT, GPTConfig
    from course_utils.train import configure_optimizer, train_step

    def tiny(data):
        torch.manual_seed(0)
        return GPT(GPTConfig(vocab_size=data.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=64))

    def untrained(data, budget_flops):
        return tiny(data)

    def returns_history(data, budget_flops):
        return {"val_loss": [3.0]}

    def trains(steps, batch):
        def run(data, budget_flops):
            model, gen = tiny(data), torch.Generator().manual_seed(0)
            opt = configure_optimizer(model, lr=1e-2, weight_decay=0.0)
            for _ in range(steps):
                train_step(model, opt, *data.get_batch("train", batch, 64, gen), 1e-2)
            return model

        return run

    def reads_raw_tokens(data, budget_flops):  # would train without the budget seeing it
        data.ids["train"]
        return tiny(data)

    assert_check_rejects(check_train_within_budget, untrained, match="no training tokens")

    def trains_on_val(data, budget_flops):  # the score's own split: counted and refused, even a few batches
        model, gen = tiny(data), torch.Generator().manual_seed(0)
        opt = configure_optimizer(model, lr=1e-2, weight_decay=0.0)
        for split in ("train", "val", "val"):
            train_step(model, opt, *data.get_batch(split, 8, 64, gen), 1e-2)
        return model

    assert_check_rejects(check_train_within_budget, trains_on_val, match=r"1,024 tokens from the 'val' split")
    assert_check_rejects(check_train_within_budget, returns_history, match="expected train_within_budget to return")
    assert_check_rejects(check_train_within_budget, reads_raw_tokens, match="draw training tokens with")
    with pytest.raises(CheckFailed, match="over the budget"):  # 2 steps of 64 x 64 tokens on a 1e6-FLOP budget
        check_train_within_budget(trains(2, 64), budget_flops=1e6)
    with pytest.raises(CheckFailed, match="not below the target"):  # 5 steps lower the loss, not to 3.85
        check_train_within_budget(trains(5, 8))
    with contextlib.redirect_stdout(io.StringIO()) as out:
        check_train_within_budget(trains(5, 8), target=6.0)  # under budget, below a loose target: passes
    assert "✅ check_train_within_budget" in out.getvalue() and "of the budget" in out.getvalue()
    # the budget is the lab's Part-3 run: its model's parameter count, 300 steps of 16 x 64 tokens
    from course_utils.checks.ch03 import LAB_RUN_FLOPS

    lab = GPTConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)
    assert LAB_RUN_FLOPS == 6 * GPT(lab).param_counts()["total"] * 300 * 16 * 64


# ----------------------------------------------------------------------------------------------- AdamW, initialisation
from course_utils.checks import check_adamw_step, check_init_weights  # noqa: E402


def _adamw(*, coupled=False, bias_correction=True, eps_inside=False, decay=True):
    def adamw_step(param, grad, exp_avg, exp_avg_sq, step, *, lr, betas, eps, weight_decay):
        b1, b2 = betas
        if coupled:
            grad = grad + weight_decay * param
        elif decay:
            param = param - lr * weight_decay * param
        exp_avg = torch.lerp(exp_avg, grad, 1 - b1)  # written differently: lerp and addcmul
        exp_avg_sq = torch.addcmul(exp_avg_sq * b2, grad, grad, value=1 - b2)
        c1, c2 = (1 - b1**step, 1 - b2**step) if bias_correction else (1.0, 1.0)
        denom = (exp_avg_sq / c2 + eps).sqrt() if eps_inside else exp_avg_sq.sqrt() / math.sqrt(c2) + eps
        return torch.addcdiv(param, exp_avg, denom, value=-lr / c1), exp_avg, exp_avg_sq

    return adamw_step


def test_adamw_step_check_accepts_a_right_answer(capsys):
    assert_check_accepts(check_adamw_step, _adamw(), capsys)


def test_adamw_step_check():
    assert_check_rejects(check_adamw_step, _adamw(coupled=True), match="L2 regularisation")
    assert_check_rejects(check_adamw_step, _adamw(bias_correction=False), match="leaves out the bias correction")
    assert_check_rejects(check_adamw_step, _adamw(eps_inside=True), match="inside the square root")
    assert_check_rejects(check_adamw_step, _adamw(decay=False), match=r"param after step 1")

    def decay_without_lr(param, grad, exp_avg, exp_avg_sq, step, *, lr, betas, eps, weight_decay):
        return _adamw(decay=False)(param * (1 - weight_decay), grad, exp_avg, exp_avg_sq, step, lr=lr, betas=betas,
                                   eps=eps, weight_decay=weight_decay)  # fmt: skip

    assert_check_rejects(check_adamw_step, decay_without_lr, match=r"θ·\(1 − λ\)")


def _gpt2_init(*, residual_scaling=True, uniform=False):
    def init_weights(model):
        L = model.config.n_layers
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 1:
                    p.fill_(1.0)
                    continue
                std = (
                    0.02 / math.sqrt(2 * L)
                    if residual_scaling and name.endswith(("o_proj.weight", "w2.weight"))
                    else 0.02
                )
                if uniform:  # the right std, the wrong shape: U(-a, a) has std a/√3
                    p.uniform_(-std * math.sqrt(3), std * math.sqrt(3))
                else:
                    torch.nn.init.normal_(p, 0.0, std)

    return init_weights


def test_init_weights_check_accepts_a_right_answer(capsys):
    assert_check_accepts(check_init_weights, _gpt2_init(), capsys)


def test_init_weights_check():
    from course_utils.model import RMSNorm

    def pytorch_default(model):  # what nn.Linear / nn.Embedding / RMSNorm do on their own
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.reset_parameters()
            elif isinstance(module, RMSNorm):
                torch.nn.init.ones_(module.weight)

    assert_check_rejects(check_init_weights, pytorch_default, match=r"std .* expected 0.02(.*\n)*.*PyTorch's defaults")
    assert_check_rejects(check_init_weights, _gpt2_init(residual_scaling=False), match=r"residual stream need")
    assert_check_rejects(check_init_weights, _gpt2_init(uniform=True), match=r"does not look normal")
    assert_check_rejects(check_init_weights, lambda model: None, match=r"should be all ones|std")


# ----------------------------------------------------------------------------------------------- a real LLM (3.14)
# SmolLM2-135M written out as a learner would, independently of the check's own variants, with one switch per
# plausible mistake: the RoPE table computed by hand, heads repeated with repeat_interleave, norms with each eps.
from course_utils import smollm2  # noqa: E402
from course_utils.checks import check_runs_smollm2  # noqa: E402
from course_utils.model import GPT, GPTConfig  # noqa: E402


def _rope_by_hand(t, base, interleaved=False):
    T, d = t.shape[-2], t.shape[-1]
    angles = torch.arange(T, dtype=torch.float64)[:, None] * base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = angles.cos().to(t.dtype), angles.sin().to(t.dtype)
    if interleaved:  # pairs (2i, 2i+1)
        a, b = t[..., 0::2], t[..., 1::2]
        return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    a, b = t.chunk(2, dim=-1)  # pairs (i, i + d/2)
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def smollm2_forward(model, idx, *, base=None, interleaved=False, tile_kv=False, layer_norm=False, eps=None, head=True):
    base = model.config.rope_base if base is None else base

    def norm(x, module):
        e = module.eps if eps is None else eps
        if layer_norm:
            return F.layer_norm(x, x.shape[-1:], module.weight, eps=e)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + e) * module.weight

    x = F.embedding(idx, model.tok_emb.weight)
    for block in model.blocks:
        a, h = block.attn, norm(x, block.attn_norm)
        q, k, v = (
            _heads(h @ w.weight.T, n)
            for w, n in ((a.q_proj, a.n_heads), (a.k_proj, a.n_kv_heads), (a.v_proj, a.n_kv_heads))
        )
        q, k = _rope_by_hand(q, base, interleaved), _rope_by_hand(k, base, interleaved)
        k, v = (t.repeat(1, a.n_rep, 1, 1) if tile_kv else t.repeat_interleave(a.n_rep, dim=1) for t in (k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + out.permute(0, 2, 1, 3).flatten(2) @ a.o_proj.weight.T
        x = x + _ffn(block, norm(x, block.ffn_norm))
    x = norm(x, model.norm)
    return x @ model.tok_emb.weight.T if head else x


@pytest.fixture(scope="module")
def smollm2_model():
    """SmolLM2's weights in the course GPT, loaded once for this module (540 MB, a few seconds)."""
    return smollm2.load_model(max_seq_len=64)


@pytest.mark.slow
def test_runs_smollm2_check_accepts_a_right_answer(smollm2_model, capsys):
    def check(forward):
        check_runs_smollm2(forward, smollm2_model)

    check.__name__ = "check_runs_smollm2"
    assert_check_accepts(check, smollm2_forward, capsys)


@pytest.mark.slow
def test_smollm2_variants_default_to_the_reference_model(smollm2_model):
    from course_utils.checks.ch03 import _smollm2_variant

    idx = torch.tensor([[1, 504, 2143, 30, 28, 3, 9, 1111]])
    with torch.no_grad():
        torch.testing.assert_close(_smollm2_variant(smollm2_model, idx), smollm2_model(idx)[0], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_runs_smollm2_check_names_each_mistake(smollm2_model):
    def check_runs_smollm2_shared(forward):  # the module's weights, not a fresh load per case
        check_runs_smollm2(forward, smollm2_model)

    check_runs_smollm2_shared.__name__ = "check_runs_smollm2"
    mistakes = {
        "RoPE base 10,000": dict(base=10000.0),  # the lab's apply_rope default, not passed down
        "ADJACENT pairs": dict(interleaved=True),
        "TILED": dict(tile_kv=True),
        "LayerNorm": dict(layer_norm=True),
        "WITHOUT eps": dict(eps=0.0),
        "eps 1e-6": dict(eps=1e-6),
    }
    for match, switches in mistakes.items():
        wrong = functools.partial(smollm2_forward, **switches)
        assert_check_rejects(check_runs_smollm2_shared, wrong, match=match)

    # forgets the output layer (the tied embedding): hidden states come back, not logits
    no_head = functools.partial(smollm2_forward, head=False)
    assert_check_rejects(check_runs_smollm2_shared, no_head, match=r"expected logits of shape \(1, \d+, 49152\)")


@pytest.mark.slow
def test_runs_smollm2_check_loads_by_itself_and_rejects_tiled_kv_heads():
    assert_check_rejects(check_runs_smollm2, functools.partial(smollm2_forward, tile_kv=True), match="TILED")


@pytest.mark.slow
def test_runs_smollm2_check_rejects_a_model_that_is_not_smollm2():
    with pytest.raises(CheckFailed, match="expected a course_utils.model.GPT"):
        check_runs_smollm2(smollm2_forward, torch.nn.Linear(2, 2))
    with pytest.raises(CheckFailed, match="config differs.*rope_base"):
        check_runs_smollm2(smollm2_forward, GPT(GPTConfig(**{**vars(smollm2.smollm2_config(64)), "rope_base": 1e4})))
    with pytest.raises(CheckFailed, match="blocks.0.* is not SmolLM2's|tok_emb.weight is not SmolLM2's"):
        check_runs_smollm2(smollm2_forward, GPT(smollm2.smollm2_config(64)))  # built, never loaded
