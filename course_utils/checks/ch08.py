"""Chapter 8 checks: quantization, backoff, token bucket, semantic-cache lookup, cascade threshold.

Each compares the learner's function with the reference in ``course_utils.quantize`` / ``course_utils.gateway`` on
several inputs, including the edge cases where the plausible bugs show (a row whose largest weight is negative,
groups, the cap on backoff, a bucket refilled past its capacity, a cache entry from another model).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from ..gateway import cascade as ref_cascade
from ..gateway.cascade import cascade_outcome, pick_cascade_threshold
from ..gateway.resilience import backoff_delay
from ..quantize import absmax_quantize, group_dequantize
from ._core import call, compare, describe, exercise, fail, passed

__all__ = [
    "check_quantize_int8",
    "check_dequantize",
    "check_backoff_delays",
    "check_full_jitter_delay",
    "check_token_bucket_acquire",
    "check_cache_lookup",
    "check_ttl_cache",
    "check_pick_cascade_threshold",
    "check_resilient_client",
    "check_cascade_policy",
    "cascade_data",
]


def _weights():

    g = torch.Generator().manual_seed(8)
    w = torch.randn(6, 16, generator=g) * 0.1
    w[1, 5] = -0.9  # the row's largest magnitude is negative: max() would miss it
    w[2] = 0.0  # an all-zero row
    w[3, 0] = 3.0  # an outlier
    return [w, torch.tensor([[-2.0, 0.5, 1.0, -0.25]]), torch.randn(3, 8, generator=g).double(), torch.tensor([[0.3]])]


@exercise("8.1")
def check_quantize_int8(quantize_int8) -> None:
    """``quantize_int8(w) -> (q, scales)``: int8 ``q`` like ``w``, float ``scales`` ``[rows, 1]`` = absmax / 127."""

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
            fail(
                name,
                f"q must be an int8 tensor, got {getattr(q, 'dtype', type(q).__name__)}",
                inputs=inputs,
                hint="finish with .to(torch.int8) after rounding and clamping to [-127, 127]",
            )
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != tuple(s_ref.shape):
            fail(
                name,
                f"scales must be a tensor of shape {tuple(s_ref.shape)} (one per row, kept as a column), "
                f"got {getattr(s, 'shape', type(s).__name__)}",
                inputs=inputs,
                hint="use keepdim=True",
            )
        if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
            fail(
                name,
                f"every scale must be a positive finite number, got {describe(s)}",
                inputs=inputs,
                hint="an all-zero row has absmax 0: give it scale 1 (any positive scale encodes zeros exactly), "
                "otherwise w / scale is 0 / 0 = NaN",
            )
        nonzero = w.abs().amax(dim=-1) > 0
        compare(
            name,
            s[nonzero].float(),
            s_ref[nonzero],
            inputs=inputs,
            what="scales",
            rtol=1e-4,
            atol=1e-8,
            hint="scale = absmax / 127: the largest magnitude |w| in the row, so a negative extreme "
            "counts, not the largest value",
        )
        compare(
            name,
            q,
            q_ref,
            inputs=inputs,
            what="q",
            atol=0,
            rtol=0,
            hint="q = round(w / scale), clamped to [-127, 127]; an all-zero row must give q = 0, not NaN",
        )
        compare(
            name,
            group_dequantize(q, s.float()),
            group_dequantize(q_ref, s_ref),
            inputs=inputs,
            what="q * scale",
            atol=1e-6,
            hint="dequantizing your (q, scales) should give back w to within scale/2",
        )
    passed(name, len(cases), "absmax per row, int8 in [-127, 127]")


@exercise("8.2")
def check_dequantize(dequantize) -> None:
    """``dequantize(q, scales) -> w_hat``: float32, each of ``scales``' columns covering one group of a row."""

    name = "check_dequantize"
    w = _weights()[0]
    cases = [
        absmax_quantize(w, 8),
        absmax_quantize(w, 4, 4),
        absmax_quantize(w, 4, 8),
        absmax_quantize(torch.tensor([[1.0, -2.0]]), 8),
    ]
    for q, s in cases:
        inputs = {"q": q, "scales": s}
        got = call(name, dequantize, q.clone(), s.clone(), inputs=inputs)
        compare(
            name,
            got,
            group_dequantize(q, s),
            inputs=inputs,
            what="w_hat",
            atol=1e-6,
            hint="group g of row r is q[r, g*G:(g+1)*G] * scales[r, g] with G = cols // scales.shape[1]: "
            "reshape q to [rows, groups, G] (or repeat_interleave the scales — not repeat)",
        )
        if not isinstance(got, torch.Tensor) or got.dtype != torch.float32:
            fail(
                name,
                f"w_hat must be float32, got {getattr(got, 'dtype', type(got).__name__)}",
                inputs=inputs,
                hint="convert q with .float() before multiplying: int8 arithmetic would overflow",
            )
    passed(name, len(cases), "per row and per group")


