"""course_utils.attention pinned to PyTorch's SDPA and to Hugging Face's rotary embeddings."""

from __future__ import annotations

import ast
import inspect
import math
import textwrap

import pytest
import torch
import torch.nn.functional as F

from course_utils.attention import (
    KVCache,
    MultiHeadAttention,
    apply_rope,
    causal_mask,
    merge_heads,
    online_softmax_attention,
    repeat_kv,
    rope_frequencies,
    rotate_half,
    scaled_dot_product_attention,
    split_heads,
)

F64 = dict(dtype=torch.float64)


def _qkv(batch, n_q, n_k, d, dv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, n_q, d, generator=g, **F64)
    k = torch.randn(*batch, n_k, d, generator=g, **F64)
    v = torch.randn(*batch, n_k, dv or d, generator=g, **F64)
    return q, k, v


SHAPES = [((2, 3), 5, 5, 8, 8), ((1, 2), 3, 7, 4, 6), ((2, 1), 9, 4, 16, 3), ((4,), 1, 6, 8, 8), ((), 6, 6, 2, 5)]


@pytest.mark.parametrize("batch,n_q,n_k,d,dv", SHAPES)
def test_equals_torch_sdpa_plain_causal_scaled(batch, n_q, n_k, d, dv):
    q, k, v = _qkv(batch, n_q, n_k, d, dv)
    for kwargs in ({}, {"is_causal": True}, {"scale": 0.37}, {"is_causal": True, "scale": 1.0}):
        out, w = scaled_dot_product_attention(q, k, v, **kwargs)
        ref = F.scaled_dot_product_attention(q, k, v, **kwargs)
        assert out.shape == ref.shape and w.shape == (*batch, n_q, n_k)
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
        # weights are a distribution over keys for every query that may attend to something
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("batch,n_q,n_k,d,dv", SHAPES)
def test_equals_torch_sdpa_with_masks(batch, n_q, n_k, d, dv):
    q, k, v = _qkv(batch, n_q, n_k, d, dv, seed=1)
    g = torch.Generator().manual_seed(2)
    bool_mask = torch.rand(n_q, n_k, generator=g) > 0.4
    bool_mask[:, 0] = True  # keep every row attending to something; fully masked rows are tested separately
    float_mask = torch.randn(*batch, n_q, n_k, generator=g, **F64)
    for mask in (bool_mask, float_mask) + ((bool_mask[None],) if batch else ()):
        for causal in (False, True):
            out, w = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
            # PyTorch refuses attn_mask together with is_causal; ours applies both, so fold the triangle in.
            tri = causal_mask(n_q, n_k)
            both = (
                mask
                if not causal
                else (mask & tri if mask.dtype == torch.bool else mask.masked_fill(~tri, float("-inf")))
            )
            ref = F.scaled_dot_product_attention(q, k, v, attn_mask=both)
            torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
            if mask.dtype == torch.bool:
                allowed = (mask & tri if causal else mask).expand(w.shape)
                assert (w[~allowed] == 0).all()


def test_fully_masked_row_gives_zeros_like_torch():
    q, k, v = _qkv((1, 2), 3, 4, 8)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1] = False
    out, w = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-10, rtol=0)
    assert not torch.isnan(out).any() and (w[..., 1, :] == 0).all() and (out[..., 1, :] == 0).all()


def test_gqa_matches_torch_enable_gqa():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 8, 5, 4, generator=g, **F64)
    k = torch.randn(2, 2, 5, 4, generator=g, **F64)
    v = torch.randn(2, 2, 5, 4, generator=g, **F64)
    out, _ = scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


def test_scale_matters():
    """Dropping 1/√d changes the answer (so the default really is 1/√d)."""
    q, k, v = _qkv((1,), 4, 4, 64)
    out, _ = scaled_dot_product_attention(q, k, v)
    unscaled, _ = scaled_dot_product_attention(q, k, v, scale=1.0)
    torch.testing.assert_close(out, scaled_dot_product_attention(q, k, v, scale=1 / 8)[0], atol=0, rtol=0)
    assert (out - unscaled).abs().max() > 1e-3


