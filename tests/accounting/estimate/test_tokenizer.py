import gc
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load

from proxy.accounting.estimate import tokenizer
from proxy.errors import AccountingError

PACKAGED = Path(tokenizer.__file__).resolve().parents[2] / "data" / "tiktoken"

# From shared/tiktoken/README.md: the file names tiktoken's cache uses, and their SHA-256.
FILES = {
    "cl100k_base": (
        "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "fb374d419588a4632f3f557e76b4b70aebbca790",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network, no tiktoken download/cache path, no override dir, and a cold cache."""

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer must not touch the network or tiktoken's cache")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", refuse)
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    tokenizer._reset_cache()
    yield
    tokenizer._reset_cache()


@pytest.fixture
def packaged_hidden(monkeypatch, tmp_path):
    """Make the packaged copies invisible, so only TIKTOKEN_CACHE_DIR can supply a file."""
    empty = tmp_path / "empty-package"
    (empty / "data" / "tiktoken").mkdir(parents=True)

    class _Resources:
        @staticmethod
        def files(_package):
            return empty

    monkeypatch.setattr(tokenizer, "resources", _Resources)


def cache_dir_with(tmp_path: Path, name: str, data: bytes | None = None) -> Path:
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    file_name, _ = FILES[name]
    target = cache / file_name
    if data is None:
        shutil.copyfile(PACKAGED / file_name, target)
    else:
        target.write_bytes(data)
    return cache


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_packaged_files_match_the_published_hashes(name):
    file_name, sha256 = FILES[name]
    assert hashlib.sha256((PACKAGED / file_name).read_bytes()).hexdigest() == sha256


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_each_encoding_loads_offline(name):
    encoding = tokenizer.get_encoding(name)

    assert encoding.name == name
    assert len(encoding.encode("hello world")) == 2
    assert encoding.decode(encoding.encode("héllo wörld ✓")) == "héllo wörld ✓"


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_tokens_equal_tiktokens_own_encoding(name, monkeypatch, tmp_path):
    text = "Write Python code that calculates 2+2 and give me the output.\n\tprint(2+2)  # ✓ 日本語"
    ours = tokenizer.get_encoding(name).encode(text)

    # tiktoken's own loader reads (and verifies) its cache; give it a copy it may not touch.
    monkeypatch.undo()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache_dir_with(tmp_path, name)))
    reference = tiktoken.get_encoding(name)

    assert ours == reference.encode(text)
    assert tokenizer.get_encoding(name).n_vocab == reference.n_vocab


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4", "cl100k_base"),
        ("gpt-4-1106-preview", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("o3", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("ft:gpt-4o-2024-08-06:acme::abc123", "o200k_base"),
        ("unknown-model", "o200k_base"),
        ("my-gpt4o-deployment", "o200k_base"),
        ("prod-assistants-eastus", "o200k_base"),
        ("", "o200k_base"),
        (None, "o200k_base"),
        # Not shipped: substituted (see the module's comment).
        ("gpt-oss-120b", "o200k_base"),
        ("text-davinci-003", "cl100k_base"),
        ("davinci", "cl100k_base"),
        ("gpt2", "cl100k_base"),
    ],
)
def test_encoding_name_for_model(model, expected):
    assert tokenizer.encoding_name_for_model(model) == expected


@pytest.mark.parametrize("model", ["gpt-4", "gpt-4o", None])
def test_count_tokens_known_string(model):
    assert tokenizer.count_tokens("hello world", model) == 2
    assert tokenizer.count_tokens("", model) == 0


@pytest.mark.parametrize("model", ["gpt-4", "gpt-4o"])
@pytest.mark.parametrize("text", ["<|endoftext|>", "a <|endofprompt|> b", "<|fim_prefix|>x"])
def test_special_token_text_counts_as_plain_text(model, text):
    count = tokenizer.count_tokens(text, model)

    assert count > 1
    assert tokenizer.counter_for_model(model)(text) == count


def test_counter_for_model_uses_the_models_encoding():
    text = "こんにちは世界、元気ですか"  # o200k_base's larger vocabulary merges more of this

    assert tokenizer.counter_for_model("gpt-4")(text) == 9
    assert tokenizer.counter_for_model("gpt-4o")(text) == 7


