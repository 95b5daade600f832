"""KV-cache generation vs recomputing the whole prefix every step: tokens/s at 256 generated tokens.

    python benchmarks/generate.py [--new-tokens 256] [--repeats 3] [--threads 2]

Both paths run in the same process on the same model (chapter 3's notebook configuration: d_model 128,
4 layers, 4 query heads sharing 2 key/value heads, vocabulary 512) and must produce the same greedy tokens.
Prints a Markdown table. Without a cache, step t runs the model over all t tokens (quadratic total work);
with a cache it runs over one token and attends to the t cached keys.
"""

from __future__ import annotations

import argparse

import torch

from course_utils.model import GPT, GPTConfig
from course_utils.timing import best_of


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=16, help="prompt length in tokens")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=512, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=args.prompt + args.new_tokens
    )
    model = GPT(cfg).eval()
    print(
        f"model: {model.param_counts()['total']:,} parameters, d_model {cfg.d_model}, {cfg.n_layers} layers, "
        f"{cfg.n_heads}/{cfg.n_kv_heads} q/kv heads; prompt {args.prompt} tokens, {args.new_tokens} generated, "
        f"greedy, best of {args.repeats}, {torch.get_num_threads()} threads\n"
    )
    rows = []
    for batch in args.batch:
        prompt = torch.randint(0, cfg.vocab_size, (batch, args.prompt), generator=torch.Generator().manual_seed(1))
        model.generate(prompt, 8, temperature=0.0)  # warm-up
        t_cache, out_cache = best_of(
            lambda p=prompt: model.generate(p, args.new_tokens, temperature=0.0), args.repeats, with_result=True
        )
        t_full, out_full = best_of(
            lambda p=prompt: model.generate(p, args.new_tokens, temperature=0.0, use_cache=False),
            args.repeats,
            with_result=True,
        )
        assert torch.equal(out_cache, out_full), "KV-cache and full-recompute generation disagree"
        n = batch * args.new_tokens
        rows.append((batch, n / t_full, n / t_cache, t_full / t_cache))
    print("| batch | no cache (tokens/s) | KV cache (tokens/s) | speed-up |")
    print("|---:|---:|---:|---:|")
    for batch, full, cached, ratio in rows:
        print(f"| {batch} | {full:,.0f} | {cached:,.0f} | **{ratio:.1f}×** |")
    print("\nidentical greedy tokens on both paths: yes")


if __name__ == "__main__":
    main()
