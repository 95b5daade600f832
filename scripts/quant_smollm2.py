"""Rebuild ``course_utils/assets/ch8_smollm2_quant.json``: SmolLM2-135M-Instruct quantized six ways, compared on
bytes and held-out perplexity (chapter 8, "Quantization on a real LLM").

Variants, all run in the course's own GPT (``course_utils.smollm2``), float32 activations, one thread:

- ``fp32``: the GGUF's tensors dequantized to float32 — the model every other chapter runs;
- ``GGUF Q4_1``: the file itself (attention/FFN in Q4_1 blocks of 32: an fp16 scale and minimum + 32 4-bit values;
  the tied embedding in Q8_0). Its bytes are the file's tensor data; its quality IS fp32's by construction (fp32
  holds exactly the values Q4_1 encodes), so it is not evaluated again;
- ``int8/row``, ``int4/g32``, ``int4/row``: the course's ``quantize_model`` (symmetric absmax, float16 scales) applied
  to the fp32 model, i.e. a *re-quantization* of weights that already sit on Q4_1's grid;
- ``torchao int8``, ``torchao int4/g32``: ``Int8WeightOnlyConfig`` / ``IntxWeightOnlyConfig(int4, PerGroup(32))``,
  when ``course_utils.doctor.torchao_status()`` says torchao runs here (else the reason is recorded);
- ``float16``: ``float16_weights`` (half of fp32's bytes, no scales: the variant that makes generation faster here,
  see ``benchmarks/smollm2.py``), scored while decoding one token at a time, the path where it computes in float16.

Held-out text: the course corpus's validation documents (``course_utils.data.split_documents()``: CPython 3.11.7's
Language Reference topics and standard-library sources, never used to train the course's models; SmolLM2 itself may
well have seen CPython's docs and code in pre-training), cut into windows of 257 tokens (SmolLM2's tokenizer):
``--chunks`` windows (24: 12 prose, 12 code, 6,144 scored next-token predictions), spread over the documents.
Stored per variant: bytes (linear layers and whole model, measured from the stored tensors), perplexity, and each
chunk's mean NLL (for ``compare_paired(..., lower_is_better=True)`` against fp32).

    PYTHONPATH=. nice -n 10 python scripts/quant_smollm2.py   # 3 min of CPU on one thread (17 min wall at load 12-16)
    PYTHONPATH=. python scripts/quant_smollm2.py --only float16  # one variant, updated in the shipped file
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import math
import re
import time
import warnings

import torch
import torch.nn.functional as F

from course_utils import smollm2
from course_utils.data import split_documents
from course_utils.doctor import torchao_status
from course_utils.model import write_sha256
from course_utils.quantize import (
    SMOLLM2_RESULTS,
    Float16Linear,
    QuantLinear,
    float16_weights,
    quantize_model,
    stored_nbytes,
)

CHUNK = 256  # scored predictions per chunk
FLOAT16_NOTE = (
    "float16: course_utils.quantize.float16_weights (every projection and the lm_head stored in float16, no "
    "scales); scored decoding one token at a time through the KV cache, where each layer's input is also rounded "
    "to float16 (Float16Linear's one-row path), so its perplexity includes that rounding"
)
# the GGUF tensors that are the 210 attention/FFN projections of the 30 blocks (what Q4_1 holds)
LINEAR_GGUF = re.compile(r"blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight")


def held_out_chunks(n_chunks: int) -> tuple[torch.Tensor, list[str]]:
    """``[n_chunks, CHUNK + 1]`` token ids, half prose and half code, and where each comes from.

    Each validation document is cut into consecutive windows of ``CHUNK + 1`` tokens; a domain's windows are taken
    first window of every document first (in split order), then second windows, ..., so that the chunks spread over
    as many documents as the domain has."""
    tok = smollm2.load_tokenizer()
    _, val = split_documents()
    rows, names = [], []
    for domain in ("prose", "code"):
        windows = []
        for doc in (d for d in val if d.domain == domain):
            ids = tok.encode(doc.text)
            windows += [
                (i, doc.name, ids[i * (CHUNK + 1) : (i + 1) * (CHUNK + 1)]) for i in range(len(ids) // (CHUNK + 1))
            ]
        windows.sort(key=lambda w: w[0])  # stable: split order within each window index
        if len(windows) < n_chunks // 2:
            raise SystemExit(f"only {len(windows)} {domain} windows of {CHUNK + 1} tokens; ask for fewer --chunks")
        rows += [w[2] for w in windows[: n_chunks // 2]]
        names += [f"{domain}:{name}#{i}" for i, name, _ in windows[: n_chunks // 2]]
    return torch.tensor(rows), names


@torch.no_grad()
def chunk_nll(model, chunks: torch.Tensor) -> list[float]:
    """Each chunk's mean next-token negative log-likelihood (nats), one chunk per forward pass."""
    out = []
    for row in chunks:
        logits, _ = model(row[None, :-1])
        out.append(F.cross_entropy(logits[0].float(), row[1:]).item())
    return out


@torch.inference_mode()
def chunk_nll_decoding(model, chunks: torch.Tensor) -> list[float]:
    """:func:`chunk_nll` the way generation computes it: one token per forward pass, through the KV cache (the path
    where :class:`~course_utils.quantize.Float16Linear` runs its float16 matrix-vector product)."""
    out = []
    for row in chunks:
        caches = model.new_caches()
        logits = torch.cat([model(row[None, t : t + 1], caches=caches)[0] for t in range(len(row) - 1)], dim=1)
        out.append(F.cross_entropy(logits[0].float(), row[1:]).item())
    return out


