"""Chapter 8's SmolLM2 quantization study: the shipped results (``scripts/quant_smollm2.py``) hold what they claim.

Bytes are pinned to the formats' arithmetic (Q4_1: 20 bytes per 32 weights, Q8_0: 34; the course's int8/row: one
byte per weight plus an fp16 scale per row), perplexities to the stored per-window NLLs, and the slow tests recompute
the held-out windows and one window's NLL from the model itself.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from course_utils import smollm2
from course_utils.doctor import torchao_status
from course_utils.model import GPT, GPTConfig
from course_utils.quantize import QuantLinear, load_smollm2_results, quantize_model, stored_nbytes
from course_utils.stats import compare_paired

ROOT = Path(__file__).resolve().parents[1]
C = smollm2.smollm2_config()
# the 210 projections of the 30 blocks: q, o [576, 576]; k, v [192, 576]; gate, up [1536, 576]; down [576, 1536]
LINEAR_PARAMS = C.n_layers * (2 * C.d_model**2 + 2 * 192 * C.d_model + 3 * C.d_ff * C.d_model)
LINEAR_ROWS = C.n_layers * (2 * C.d_model + 2 * 192 + 2 * C.d_ff + C.d_model)
EMBED_PARAMS = C.vocab_size * C.d_model
NORM_PARAMS = (2 * C.n_layers + 1) * C.d_model


@pytest.fixture(scope="module")
def results():
    return load_smollm2_results()


def test_every_variant_has_bytes_perplexity_and_paired_nlls(results):
    meta, variants = results["meta"], results["variants"]
    want = {"fp32", "GGUF Q4_1", "int8/row", "int4/g32", "int4/row", "float16"}
    if torchao_status()[0]:
        want |= {"torchao int8", "torchao int4/g32"}
    assert want <= set(variants), sorted(variants)
    assert meta["tokens_scored"] == 256 * meta["chunks"] >= 4096
    assert len(meta["documents"]) == meta["chunks"]
    for name, v in variants.items():
        assert len(v["chunk_nll"]) == meta["chunks"], name
        assert v["perplexity"] == pytest.approx(math.exp(sum(v["chunk_nll"]) / meta["chunks"]), rel=1e-5), name
    assert variants["GGUF Q4_1"]["chunk_nll"] == variants["fp32"]["chunk_nll"]  # the same weights, by construction


def test_bytes_follow_the_formats_arithmetic(results):
    v = results["variants"]
    assert v["fp32"]["linear_bytes"] == 4 * LINEAR_PARAMS
    assert v["fp32"]["model_bytes"] == 4 * (LINEAR_PARAMS + EMBED_PARAMS + NORM_PARAMS)  # tied head counted once
    assert v["GGUF Q4_1"]["linear_bytes"] == LINEAR_PARAMS // 32 * 20  # fp16 scale + fp16 min + 32 nibbles
    assert v["GGUF Q4_1"]["model_bytes"] == LINEAR_PARAMS // 32 * 20 + EMBED_PARAMS // 32 * 34 + 4 * NORM_PARAMS
    assert v["GGUF Q4_1"]["model_bytes"] < v["GGUF Q4_1"]["file_bytes"]  # + the vocabulary and metadata
    assert v["int8/row"]["linear_bytes"] == LINEAR_PARAMS + 2 * LINEAR_ROWS
    assert v["int4/g32"]["linear_bytes"] == LINEAR_PARAMS // 2 + 2 * (LINEAR_PARAMS // 32)
    # the course's quantize_model keeps the embedding in float32 and quantizes a copy of the tied head
    head8 = EMBED_PARAMS + 2 * C.vocab_size
    assert v["int8/row"]["model_bytes"] == v["int8/row"]["linear_bytes"] + 4 * (EMBED_PARAMS + NORM_PARAMS) + head8
    # float16: two bytes per weight, no scales; the embedding stays float32 and the tied head gets a float16 copy
    assert v["float16"]["linear_bytes"] == 2 * LINEAR_PARAMS
    assert v["float16"]["model_bytes"] == 2 * (LINEAR_PARAMS + EMBED_PARAMS) + 4 * (EMBED_PARAMS + NORM_PARAMS)


def test_the_verdicts_the_lesson_prints(results):
    """The story of chapter 8's section: int8 re-quantization costs next to nothing, int4 on a grid that is not
    Q4_1's costs clearly, and one scale per row is worse than groups of 32."""
    v = results["variants"]

    def vs_fp32(name):
        return compare_paired(v[name]["chunk_nll"], v["fp32"]["chunk_nll"], names=(name, "fp32"), lower_is_better=True)

    assert v["int8/row"]["perplexity"] / v["fp32"]["perplexity"] < 1.02
    assert vs_fp32("int4/g32").verdict == "fp32 better"
    assert v["int4/row"]["perplexity"] > v["int4/g32"]["perplexity"] > 1.1 * v["fp32"]["perplexity"]
    assert v["GGUF Q4_1"]["model_bytes"] < v["int4/g32"]["model_bytes"]
    assert abs(v["float16"]["perplexity"] / v["fp32"]["perplexity"] - 1) < 1e-3  # float16 costs nothing visible
    assert vs_fp32("float16").verdict == "not shown"


