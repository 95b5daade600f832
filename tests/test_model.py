"""Chapter 3's GPT: the pieces equal their library counterparts, the KV cache changes nothing, bad input is named."""

import math

import pytest
import torch
import torch.nn.functional as F

from course_utils.model import (
    GPT,
    GPTConfig,
    RMSNorm,
    SwiGLU,
    kv_cache_step,
    load_checkpoint,
    rms_norm,
    sample_next_token,
    save_checkpoint,
)


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


# ----------------------------------------------------------------------------------------------- pieces
def test_kv_cache_step_equals_full_causal_attention():
    q, k, v = (torch.randn(2, 3, 9, 8, dtype=torch.float64) for _ in range(3))
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    kc = vc = None
    outs = []
    for sl in (slice(0, 4), slice(4, 5), slice(5, 9)):
        out, kc, vc = kv_cache_step(q[:, :, sl], k[:, :, sl], v[:, :, sl], kc, vc)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 2), full)
    assert kc.shape == (2, 3, 9, 8)


# ----------------------------------------------------------------------------------------------- the model
def test_whole_model_equals_transformers_llama():
    """Same weights in transformers' LlamaForCausalLM give the same logits: our GPT *is* a (tiny) Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = tiny(tie_embeddings=True)
    c = model.config
    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.d_model,
            intermediate_size=c.d_ff,
            num_hidden_layers=c.n_layers,
            num_attention_heads=c.n_heads,
            num_key_value_heads=c.n_kv_heads,
            max_position_embeddings=c.max_seq_len,
            rms_norm_eps=c.norm_eps,
            rope_theta=c.rope_base,
            tie_word_embeddings=True,
            attention_bias=False,
            mlp_bias=False,
        )
    ).eval()
    rename = {
        "tok_emb": "model.embed_tokens",
        "norm.weight": "model.norm.weight",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn.": "self_attn.",
        "ffn.w1": "mlp.gate_proj",
        "ffn.w3": "mlp.up_proj",
        "ffn.w2": "mlp.down_proj",
        "blocks.": "model.layers.",
    }
    state = {}
    for name, value in model.state_dict().items():
        for a, b in rename.items():
            name = name.replace(a, b) if not (a == "norm.weight" and name != "norm.weight") else name
        state[name] = value
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    idx = torch.randint(0, c.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_kv_cache_logits_equal_full_recompute(n_kv_heads):
    model = tiny(n_kv_heads=n_kv_heads)
    idx = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        full, _ = model(idx)
        caches = model.new_caches()
        parts = [model(idx[:, :8], caches=caches)[0]]  # prefill, then one token at a time, then a chunk of 3
        parts += [model(idx[:, t : t + 1], caches=caches)[0] for t in range(8, 17)]
        parts.append(model(idx[:, 17:], caches=caches)[0])
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)
    assert caches[0].length == 20


def test_generate_with_and_without_cache_agree():
    model = tiny()
    prompt = torch.randint(0, 64, (2, 5))
    for kw in (dict(temperature=0.0), dict(temperature=0.9, top_k=10, top_p=0.9, seed=3)):
        a = model.generate(prompt, 20, use_cache=True, **kw)
        b = model.generate(prompt, 20, use_cache=False, **kw)
        assert a.shape == (2, 25) and torch.equal(a, b) and torch.equal(a[:, :5], prompt)
    seeded = [model.generate(prompt, 10, temperature=1.0, seed=7) for _ in range(2)]
    assert torch.equal(*seeded)
    assert model.training is False


def test_generate_checks_the_prompts_logits_once():
    """generate checks its sampling arguments and the prompt's logits once, not at every step: still an error."""
    model = tiny()
    with torch.no_grad():
        model.lm_head.weight[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 3, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        tiny().generate(torch.zeros(1, 2, dtype=torch.long), 3, top_p=1.5)


def test_generate_restores_training_mode():
    model = tiny().train()
    model.generate(torch.zeros(1, 1, dtype=torch.long), 2, temperature=0)
    assert model.training


def test_loss_is_cross_entropy_and_ignores_minus_one():
    model = tiny()
    idx = torch.randint(0, 64, (2, 10))
    targets = torch.randint(0, 64, (2, 10))
    logits, loss = model(idx, targets)
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), targets.flatten()))
    targets[:, 5:] = -1
    _, loss2 = model(idx, targets)
    torch.testing.assert_close(loss2, F.cross_entropy(logits[:, :5].flatten(0, 1), targets[:, :5].flatten()))
    assert abs(loss.item() - math.log(64)) < 0.3  # small init: close to uniform at the start


