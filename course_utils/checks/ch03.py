"""Checks for the chapter-3 lab (a tiny GPT): each compares the learner's function with course_utils' reference."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict

import torch
import torch.nn.functional as F
from safetensors import safe_open

from .. import attention as ref_attention
from .. import model as ref_model
from .. import smollm2
from .. import train as ref_train
from ..attention import apply_rope, repeat_kv, rope_frequencies
from ..data import corpus_dataset
from ..model import GPT, Block, GPTConfig, rms_norm, swiglu
from ..train import configure_optimizer, evaluate, lr_at
from ._core import CountingData, call, compare, exercise, fail, fail_if_not_train_only, passed

__all__ = [
    "check_rms_norm",
    "check_apply_rope",
    "check_swiglu",
    "check_kv_cache_step",
    "check_sample_next_token",
    "check_block_forward",
    "check_gpt_forward",
    "check_next_token_loss",
    "check_lr_schedule",
    "check_train_step",
    "check_trained_gpt",
    "check_train_within_budget",
    "check_adamw_step",
    "check_init_weights",
    "check_runs_smollm2",
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _against_reference(name: str, fn, reference, cases: list[dict], hint: str, atol: float = 1e-5) -> None:
    """Call ``fn(**case)`` and ``reference(**case)`` on every case (inputs cloned) and compare the results."""
    for case in cases:
        got = call(
            name, fn, **{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in case.items()}, inputs=case
        )
        compare(name, got, reference(**case), inputs=case, atol=atol, rtol=1e-4, hint=hint)
    passed(name, len(cases))


@exercise("3.1")
def check_rms_norm(rms_norm) -> None:
    """``rms_norm(x, weight, eps=1e-6)`` over the last dimension."""

    g = _gen(0)
    cases = [
        dict(x=torch.randn(2, 3, 8, generator=g) + 3.0, weight=torch.ones(8), eps=1e-6),  # mean must NOT go
        dict(x=torch.randn(4, 16, generator=g), weight=torch.randn(16, generator=g), eps=1e-6),  # a learned gain
        dict(x=torch.randn(1, 1, 6, generator=g) * 1e-3, weight=torch.ones(6), eps=1e-6),  # tiny: eps placement
        dict(x=torch.zeros(2, 4), weight=torch.ones(4), eps=1e-5),  # all zeros: eps keeps it finite
        dict(x=torch.randn(3, 5, generator=g) * 100, weight=torch.full((5,), 0.5), eps=1e-6),
    ]
    _against_reference(
        "check_rms_norm",
        rms_norm,
        ref_model.rms_norm,
        cases,
        hint="divide x by sqrt(mean(x**2, last dim) + eps), then multiply by weight; "
        "unlike LayerNorm, RMSNorm subtracts no mean",
    )


@exercise("3.2")
def check_apply_rope(apply_rope) -> None:
    """``apply_rope(x, offset=0, base=10000.0)`` on ``x`` [..., T, head_dim], rotate-half layout."""

    def ref(x, offset, base):
        cos, sin = rope_frequencies(x.shape[-1], offset + x.shape[-2], base)
        return ref_attention.apply_rope(x, cos, sin, offset)

    g = _gen(1)
    cases = [
        dict(x=torch.randn(1, 1, 4, 8, generator=g), offset=0, base=10000.0),
        dict(x=torch.randn(2, 3, 5, 16, generator=g), offset=0, base=10000.0),
        dict(x=torch.randn(2, 2, 3, 8, generator=g), offset=7, base=10000.0),  # positions 7-9 (a KV cache)
        dict(x=torch.randn(1, 2, 6, 4, generator=g), offset=0, base=500.0),  # another base
        dict(x=torch.randn(1, 1, 1, 2, generator=g), offset=3, base=10000.0),  # one pair, one position
    ]
    _against_reference(
        "check_apply_rope",
        apply_rope,
        ref,
        cases,
        hint="angle[p, i] = p * base**(-2i/d) for i < d/2; pair dimension i with i + d/2 (rotate "
        "half: [x1, x2] -> [-x2, x1]), not adjacent dimensions; positions start at offset",
    )


@exercise("3.3")
def check_swiglu(swiglu) -> None:
    """``swiglu(x, w1, w3, w2)`` = ``(silu(x w1ᵀ) * x w3ᵀ) w2ᵀ``."""

    g = _gen(2)
    cases = [
        dict(
            x=torch.randn(*shape, d, generator=g),
            w1=torch.randn(f, d, generator=g),
            w3=torch.randn(f, d, generator=g),
            w2=torch.randn(d, f, generator=g),
        )
        for shape, d, f in (((2, 3), 8, 12), ((5,), 4, 4), ((1, 1, 2), 6, 16))
    ]
    _against_reference(
        "check_swiglu",
        swiglu,
        ref_model.swiglu,
        cases,
        atol=1e-4,
        hint="the gate w1 goes through SiLU, the up projection w3 does not; multiply them "
        "elementwise, then project down with w2 (weights are [out, in]: x @ w.T or F.linear)",
    )


@exercise("3.4")
def check_kv_cache_step(kv_cache_step) -> None:
    """``kv_cache_step(q, k_new, v_new, k_cache, v_cache) -> (out, k_cache, v_cache)``."""

    name = "check_kv_cache_step"
    g = _gen(3)
    n = 0
    # 1) decode a sequence piece by piece (prefill 3, then 1, 1, 2 tokens): each step must match the reference
    B, H, D = 2, 3, 8
    q, k, v = (torch.randn(B, H, 7, D, generator=g) for _ in range(3))
    kc = vc = None
    start = 0
    for size in (3, 1, 1, 2):
        sl = slice(start, start + size)
        inputs = {"q": q[:, :, sl], "k_new": k[:, :, sl], "v_new": v[:, :, sl], "cached positions": start}
        got = call(name, kv_cache_step, q[:, :, sl], k[:, :, sl], v[:, :, sl], kc, vc, inputs=inputs)
        if not isinstance(got, tuple) or len(got) != 3:
            fail(
                name,
                f"expected a tuple (out, k_cache, v_cache), got {type(got).__name__}",
                inputs=inputs,
                hint="return the attention output and the two updated caches",
            )
        want = ref_model.kv_cache_step(q[:, :, sl], k[:, :, sl], v[:, :, sl], kc, vc)
        compare(
            name, got[1], want[1], inputs=inputs, what="k_cache", hint="append the new keys along the time axis (dim 2)"
        )
        compare(
            name,
            got[2],
            want[2],
            inputs=inputs,
            what="v_cache",
            hint="append the new values along the time axis (dim 2)",
        )
        compare(
            name,
            got[0],
            want[0],
            inputs=inputs,
            what="out",
            atol=1e-5,
            rtol=1e-4,
            hint="new query i sits at position T_past + i: it sees every cached key and the new keys up to "
            "itself (a causal mask shifted by the cache length), scores scaled by 1/sqrt(head_dim)",
        )
        kc, vc = want[1], want[2]
        start += size
        n += 1
    # 2) the whole point: step-by-step decoding equals attending over the full sequence at once
    full = torch.softmax((q @ k.transpose(-2, -1)) / D**0.5 + torch.full((7, 7), float("-inf")).triu(1), -1) @ v
    kc = vc = None
    outs = []
    for t in range(7):
        out, kc, vc = call(
            name,
            kv_cache_step,
            q[:, :, t : t + 1],
            k[:, :, t : t + 1],
            v[:, :, t : t + 1],
            kc,
            vc,
            inputs={"position": t},
        )
        outs.append(out)
    compare(
        name,
        torch.cat(outs, dim=2),
        full,
        inputs={"q": q, "k": k, "v": v},
        what="one-token-at-a-time output",
        atol=1e-5,
        rtol=1e-4,
        hint="decoding token by token must reproduce full causal attention",
    )
    passed(name, n + 1, "token-by-token decoding equals full causal attention")


def _sample_freqs(fn, logits_row: torch.Tensor, n: int, seed: int, **kwargs) -> torch.Tensor:
    got = call(
        "check_sample_next_token",
        fn,
        logits_row.expand(n, -1).clone(),
        generator=_gen(seed),
        inputs={"logits (one row, repeated)": logits_row, **kwargs},
        **kwargs,
    )
    if not isinstance(got, torch.Tensor) or got.shape != (n,):
        fail(
            "check_sample_next_token",
            f"expected a LongTensor of shape ({n},) (one id per row), got {getattr(got, 'shape', type(got).__name__)}",
            hint="return ids of shape [B], e.g. .squeeze(-1)",
        )
    if got.dtype not in (torch.int64, torch.int32):
        fail("check_sample_next_token", f"expected integer token ids, got dtype {got.dtype}")
    if int(got.min()) < 0 or int(got.max()) >= logits_row.shape[-1]:
        fail("check_sample_next_token", f"sampled ids outside [0, {logits_row.shape[-1]})", inputs=kwargs)
    return got.bincount(minlength=logits_row.shape[-1]).double() / n


def _expected_probs(logits: torch.Tensor, temperature: float, top_k, top_p) -> torch.Tensor:
    """The distribution sampling should follow, written independently of the reference's masking code."""
    p = torch.softmax(logits.double() / temperature, -1)
    order = torch.argsort(p, descending=True).tolist()
    if top_k is not None:  # top-k first; top-p then works on the renormalized survivors
        p[order[top_k:]] = 0.0
        p = p / p.sum()
    keep = torch.zeros_like(p, dtype=torch.bool)
    mass = 0.0
    for i in order:
        if p[i] == 0 or (top_p is not None and keep.any() and mass >= top_p):
            break
        keep[i] = True
        mass += float(p[i])
    q = torch.where(keep, p, torch.zeros_like(p))
    return q / q.sum()


