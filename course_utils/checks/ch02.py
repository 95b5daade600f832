"""Chapter 2 lab checks: attention from scratch, compared with ``course_utils.attention`` (itself pinned to
``torch.nn.functional.scaled_dot_product_attention`` by the tests), and grouped-query attention compared with
PyTorch's own ``scaled_dot_product_attention(..., enable_gqa=True)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import attention as ref
from ._core import call, compare, describe, exercise, fail, passed

__all__ = [
    "check_scaled_dot_product_attention",
    "check_causal_mask",
    "check_split_heads",
    "check_merge_heads",
    "check_online_softmax_attention",
    "check_repeat_kv",
    "check_grouped_query_attention",
    "check_causal_self_attention",
    "check_long_context_attention",
]


def _randn(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _sdpa_cases():
    """(description, q, k, v, attn_mask): plain, Lq ≠ Lk, large d, a boolean mask, a float mask, broadcasting."""
    cases = []
    # d = 64: without the 1/√d scale the scores are 8× too large and the softmax far too peaked
    cases.append(
        (
            "[2, 4, 5, 64] self-attention",
            _randn(2, 4, 5, 64, seed=1),
            _randn(2, 4, 5, 64, seed=2),
            _randn(2, 4, 5, 64, seed=3),
            None,
        )
    )
    # 3 queries, 7 keys: a softmax over the wrong axis or a transposed product shows up as a wrong shape/values
    cases.append(
        ("3 queries, 7 keys", _randn(1, 3, 16, seed=4), _randn(1, 7, 16, seed=5), _randn(1, 7, 8, seed=6), None)
    )
    keep = torch.tensor([[1, 0, 1, 1, 0, 0, 1], [0, 1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    cases.append(
        (
            "boolean mask, True = may attend",
            _randn(1, 3, 16, seed=4),
            _randn(1, 7, 16, seed=5),
            _randn(1, 7, 8, seed=6),
            keep,
        )
    )
    cases.append(
        (
            "float mask added to the scores",
            _randn(2, 3, 8, seed=7),
            _randn(2, 7, 8, seed=8),
            _randn(2, 7, 8, seed=9),
            _randn(2, 3, 7, seed=10),
        )
    )
    cases.append(
        (
            "causal mask [T, T] broadcast over [2, 2, T, d]",
            _randn(2, 2, 6, 8, seed=11),
            _randn(2, 2, 6, 8, seed=12),
            _randn(2, 2, 6, 8, seed=13),
            ref.causal_mask(6),
        )
    )
    cases.append(
        ("one query, one key", _randn(1, 1, 4, seed=14), _randn(1, 1, 4, seed=15), _randn(1, 1, 3, seed=16), None)
    )
    return cases


@exercise("2.1")
def check_scaled_dot_product_attention(fn) -> None:
    """``fn(q, k, v, attn_mask=None) -> (output, weights)``: softmax(q kᵀ / √d + mask) v and the weights."""
    name = "check_scaled_dot_product_attention"
    cases = _sdpa_cases()
    for what, q, k, v, mask in cases:
        inputs = {"case": what, "q": q, "k": k, "v": v}
        got = (
            call(name, fn, q, k, v, attn_mask=mask, inputs=inputs)
            if mask is not None
            else call(name, fn, q, k, v, inputs=inputs)
        )
        if not isinstance(got, tuple) or len(got) != 2:
            fail(
                name,
                f"expected a tuple (output, weights), got {type(got).__name__}",
                inputs=inputs,
                hint="return output, weights",
            )
        out, weights = got
        want_out, want_w = ref.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if isinstance(weights, torch.Tensor) and weights.shape == want_w.shape:
            sums = weights.sum(-1)
            if not torch.allclose(sums, torch.ones_like(sums), atol=1e-6):
                fail(
                    name,
                    f"each query's weights should sum to 1 over the keys; row sums are {describe(sums.flatten()[:4])}",
                    inputs=inputs,
                    hint="softmax over the last axis (the keys): torch.softmax(scores, dim=-1)",
                )
        compare(
            name,
            weights,
            want_w,
            inputs=inputs,
            what="weights",
            atol=1e-8,
            rtol=1e-6,
            hint="scores are q·k over √d (transpose only k's last two axes); a boolean mask turns False into "
            "-inf, a float mask is added; then softmax over the keys (the last axis)",
        )
        compare(name, out, want_out, inputs=inputs, what="output", atol=1e-8, rtol=1e-6, hint="output = weights @ v")
    passed(name, len(cases), "matches torch.nn.functional.scaled_dot_product_attention")


@exercise("2.2")
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
            fail(
                name,
                f"expected a boolean mask (True = may attend), got dtype {got.dtype}",
                inputs=inputs,
                hint="comparisons give booleans: j <= i, or torch.ones(n_q, n_k, dtype=torch.bool).tril()",
            )
        if tuple(got.shape) == tuple(want.shape):
            future = got & ~want
            if future.any():
                i, j = (int(t) for t in torch.nonzero(future)[0])
                fail(
                    name,
                    f"query {i} may see key {j}, which is in its future",
                    inputs=inputs,
                    hint="keep the lower triangle: True where key index j <= query index i",
                )
            if (want & ~got).any():
                i, j = (int(t) for t in torch.nonzero(want & ~got)[0])
                fail(
                    name,
                    f"query {i} may not see key {j} (its past{' or itself' if i == j else ''})",
                    inputs=inputs,
                    hint="the diagonal stays True: a token attends to itself",
                )
        compare(
            name,
            got,
            want,
            inputs=inputs,
            what="mask",
            hint="PyTorch's convention for n_q != n_k is top-left: torch.ones(n_q, n_k).tril()",
        )
    passed(name, len(cases), "lower-triangular, like PyTorch's is_causal")


_HEAD_CASES = [((2, 5, 12), 3), ((1, 1, 8), 1), ((3, 4, 8), 8), ((2, 7, 6), 2)]


@exercise("2.3")
def check_split_heads(fn) -> None:
    """``fn(x, n_heads)``: [B, T, H·d] → [B, H, T, d], head h being slice h of the model dimension."""
    name = "check_split_heads"
    for shape, n_heads in _HEAD_CASES:
        x = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
        inputs = {"x": x, "n_heads": n_heads}
        got = call(name, fn, x, n_heads, inputs=inputs)
        compare(
            name,
            got,
            ref.split_heads(x, n_heads),
            inputs=inputs,
            what="split_heads(x, n_heads)",
            atol=0,
            rtol=0,
            hint="head h must be x[..., h*d:(h+1)*d]: split the last axis first, then move the head axis in "
            "front of time; a plain view(B, H, T, d) mixes positions into heads",
        )
    passed(name, len(_HEAD_CASES), "head h = slice h of the model dimension")


@exercise("2.4")
def check_merge_heads(fn) -> None:
    """``fn(x)``: [B, H, T, d] → [B, T, H·d], the inverse of split_heads."""
    name = "check_merge_heads"
    for shape, n_heads in _HEAD_CASES:
        x = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
        heads = ref.split_heads(x, n_heads)
        inputs = {"x": heads}
        got = call(name, fn, heads, inputs=inputs)
        compare(
            name,
            got,
            x,
            inputs=inputs,
            what="merge_heads(split_heads(x))",
            atol=0,
            rtol=0,
            hint="undo the split in reverse order: heads back behind time ([B, T, H, d]), then join the last two "
            "axes; a plain reshape of [B, H, T, d] puts heads where positions belong",
        )
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


@exercise("2.5")
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
            fail(
                name,
                "the output has inf/NaN values",
                inputs=inputs,
                hint="subtract the running maximum before exp(), and rescale ℓ and acc by exp(m_old - m_new)",
            )
        compare(
            name,
            got,
            want,
            inputs=inputs,
            what="output",
            atol=1e-8,
            rtol=1e-6,
            hint="when a block raises the maximum m, multiply the old ℓ and acc by exp(m_old - m_new) before "
            "adding the block's exp(s - m_new) and exp(s - m_new) @ v_block",
        )
    # memory: with 256 queries and keys in blocks of 32, nothing may be as large as the 256 × 256 score matrix
    n, block = 256, 32
    q, k, v = _randn(1, n, 16, seed=80), _randn(1, n, 16, seed=81), _randn(1, n, 16, seed=82)
    spy = _LargestTensor()
    with spy:
        call(name, fn, q, k, v, block_size=block, inputs={"n": n, "block_size": block})
    if spy.largest >= n * n // 2:
        fail(
            name,
            f"a tensor of {spy.largest:,} elements was built; the {n}×{n} score matrix has {n * n:,} and "
            f"one block of scores only {n * block:,}",
            inputs={"n": n, "block_size": block},
            hint="loop over blocks of keys: compute q @ k_block.T ([.., Lq, block_size]), never q @ k.T",
        )
    passed(name, len(cases) + 1, f"exact, stable, largest tensor {spy.largest:,} elements < {n}×{n}")


# ------------------------------------------------------------------------------------- grouped-query attention
_KV_CASES = [((2, 2, 3, 4), 3), ((1, 1, 5, 2), 4), ((1, 3, 2, 2), 1), ((2, 4, 1, 3), 2)]


@exercise("2.6")
def check_repeat_kv(fn) -> None:
    """``fn(x, n_rep)``: [B, H_kv, T, d] → [B, H_kv·n_rep, T, d]; head h of the result is key/value head h // n_rep."""
    name = "check_repeat_kv"
    for shape, n_rep in _KV_CASES:
        # every head holds its own number, so a wrong order shows which head went where
        x = (
            torch.arange(shape[1], dtype=torch.float32)[None, :, None, None] * 100
            + torch.arange(torch.Size(shape[2:]).numel(), dtype=torch.float32).reshape(1, 1, *shape[2:])
        ).expand(shape)
        x = x + torch.arange(shape[0], dtype=torch.float32)[:, None, None, None] * 1000
        inputs = {"x": x, "n_rep": n_rep}
        got = call(name, fn, x, n_rep, inputs=inputs)
        want = ref.repeat_kv(x, n_rep)
        if (
            isinstance(got, torch.Tensor)
            and got.shape == want.shape
            and n_rep > 1
            and shape[1] > 1
            and torch.equal(got, x.repeat(1, n_rep, 1, 1))
        ):
            fail(
                name,
                f"heads are tiled (kv heads 0, 1, ..., 0, 1, ...): query head h got kv head h % {shape[1]}",
                inputs=inputs,
                hint="each key/value head serves a block of n_rep *consecutive* query heads: "
                "head h uses kv head h // n_rep (0, 0, 1, 1, ... for n_rep = 2)",
            )
        compare(
            name,
            got,
            want,
            inputs=inputs,
            what="repeat_kv(x, n_rep)",
            atol=0,
            rtol=0,
            hint="the result has H_kv·n_rep heads; head h is a copy of kv head h // n_rep",
        )
    passed(name, len(_KV_CASES), "head h = kv head h // n_rep, as in Llama and Mixtral")