def linear_nbytes(model) -> int:
    """Bytes of the blocks' projections (the course's QuantLinear or nn.Linear, torchao's weights by their parts)."""
    mods = [m for m in model.blocks.modules() if isinstance(m, (torch.nn.Linear, QuantLinear, Float16Linear))]
    return sum(stored_nbytes(m) for m in mods)


def gguf_bytes(path) -> dict:
    """Bytes of the GGUF's tensor data (whole model, the linear layers) and of the whole file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    return {
        "linear_bytes": sum(n for name, n in sizes.items() if LINEAR_GGUF.fullmatch(name)),
        "model_bytes": sum(sizes.values()),
        "file_bytes": path.stat().st_size,
        "tensor_types": sorted({t.tensor_type.name for t in reader.tensors}),
    }


def torchao_variants() -> tuple[list, str]:
    """``[(name, config)]`` for torchao's int8 and int4/g32 weight-only quantization, or ``([], why not)``."""
    fits, why = torchao_status()
    if not fits:
        return [], why
    logging.getLogger("torchao").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchao
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup

    def apply(cfg):
        def quantize(m):
            quantize_(m, cfg)
            return m

        return quantize

    int4 = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))
    return [("torchao int8", apply(Int8WeightOnlyConfig())), ("torchao int4/g32", apply(int4))], torchao.__version__


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--chunks", type=int, default=24, help="held-out chunks of 256 scored tokens (half prose, half code)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--only", nargs="+", help="measure only these variants and update them in the shipped file (e.g. float16)"
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # nothing here draws random numbers; seeded for the record
    t_start = time.perf_counter()

    fp32 = smollm2.load_model(max_seq_len=CHUNK)
    chunks, docs = held_out_chunks(args.chunks)
    ours = [(f"int{b}/" + (f"g{g}" if g else "row"), b, g) for b, g in ((8, None), (4, 32), (4, None))]
    builders = [("fp32", lambda m: m)]
    builders += [(name, lambda m, b=b, g=g: quantize_model(m, b, g)) for name, b, g in ours]
    ao, ao_note = torchao_variants()
    builders += ao
    builders.append(("float16", float16_weights))
    if args.only:
        builders = [b for b in builders if b[0] in args.only]

    shipped = json.loads(SMOLLM2_RESULTS.read_text(encoding="utf-8")) if args.only else {"meta": {}, "variants": {}}
    variants = shipped["variants"]
    for name, build in builders:
        t0 = time.perf_counter()
        model = build(copy.deepcopy(fp32)).eval()
        # float16 is measured where it differs from fp32's arithmetic: decoding, one token per pass
        nll = (chunk_nll_decoding if name == "float16" else chunk_nll)(model, chunks)
        variants[name] = {
            "linear_bytes": linear_nbytes(model),
            "model_bytes": stored_nbytes(model),
            "perplexity": math.exp(sum(nll) / len(nll)),
            "chunk_nll": [round(x, 6) for x in nll],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(
            f"{name:17} ppl {variants[name]['perplexity']:7.3f}  linear {variants[name]['linear_bytes'] / 2**20:7.1f}"
            f" MiB  model {variants[name]['model_bytes'] / 2**20:7.1f} MiB  ({variants[name]['seconds']} s)",
            flush=True,
        )
        del model
    if args.only:  # the other variants and their meta stay as shipped
        if "float16" in args.only:
            shipped["meta"]["float16_note"] = FLOAT16_NOTE
        shipped["meta"]["seconds_" + "+".join(args.only)] = round(time.perf_counter() - t_start)
        return write(shipped)
    g = gguf_bytes(smollm2.gguf_path())
    variants["GGUF Q4_1"] = {
        **{k: g[k] for k in ("linear_bytes", "model_bytes", "file_bytes")},
        "perplexity": variants["fp32"]["perplexity"],
        "chunk_nll": variants["fp32"]["chunk_nll"],
        "same_weights_as": "fp32",
    }
    meta = {
        "model": f"SmolLM2-135M-Instruct ({smollm2.GGUF_NAME}, sha256 {smollm2.GGUF_SHA256}), course GPT, float32",
        "held_out": "course_utils.data.split_documents() validation split, cut into windows of 257 SmolLM2 tokens: "
        f"{args.chunks // 2} prose and {args.chunks // 2} code windows, first windows of every document first",
        "documents": docs,
        "chunks": args.chunks,
        "tokens_scored": args.chunks * CHUNK,
        "nll": "mean next-token cross-entropy per chunk (nats), 256 predictions each; perplexity = exp(mean)",
        "bytes": "linear_bytes: the 210 attention/FFN projections; model_bytes: every stored tensor, tied ones once "
        "(course_utils.quantize.stored_nbytes); GGUF: the file's tensor data (gguf.GGUFReader n_bytes)",
        "gguf_tensor_types": g["tensor_types"],
        "gguf_note": "fp32 holds exactly the values GGUF Q4_1/Q8_0 encode: GGUF Q4_1's quality is fp32's by "
        "construction (llama.cpp's own kernels would also round activations to 8 bits: not measured here)",
        "course_note": "the course's int8/int4 re-quantize the dequantized Q4_1 weights; quantize_model also turns "
        "the tied lm_head into a separate quantized copy and keeps the embedding in float32 (so does torchao)",
        "torchao": ao_note if ao else f"skipped: {ao_note}",
        "float16_note": FLOAT16_NOTE,
        "seed": args.seed,
        "threads": 1,
        "seconds": round(time.perf_counter() - t_start),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
    }
    write({"meta": meta, "variants": variants})


def write(results: dict) -> None:
    out = SMOLLM2_RESULTS
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    write_sha256(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
