"""Benchmark for chapter 8: batching throughput, fault tolerance, semantic-cache lookups, quantization, cascade.

Every ratio is measured in one run on this machine (127.0.0.1 only; nothing leaves it).

- batching: the same server (a chapter-3-sized GPT, d_model 128, 4 layers, random weights, 32 new tokens per
  request) with ``max_batch=8`` vs ``max_batch=1``; N concurrent clients, each sending requests back to back.
- faults: ≥ 1,000 requests through HTTP to a model failing 20% of the time (seeded 429/503), then retry
  (3 attempts, full jitter, honouring ``retry-after-ms``) then fallback to a second model (also failing 20%).
- cache: :class:`SemanticCache` lookups at 10,000 entries of 384-d vectors (MiniLM's size), embedding excluded.
- quantization: validation loss of a chapter-3 GPT trained here on the course corpus (seeded, a few hundred
  steps), before/after int8 per row and int4 per group of 32; packed int4 (group 128) size vs fp32 on the linear
  layers whose input width is a multiple of 128.
- cascade: the committed adder models; threshold picked on a validation set, share sent to the large model
  measured on a separate test set.
- continuous batching: :class:`course_utils.batching.Engine` driven in-process (no HTTP) serving ``tiny-gpt``
  (the trained chapter-7 base model) with chat questions of mixed output lengths (16–256 tokens, greedy, no stop
  token): continuous (iteration-level) vs static (gather up to 10 ms, decode to the end) vs one-at-a-time, at
  1/4/8/16 closed-loop clients sending 8 requests each with 16 batch slots, then 16 clients for 8 slots (requests
  queue); KV memory reserved by the block cache vs a per-request reservation of prompt + max_tokens. Timed on the
  engine's CPU clock (steadier than the wall clock on a shared machine; medians of 3 runs with the policies taking
  turns, as bursts of other load still move it), with decode-step counts and latency in decode steps
  (independent of the machine).

- queue: a fresh request's latency when 200 requests (32 tokens each, 8 slots) arrived before it, with an
  unbounded queue and with ``max_queue=64`` (load shedding: a 503 with Retry-After at once).
- http-policies: the continuous engine vs the static batcher behind the same HTTP server with equal-length requests
  (8 closed-loop clients × 4 requests × 16 tokens), runs interleaved, medians of 3 (the machine may be shared).

    python benchmarks/serving.py [--clients 1 8 16] [--requests 1000] [--train-steps 300] [--threads 1]
    python benchmarks/serving.py --skip batching faults cache quant cascade     # continuous batching only
"""

from __future__ import annotations

import argparse
import os

# A cache lookup is one memory-bound matrix-vector product: one BLAS thread is enough, and more thrash on a busy
# 2-core machine. Set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
import random
import threading
import time

import numpy as np
import torch

from course_utils.batching import POLICIES, Engine, run_clients
from course_utils.gateway import (
    RetryableError,
    SemanticCache,
    call_with_fallback,
    cascade_outcome,
    percentile,
    pick_cascade_threshold,
    retry_after_of,
    retry_call,
)
from course_utils.model import GPT, GPTConfig
from course_utils.quantize import model_nbytes, quantize_model, quantize_tensor
from course_utils.served_models import load_served_model, mixed_workload
from course_utils.serving import (
    FaultInjector,
    GPTBackend,
    addition_problems,
    answer_additions,
    create_app,
    load_adder,
    start_server,
)


def load_clients(url: str, n_clients: int, n_each: int, max_tokens: int) -> dict:
    """``n_clients`` threads, each sending ``n_each`` completions back to back; tokens/s and latency."""
    import openai

    latencies, tokens, errors = [], [0], []
    lock = threading.Lock()
    barrier = threading.Barrier(n_clients)

    def worker(i):
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        barrier.wait(timeout=30)
        for j in range(n_each):
            t = time.perf_counter()
            try:
                r = c.completions.create(
                    model="gpt", prompt=f"client {i} request {j}: ", max_tokens=max_tokens, temperature=0
                )
            except Exception as err:  # counted, reported
                errors.append(err)
                continue
            with lock:
                latencies.append(time.perf_counter() - t)
                tokens[0] += r.usage.completion_tokens

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    wall = time.perf_counter() - t0
    return {
        "tokens_per_s": tokens[0] / wall,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "errors": len(errors),
    }


