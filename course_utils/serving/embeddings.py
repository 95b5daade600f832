"""``POST /v1/embeddings``: chapter 6's sentence embedder behind OpenAI's embeddings API (string or list input,
unit-length 384-dim vectors, ``usage`` in the embedder's own tokens)."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
from fastapi import APIRouter, Depends, Request

from . import protocol
from .routes import client, json_body, record, server_of, until_disconnect

router = APIRouter()


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
    texts = req.texts()
    rec.update(model=req.model)
    server.limiter.check(who, sum(len(t) for t in texts) // 4 + 1)  # about 4 characters a token, before tokenizing
    vectors, tokens = await until_disconnect(request, asyncio.ensure_future(asyncio.to_thread(embedder.embed, texts)))
    out = protocol.envelope(protocol.new_id("emb"), "list", req.model)
    if req.encoding_format == "base64":  # what the official client asks for by default: 4 bytes a float
        vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    out["data"] = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    out["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    rec.update(status=200, tokens_in=tokens)
    server.finish(rec)
    return protocol.checked(protocol.EmbeddingList, out)
