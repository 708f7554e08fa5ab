"""Configuration from the environment, and the backend switch (pod ⇄ legacy serverless)."""

from __future__ import annotations

import pytest
from clip_client import (
    ClientConfig,
    ClipConfigError,
    ClipNotSupportedError,
    ClipPodClient,
    RunPodServerlessClipClient,
    make_clip_client,
)

POD_ENV = {"CLIP_POD_BASE_URL": "http://127.0.0.1:9/", "EMBEDDING_HMAC_SECRET": "new,old"}
SERVERLESS_ENV = {
    "CLIP_INFERENCE_BACKEND": "runpod_serverless",
    "RUNPOD_ENDPOINT_URL": "http://127.0.0.1:9/v2/abc/runsync",
    "RUNPOD_API_KEY": "key",
    "EMBEDDING_HMAC_SECRET": "s",
}
ALL_NAMES = (
    "CLIP_INFERENCE_BACKEND",
    "CLIP_POD_BASE_URL",
    "CLIP_POD_TIMEOUT_S",
    "EMBEDDING_HMAC_SECRET",
    "RUNPOD_ENDPOINT_URL",
    "RUNPOD_API_KEY",
    "CLIP_SERVERLESS_TIMEOUT_S",
)


@pytest.fixture
def env(monkeypatch):
    for name in ALL_NAMES:
        monkeypatch.delenv(name, raising=False)

    def set_env(values: dict[str, str]) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


def test_config_defaults_to_pod_backend_with_60s_timeout(env):
    env(POD_ENV)
    config = ClientConfig.from_env()
    assert config.backend == "runpod_pod" and config.pod_timeout_s == 60.0
    assert config.pod_base_url == "http://127.0.0.1:9" and config.hmac_secret == "new"


async def test_config_backend_switch_by_environment(env):
    env(POD_ENV)
    pod = make_clip_client()
    env(SERVERLESS_ENV)
    serverless = make_clip_client()
    assert type(pod) is ClipPodClient and pod.base_url == "http://127.0.0.1:9"
    assert type(serverless) is RunPodServerlessClipClient
    assert serverless.endpoint_url == "http://127.0.0.1:9/v2/abc"
    await pod.aclose()
    await serverless.aclose()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"CLIP_INFERENCE_BACKEND": "lambda"}, "CLIP_INFERENCE_BACKEND='lambda' is not one of"),
        ({}, "needs CLIP_POD_BASE_URL, EMBEDDING_HMAC_SECRET"),
        ({"CLIP_POD_BASE_URL": "pod:8000"}, "must start with http:// or https://"),
        (POD_ENV | {"CLIP_POD_TIMEOUT_S": "soon"}, "CLIP_POD_TIMEOUT_S='soon' is not a number"),
        (POD_ENV | {"CLIP_POD_TIMEOUT_S": "0"}, "CLIP_POD_TIMEOUT_S must be greater than 0"),
        (POD_ENV | {"EMBEDDING_HMAC_SECRET": " , "}, "needs EMBEDDING_HMAC_SECRET"),
        ({"CLIP_INFERENCE_BACKEND": "runpod_serverless"}, "needs RUNPOD_ENDPOINT_URL, RUNPOD_API_KEY"),
    ],
)
def test_config_errors_say_what_to_set(env, values, message):
    env(values)
    with pytest.raises(ClipConfigError, match=message.replace("(", r"\(")):
        make_clip_client()


def test_config_timeout_from_environment(env):
    env(POD_ENV | {"CLIP_POD_TIMEOUT_S": "2.5"})
    assert ClientConfig.from_env().pod_timeout_s == 2.5


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("health", ()),
        ("embed_text", ("a cat",)),
        ("embed_texts", (["a cat", "a dog"],)),
        ("embed_image_bytes", (b"\xff\xd8\xff\xe0",)),
        ("embed_image_file", ("cat.jpg",)),
    ],
)
async def test_serverless_client_pod_only_methods_name_the_pod_backend(method, args):
    client = RunPodServerlessClipClient("http://127.0.0.1:9", "key", "s")
    with pytest.raises(ClipNotSupportedError) as caught:
        await getattr(client, method)(*args)
    await client.aclose()
    assert caught.value.code == "not_supported"
    assert caught.value.message == (
        f"{method}() needs the pod backend (CLIP_INFERENCE_BACKEND=runpod_pod): the runpod_serverless "
        "backend (the legacy handler) embeds images by URL only"
    )


async def test_serverless_client_batches_are_one_image_per_job():
    client = RunPodServerlessClipClient("http://127.0.0.1:9", "key", "s")
    assert await client.max_batch_size() == 1
    await client.aclose()