@exercise("3.5")
def check_sample_next_token(sample_next_token) -> None:
    """``sample_next_token(logits [B, V], temperature, top_k, top_p, generator) -> ids [B]``."""
    name = "check_sample_next_token"
    g = _gen(4)
    logits = torch.randn(32, 10, generator=g)  # 32 rows: sampling would miss the argmax somewhere
    # greedy: temperature 0 is argmax, whatever top_k / top_p say
    got = call(
        name, sample_next_token, logits.clone(), 0.0, None, None, _gen(0), inputs={"logits": logits, "temperature": 0}
    )
    compare(
        name,
        got,
        logits.argmax(-1),
        inputs={"logits": logits, "temperature": 0},
        what="greedy ids",
        hint="temperature == 0 means greedy decoding: return logits.argmax(-1) without sampling",
    )
    n_cases = 1
    # sampling: the empirical distribution over 4000 draws must match the expected one (5 sigma tolerance)
    row = torch.tensor([2.0, 1.5, 1.0, 0.2, -0.5, -1.0, -3.0, 0.7])  # probabilities 0.32, 0.19, 0.12, ...
    settings = [
        dict(temperature=1.0, top_k=None, top_p=None),
        dict(temperature=0.5, top_k=None, top_p=None),  # sharper
        dict(temperature=2.0, top_k=None, top_p=None),  # flatter
        dict(temperature=1.0, top_k=3, top_p=None),
        dict(temperature=1.0, top_k=None, top_p=0.6),  # the token that crosses 0.6 stays in
        dict(temperature=1.0, top_k=None, top_p=0.05),  # below the top token's mass: only the top token
        dict(temperature=1.0, top_k=5, top_p=0.9),  # top-k, then top-p on what is left (renormalized)
        dict(temperature=0.7, top_k=4, top_p=1.0),
    ]
    n = 4000
    for i, kw in enumerate(settings):
        freqs = _sample_freqs(sample_next_token, row, n, seed=10 + i, **kw)
        want = _expected_probs(row, kw["temperature"], kw["top_k"], kw["top_p"])
        tol = 5 * (want * (1 - want) / n).sqrt() + 2e-3
        bad = ((freqs - want).abs() > tol).nonzero().flatten().tolist()
        if bad:
            j = bad[0]
            fail(
                name,
                f"token {j} was sampled with frequency {freqs[j]:.3f}, expected {want[j]:.3f} "
                f"(expected distribution {[round(float(x), 3) for x in want]})",
                inputs={"logits": row, **kw},
                hint="divide logits by temperature; top-k keeps the k largest; top-p keeps the most likely tokens "
                "until their probability reaches top_p, including the one that crosses it; then softmax and "
                "torch.multinomial",
            )
        n_cases += 1
    # the same seed must give the same tokens as GPT.generate: draw with the generator, in vocabulary order

    batch = torch.randn(64, 10, generator=_gen(5)) * 1.5
    for kw in (dict(temperature=1.0, top_k=None, top_p=None), dict(temperature=0.8, top_k=6, top_p=0.9)):
        inputs = {"logits": batch, **kw}
        first = call(name, sample_next_token, batch.clone(), generator=_gen(99), inputs=inputs, **kw)
        torch.rand(7)  # move the global random state: a sampler that ignores `generator` now draws differently
        again = call(name, sample_next_token, batch.clone(), generator=_gen(99), inputs=inputs, **kw)
        if not torch.equal(torch.as_tensor(first), torch.as_tensor(again)):
            fail(
                name,
                "two calls with generators seeded alike drew different tokens: your sampler ignores its "
                "`generator` argument",
                inputs=inputs,
                hint="pass generator=generator to torch.multinomial, so that a seed reproduces a generation",
            )
        want = ref_model.sample_next_token(batch.clone(), generator=_gen(99), **kw)
        if not torch.equal(torch.as_tensor(first).long(), want):
            n_diff = int((torch.as_tensor(first).long() != want).sum())
            fail(
                name,
                f"right distribution, but {n_diff} of 64 rows drew a different token than GPT.generate's "
                "sampler with the same seed",
                inputs=inputs,
                hint="draw once per row with torch.multinomial(probs, 1, generator=generator) from probabilities "
                "in the vocabulary's own order (not sorted: the same random number then picks another "
                "token), so that your generations match the reference token for token",
            )
        n_cases += 1
    passed(name, n_cases, "reproducible with a seeded generator")


