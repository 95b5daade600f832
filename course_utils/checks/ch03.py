"""Checks for the chapter-3 lab (a tiny GPT): each compares the learner's function with course_utils' reference."""
from __future__ import annotations

import torch

from ._core import call, compare, fail, passed

__all__ = ["check_rms_norm", "check_apply_rope", "check_swiglu", "check_kv_cache_step", "check_sample_next_token"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _against_reference(name: str, fn, reference, cases: list[dict], hint: str, atol: float = 1e-5) -> None:
    """Call ``fn(**case)`` and ``reference(**case)`` on every case (inputs cloned) and compare the results."""
    for case in cases:
        got = call(name, fn, **{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in case.items()},
                   inputs=case)
        compare(name, got, reference(**case), inputs=case, atol=atol, rtol=1e-4, hint=hint)
    passed(name, len(cases))


def check_rms_norm(rms_norm) -> None:
    """``rms_norm(x, weight, eps=1e-6)`` over the last dimension."""
    from ..model import rms_norm as ref

    g = _gen(0)
    cases = [
        dict(x=torch.randn(2, 3, 8, generator=g) + 3.0, weight=torch.ones(8), eps=1e-6),  # mean must NOT go
        dict(x=torch.randn(4, 16, generator=g), weight=torch.randn(16, generator=g), eps=1e-6),  # a learned gain
        dict(x=torch.randn(1, 1, 6, generator=g) * 1e-3, weight=torch.ones(6), eps=1e-6),  # tiny: eps placement
        dict(x=torch.zeros(2, 4), weight=torch.ones(4), eps=1e-5),  # all zeros: eps keeps it finite
        dict(x=torch.randn(3, 5, generator=g) * 100, weight=torch.full((5,), 0.5), eps=1e-6),
    ]
    _against_reference("check_rms_norm", rms_norm, ref, cases,
                       hint="divide x by sqrt(mean(x**2, last dim) + eps), then multiply by weight; "
                            "unlike LayerNorm, RMSNorm subtracts no mean")


def check_apply_rope(apply_rope) -> None:
    """``apply_rope(x, offset=0, base=10000.0)`` on ``x`` [..., T, head_dim], rotate-half layout."""
    from ..attention import apply_rope as ref_apply, rope_frequencies

    def ref(x, offset, base):
        cos, sin = rope_frequencies(x.shape[-1], offset + x.shape[-2], base)
        return ref_apply(x, cos, sin, offset)

    g = _gen(1)
    cases = [
        dict(x=torch.randn(1, 1, 4, 8, generator=g), offset=0, base=10000.0),
        dict(x=torch.randn(2, 3, 5, 16, generator=g), offset=0, base=10000.0),
        dict(x=torch.randn(2, 2, 3, 8, generator=g), offset=7, base=10000.0),  # positions 7-9 (a KV cache)
        dict(x=torch.randn(1, 2, 6, 4, generator=g), offset=0, base=500.0),  # another base
        dict(x=torch.randn(1, 1, 1, 2, generator=g), offset=3, base=10000.0),  # one pair, one position
    ]
    _against_reference("check_apply_rope", apply_rope, ref, cases,
                       hint="angle[p, i] = p * base**(-2i/d) for i < d/2; pair dimension i with i + d/2 (rotate "
                            "half: [x1, x2] -> [-x2, x1]), not adjacent dimensions; positions start at offset")


def check_swiglu(swiglu) -> None:
    """``swiglu(x, w1, w3, w2)`` = ``(silu(x w1ᵀ) * x w3ᵀ) w2ᵀ``."""
    from ..model import swiglu as ref

    g = _gen(2)
    cases = [dict(x=torch.randn(*shape, d, generator=g), w1=torch.randn(f, d, generator=g),
                  w3=torch.randn(f, d, generator=g), w2=torch.randn(d, f, generator=g))
             for shape, d, f in (((2, 3), 8, 12), ((5,), 4, 4), ((1, 1, 2), 6, 16))]
    _against_reference("check_swiglu", swiglu, ref, cases, atol=1e-4,
                       hint="the gate w1 goes through SiLU, the up projection w3 does not; multiply them "
                            "elementwise, then project down with w2 (weights are [out, in]: x @ w.T or F.linear)")


def check_kv_cache_step(kv_cache_step) -> None:
    """``kv_cache_step(q, k_new, v_new, k_cache, v_cache) -> (out, k_cache, v_cache)``."""
    from ..model import kv_cache_step as ref

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
            fail(name, f"expected a tuple (out, k_cache, v_cache), got {type(got).__name__}", inputs=inputs,
                 hint="return the attention output and the two updated caches")
        want = ref(q[:, :, sl], k[:, :, sl], v[:, :, sl], kc, vc)
        compare(name, got[1], want[1], inputs=inputs, what="k_cache", hint="append the new keys along the time axis (dim 2)")
        compare(name, got[2], want[2], inputs=inputs, what="v_cache", hint="append the new values along the time axis (dim 2)")
        compare(name, got[0], want[0], inputs=inputs, what="out", atol=1e-5, rtol=1e-4,
                hint="new query i sits at position T_past + i: it sees every cached key and the new keys up to "
                     "itself (a causal mask shifted by the cache length), scores scaled by 1/sqrt(head_dim)")
        kc, vc = want[1], want[2]
        start += size
        n += 1
    # 2) the whole point: step-by-step decoding equals attending over the full sequence at once
    full = torch.softmax((q @ k.transpose(-2, -1)) / D**0.5 + torch.full((7, 7), float("-inf")).triu(1), -1) @ v
    kc = vc = None
    outs = []
    for t in range(7):
        out, kc, vc = call(name, kv_cache_step, q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], kc, vc,
                           inputs={"position": t})
        outs.append(out)
    compare(name, torch.cat(outs, dim=2), full, inputs={"q": q, "k": k, "v": v}, what="one-token-at-a-time output",
            atol=1e-5, rtol=1e-4, hint="decoding token by token must reproduce full causal attention")
    passed(name, n + 1, "token-by-token decoding equals full causal attention")