def test_param_counts_and_tied_embeddings():
    tied, untied = tiny(), tiny(tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    c = tied.param_counts()
    assert c["embedding"] == 64 * 32 and c["active"] == c["total"]
    assert untied.param_counts()["total"] - c["total"] == 64 * 32
    # by hand: per layer q,o 32x32; k,v 32x16 (2 of 4 heads); SwiGLU 3 x 32 x d_ff; two norms; final norm
    d_ff = tied.config.d_ff
    per_layer = 2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * d_ff + 2 * 32
    assert c["total"] == 64 * 32 + 2 * per_layer + 32


def test_sample_next_token_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next_token(logits, 0.0), torch.zeros(2000, dtype=torch.long))
    assert set(sample_next_token(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    # probabilities 0.64, 0.24, 0.09, 0.03: top_p=0.7 keeps the token that crosses 0.7 (id 1), not id 2
    assert set(sample_next_token(logits, 1.0, top_p=0.7, generator=g).tolist()) == {0, 1}
    assert set(sample_next_token(logits, 1.0, top_p=0.5, generator=g).tolist()) == {0}
    assert set(sample_next_token(logits, 1.0, generator=g).tolist()) == {0, 1, 2, 3}


def test_checkpoint_round_trip(tmp_path):
    model = tiny()
    path = save_checkpoint(model, tmp_path / "gpt.safetensors", meta={"val_loss": 1.23})
    raw = path.read_bytes()
    assert not raw.startswith(b"\x80") and b"PK" not in raw[:4]  # safetensors, not a pickle / zip archive
    loaded = load_checkpoint(path)
    idx = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], loaded(idx)[0])
    assert loaded.config == model.config and loaded.lm_head.weight is loaded.tok_emb.weight
    untied = tiny(tie_embeddings=False)
    again = load_checkpoint(save_checkpoint(untied, tmp_path / "u.safetensors"))
    with torch.no_grad():
        assert torch.equal(untied(idx)[0], again(idx)[0])


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=0), "top_k"),
    ],
)
def test_sampling_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_next_token(torch.zeros(1, 5), **{"temperature": 1.0, **kwargs})
    with pytest.raises(ValueError, match=match):
        tiny().generate(torch.zeros(1, 2, dtype=torch.long), 3, **kwargs)


def test_model_rejects_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 49, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(torch.zeros(1, 40, dtype=torch.long), 9)
    with pytest.raises(ValueError, match="idx"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.full((1, 3), 64))
    with pytest.raises(TypeError, match="idx"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="targets"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), -1)
    with pytest.raises(ValueError, match="n_kv_heads"):
        GPTConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="ffn"):
        GPTConfig(ffn="sparse")
    with pytest.raises(ValueError, match="num_experts"):
        GPTConfig(ffn="moe")
    with pytest.raises(ValueError, match="temperature"):
        sample_next_token(torch.zeros(1, 3), temperature=-0.1)


def test_moe_feed_forward_plugs_in():
    """ffn="moe": every block uses chapter 4's MoELayer, aux dicts are kept, active < total, cache still exact."""
    from course_utils.moe import MoELayer

    model = tiny(ffn="moe", moe=dict(num_experts=4, top_k=2))
    assert all(isinstance(b.ffn, MoELayer) for b in model.blocks)
    idx = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        full, _ = model(idx)
        assert len(model.last_moe_aux) == 2 and "load_balancing_loss" in model.last_moe_aux[0]
        caches = model.new_caches()
        steps = [model(idx[:, :6], caches=caches)[0]] + [
            model(idx[:, t : t + 1], caches=caches)[0] for t in range(6, 10)
        ]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    c = model.param_counts()
    per_expert = 3 * 32 * model.config.d_ff
    assert c["total"] - c["active"] == 2 * 2 * per_expert  # 2 layers x 2 idle experts
    assert tiny().last_moe_aux == []


def test_sha256_record_round_trip(tmp_path):
    from course_utils.model import sha256_of, verify_sha256, write_sha256

    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    record = write_sha256(f)
    assert record.name == "w.bin.sha256" and record.read_text() == f"{sha256_of(f)}  w.bin\n"
    assert verify_sha256(f, rebuild="make it") == f
    f.write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256 .* does not match .*make it"):
        verify_sha256(f, rebuild="make it")
    with pytest.raises(FileNotFoundError, match="missing.*make it"):
        verify_sha256(f, tmp_path / "w.sha256", rebuild="make it")