def test_causal_mask():
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    assert torch.equal(causal_mask(2, 4), torch.ones(2, 4, dtype=torch.bool).tril())  # top-left, like torch
    assert torch.equal(causal_mask(2, 4, offset=2), torch.ones(2, 4, dtype=torch.bool).tril(2))  # bottom-right
    assert causal_mask(3).dtype == torch.bool


@pytest.mark.parametrize("n,block", [(1, 4), (7, 3), (64, 16), (65, 16), (33, 128)])
def test_online_softmax_equals_naive(n, block):
    q, k, v = _qkv((2, 3), n, n, 8, 5, seed=n)
    for causal in (False, True):
        ref, _ = scaled_dot_product_attention(q, k, v, is_causal=causal)
        got = online_softmax_attention(q, k, v, block_size=block, is_causal=causal)
        torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)


def test_online_softmax_rectangular_and_large_scores():
    q, k, v = _qkv((2,), 5, 23, 8, seed=4)
    q = q * 40  # scores in the hundreds: a naive exp() would overflow; the running max keeps it exact
    for causal in (False, True):
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.testing.assert_close(
            online_softmax_attention(q, k, v, block_size=4, is_causal=causal), ref, atol=1e-10, rtol=0
        )


def test_online_softmax_never_builds_n_by_n():
    """The largest score block it materialises is n × block_size, not n × n (checked through q @ kᵀ's shapes)."""
    n, block = 256, 32
    q, k, v = _qkv((1,), n, n, 8)
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                seen.append(out.numel())
            return out

    with Spy():
        online_softmax_attention(q, k, v, block_size=block)
    assert max(seen) <= n * max(block, 8) and max(seen) < n * n


def test_split_merge_heads_roundtrip():
    x = torch.randn(2, 5, 12)
    h = split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    assert torch.equal(h[:, 1], x[..., 4:8])  # head 1 is the second slice of the model dimension
    assert torch.equal(merge_heads(h), x)


