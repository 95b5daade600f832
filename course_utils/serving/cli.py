"""``python -m course_utils.serving``: serve course models with the OpenAI-compatible API (see ``--help``).

Settings are checked before anything starts (a bad one exits with a message naming the flag), and the server
refuses to listen beyond this machine without an API key unless told ``--allow-anonymous``.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging

import uvicorn

from ..validate import check_int, check_number
from .app import create_app
from .auth import MIN_KEY_LENGTH, RateLimit
from .backends import load_backend
from .scheduler import DEFAULT_MAX_QUEUE
from .transport import server_config


def _api_key(value: str) -> str:
    if len(value) < MIN_KEY_LENGTH:
        raise argparse.ArgumentTypeError(f"an API key needs at least {MIN_KEY_LENGTH} characters")
    return value


def _positive(kind, *, allow_zero: bool = False):
    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a {'whole ' if kind is int else ''}number") from None
        try:  # validate's range check; argparse puts the flag's name in front of the message
            if kind is int:
                return check_int("the value", number, 0 if allow_zero else 1)
            return check_number("the value", number, 0, low_open=not allow_zero)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m course_utils.serving", description="Serve a course model with an OpenAI-compatible API."
    )
    p.add_argument(
        "--model",
        action="append",
        default=None,
        help="a model to serve by name: tiny-gpt, course-chat, smollm2, smollm2-float16 (repeatable; default tiny-gpt)",
    )
    p.add_argument("--checkpoint", default=None, help="a .safetensors checkpoint from save_checkpoint (one --model)")
    p.add_argument("--untrained", action="store_true", help="serve a seeded untrained GPT if no checkpoint exists")
    p.add_argument("--no-embeddings", action="store_true", help="do not serve all-MiniLM-L6-v2 on /v1/embeddings")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        action="append",
        default=None,
        type=_api_key,
        help=f"accepted Bearer key, at least {MIN_KEY_LENGTH} characters (repeatable); none = no auth",
    )
    p.add_argument(
        "--allow-anonymous", action="store_true", help="allow listening on a non-loopback address without an API key"
    )
    p.add_argument("--public-metrics", action="store_true", help="serve /metrics without a key")
    p.add_argument("--max-batch", type=_positive(int), default=8, help="requests decoded together (default 8)")
    p.add_argument(
        "--max-wait-ms",
        type=_positive(float, allow_zero=True),
        default=5.0,
        help="how long the static batcher gathers a batch (backends other than a course GPT)",
    )
    p.add_argument("--rate", type=_positive(float), default=None, help="requests per second per key (burst = 2x)")
    p.add_argument(
        "--max-queue", type=_positive(int), default=DEFAULT_MAX_QUEUE, help="waiting requests per model; more get 503"
    )
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    if args.api_key is None and not _is_loopback(args.host) and not args.allow_anonymous:
        parser().error(f"--host {args.host} is reachable from other machines: give --api-key (or --allow-anonymous)")
    names = args.model or ["tiny-gpt"]
    if args.checkpoint is not None and len(names) != 1:
        parser().error("--checkpoint needs exactly one --model")

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        models = {n: load_backend(n, args.checkpoint, allow_untrained=args.untrained) for n in names}
    except FileNotFoundError as err:
        parser().error(str(err))
    limit = RateLimit(args.rate, burst=max(1.0, 2 * args.rate)) if args.rate else None
    app = create_app(
        models,
        api_keys=args.api_key,
        rate_limit=limit,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        embeddings=not args.no_embeddings,
        public_metrics=args.public_metrics,
        max_queue=args.max_queue,
    )
    # The transport's config adds the header timeout, keep-alive and connection limits a bare uvicorn.run lacks.
    uvicorn.Server(server_config(app, args.host, args.port, log_level="warning")).run()
