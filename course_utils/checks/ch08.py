"""Chapter 8 checks: quantization, backoff, token bucket, semantic-cache lookup, cascade threshold.

Each compares the learner's function with the reference in ``course_utils.quantize`` / ``course_utils.gateway`` on
several inputs, including the edge cases where the plausible bugs show (a row whose largest weight is negative,
groups, the cap on backoff, a bucket refilled past its capacity, a cache entry from another model).
"""
from __future__ import annotations

import math

from ._core import call, compare, describe, fail, passed

__all__ = ["check_quantize_int8", "check_dequantize", "check_backoff_delays", "check_token_bucket_acquire",
           "check_cache_lookup", "check_pick_cascade_threshold"]


def _weights():
    import torch

    g = torch.Generator().manual_seed(8)
    w = torch.randn(6, 16, generator=g) * 0.1
    w[1, 5] = -0.9  # the row's largest magnitude is negative: max() would miss it
    w[2] = 0.0  # an all-zero row
    w[3, 0] = 3.0  # an outlier
    return [w, torch.tensor([[-2.0, 0.5, 1.0, -0.25]]), torch.randn(3, 8, generator=g).double(),
            torch.tensor([[0.3]])]


def check_quantize_int8(quantize_int8) -> None:
    """``quantize_int8(w) -> (q, scales)``: int8 ``q`` like ``w``, float ``scales`` ``[rows, 1]`` = absmax / 127."""
    import torch

    from course_utils.quantize import absmax_quantize, group_dequantize

    name = "check_quantize_int8"
    cases = _weights()
    for w in cases:
        inputs = {"w": w}
        q_ref, s_ref = absmax_quantize(w, 8)
        got = call(name, quantize_int8, w.clone(), inputs=inputs)
        if not isinstance(got, tuple) or len(got) != 2:
            fail(name, f"expected a tuple (q, scales), got {type(got).__name__}", inputs=inputs)
        q, s = got
        if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
            fail(name, f"q must be an int8 tensor, got {getattr(q, 'dtype', type(q).__name__)}", inputs=inputs,
                 hint="finish with .to(torch.int8) after rounding and clamping to [-127, 127]")
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != tuple(s_ref.shape):
            fail(name, f"scales must be a tensor of shape {tuple(s_ref.shape)} (one per row, kept as a column), "
                       f"got {getattr(s, 'shape', type(s).__name__)}", inputs=inputs, hint="use keepdim=True")
        if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
            fail(name, f"every scale must be a positive finite number, got {describe(s)}", inputs=inputs,
                 hint="an all-zero row has absmax 0: give it scale 1 (any positive scale encodes zeros exactly), "
                      "otherwise w / scale is 0 / 0 = NaN")
        nonzero = w.abs().amax(dim=-1) > 0
        compare(name, s[nonzero].float(), s_ref[nonzero], inputs=inputs, what="scales", rtol=1e-4, atol=1e-8,
                hint="scale = (largest |w| in the row) / 127 — absmax, w.abs().amax(dim=-1), not w.max()")
        compare(name, q, q_ref, inputs=inputs, what="q", atol=0, rtol=0,
                hint="q = round(w / scale), clamped to [-127, 127]; an all-zero row must give q = 0, not NaN")
        compare(name, group_dequantize(q, s.float()), group_dequantize(q_ref, s_ref), inputs=inputs,
                what="q * scale", atol=1e-6, hint="dequantizing your (q, scales) should give back w to within scale/2")
    passed(name, len(cases), "absmax per row, int8 in [-127, 127]")


