"""Chapter 2 lab checks: attention from scratch, compared with ``course_utils.attention`` (itself pinned to
``torch.nn.functional.scaled_dot_product_attention`` by the tests)."""
from __future__ import annotations

import torch

from .. import attention as ref
from ._core import call, compare, fail, passed

__all__ = [
    "check_scaled_dot_product_attention",
    "check_causal_mask",
    "check_split_heads",
    "check_merge_heads",
    "check_online_softmax_attention",
]


def _randn(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _sdpa_cases():
    """(description, q, k, v, attn_mask): plain, Lq ≠ Lk, large d, a boolean mask, a float mask, broadcasting."""
    cases = []
    # d = 64: without the 1/√d scale the scores are 8× too large and the softmax far too peaked
    cases.append(("[2, 4, 5, 64] self-attention", _randn(2, 4, 5, 64, seed=1), _randn(2, 4, 5, 64, seed=2),
                  _randn(2, 4, 5, 64, seed=3), None))
    # 3 queries, 7 keys: a softmax over the wrong axis or a transposed product shows up as a wrong shape/values
    cases.append(("3 queries, 7 keys", _randn(1, 3, 16, seed=4), _randn(1, 7, 16, seed=5), _randn(1, 7, 8, seed=6),
                  None))
    keep = torch.tensor([[1, 0, 1, 1, 0, 0, 1], [0, 1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    cases.append(("boolean mask, True = may attend", _randn(1, 3, 16, seed=4), _randn(1, 7, 16, seed=5),
                  _randn(1, 7, 8, seed=6), keep))
    cases.append(("float mask added to the scores", _randn(2, 3, 8, seed=7), _randn(2, 7, 8, seed=8),
                  _randn(2, 7, 8, seed=9), _randn(2, 3, 7, seed=10)))
    cases.append(("causal mask [T, T] broadcast over [2, 2, T, d]", _randn(2, 2, 6, 8, seed=11),
                  _randn(2, 2, 6, 8, seed=12), _randn(2, 2, 6, 8, seed=13), ref.causal_mask(6)))
    cases.append(("one query, one key", _randn(1, 1, 4, seed=14), _randn(1, 1, 4, seed=15), _randn(1, 1, 3, seed=16),
                  None))
    return cases


def check_scaled_dot_product_attention(fn) -> None:
    """``fn(q, k, v, attn_mask=None) -> (output, weights)``: softmax(q kᵀ / √d + mask) v and the weights."""
    name = "check_scaled_dot_product_attention"
    cases = _sdpa_cases()
    for what, q, k, v, mask in cases:
        inputs = {"case": what, "q": q, "k": k, "v": v}
        got = call(name, fn, q, k, v, attn_mask=mask, inputs=inputs) if mask is not None else \
            call(name, fn, q, k, v, inputs=inputs)
        if not isinstance(got, tuple) or len(got) != 2:
            fail(name, f"expected a tuple (output, weights), got {type(got).__name__}", inputs=inputs,
                 hint="return output, weights")
        out, weights = got
        want_out, want_w = ref.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if isinstance(weights, torch.Tensor) and weights.shape == want_w.shape:
            sums = weights.sum(-1)
            if not torch.allclose(sums, torch.ones_like(sums), atol=1e-6):
                fail(name, f"each query's weights should sum to 1 over the keys; row sums are {sums.flatten()[:4].tolist()}",
                     inputs=inputs, hint="softmax over the last axis (the keys): torch.softmax(scores, dim=-1)")
        compare(name, weights, want_w, inputs=inputs, what="weights", atol=1e-8, rtol=1e-6,
                hint="scores = q @ k.transpose(-2, -1) / sqrt(d); a boolean mask turns False into -inf, a float "
                     "mask is added; then softmax over the last axis")
        compare(name, out, want_out, inputs=inputs, what="output", atol=1e-8, rtol=1e-6,
                hint="output = weights @ v")
    passed(name, len(cases), "matches torch.nn.functional.scaled_dot_product_attention")


def check_causal_mask(fn) -> None:
    """``fn(n_q, n_k=None)`` → bool ``[n_q, n_k]``, True where query i may attend to key j (j ≤ i)."""
    name = "check_causal_mask"
    cases = [(1, None), (2, None), (5, None), (3, 5), (4, 2)]
    for n_q, n_k in cases:
        inputs = {"n_q": n_q, "n_k": n_k}
        got = call(name, fn, n_q, n_k, inputs=inputs) if n_k is not None else call(name, fn, n_q, inputs=inputs)
        want = ref.causal_mask(n_q, n_k)
        if not isinstance(got, torch.Tensor):
            fail(name, f"expected a torch.Tensor, got {type(got).__name__}", inputs=inputs)
        if got.dtype != torch.bool:
            fail(name, f"expected a boolean mask (True = may attend), got dtype {got.dtype}", inputs=inputs,
                 hint="comparisons give booleans: j <= i, or torch.ones(n_q, n_k, dtype=torch.bool).tril()")
        if tuple(got.shape) == tuple(want.shape):
            future = got & ~want
            if future.any():
                i, j = (int(t) for t in torch.nonzero(future)[0])
                fail(name, f"query {i} may see key {j}, which is in its future", inputs=inputs,
                     hint="keep the lower triangle: True where key index j <= query index i")
            if (want & ~got).any():
                i, j = (int(t) for t in torch.nonzero(want & ~got)[0])
                fail(name, f"query {i} may not see key {j} (its past{' or itself' if i == j else ''})", inputs=inputs,
                     hint="the diagonal stays True: a token attends to itself")
        compare(name, got, want, inputs=inputs, what="mask",
                hint="PyTorch's convention for n_q != n_k is top-left: torch.ones(n_q, n_k).tril()")
    passed(name, len(cases), "lower-triangular, like PyTorch's is_causal")


_HEAD_CASES = [((2, 5, 12), 3), ((1, 1, 8), 1), ((3, 4, 8), 8), ((2, 7, 6), 2)]


def check_split_heads(fn) -> None:
    """``fn(x, n_heads)``: [B, T, H·d] → [B, H, T, d], head h being slice h of the model dimension."""
    name = "check_split_heads"
    for shape, n_heads in _HEAD_CASES:
        x = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
        inputs = {"x": x, "n_heads": n_heads}
        got = call(name, fn, x, n_heads, inputs=inputs)
        compare(name, got, ref.split_heads(x, n_heads), inputs=inputs, what="split_heads(x, n_heads)", atol=0, rtol=0,
                hint="head h must be x[..., h*d:(h+1)*d]: view(B, T, H, d) then transpose(1, 2); a plain "
                     "view(B, H, T, d) mixes positions into heads")
    passed(name, len(_HEAD_CASES), "head h = slice h of the model dimension")


def check_merge_heads(fn) -> None:
    """``fn(x)``: [B, H, T, d] → [B, T, H·d], the inverse of split_heads."""
    name = "check_merge_heads"
    for shape, n_heads in _HEAD_CASES:
        x = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
        heads = ref.split_heads(x, n_heads)
        inputs = {"x": heads}
        got = call(name, fn, heads, inputs=inputs)
        compare(name, got, x, inputs=inputs, what="merge_heads(split_heads(x))", atol=0, rtol=0,
                hint="undo the split: transpose(1, 2) back to [B, T, H, d], then reshape(B, T, H*d); a plain "
                     "reshape of [B, H, T, d] puts heads where positions belong")
    passed(name, len(_HEAD_CASES), "merge_heads(split_heads(x)) == x")


class _LargestTensor(torch.overrides.TorchFunctionMode):
    """Records the largest tensor any torch operation produces inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def check_online_softmax_attention(fn) -> None:
    """``fn(q, k, v, block_size)`` equals softmax(q kᵀ/√d) v without ever building the Lq × Lk matrix."""
    name = "check_online_softmax_attention"
    cases = [
        ("[2, 2, 10, 8], block 4 (last block shorter)", (2, 2, 10, 8), 10, 4, 1.0),
        ("one block holds every key", (1, 3, 4), 3, 16, 1.0),
        ("block_size 1", (1, 5, 4), 5, 1, 1.0),
        ("3 queries, 9 keys", (2, 3, 8), 9, 2, 1.0),
        # scores in the thousands: exp() overflows unless the running maximum is subtracted
        ("large scores (×60)", (1, 6, 8), 6, 2, 60.0),
    ]
    for i, (what, q_shape, n_k, block, mult) in enumerate(cases):
        q = _randn(*q_shape, seed=20 + i, scale=mult)
        k = _randn(*q_shape[:-2], n_k, q_shape[-1], seed=40 + i, scale=mult)
        v = _randn(*q_shape[:-2], n_k, 5, seed=60 + i)
        inputs = {"case": what, "q": q, "k": k, "v": v, "block_size": block}
        got = call(name, fn, q, k, v, block_size=block, inputs=inputs)
        want, _ = ref.scaled_dot_product_attention(q, k, v)
        if isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
            fail(name, "the output has inf/NaN values", inputs=inputs,
                 hint="subtract the running maximum before exp(), and rescale ℓ and acc by exp(m_old - m_new)")
        compare(name, got, want, inputs=inputs, what="output", atol=1e-8, rtol=1e-6,
                hint="when a block raises the maximum m, multiply the old ℓ and acc by exp(m_old - m_new) before "
                     "adding the block's exp(s - m_new) and exp(s - m_new) @ v_block")
    # memory: with 256 queries and keys in blocks of 32, nothing may be as large as the 256 × 256 score matrix
    n, block = 256, 32
    q, k, v = _randn(1, n, 16, seed=80), _randn(1, n, 16, seed=81), _randn(1, n, 16, seed=82)
    spy = _LargestTensor()
    with spy:
        call(name, fn, q, k, v, block_size=block, inputs={"n": n, "block_size": block})
    if spy.largest >= n * n // 2:
        fail(name, f"a tensor of {spy.largest:,} elements was built; the {n}×{n} score matrix has {n * n:,} and "
                   f"one block of scores only {n * block:,}", inputs={"n": n, "block_size": block},
             hint="loop over blocks of keys: compute q @ k_block.T ([.., Lq, block_size]), never q @ k.T")
    passed(name, len(cases) + 1, f"exact, stable, largest tensor {spy.largest:,} elements < {n}×{n}")