def _bench_backend() -> GPTBackend:
    torch.manual_seed(0)
    return GPTBackend(GPT(GPTConfig(vocab_size=256, d_model=128, n_layers=4, n_heads=4, max_seq_len=128)), name="gpt")


def bench_batching(clients: list[int], n_each: int = 3, max_tokens: int = 32) -> list[dict]:
    backend = _bench_backend()
    rows = []
    for n in clients:
        row = {"clients": n}
        for label, max_batch in (("one", 1), ("batched", 8)):
            app = create_app({"gpt": backend}, max_batch=max_batch, max_wait_ms=10)
            with start_server(app) as url:
                row[label] = load_clients(url, n, n_each, max_tokens)
        rows.append(row)
    return rows


def _fresh_behind(backend, max_queue: int, n_queued: int, body: dict) -> dict:
    """Queue ``n_queued`` requests with the engine held, send a fresh one, resume the engine once the fresh one is
    queued too (or answered): its status and latency, and the flood's."""
    import httpx

    app = create_app({"gpt": backend}, max_batch=8, max_queue=max_queue)
    flood, lat = [], []
    with (
        start_server(app) as url,
        httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=None)) as http,
    ):
        engine = app.state.server.schedulers["gpt"].engine

        def one():
            t = time.perf_counter()
            r = http.post("/v1/completions", json=body)
            flood.append(r.status_code)
            if r.status_code == 200:
                lat.append(time.perf_counter() - t)

        held = engine.hold()
        held.__enter__()
        threads = [threading.Thread(target=one) for _ in range(n_queued)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while engine.stats()["waiting"] + flood.count(503) < n_queued and time.monotonic() < deadline:
            time.sleep(0.005)
        queued, answered = engine.stats()["waiting"], threading.Event()

        def resume():
            while engine.stats()["waiting"] <= queued and not answered.wait(0.002):
                pass
            held.__exit__(None, None, None)

        resumer = threading.Thread(target=resume)
        resumer.start()
        t0 = time.perf_counter()
        fresh = http.post("/v1/completions", json=body)
        fresh_s = time.perf_counter() - t0
        answered.set()
        resumer.join()
        for t in threads:
            t.join(600)
    return {
        "fresh_status": fresh.status_code,
        "fresh_s": fresh_s,
        "retry_after": fresh.headers.get("retry-after"),
        "shed": flood.count(503),
        "served": flood.count(200),
        "p50_s": percentile(lat, 50),
        "p95_s": percentile(lat, 95),
    }


def bench_queue(n_queued: int = 200, max_queue: int = 64, max_tokens: int = 32) -> list[dict]:
    """A fresh request's latency when ``n_queued`` requests arrived before it: an unbounded queue vs ``max_queue``
    (load shedding: beyond it a 503 with Retry-After at once)."""
    backend = _bench_backend()
    body = {"model": "gpt", "prompt": "flood ", "max_tokens": max_tokens, "temperature": 0}
    return [
        {"label": label, **_fresh_behind(backend, bound, n_queued, body)}
        for label, bound in (("unbounded", 10**9), (f"max_queue={max_queue}", max_queue))
    ]


def bench_http_policies(repeats: int = 3, n_clients: int = 8, n_each: int = 4, max_tokens: int = 16) -> dict:
    """The continuous engine vs the static batcher behind the same HTTP server, equal-length requests
    (``n_clients`` closed-loop clients × ``n_each`` × ``max_tokens``); runs interleaved, medians of ``repeats``."""
    from course_utils.serving.scheduler import Batcher, EngineScheduler

    backend = _bench_backend()
    factories = {
        "continuous": lambda b: EngineScheduler(b, max_batch=8),
        "static": lambda b: Batcher(b, max_batch=8, max_wait_ms=10),
    }
    runs = {name: [] for name in factories}
    for _ in range(repeats):
        for name, make in factories.items():  # taking turns: a burst of other load hits both alike
            with start_server(create_app({"gpt": backend}, scheduler_factory=make)) as url:
                runs[name].append(load_clients(url, n_clients, n_each, max_tokens)["tokens_per_s"])
    return {name: {"median": float(np.median(v)), "runs": v} for name, v in runs.items()}


def bench_faults(n_requests: int, error_rate: float = 0.2) -> dict:
    import openai

    torch.manual_seed(0)
    small = GPT(GPTConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=2, max_seq_len=64))
    primary = FaultInjector(GPTBackend(small, name="primary"), error_rate=error_rate, retry_after_s=0.005, seed=1)
    backup = FaultInjector(GPTBackend(small, name="backup"), error_rate=error_rate, retry_after_s=0.005, seed=2)
    app = create_app({"primary": primary, "backup": backup}, max_wait_ms=0)
    rng = random.Random(0)
    first_try = primary_only = answered = 0
    with start_server(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
        t0 = time.perf_counter()
        for _ in range(n_requests):
            calls = []

            def once(model):  # called within this iteration: the loop variable is the current one
                calls.append(model)  # noqa: B023
                try:
                    return c.completions.create(model=model, prompt="x", max_tokens=1, temperature=0)
                except openai.APIStatusError as err:
                    if err.status_code in (429, 503):  # worth retrying; Retry-After comes from the response
                        raise RetryableError(status=err.status_code, retry_after=retry_after_of(err)) from err
                    raise

            def retried(model):
                return lambda: retry_call(
                    lambda: once(model),
                    max_attempts=3,
                    base_delay=0.01,
                    max_delay=0.1,
                    retry_on=(RetryableError,),
                    rng=rng,
                )

            try:
                call_with_fallback(retried("primary"), retried("backup"), errors=(RetryableError,))
            except RetryableError:
                continue
            answered += 1
            first_try += calls == ["primary"]
            primary_only += "backup" not in calls
        wall = time.perf_counter() - t0
    return {
        "requests": n_requests,
        "error_rate": error_rate,
        "no_retry": first_try / n_requests,
        "retry": primary_only / n_requests,
        "retry_fallback": answered / n_requests,
        "wall_s": wall,
    }


def bench_cache(n_entries: int = 10_000, n_lookups: int = 1000, dim: int = 384) -> dict:
    rng = np.random.default_rng(0)
    cache = SemanticCache(lambda t: np.zeros(dim), threshold=0.9, max_entries=n_entries)
    vecs = rng.standard_normal((n_entries, dim)).astype(np.float32)
    for i in range(n_entries):
        cache.put(f"q{i}", i, vector=vecs[i])
    times = []
    for _ in range(n_lookups):
        q = vecs[rng.integers(n_entries)] + 0.1 * rng.standard_normal(dim).astype(np.float32)
        t = time.perf_counter()
        cache.get("", vector=q)
        times.append((time.perf_counter() - t) * 1000)
    return {
        "entries": len(cache),
        "p50_ms": percentile(times, 50),
        "p95_ms": percentile(times, 95),
        "hit_rate": cache.stats()["hit_rate"],
    }


@torch.no_grad()
def val_loss(model, data, iters: int = 10) -> float:
    from course_utils.train import evaluate

    return evaluate(model, data, "val", iters=iters, batch_size=16, block_size=128, seed=1234)


def bench_quantization(train_steps: int) -> dict:
    import copy

    from course_utils.data import corpus_dataset
    from course_utils.train import TrainConfig, train

    data = corpus_dataset(512)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, d_model=128, n_layers=4, n_heads=4, max_seq_len=128))
    config = TrainConfig(
        steps=train_steps,
        lr=3e-3,
        warmup=20,
        batch_size=16,
        block_size=128,
        eval_every=10**9,
        eval_iters=1,
        seed=0,
        progress=False,
    )
    train(model, data, config)
    base = val_loss(model, data)
    out = {"steps": train_steps, "fp32": base}
    for label, bits, group in (("int8", 8, None), ("int4_g32", 4, 32)):
        q = quantize_model(copy.deepcopy(model), bits, group)
        out[label] = val_loss(q, data)
    # group 128 needs in_features divisible by 128: the attention and w1/w3 projections (d_model 128), not w2
    linear = [
        m.weight
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m is not model.lm_head and m.in_features % 128 == 0
    ]
    fp32 = sum(w.numel() * 4 for w in linear)
    packed = sum(quantize_tensor(w, 4, 128).nbytes for w in linear)
    out["int4_g128_ratio"] = fp32 / packed
    out["model_fp32_bytes"] = model_nbytes(model)
    out["model_int4_g32_bytes"] = model_nbytes(quantize_model(copy.deepcopy(model), 4, 32))
    return out