@exercise("8.3")
def check_backoff_delays(backoff_delays) -> None:
    """``backoff_delays(n, base_delay, max_delay) -> [n waits]`` without jitter: ``min(max, base · 2^(i-1))``."""

    name = "check_backoff_delays"
    cases = [(5, 0.1, 10.0), (8, 0.1, 1.0), (1, 0.5, 2.0), (0, 0.1, 1.0), (12, 0.25, 3.0)]
    for n, base, cap in cases:
        inputs = {"n": n, "base_delay": base, "max_delay": cap}
        expected = [backoff_delay(i, base_delay=base, max_delay=cap, jitter="none") for i in range(1, n + 1)]
        got = call(name, backoff_delays, n, base, cap, inputs=inputs)
        compare(
            name,
            list(got) if isinstance(got, (list, tuple)) else got,
            expected,
            inputs=inputs,
            what="waits",
            hint="the first wait is base_delay, each next one twice the previous, capped at max_delay: "
            "doubles, never exceeds the cap",
        )
    passed(name, len(cases), "doubling, capped")


@exercise("8.4")
def check_full_jitter_delay(full_jitter_delay) -> None:
    """``full_jitter_delay(n, base_delay, max_delay, rng) -> float``: uniform on ``[0, min(max_delay,
    base_delay · 2^(n-1))]``, drawn from ``rng`` (a ``random.Random``). Checked on its distribution."""

    name = "check_full_jitter_delay"
    cases = [(1, 0.1, 2.0), (3, 0.1, 2.0), (6, 0.1, 2.0), (10, 0.05, 1.0)]
    draws = 4000
    for n, base, cap in cases:
        inputs = {"n": n, "base_delay": base, "max_delay": cap, "rng": "random.Random(seed)"}
        ceiling = min(cap, base * 2 ** (n - 1))
        rng = random.Random(n)
        xs = [call(name, full_jitter_delay, n, base, cap, rng, inputs=inputs) for _ in range(draws)]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
            fail(
                name,
                f"expected a float, got {type(next(x for x in xs if not isinstance(x, (int, float)))).__name__}",
                inputs=inputs,
            )
        if min(xs) < 0 or max(xs) > ceiling + 1e-12:
            fail(
                name,
                f"waits must lie in [0, {ceiling:g}] (the capped backoff of retry {n}), got values from "
                f"{min(xs):.4g} to {max(xs):.4g}",
                inputs=inputs,
                hint="the ceiling is min(max_delay, base_delay · 2^(n-1)): cap first, then draw below the ceiling",
            )
        mean, sd = sum(xs) / draws, ceiling / math.sqrt(12 * draws)  # the sampling error of a uniform's mean
        if abs(mean - ceiling / 2) > 5 * sd:
            fail(
                name,
                f"over {draws} draws the mean wait is {mean:.4g}, expected {ceiling / 2:.4g} (half the "
                f"ceiling {ceiling:g})",
                inputs=inputs,
                hint="full jitter draws uniformly from 0 to the ceiling: no fixed part (that is 'equal jitter'), "
                "no constant wait",
            )
        ordered = sorted(xs)
        ks = max(max(abs((i + 1) / draws - x / ceiling), abs(i / draws - x / ceiling)) for i, x in enumerate(ordered))
        if ks > 0.035:
            fail(
                name,
                f"the waits are not uniform on [0, {ceiling:g}]: largest gap between their distribution and "
                f"the uniform one is {ks:.3f} (Kolmogorov-Smirnov; 0.035 allowed)",
                inputs=inputs,
                hint="draw one uniform number in [0, ceiling]; capping after drawing piles waits up at the cap",
            )
        again = [call(name, full_jitter_delay, n, base, cap, random.Random(n), inputs=inputs) for _ in range(1)]
        if again[0] != xs[0]:
            fail(
                name,
                "the same seeded rng gave a different first wait: the draw does not come from `rng`",
                inputs=inputs,
                hint="use rng.uniform(...) or rng.random(), not the random module's global functions, "
                "so that tests (and simulations) can replay the waits",
            )
    passed(name, len(cases), f"uniform on [0, capped backoff], {draws} seeded draws each")


