"""`GET /`: the links a newcomer opening the service's address follows, each of which answers."""

from __future__ import annotations

import urllib.request

from tests.support.api import call


def test_index_links_docs_openapi_probes_and_metrics(service):
    status, body, headers = call(service.base, "/")
    assert (status, headers["content-type"]) == (200, "application/json")
    assert body == {
        "service": "CLIP embedding service",
        "version": "1.0.0",
        "links": {
            "docs": "/docs",
            "openapi": "/openapi.json",
            "health": "/health",
            "live": "/live",
            "metrics": "/metrics",
        },
    }


def test_index_every_link_answers_200(service):
    _, body, _ = call(service.base, "/")
    answers = {}
    for name, path in body["links"].items():
        with urllib.request.urlopen(service.base + path, timeout=10) as resp:
            answers[name] = (resp.status, resp.headers["Content-Type"].split(";")[0])
    assert answers == {
        "docs": (200, "text/html"),
        "openapi": (200, "application/json"),
        "health": (200, "application/json"),
        "live": (200, "application/json"),
        "metrics": (200, "text/plain"),
    }