def _gqa_cases():
    """(what, q, k, v, is_causal): GQA, MQA, plain MHA, Lq ≠ Lk, causal."""
    return [
        (
            "8 query heads, 2 kv heads",
            _randn(2, 8, 5, 16, seed=101),
            _randn(2, 2, 5, 16, seed=102),
            _randn(2, 2, 5, 16, seed=103),
            False,
        ),
        (
            "8 query heads, 2 kv heads, causal",
            _randn(2, 8, 5, 16, seed=101),
            _randn(2, 2, 5, 16, seed=102),
            _randn(2, 2, 5, 16, seed=103),
            True,
        ),
        (
            "multi-query: 4 query heads, 1 kv head, causal",
            _randn(1, 4, 6, 8, seed=104),
            _randn(1, 1, 6, 8, seed=105),
            _randn(1, 1, 6, 8, seed=106),
            True,
        ),
        (
            "classic multi-head: 3 and 3",
            _randn(1, 3, 4, 8, seed=107),
            _randn(1, 3, 4, 8, seed=108),
            _randn(1, 3, 4, 8, seed=109),
            False,
        ),
        (
            "6 query heads, 3 kv heads, 2 queries, 7 keys",
            _randn(1, 6, 2, 8, seed=110),
            _randn(1, 3, 7, 8, seed=111),
            _randn(1, 3, 7, 4, seed=112),
            False,
        ),
        (  # Lq < Lk: top-left (query i sees keys 0..i) and bottom-right (0..i+2) alignments differ here
            "4 query heads, 2 kv heads, 3 queries, 5 keys, causal",
            _randn(1, 4, 3, 8, seed=115),
            _randn(1, 2, 5, 8, seed=116),
            _randn(1, 2, 5, 8, seed=117),
            True,
        ),
    ]