@exercise("8.5")
def check_token_bucket_acquire(token_bucket_acquire) -> None:
    """``token_bucket_acquire(tokens, last, now, rate, capacity, n) -> (allowed, tokens_after)``."""
    name = "check_token_bucket_acquire"
    cases = [  # (tokens, last, now, rate, capacity, n)
        (5.0, 0.0, 0.0, 1.0, 5.0, 1),
        (0.0, 0.0, 0.5, 2.0, 5.0, 1),
        (0.0, 0.0, 0.25, 2.0, 5.0, 1),
        (4.0, 0.0, 100.0, 1.0, 5.0, 5),
        (4.0, 0.0, 100.0, 1.0, 5.0, 6),
        (2.0, 1.0, 1.5, 4.0, 10.0, 3),
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
            fail(
                name,
                f"allowed: expected {expected[0]}, got {got[0]} (the bucket holds {level:g} tokens after "
                f"refilling, the request needs {n})",
                inputs=inputs,
                hint="refill for the time elapsed since `last` first — the bucket never holds more than its capacity",
            )
        compare(
            name,
            float(got[1]),
            float(expected[1]),
            inputs=inputs,
            what="tokens_after",
            atol=1e-9,
            hint="refill first (rate per second since `last`, capped at capacity); then take n tokens only "
            "when the request is allowed (a refused request takes nothing)",
        )
    passed(name, len(cases), "refill capped at capacity, refusals take nothing")


def _cache_cases():

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
        # two in-scope keys above the threshold, the better one stored later: the best answers, not the first
        (
            np.array([1.0, 0, 0]),
            np.array([[0.93, 0.3676, 0], [0, 1.0, 0], [0.99, 0, 0.1411]]) * [[2.0], [1.0], [0.5]],
            ["s", "s", "s"],
            ["first", "other", "best"],
            "s",
            0.9,
        ),
    ]


@exercise("8.6")
def check_cache_lookup(cache_lookup) -> None:
    """``cache_lookup(query_vec, keys, scopes, values, scope, threshold)`` -> the value of the most similar key
    in ``scope`` if its cosine similarity is ≥ ``threshold``, else ``None``."""

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
            extra = (
                " — the first key above the threshold answered, but a later key is more similar"
                if expected == "best" and got == "first"
                else ""
            )
            fail(
                name,
                f"expected {expected!r}, got {got!r}{extra}",
                inputs=inputs,
                hint="only entries whose scope equals `scope` may answer (a cache must never answer for another "
                "model); cosine = k·q / (|k| |q|) — normalise both; the most similar key answers if its "
                "similarity is >= threshold",
            )
    passed(name, len(cases), "scope respected, cosine similarity, best match")


def _unit_at(cos: float, axis: int, length: float):
    """A 3-d vector of ``length`` whose cosine with [1, 0, 0] is ``cos`` (the rest along ``axis``)."""

    v = np.zeros(3)
    v[0], v[axis] = cos, math.sqrt(1 - cos * cos)
    return v * length


