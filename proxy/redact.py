"""Masking credentials in text bound for a log line or a stored error: pure, no I/O.

What is masked, wherever it stands (no word boundary or literal space is relied on, since a
traceback may show a value as its repr, where a tab is the two characters `\\t`):
- any value of a credential-looking name (`Authorization`, `api-key`, `key`, `token`, ...),
  as a header, a JSON or repr field, or a query parameter, with its scheme (`Bearer`) kept;
- a bearer token after `Bearer` and any run of whitespace, control characters, escapes or
  percent-encodings;
- anything that looks like an OpenAI key (`sk-` and six or more key characters);
- the password of a URL's user info (`http://user:***@host`), as a proxy URL carries it.
Masking a word that only looks like a key is the lesser harm.
"""

from __future__ import annotations

import re

__all__ = ["redact"]

# A control character as a repr shows it, or a percent-encoded byte as a URL does.
_ESC = r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|[0-7]{1,3}|[abfnrtv])|%[0-9a-fA-F]{2}"
_GAP = rf"(?:[\s\x00-\x1f\x7f]|{_ESC})+"
_VALUE = r"[^ \t\r\n\"',;&)}\]>]+"
# After `name:` (a header, a JSON or repr field) the value runs to the end of the line or the
# quote, spaces and all: `Authorization: Token abc` has no part left to leak.
_LINE = r"[^\r\n\"',;&]+"
_NAMES = r"(?:proxy-)?authorization|x-api-key|api[-_]?key|access[-_]token|token|key|secret|password"
_NAMED = rf"(?:{_NAMES})[\"']?(?:{_GAP})?"
_SCHEME = rf"(?:{_GAP})?[\"']?(?:(?:bearer|basic)(?:{_GAP}))?"
_SECRET = re.compile(
    rf"({_NAMED}:{_SCHEME}){_LINE}"
    rf"|({_NAMED}={_SCHEME}){_VALUE}"
    rf"|(bearer{_GAP}){_VALUE}"
    r"|(sk-)[A-Za-z0-9_\-]{6,}"
    r"|(//[^/?#@:\s\"'<>]*:)[^/?#@\s\"'<>]+(?=@)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with credential values, bearer tokens and API keys replaced by ***."""
    return _SECRET.sub(lambda m: next(g for g in m.groups() if g is not None) + "***", text)
