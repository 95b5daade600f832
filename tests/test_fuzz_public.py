"""Property-based fuzz of course_utils' public functions: one bad argument at a time must be a ValueError/TypeError
that names the argument — never an IndexError, a RuntimeError from deep inside torch, or a silent NaN.

Each row of :data:`CASES` is a function, keyword arguments that work, and the kind of each argument under test;
hypothesis draws a bad value of that kind (NaN, ±inf, 0, negatives, wrong types, wrong-rank or wrong-dtype
tensors) for one argument, the others stay valid. Bounded: a few examples per (function, argument) pair.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from course_utils import attention, cascade, data, distributed, layers, model, moe, moe_lm, quantize, rag, timing, world
from course_utils.caches import ExactCache, SemanticCache, paraphrase_stream
from course_utils.ratelimit import TokenBucket
from course_utils.resilience import CircuitBreaker, backoff_delay, retry_call

NAN, INF = float("nan"), float("inf")
WRONG_TYPES = st.sampled_from(["3", [2], b"x", object()])  # None is valid for some (top_k, ttl_s)

# Bad values per kind of argument (never a valid value of that kind). The special values every argument of a kind
# is tried with (all of them, not left to chance) ...
SPECIAL = {
    "size": [0, -1, NAN, INF, -INF, 2.5, True, "3"],
    "count": [-1, NAN, INF, 1.5, True, "3"],
    "positive": [0, 0.0, -1, NAN, INF, -INF, "1"],
    "nonnegative": [-1, -1e-9, NAN, INF, -INF, "1"],
    "probability": [-0.1, 1.5, NAN, INF, -INF, "0.5"],
}
# ... and what hypothesis draws beyond them
BAD = {
    "size": st.one_of(st.integers(max_value=0), st.sampled_from(SPECIAL["size"]), WRONG_TYPES),
    "count": st.one_of(st.integers(max_value=-1), st.sampled_from(SPECIAL["count"]), WRONG_TYPES),
    "positive": st.one_of(st.floats(max_value=0.0), st.sampled_from(SPECIAL["positive"]), WRONG_TYPES),
    "nonnegative": st.one_of(st.floats(max_value=-1e-9), st.sampled_from(SPECIAL["nonnegative"]), WRONG_TYPES),
    "probability": st.one_of(
        st.floats(min_value=1.0001, allow_nan=False),
        st.floats(max_value=-1e-9),
        st.sampled_from(SPECIAL["probability"]),
        WRONG_TYPES,
    ),
}


def _tensor_kind(shape: tuple, dtype=torch.float32, finite: bool = True, poison=(NAN, INF, -INF), ranks=None):
    """Bad tensors for an argument whose valid value has ``shape``/``dtype``: other ranks (``ranks``: the bad
    ones, default every rank 0..4 but the valid one), an int dtype, a list; with ``finite``, the valid shape holding
    one of ``poison``."""
    other_ranks = ranks or [r for r in range(0, 5) if r != len(shape)]
    wrong_rank = st.sampled_from(other_ranks).map(lambda r: torch.ones((2,) * r))
    options = [wrong_rank, st.just([[1.0, 2.0]]), st.just("tensor")]
    if dtype.is_floating_point:
        options.append(st.just(torch.ones(shape, dtype=torch.long)))
    if finite:

        def poisoned(v):
            t = torch.ones(shape, dtype=dtype)
            t.view(-1)[0] = v
            return t

        options.append(st.sampled_from(poison).map(poisoned))
    return st.one_of(*options)


def T(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype)


MOE_KW = dict(d_model=8, d_ff=16, num_experts=4, top_k=2)
EMB = lambda text: np.ones(4)  # noqa: E731 — the caches need an embedder; its output is never used here
DOCS = [["a", "b"], ["b", "c"]]

# (id, function, valid kwargs, {argument: kind}); a kind is a key of BAD, a list of bad values or a strategy
CASES = [
    (
        "quantize_tensor",
        quantize.quantize_tensor,
        dict(w=T(4, 8), bits=8, group_size=4),
        {"w": _tensor_kind((4, 8), ranks=[0]), "bits": "size", "group_size": "size"},
    ),
    (
        "absmax_quantize",
        quantize.absmax_quantize,
        dict(w=T(4, 8), bits=4),
        {"w": _tensor_kind((4, 8), ranks=[0]), "bits": "size"},
    ),
    (
        "quantize_model",
        quantize.quantize_model,
        dict(model=torch.nn.Sequential(torch.nn.Linear(8, 4)), bits=8),
        {"bits": "size", "group_size": "size"},
    ),
    (
        "route",
        moe.route,
        dict(logits=T(5, 4), top_k=2),
        {
            "logits": _tensor_kind((5, 4), finite=False),
            "top_k": "size",
            "routed_scaling_factor": "positive",
            "n_group": "size",
            "topk_group": "size",
        },
    ),
    (
        "expert_choice_routing",
        moe.expert_choice_routing,
        dict(logits=T(6, 4), capacity=2),
        {"logits": _tensor_kind((6, 4), finite=False), "capacity": "size"},
    ),
    (
        "expert_capacity",
        moe.expert_capacity,
        dict(num_tokens=16, top_k=2, num_experts=4, capacity_factor=1.25),
        {"num_tokens": "count", "top_k": "size", "num_experts": "size", "capacity_factor": "positive"},
    ),
    (
        "apply_capacity",
        moe.apply_capacity,
        dict(topk_idx=torch.tensor([[0, 1], [1, 2]]), num_experts=4, capacity=1),
        {"topk_idx": _tensor_kind((2, 2), dtype=torch.long, finite=False), "num_experts": "size", "capacity": "count"},
    ),
    (
        "load_balancing_loss",
        moe.load_balancing_loss,
        dict(router_logits=T(6, 4), num_experts=4, top_k=2),
        {"num_experts": "size", "top_k": "size"},
    ),
    (
        "MoELayer",
        moe.MoELayer,
        MOE_KW,
        {
            "d_model": "size",
            "d_ff": "size",
            "num_experts": "size",
            "top_k": "size",
            "routed_scaling_factor": "positive",
            "capacity_factor": "positive",
            "router_jitter": "probability",
        },
    ),
    (
        "sdpa",
        attention.scaled_dot_product_attention,
        dict(q=T(1, 2, 3, 4), k=T(1, 2, 5, 4), v=T(1, 2, 5, 4)),
        {
            "q": _tensor_kind((1, 2, 3, 4), finite=False),
            "k": _tensor_kind((1, 2, 5, 4), finite=False),
            "scale": "positive",
        },
    ),
    (
        "online_softmax_attention",
        attention.online_softmax_attention,
        dict(q=T(1, 2, 3, 4), k=T(1, 2, 5, 4), v=T(1, 2, 5, 4)),
        {
            "q": _tensor_kind((1, 2, 3, 4), finite=False),
            "v": _tensor_kind((1, 2, 5, 4), finite=False),
            "block_size": "size",
            "scale": "positive",
        },
    ),
    (
        "split_heads",
        attention.split_heads,
        dict(x=T(2, 3, 8), n_heads=2),
        {"x": _tensor_kind((2, 3, 8), finite=False), "n_heads": "size"},
    ),
    (
        "repeat_kv",
        attention.repeat_kv,
        dict(x=T(1, 2, 3, 4), n_rep=2),
        {"x": _tensor_kind((1, 2, 3, 4), finite=False), "n_rep": "size"},
    ),
    (
        "rope_frequencies",
        attention.rope_frequencies,
        dict(head_dim=8, max_seq_len=16),
        {"head_dim": "size", "max_seq_len": "size", "base": "positive"},
    ),
    (
        "apply_rope",
        attention.apply_rope,
        dict(x=T(1, 2, 3, 8), cos=torch.ones(16, 8), sin=torch.zeros(16, 8)),
        {"x": _tensor_kind((1, 2, 3, 8), finite=False), "cos": _tensor_kind((16, 8), finite=False), "offset": "count"},
    ),
    ("causal_mask", attention.causal_mask, dict(n_q=3, n_k=5), {"n_q": "size", "n_k": "size"}),
    (
        "MultiHeadAttention",
        attention.MultiHeadAttention,
        dict(d_model=8, n_heads=2),
        {"d_model": "size", "n_heads": "size", "n_kv_heads": "size"},
    ),
    (
        "sample_next_token",
        model.sample_next_token,
        dict(logits=T(2, 10), temperature=1.0, top_k=3, top_p=0.9),
        {
            "logits": _tensor_kind((2, 10), poison=(NAN, INF)),
            "temperature": "nonnegative",
            "top_k": "size",
            "top_p": "probability",
        },
    ),
    (
        "kv_cache_bytes",
        model.kv_cache_bytes,
        dict(n_tokens=10, n_layers=2, n_kv_heads=2, head_dim=4),
        {
            "n_tokens": "count",
            "n_layers": "size",
            "n_kv_heads": "size",
            "head_dim": "size",
            "bytes_per_number": "positive",
        },
    ),
    (
        "rms_norm",
        layers.rms_norm,
        dict(x=T(2, 8), weight=torch.ones(8)),
        {"x": _tensor_kind((2, 8), finite=False), "weight": _tensor_kind((8,), finite=False), "eps": "positive"},
    ),
    ("RMSNorm", layers.RMSNorm, dict(dim=8), {"dim": "size", "eps": "positive"}),
    ("SwiGLU", layers.SwiGLU, dict(d_model=8, d_ff=16), {"d_model": "size", "d_ff": "size", "dropout": "probability"}),
    (
        "chunk_text",
        rag.chunk_text,
        dict(text="one two three four five", chunk_size=3, overlap=1),
        {"chunk_size": "size", "overlap": "count"},
    ),
    ("cosine_top_k", rag.cosine_top_k, dict(query=np.ones(3), matrix=np.eye(3), k=2), {"k": "size"}),
    (
        "reciprocal_rank_fusion",
        rag.reciprocal_rank_fusion,
        dict(rankings=[["a", "b"], ["b"]], k=60),
        {"k": "nonnegative"},
    ),
    ("recall_at_k", rag.recall_at_k, dict(rankings=[["a", "b"]], relevant=[["b"]], k=1), {"k": "size"}),
    (
        "bm25_scores",
        rag.bm25_scores,
        dict(query_tokens=["a"], docs_tokens=DOCS),
        {"k1": "nonnegative", "b": "probability"},
    ),
    ("BM25Index", rag.BM25Index, dict(), {"k1": "nonnegative", "b": "probability"}),
    ("make_world", world.make_world, dict(seed=0, n_entities=5), {"n_entities": "size"}),
    ("update_world", world.update_world, dict(world=world.make_world(0, 5), fraction=0.5), {"fraction": "probability"}),
    (
        "expert_shards",
        distributed.expert_shards,
        dict(num_experts=4, world_size=2),
        {"num_experts": "size", "world_size": "size"},
    ),
    (
        "communication_bytes",
        distributed.communication_bytes,
        dict(num_tokens=16, top_k=2, d_model=8, world_size=2),
        {
            "num_tokens": "count",
            "top_k": "size",
            "d_model": "size",
            "world_size": "size",
            "bytes_per_value": "positive",
        },
    ),
    ("dead_experts", moe_lm.dead_experts, dict(load=[1.0, 2.0, 3.0]), {"threshold": "nonnegative"}),
    (
        "routing_stats",
        moe_lm.routing_stats,
        dict(expert_idx=torch.tensor([0, 1]), labels=torch.tensor([0, 1]), num_labels=2, num_experts=2),
        {"num_labels": "size", "num_experts": "size"},
    ),
    (
        "consecutive_same_expert_rate",
        moe_lm.consecutive_same_expert_rate,
        dict(expert_ids=torch.tensor([[0, 1, 1]]), num_experts=2),
        {"num_experts": "size"},
    ),
    (
        "retry_call",
        retry_call,
        dict(fn=lambda: 1),
        {"max_attempts": "size", "base_delay": "nonnegative", "max_delay": "nonnegative"},
    ),
    ("backoff_delay", backoff_delay, dict(n=1), {"n": "size", "base_delay": "nonnegative", "max_delay": "nonnegative"}),
    (
        "TokenBucket",
        TokenBucket,
        dict(rate_per_s=1.0, capacity=2.0),
        {"rate_per_s": "positive", "capacity": "positive"},
    ),
    ("CircuitBreaker", CircuitBreaker, dict(), {"failure_threshold": "size", "reset_timeout_s": "positive"}),
    (
        "SemanticCache",
        SemanticCache,
        dict(embed=EMB),
        {"threshold": "positive", "ttl_s": "positive", "max_entries": "size"},
    ),
    ("ExactCache", ExactCache, dict(), {"ttl_s": "positive"}),
    (
        "cascade_outcome",
        cascade.cascade_outcome,
        dict(confidence=[0.1, 0.9], small_correct=[True, False], large_correct=[True, True], threshold=0.5),
        {"cost_small": "positive", "cost_large": "positive"},
    ),
    (
        "fit_logistic",
        cascade.fit_logistic,
        dict(X=np.eye(3), y=np.array([0.0, 1.0, 1.0]), steps=3),
        {"l2": "nonnegative", "steps": "size", "lr": "positive"},
    ),
    # shapes that do not fit each other (the other arguments valid): named, never a RuntimeError from matmul
    (
        "sdpa-shapes",
        attention.scaled_dot_product_attention,
        dict(q=T(1, 2, 3, 4), k=T(1, 2, 5, 4), v=T(1, 2, 5, 4)),
        {"k": [T(1, 2, 5, 3), T(1, 3, 5, 4)], "v": [T(1, 2, 4, 4), T(1, 3, 5, 4)]},
    ),
    (
        "online-shapes",
        attention.online_softmax_attention,
        dict(q=T(1, 2, 3, 4), k=T(1, 2, 5, 4), v=T(1, 2, 5, 4)),
        {"k": [T(1, 2, 5, 3)], "v": [T(1, 2, 4, 4)]},
    ),
    (
        "sdpa-gqa-shapes",
        attention.scaled_dot_product_attention,
        dict(q=T(1, 4, 3, 4), k=T(1, 2, 5, 4), v=T(1, 2, 5, 4), enable_gqa=True),
        {"k": [T(1, 3, 5, 4)], "attn_mask": [torch.ones(4, 4, dtype=torch.bool), torch.ones(3, 5, dtype=torch.long)]},
    ),
    (
        "kv_cache_step",
        model.kv_cache_step,
        dict(q=T(1, 2, 1, 4), k_new=T(1, 2, 1, 4), v_new=T(1, 2, 1, 4), k_cache=T(1, 2, 3, 4), v_cache=T(1, 2, 3, 4)),
        {"k_new": [T(1, 2, 1, 3), T(2, 4)], "k_cache": [T(1, 2, 3, 5), T(1, 3, 3, 4)]},
    ),
    ("rms_norm-shapes", layers.rms_norm, dict(x=T(2, 8), weight=torch.ones(8)), {"weight": [torch.ones(7)]}),
    ("route-bias", moe.route, dict(logits=T(5, 4), top_k=2), {"bias": [torch.zeros(3), torch.zeros(4, 1)]}),
    (
        "arithmetic_documents",
        data.arithmetic_documents,
        dict(n_lines=10, lines_per_doc=5),
        {"n_lines": "size", "lines_per_doc": "size"},
    ),
    ("course_corpus", data.course_corpus, dict(max_bytes=100), {"max_bytes": "size"}),
    ("split_documents", data.split_documents, dict(), {"val_fraction": "probability"}),
    (
        "paraphrase_stream",
        paraphrase_stream,
        dict(n=5),
        {"n": "size", "tail_fraction": "probability", "zipf_s": "nonnegative"},
    ),
    (
        "moe_training_loss",
        moe_lm.moe_training_loss,
        dict(lm_loss=torch.tensor(1.0), moe_aux=[]),
        {"aux_loss_coef": "nonnegative", "z_loss_coef": "nonnegative"},
    ),
    ("percentile", timing.percentile, dict(values=[1.0, 2.0], q=50), {"q": [NAN, INF, -1, 100.5, "50"]}),
    (
        "synthetic_enlargement",
        rag.synthetic_enlargement,
        dict(chunks=[rag.Chunk("d", "t", "a b c")], vectors=np.ones((1, 3), np.float32), factor=2),
        {"factor": "size"},
    ),
    ("HybridIndex", rag.HybridIndex, dict(), {"k_rrf": "nonnegative", "depth": "size"}),
    ("DenseIndex", rag.DenseIndex, dict(), {"m": "size", "ef_construction": "size", "ef_search": "size"}),
    (
        "ExpertParallelMoE",
        distributed.ExpertParallelMoE,
        dict(layer=moe.MoELayer(**MOE_KW), rank=1, world_size=2),
        {"rank": [-1, 2, 1.0, NAN, "1"], "world_size": "size"},
    ),
    (
        "fake_quantize_experts_",
        quantize.fake_quantize_experts_,
        dict(model=moe.MoELayer(**MOE_KW), bits=8),
        {"bits": "size", "group_size": "size"},
    ),
    (
        "GPTConfig",
        model.GPTConfig,
        dict(vocab_size=16, d_model=8, n_layers=1, n_heads=2, max_seq_len=8),
        {
            "vocab_size": "size",
            "d_model": "size",
            "n_heads": "size",
            "max_seq_len": "size",
            "d_ff": "size",
            "rope_base": [1, 0.5, NAN, INF, "1e4"],
            "dropout": [-0.1, 1.0, NAN, "0"],
            "norm_eps": "positive",
        },
    ),
    (
        "MoELayer.forward",
        moe.MoELayer(**MOE_KW),
        dict(x=T(3, 8)),
        {"x": [T(3, 7), torch.ones(3, 8, dtype=torch.long), [[1.0] * 8], torch.tensor(1.0)]},
    ),
    (
        "MultiHeadAttention.forward",
        attention.MultiHeadAttention(8, 2),
        dict(x=T(1, 3, 8)),
        {"x": [T(1, 3, 7), T(3, 8), torch.ones(1, 3, 8, dtype=torch.long), "x"]},
    ),
]
PAIRS = [
    pytest.param(fn, kwargs, arg, kind, id=f"{name}-{arg}")
    for name, fn, kwargs, kinds in CASES
    for arg, kind in kinds.items()
]


def test_every_case_works_with_its_valid_arguments():
    for _, fn, kwargs, _ in CASES:  # otherwise a ValueError below could come from a bad *valid* argument
        fn(**kwargs)


@pytest.mark.parametrize("fn,kwargs,arg,kind", PAIRS)
@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(drawn=st.data())
def test_one_bad_argument_is_a_value_or_type_error_naming_it(fn, kwargs, arg, kind, drawn):
    if isinstance(kind, list):
        kind = st.sampled_from(kind)
    _expect_named_error(fn, kwargs, arg, drawn.draw(BAD[kind] if isinstance(kind, str) else kind, label=arg))


def _expect_named_error(fn, kwargs, arg, bad):
    with pytest.raises((ValueError, TypeError)) as info:
        fn(**{**kwargs, arg: bad})
    # a whole word: "b" must not be found in "must be", nor "k" in "top_k"
    assert re.search(rf"\b{re.escape(arg)}\b", str(info.value)), (
        f"{getattr(fn, '__name__', type(fn).__name__)}({arg}={bad!r}): the error does not name {arg}: {info.value}"
    )


@pytest.mark.parametrize("fn,kwargs,arg,kind", [p for p in PAIRS if isinstance(p.values[3], (str, list))])
def test_every_special_value_is_refused_by_name(fn, kwargs, arg, kind):
    """NaN, ±inf, 0, negatives, wrong types (and each listed bad tensor), every one of them, for every argument."""
    for bad in SPECIAL[kind] if isinstance(kind, str) else kind:
        _expect_named_error(fn, kwargs, arg, bad)
