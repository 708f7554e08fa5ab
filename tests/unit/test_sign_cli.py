"""`python -m app.auth.sign`: the headers it prints sign each endpoint's payload id."""

from __future__ import annotations

import json

import pytest
from clip_client.signing import (
    batch_payload_id,
    body_payload_id,
    canonical_message,
    image_payload_id,
    signature_matches,
    text_batch_payload_id,
    text_payload_id,
    upload_payload_id,
)

from app.auth.sign import main

SECRET = "sign-cli-secret-0123456789abcdef"


@pytest.fixture(autouse=True)
def _secret(monkeypatch):
    monkeypatch.setenv("EMBEDDING_HMAC_SECRET", f"{SECRET},old-secret")


def _signed(capsys, *argv: str) -> dict[str, str]:
    assert main(["POST", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("path", "options", "payload_id"),
    [
        ("/v1/embed/image", ["--url", "https://a.test/x.jpg"], image_payload_id("https://a.test/x.jpg")),
        ("/v1/embed/image-batch", ["--urls", "u1", "u2"], batch_payload_id(["u1", "u2"])),
        ("/v1/embed/text", ["--text", "a cat"], text_payload_id("a cat")),
        ("/v1/embed/text-batch", ["--texts", "a\ncat", "b"], text_batch_payload_id(["a\ncat", "b"])),
        ("/v1/embeddings", ["--body", '{"input": "é"}'], body_payload_id('{"input": "é"}'.encode())),
    ],
)
def test_sign_cli_signs_the_payload_id(capsys, path, options, payload_id):
    headers = _signed(capsys, path, *options)
    message = canonical_message("POST", path, payload_id, headers["X-Timestamp"])
    assert signature_matches(SECRET, message, headers["X-Signature"])


def test_sign_cli_signs_uploaded_files_in_order(capsys, tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"first image")
    (tmp_path / "b.jpg").write_bytes(b"second image")
    headers = _signed(capsys, "/v1/embed/image-upload", "--files", str(tmp_path / "b.jpg"), str(tmp_path / "a.jpg"))
    payload_id = upload_payload_id([b"second image", b"first image"])
    message = canonical_message("POST", "/v1/embed/image-upload", payload_id, headers["X-Timestamp"])
    assert signature_matches(SECRET, message, headers["X-Signature"])


def test_sign_cli_prints_curl_options_with_a_nonce(capsys, tmp_path):
    (tmp_path / "cat.jpg").write_bytes(b"cat")
    assert main(["POST", "/v1/embed/image-upload", "--files", str(tmp_path / "cat.jpg"), "--nonce"]) == 0
    words = capsys.readouterr().out.split()
    assert words[0::2] == ["-H", "-H", "-H"]
    assert [w.split(":", 1)[0] for w in words[1::2]] == ["X-Timestamp", "X-Signature", "X-Nonce"]


def test_sign_cli_missing_file_exits_2(capsys, tmp_path):
    assert main(["POST", "/v1/embed/image-upload", "--files", str(tmp_path / "missing.jpg")]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"cannot read {tmp_path / 'missing.jpg'}: No such file or directory\n")