def bench_cascade(n_val: int = 1000, n_test: int = 1000, margin: float = 0.01) -> dict:
    small, large = load_adder("adder-small"), load_adder("adder-large")

    def run(backend, problems):
        correct, logprobs = answer_additions(backend, problems, batch_size=64)
        return np.array(correct), np.array([min(lp) for lp in logprobs])

    out = {}
    for split, n, seed in (("val", n_val, 101), ("test", n_test, 202)):
        problems = addition_problems(n, seed)
        s_ok, conf = run(small, problems)
        l_ok, _ = run(large, problems)
        out[split] = (conf, s_ok, l_ok)
    conf, s_ok, l_ok = out["val"]
    # chosen on validation only, aiming `margin` above 95% so that the unseen test set keeps 95%
    t = pick_cascade_threshold(conf, s_ok, l_ok, (0.95 + margin) * l_ok.mean())
    conf, s_ok, l_ok = out["test"]
    res = cascade_outcome(conf, s_ok, l_ok, t)
    return {
        "small_acc": float(s_ok.mean()),
        "large_acc": float(l_ok.mean()),
        "cascade_acc": res["accuracy"],
        "escalation": res["escalation_rate"],
        "of_large": res["accuracy"] / max(l_ok.mean(), 1e-9),
    }


MEDIAN_KEYS = ("tokens_per_cpu_s", "p50_cpu_s", "p95_cpu_s", "tokens_per_s", "p95_s", "p95_steps")