def test_repeat_kv():
    x = torch.randn(2, 3, 4, 5)
    r = repeat_kv(x, 2)
    assert r.shape == (2, 6, 4, 5)
    for h in range(6):
        assert torch.equal(r[:, h], x[:, h // 2])
    assert repeat_kv(x, 1) is x


# -------------------------------------------------------------------------------------------------- RoPE
def test_rope_keeps_norms():
    cos, sin = rope_frequencies(16, 64, dtype=torch.float64)
    x = torch.randn(2, 3, 64, 16, **F64)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-12, rtol=0)


def test_rope_dot_product_depends_only_on_offset():
    cos, sin = rope_frequencies(8, 128, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(8, generator=g, **F64), torch.randn(8, generator=g, **F64)

    def at(x, pos):  # x placed at absolute position pos
        return apply_rope(x.view(1, 1, 1, 8), cos, sin, offset=pos).flatten()

    for delta in (0, 1, 5, 17):
        dots = [at(q, m + delta) @ at(k, m) for m in (0, 3, 40, 100)]
        assert max(dots) - min(dots) < 1e-10, (delta, dots)
    assert abs(at(q, 5) @ at(k, 0) - at(q, 9) @ at(k, 0)) > 1e-3  # ... and does depend on the offset


def test_rope_offset_equals_slice():
    cos, sin = rope_frequencies(8, 32, dtype=torch.float64)
    x = torch.randn(1, 2, 10, 8, **F64)
    full = apply_rope(x, cos, sin)
    torch.testing.assert_close(apply_rope(x[:, :, 6:], cos, sin, offset=6), full[:, :, 6:], atol=0, rtol=0)


def test_rope_matches_transformers_llama():
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    head_dim, T, base = 16, 20, 500000.0
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=T, rope_theta=base)
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": base}
    rot = llama.LlamaRotaryEmbedding(cfg)
    q, k = torch.randn(2, 4, T, head_dim), torch.randn(2, 4, T, head_dim)
    hf_cos, hf_sin = rot(q, torch.arange(T)[None].expand(2, T))
    cos, sin = rope_frequencies(head_dim, T, base)
    torch.testing.assert_close(cos, hf_cos[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sin, hf_sin[0], atol=1e-5, rtol=1e-5)
    hq, hk = llama.apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    torch.testing.assert_close(apply_rope(q, cos, sin), hq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(apply_rope(k, cos, sin), hk, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rotate_half(q), llama.rotate_half(q), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------- KV cache
def test_kv_cache_appends_along_time():
    cache = KVCache()
    assert cache.length == 0
    chunks = [torch.randn(2, 3, t, 4) for t in (5, 1, 1, 20)]
    for c in chunks:
        k_all, v_all = cache.update(c, -c)
    full = torch.cat(chunks, dim=2)
    assert cache.length == len(cache) == 27
    assert torch.equal(k_all, full) and torch.equal(v_all, -full)
    cache.reset()
    assert cache.length == 0
    k_all, _ = cache.update(chunks[1], chunks[1])
    assert k_all.shape == (2, 3, 1, 4)


def test_kv_cache_rejects_mismatched_shapes():
    cache = KVCache()
    cache.update(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4))
    with pytest.raises(ValueError, match="do not match the cache"):
        cache.update(torch.randn(1, 3, 1, 4), torch.randn(1, 3, 1, 4))
    with pytest.raises(ValueError, match=r"k \(1, 2, 1, 4\), v \(1, 2, 2, 4\)"):
        cache.update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 2, 4))


# ------------------------------------------------------------------------------------------------- module
def _mha(**kw):
    torch.manual_seed(0)
    return MultiHeadAttention(**{"d_model": 32, "n_heads": 4, **kw}).double().eval()


@pytest.mark.parametrize("n_kv_heads,rope", [(None, True), (2, True), (1, False), (4, False)])
def test_mha_fused_and_explicit_paths_agree(n_kv_heads, rope):
    mha = _mha(n_kv_heads=n_kv_heads, rope=rope)
    x = torch.randn(3, 9, 32, **F64)
    fast = mha(x)
    slow, w = mha(x, return_weights=True)
    assert fast.shape == (3, 9, 32) and w.shape == (3, 4, 9, 9)
    torch.testing.assert_close(fast, slow, atol=1e-10, rtol=0)
    assert (w.triu(1) == 0).all()  # causal: no weight on the future
    pad = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    pad[0, ..., 6:] = False  # sequence 0 has 3 padding positions at the end
    fast, (slow, w) = mha(x, attn_mask=pad), mha(x, attn_mask=pad, return_weights=True)
    torch.testing.assert_close(fast, slow, atol=1e-10, rtol=0)
    assert (w[0, :, :, 6:] == 0).all()


def test_mha_is_causal_future_does_not_change_past():
    mha = _mha(n_kv_heads=2)
    x = torch.randn(2, 10, 32, **F64)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 4, 32, **F64)
    torch.testing.assert_close(mha(x)[:, :6], mha(y)[:, :6], atol=1e-12, rtol=0)


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
def test_mha_kv_cache_equals_full_recompute(n_kv_heads):
    mha = _mha(n_kv_heads=n_kv_heads)
    x = torch.randn(2, 12, 32, **F64)
    full, w_full = mha(x, return_weights=True)
    for return_weights in (False, True):
        cache = KVCache()
        pieces = []
        for a, b in ((0, 5), (5, 6), (6, 7), (7, 12)):  # a prompt, two single tokens, then a chunk
            out = mha(x[:, a:b], cache=cache, return_weights=return_weights)
            if return_weights:
                out, w = out
                torch.testing.assert_close(w, w_full[:, :, a:b, :b], atol=1e-10, rtol=0)
            pieces.append(out)
        assert cache.length == 12
        torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-10, rtol=0)


def test_mha_float_mask_with_cache():
    mha = _mha()
    x = torch.randn(1, 6, 32, **F64)
    bias = torch.randn(1, 1, 6, 6, **F64)
    full = mha(x, attn_mask=bias)
    cache = KVCache()
    first = mha(x[:, :4], cache=cache, attn_mask=bias[..., :4, :4])
    rest, _ = mha(x[:, 4:], cache=cache, attn_mask=bias[..., 4:, :], return_weights=True)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-10, rtol=0)