def test_stored_nbytes_counts_what_a_checkpoint_stores():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16))
    params = sum(p.numel() for p in model.parameters())  # parameters() yields the tied matrix once
    assert stored_nbytes(model) == 4 * params  # RoPE tables (not saved) are not counted
    lin = quantize_model(nn.Sequential(nn.Linear(64, 8, bias=False)), 8)[0]
    assert isinstance(lin, QuantLinear) and stored_nbytes(lin) == 8 * 64 + 2 * 8
    with pytest.raises(TypeError, match="module must be an nn.Module"):
        stored_nbytes(torch.zeros(3))


@pytest.mark.skipif(not torchao_status()[0], reason="torchao does not run with this torch")
def test_stored_nbytes_counts_torchao_weights_by_their_parts():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    lin = nn.Sequential(nn.Linear(64, 8, bias=False))
    quantize_(lin, Int8WeightOnlyConfig())
    n = stored_nbytes(lin)
    assert 8 * 64 < n < 8 * 64 + 8 * 8  # one int8 per weight plus a scale (and nothing in float32) per row


def _script():
    spec = importlib.util.spec_from_file_location("quant_smollm2", ROOT / "scripts" / "quant_smollm2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_shipped_numbers_come_from_the_model_and_the_held_out_windows(results):
    script = _script()
    chunks, names = script.held_out_chunks(results["meta"]["chunks"])
    assert names == results["meta"]["documents"]
    model, threads = smollm2.load_model(max_seq_len=256), torch.get_num_threads()
    torch.set_num_threads(1)  # as the script ran
    try:
        nll = script.chunk_nll(model, chunks[:1])[0]
    finally:
        torch.set_num_threads(threads)
    assert nll == pytest.approx(results["variants"]["fp32"]["chunk_nll"][0], abs=1e-3)


@pytest.mark.slow
def test_float16_is_scored_the_way_it_decodes(results):
    """The float16 row is scored one token at a time (its float16 path), and that differs from a full pass."""
    from course_utils.quantize import float16_weights

    script = _script()
    chunks, _ = script.held_out_chunks(results["meta"]["chunks"])
    model, threads = float16_weights(smollm2.load_model(max_seq_len=256)), torch.get_num_threads()
    torch.set_num_threads(1)  # as the script ran
    try:
        row = chunks[:1, :65]  # 64 predictions: the first quarter of the shipped window, for time
        decoded = script.chunk_nll_decoding(model, row)[0]
        full = script.chunk_nll(model, row)[0]
    finally:
        torch.set_num_threads(threads)
    assert decoded != full  # one row at a time really takes the float16 path
    assert decoded == pytest.approx(full, abs=5e-3)
