from tests.support.api import call


def test_health_reports_model_when_ready(service):
    status, body, _ = call(service.base, "/health")
    assert status == 200
    assert body["status"] == "ok" and body["model"] == "clip-tiny" and body["dim"] == 64