# ----------------------------------------------------------------------------------------------- the model, written out
def _tiny_config(**overrides):

    base = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    return GPTConfig(**{**base, **overrides})


def _visible_weights(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Redraw every weight so that each mistake shows: norm gains away from 1, projections large enough that
    attention is far from uniform."""
    g = _gen(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "emb" in name else 0.3))
    return module.eval()


def _block(seed: int, **overrides):

    torch.manual_seed(seed)
    return _visible_weights(Block(_tiny_config(**overrides)), seed)


_BLOCK_HINT = (
    "h = RMSNorm(x) with attn_norm's gain; q, k, v = h times q_proj/k_proj/v_proj weights, split into "
    "heads [B, H, T, head_dim]; RoPE on q and k (not v); repeat each key/value head n_heads/n_kv_heads "
    "times; causal softmax(q kᵀ/√head_dim) v; merge heads, o_proj; x = x + that; then "
    "x + SwiGLU(RMSNorm(x) with ffn_norm's gain)"
)


def _block_variant(
    block,
    x: torch.Tensor,
    *,
    attn_residual: bool = True,
    ffn_residual: bool = True,
    post_norm: bool = False,
    rope_on_v: bool = False,
    scale_dim: str = "head_dim",
    ffn_gain: str = "ffn_norm",
) -> torch.Tensor:
    """The block written out, with one switch per common mistake; all defaults = the right block."""

    a, (B, T, d) = block.attn, x.shape
    gains = {"attn_norm": block.attn_norm.weight, "ffn_norm": block.ffn_norm.weight}

    def norm(h, gain):
        return rms_norm(h, gains[gain], block.attn_norm.eps)

    def attention(h):
        q, k, v = (
            F.linear(h, w.weight).view(B, T, n, a.head_dim).transpose(1, 2)
            for w, n in ((a.q_proj, a.n_heads), (a.k_proj, a.n_kv_heads), (a.v_proj, a.n_kv_heads))
        )
        cos, sin = rope_frequencies(a.head_dim, T)  # the checks' blocks use the default base, 10000
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if rope_on_v:
            v = apply_rope(v, cos, sin)
        k, v = repeat_kv(k, a.n_rep), repeat_kv(v, a.n_rep)
        scores = q @ k.transpose(-2, -1) / math.sqrt(a.head_dim if scale_dim == "head_dim" else d)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        return F.linear((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1), a.o_proj.weight)

    def ffn(h):
        return swiglu(h, block.ffn.w1.weight, block.ffn.w3.weight, block.ffn.w2.weight)

    if post_norm:  # the 2017 transformer's order: normalize after each residual sum
        x = norm(x + attention(x), "attn_norm")
        return norm(x + ffn(x), "ffn_norm")
    h = attention(norm(x, "attn_norm"))
    x = x + h if attn_residual else h
    h = ffn(norm(x, ffn_gain))
    return x + h if ffn_residual else h


# each common mistake: (the switch that reproduces it, what to tell the learner)
_BLOCK_MISTAKES = [
    (
        dict(attn_residual=False),
        "your output equals the block WITHOUT the residual around attention (x = attn(norm(x)) instead of "
        "x = x + attn(norm(x)))",
    ),
    (
        dict(ffn_residual=False),
        "your output equals the block WITHOUT the residual around the feed-forward layer (the block returns "
        "SwiGLU(norm(x)) instead of x + SwiGLU(norm(x)))",
    ),
    (
        dict(post_norm=True),
        "your output equals a POST-norm block (norm(x + attn(x)), as in the 2017 transformer); Llama-style "
        "blocks are pre-norm: x + attn(norm(x)), the residual stream itself is never normalized",
    ),
    (
        dict(rope_on_v=True),
        "your output equals a block that rotates the VALUES with RoPE too; RoPE turns q and k only (it encodes "
        "positions in the scores q·k, values carry content)",
    ),
    (
        dict(scale_dim="d_model"),
        "your output equals attention scaled by 1/√d_model; the scores are scaled by 1/√head_dim (the size of "
        "the vectors each dot product sums over)",
    ),
    (
        dict(ffn_gain="attn_norm"),
        "your output equals a block that reuses attn_norm's gain before the feed-forward layer; each sub-layer "
        "has its own RMSNorm: use block.ffn_norm's gain there",
    ),
]


def _name_block_mistake(name: str, block, x: torch.Tensor, got: torch.Tensor, inputs: dict) -> None:
    """Fail with the mistake's name when ``got`` equals one of the known wrong blocks."""
    with torch.no_grad():
        for switches, what in _BLOCK_MISTAKES:
            if torch.allclose(got, _block_variant(block, x, **switches), atol=1e-4, rtol=1e-4):
                fail(name, what, inputs=inputs, hint=_BLOCK_HINT)


def _expect_shape(name: str, got, want: torch.Tensor, what: str, inputs: dict, hint: str) -> None:
    """Fail unless ``got`` is a tensor of ``want``'s shape; ``what`` names that shape for the learner."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        fail(
            name,
            f"expected {what.format(shape=tuple(want.shape))}, got {getattr(got, 'shape', type(got).__name__)}",
            inputs=inputs,
            hint=hint,
        )


@exercise("3.6")
def check_block_forward(block_forward) -> None:
    """``block_forward(block, x) -> [B, T, d_model]`` with the weights of a ``course_utils.model.Block``."""
    name = "check_block_forward"
    g = _gen(5)
    cases = [
        (dict(n_heads=4, n_kv_heads=4), (2, 6)),
        (dict(n_heads=4, n_kv_heads=2), (2, 7)),
        (dict(n_heads=2, n_kv_heads=1), (1, 5)),
        (dict(n_heads=4, n_kv_heads=2), (3, 1)),
    ]
    for i, (heads, (B, T)) in enumerate(cases):
        block = _block(10 + i, **heads)
        x = torch.randn(B, T, block.attn.d_model, generator=g)
        inputs = {"x": x, **heads}
        with torch.no_grad():
            want = block(x)[0]
            got = call(name, block_forward, block, x.clone(), inputs=inputs)
        hint = "a block maps [B, T, d_model] to [B, T, d_model]; merge the heads back before o_proj"
        _expect_shape(name, got, want, "a tensor of shape {shape} (same as x)", inputs, hint)
        if torch.allclose(got, want, atol=1e-4, rtol=1e-4):
            continue
        _name_block_mistake(name, block, x, got, inputs)
        if T > 2:  # find the mistake by its symptom, then say it in words
            with torch.no_grad():
                later = x.clone()
                later[:, -1] += 1.0
                moved = call(name, block_forward, block, later, inputs=inputs)
                if not torch.allclose(moved[:, :-1], got[:, :-1], atol=1e-5):
                    fail(
                        name,
                        "changing the LAST token changed the outputs at earlier positions: a token sees the future",
                        inputs=inputs,
                        hint="mask the scores with -inf where key position > query "
                        "position (a causal mask), before the softmax",
                    )
                swapped = x.clone()
                swapped[:, [0, 1]] = swapped[:, [1, 0]]
                if torch.allclose(
                    call(name, block_forward, block, swapped, inputs=inputs)[:, -1], got[:, -1], atol=1e-5
                ):
                    fail(
                        name,
                        "swapping the first two tokens left the last position's output unchanged: your "
                        "attention does not know where tokens are",
                        inputs=inputs,
                        hint="apply your apply_rope to q and to k (each [B, H, T, head_dim]) before the scores",
                    )
        compare(name, got, want, inputs=inputs, atol=1e-4, rtol=1e-4, hint=_BLOCK_HINT)
    passed(name, len(cases), "causal, position-aware, pre-norm, residuals and norms in place")


def _gpt(seed: int, **overrides):

    torch.manual_seed(seed)
    return _visible_weights(GPT(_tiny_config(**overrides)), seed)


@exercise("3.7")
def check_gpt_forward(gpt_forward) -> None:
    """``gpt_forward(model, idx [B, T]) -> logits [B, T, vocab]`` from the weights of a ``course_utils.model.GPT``."""
    name = "check_gpt_forward"
    g = _gen(6)
    cases = [(dict(), (2, 9)), (dict(n_layers=3, n_kv_heads=4), (1, 12)), (dict(n_layers=1), (3, 1))]
    for i, (over, (B, T)) in enumerate(cases):
        model = _gpt(20 + i, **over)
        idx = torch.randint(model.config.vocab_size, (B, T), generator=g)
        inputs = {"idx": idx, "n_layers": model.config.n_layers}
        seen = {}
        # the hook returns None (the output is kept); it runs within this iteration, on this iteration's `seen`
        hook = model.norm.register_forward_hook(lambda m, a, out: seen.update(h=a[0]))  # noqa: B023
        with torch.no_grad():
            want = model(idx)[0]
        hook.remove()
        with torch.no_grad():
            got = call(name, gpt_forward, model, idx.clone(), inputs=inputs)
        hint = "one row of logits per position: the last hidden state times the embedding matrix transposed"
        _expect_shape(name, got, want, "logits of shape {shape} = [B, T, vocab_size]", inputs, hint)
        if torch.allclose(got, want, atol=1e-4, rtol=1e-4):
            continue
        W = model.tok_emb.weight
        if torch.allclose(got, seen["h"] @ W.T, atol=1e-4, rtol=1e-4):
            fail(
                name,
                "your logits skip the final RMSNorm",
                inputs=inputs,
                hint="normalize the last block's output with model.norm's gain, then multiply by the embedding matrix",
            )
        compare(
            name,
            got,
            want,
            inputs=inputs,
            atol=1e-4,
            rtol=1e-4,
            hint="x = the rows of model.tok_emb.weight picked by idx; x = block_forward(block, x) for each block "
            "in order; logits = RMSNorm(x) with model.norm's gain, times tok_emb.weight transposed (tied)",
        )
    passed(name, len(cases), "same logits as course_utils.model.GPT")


@exercise("3.8")
def check_next_token_loss(next_token_loss) -> None:
    """``next_token_loss(logits [B, T, V], tokens [B, T]) -> scalar``: mean cross-entropy of next-token prediction."""

    name = "check_next_token_loss"
    g = _gen(7)
    for B, T, V in ((2, 8, 11), (1, 2, 5), (4, 16, 30)):
        logits = torch.randn(B, T, V, generator=g) * 2
        tokens = torch.randint(V, (B, T), generator=g)
        inputs = {"logits": logits, "tokens": tokens}
        got = call(name, next_token_loss, logits.clone(), tokens.clone(), inputs=inputs)
        if not isinstance(got, torch.Tensor) or got.dim() != 0:
            fail(
                name,
                f"expected a scalar tensor (0-d, so that .backward() works), got "
                f"{getattr(got, 'shape', type(got).__name__)}",
                inputs=inputs,
                hint="average the per-position losses into one number",
            )
        want = F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1))
        if abs(float(got) - float(want)) < 1e-5:
            continue
        mistakes = {
            "logits[:, t] was scored against tokens[:, t] (no shift): the model sees that token in its input, so "
            "it would learn to copy it, and the loss collapses in training without learning anything": F.cross_entropy(
                logits.reshape(-1, V), tokens.reshape(-1)
            ),
            "the shift goes the wrong way: logits[:, t+1] was scored against tokens[:, t], i.e. predicting the "
            "PREVIOUS token": F.cross_entropy(logits[:, 1:].reshape(-1, V), tokens[:, :-1].reshape(-1)),
            "the targets wrap around (torch.roll): the last position is scored against the FIRST "
            "token": F.cross_entropy(logits.reshape(-1, V), tokens.roll(-1, 1).reshape(-1)),
            "the loss is summed, not averaged: its size would depend on the batch size and the learning rate "
            "with it": F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1), reduction="sum"),
        }
        for what, value in mistakes.items():
            if abs(float(got) - float(value)) < 1e-5:
                fail(
                    name,
                    what,
                    inputs=inputs,
                    hint="position t predicts the NEXT token: score logits[:, :-1] "
                    "against tokens[:, 1:] and average over the B·(T−1) predictions",
                )
        compare(
            name,
            float(got),
            float(want),
            inputs=inputs,
            what="loss",
            hint="cross-entropy = −log softmax(logits[:, t])[tokens[:, t+1]], averaged over all B·(T−1) pairs",
        )
    passed(name, 3, "the classic off-by-one is not here")


@exercise("3.9")
def check_lr_schedule(lr_schedule) -> None:
    """``lr_schedule(step, lr, warmup, steps, min_lr_ratio=0.1) -> float``: linear warm-up, then cosine decay."""

    name = "check_lr_schedule"
    settings = [
        dict(lr=3e-3, warmup=10, steps=100, min_lr_ratio=0.1),
        dict(lr=1.0, warmup=0, steps=20, min_lr_ratio=0.0),
        dict(lr=0.5, warmup=4, steps=9, min_lr_ratio=0.2),
        dict(lr=2e-4, warmup=5, steps=5, min_lr_ratio=0.1),
        dict(lr=1.0, warmup=3, steps=4, min_lr_ratio=0.1),  # one step after warm-up: steps - 1 - warmup == 0
    ]
    one_after = (
        "when steps == warmup + 1 the one step after warm-up is both the cosine's start and its end: "
        "(step − warmup) / (steps − 1 − warmup) is 0/0 there; guard the denominator (at least 1), so progress is 0 "
        "and that step keeps lr"
    )
    for kw in settings:
        # warm-up first, then the end point, then the cosine in between: the first wrong step names the part
        order = list(range(kw["warmup"])) + [kw["steps"] - 1] + list(range(kw["warmup"], kw["steps"] - 1))
        for step in order:
            inputs = {"step": step, **kw}
            try:
                got = lr_schedule(step, kw["lr"], kw["warmup"], kw["steps"], kw["min_lr_ratio"])
            except ZeroDivisionError as err:
                fail(name, f"your function raised ZeroDivisionError: {err}", inputs=inputs, hint=one_after)
            except Exception:  # call() reports it (and a stub) with the learner's line
                got = call(
                    name, lr_schedule, step, kw["lr"], kw["warmup"], kw["steps"], kw["min_lr_ratio"], inputs=inputs
                )
            want = lr_at(step, **kw)
            if isinstance(got, torch.Tensor):
                got = float(got)
            if not isinstance(got, (int, float)) or isinstance(got, bool):
                fail(name, f"expected a number, got {type(got).__name__}", inputs=inputs)
            if abs(got - want) <= 1e-9 + 1e-6 * abs(want):
                continue
            if kw["steps"] == kw["warmup"] + 1 and step == kw["warmup"]:
                hint = one_after
            elif step < kw["warmup"]:
                hint = (
                    "warm-up is linear and step 0 already trains: lr · (step + 1) / warmup, reaching lr at the "
                    "last warm-up step"
                )
            elif step == kw["steps"] - 1:
                hint = "the cosine ends at min_lr_ratio · lr on the last step (steps − 1), not at 0"
            else:
                hint = (
                    "after warm-up, progress = (step − warmup) / (steps − 1 − warmup) goes from 0 to 1 and "
                    "lr · (min_lr_ratio + (1 − min_lr_ratio) · (1 + cos(π · progress)) / 2)"
                )
            fail(name, f"at step {step} expected {want:.6g}, got {got:.6g}", inputs=inputs, hint=hint)
    passed(name, sum(kw["steps"] for kw in settings), "warm-up, then cosine down to min_lr_ratio·lr")


def _lr_of(opt) -> list[float]:
    return [float(group["lr"]) for group in opt.param_groups]


def _twin_models():
    """Two identical float64 copies of a tiny GPT with their optimizers (Adam eps 1e-6), for check_train_step."""

    torch.manual_seed(30)

    mine = GPT(_tiny_config()).double()
    for block in mine.blocks:  # the RoPE table is stored in float32: rebuild it at float64's precision
        a = block.attn
        a.rope_cos, a.rope_sin = rope_frequencies(a.head_dim, a.max_seq_len, dtype=torch.float64)
    ref = copy.deepcopy(mine)
    opts = [configure_optimizer(m, lr=1e-2, weight_decay=0.1) for m in (mine, ref)]
    for group in opts[0].param_groups + opts[1].param_groups:
        # Adam divides by |g| + eps: with the default 1e-8, a gradient that is 0 up to rounding (1e-12) could
        # move a weight by a visible fraction of lr in one implementation and not in the other
        group["eps"] = 1e-6
    return mine, ref, opts


_TRAIN_STEP_HINTS = {
    "forward, loss, backward and optimizer.step()": "the logits come from your gpt_forward and the loss from your "
    "next_token_loss; back-propagate it, step the optimizer, and return this batch's loss (before the update) as "
    "a float",
    "zeroing old gradients": "gradients that were already in .grad when train_step was called were added to this "
    "step's: clear them (the optimizer's zero_grad) before back-propagating",
    "gradient clipping": "after backward and before optimizer.step(), scale the gradients so that their global "
    "norm is at most grad_clip (torch.nn.utils.clip_grad_norm_ does exactly this)",
    "the whole schedule": "every step sets the learning rate of every param group to lr_schedule(step, ...)",
}


@exercise("3.10")
def check_train_step(train_step) -> None:
    """``train_step(model, optimizer, tokens [B, T+1], step, *, lr, warmup, steps, grad_clip) -> loss (float)``.

    Runs the learner's step and :func:`course_utils.train.train_step` side by side, in float64 and from the same
    seed, on copies of one model, and compares the loss, the learning rate and every weight after each step.
    """

    name = "check_train_step"
    g = _gen(8)
    mine, ref, opts = _twin_models()
    # phase: (what it tests, steps to run, grad_clip, junk gradients planted before the first call)
    phases = [
        ("forward, loss, backward and optimizer.step()", 1, 1e6, False),
        ("zeroing old gradients", 1, 1e6, True),
        ("gradient clipping", 3, 0.05, False),
        ("the whole schedule", 5, 1.0, False),
    ]
    schedule = dict(lr=1e-2, warmup=2, steps=10)
    step, n = 0, 0
    for what, n_steps, clip, junk in phases:
        if junk:
            for p in mine.parameters():
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        for _ in range(n_steps):
            tokens = torch.randint(mine.config.vocab_size, (4, 13), generator=g)
            inputs = {"tokens": tokens, "step": step, "grad_clip": clip, **schedule}
            got = call(name, train_step, mine, opts[0], tokens.clone(), step, grad_clip=clip, inputs=inputs, **schedule)
            rate = lr_at(step, **schedule)
            want, _, _ = ref_train.train_step(ref, opts[1], tokens[:, :-1], tokens[:, 1:], rate, grad_clip=clip)
            if isinstance(got, torch.Tensor):
                got = float(got.detach()) if got.numel() == 1 else got
            if not isinstance(got, float):
                fail(
                    name,
                    f"expected the batch's loss as a Python float, got {type(got).__name__}",
                    inputs=inputs,
                    hint="return loss.item()",
                )
            if any(abs(r - rate) > 1e-12 for r in _lr_of(opts[0])):
                fail(
                    name,
                    f"after step {step} the optimizer's learning rate is {_lr_of(opts[0])[0]:.6g}, expected "
                    f"{rate:.6g} (warm-up {schedule['warmup']} steps, then cosine over {schedule['steps']})",
                    inputs=inputs,
                    hint="before optimizer.step(), set group['lr'] = lr_schedule(step, lr, warmup, "
                    "steps) for every group in optimizer.param_groups",
                )
            compare(
                name,
                got,
                want.item(),
                inputs=inputs,
                what=f"loss returned at step {step}",
                atol=1e-8,
                rtol=1e-7,
                hint="the loss of this batch, computed before the update, with the one-position shift",
            )
            for (pname, p), q in zip(mine.named_parameters(), ref.parameters()):
                compare(
                    name,
                    p.detach(),
                    q.detach(),
                    inputs=inputs,
                    what=f"weight {pname} after step {step} (checking {what})",
                    atol=1e-7,
                    rtol=1e-6,
                    hint=_TRAIN_STEP_HINTS[what],
                )
            step, n = step + 1, n + 1
    passed(name, n, "same weights as course_utils.train.train_step after every step")


def check_trained_gpt(model, *, target: float = 4.2) -> None:
    """The learner's trained model: its validation loss on the course corpus must be below ``target`` nats/token."""

    name = "check_trained_gpt"
    if not isinstance(model, GPT):
        fail(
            name,
            f"expected the course_utils.model.GPT whose weights you trained, got {type(model).__name__}",
            hint="pass the model object itself (not the history, not a function)",
        )
    data = corpus_dataset()
    if model.config.vocab_size != data.vocab_size:
        fail(name, f"the model's vocab_size is {model.config.vocab_size}, the corpus tokenizer has {data.vocab_size}")
    block = min(64, model.config.max_seq_len)
    val = evaluate(model, data, "val", iters=20, batch_size=16, block_size=block)
    uniform = math.log(data.vocab_size)
    if not val < target:
        fail(
            name,
            f"validation loss {val:.3f} nats/token is not below the target {target} "
            f"(a uniform guess scores {uniform:.3f})",
            hint="train longer, or look at your loss curve: flat from the start means the weights do not move "
            "(optimizer.step()?), rising means the learning rate is too high or the targets are not shifted",
        )
    passed(name, 1, f"validation loss {val:.3f} < {target} nats/token (uniform guess {uniform:.3f})")


# the lab's own run (Exercise 3.10's loop): 119,104 parameters x 300 steps x 16 x 64 tokens, x 6 FLOPs per pair
LAB_RUN_FLOPS = 6 * 119_104 * 300 * 16 * 64


@exercise("3.11")
def check_train_within_budget(
    train_within_budget, *, budget_flops: float = LAB_RUN_FLOPS, target: float = 3.85
) -> None:
    """Open exercise: ``train_within_budget(data, budget_flops) -> GPT`` beats ``target`` within a compute budget.

    Compute is counted as ``6 · N · D`` (Kaplan et al., 2020): ``N`` the model's parameters (tied weights once),
    ``D`` the training tokens the function drew through ``data.get_batch``. Machine-independent, unlike seconds.
    """

    name = "check_train_within_budget"
    data = CountingData(corpus_dataset())
    model = call(name, train_within_budget, data, budget_flops, inputs={"budget_flops": budget_flops})
    if not isinstance(model, GPT):
        fail(name, f"expected train_within_budget to return a course_utils.model.GPT, got {type(model).__name__}")
    fail_if_not_train_only(name, data)
    n_params = model.param_counts()["total"]
    used = 6 * n_params * data.train_tokens
    spent = f"{n_params:,} parameters × {data.train_tokens:,} tokens × 6 = {used:.3g} FLOPs"
    if data.train_tokens == 0:
        fail(
            name,
            "no training tokens were drawn through data.get_batch('train', ...)",
            hint="train on batches from the data object you are given: that is how the budget is counted",
        )
    if used > budget_flops:
        fail(
            name,
            f"{spent}: over the budget of {budget_flops:.3g}",
            hint="fewer steps, smaller batches or shorter windows, or a smaller model",
        )
    val = evaluate(model, data._data, "val", iters=20, batch_size=16, block_size=min(64, model.config.max_seq_len))
    if not val < target:
        fail(
            name,
            f"validation loss {val:.3f} nats/token is not below the target {target} ({spent})",
            hint="ideas: the learning rate and how far it decays; more, smaller batches; a model shape that "
            "learns more per FLOP",
        )
    passed(name, 1, f"validation loss {val:.3f} < {target} with {used / budget_flops:.0%} of the budget ({spent})")


# ----------------------------------------------------------------------------------------------- under the hood
def _adamw_variant(p, g, m, v, t, *, lr, betas, eps, weight_decay, **mistake) -> tuple:
    """One AdamW step in float64, written out; each keyword of ``mistake`` switches on one common error."""
    b1, b2 = betas
    if mistake.get("coupled"):  # L2 regularisation: the decay goes through the gradient, and so through Adam
        g = g + weight_decay * p
    elif mistake.get("decay_without_lr"):
        p = p * (1 - weight_decay)
    else:
        p = p * (1 - lr * weight_decay)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    bc1, bc2 = (1.0, 1.0) if mistake.get("no_bias_correction") else (1 - b1**t, 1 - b2**t)
    if mistake.get("eps_inside_sqrt"):
        denom = (v / bc2 + eps).sqrt()
    elif mistake.get("eps_before_correction"):
        denom = (v.sqrt() + eps) / math.sqrt(bc2)
    else:
        denom = (v / bc2).sqrt() + eps
    return p - lr * (m / bc1) / denom, m, v


_ADAMW_MISTAKES = {
    "coupled": "your step adds weight_decay·θ to the gradient (L2 regularisation, Adam's coupled decay): the decay "
    "then goes through m and v and is divided by √v̂ like the gradient. AdamW decouples it: θ ← θ − lr·λ·θ, "
    "apart from the Adam step",
    "decay_without_lr": "your decay is θ ← θ·(1 − λ): PyTorch's AdamW (and the paper's schedule multiplier) scales "
    "it by the learning rate, θ ← θ·(1 − lr·λ)",
    "no_bias_correction": "your step leaves out the bias correction: m and v start at 0, so early on they "
    "underestimate; divide by 1 − β1^t and 1 − β2^t (t counts from 1)",
    "eps_inside_sqrt": "your ε sits inside the square root, √(v̂ + ε); PyTorch adds it after: √v̂ + ε (with tiny "
    "gradients the two differ by orders of magnitude)",
    "eps_before_correction": "your ε is added before the bias correction, (√v + ε)/√(1 − β2^t); PyTorch adds it to "
    "the corrected root: √(v / (1 − β2^t)) + ε",
}

_ADAMW_HINT = (
    "θ ← θ·(1 − lr·λ); m ← β1·m + (1 − β1)·g; v ← β2·v + (1 − β2)·g²; m̂ = m/(1 − β1^t); v̂ = v/(1 − β2^t); "
    "θ ← θ − lr·m̂/(√v̂ + ε), with t = 1 on the first step"
)


def _same_triple(got, want) -> bool:
    """(param, exp_avg, exp_avg_sq) equal to float64 rounding."""
    return all(
        isinstance(x, torch.Tensor) and x.shape == y.shape and torch.allclose(x.double(), y, rtol=1e-7, atol=1e-12)
        for x, y in zip(got, want)
    )


@exercise("3.12")
def check_adamw_step(adamw_step) -> None:
    """``adamw_step(param, grad, exp_avg, exp_avg_sq, step, *, lr, betas, eps, weight_decay)`` ->
    ``(param, exp_avg, exp_avg_sq)``, compared after every step with ``torch.optim.AdamW`` run on the same gradients.
    """
    name = "check_adamw_step"
    g = _gen(40)
    settings = [  # (what it shows, hyper-parameters, gradient scale)
        ("decay and bias correction", dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1), 1.0),
        ("ε with tiny gradients", dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.01), 1e-7),
        ("no decay, other betas", dict(lr=3e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.0), 0.5),
    ]
    n = 0
    for what, hp, scale in settings:
        p0 = torch.randn(4, 5, generator=g, dtype=torch.float64)
        grads = [torch.randn(4, 5, generator=g, dtype=torch.float64) * scale for _ in range(5)]
        ref = p0.clone().requires_grad_(True)
        opt = torch.optim.AdamW([ref], **hp)
        p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
        for t, grad in enumerate(grads, start=1):
            inputs = {"case": what, "step": t, **hp}
            before = (p.clone(), m.clone(), v.clone())
            got = call(name, adamw_step, p.clone(), grad.clone(), m.clone(), v.clone(), t, inputs=inputs, **hp)
            if not isinstance(got, tuple) or len(got) != 3:
                fail(name, f"expected a tuple (param, exp_avg, exp_avg_sq), got {type(got).__name__}", inputs=inputs,
                     hint="return the three updated tensors")  # fmt: skip
            ref.grad = grad.clone()
            opt.step()
            state = opt.state[ref]
            want = (ref.detach(), state["exp_avg"], state["exp_avg_sq"])
            if not _same_triple(got, want):
                for mistake, message in _ADAMW_MISTAKES.items():
                    wrong = _adamw_variant(before[0], grad, before[1], before[2], t, **hp, **{mistake: True})
                    if _same_triple(got, wrong) and not _same_triple(wrong, want):
                        fail(name, message, inputs=inputs, hint=_ADAMW_HINT)
                for i, label in ((1, "exp_avg (m)"), (2, "exp_avg_sq (v)"), (0, "param")):  # the moments first
                    compare(name, got[i], want[i], inputs=inputs, what=f"{label} after step {t}", atol=1e-12,
                            rtol=1e-7, hint=_ADAMW_HINT)  # fmt: skip
            p, m, v = (x.detach().clone().double() for x in got)
            n += 1
    passed(name, n, "equal to torch.optim.AdamW after every step")


