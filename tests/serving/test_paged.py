"""course_utils.serving.paged: the engine's own attention path (rows at their own positions, a paged KV cache,
packed rows attended per group), checked against chapter 2's plain attention."""

from __future__ import annotations

import pytest
import torch

from course_utils import attention
from course_utils.model import GPT, GPTConfig
from course_utils.serving.paged import PagedKVCache, paged_attention, rope_at

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # grouped-query attention (2 KV heads for 4 query heads) so the pool's H_kv differs from H
    return GPT(GPTConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)).eval()


def pool_caches(model, positions, slots_per_row=16, **kw):
    """One PagedKVCache per layer for rows at ``positions`` [B, T]: row r's position p lives in slot r·16 + p."""
    attn = model.blocks[0].attn
    B, T = positions.shape
    write = positions + slots_per_row * torch.arange(B)[:, None]
    L = int(positions.max()) + 1
    read = torch.arange(L)[None] + slots_per_row * torch.arange(B)[:, None]
    shape = (B * slots_per_row, attn.n_kv_heads, attn.head_dim)
    return [
        PagedKVCache(torch.zeros(shape), torch.zeros(shape), write, read, positions=positions, **kw)
        for _ in model.blocks
    ]


def test_the_old_import_path_gives_the_same_class():
    from course_utils.attention import PagedKVCache as old

    assert old is PagedKVCache
    with pytest.raises(AttributeError, match="no attribute 'PagedKVCach'"):
        attention.PagedKVCach  # noqa: B018 - a typo still fails as it should


def test_ragged_rows_through_the_models_forward_give_each_rows_own_logits(model):
    """Two prompts of 9 and 4 tokens, at their own positions in one batch, each get what they get alone."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(0, 128, (9,), generator=g), torch.randint(0, 128, (4,), generator=g)
    x = torch.zeros(2, 9, dtype=torch.long)
    x[0], x[1, :4] = a, b
    pos = torch.arange(9).repeat(2, 1)
    logits, _ = model(x, caches=pool_caches(model, pos))
    torch.testing.assert_close(logits[0], model(a[None])[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1, :4], model(b[None])[0][0], atol=1e-5, rtol=1e-5)


def test_decoding_at_different_positions_equals_the_kv_cached_forward(model):
    """Row 0 decodes its 6th token while row 1 decodes its 3rd: the same logits as chapter 3's KV cache gives."""
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(0, 128, (6,), generator=g), torch.randint(0, 128, (3,), generator=g)
    caches = pool_caches(model, torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, 2, 2]]))  # row 1's prompt, padded
    model(torch.stack([a[:5], torch.cat([b[:2], b[1:2].repeat(3)])]), caches=caches)
    step = pool_caches(model, torch.tensor([[5], [2]]))
    for old, new in zip(caches, step):  # the next pass reads the same pool
        new.k_pool, new.v_pool = old.k_pool, old.v_pool
    logits, _ = model(torch.stack([a[5:], b[2:]]), caches=step)
    want_a, want_b = model(a[None])[0][0, -1], model(b[None])[0][0, -1]
    torch.testing.assert_close(logits[0, -1], want_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1, -1], want_b, atol=1e-5, rtol=1e-5)


def test_a_packed_row_attended_per_group_equals_each_sequence_alone(model):
    """Two prompts packed in one row (selective batching): the mask and the groups keep them apart."""
    attn = model.blocks[0].attn
    x = torch.randn(1, 7, attn.d_model, generator=torch.Generator().manual_seed(3))
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3]])  # sequence A: 3 tokens, sequence B: 4
    owner = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    mask = (owner[:, None] == owner[None, :])[None, None]
    shape = (16, attn.n_kv_heads, attn.head_dim)
    slots = torch.arange(7)[None]
    cache = PagedKVCache(torch.zeros(shape), torch.zeros(shape), slots, slots, positions, [(0, 3, 0, 3), (3, 7, 3, 7)])
    with torch.no_grad():
        out = paged_attention(attn, x, positions, cache=cache, attn_mask=mask)
        torch.testing.assert_close(out[:, :3], attn(x[:, :3]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[:, 3:], attn(x[:, 3:]), atol=1e-5, rtol=1e-5)
        unmasked = paged_attention(attn, x, positions, cache=PagedKVCache(*cache_parts(cache), positions))
    assert (unmasked[:, 3:] - attn(x[:, 3:])).abs().max() > 1e-3  # without mask and groups B sees A's keys


def cache_parts(cache):
    return cache.k_pool, cache.v_pool, cache.write_slots, cache.read_slots


def test_rope_at_row_positions_equals_apply_rope_at_an_offset():
    cos, sin = attention.rope_frequencies(8, 32)
    x = torch.randn(2, 3, 4, 8)
    got = rope_at(x, cos, sin, torch.tensor([[5, 6, 7, 8], [0, 1, 2, 3]]))
    torch.testing.assert_close(got[0], attention.apply_rope(x[:1], cos, sin, offset=5)[0])
    torch.testing.assert_close(got[1], attention.apply_rope(x[1:], cos, sin)[0])


def test_paged_cache_roundtrip():
    pool_k, pool_v = torch.zeros(4 * 2, 1, 2), torch.zeros(4 * 2, 1, 2)
    k = torch.arange(6.0).reshape(1, 1, 3, 2)
    # positions 0, 1, 2 of one sequence in blocks [3, 1]: slots 6, 7, 2
    cache = PagedKVCache(pool_k, pool_v, torch.tensor([[6, 7, 2]]), torch.tensor([[6, 7, 2]]))
    k_all, v_all = cache.update(k, k + 1)
    assert torch.equal(k_all, k) and torch.equal(v_all, k + 1)
    assert torch.equal(pool_k[2, 0], torch.tensor([4.0, 5.0]))


def test_the_paged_path_checks_its_inputs(model):
    attn = model.blocks[0].attn
    x = torch.zeros(1, 2, attn.d_model)
    pool = torch.zeros(16, attn.n_kv_heads, attn.head_dim)
    slots = torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="needs positions"):
        attn(x, cache=PagedKVCache(pool, pool.clone(), slots, slots))
    with pytest.raises(ValueError, match="positions must have shape"):
        paged_attention(attn, x, torch.tensor([[0, 1, 2]]))
    with pytest.raises(TypeError, match="positions"):
        paged_attention(attn, x, torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 128\)"):
        model(torch.tensor([[1, 2]]), caches=pool_caches(model, torch.tensor([[0, 500]]), slots_per_row=512))
    with pytest.raises(TypeError, match="attn must be a MultiHeadAttention"):
        paged_attention(model.blocks[0], x, slots)
    with pytest.raises(TypeError, match="cache must be a PagedKVCache"):
        paged_attention(attn, x, slots, cache=attention.KVCache())
    with pytest.raises(ValueError, match="k_pool"):
        PagedKVCache(torch.zeros(4, 2), pool, slots, slots)
    # positions 0, 1 through the paged cache give what the plain forward gives
    out = attn(x, cache=PagedKVCache(pool, pool.clone(), slots, slots, positions=slots))
    assert torch.allclose(out, attn(x), atol=1e-6)