@exercise("8.7")
def check_ttl_cache(TTLSemanticCache) -> None:
    """``TTLSemanticCache(threshold, ttl_s, clock)`` with ``put(vector, value)`` and ``get(vector)``: ``get`` returns
    the value of the most cosine-similar entry among those stored at most ``ttl_s`` seconds ago, if that
    similarity is >= ``threshold``; otherwise ``None``."""

    name = "check_ttl_cache"
    q = np.array([1.0, 0.0, 0.0])
    good, best, poor = _unit_at(0.92, 1, 3.0), _unit_at(0.97, 2, 0.5), _unit_at(0.80, 1, 1.0)
    # (what is stored: (time, vector, value)), ttl, threshold, query time, expected
    cases = [
        ([(0.0, good, "good"), (1.0, best, "best")], 10.0, 0.9, 2.0, "best"),  # the best match, not the first
        ([(0.0, best, "best"), (1.0, good, "good")], 10.0, 0.9, 2.0, "best"),
        ([(0.0, good, "good"), (1.0, best, "best")], 10.0, 0.9, 10.5, "best"),  # "good" expired, "best" alive
        ([(0.0, best, "best"), (5.0, good, "good")], 10.0, 0.9, 12.0, "good"),  # the best expired: next best answers
        ([(0.0, best, "best"), (5.0, poor, "poor")], 10.0, 0.9, 12.0, None),  # the one alive is below the threshold
        ([(0.0, good, "good"), (1.0, best, "best")], 10.0, 0.9, 11.5, None),  # everything expired
        ([(0.0, good, "good")], 10.0, 0.9, 10.0, "good"),  # exactly ttl_s old: still alive
        ([(0.0, poor, "poor"), (0.0, good * 0.01, "good")], 60.0, 0.9, 1.0, "good"),  # cosine ignores length
        ([(0.0, good, "good")], 60.0, 0.95, 1.0, None),  # below the threshold
        ([], 60.0, 0.5, 0.0, None),  # empty
        # a query that is not a unit vector: a raw dot product with it is not the cosine
        ([(0.0, good, "good")], 60.0, 0.9, 1.0, "good", 0.5),  # q·k = 0.46 < 0.9, cosine 0.92 >= 0.9
        ([(0.0, poor, "poor")], 60.0, 0.9, 1.0, None, 4.0),  # q·k = 3.2 >= 0.9, cosine 0.80 < 0.9
    ]
    for stored, ttl, thr, at, expected, *query_length in cases:
        length = query_length[0] if query_length else 1.0
        inputs = {
            "stored (time, value)": [(t, v) for t, _, v in stored],
            "ttl_s": ttl,
            "threshold": thr,
            "query at": at,
            "query length": length,
        }
        now = [0.0]
        cache = call(name, TTLSemanticCache, thr, ttl, lambda: now[0], inputs=inputs)  # noqa: B023 (this case's clock)
        for t, vec, value in stored:
            now[0] = t
            call(name, cache.put, vec.copy(), value, inputs=inputs)
        now[0] = at
        got = call(name, cache.get, q * length, inputs=inputs)
        if got != expected:
            why = ""
            expired = {v for t, _, v in stored if at - t > ttl}
            if length != 1.0:
                why = f": the query's length is {length:g}; a similarity that changes with it is not the cosine"
            elif got in expired:
                why = f": an expired entry answered (older than ttl_s = {ttl:g} s at time {at:g})"
            elif expected == "best" and got == "good":
                why = ": a less similar entry answered — look at every live entry and keep the most similar"
            elif expected == "good" and got is None:
                why = ": drop expired entries *before* choosing the best, not after"
            fail(
                name,
                f"get returned {got!r}, expected {expected!r}{why}",
                inputs=inputs,
                hint="among entries with now - stored_at <= ttl_s, take the highest cosine similarity "
                "(normalise both vectors); answer only if it is >= threshold",
            )
    passed(name, len(cases), "best live match, TTL, threshold, cosine of vectors of any length")


