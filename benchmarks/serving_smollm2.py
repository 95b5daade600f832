"""Benchmark for chapter 8's real model: ``--model smollm2`` behind the course server, timed from the official
``openai`` client.

- load: ``load_backend("smollm2")`` (checkpoint sha256 check + safetensors read + tokenizer), wall and CPU seconds.
- streamed chat: greedy answers streamed through HTTP (127.0.0.1, the server in a background thread of this
  process, continuous batching in the course's engine); per answer the first-token latency (request sent → first
  content chunk) and the decode rate (tokens after the first / time between the first and last chunk). Medians.
- reference: the same model's own ``GPT.generate`` (KV cache, greedy, no server, no engine) on the same prompt and
  number of tokens, in the same run: what the server's decode rate is to be compared with.

The load average is printed beside the table: on a shared machine wall-clock numbers move with other work.

    python benchmarks/serving_smollm2.py [--repeats 3] [--max-tokens 96] [--threads 1] [--model smollm2-float16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import openai
import torch

from course_utils.serving import create_app, start_server
from course_utils.serving.backends import load_backend

QUESTION = "Explain in three sentences how a language model picks the next word."


def streamed_answer(client: openai.OpenAI, max_tokens: int, model: str = "smollm2") -> dict:
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    first = last = None
    tokens = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"ttft": first - t0, "tokens": tokens, "rate": (tokens - 1) / max(last - first, 1e-9)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=1)  # 2 threads on a busy 2-core machine: 8x slower (spin)
    p.add_argument("--model", choices=("smollm2", "smollm2-float16"), default="smollm2")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    wall, cpu = time.perf_counter(), time.process_time()
    backend = load_backend(args.model)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    app = create_app({args.model: backend}, embeddings=False)
    with start_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=600.0, max_retries=0)
        runs = [streamed_answer(client, args.max_tokens, args.model) for _ in range(args.repeats)]
    n = int(statistics.median(r["tokens"] for r in runs))
    prompt = backend.tokenizer.encode(backend.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}]))
    direct = []
    with torch.no_grad():
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            backend.model.generate(torch.tensor([prompt]), n, temperature=0)
            direct.append(n / (time.perf_counter() - t0))
    print(f"{args.model}; torch threads {args.threads}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'what':<36}{'value':>12}")
    print(f"{'load (wall s)':<36}{wall:>12.1f}")
    print(f"{'load (CPU s)':<36}{cpu:>12.1f}")
    print(f"{'answer tokens':<36}{statistics.median(r['tokens'] for r in runs):>12.0f}")
    print(f"{'first-token latency (s, median)':<36}{statistics.median(r['ttft'] for r in runs):>12.2f}")
    print(f"{'decode tokens/s (median)':<36}{statistics.median(r['rate'] for r in runs):>12.1f}")
    print(f"{'GPT.generate tokens/s (median)':<36}{statistics.median(direct):>12.1f}")


if __name__ == "__main__":
    main()