def _sample_freqs(fn, logits_row: torch.Tensor, n: int, seed: int, **kwargs) -> torch.Tensor:
    got = call("check_sample_next_token", fn, logits_row.expand(n, -1).clone(), generator=_gen(seed),
               inputs={"logits (one row, repeated)": logits_row, **kwargs}, **kwargs)
    if not isinstance(got, torch.Tensor) or got.shape != (n,):
        fail("check_sample_next_token", f"expected a LongTensor of shape ({n},) (one id per row), got "
             f"{getattr(got, 'shape', type(got).__name__)}", hint="return ids of shape [B], e.g. .squeeze(-1)")
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


def check_sample_next_token(sample_next_token) -> None:
    """``sample_next_token(logits [B, V], temperature, top_k, top_p, generator) -> ids [B]``."""
    name = "check_sample_next_token"
    g = _gen(4)
    logits = torch.randn(32, 10, generator=g)  # 32 rows: sampling would miss the argmax somewhere
    # greedy: temperature 0 is argmax, whatever top_k / top_p say
    got = call(name, sample_next_token, logits.clone(), 0.0, None, None, _gen(0), inputs={"logits": logits, "temperature": 0})
    compare(name, got, logits.argmax(-1), inputs={"logits": logits, "temperature": 0}, what="greedy ids",
            hint="temperature == 0 means greedy decoding: return logits.argmax(-1) without sampling")
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
            fail(name, f"token {j} was sampled with frequency {freqs[j]:.3f}, expected {want[j]:.3f} "
                 f"(expected distribution {[round(float(x), 3) for x in want]})", inputs={"logits": row, **kw},
                 hint="divide logits by temperature; top-k keeps the k largest; top-p keeps the most likely tokens "
                      "until their probability reaches top_p, including the one that crosses it; then softmax and "
                      "torch.multinomial")
        n_cases += 1
    passed(name, n_cases)