@exercise("8.8")
def check_pick_cascade_threshold(pick_cascade_threshold) -> None:
    """``pick_cascade_threshold(confidence, small_correct, large_correct, target_accuracy) -> float``."""

    name = "check_pick_cascade_threshold"
    rng = np.random.default_rng(8)
    conf = rng.uniform(-3, 0, 200)
    small = rng.uniform(-3, 0, 200) < conf  # confident answers are more often right
    large = rng.random(200) < 0.9
    cases = [
        (conf, small, large, 0.85),
        (conf, small, large, 0.6),
        (conf, small, large, 0.99),
        (np.array([-1.0, -0.5, -0.2]), np.array([True, True, True]), np.array([True, False, True]), 1.0),
        (np.array([-2.0, -1.0]), np.array([False, True]), np.array([True, True]), 1.0),
    ]
    for c, s, l, target in cases:
        inputs = {"n": len(c), "target_accuracy": target}
        expected = ref_cascade.pick_cascade_threshold(c, s, l, target)
        got = call(name, pick_cascade_threshold, c.copy(), s.copy(), l.copy(), target, inputs=inputs)
        if not isinstance(got, (int, float, np.floating)) or not (
            got == expected or (math.isclose(got, expected) and math.isfinite(got))
        ):
            up = float(np.mean(c < got)) if isinstance(got, (int, float, np.floating)) else float("nan")
            fail(
                name,
                f"expected threshold {expected}, got {got} (escalating {up:.1%} instead of "
                f"{np.mean(c < expected):.1%})",
                inputs=inputs,
                hint="try -inf (never escalate), each observed confidence, then +inf, in increasing order; escalate "
                "where confidence < t; return the first t whose accuracy reaches the target",
            )
    passed(name, len(cases), "fewest escalations that reach the target")


def _ask_resilient(name, echo, client, i, phase) -> bool:
    """One request through the learner's client: True if answered (rightly), False on RuntimeError."""
    prompt = f"q{i}?"
    inputs = {"phase": phase, "prompt": prompt, "max_tokens": 4}
    try:
        text = client.complete(prompt, max_tokens=4)
    except RuntimeError:
        return False
    except NotImplementedError as err:
        fail(name, f"complete still raises NotImplementedError({err})", hint="write complete()")
    except Exception as err:  # noqa: BLE001 - the learner's bug: name it
        fail(
            name,
            f"complete raised {type(err).__name__}: {err}",
            inputs=inputs,
            hint="catch the HTTP errors (openai.APIStatusError) and retry; when every model failed raise RuntimeError",
        )
    if text != echo.generate(prompt, 4).text:
        fail(
            name,
            f"answered {text!r}, expected {echo.generate(prompt, 4).text!r}",
            inputs=inputs,
            hint="return the completion's text: response.choices[0].text",
        )
    return True


def _dead_model_phases(name, client, primary, backup, settings, now, ask) -> tuple[int, int]:
    """Capstone phases 2 and 3: the first model down (the breaker must keep calls to it few), then back (the
    client must try it again after reset_timeout_s). Returns (calls that reached the dead model, requests)."""
    primary.error_rate, backup.error_rate = 1.0, 0.0
    before, n_down = primary.calls, 60
    for i in range(n_down):
        now[0] += 1.0
        if not ask(client, 1000 + i, "first model down"):
            fail(
                name,
                "a request failed while the second model was healthy",
                inputs=settings,
                hint="when the first model fails (or its circuit is open), fall back to the next one",
            )
    reached = primary.calls - before
    bound = settings["failure_threshold"] * settings["max_attempts"] + 3 * settings["max_attempts"]
    if reached > bound:
        fail(
            name,
            f"{reached} calls reached the dead model during {n_down} requests (at most {bound} expected: "
            "the circuit should open after failure_threshold failed requests)",
            inputs=settings,
            hint="count consecutive failed requests per model; at failure_threshold open its circuit and skip "
            "the model until reset_timeout_s has passed on the clock",
        )
    primary.error_rate = 0.0
    now[0] += settings["reset_timeout_s"] + 1
    before = primary.calls
    for i in range(5):
        now[0] += 0.1
        ask(client, 2000 + i, "first model back")
    if primary.calls - before == 0:
        fail(
            name,
            "the first model recovered but the client never tried it again",
            inputs=settings,
            hint="after reset_timeout_s an open circuit lets one trial request through (half-open); success closes it",
        )
    return reached, n_down