_GQA_CAUSAL_CONVENTION = (
    "the course's causal mask is top-left aligned, as torch's is_causal and your causal_mask(Lq, Lk): query i sees "
    "keys j <= i, whatever Lk is (with 3 queries and 5 keys, query 0 sees key 0 only); bottom-right alignment "
    "(j <= i + Lk - Lq) is what decoding with a KV cache needs (chapter 3), not what is_causal means"
)


@exercise("2.7")
def check_grouped_query_attention(fn) -> None:
    """``fn(q, k, v, is_causal=False)`` equals ``F.scaled_dot_product_attention(q, k, v, is_causal=...,
    enable_gqa=True)`` and rejects head counts that do not divide with a ValueError."""
    name = "check_grouped_query_attention"
    cases = _gqa_cases()
    for what, q, k, v, causal in cases:
        inputs = {"case": what, "q": q, "k": k, "v": v, "is_causal": causal}
        got = call(name, fn, q, k, v, is_causal=causal, inputs=inputs)
        want = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        Lq, Lk = q.shape[-2], k.shape[-2]
        if causal and Lq != Lk and isinstance(got, torch.Tensor) and got.shape == want.shape:
            shifted = ref.causal_mask(Lq, Lk, offset=Lk - Lq)
            bottom_right = F.scaled_dot_product_attention(q, k, v, attn_mask=shifted, enable_gqa=True)
            if torch.allclose(got, bottom_right, atol=1e-8, rtol=1e-6):
                fail(
                    name,
                    f"with {Lq} queries and {Lk} keys your causal mask is bottom-right aligned: query 0 saw keys "
                    f"0..{Lk - Lq}",
                    inputs=inputs,
                    hint=_GQA_CAUSAL_CONVENTION,
                )
        compare(
            name,
            got,
            want,
            inputs=inputs,
            what="output",
            atol=1e-8,
            rtol=1e-6,
            hint="give every query head its kv head with repeat_kv (n_rep = H_q / H_kv), then plain attention; "
            "with is_causal, mask keys after the query (top-left aligned: query i sees keys j <= i, as torch's "
            "is_causal and causal_mask(Lq, Lk) with no offset)",
        )
    q, k = _randn(1, 6, 3, 8, seed=113), _randn(1, 4, 3, 8, seed=114)
    inputs = {"q": q, "k": k, "v": k}
    try:
        fn(q, k, k)
    except ValueError:
        pass
    except NotImplementedError:
        call(name, fn, q, k, k, inputs=inputs)  # reports the stub
    except Exception as err:
        fail(
            name,
            f"6 query heads cannot share 4 kv heads; expected a ValueError, got {type(err).__name__}: {err}",
            inputs=inputs,
            hint="check H_q % H_kv == 0 first and raise ValueError naming both head counts",
        )
    else:
        fail(
            name,
            "6 query heads cannot share 4 kv heads, but no ValueError was raised",
            inputs=inputs,
            hint="check H_q % H_kv == 0 first and raise ValueError naming both head counts",
        )
    passed(name, len(cases) + 1, "equal to scaled_dot_product_attention(..., enable_gqa=True)")