def _init_expectations(model) -> dict:
    """name -> (expected std, or None for a gain of ones) for every parameter of a dense GPT."""
    residual = 0.02 / math.sqrt(2 * model.config.n_layers)
    out = {}
    for pname, p in model.named_parameters():
        if p.dim() == 1:
            out[pname] = None
        elif pname.endswith(("o_proj.weight", "w2.weight")):
            out[pname] = residual
        else:
            out[pname] = 0.02
    return out


@exercise("3.13")
def check_init_weights(init_weights) -> None:
    """``init_weights(model)`` re-initialises a dense ``course_utils.model.GPT`` in place, as GPT-2/nanoGPT do:
    matrices and the (tied) embedding ~ N(0, 0.02²), the projections into the residual stream (``o_proj``, ``w2``)
    ~ N(0, (0.02/√(2·n_layers))²), norm gains 1. Judged by statistics with tolerances, from a fixed seed."""

    name = "check_init_weights"
    n = 0
    for over in (dict(n_layers=4, d_model=64, vocab_size=512), dict(n_layers=2, d_model=48, vocab_size=300)):
        torch.manual_seed(0)
        model = GPT(_tiny_config(**{**over, "n_heads": 4, "n_kv_heads": 2}))
        with torch.no_grad():  # start from something else: an init that does nothing must fail
            for p in model.parameters():
                p.uniform_(-1.0, 1.0)
        inputs = {"n_layers": model.config.n_layers, "d_model": model.config.d_model}
        torch.manual_seed(1)
        call(name, init_weights, model, inputs=inputs)
        residual = 0.02 / math.sqrt(2 * model.config.n_layers)
        for pname, want in _init_expectations(model).items():
            p = dict(model.named_parameters())[pname].detach().double()
            where = {**inputs, "parameter": pname, "shape": tuple(p.shape)}
            if want is None:
                if not torch.equal(p, torch.ones_like(p)):
                    fail(name, f"{pname} should be all ones (a norm's gain starts as the identity)", inputs=where,
                         hint="set every RMSNorm weight to 1")  # fmt: skip
                continue
            std, mean = float(p.std()), float(p.mean())
            kurtosis = float(((p - p.mean()) ** 4).mean() / p.var(unbiased=False) ** 2)
            if abs(std - want) > 0.08 * want:
                if want == residual and abs(std - 0.02) < 0.08 * 0.02:
                    problem = (
                        f"{pname} has std {std:.4f} = 0.02: the projections that write into the residual stream "
                        f"need 0.02/√(2·n_layers) = {residual:.4f}"
                    )
                    hint = (
                        "each block adds two of them (o_proj, w2) to the residual stream: shrink their std by "
                        "√(2·n_layers)"
                    )
                else:
                    problem = f"{pname} has std {std:.4g}, expected {want:.4g}"
                    hint = (
                        "PyTorch's defaults (Kaiming-uniform for nn.Linear, N(0, 1) for nn.Embedding) are not "
                        "GPT-2's: draw every matrix from N(0, 0.02²), the residual projections with the smaller std"
                    )
                fail(name, problem, inputs=where, hint=hint)
            if abs(mean) > 5 * want / math.sqrt(p.numel()):
                fail(name, f"{pname} has mean {mean:.3g}, expected 0", inputs=where, hint="a normal with mean 0")
            if not 2.4 < kurtosis < 3.6:
                fail(name, f"{pname} does not look normal (kurtosis {kurtosis:.2f}; a normal has 3, a uniform 1.8)",
                     inputs=where, hint="nn.init.normal_(tensor, mean=0.0, std=...), not uniform_")  # fmt: skip
            n += 1
        if model.lm_head.weight is not model.tok_emb.weight:
            fail(name, "the output layer is no longer tied to the embedding", inputs=inputs,
                 hint="initialise the parameters in place (nn.init.normal_ on p); do not assign new ones")  # fmt: skip
    passed(name, n, "N(0, 0.02²), residual projections / √(2·n_layers), gains 1")


