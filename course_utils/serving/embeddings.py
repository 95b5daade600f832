"""``POST /v1/embeddings``: chapter 6's sentence embedder behind OpenAI's embeddings API (string or list input,
unit-length 384-dim vectors, ``usage`` in the embedder's own tokens).

Token-id input (``int[]``, ``int[][]``) is read as OpenAI defines it for its embedding models: ids of the
``cl100k_base`` encoding. That is what clients send — langchain-openai's ``OpenAIEmbeddings()`` tokenizes with
tiktoken's ``cl100k_base`` by default and posts the ids — so the ids are decoded with it (the course's
:func:`~course_utils.tokenization.get_encoding`, offline-safe) and the text is embedded. MiniLM's own WordPiece
ids would be the wrong table: no client knows them.
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
from fastapi import APIRouter, Depends, Request

from ..tokenization import get_encoding
from . import protocol
from .routes import client, json_body, record, server_of, until_disconnect

router = APIRouter()
TOKEN_ENCODING = "cl100k_base"  # the encoding of OpenAI's embedding models' token-id input


def _decode_ids(ids: list[int], i: int) -> str:
    enc = get_encoding(TOKEN_ENCODING)
    where = "input" if i == 0 else f"input.{i}"
    if max(ids) >= enc.n_vocab:
        raise protocol.ApiError(
            400, f"'{where}' holds token id {max(ids)}, outside {TOKEN_ENCODING} [0, {enc.n_vocab})", param="input"
        )
    try:
        return enc.decode(ids)
    except Exception:  # an id tiktoken has no bytes for (the gaps between its special tokens)
        raise protocol.ApiError(
            400, f"'{where}' holds ids that are not {TOKEN_ENCODING} tokens", param="input"
        ) from None


@router.post("/v1/embeddings")
async def embeddings(
    request: Request, rec: dict = Depends(record), who: str = Depends(client), body: dict = Depends(json_body)
):
    req = protocol.parse(protocol.EmbeddingRequest, body)
    server = server_of(request)
    embedder = server.embedder(req.model)
    size = getattr(embedder, "dimensions", None)
    if req.dimensions is not None and req.dimensions != size:
        raise protocol.ApiError(
            400, f"'dimensions' must be this model's size {size} (vectors are not truncated)", param="dimensions"
        )
    texts = [x if isinstance(x, str) else _decode_ids(x, i) for i, x in enumerate(req.inputs())]
    rec.update(model=req.model)
    server.limiter.check(who, sum(len(t) for t in texts) // 4 + 1)  # about 4 characters a token, before tokenizing
    vectors, tokens = await until_disconnect(request, asyncio.ensure_future(asyncio.to_thread(embedder.embed, texts)))
    out = {"object": "list", "model": req.model}  # OpenAI's embeddings carry no id, created or fingerprint
    if req.encoding_format == "base64":  # what the official client asks for by default: 4 bytes a float
        vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    out["data"] = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    out["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    rec.update(status=200, tokens_in=tokens)
    server.finish(rec)
    return protocol.checked(protocol.EmbeddingList, out)
