from __future__ import annotations

import hashlib
import hmac

from proxy.alerts.signing import sign, verify

BODY = b'{"text":"hi"}'


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body():
    mac = hmac.new(b"s3cret", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign("s3cret", 1700000000, BODY) == f"t=1700000000,v1={mac}"


def test_verify_refuses_another_body_secret_or_an_old_timestamp():
    header = sign("s3cret", 1700000000, BODY)
    assert verify("s3cret", header, BODY, now=1700000010)
    assert not verify("s3cret", header, BODY + b" ", now=1700000010)
    assert not verify("other", header, BODY, now=1700000010)
    assert not verify("s3cret", header, BODY, now=1700000000 + 301)  # a replay
    assert not verify("s3cret", "v1=abc", BODY, now=1700000000)