def _refusing_app(status: int, hits: list):
    """A server whose every completion request is refused with ``status`` (401 bad key, 422 bad request)."""
    from fastapi import FastAPI  # noqa: PLC0415 — FastAPI (~2 s) for the capstone only, not every chapter-8 check
    from fastapi.responses import JSONResponse  # noqa: PLC0415 — FastAPI, for the capstone only

    app = FastAPI()

    @app.post("/v1/completions")
    def refuse() -> JSONResponse:
        hits.append(status)
        kind = "authentication_error" if status == 401 else "invalid_request_error"
        return JSONResponse({"error": {"message": f"refused ({status})", "type": kind}}, status_code=status)

    return app


def _client_errors_propagate(name, ResilientClient, settings, waits, now) -> int:
    """Capstone phase 0: a 401 or 422 is the caller's bug, not a fault; one request, no wait, the error raised."""

    import openai  # noqa: PLC0415 — openai (~3 s) for the capstone only

    from ..serving import start_server  # noqa: PLC0415 — serving's __init__ imports FastAPI (~2 s): capstone only

    for status in (401, 422):
        hits: list = []
        inputs = {"server answers": status, **settings}
        with start_server(_refusing_app(status, hits)) as url:
            client = call(name, ResilientClient, url, ["primary", "backup"], rng=random.Random(0), sleep=waits.append,
                          clock=lambda: now[0], inputs=inputs, **settings)  # fmt: skip
            n_waits = len(waits)
            try:
                client.complete("q?", max_tokens=4)
            except openai.APIStatusError as err:
                raised = err.status_code
            except NotImplementedError as err:
                fail(name, f"complete still raises NotImplementedError({err})", hint="write complete()")
            except Exception as err:  # noqa: BLE001 - the learner's choice of error: name it
                raised = type(err).__name__
            else:
                raised = None
        if len(hits) > 1 or len(waits) > n_waits:
            fail(
                name,
                f"the server answered {status} and your client sent it {len(hits)} requests "
                f"({len(waits) - n_waits} waits): {status} says the request itself is wrong, another try or "
                "another model gets the same answer",
                inputs=inputs,
                hint="retry (and fall back) only on 429/500/502/503/504; any other openai.APIStatusError "
                "propagates at once",
            )
        if raised != status:
            fail(
                name,
                f"after a {status}, complete {'returned' if raised is None else f'raised {raised}'} instead of "
                f"letting the openai.APIStatusError ({status}) propagate",
                inputs=inputs,
                hint="re-raise an error whose status_code is not retryable: the caller must see that its key or "
                "its request is wrong",
            )
    return 2


def _waits_are_jittered(name, waits, settings) -> None:
    """Capstone: the client waited between tries, with full jitter, each wait in [0, max_delay]."""
    cap = settings["max_delay"]
    if not waits:
        fail(
            name,
            "200 requests at 20% faults, and your client retried without ever calling self.sleep: retries at once "
            "hit a busy server again at the worst moment",
            inputs=settings,
            hint="between two tries of a model, self.sleep(full_jitter_delay(attempt, base_delay, max_delay, rng))",
        )
    outside = [w for w in waits if not 0.0 <= w <= cap]
    if outside:
        fail(
            name,
            f"a wait of {outside[0]:.4g} s is outside [0, max_delay = {cap:g}]",
            inputs=settings,
            hint="full jitter draws uniformly from [0, min(max_delay, base_delay·2^(attempt−1))]",
        )
    fixed = {min(cap, settings["base_delay"] * 2.0**k) for k in range(32)}
    if all(any(abs(w - f) < 1e-12 for f in fixed) for w in waits):
        fail(
            name,
            f"all {len(waits)} waits are exactly the exponential steps {sorted(fixed)[:4]}...: no jitter, so clients "
            "that failed together retry together",
            inputs=settings,
            hint="draw each wait uniformly from [0, cap] with self.rng (your full_jitter_delay, 8.4)",
        )