def test_unshipped_encoding_is_refused():
    with pytest.raises(ValueError, match="p50k_base"):
        tokenizer.get_encoding("p50k_base")


def test_encoding_is_loaded_once_and_shared(monkeypatch):
    builds: list[str] = []
    build = tokenizer._build

    def counting_build(name):
        builds.append(name)
        return build(name)

    monkeypatch.setattr(tokenizer, "_build", counting_build)
    start = threading.Barrier(8)

    def load(_):
        start.wait()
        return tokenizer.get_encoding("cl100k_base")

    with ThreadPoolExecutor(max_workers=8) as pool:
        loaded = list(pool.map(load, range(8)))

    assert builds == ["cl100k_base"]
    assert all(encoding is loaded[0] for encoding in loaded)


def test_warm_up_loads_the_named_encodings(monkeypatch):
    builds: list[str] = []
    monkeypatch.setattr(tokenizer, "_build", lambda name: builds.append(name) or object())

    tokenizer.warm_up()
    tokenizer.warm_up(["cl100k_base"])

    assert builds == ["o200k_base", "cl100k_base"]


def test_cache_dir_override_is_used(monkeypatch, tmp_path, packaged_hidden):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache_dir_with(tmp_path, "o200k_base")))

    assert tokenizer.count_tokens("hello world", "gpt-4o") == 2
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [FILES["o200k_base"][0]]


def test_packaged_copy_is_used_when_the_override_lacks_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache_dir_with(tmp_path, "o200k_base")))

    assert tokenizer.count_tokens("hello world", "gpt-4") == 2


def test_missing_everywhere_is_a_clear_error(monkeypatch, tmp_path, packaged_hidden):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    with pytest.raises(AccountingError, match=r"9b5ad71b.*cl100k_base"):
        tokenizer.get_encoding("cl100k_base")


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_corrupted_override_is_rejected_not_skipped(name, monkeypatch, tmp_path):
    data = bytearray((PACKAGED / FILES[name][0]).read_bytes())
    data[100] ^= 1
    cache = cache_dir_with(tmp_path, name, bytes(data))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))

    with pytest.raises(AccountingError, match="hash mismatch") as error:
        tokenizer.get_encoding(name)

    assert FILES[name][1] in str(error.value)
    assert (cache / FILES[name][0]).read_bytes() == bytes(data)
    # A failed load is not cached: a repaired file is picked up by the next call.
    shutil.copyfile(PACKAGED / FILES[name][0], cache / FILES[name][0])
    assert tokenizer.get_encoding(name).name == name


def test_loading_leaves_the_environment_alone(monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    before = dict(os.environ)

    tokenizer.warm_up()

    assert dict(os.environ) == before
    assert list(tmp_path.iterdir()) == []


def test_nothing_is_loaded_at_import():
    code = (
        "import proxy.accounting.estimate.tokenizer as t, tiktoken.registry as r;"
        "assert not t._encodings and not r.ENCODINGS, (t._encodings, r.ENCODINGS)"
    )
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=False
    )

    assert result.returncode == 0, result.stderr


def test_nothing_is_loaded_until_a_model_needs_it():
    tokenizer._reset_cache()
    assert not tokenizer.is_loaded("gpt-4o") and not tokenizer.is_loaded("gpt-4")

    assert tokenizer.count_tokens("hello world", "gpt-4") == 2

    assert tokenizer.is_loaded("gpt-4") and tokenizer.is_loaded("gpt-3.5-turbo")
    assert not tokenizer.is_loaded("gpt-4o")


def test_a_loaded_encoding_keeps_no_python_copy_of_its_ranks():
    """tiktoken's Rust tables encode; its Python dict of the same ranks (~15 MiB for
    cl100k_base) is dropped once they are built."""
    tokenizer._reset_cache()
    gc.collect()
    tracemalloc.start()
    try:
        encoding = tokenizer.get_encoding("cl100k_base")
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 2 * 1024 * 1024, held
    assert encoding.encode("hello world") == [15339, 1917]