_MODULE_CASES = [(32, 4, 2, (2, 7)), (32, 4, 4, (1, 5)), (48, 6, 1, (2, 4)), (16, 2, 2, (1, 1))]


@exercise("2.8")
def check_causal_self_attention(cls) -> None:
    """``cls(d_model, n_heads, n_kv_heads)``: a module with bias-free ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``
    whose ``forward(x)`` is causal grouped-query attention, equal to PyTorch's SDPA with ``enable_gqa=True``."""
    name = "check_causal_self_attention"
    for d_model, n_heads, n_kv, (B, T) in _MODULE_CASES:
        head_dim = d_model // n_heads
        inputs = {"d_model": d_model, "n_heads": n_heads, "n_kv_heads": n_kv}
        torch.manual_seed(d_model + n_heads + n_kv)
        module = call(name, cls, d_model, n_heads, n_kv, inputs=inputs)
        if not isinstance(module, torch.nn.Module):
            fail(
                name,
                f"expected an nn.Module, got {type(module).__name__}",
                inputs=inputs,
                hint="pass the class; it subclasses torch.nn.Module and calls super().__init__() first",
            )
        want_shapes = {
            "q_proj": (n_heads * head_dim, d_model),
            "k_proj": (n_kv * head_dim, d_model),
            "v_proj": (n_kv * head_dim, d_model),
            "o_proj": (d_model, n_heads * head_dim),
        }
        for proj, shape in want_shapes.items():
            layer = getattr(module, proj, None)
            if not isinstance(layer, torch.nn.Linear):
                fail(
                    name,
                    f"the module has no nn.Linear named {proj}",
                    inputs=inputs,
                    hint="name the four projections q_proj, k_proj, v_proj, o_proj (the check reads their weights)",
                )
            if tuple(layer.weight.shape) != shape or layer.bias is not None:
                fail(
                    name,
                    f"{proj}.weight has shape {tuple(layer.weight.shape)}"
                    f"{' and a bias' if layer.bias is not None else ''}; expected {shape}, no bias",
                    inputs=inputs,
                    hint="keys and values have n_kv_heads heads of size d_model // n_heads; "
                    "queries have n_heads; the projections have no bias (bias=False)",
                )
        x = _randn(B, T, d_model, seed=d_model + T).float()
        inputs = {**inputs, "x": x}
        with torch.no_grad():
            got = call(name, module, x, inputs=inputs)
            q = module.q_proj(x).view(B, T, n_heads, head_dim).transpose(1, 2)
            k = module.k_proj(x).view(B, T, n_kv, head_dim).transpose(1, 2)
            v = module.v_proj(x).view(B, T, n_kv, head_dim).transpose(1, 2)
            heads = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            want = module.o_proj(heads.transpose(1, 2).reshape(B, T, d_model))
        compare(
            name,
            got,
            want,
            inputs=inputs,
            what="forward(x)",
            atol=1e-5,
            rtol=1e-4,
            hint="project, split q into n_heads and k, v into n_kv_heads, causal grouped-query attention, "
            "merge the heads, then o_proj",
        )
    passed(name, len(_MODULE_CASES), "equal to F.scaled_dot_product_attention(..., is_causal=True, enable_gqa=True)")


