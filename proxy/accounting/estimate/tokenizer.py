"""Offline tiktoken encodings, and which one a model uses.

tiktoken downloads its BPE files on first use; this module never does. It builds each
encoding from tiktoken's own constructor (``tiktoken_ext.openai_public``), with the file read
from disk instead of fetched:

1. ``$TIKTOKEN_CACHE_DIR/<sha1 of the URL>`` when that variable is set and the file exists there
   (the same override and file name tiktoken's cache uses);
2. otherwise the copy shipped in the package, ``proxy/data/tiktoken/<sha1 of the URL>``.

Either way the bytes must match the SHA-256 tiktoken's constructor expects, or loading fails
with :class:`~proxy.errors.AccountingError`; a corrupted file is never used, and never replaced
by a fallback either, so that the problem is seen. Nothing is written to disk and
``os.environ`` is only read.

Only ``cl100k_base`` and ``o200k_base`` are shipped. Each is loaded at most once per process,
when a model that needs it is first counted (or by :func:`warm_up`), under a lock, and shared
by every caller. Nothing loads them at start: an idle proxy holds no tables, and one that only
sees current models never loads cl100k_base. Once loaded, o200k_base holds ~42 MiB and
cl100k_base ~22 MiB (tiktoken's Rust tables only: see ``_build``), and loading o200k_base
takes ~0.3 s (cl100k_base ~0.2 s), which the first estimate pays, off the event loop
(``is_loaded``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import types
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

import tiktoken
import tiktoken.model
from tiktoken_ext import openai_public

from proxy.errors import AccountingError

__all__ = [
    "DEFAULT_ENCODING",
    "SHIPPED_ENCODINGS",
    "count_tokens",
    "counter_for_model",
    "encoding_name_for_model",
    "get_encoding",
    "is_loaded",
    "warm_up",
]

DEFAULT_ENCODING = "o200k_base"
SHIPPED_ENCODINGS: tuple[str, ...] = ("cl100k_base", "o200k_base")

# Models on the older encodings (gpt2, r50k, p50k) are retired and cannot run Assistants, so
# shipping those files is not worth it; cl100k_base is their closest successor and an estimate
# is all that is asked of it. o200k_harmony has exactly o200k_base's ranks and differs only in
# special tokens, which count_tokens encodes as plain text anyway.
_SUBSTITUTES = {"o200k_harmony": "o200k_base"}
_LEGACY_SUBSTITUTE = "cl100k_base"

_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding] = {}


def get_encoding(name: str) -> tiktoken.Encoding:
    """Return the shared encoding ``name`` (one of :data:`SHIPPED_ENCODINGS`), loading it once.

    Raises ValueError for an encoding that is not shipped, and AccountingError when its file is
    missing or fails the SHA-256 check.
    """
    # A dict read is atomic, so the lock is only paid while an encoding is still missing.
    encoding = _encodings.get(name)
    if encoding is not None:
        return encoding
    if name not in SHIPPED_ENCODINGS:
        raise ValueError(f"encoding {name!r} is not shipped; expected one of {SHIPPED_ENCODINGS}")
    with _lock:
        encoding = _encodings.get(name)
        if encoding is None:
            encoding = _build(name)
            _encodings[name] = encoding
    return encoding


def encoding_name_for_model(model: str | None) -> str:
    """Name of the shipped encoding to count ``model``'s tokens with.

    Follows tiktoken's model table and prefixes (``tiktoken.encoding_for_model``). A model that
    tiktoken does not know (None, a new model, an Azure deployment name) gets o200k_base, the
    encoding of every current model. Encodings that are not shipped are substituted, see above.
    """
    if not model:
        return DEFAULT_ENCODING
    try:
        name = tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        return DEFAULT_ENCODING
    if name in SHIPPED_ENCODINGS:
        return name
    return _SUBSTITUTES.get(name, _LEGACY_SUBSTITUTE)


def count_tokens(text: str, model: str | None) -> int:
    """Number of tokens ``text`` has for ``model``; special-token text counts as plain text."""
    return len(get_encoding(encoding_name_for_model(model)).encode(text, disallowed_special=()))


def counter_for_model(model: str | None) -> Callable[[str], int]:
    """A ``count(text) -> int`` bound to ``model``'s encoding, e.g. for ``estimate_run``."""
    name = encoding_name_for_model(model)

    def count(text: str) -> int:
        return len(get_encoding(name).encode(text, disallowed_special=()))

    return count


def is_loaded(model: str | None) -> bool:
    """Whether ``model``'s encoding is loaded already, so that counting with it is quick (the
    first count loads it: callers on an event loop count in an executor until this is true)."""
    return encoding_name_for_model(model) in _encodings


def warm_up(names: Iterable[str] = ("o200k_base", "cl100k_base")) -> None:
    """Load ``names`` now, so that the first estimate does not pay for it (blocking: run it in
    an executor from async code)."""
    for name in names:
        get_encoding(name)


def _reset_cache() -> None:
    """Forget every loaded encoding. For tests only."""
    with _lock:
        _encodings.clear()


def _build(name: str) -> tiktoken.Encoding:
    constructor = openai_public.ENCODING_CONSTRUCTORS[name]
    # Without this guard a changed tiktoken would go through its own, downloading loader.
    if "load_tiktoken_bpe" not in constructor.__code__.co_names:
        raise AccountingError(f"tiktoken's {name} constructor no longer calls load_tiktoken_bpe")
    # A copy of the constructor whose globals point at the offline loader: tiktoken keeps the
    # pattern, special tokens and expected hash, and no module of tiktoken is patched.
    offline = types.FunctionType(
        constructor.__code__,
        {**constructor.__globals__, "load_tiktoken_bpe": _load_bpe_offline},
        constructor.__name__,
    )
    encoding = tiktoken.Encoding(**offline())
    # tiktoken keeps the ranks twice: in its Rust tables, which encode, and in a Python dict
    # (~30 MiB for o200k_base) that only pickling and its educational module read. This
    # module never pickles an encoding, so the dict goes; the tests check that encoding still
    # matches tiktoken's own.
    if isinstance(getattr(encoding, "_mergeable_ranks", None), dict):
        encoding._mergeable_ranks = {}
    return encoding


def _load_bpe_offline(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
    if not expected_hash:
        raise AccountingError(f"refusing to load {url} without an expected SHA-256")
    path, data = _read_file(hashlib.sha1(url.encode()).hexdigest(), url)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_hash:
        raise AccountingError(
            f"hash mismatch for tiktoken file {path}: expected SHA-256 {expected_hash}, "
            f"got {actual}; the file is corrupted or is not {url}"
        )
    return _parse_bpe(data, path)


def _read_file(file_name: str, url: str) -> tuple[str, bytes]:
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR")
    if cache_dir:
        override = Path(cache_dir) / file_name
        if override.is_file():
            return str(override), override.read_bytes()
    packaged = resources.files("proxy").joinpath("data").joinpath("tiktoken").joinpath(file_name)
    if not packaged.is_file():
        raise AccountingError(
            f"tiktoken file {file_name} ({url}) is neither in TIKTOKEN_CACHE_DIR nor packaged"
        )
    return str(packaged), packaged.read_bytes()


def _parse_bpe(data: bytes, path: str) -> dict[bytes, int]:
    # The same format and parsing as tiktoken.load.load_tiktoken_bpe, which only takes a path
    # and would copy the file into a cache directory.
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as exc:
            raise AccountingError(f"cannot parse line {line[:80]!r} of {path}") from exc
    return ranks
