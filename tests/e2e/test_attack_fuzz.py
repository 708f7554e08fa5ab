"""Attack suite, fuzzing: schema-driven requests against the running service (guard ON, fake DNS)
and mutated image bytes against the decoder. No answer is a 500; every error has the JSON shape."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from clip_client.signing import (
    batch_payload_id,
    body_payload_id,
    image_payload_id,
    new_nonce,
    signed_headers,
    text_batch_payload_id,
    text_payload_id,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from app.errors import ImageTooLarge, InvalidImage
from app.inference.decode import decode_image
from tests.support.api import SECRET
from tests.support.data import jpeg_bytes, png_rgba_bytes, tiny_settings
from tests.support.netmap import FakeDns
from tests.support.service import RunningService, run_service

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PAYLOAD_ID = {
    "/v1/embed/image": lambda b: image_payload_id(b["image_url"]),
    "/v1/embed/image-batch": lambda b: batch_payload_id(b["image_urls"]),
    "/v1/embed/text": lambda b: text_payload_id(b["text"]),
    "/v1/embed/text-batch": lambda b: text_batch_payload_id(b["texts"]),
    # Signed over the raw body: right whenever the drawn body is the JSON one (not raw bytes).
    "/v1/embeddings": lambda b: body_payload_id(json.dumps(b).encode()),
}
HOSTS = [
    "127.0.0.1",
    "169.254.169.254",
    "[::1]",
    "[::ffff:10.0.0.1]",
    "2130706433",
    "0x7f.1",
    "intranet.test",
    "nowhere.test",
    "example.com",
    "a..b",
    "xn--bcher-kva.test",
    "[fe80::1%25eth0]",
]
SCHEMES = ["http"] * 6 + ["https"] * 2 + ["file", "gopher", "ftp", "data", "javascript", "HTTP"]


@pytest.fixture(scope="module")
def fuzz_service() -> Iterator[RunningService]:
    dns = FakeDns({"intranet.test": ["10.0.0.7"], "example.com": ["192.168.0.1", "93.184.215.14"]})
    with run_service(tiny_settings(allow_private_urls=False, max_batch_size=4), lookup=dns) as running:
        yield running


@pytest.fixture(scope="module")
def openapi(fuzz_service) -> dict:
    with urllib.request.urlopen(f"{fuzz_service.base}/openapi.json", timeout=10) as resp:
        return json.loads(resp.read())


def urls() -> st.SearchStrategy[str]:
    crafted = st.builds(
        lambda scheme, userinfo, host, port, path: f"{scheme}://{userinfo}{host}{port}/{path}",
        st.sampled_from(SCHEMES),
        st.sampled_from(["", "user:pw@", "@", "x@"]),
        st.sampled_from(HOSTS),
        st.sampled_from(["", ":80", ":0", ":22", ":99999", ":x"]),
        st.text(max_size=20),
    )
    return st.one_of(crafted, crafted, crafted, st.text(max_size=60))


def from_schema(schema: dict, components: dict, name: str = "") -> st.SearchStrategy[object]:
    """A strategy for instances of a (small) JSON schema; strings named *url* get hostile URLs."""
    if "$ref" in schema:
        return from_schema(components[schema["$ref"].rsplit("/", 1)[-1]], components, name)
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v, components, k) for k, v in props.items() if k in required},
            optional={k: from_schema(v, components, k) for k, v in props.items() if k not in required},
        )
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(from_schema(schema["items"], components, name), min_size=low, max_size=min(low + 6, 30))
    if kind == "string":
        if "url" in name:
            return urls()
        return st.text(min_size=schema.get("minLength", 0), max_size=40)
    return json_values()


def json_values() -> st.SearchStrategy[object]:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=10,
    )


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80)


def send(base: str, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def assert_well_formed(status: int, raw: bytes) -> None:
    assert status != 500 and status < 600, raw
    body = json.loads(raw)
    if status >= 400:
        assert set(body) == {"error"}, body
        # A 401 also names the request id its log line carries.
        assert set(body["error"]) == ({"code", "message", "request_id"} if status == 401 else {"code", "message"}), body
        assert all(isinstance(v, str) and v for v in body["error"].values()), body


@st.composite
def api_requests(draw: st.DrawFn, spec: dict) -> tuple[str, str, bytes | None, dict[str, str]]:
    components = spec["components"]["schemas"]
    # /metrics answers Prometheus text, not JSON; every other operation answers JSON.
    operations = [(p, m, op) for p, item in spec["paths"].items() for m, op in item.items() if p != "/metrics"]
    path, method, op = draw(st.sampled_from(operations))
    method = draw(st.sampled_from([method.upper()] * 8 + ["GET", "PUT", "DELETE"]))
    headers = {"Content-Type": "application/json"}
    data: bytes | None = None
    if method in ("POST", "PUT"):
        schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
        body = draw(st.one_of(*[from_schema(schema, components)] * 4, json_values()))
        # Hypothesis favours small draws: 0..6 (the common case) mean JSON, 7 means raw bytes.
        data = draw(st.binary(max_size=200)) if draw(st.integers(0, 7)) == 7 else json.dumps(body).encode()
        auth = draw(st.sampled_from(["signed"] * 3 + ["signed-nonce"] * 2 + ["random", "none"]))
        if auth.startswith("signed") and path in PAYLOAD_ID:
            try:
                payload = PAYLOAD_ID[path](body)  # type: ignore[arg-type]
            except (TypeError, KeyError, AttributeError):
                payload = draw(st.text(max_size=10))
            nonce = new_nonce() if auth == "signed-nonce" else None
            try:
                headers |= signed_headers(SECRET, method, path, payload, nonce=nonce)
            except (TypeError, AttributeError):
                pass
        elif auth == "random":
            headers |= {name: draw(header_text) for name in ("X-Timestamp", "X-Signature", "X-Nonce")}
    return method, path, data, headers


@FUZZ
@given(data=st.data())
def test_fuzz_api_never_answers_500_and_errors_are_json(fuzz_service, openapi, data):
    method, path, body, headers = data.draw(api_requests(openapi))
    status, raw = send(fuzz_service.base, method, path, body, headers)
    assert_well_formed(status, raw)


URL_CODES = {"invalid_url", "url_not_allowed", "download_failed", "invalid_request"}


@FUZZ
@given(url=urls())
def test_fuzz_image_url_is_refused_with_json_error(fuzz_service, url):
    # Every fuzz host is refused, unresolvable or malformed: nothing is ever fetched.
    headers = {"Content-Type": "application/json", **signed_headers(SECRET, "POST", "/v1/embed/image", url)}
    status, raw = send(fuzz_service.base, "POST", "/v1/embed/image", json.dumps({"image_url": url}).encode(), headers)
    assert_well_formed(status, raw)
    assert json.loads(raw)["error"]["code"] in URL_CODES


@FUZZ
@given(path=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?"), max_size=40))
def test_fuzz_unknown_paths_get_json_errors(fuzz_service, openapi, path):
    path = "/" + path.lstrip("/")
    # Known routes are not unknown: /metrics answers Prometheus text and /docs HTML (found by the fuzzer).
    assume(path.rstrip("/") not in {*openapi["paths"], "/docs", "/redoc", "/docs/oauth2-redirect"})
    status, raw = send(fuzz_service.base, "GET", path, None, {})
    assert_well_formed(status, raw)


# --- the decoder on mutated images --------------------------------------------------------

SEEDS = {
    "jpeg": jpeg_bytes(48, 32, 5),
    "png": png_rgba_bytes(24, 16),
}
for _fmt in ("GIF", "WEBP"):
    _buf = io.BytesIO()
    Image.open(io.BytesIO(SEEDS["jpeg"])).save(_buf, _fmt)
    SEEDS[_fmt.lower()] = _buf.getvalue()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(data=mutated_images())
def test_fuzz_decode_raises_only_domain_errors(data):
    try:
        img = decode_image(data, max_pixels=4_000_000)
    except (InvalidImage, ImageTooLarge):
        return
    assert img.mode == "RGB" and img.width >= 1 and img.height >= 1