def bench_continuous(
    clients: list[int], per_client: int = 8, block_size: int = 16, slots: int = 16, repeats: int = 3
) -> list[dict]:
    """Each policy at each client count on the same mixed load (``per_client`` requests per client), ``repeats``
    times, the policies taking turns (a burst of load from other programs hits all of them); medians reported."""
    model, _ = load_served_model("tiny-gpt")
    warm = Engine(model)
    run_clients(warm, mixed_workload(2, seed=99), 2)  # first-call costs (allocations, kernels) out of the timing
    warm.close()
    rows = []
    for n in clients:
        jobs = mixed_workload(per_client * n, seed=n)
        runs = {name: [] for name in POLICIES}
        for _ in range(repeats):
            for name, options in POLICIES.items():
                engine = Engine(model, block_size=block_size, **{"max_batch": slots, **options})
                try:
                    runs[name].append(run_clients(engine, jobs, n))
                finally:
                    engine.close()
        row = {"clients": n, "slots": slots}
        for name, rs in runs.items():
            row[name] = {**rs[0], **{k: float(np.median([r[k] for r in rs])) for k in MEDIAN_KEYS}}
        rows.append(row)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["batching", "faults", "cache", "quant", "cascade", "continuous", "queue", "http-policies"],
    )
    ap.add_argument("--continuous-clients", type=int, nargs="*", default=[1, 4, 8, 16])
    ap.add_argument("--continuous-repeats", type=int, default=3, help="runs per policy and row (medians reported)")
    args = ap.parse_args(argv)
    os.environ.setdefault("COURSE_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    rows = []  # (measure, result, target, met)

    if "batching" not in args.skip:
        for r in bench_batching(args.clients):
            ratio = r["batched"]["tokens_per_s"] / r["one"]["tokens_per_s"]
            print(
                f"clients={r['clients']:>2}: one-at-a-time {r['one']['tokens_per_s']:.0f} tok/s "
                f"(p50 {r['one']['p50_s']:.2f}s, p95 {r['one']['p95_s']:.2f}s) | batched "
                f"{r['batched']['tokens_per_s']:.0f} tok/s (p50 {r['batched']['p50_s']:.2f}s, "
                f"p95 {r['batched']['p95_s']:.2f}s) | ×{ratio:.2f}",
                flush=True,
            )
            if r["clients"] == 8:
                rows.append(
                    (
                        "Throughput with batching, 8 concurrent clients",
                        f"{ratio:.2f}× one-at-a-time",
                        "≥ 2×",
                        ratio >= 2,
                    )
                )
    if "queue" not in args.skip:
        q = bench_queue()
        for r in q:
            print(
                f"{r['label']}: fresh request behind 200 -> HTTP {r['fresh_status']} in {r['fresh_s']:.3f}s "
                f"(Retry-After {r['retry_after']}); flood served {r['served']}, shed {r['shed']}, "
                f"p50 {r['p50_s']:.2f}s, p95 {r['p95_s']:.2f}s",
                flush=True,
            )
        unb, bnd = q
        rows.append(
            (
                "A fresh request's wait with 200 requests queued (8 slots, 32 tokens each)",
                f"unbounded queue: {unb['fresh_s']:.1f} s (HTTP {unb['fresh_status']}); {bnd['label']}: "
                f"{1000 * bnd['fresh_s']:.0f} ms (HTTP {bnd['fresh_status']}, Retry-After {bnd['retry_after']} s), "
                f"p95 of the admitted {bnd['p95_s']:.1f} s vs {unb['p95_s']:.1f} s",
                "≤ 1 s answer",
                bnd["fresh_s"] <= 1,
            )
        )
    if "http-policies" not in args.skip:
        h = bench_http_policies()
        c, st = h["continuous"], h["static"]
        print(f"HTTP, equal lengths: continuous {c['runs']} static {st['runs']} tok/s", flush=True)
        rows.append(
            (
                "Over HTTP, 8 clients × 4 requests × 16 tokens (equal lengths): continuous engine vs static batcher "
                "(medians of 3 interleaved runs)",
                f"{c['median']:.0f} vs {st['median']:.0f} tok/s (×{c['median'] / st['median']:.2f})",
                "≥ 1×",
                c["median"] >= st["median"],
            )
        )
    if "faults" not in args.skip:
        f = bench_faults(args.requests)
        print(
            f"faults 20%: no retry {f['no_retry']:.3f}, retry {f['retry']:.3f}, retry+fallback "
            f"{f['retry_fallback']:.4f} over {f['requests']} requests ({f['wall_s']:.0f}s)",
            flush=True,
        )
        rows.append(
            (
                f"Requests answered with 20% injected faults (retry + fallback, {f['requests']:,} requests)",
                f"{100 * f['retry_fallback']:.2f}% (no retry {100 * f['no_retry']:.1f}%)",
                "≥ 99.5%",
                f["retry_fallback"] >= 0.995,
            )
        )
    if "cache" not in args.skip:
        c = bench_cache()
        print(
            f"semantic cache: {c['entries']} entries, lookup p50 {c['p50_ms']:.2f} ms, p95 {c['p95_ms']:.2f} ms",
            flush=True,
        )
        rows.append(
            ("Semantic-cache lookup p95 at 10,000 entries", f"{c['p95_ms']:.2f} ms", "≤ 5 ms", c["p95_ms"] <= 5)
        )
    if "quant" not in args.skip:
        q = bench_quantization(args.train_steps)
        d8, d4 = q["int8"] - q["fp32"], q["int4_g32"] - q["fp32"]
        print(
            f"quantization ({q['steps']} steps): val loss fp32 {q['fp32']:.4f}, int8 {q['int8']:.4f}, "
            f"int4 g32 {q['int4_g32']:.4f}; linear weights int4 g128 ×{q['int4_g128_ratio']:.2f} smaller; whole "
            f"model {q['model_fp32_bytes'] / 1e6:.2f} MB -> {q['model_int4_g32_bytes'] / 1e6:.2f} MB (int4 g32, "
            "embedding in float)",
            flush=True,
        )
        rows.append(
            (
                "Validation-loss increase, int8 / int4 group 32 (chapter-3 GPT)",
                f"{d8:+.4f} / {d4:+.4f} nats",
                "≤ 0.01 / ≤ 0.1 nats",
                d8 <= 0.01 and d4 <= 0.1,
            )
        )
        rows.append(
            (
                "Packed int4 (group 128) size vs fp32 (linear weights)",
                f"{q['int4_g128_ratio']:.2f}× smaller",
                "≥ 6× smaller",
                q["int4_g128_ratio"] >= 6,
            )
        )
    if "cascade" not in args.skip:
        k = bench_cascade()
        print(
            f"cascade: small {k['small_acc']:.3f}, large {k['large_acc']:.3f}, cascade {k['cascade_acc']:.3f} "
            f"({100 * k['of_large']:.1f}% of large) with {100 * k['escalation']:.1f}% escalated",
            flush=True,
        )
        rows.append(
            (
                "Cascade: share of calls sent to the large model at ≥ 95% of its accuracy",
                f"{100 * k['escalation']:.1f}% (reaches {100 * k['of_large']:.1f}% of large's accuracy)",
                "≤ 50%",
                k["escalation"] <= 0.5 and k["of_large"] >= 0.95,
            )
        )
    if "continuous" not in args.skip:
        # throughput and latency on the engine's CPU clock (Engine.cpu_seconds): other work on a shared machine
        # stretches the wall clock, not the engine's own compute; the wall-clock numbers are printed as well
        # 16 batch slots: every client's request is in the batch; then 16 clients for 8 slots: requests queue
        reps = args.continuous_repeats
        rows_c = bench_continuous(args.continuous_clients, repeats=reps) + bench_continuous([16], slots=8, repeats=reps)
        for r in rows_c:
            print(
                f"clients={r['clients']:>2}, slots={r['slots']}: "
                + " | ".join(
                    f"{name} {r[name]['tokens_per_cpu_s']:.0f} tok/cpu-s (p50 {r[name]['p50_cpu_s']:.2f}s, p95 "
                    f"{r[name]['p95_cpu_s']:.2f}s; {r[name]['stats']['steps']} decode steps, p95 "
                    f"{r[name]['p95_steps']:.0f} of them; wall "
                    f"{r[name]['tokens_per_s']:.0f} tok/s, p95 {r[name]['p95_s']:.2f}s)"
                    for name in POLICIES
                ),
                flush=True,
            )
            cont, stat, one = r["continuous"], r["static"], r["one-at-a-time"]
            n = r["clients"]
            n = f"{n} clients for {r['slots']} slots (a queue)" if r["slots"] < n else f"{n} client{'s' * (n > 1)}"
            ratio = cont["tokens_per_cpu_s"] / stat["tokens_per_cpu_s"]
            step_ratio = stat["stats"]["steps"] / cont["stats"]["steps"]  # the same tokens in fewer forward passes
            rows.append(
                (
                    f"Continuous batching, {n}, mixed lengths 16–256: tokens per engine-CPU-second (p50 / p95 latency;"
                    f" medians of {reps} runs)",
                    f"continuous {cont['tokens_per_cpu_s']:.0f} ({cont['p50_cpu_s']:.2f} / {cont['p95_cpu_s']:.2f}"
                    f" s), ×{ratio:.2f} static {stat['tokens_per_cpu_s']:.0f} ({stat['p50_cpu_s']:.2f} / "
                    f"{stat['p95_cpu_s']:.2f} s), one-at-a-time {one['tokens_per_cpu_s']:.0f} "
                    f"({one['p50_cpu_s']:.2f} / {one['p95_cpu_s']:.2f} s); static needs ×{step_ratio:.2f} the "
                    f"decode steps; p95 latency in decode steps: continuous {cont['p95_steps']:.0f}, static "
                    f"{stat['p95_steps']:.0f}",
                    "≥ 1.5× static, lower p95" if n == "8 clients" else "—",
                    ratio >= 1.5 and cont["p95_cpu_s"] < stat["p95_cpu_s"] if n == "8 clients" else "—",
                )
            )
            if n == "8 clients":
                s = cont["stats"]
                rows.append(
                    (
                        "KV memory reserved but unused (averaged over decode steps), continuous, 8 clients",
                        f"block cache (16 tokens/block) {100 * s['kv_waste']:.1f}% vs per-request "
                        f"prompt + max_tokens reservation {100 * s['kv_waste_maxlen']:.1f}%",
                        "< 10%",
                        s["kv_waste"] < 0.10,
                    )
                )
    print()
    print("| Measure | Result | Target | Met |")
    print("|---|---|---|---|")
    for measure, result, target, met in rows:
        print(f"| {measure} | {result} | {target} | {met if isinstance(met, str) else 'yes' if met else 'no'} |")


if __name__ == "__main__":
    main()