def _both_down(name, client, primary, backup, settings, now) -> None:
    """Capstone: with every model failing, complete raises the documented RuntimeError."""
    import openai  # noqa: PLC0415 — openai (~3 s) for the capstone only

    primary.error_rate = backup.error_rate = 1.0
    now[0] += settings["reset_timeout_s"] + 1
    inputs = {"phase": "both models down", **settings}
    try:
        got = client.complete("q-down?", max_tokens=4)
    except RuntimeError:
        return
    except openai.APIStatusError as err:
        fail(
            name,
            f"with both models down, complete let openai's {type(err).__name__} ({err.status_code}) escape",
            inputs=inputs,
            hint="when every model failed (or was skipped), raise RuntimeError: the documented error callers catch",
        )
    except Exception as err:  # noqa: BLE001 - name the learner's error
        fail(name, f"with both models down, complete raised {type(err).__name__}: {err}", inputs=inputs,
             hint="when every model failed (or was skipped), raise RuntimeError")  # fmt: skip
    fail(
        name,
        f"with both models down, complete returned {got!r} instead of raising RuntimeError",
        inputs=inputs,
        hint="a caller cannot tell an empty answer from a failure: raise RuntimeError when every model failed",
    )


@exercise("8.10")
def check_resilient_client(ResilientClient, *, n_requests: int = 200) -> None:
    """Capstone: ``ResilientClient(url, models, *, max_attempts, base_delay, max_delay, failure_threshold,
    reset_timeout_s, rng, sleep, clock)`` with ``complete(prompt, max_tokens) -> str`` (``RuntimeError`` when every
    model failed), run against the course server on 127.0.0.1 with injected faults.

    1. 20% faults on both models: at least 99% of ``n_requests`` answered, every answer right.
    2. The first model down (100% faults): every request answered by the second; the circuit breaker keeps the
       calls that reach the dead model to a handful.
    3. The first model back: after ``reset_timeout_s`` the client tries it again and it answers.
    4. Both models down: ``RuntimeError``. And before all that: a 401 or 422 is sent once and propagates; the
       waits between tries are full-jitter draws within [0, ``max_delay``].
    """

    from ..serving import EchoBackend, FaultInjector, create_app, start_server  # noqa: PLC0415 — serving's __init__ imports FastAPI (~2 s): capstone only

    name = "check_resilient_client"
    settings = dict(max_attempts=3, base_delay=0.01, max_delay=0.1, failure_threshold=5, reset_timeout_s=30.0)
    primary = FaultInjector(EchoBackend("primary"), error_rate=0.2, retry_after_s=0.01, seed=1)
    backup = FaultInjector(EchoBackend("backup"), error_rate=0.2, retry_after_s=0.01, seed=2)
    echo, waits, now = EchoBackend(), [], [0.0]
    app = create_app({"primary": primary, "backup": backup}, max_wait_ms=0)

    def ask(client, i, phase):
        return _ask_resilient(name, echo, client, i, phase)

    n_refused = _client_errors_propagate(name, ResilientClient, settings, waits, now)
    with start_server(app) as url:
        client = call(
            name,
            ResilientClient,
            url,
            ["primary", "backup"],
            rng=random.Random(0),
            sleep=waits.append,
            clock=lambda: now[0],
            inputs=settings,
            **settings,
        )
        answered = 0
        for i in range(n_requests):
            now[0] += 0.1
            answered += ask(client, i, "20% faults")
        if answered < 0.99 * n_requests:
            fail(
                name,
                f"answered {answered}/{n_requests} = {answered / n_requests:.1%} at 20% injected faults, target 99%",
                inputs=settings,
                hint="retry each model up to max_attempts times with full-jitter waits, then fall back to the next "
                "model; 0.2^6 of requests fail both",
            )
        _waits_are_jittered(name, waits, settings)
        rate = answered / n_requests
        reached, n_down = _dead_model_phases(name, client, primary, backup, settings, now, ask)
        _both_down(name, client, primary, backup, settings, now)
    passed(
        name,
        n_refused + n_requests + n_down + 5 + 1,
        f"{rate:.1%} answered at 20% faults; the dead model reached {reached} times in {n_down} requests; "
        f"{sum(waits):.2f} s of backoff in all",
    )


