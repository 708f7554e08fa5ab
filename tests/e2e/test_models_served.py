"""Several models in one process (MODELS): a SigLIP2 and a CLIP, random weights, built here, served at once.

Each equals open_clip's own forward pass (1e-4) through every way in: the native endpoints, /v1/embeddings
with the official openai SDK, the client and `embed-list`. Each request picks its model; a lazy model loads
on first use; errors are clear JSON (unknown model, wrong type, `dimensions`, a model still loading).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from clip_client import ClipPodClient
from clip_client.__main__ import main
from clip_client.signing import (
    EMBEDDING_TYPES,
    UPLOAD_PATH,
    options_payload_id,
    signed_headers,
    text_payload_id,
    upload_payload_id,
)
from clip_client.vectors import bits, unpack

from app.inference import outputs
from scripts.procs import PYTHONPATH, ROOT
from tests.support.api import SECRET, call, multipart
from tests.support.families import build_family
from tests.support.metrics import delta, scrape, value
from tests.support.served import Reference, models_settings, signed_call
from tests.support.service import RunningService, run_service

CLIP, SIGLIP2, TEXT_ONLY = "clip", "siglip2", "siglip-text"
KEY = "sk-models-0123456789abcdef0123456789abcd"
TEXTS = ["a photo of a cat", "two red boats at night", "Ünïcödé — 東京の写真"]
PHOTOS = ["photo0.jpg", "photo1.jpg", "photo2.jpg"]
SERVED = f"this service serves {CLIP!r}, 'clip-b', {SIGLIP2!r} or {TEXT_ONLY!r}"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("served")
    return {family: build_family(family, root / family) for family in ("clip", "siglip2", "siglip")}


@pytest.fixture(scope="module")
def refs(folders: dict[str, str]) -> dict[str, Reference]:
    return {CLIP: Reference.load(folders["clip"]), SIGLIP2: Reference.load(folders["siglip2"])}


@pytest.fixture(scope="module")
def pod(folders: dict[str, str]) -> Iterator[RunningService]:
    models = [
        {"model": folders["clip"], "name": CLIP, "alias": "clip-b", "default": True},
        {"model": folders["siglip2"], "name": SIGLIP2, "matryoshka_dims": [16, 32]},
        {"model": folders["siglip"], "name": TEXT_ONLY, "towers": "text", "lazy": True},
    ]
    with run_service(models_settings(models, api_keys=KEY, max_batch_size=4)) as running:
        yield running


def _upload(base: str, datas: list[bytes], query: str, options: dict[str, object]) -> tuple[int, dict, dict]:
    body, content_type = multipart([("image", f"{i}.jpg", data) for i, data in enumerate(datas)])
    payload_id = options_payload_id(upload_payload_id(datas), options)  # type: ignore[arg-type]
    headers = signed_headers(SECRET, "POST", UPLOAD_PATH, payload_id) | {"Content-Type": content_type}
    return call(base, f"{UPLOAD_PATH}?{query}", raw=body, secret=None, headers=headers)


def _vectors(results: list[dict]) -> np.ndarray:
    return np.array([r["embedding"] for r in results], dtype=np.float32)


@pytest.mark.parametrize("model", [CLIP, SIGLIP2])
def test_served_native_endpoints_equal_each_models_open_clip(model, pod, refs, image_server):
    datas = [image_server.files[name] for name in PHOTOS]
    urls = [image_server.url(f"img/{name}") for name in PHOTOS]
    answers = [
        signed_call(pod.base, "/v1/embed/image", {"image_url": urls[0], "model": model}),
        signed_call(pod.base, "/v1/embed/image-batch", {"image_urls": urls, "model": model}),
        _upload(pod.base, datas, f"model={model}", {"model": model}),
        signed_call(pod.base, "/v1/embed/text", {"text": TEXTS[0], "model": model}),
        signed_call(pod.base, "/v1/embed/text-batch", {"texts": TEXTS, "model": model}),
    ]
    assert [(status, body["model"]) for status, body, _ in answers] == [(200, model)] * 5
    images, texts = refs[model].images(datas), refs[model].texts(TEXTS)
    (_, one, _), (_, batch, _), (_, upload, _), (_, text, _), (_, text_batch, _) = answers
    np.testing.assert_allclose(one["embedding"], images[0], rtol=0, atol=1e-4)
    np.testing.assert_allclose(_vectors(batch["results"]), images, rtol=0, atol=1e-4)
    np.testing.assert_allclose(_vectors(upload["results"]), images, rtol=0, atol=1e-4)
    np.testing.assert_allclose(text["embedding"], texts[0], rtol=0, atol=1e-4)
    np.testing.assert_allclose(_vectors(text_batch["results"]), texts, rtol=0, atol=1e-4)


def test_served_request_without_model_gets_the_default_and_an_alias_names_it(pod, refs):
    plain = call(pod.base, "/v1/embed/text", {"text": TEXTS[1]})  # signed as before MODELS existed
    alias = signed_call(pod.base, "/v1/embed/text", {"text": TEXTS[1], "model": "clip-b"})
    assert (plain[0], plain[1]["model"], alias[0], alias[1]["model"]) == (200, CLIP, 200, CLIP)
    np.testing.assert_allclose(plain[1]["embedding"], refs[CLIP].texts([TEXTS[1]])[0], rtol=0, atol=1e-4)


def test_served_openai_sdk_picks_the_model_and_takes_extra_body(pod, refs, image_server):
    sdk = openai.OpenAI(base_url=f"{pod.base}/v1", api_key=KEY, max_retries=0, timeout=60)
    urls = [image_server.url(f"img/{name}") for name in PHOTOS]
    datas = [image_server.files[name] for name in PHOTOS]
    for model in (CLIP, SIGLIP2):
        texts = sdk.embeddings.create(model=model, input=TEXTS)  # the SDK's default: base64 float32
        images = sdk.embeddings.create(model=model, input=urls, extra_body={"modality": "image"})
        assert (texts.model, images.model) == (model, model)
        np.testing.assert_allclose([d.embedding for d in texts.data], refs[model].texts(TEXTS), rtol=0, atol=1e-4)
        np.testing.assert_allclose([d.embedding for d in images.data], refs[model].images(datas), rtol=0, atol=1e-4)
    typed = sdk.embeddings.create(
        model=SIGLIP2, input=TEXTS[:1], encoding_format="float", extra_body={"embedding_type": "int8"}
    )
    codes = typed.data[0].embedding
    assert all(float(c).is_integer() and -127 <= c <= 127 for c in codes)
    np.testing.assert_allclose(unpack(codes, "int8"), refs[SIGLIP2].texts(TEXTS[:1])[0], rtol=0, atol=0.5 / 127 + 1e-4)
    assert [m.id for m in sdk.models.list()] == [CLIP, SIGLIP2, TEXT_ONLY]


async def test_served_client_asks_its_model_or_the_one_a_call_names(pod, refs, image_server):
    urls = [image_server.url(f"img/{name}") for name in PHOTOS]
    datas = [image_server.files[name] for name in PHOTOS]
    async with ClipPodClient(pod.base, SECRET, model=SIGLIP2) as client:
        own = await client.embed_text(TEXTS[2])
        other = await client.embed_text(TEXTS[2], model=CLIP)
        images = await client.embed_images(urls)
        card = await client.model()
        typed = await client.embed_texts(TEXTS, embedding_type="binary")
    np.testing.assert_allclose(own, refs[SIGLIP2].texts([TEXTS[2]])[0], rtol=0, atol=1e-4)
    np.testing.assert_allclose(other, refs[CLIP].texts([TEXTS[2]])[0], rtol=0, atol=1e-4)
    np.testing.assert_allclose([r.embedding for r in images], refs[SIGLIP2].images(datas), rtol=0, atol=1e-4)
    assert card["id"] == SIGLIP2
    expected = refs[SIGLIP2].texts(TEXTS) > 0
    assert [bits(r.embedding, "binary", 64).tolist() for r in typed] == expected.astype(np.uint8).tolist()


def test_served_embed_list_with_model_equals_that_model_and_keeps_to_it(
    pod, refs, image_server, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("CLIP_INFERENCE_BACKEND", raising=False)
    monkeypatch.setenv("CLIP_POD_BASE_URL", pod.base)
    monkeypatch.setenv("EMBEDDING_HMAC_SECRET", SECRET)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(image_server.url(f"img/{name}") + "\n" for name in PHOTOS))
    out = tmp_path / "out"
    status = main(["embed-list", str(listing), "--out", str(out), "--model", SIGLIP2])
    summary = json.loads(capsys.readouterr().out)
    assert (status, summary["succeeded"], summary["model"]) == (0, 3, SIGLIP2)
    rows = np.load(out / "embeddings.npy")
    datas = [image_server.files[name] for name in PHOTOS]
    np.testing.assert_allclose(rows, refs[SIGLIP2].images(datas), rtol=0, atol=1e-4)
    again = main(["embed-list", str(listing), "--out", str(out), "--model", CLIP])
    error = json.loads(capsys.readouterr().out)["error"]
    assert (again, error["code"]) == (2, "config_error")
    assert "holds vectors of model siglip2, not clip" in error["message"]


def test_served_v1_models_describes_each_model(pod):
    status, body, _ = call(pod.base, "/v1/models")
    assert (status, body["object"]) == (200, "list")
    cards = {card["id"]: card for card in body["data"]}
    assert list(cards) == [CLIP, SIGLIP2, TEXT_ONLY]
    clip, siglip2, text_only = cards[CLIP], cards[SIGLIP2], cards[TEXT_ONLY]
    assert (clip["object"], clip["owned_by"], clip["aliases"], clip["default"]) == (
        "model",
        "clip-service",
        ["clip-b"],
        True,
    )
    assert (clip["dim"], clip["modalities"], clip["dtype"], clip["device"]) == (64, ["image", "text"], "float32", "cpu")
    assert clip["image"]["size"] == [64, 64] and clip["image"]["resize_mode"] == "shortest"
    assert clip["text"] == {"context_length": 77, "tokenizer": "SimpleTokenizer"}
    assert siglip2["image"] == {
        "size": [160, 160],
        "resize_mode": "squash",
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "path": "pil/pool",
    }
    assert siglip2["text"] == {"context_length": 64, "tokenizer": "HFTokenizer"}
    assert (siglip2["matryoshka_dims"], siglip2["embedding_types"]) == ([16, 32], list(EMBEDDING_TYPES))
    assert len({clip["fingerprint"], siglip2["fingerprint"]}) == 2 and len(clip["fingerprint"]) == 64
    assert all(card["loaded"] and card["memory_bytes"] > 0 and card["created"] > 0 for card in (clip, siglip2))
    assert (text_only["modalities"], text_only["lazy"], text_only["image"]) == (["text"], True, None)
    assert call(pod.base, "/v1/models/clip-b")[1]["id"] == CLIP
    missing = call(pod.base, "/v1/models/nope")
    assert (missing[0], missing[1]["error"]["code"]) == (404, "not_found")
    assert missing[1]["error"]["message"] == f"model 'nope' is not served here: {SERVED}"


def test_served_health_is_ready_and_names_each_models_state(pod):
    status, body, _ = call(pod.base, "/health")
    assert (status, body["status"], body["model"]) == (200, "ok", body["models"][CLIP]["model"])
    assert body["models"][CLIP]["status"] == body["models"][SIGLIP2]["status"] == "ready"
    assert body["models"][SIGLIP2]["engine"]["texts"]["items"] >= 0
    assert body["models"][TEXT_ONLY]["on_demand"] is True


UNKNOWN = [
    ("/v1/embed/text", {"text": "a cat", "model": "nope"}),
    ("/v1/embed/text-batch", {"texts": ["a cat"], "model": "nope"}),
    ("/v1/embed/image", {"image_url": "https://example.com/a.jpg", "model": "nope"}),
    ("/v1/embed/image-batch", {"image_urls": ["https://example.com/a.jpg"], "model": "nope"}),
]


@pytest.mark.parametrize(("path", "body"), UNKNOWN)
def test_served_unknown_model_is_422_naming_the_served_ones(pod, path, body):
    status, answer, _ = signed_call(pod.base, path, body)
    assert (status, answer["error"]) == (
        422,
        {"code": "invalid_request", "message": f"model 'nope' is not served here: {SERVED}"},
    )


def test_served_unknown_model_is_422_on_the_upload_and_openai(pod, image_server):
    upload = _upload(pod.base, [image_server.files["photo0.jpg"]], "model=nope", {"model": "nope"})
    sdk = openai.OpenAI(base_url=f"{pod.base}/v1", api_key=KEY, max_retries=0, timeout=60)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk.embeddings.create(model="nope", input="a cat")
    expected = f"model 'nope' is not served here: {SERVED}"
    assert (upload[0], upload[1]["error"]["message"]) == (422, expected)
    assert caught.value.body == {"code": "invalid_request", "message": expected}


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/embed/text", {"text": "a", "embedding_type": "int4"}, "embedding_type: Input should be 'float32'"),
        (
            "/v1/embed/text",
            {"text": "a", "model": CLIP, "dimensions": 32},
            "dimensions=32 is not offered: clip gives 64",
        ),
        (
            "/v1/embed/text",
            {"text": "a", "model": SIGLIP2, "dimensions": 20},
            "dimensions=20 is not offered: siglip2 gives 64, or 16, 32 (matryoshka)",
        ),
        (
            "/v1/embed/image",
            {"image_url": "https://example.com/a.jpg", "model": TEXT_ONLY},
            "model 'siglip-text' loads its text tower only (towers=text): it cannot embed images",
        ),
    ],
)
def test_served_what_a_model_cannot_give_is_a_clear_422(pod, path, body, message):
    status, answer, _ = signed_call(pod.base, path, body)
    assert (status, answer["error"]["code"]) == (422, "invalid_request")
    assert answer["error"]["message"].startswith(message)


def test_served_wrong_type_is_422_on_the_upload_and_openai(pod, image_server):
    upload = _upload(pod.base, [image_server.files["photo0.jpg"]], "embedding_type=int4", {})
    raw = json.dumps({"model": CLIP, "input": "a", "embedding_type": "int4"}).encode()
    openai_answer = call(pod.base, "/v1/embeddings", raw=raw, secret=None, headers={"Authorization": f"Bearer {KEY}"})
    for status, answer, _ in (upload, openai_answer):
        assert (status, answer["error"]["code"]) == (422, "invalid_request")
        assert "embedding_type: Input should be 'float32'" in answer["error"]["message"]


def test_served_matryoshka_dimensions_truncate_and_renormalise(pod, refs):
    status, body, _ = signed_call(pod.base, "/v1/embed/text", {"text": TEXTS[0], "model": SIGLIP2, "dimensions": 32})
    full = refs[SIGLIP2].texts(TEXTS[:1])[0][:32]
    assert (status, body["dim"], len(body["embedding"])) == (200, 32, 32)
    np.testing.assert_allclose(body["embedding"], full / np.linalg.norm(full), rtol=0, atol=1e-4)


@pytest.mark.parametrize("embedding_type", EMBEDDING_TYPES)
def test_served_every_type_round_trips_through_the_client_helper(pod, embedding_type):
    text = f"a {embedding_type} drawing of an engine"
    _, plain, _ = signed_call(pod.base, "/v1/embed/text", {"text": text, "model": SIGLIP2})
    status, typed, _ = signed_call(
        pod.base, "/v1/embed/text", {"text": text, "model": SIGLIP2, "embedding_type": embedding_type}
    )
    raw = json.dumps({"model": SIGLIP2, "input": text, "embedding_type": embedding_type, "encoding_format": "base64"})
    _, encoded, _ = call(
        pod.base, "/v1/embeddings", raw=raw.encode(), secret=None, headers={"Authorization": f"Bearer {KEY}"}
    )
    vector = np.asarray(plain["embedding"], dtype=np.float32)
    got = unpack(typed["embedding"], embedding_type, dim=typed["dim"])
    assert status == 200 and typed.get("embedding_type", "float32") == embedding_type
    np.testing.assert_array_equal(unpack(encoded["data"][0]["embedding"], embedding_type, dim=64), got)
    if embedding_type in ("binary", "ubinary"):
        assert len(typed["embedding"]) == 64 // 8
        np.testing.assert_array_equal(bits(typed["embedding"], embedding_type, 64), (vector > 0).astype(np.uint8))
    else:
        step = {"float32": 0.0, "float16": 1e-3, "int8": 0.5 / 127, "uint8": 0.5 / 127}[embedding_type]
        np.testing.assert_allclose(got, vector, rtol=0, atol=step + 1e-6)
        np.testing.assert_array_equal(got, unpack(outputs.encode(vector, embedding_type), embedding_type))


def test_served_signature_covers_the_model_a_request_names(pod):
    # Signed as a request without options, then sent naming a model: the signature does not cover it.
    headers = signed_headers(SECRET, "POST", "/v1/embed/text", text_payload_id("a cat"))
    raw = json.dumps({"text": "a cat", "model": SIGLIP2}).encode()
    status, body, _ = call(pod.base, "/v1/embed/text", raw=raw, secret=None, headers=headers)
    assert (status, body["error"]["code"]) == (401, "signature_mismatch")


def test_served_metrics_count_each_model_apart(pod):
    before = scrape(pod.base)
    assert signed_call(pod.base, "/v1/embed/text", {"text": "metrics one", "model": CLIP})[0] == 200
    assert (
        signed_call(pod.base, "/v1/embed/text-batch", {"texts": ["metrics 2", "metrics 3"], "model": SIGLIP2})[0] == 200
    )
    after = scrape(pod.base)
    assert delta(before, after, "clip_model_embeddings_total", model=CLIP, kind="text") == 1
    assert delta(before, after, "clip_model_embeddings_total", model=SIGLIP2, kind="text") == 2
    assert delta(before, after, "clip_embeddings_total", kind="text") == 3  # the pod's total, as before
    assert delta(before, after, "clip_model_batch_size_sum", model=SIGLIP2, queue="texts") == 2
    assert delta(before, after, "clip_model_batch_size_sum", model=CLIP, queue="texts") == 1
    assert value(after, "clip_model_loaded", model=CLIP) == 1
    assert value(after, "clip_model_memory_bytes", model=SIGLIP2) > 0
    assert value(after, "clip_model_loads_total", model=SIGLIP2, outcome="loaded") == 1


def test_served_lazy_model_answers_503_model_loading_then_serves(pod, folders):
    first = signed_call(pod.base, "/v1/embed/text", {"text": "a cat", "model": TEXT_ONLY})
    health = call(pod.base, "/health")
    answer = _until_served(pod.base, {"text": "a cat", "model": TEXT_ONLY})
    status, body, headers = first
    assert (status, body["error"]["code"]) == (503, "model_loading")
    assert body["error"]["message"].startswith("model 'siglip-text' is loading")
    assert int(headers["retry-after"]) >= 1
    assert health[0] == 200  # a lazy model keeps no one waiting
    np.testing.assert_allclose(answer["embedding"], Reference.load(folders["siglip"]).texts(["a cat"])[0], atol=1e-4)


def _until_served(base: str, body: dict[str, object], seconds: float = 60) -> dict:
    import time

    deadline = time.monotonic() + seconds
    while True:
        status, answer, _ = signed_call(base, "/v1/embed/text", body)
        if status == 200 or time.monotonic() > deadline:
            assert status == 200, answer
            return answer
        assert answer["error"]["code"] == "model_loading", answer
        time.sleep(0.05)


def test_served_start_failure_names_the_model(tmp_path: Path):
    models = [
        {"model": "clip-tiny", "pretrained": "none", "name": "fine"},
        {"model": f"local-dir:{tmp_path}", "name": "broken"},
    ]
    with run_service(models_settings(models), wait_ready=False) as svc:
        import time

        deadline = time.monotonic() + 30
        while (health := call(svc.base, "/health"))[1]["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
    assert (health[0], health[1]["status"]) == (503, "failed")
    assert health[1]["reason"].startswith(f"model broken: local-dir:{tmp_path}: no open_clip_config.json")


def test_served_cli_lists_models_and_passes_model_and_type_on(pod, refs, monkeypatch, capsys):
    monkeypatch.delenv("CLIP_INFERENCE_BACKEND", raising=False)
    monkeypatch.setenv("CLIP_POD_BASE_URL", pod.base)
    monkeypatch.setenv("EMBEDDING_HMAC_SECRET", SECRET)
    runs = []
    for argv in (
        ["models"],
        ["text", "a cat", "--model", SIGLIP2],
        ["text", "a cat", "--model", SIGLIP2, "--embedding-type", "ubinary"],
    ):
        runs.append((main(argv), json.loads(capsys.readouterr().out)))
    (listed, models), (plain, vector), (typed, codes) = runs
    assert (listed, plain, typed) == (0, 0, 0)
    assert [card["id"] for card in models["data"]] == [CLIP, SIGLIP2, TEXT_ONLY]
    np.testing.assert_allclose(vector["embedding"], refs[SIGLIP2].texts(["a cat"])[0], rtol=0, atol=1e-4)
    assert (codes["dim"], len(codes["embedding"]), codes["embedding_type"]) == (64, 8, "ubinary")
    assert (
        bits(codes["embedding"], "ubinary", 64).tolist() == (np.asarray(vector["embedding"]) > 0).astype(int).tolist()
    )


def _visual_search(base: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m examples.visual_search ARGS` against the service at `base`, as a user would."""
    env = os.environ | {"PYTHONPATH": PYTHONPATH, "CLIP_POD_BASE_URL": base, "EMBEDDING_HMAC_SECRET": SECRET}
    env.pop("CLIP_INFERENCE_BACKEND", None)
    command = [sys.executable, "-m", "examples.visual_search", *args]
    return subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_served_visual_search_keeps_one_embedding_space_per_index(pod, image_server, tmp_path):
    listing = tmp_path / "urls.txt"
    listing.write_text("".join(image_server.url(f"img/{name}") + "\n" for name in PHOTOS))
    folder = tmp_path / "index"
    indexed = _visual_search(pod.base, "index", str(listing), "--index", str(folder), "--model", SIGLIP2)
    mixed = _visual_search(pod.base, "index", str(listing), "--index", str(folder), "--model", CLIP)
    searched = _visual_search(pod.base, "search", "a cat", "--index", str(folder), "--json")
    crossed = _visual_search(pod.base, "search", "a cat", "--index", str(folder), "--model", CLIP)
    manifest = json.loads((folder / "manifest.json").read_text())
    fingerprint = call(pod.base, f"/v1/models/{SIGLIP2}")[1]["fingerprint"]
    assert indexed.returncode == 0, indexed.stderr
    assert (manifest["model"], manifest["fingerprint"], manifest["dim"]) == (SIGLIP2, fingerprint, 64)
    assert mixed.returncode == 2 and f"was indexed with fingerprint='{fingerprint}'" in mixed.stderr
    assert searched.returncode == 0 and len(json.loads(searched.stdout)) == 3  # the index's model, by default
    assert crossed.returncode == 2 and "vectors of different spaces cannot be compared" in crossed.stderr