def check_dequantize(dequantize) -> None:
    """``dequantize(q, scales) -> w_hat``: float32, each of ``scales``' columns covering one group of a row."""
    import torch

    from course_utils.quantize import absmax_quantize, group_dequantize

    name = "check_dequantize"
    w = _weights()[0]
    cases = [absmax_quantize(w, 8), absmax_quantize(w, 4, 4), absmax_quantize(w, 4, 8),
             absmax_quantize(torch.tensor([[1.0, -2.0]]), 8)]
    for q, s in cases:
        inputs = {"q": q, "scales": s}
        got = call(name, dequantize, q.clone(), s.clone(), inputs=inputs)
        compare(name, got, group_dequantize(q, s), inputs=inputs, what="w_hat", atol=1e-6,
                hint="group g of row r is q[r, g*G:(g+1)*G] * scales[r, g] with G = cols // scales.shape[1]: "
                     "reshape q to [rows, groups, G] (or repeat_interleave the scales — not repeat)")
        if not isinstance(got, torch.Tensor) or got.dtype != torch.float32:
            fail(name, f"w_hat must be float32, got {getattr(got, 'dtype', type(got).__name__)}", inputs=inputs,
                 hint="convert q with .float() before multiplying: int8 arithmetic would overflow")
    passed(name, len(cases), "per row and per group")


def check_backoff_delays(backoff_delays) -> None:
    """``backoff_delays(n, base_delay, max_delay) -> [n waits]`` without jitter: ``min(max, base · 2^(i-1))``."""
    from course_utils.gateway import backoff_delay

    name = "check_backoff_delays"
    cases = [(5, 0.1, 10.0), (8, 0.1, 1.0), (1, 0.5, 2.0), (0, 0.1, 1.0), (12, 0.25, 3.0)]
    for n, base, cap in cases:
        inputs = {"n": n, "base_delay": base, "max_delay": cap}
        expected = [backoff_delay(i, base_delay=base, max_delay=cap, jitter="none") for i in range(1, n + 1)]
        got = call(name, backoff_delays, n, base, cap, inputs=inputs)
        compare(name, list(got) if isinstance(got, (list, tuple)) else got, expected, inputs=inputs, what="waits",
                hint="the i-th wait (i = 1..n) is min(max_delay, base_delay * 2 ** (i - 1)): starts at base_delay, "
                     "doubles, never exceeds the cap")
    passed(name, len(cases), "doubling, capped")


def check_token_bucket_acquire(token_bucket_acquire) -> None:
    """``token_bucket_acquire(tokens, last, now, rate, capacity, n) -> (allowed, tokens_after)``."""
    name = "check_token_bucket_acquire"
    cases = [  # (tokens, last, now, rate, capacity, n)
        (5.0, 0.0, 0.0, 1.0, 5.0, 1), (0.0, 0.0, 0.5, 2.0, 5.0, 1), (0.0, 0.0, 0.25, 2.0, 5.0, 1),
        (4.0, 0.0, 100.0, 1.0, 5.0, 5), (4.0, 0.0, 100.0, 1.0, 5.0, 6), (2.0, 1.0, 1.5, 4.0, 10.0, 3),
        (1.0, 3.0, 3.0, 1.0, 2.0, 2),
    ]
    for tokens, last, now, rate, cap, n in cases:
        inputs = dict(tokens=tokens, last=last, now=now, rate=rate, capacity=cap, n=n)
        level = min(cap, tokens + (now - last) * rate)
        expected = (True, level - n) if level >= n else (False, level)
        got = call(name, token_bucket_acquire, tokens, last, now, rate, cap, n, inputs=inputs)
        if not isinstance(got, tuple) or len(got) != 2:
            fail(name, f"expected a tuple (allowed, tokens_after), got {got!r}", inputs=inputs)
        if bool(got[0]) != expected[0]:
            fail(name, f"allowed: expected {expected[0]}, got {got[0]} (the bucket holds {level:g} tokens after "
                       f"refilling, the request needs {n})", inputs=inputs,
                 hint="refill first: min(capacity, tokens + (now - last) * rate) — the bucket never holds more "
                      "than its capacity")
        compare(name, float(got[1]), float(expected[1]), inputs=inputs, what="tokens_after", atol=1e-9,
                hint="refill first, capped: min(capacity, tokens + (now - last) * rate); then take n tokens only "
                     "when the request is allowed (a refused request takes nothing)")
    passed(name, len(cases), "refill capped at capacity, refusals take nothing")