_CASCADE: dict = {}


def cascade_data(split: str):
    """``(problems, small_correct, small_confidence, large_correct, cost_large)`` of the chapter's two adders on
    1,000 seeded sums: ``"val"`` (seed 101, for designing) or ``"test"`` (seed 202, what the open check scores).
    Confidence = mean log-probability of the small model's answer tokens; costs in small-model calls (parameters)."""

    from ..serving import addition_problems, answer_additions, load_adder  # noqa: PLC0415 — serving's __init__ imports FastAPI (~2 s): cascade checks only

    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    if split not in _CASCADE:
        small, large = load_adder("adder-small"), load_adder("adder-large")
        problems = addition_problems(1000, seed=101 if split == "val" else 202)
        s_ok, s_lp = answer_additions(small, problems)
        l_ok, _ = answer_additions(large, problems)
        cost_large = sum(p.numel() for p in large.model.parameters()) / sum(p.numel() for p in small.model.parameters())
        _CASCADE[split] = (
            problems,
            np.array(s_ok),
            np.array([np.mean(lp) for lp in s_lp]),
            np.array(l_ok),
            float(cost_large),
        )
    return _CASCADE[split]


@exercise("8.9")
def check_cascade_policy(threshold_for) -> None:
    """Open exercise: ``threshold_for(prompt) -> float``, a confidence threshold per prompt. The small model
    answers first and the query escalates to the large one when its confidence is below the threshold; ``+inf``
    means "skip the small model, ask the large one directly" (one large call, no small call). Passes when, on the
    test sums, the policy is at least as accurate as the reference cascade (one threshold picked on the
    validation sums for 96% of the large model's accuracy) and costs less per query."""

    name = "check_cascade_policy"
    _, s_val, c_val, l_val, _ = cascade_data("val")
    problems, s_ok, conf, l_ok, cost_large = cascade_data("test")
    t_ref = pick_cascade_threshold(c_val, s_val, l_val, 0.96 * l_val.mean())
    ref = cascade_outcome(conf, s_ok, l_ok, t_ref, cost_large=cost_large)
    ts = []
    for prompt, _ in problems:
        t = call(name, threshold_for, prompt, inputs={"prompt": prompt})
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating)) or math.isnan(t):
            fail(
                name,
                f"expected a float threshold, got {t!r}",
                inputs={"prompt": prompt},
                hint="return a number: -inf never escalates, +inf sends the query straight to the large model",
            )
        ts.append(float(t))
    ts = np.array(ts)
    direct = np.isposinf(ts)
    up = ~direct & (conf < ts)
    accuracy = float(np.where(direct | up, l_ok, s_ok).mean())
    cost = float((~direct).mean() * 1.0 + (direct | up).mean() * cost_large)
    report = (
        f"your policy: accuracy {accuracy:.1%}, cost {cost:.3f} small-calls per query ({direct.mean():.0%} "
        f"straight to large, {up.mean():.0%} escalated); reference cascade: {ref['accuracy']:.1%}, cost "
        f"{ref['cost']:.3f} ({ref['escalation_rate']:.0%} escalated)"
    )
    if accuracy < ref["accuracy"]:
        fail(
            name,
            f"{report}: less accurate than the reference",
            hint="escalate more where the small model is "
            "often wrong; the target is the reference's accuracy, at a lower cost",
        )
    if cost >= ref["cost"]:
        fail(
            name,
            f"{report}: not cheaper than the reference",
            hint="an escalated query pays for both models; "
            "queries the small model almost never gets right are cheaper sent straight to the large one",
        )
    passed(name, len(problems), f"{report}; {1 - cost / ref['cost']:.0%} cheaper at equal accuracy")