def test_mha_gqa_has_fewer_kv_parameters():
    full, gqa = MultiHeadAttention(64, 8), MultiHeadAttention(64, 8, n_kv_heads=2)
    assert gqa.k_proj.weight.shape == (16, 64) and full.k_proj.weight.shape == (64, 64)
    assert isinstance(gqa.q_proj, torch.nn.Linear) and isinstance(gqa.o_proj, torch.nn.Linear)
    cache = KVCache()
    gqa(torch.randn(1, 5, 64), cache=cache)
    k, _ = cache.update(torch.zeros(1, 2, 0, 8), torch.zeros(1, 2, 0, 8))
    assert k.shape == (1, 2, 5, 8)  # the cache holds only the 2 KV heads: 4x less memory than 8


def test_mha_dropout_only_in_training():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2, dropout=0.5)
    x = torch.randn(1, 8, 16)
    mha.train()
    assert not torch.allclose(mha(x), mha(x))
    mha.eval()
    torch.testing.assert_close(mha(x), mha(x))
    torch.testing.assert_close(mha(x), mha(x, return_weights=True)[0], atol=1e-6, rtol=1e-5)


def test_rope_buffers_not_in_state_dict():
    mha = MultiHeadAttention(16, 2)
    assert set(mha.state_dict()) == {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_shapes_name_the_shapes():
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 4, 6), torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match=r"q \(1, 2, 3, 8\), k \(1, 2, 4, 6\)"):
        scaled_dot_product_attention(q, k, v)
    with pytest.raises(ValueError, match=r"k \(1, 2, 4, 8\), v \(1, 2, 5, 8\)"):
        scaled_dot_product_attention(q, torch.randn(1, 2, 4, 8), torch.randn(1, 2, 5, 8))
    with pytest.raises(ValueError, match=r"q \(2, 2, 3, 8\), k \(3, 2, 4, 8\)"):
        scaled_dot_product_attention(torch.randn(2, 2, 3, 8), torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(3, 5\).*\(1, 2, 3, 4\)"):
        scaled_dot_product_attention(q, v, v, attn_mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn_mask must be bool"):
        scaled_dot_product_attention(q, v, v, attn_mask=torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="does not broadcast"):  # would silently grow the output's shape
        scaled_dot_product_attention(q, v, v, attn_mask=torch.ones(5, 1, 2, 3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        scaled_dot_product_attention([1.0], v, v)
    with pytest.raises(ValueError, match="q and k"):
        online_softmax_attention(q, k, v)
    with pytest.raises(ValueError, match="block_size"):
        online_softmax_attention(q, v, v, block_size=0)


def test_bad_module_and_helper_arguments():
    with pytest.raises(ValueError, match="d_model=30 must be divisible by n_heads=4"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="n_heads=6 must be divisible by n_kv_heads=4"):
        MultiHeadAttention(48, 6, n_kv_heads=4)
    mha = MultiHeadAttention(16, 2, max_seq_len=8)
    with pytest.raises(ValueError, match=r"\[B, T, d_model=16\], got shape \(1, 4, 12\)"):
        mha(torch.randn(1, 4, 12))
    with pytest.raises(ValueError, match="max_seq_len=8"):
        mha(torch.randn(1, 9, 16))
    with pytest.raises(ValueError, match="attn_mask of shape"):
        mha(torch.randn(2, 4, 16), attn_mask=torch.ones(3, 1, 1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="cache must be a KVCache"):
        mha(torch.randn(1, 4, 16), cache={})
    with pytest.raises(ValueError, match="divisible by n_heads=5"):
        split_heads(torch.randn(1, 2, 12), 5)
    with pytest.raises(ValueError, match=r"\[B, H, T, d\]"):
        merge_heads(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="head_dim must be even"):
        rope_frequencies(7, 10)
    cos, sin = rope_frequencies(8, 10)
    with pytest.raises(ValueError, match="exceed the 10 positions"):
        apply_rope(torch.randn(1, 1, 4, 8), cos, sin, offset=8)
    with pytest.raises(ValueError, match="head_dim"):
        apply_rope(torch.randn(1, 1, 4, 6), cos, sin)
    with pytest.raises(ValueError, match="n_q must be a positive int"):
        causal_mask(0)
    assert math.isclose(float(rope_frequencies(4, 2)[0][1, 0]), math.cos(1.0), rel_tol=1e-6)


# ------------------------------------------------------------------------------------------ cost of context
def test_tensor_memory_tracker_counts_live_tensors():
    from course_utils.attention import TensorMemoryTracker

    with TensorMemoryTracker() as tracker:
        a = torch.ones(1000)  # 4000 bytes
        b = torch.ones(2000)  # 8000 bytes, while a is alive
        a.add_(1)  # in place: no new memory
        view = b[:10]  # a view: no new memory
        del a, b, view
        c = torch.ones(500)  # a's and b's memory is free again: the peak stays 12000
    assert tracker.peak == 12000
    assert tracker.current == 2000 and c.numel() == 500


def test_attention_cost_naive_is_quadratic_chunked_is_not():
    from course_utils.attention import attention_cost

    small = {m: attention_cost(m, 256, repeats=1) for m in ("naive", "chunked", "torch_sdpa")}
    big = {m: attention_cost(m, 512, repeats=1) for m in ("naive", "chunked", "torch_sdpa")}
    assert big["naive"]["scores_bytes"] == 4 * small["naive"]["scores_bytes"] == 4 * 4 * 256 * 256 * 4
    assert big["naive"]["peak_bytes"] >= 2 * big["naive"]["scores_bytes"]  # scores and weights coexist
    assert 3.5 < big["naive"]["peak_bytes"] / small["naive"]["peak_bytes"] < 4.5
    assert 1.5 < big["chunked"]["peak_bytes"] / small["chunked"]["peak_bytes"] < 2.5
    assert big["chunked"]["peak_bytes"] < big["naive"]["peak_bytes"] / 1.5
    assert big["torch_sdpa"]["peak_bytes"] < big["naive"]["scores_bytes"]  # only the output is a tensor
    assert all(r["seconds"] > 0 for r in big.values())
    with pytest.raises(ValueError, match="method must be one of"):
        attention_cost("flash", 128)


def test_nan_inputs_are_not_hidden():
    q, k, v = _qkv((1,), 3, 3, 4)
    q[0, 1, 0] = float("nan")
    out, _ = scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(3, 3, dtype=torch.bool))
    assert torch.isnan(out[0, 1]).all() and not torch.isnan(out[0, 0]).any()


# ------------------------------------------------------------------------------------------ plain chapter code
def logic_lines(function) -> int:
    """Lines holding statements in ``function``'s body, its docstring left out (comments and blank lines are not
    statements); a statement over several lines counts each line it spans."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
    body = tree.body[1:] if ast.get_docstring(tree) else tree.body
    lines = set()
    for node in ast.walk(ast.Module(body=body, type_ignores=[])):
        if isinstance(node, ast.stmt):
            lines.update(range(node.lineno, node.end_lineno + 1))
    return len(lines)


def test_chapter_2s_forward_stays_plain():
    """Issue #28: chapter 2's forward reads as a learner would write it, ≤ 40 lines of logic (chapter 3's KV cache
    included); the serving engine's paged and packed attention live in course_utils.serving.paged."""
    assert logic_lines(MultiHeadAttention.forward) <= 40
    tree = ast.parse(textwrap.dedent(inspect.getsource(MultiHeadAttention.forward)))
    names = {getattr(n, "id", None) or getattr(n, "attr", None) or getattr(n, "arg", None) for n in ast.walk(tree)}
    for engine_name in ("positions", "PagedKVCache", "groups", "key_positions", "read_slots"):
        assert engine_name not in names, f"chapter 2's forward handles the engine's {engine_name!r}"


def test_logic_lines_counts_statements_not_comments_or_docstrings():
    def short(x):
        """A docstring of
        two lines."""
        # a comment
        y = x + 1

        return y

    def wrapped(x):
        return max(
            x,
            1,
        )

    assert logic_lines(short) == 2 and logic_lines(wrapped) == 4