# ----------------------------------------------------------------------------------------------- a real LLM
SMOLLM2_QUESTION = "What is the capital of France? Answer in one word."
_SMOLLM2_HINT = (
    "your gpt_forward must run SmolLM2 exactly as course_utils.model.GPT does: RoPE at model.config.rope_base "
    "(100,000) in the rotate-half layout, each key/value head repeated n_rep times in a row (repeat_interleave), "
    "RMSNorm with each norm's own eps, the tied embedding as the output layer"
)


def _smollm2_variant(
    model, idx: torch.Tensor, *, rope_base=None, interleaved=False, kv_tiled=False, layer_norm=False, eps=None
) -> torch.Tensor:
    """SmolLM2's logits written out, with one switch per plausible mistake; all defaults = the right model."""
    c, (B, T) = model.config, idx.shape
    hd, e = c.head_dim, c.norm_eps if eps is None else eps
    cos, sin = rope_frequencies(hd, T, c.rope_base if rope_base is None else rope_base)

    def norm(h, gain):  # written out: rms_norm refuses eps = 0, one of the mistakes shown
        if layer_norm:
            return F.layer_norm(h, h.shape[-1:], gain, eps=e)
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + e) * gain

    def rope(t):
        if not interleaved:
            return apply_rope(t, cos, sin)
        pairs = t.unflatten(-1, (hd // 2, 2))  # pair i = dimensions (2i, 2i+1): GPT-J's and llama.cpp's layout
        c_, s_ = cos[:, : hd // 2], sin[:, : hd // 2]
        a, b = pairs[..., 0], pairs[..., 1]
        return torch.stack([a * c_ - b * s_, b * c_ + a * s_], dim=-1).flatten(-2)

    x = model.tok_emb.weight[idx]
    for block in model.blocks:
        at, h = block.attn, norm(x, block.attn_norm.weight)
        q, k, v = (
            F.linear(h, w.weight).view(B, T, n, hd).transpose(1, 2)
            for w, n in ((at.q_proj, at.n_heads), (at.k_proj, at.n_kv_heads), (at.v_proj, at.n_kv_heads))
        )
        q, k = rope(q), rope(k)
        k, v = (t.repeat(1, at.n_rep, 1, 1) if kv_tiled else repeat_kv(t, at.n_rep) for t in (k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
        x = x + F.linear(out, at.o_proj.weight)
        x = x + swiglu(norm(x, block.ffn_norm.weight), block.ffn.w1.weight, block.ffn.w3.weight, block.ffn.w2.weight)
    return F.linear(norm(x, model.norm.weight), model.tok_emb.weight)


# each plausible mistake on the real model: (the switch that reproduces it, what to tell the learner)
_SMOLLM2_MISTAKES = [
    (
        dict(rope_base=10000.0),
        "your logits equal SmolLM2 run with RoPE base 10,000 (apply_rope's default); SmolLM2 was trained with "
        "base 100,000 (model.config.rope_base): pass it down to your apply_rope",
    ),
    (
        dict(interleaved=True),
        "your logits equal RoPE on ADJACENT pairs (2i, 2i+1), the interleaved layout of GPT-J and llama.cpp's "
        "kernel; the course and Hugging Face pair dimension i with i + d/2 (rotate-half), and smollm2.load_into "
        "already regrouped the GGUF's query/key rows for that layout",
    ),
    (
        dict(kv_tiled=True),
        "your logits equal grouped-query attention with the key/value heads TILED (heads 0,1,2,0,1,2,...: "
        ".repeat); query head h reads key/value head h // n_rep, so each K/V head is repeated n_rep times in a "
        "row (0,0,0,1,1,1,2,2,2: repeat_interleave)",
    ),
    (
        dict(layer_norm=True),
        "your logits equal SmolLM2 with LayerNorm (the mean subtracted) where it has RMSNorm",
    ),
    (
        dict(eps=0.0),
        "your logits equal SmolLM2 with RMSNorm WITHOUT eps; use each norm's own eps (block.attn_norm.eps, "
        "1e-5 for SmolLM2) inside the square root",
    ),
    (
        dict(eps=1e-6),
        "your logits equal SmolLM2 with RMSNorm eps 1e-6 (rms_norm's default); SmolLM2's norms use 1e-5: pass "
        "each norm's own eps (block.attn_norm.eps, block.ffn_norm.eps, model.norm.eps)",
    ),
]


def _check_smollm2_model(name: str, model) -> None:
    """``model`` must be a course GPT with SmolLM2's config and, tensor for tensor, SmolLM2's weights."""
    if not isinstance(model, GPT):
        fail(
            name,
            f"expected a course_utils.model.GPT holding SmolLM2, got {type(model).__name__}",
            hint="GPT(smollm2_config(...)), then smollm2.load_into(model)",
        )
    want = asdict(smollm2.smollm2_config(max_seq_len=model.config.max_seq_len))
    wrong = {k: (v, want[k]) for k, v in asdict(model.config).items() if k in want and v != want[k]}
    if wrong:
        fail(
            name,
            f"model.config differs from SmolLM2's (field: (yours, SmolLM2's)): {wrong}",
            hint="build the model from smollm2_config(), which says what SmolLM2 is",
        )
    state = model.state_dict()
    with safe_open(str(smollm2.weights_path()), framework="pt") as f:
        for key in f.keys():
            if key not in state or not torch.equal(state[key], f.get_tensor(key)):
                fail(
                    name,
                    f"model's {key} is not SmolLM2's (did the weights load?)",
                    hint="smollm2.load_into(model) copies every SmolLM2 tensor into a GPT built from smollm2_config()",
                )


@exercise("3.14")
def check_runs_smollm2(gpt_forward, model=None) -> None:
    """``gpt_forward(model, idx)`` on SmolLM2-135M-Instruct's weights must give ``GPT``'s logits (max abs ≤ 1e-4)
    and the same greedy next token at every position of a chat prompt. ``model``: the learner's SmolLM2 GPT
    (Exercise 3.14; its config and every tensor are checked), or None to load the course's."""
    name = "check_runs_smollm2"
    if model is None:
        model = smollm2.load_model(max_seq_len=64)
    _check_smollm2_model(name, model)
    tok = smollm2.load_tokenizer()
    prompt = smollm2.chat_prompt([{"role": "user", "content": SMOLLM2_QUESTION}])
    idx = torch.tensor([tok.encode(prompt, allowed_special="all")])
    inputs = {"prompt": prompt, "idx": idx}
    model.eval()
    with torch.no_grad():
        want = model(idx)[0]
        got = call(name, gpt_forward, model, idx.clone(), inputs=inputs)
    _expect_shape(name, got, want, "logits of shape {shape} = [B, T, vocab_size]", inputs, _SMOLLM2_HINT)
    err = (got.double() - want.double()).abs().max().item()
    same_argmax = torch.equal(got.argmax(-1), want.argmax(-1))
    if err <= 1e-4 and same_argmax:
        answer = tok.decode([int(want[0, -1].argmax())])
        passed(
            name,
            1,
            f"{idx.shape[1]} positions of a chat prompt: max |yours − GPT| ≤ 1e-4, the same greedy next "
            f"token everywhere; SmolLM2's first answer token: {answer!r}",
        )
        return
    closest = (math.inf, "")
    with torch.no_grad():  # the known mistake closest to the learner's logits, if one is close
        for switches, what in _SMOLLM2_MISTAKES:
            closest = min(closest, ((got - _smollm2_variant(model, idx, **switches)).abs().max().item(), what))
            if closest[0] <= 1e-4:  # the mistakes lie ≥ 3e-3 apart: this one it is
                break
    if closest[0] <= 1e-3:
        fail(name, closest[1], inputs=inputs, hint=_SMOLLM2_HINT)
    where = (got - want).abs().amax(-1)[0]
    first = int((where > 1e-4).nonzero()[0]) if bool((where > 1e-4).any()) else None
    fail(
        name,
        f"max |your logits − GPT's| = {err:.3g} (the tolerance is 1e-4), greedy next tokens "
        f"{'equal' if same_argmax else 'differ'}; the first position off is {first}"
        + (" (position 0 agrees: RoPE does nothing there, so look at positions)" if first not in (None, 0) else ""),
        inputs=inputs,
        hint=_SMOLLM2_HINT,
    )
