"""What the server measures: request counters, a latency window, token and cache counts, batch sizes — as JSON
and in Prometheus' text exposition format — and the one-JSON-line-per-request log."""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import Counter, deque
from pathlib import Path

from ..timing import percentile

request_log = logging.getLogger("course_utils.serving.requests")


class Metrics:
    """Counters and a recent-latency window, fed one request record at a time (thread-safe)."""

    def __init__(self, window: int = 10_000):
        self.requests: Counter = Counter()  # (model, status) -> count
        self.latency_ms: deque = deque(maxlen=window)
        self.tokens_in = self.tokens_out = self.cache_hits = self.cache_misses = 0
        self.cache_by_client: Counter = Counter()  # (client, "hits" | "misses") -> count: per API key's name
        self._lock = threading.Lock()

    def record(self, rec: dict) -> None:
        with self._lock:
            self.requests[(rec["model"], rec["status"])] += 1
            if rec["status"] == 200:
                self.latency_ms.append(rec["latency_ms"])
                self.tokens_in += rec["tokens_in"]
                self.tokens_out += rec["tokens_out"]
            if rec.get("cache_hit") is True:
                self.cache_hits += 1
            elif rec.get("cache_hit") is False:
                self.cache_misses += 1
            if rec.get("cache_hit") is not None:
                self.cache_by_client[(str(rec.get("client")), "hits" if rec["cache_hit"] else "misses")] += 1

    def snapshot(self, batchers: dict) -> dict:
        with self._lock:
            lat = list(self.latency_ms)
            by_status, by_model = Counter(), Counter()
            for (model, status), n in self.requests.items():
                by_status[str(status)] += n
                if model is not None:  # a request refused before naming a model (401, bad JSON) has none
                    by_model[str(model)] += n
            return {
                "requests_total": sum(self.requests.values()),
                "requests_by_status": dict(by_status),
                "requests_by_model": dict(by_model),
                "latency_ms": {
                    "p50": percentile(lat, 50),
                    "p95": percentile(lat, 95),
                    "p99": percentile(lat, 99),
                    "count": len(lat),
                },
                "tokens_in": self.tokens_in,
                "tokens_out": self.tokens_out,
                "cache_hits": self.cache_hits,
                "cache_misses": self.cache_misses,
                "cache_by_client": self._cache_by_client(),
                "batch_sizes": {
                    name: {str(k): v for k, v in sorted(b.batch_sizes.items())} for name, b in batchers.items()
                },
                "engines": {
                    name: b.engine.stats()
                    for name, b in batchers.items()  # continuous batching
                    if getattr(b, "engine", None) is not None
                },
            }

    def _cache_by_client(self) -> dict:
        """``{client: {hits, misses, hit_rate}}`` — each API key (by its client name, never the key) sees its own."""
        out = {}
        for client in sorted({c for c, _ in self.cache_by_client}):
            h, m = self.cache_by_client[(client, "hits")], self.cache_by_client[(client, "misses")]
            out[client] = {"hits": h, "misses": m, "hit_rate": h / (h + m) if h + m else 0.0}
        return out


def prometheus_text(snap: dict) -> str:
    """A :meth:`Metrics.snapshot` in Prometheus' text exposition format (counters, and latency quantiles as a
    summary), so a standard scraper and Grafana can read the server without an extra client library."""

    def esc(v) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    lines = [
        "# HELP course_requests_total Completed HTTP requests by status code.",
        "# TYPE course_requests_total counter",
    ]
    lines += [
        f'course_requests_total{{status="{esc(k)}"}} {v}'
        for k, v in sorted(snap["requests_by_status"].items(), key=str)
    ]
    lines += ["# HELP course_model_requests_total Requests by model.", "# TYPE course_model_requests_total counter"]
    lines += [
        f'course_model_requests_total{{model="{esc(k)}"}} {v}'
        for k, v in sorted(snap["requests_by_model"].items(), key=str)
        if k is not None
    ]
    lat = snap["latency_ms"]
    lines += [
        "# HELP course_request_latency_seconds Request latency over the recent window.",
        "# TYPE course_request_latency_seconds summary",
    ]
    for q in ("50", "95", "99"):
        if lat[f"p{q}"] is not None and math.isfinite(lat[f"p{q}"]):  # no requests yet: no quantiles
            lines.append(f'course_request_latency_seconds{{quantile="0.{q}"}} {lat[f"p{q}"] / 1e3:.6f}')
    lines.append(f"course_request_latency_seconds_count {lat['count']}")
    for name, key, help_ in (
        ("course_tokens_in_total", "tokens_in", "Prompt tokens read."),
        ("course_tokens_out_total", "tokens_out", "Tokens generated."),
        ("course_cache_hits_total", "cache_hits", "Answers served from the cache."),
        ("course_cache_misses_total", "cache_misses", "Cache lookups that missed."),
    ):
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {snap[key]}"]
    for name, key, help_ in (
        ("course_client_cache_hits_total", "hits", "Requests answered from the cache, by client (API key)."),
        ("course_client_cache_misses_total", "misses", "Cacheable requests that missed, by client (API key)."),
    ):
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
        lines += [f'{name}{{client="{esc(c)}"}} {v[key]}' for c, v in snap.get("cache_by_client", {}).items()]
    lines += _engine_lines(snap.get("engines", {}), esc)
    return "\n".join(lines) + "\n"


def _engine_lines(engines: dict, esc) -> list[str]:
    """Gauges of each continuous-batching engine: running and waiting requests, KV blocks used and free."""
    lines = []
    for key, help_ in (
        ("running", "Requests in the running batch."),
        ("waiting", "Requests waiting to join."),
        ("blocks_used", "KV-cache blocks held by running requests."),
        ("blocks_free", "KV-cache blocks free."),
    ):
        lines += [f"# HELP course_engine_{key} {help_}", f"# TYPE course_engine_{key} gauge"]
        lines += [f'course_engine_{key}{{model="{esc(m)}"}} {s[key]}' for m, s in sorted(engines.items())]
    return lines


class RequestLog:
    """Write each request record to :class:`Metrics`, a bounded in-memory deque, the ``course_utils.serving.requests``
    logger and, optionally, a JSON-lines file. Records never hold the API key (only the client's name)."""

    def __init__(self, metrics: Metrics, window: int, path: str | Path | None = None):
        self.metrics, self.records = metrics, deque(maxlen=window)
        self.path = Path(path) if path is not None else None

    def __iter__(self):
        return iter(list(self.records))  # a snapshot: the server's threads may append while a reader loops

    def __len__(self) -> int:
        return len(self.records)

    def write(self, rec: dict) -> None:
        self.metrics.record(rec)
        self.records.append(rec)
        line = json.dumps(rec, sort_keys=True)
        request_log.info(line)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