# ---------------------------------------------------------------------------------------------- MoEConfig, layers
def test_layers_are_shared_not_copied():
    from course_utils import layers, moe

    assert RMSNorm is layers.RMSNorm and SwiGLU is layers.SwiGLU and rms_norm is layers.rms_norm
    assert moe.SwiGLU is layers.SwiGLU  # the shared expert is the chapter-3 block


def test_moe_config_is_typed_validated_and_accepts_a_dict():
    from dataclasses import replace

    from course_utils.moe import MoEConfig, MoELayer

    cfg = GPTConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, ffn="moe", moe=dict(num_experts=4, top_k=2))
    assert isinstance(cfg.moe, MoEConfig)
    assert (cfg.moe.num_experts, cfg.moe["top_k"], cfg.moe.get("n_group")) == (4, 2, 1)
    assert GPTConfig(ffn="moe", moe=cfg.moe).moe is cfg.moe
    for bad, field in [
        (dict(num_experts=4, top_k=5), "top_k"),
        (dict(num_experts=0, top_k=1), "num_experts"),
        (dict(num_experts=4, top_k=2, score_func="relu"), "score_func"),
        (dict(num_experts=4, top_k=2, capacity_factor=0), "capacity_factor"),
        (dict(num_experts=4, top_k=2, bogus=1), "bogus"),
    ]:
        with pytest.raises(ValueError, match=field):
            GPTConfig(ffn="moe", moe=bad)
    with pytest.raises(ValueError, match="moe"):
        GPTConfig(ffn="moe")  # no options
    with pytest.raises(TypeError, match="moe"):
        GPTConfig(ffn="moe", moe=[4, 2])
    assert GPTConfig(moe={}).moe is None  # the old dense default, as saved checkpoints wrote it
    assert replace(cfg, ffn="dense").moe == cfg.moe
    block_ffn = GPT(cfg).blocks[0].ffn
    assert isinstance(block_ffn, MoELayer) and block_ffn.config == cfg.moe
    with pytest.raises(ValueError, match="top_k"):  # the layer validates through the same dataclass
        MoELayer(32, 64, 4, 5)


def test_moe_checkpoint_round_trip(tmp_path):
    import json

    model = tiny(ffn="moe", moe=dict(num_experts=4, top_k=2, capacity_factor=1.5))
    path = save_checkpoint(model, tmp_path / "moe.safetensors")
    saved = json.loads(path.with_suffix(".json").read_text())["config"]["moe"]
    assert saved["num_experts"] == 4 and saved["capacity_factor"] == 1.5  # plain JSON, no pickled class
    again = load_checkpoint(path)
    assert again.config == model.config
    idx = torch.randint(0, model.config.vocab_size, (1, 8))
    model.eval()
    torch.testing.assert_close(again(idx)[0], model(idx)[0])


def test_kv_cache_bytes_formula_and_real_configs():
    from course_utils.model import kv_cache_bytes, kv_cache_bytes_for
    from course_utils.moe import load_public_configs

    # Mixtral 8x7B (32 layers, 8 KV heads, head_dim 128, bf16): 128 KiB per token, 4 GiB at 32k tokens
    assert kv_cache_bytes(1, 32, 8, 128) == 128 * 2**10
    assert kv_cache_bytes(32_768, 32, 8, 128) == 4 * 2**30
    cfgs = load_public_configs()
    assert kv_cache_bytes_for(cfgs["Mixtral-8x7B"]) == 128 * 2**10
    # DeepSeek-V3's MLA: 61 layers x (512 latent + 64 RoPE key) x 2 bytes per token
    assert kv_cache_bytes_for(cfgs["DeepSeek-V3"]) == 61 * (512 + 64) * 2
    cfg = GPTConfig(d_model=64, n_heads=4, n_kv_heads=2, n_layers=3)
    assert kv_cache_bytes_for(cfg, 10, 4) == 2 * 3 * 2 * 16 * 4 * 10
    with pytest.raises(ValueError, match="n_kv_heads"):
        kv_cache_bytes(1, 32, 0, 128)
    with pytest.raises(ValueError, match="latent_dim"):
        kv_cache_bytes(1, 32, 8, 128, latent_dim=576)
    with pytest.raises(TypeError, match="config"):
        kv_cache_bytes_for([32, 8])