def _cache_cases():
    import numpy as np

    rng = np.random.default_rng(8)
    keys = rng.standard_normal((6, 8))
    keys[1] = keys[0] * 3.0  # same direction, longer: cosine 1 with key 0
    scopes = ["small", "large", "small", "small", "large", "small"]
    values = ["a", "b", "c", "d", "e", "f"]
    near = keys[3] + 0.05 * rng.standard_normal(8)
    far = rng.standard_normal(8)
    return [
        (near, keys, scopes, values, "small", 0.9),
        (near, keys, scopes, values, "large", 0.9),  # the best match is in another scope: a miss
        (keys[0] * 0.1, keys, scopes, values, "large", 0.99),  # only key 1 is in scope; cosine ignores length
        (far, keys, scopes, values, "small", 0.95),
        (keys[4] * 7, keys, scopes, values, "large", 1.0),
        (near, keys[:0], [], [], "small", 0.5),  # an empty cache
    ]


def check_cache_lookup(cache_lookup) -> None:
    """``cache_lookup(query_vec, keys, scopes, values, scope, threshold)`` -> the value of the most similar key
    in ``scope`` if its cosine similarity is ≥ ``threshold``, else ``None``."""
    import numpy as np

    name = "check_cache_lookup"
    cases = _cache_cases()
    for q, keys, scopes, values, scope, thr in cases:
        inputs = {"scope": scope, "threshold": thr, "n_keys": len(keys)}
        expected = None
        if len(keys):
            sims = (keys @ q) / (np.linalg.norm(keys, axis=1) * np.linalg.norm(q))
            sims = np.where(np.array(scopes) == scope, sims, -np.inf)
            best = int(np.argmax(sims))
            expected = values[best] if sims[best] >= thr - 1e-9 else None
        got = call(name, cache_lookup, q.copy(), keys.copy(), list(scopes), list(values), scope, thr, inputs=inputs)
        if got != expected:
            fail(name, f"expected {expected!r}, got {got!r}", inputs=inputs,
                 hint="only entries whose scope equals `scope` may answer (a cache must never answer for another "
                      "model); cosine = k·q / (|k| |q|) — normalise both; a hit needs similarity >= threshold")
    passed(name, len(cases), "scope respected, cosine similarity")


def check_pick_cascade_threshold(pick_cascade_threshold) -> None:
    """``pick_cascade_threshold(confidence, small_correct, large_correct, target_accuracy) -> float``."""
    import numpy as np

    from course_utils.gateway import pick_cascade_threshold as ref

    name = "check_pick_cascade_threshold"
    rng = np.random.default_rng(8)
    conf = rng.uniform(-3, 0, 200)
    small = rng.uniform(-3, 0, 200) < conf  # confident answers are more often right
    large = rng.random(200) < 0.9
    cases = [
        (conf, small, large, 0.85), (conf, small, large, 0.6), (conf, small, large, 0.99),
        (np.array([-1.0, -0.5, -0.2]), np.array([True, True, True]), np.array([True, False, True]), 1.0),
        (np.array([-2.0, -1.0]), np.array([False, True]), np.array([True, True]), 1.0),
    ]
    for c, s, l, target in cases:
        inputs = {"n": len(c), "target_accuracy": target}
        expected = ref(c, s, l, target)
        got = call(name, pick_cascade_threshold, c.copy(), s.copy(), l.copy(), target, inputs=inputs)
        if not isinstance(got, (int, float, np.floating)) or not (got == expected or (math.isclose(got, expected)
                                                                                     and math.isfinite(got))):
            up = float(np.mean(c < got)) if isinstance(got, (int, float, np.floating)) else float("nan")
            fail(name, f"expected threshold {expected}, got {got} (escalating {up:.1%} instead of "
                       f"{np.mean(c < expected):.1%})", inputs=inputs,
                 hint="try -inf (never escalate), each observed confidence, then +inf, in increasing order; escalate "
                      "where confidence < t; return the first t whose accuracy reaches the target")
    passed(name, len(cases), "fewest escalations that reach the target")
