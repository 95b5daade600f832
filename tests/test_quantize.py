"""course_utils.quantize: absmax int8/int4 quantization, int4 packing, QuantLinear, quantize_model, float16 weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from course_utils.quantize import (
    Float16Linear,
    QuantLinear,
    float16_weights,
    model_nbytes,
    pack_int4,
    quantize_model,
    quantize_tensor,
    unpack_int4,
)


@pytest.fixture
def w():
    g = torch.Generator().manual_seed(0)
    return torch.randn(48, 256, generator=g) * 0.05


@pytest.mark.parametrize("bits,group_size", [(8, None), (8, 32), (4, None), (4, 32), (4, 128)])
def test_error_at_most_half_a_step_per_group(w, bits, group_size):
    qt = quantize_tensor(w, bits, group_size)
    g = group_size or w.shape[1]
    step = qt.scales.float().repeat_interleave(g, dim=1)  # one quantization step per weight
    err = (qt.dequantize() - w).abs()
    assert qt.dequantize().shape == w.shape
    assert (err <= 0.5 * step + 1e-7).all(), float((err / step).max())
    qmax = 127 if bits == 8 else 7
    q = qt.int_values()
    assert q.abs().max() == qmax  # absmax maps to ±q_max: the full range is used


def test_scale_is_absmax_not_max():
    # A row whose largest magnitude is negative: scaling by max() would clip it.
    w = torch.tensor([[0.1, -2.0, 0.5, 1.0]])
    qt = quantize_tensor(w, 8)
    assert float(qt.scales) == pytest.approx(2.0 / 127, rel=1e-3)
    assert torch.allclose(qt.dequantize(), w, atol=2.0 / 127)


def test_int4_packing_roundtrip_and_size(w):
    q = torch.randint(-8, 8, (101,), dtype=torch.int8, generator=torch.Generator().manual_seed(1))
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.numel() == 51
    assert torch.equal(unpack_int4(packed, 101), q)
    big = torch.randn(512, 1024)
    qt = quantize_tensor(big, 4, 128)
    assert big.numel() * 4 / qt.nbytes >= 6.0  # packed int4 + fp16 scales vs fp32
    assert qt.nbytes == big.numel() // 2 + (big.numel() // 128) * 2


def test_grouping_contains_an_outlier():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 256, generator=g) * 0.02
    w[0, 3] = 5.0  # one huge weight
    row_err = (quantize_tensor(w, 4).dequantize() - w)[0].abs().mean()
    group_err = (quantize_tensor(w, 4, 32).dequantize() - w)[0].abs().mean()
    assert group_err < row_err / 4


def test_zero_rows_and_other_dtypes_quantize_cleanly():
    w = torch.zeros(3, 8)
    w[1] = torch.linspace(-1, 1, 8)
    for bits in (4, 8):
        qt = quantize_tensor(w.half(), bits, 4)
        assert torch.isfinite(qt.dequantize()).all()
        assert torch.equal(qt.dequantize()[0], torch.zeros(8))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(bits=3), "bits"),
        (dict(bits=16), "bits"),
        (dict(bits=4, group_size=48), "divisible by group_size"),
        (dict(bits=8, group_size=0), "group_size"),
    ],
)
def test_bad_arguments(w, kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize_tensor(w, **kwargs)


def test_bad_tensor_types():
    with pytest.raises(TypeError, match="torch.Tensor"):
        quantize_tensor([[1.0, 2.0]])
    with pytest.raises(ValueError, match="floating-point"):
        quantize_tensor(torch.ones(2, 2, dtype=torch.int64))


class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 64)
        self.blocks = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64, bias=False))
        self.head = nn.Linear(64, 50)

    def forward(self, idx):
        return self.head(self.blocks(self.emb(idx)))


@pytest.mark.parametrize("bits,group_size,tol", [(8, None, 0.02), (4, 32, 0.25)])
def test_quantize_model_replaces_every_linear_and_stays_close(bits, group_size, tol):
    torch.manual_seed(0)
    model = TinyMLP().eval()
    idx = torch.randint(0, 50, (4, 10))
    ref = model(idx)
    fp32_bytes = model_nbytes(model)
    out = quantize_model(model, bits, group_size)
    assert out is model
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 3
    assert isinstance(model.emb, nn.Embedding)  # embeddings stay float
    got = model(idx)
    rel = (got - ref).norm() / ref.norm()
    assert rel < tol, float(rel)
    assert model_nbytes(model) < fp32_bytes


def test_quantlinear_state_dict_roundtrip_via_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    lin = nn.Linear(64, 32)
    ql = QuantLinear.from_linear(lin, 4, 32)
    save_file(ql.state_dict(), tmp_path / "q.safetensors")
    fresh = QuantLinear.from_linear(nn.Linear(64, 32), 4, 32)
    fresh.load_state_dict(load_file(tmp_path / "q.safetensors"))
    x = torch.randn(3, 64)
    assert torch.equal(fresh(x), ql(x))
    assert ((ql(x) - lin(x)).norm() / lin(x).norm()) < 0.2  # int4: ~10% relative error on random weights


def test_quantize_model_rejects_bad_input():
    with pytest.raises(TypeError, match="model"):
        quantize_model("gpt", 8)
    with pytest.raises(ValueError, match="bits"):
        quantize_model(TinyMLP(), 2)
    with pytest.raises(TypeError, match="from_linear"):
        quantize_model(nn.Linear(4, 4), 8)


def test_quantize_model_on_the_course_gpt_keeps_generate_working():
    from course_utils.model import GPT, GPTConfig

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=32)).eval()
    idx = torch.randint(0, 64, (2, 12))
    ref, _ = gpt(idx)
    quantize_model(gpt, 8)
    got, _ = gpt(idx)
    assert not any(isinstance(m, nn.Linear) for m in gpt.modules())
    assert ((got - ref).norm() / ref.norm()) < 0.02
    assert gpt.generate(idx[:, :4], 5, temperature=0.0).shape == (2, 9)
    assert torch.equal(gpt.blocks[0].ffn.w1.weight, gpt.blocks[0].ffn.w1.qweight.dequantize())


def test_float16_linear_one_row_runs_in_float16_and_several_rows_in_float32(w):
    lin = nn.Linear(256, 48)
    lin.weight.data.copy_(w)
    f16 = Float16Linear.from_linear(lin)
    assert f16.weight16.dtype == torch.float16 and f16.weight.dtype == torch.float32
    rounded = w.half().float()
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(1))
    # several rows: exactly float32 arithmetic on the rounded weights
    assert torch.equal(f16(x), nn.functional.linear(x, rounded, lin.bias))
    # one row: the input is rounded to float16 too, so it is close to the float32 result, not equal
    one = f16(x[:1])
    assert one.dtype == torch.float32 and one.shape == (1, 48)
    ref = nn.functional.linear(x[:1], rounded, lin.bias)
    assert (one - ref).abs().max() < 2e-3 * ref.abs().max()
    assert not torch.equal(one, ref)  # the float16 path really ran (a float32 path would be exact)
    assert torch.allclose(f16(x[:1, None]), one[:, None])  # [1, 1, in]: still one row


def test_float16_weights_halves_the_gpt_and_keeps_its_logits():
    from course_utils.model import GPT, GPTConfig

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=32)).eval()
    idx = torch.randint(0, 64, (1, 12))
    before, (ref, _) = model_nbytes(gpt), gpt(idx)
    float16_weights(gpt)
    assert not any(isinstance(m, nn.Linear) for m in gpt.modules())
    assert gpt.tok_emb.weight.dtype == torch.float32  # lookups stay float32; lm_head got its own float16 copy
    assert model_nbytes(gpt) < 0.9 * before
    got, _ = gpt(idx)
    assert ((got - ref).abs().max() / ref.abs().max()) < 5e-3
    # decoding one token at a time (the float16 path) agrees with the full pass
    caches = gpt.new_caches()
    steps = torch.cat([gpt(idx[:, t : t + 1], caches=caches)[0] for t in range(idx.shape[1])], dim=1)
    assert ((steps - ref).abs().max() / ref.abs().max()) < 5e-3
    assert gpt.generate(idx[:, :4], 5, temperature=0.0).shape == (1, 9)


def test_float16_weights_rejects_bad_input():
    with pytest.raises(TypeError, match="model must be"):
        float16_weights("gpt")
    with pytest.raises(TypeError, match="model must be"):
        float16_weights(nn.Linear(4, 4))
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        Float16Linear.from_linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="weight must be a 2-D float tensor"):
        Float16Linear(torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="in_features=4"):
        Float16Linear(torch.ones(3, 4))(torch.ones(2, 5))