LONG_SHAPE = (1, 4, 2048, 64)  # [B, H, T, d]: one float32 score matrix is 4·2048·2048·4 bytes = 64 MiB
LONG_BUDGET_MIB = 24


@exercise("2.9")
def check_long_context_attention(fn) -> None:
    """Open exercise: ``fn(q, k, v)`` is causal attention, equal to PyTorch's, on a 2,048-token sequence with at
    most :data:`LONG_BUDGET_MIB` MiB of tensors alive at once (the full score matrix alone is 64 MiB)."""
    name = "check_long_context_attention"
    small = [("[2, 3, 37, 8]", (2, 3, 37, 8)), ("one token", (1, 2, 1, 4))]
    for what, shape in small:
        q, k, v = (_randn(*shape, seed=120 + i) for i in range(3))
        inputs = {"case": what, "q": q, "k": k, "v": v}
        got = call(name, fn, q, k, v, inputs=inputs)
        compare(
            name,
            got,
            F.scaled_dot_product_attention(q, k, v, is_causal=True),
            inputs=inputs,
            what="output",
            atol=1e-8,
            rtol=1e-6,
            hint="causal: query i sees keys 0..i only, in every block you compute",
        )
    q, k, v = (_randn(*LONG_SHAPE, seed=130 + i).float() for i in range(3))
    full = LONG_SHAPE[0] * LONG_SHAPE[1] * LONG_SHAPE[2] ** 2 * 4 / 2**20
    inputs = {"q": q, "k": k, "v": v}
    with torch.no_grad(), ref.TensorMemoryTracker() as tracker:
        got = call(name, fn, q, k, v, inputs=inputs)
    with torch.no_grad():
        want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    compare(
        name,
        got,
        want,
        inputs=inputs,
        what="output",
        atol=1e-4,
        rtol=1e-3,
        hint="causal: query i sees keys 0..i only, in every block you compute",
    )
    peak = tracker.peak / 2**20
    if peak > LONG_BUDGET_MIB:
        fail(
            name,
            f"your peak is {peak:.1f} MiB of tensors; the budget is {LONG_BUDGET_MIB} MiB (the full "
            f"{LONG_SHAPE[2]}×{LONG_SHAPE[2]} score matrix of 4 heads is {full:.0f} MiB)",
            inputs=inputs,
            hint="never hold all scores at once: work on blocks of queries (or keys) so that one block of scores "
            "is a few MiB, and let each block's intermediates be freed before the next",
        )
    passed(
        name,
        len(small) + 1,
        f"your peak {peak:.1f} MiB ≤ budget {LONG_BUDGET_MIB} MiB (full score matrix {full:.0f} MiB)",
    )
