"""course_utils.layers: RMSNorm and SwiGLU equal PyTorch's and transformers' formulas; bad input is named."""

import pytest
import torch
import torch.nn.functional as F

from course_utils.layers import RMSNorm, SwiGLU, rms_norm, swiglu


def test_rms_norm_equals_torch():
    x, w = torch.randn(3, 5, 16), torch.randn(16)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), F.rms_norm(x, (16,), w, eps=1e-6))
    torch.testing.assert_close(RMSNorm(16)(x), F.rms_norm(x, (16,), eps=1e-6))
    y = rms_norm(x + 5.0)  # no mean subtraction: the output keeps the input's (shifted) mean
    assert y.mean() > 0.5 and torch.allclose(y.pow(2).mean(-1), torch.ones(3, 5), atol=1e-4)


def test_swiglu_equals_transformers_llama_mlp():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(0)
    ours = SwiGLU(16, 40)
    theirs = LlamaMLP(
        LlamaConfig(hidden_size=16, intermediate_size=40, num_attention_heads=4, hidden_act="silu", mlp_bias=False)
    )
    theirs.gate_proj.weight.data.copy_(ours.w1.weight)  # w1 = gate, w3 = up, w2 = down (Llama/Mixtral naming)
    theirs.up_proj.weight.data.copy_(ours.w3.weight)
    theirs.down_proj.weight.data.copy_(ours.w2.weight)
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(swiglu(x, ours.w1.weight, ours.w3.weight, ours.w2.weight), theirs(x))
    assert torch.equal(ours(x), swiglu(x, ours.w1.weight, ours.w3.weight, ours.w2.weight))  # the same arithmetic


def test_swiglu_runs_its_layers_so_a_swapped_in_layer_takes_part():
    from course_utils.quantize import float16_weights

    torch.manual_seed(0)
    ffn, x = SwiGLU(16, 40), torch.randn(3, 16)
    rounded = [getattr(ffn, n).weight.detach().half().float() for n in ("w1", "w3", "w2")]
    float16_weights(ffn)  # each layer's own forward must run: reading .weight would skip its float16 path
    assert torch.equal(ffn(x), swiglu(x, *rounded))
    calls = []
    ffn.w2.register_forward_hook(lambda *args: calls.append(1))
    ffn(x)
    assert calls == [1]


def test_rms_norm_of_half_precision_is_computed_in_float32():
    x = torch.full((2, 8), 300.0, dtype=torch.float16)  # x² = 90 000 overflows float16 (max 65 504)
    y = rms_norm(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(y, torch.ones(2, 8, dtype=torch.float16))


def test_swiglu_is_down_of_silu_gate_times_up():
    torch.manual_seed(0)
    x, w1, w3, w2 = torch.randn(4, 6), torch.randn(10, 6), torch.randn(10, 6), torch.randn(6, 10)
    gate, up = x @ w1.T, x @ w3.T
    torch.testing.assert_close(swiglu(x, w1, w3, w2), (gate * torch.sigmoid(gate) * up) @ w2.T)


def test_rms_norm_rejects_what_it_cannot_normalise():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        rms_norm([1.0, 2.0])
    with pytest.raises(ValueError, match="floating-point"):
        rms_norm(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="floating-point"):
        rms_norm(torch.tensor(1.0))  # 0-d: no last dimension to normalise over
    with pytest.raises(TypeError, match="weight"):
        rms_norm(torch.ones(2, 4), weight=[1.0] * 4)
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        rms_norm(torch.ones(2, 4), weight=torch.ones(5))
    with pytest.raises(ValueError, match="eps"):
        rms_norm(torch.ones(2, 4), eps=0.0)


def test_swiglu_and_the_modules_reject_shapes_and_sizes_that_do_not_fit():
    x = torch.ones(2, 6)
    with pytest.raises(ValueError, match="same shape"):
        swiglu(x, torch.ones(10, 6), torch.ones(9, 6), torch.ones(6, 10))
    with pytest.raises(ValueError, match="shapes do not fit"):
        swiglu(torch.ones(2, 5), torch.ones(10, 6), torch.ones(10, 6), torch.ones(6, 10))
    with pytest.raises(ValueError, match="shapes do not fit"):
        swiglu(x, torch.ones(10, 6), torch.ones(10, 6), torch.ones(10, 6))
    with pytest.raises(ValueError, match="dim"):
        RMSNorm(0)
    with pytest.raises(ValueError, match="d_ff"):
        SwiGLU(8, 0)
    with pytest.raises(ValueError, match="dropout"):
        SwiGLU(8, 16, dropout=1.0)
