"""The endpoint's decisions, sharing, single-flight, metrics and logs, over real HTTP."""

from __future__ import annotations

import http.client
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from endpoint.ep_helpers import EndpointDaemon
from testlib import run_cli, sample_names, wait_until

STORAGE = "https://storage.azure.com"


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        ({"header": None}, 401, "X-IDENTITY-HEADER is missing"),
        ({"header": "wrong"}, 401, "X-IDENTITY-HEADER is wrong"),
        (
            {"resource": "https://evil.example.com"},
            403,
            "resource https://evil.example.com is not in entra-tokend's [endpoint] allow list",
        ),
        ({"api_version": "2018-02-01"}, 400, "api-version must be 2019-08-01"),
        ({"resource": None}, 400, "resource is required"),
        ({"client_id": "00000000-0000-0000-0000-000000000000"}, 400, "client_id names no"),
        ({"mi_res_id": "/subscriptions/x"}, 400, "mi_res_id names no identity"),
    ],
)
def test_denied_requests(
    ep: EndpointDaemon, kwargs: dict[str, str | None], status: int, reason: str
) -> None:
    resource = kwargs.pop("resource", STORAGE)
    got_status, body = ep.get(resource, **kwargs)  # type: ignore[arg-type]
    assert got_status == status
    assert body["statusCode"] == status  # the shape MSAL reads (statusCode, message)
    assert body["message"].startswith(reason)
    assert "access_token" not in body
    event = ep.daemon.wait_event("endpoint request denied", status=status)
    assert event["peer"].startswith("127.0.0.1:")


def test_client_id_of_an_identity_not_granted_the_resource_is_forbidden(
    ep: EndpointDaemon,
) -> None:
    status, _ = ep.get(STORAGE, client_id=ep.other_client_id)  # storage is granted to default
    assert status == 403


# A trailing slash is another audience (issue 23 §1): tests/endpoint/test_endpoint_protocols.py.
@pytest.mark.parametrize("form", [STORAGE, STORAGE + "/.default", " " + STORAGE])
def test_resource_forms_are_one_token(ep: EndpointDaemon, form: str) -> None:
    _, reference = ep.get(STORAGE)
    status, body = ep.get(form)
    assert status == 200
    assert body["access_token"] == reference["access_token"]
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert isinstance(body["expires_on"], str)
    assert body["expires_on"].isdigit()
    assert body["token_type"] == "Bearer"
    assert body["client_id"] == ep.emulator.client_id


def test_a_file_token_is_shared_not_requested_again(ep: EndpointDaemon) -> None:
    before = len(ep.emulator.token_requests())
    status, body = ep.get("https://graph.microsoft.com")
    assert status == 200
    assert body["access_token"] == (ep.out / "graph").read_text().strip()
    assert len(ep.emulator.token_requests()) == before


def test_hundred_concurrent_first_requests_make_one_entra_request(ep: EndpointDaemon) -> None:
    management = "https://management.azure.com/.default"

    def management_requests() -> int:
        return sum(1 for r in ep.emulator.token_requests() if r.form.get("scope") == management)

    assert management_requests() == 0
    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(lambda _: ep.get("https://management.azure.com"), range(100)))
    assert {status for status, _ in results} == {200}
    assert len({body["access_token"] for _, body in results}) == 1
    assert management_requests() == 1


def test_metrics_count_requests_by_result_and_allowed_resource(ep: EndpointDaemon) -> None:
    ep.get(STORAGE)
    ep.get(STORAGE, header="wrong")
    ep.get("https://not-allowed.example.com")

    def page() -> str:
        conn = http.client.HTTPConnection("127.0.0.1", ep.metrics_port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return text

    text = page()

    def value(result: str, resource: str) -> float:
        pattern = (
            r'entra_tokend_endpoint_requests_total\{resource="'
            + re.escape(resource)
            + r'",result="'
            + result
            + r'"\} ([0-9.e+]+)'
        )
        match = re.search(pattern, text)
        assert match, (result, resource)
        return float(match.group(1))

    assert value("ok", STORAGE) >= 1
    assert value("forbidden", "other") >= 1
    assert value("unauthorized", "other") >= 1
    assert "not-allowed.example.com" not in text
    assert "entra_tokend_endpoint_request_duration_seconds_bucket" in text


def test_no_secret_or_token_in_the_log(ep: EndpointDaemon) -> None:
    _, body = ep.get(STORAGE)
    ep.get(STORAGE, header=ep.secret + "x")
    wait_until(lambda: ep.daemon.count("endpoint request denied") > 0)
    log = ep.daemon.log_text()
    assert ep.secret not in log
    assert body["access_token"] not in log
    for token in ep.emulator.issued_tokens:
        assert token not in log


def _config(tmp_path: Path, endpoint: str) -> list[str]:
    path = tmp_path / "c.toml"
    path.write_text(f'output_dir = "{tmp_path / "out"}"\n[endpoint]\n{endpoint}\n')
    return ["check-config", "--offline", "--config", str(path)]


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        (
            'listen = "0.0.0.0:8081"\nsecret_env = "S"',
            "endpoint.listen: '0.0.0.0:8081' is not a loopback",
        ),
        (
            'listen = "10.0.0.1:8081"\nsecret_env = "S"',
            "endpoint.listen: '10.0.0.1:8081' is not a loopback",
        ),
        (
            'listen = "localhost:8081"\nsecret_env = "S"',
            "endpoint.listen: 'localhost:8081' is not a loopback",
        ),
        ('listen = "127.0.0.1:8081"', "endpoint: set exactly one of secret_file"),
        (
            'secret_env = "UNSET_VARIABLE"',
            "endpoint.secret_env: environment variable UNSET_VARIABLE",
        ),
        (
            'secret = "hunter2"\nsecret_env = "S"',
            "endpoint.secret: never put the secret in the TOML",
        ),
        ('secret_file = "missing"', "endpoint.secret_file: cannot read"),
        (
            'secret_env = "S"\nallow = [{resource = "https://x.example", identity = "nope"}]',
            "endpoint.allow.identity: 'nope' is not defined",
        ),
        (
            'secret_env = "S"\nallow = ["not a url"]',
            "endpoint.allow[0]: 'not a url' is not a resource",
        ),
        (
            'secret_env = "S"\nallow = ["https://storage.azure.com"]',
            "endpoint.secret_env: the secret has 12 characters; use at least 16",
        ),
    ],
)
def test_bad_endpoint_config_is_exit_2_naming_the_key(
    tmp_path: Path,
    endpoint: str,
    problem: str,
) -> None:
    env = {
        "S": "s3cr3t-value",
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "sa"),
    }
    # Not --offline: that leaves an unset secret_env variable to the pod and never reads
    # secret_file; check-config without it reports both (with every other problem).
    args = [arg for arg in _config(tmp_path, endpoint) if arg != "--offline"]
    result = run_cli(*args, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert problem in result.stderr
    assert "s3cr3t-value" not in result.stdout + result.stderr
    assert "hunter2" not in result.stderr


def test_good_endpoint_config_prints_no_secret(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cr3t-value-long-enough\n")
    env = {
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "sa"),
    }
    endpoint = f'listen = "[::1]:8081"\nsecret_file = "{secret_file}"\nallow = ["https://storage.azure.com/"]'
    result = run_cli(*_config(tmp_path, endpoint), env=env)
    assert result.returncode == 0, result.stderr
    assert "s3cr3t-value" not in result.stdout + result.stderr
    assert 'resource = "https://storage.azure.com"' in result.stdout


def test_the_shipped_alerts_and_dashboard_query_the_endpoint_series_it_serves(
    ep: EndpointDaemon,
) -> None:
    from observability.obs_helpers import queried_metric_names

    ep.get(STORAGE)
    conn = http.client.HTTPConnection("127.0.0.1", ep.metrics_port, timeout=30)
    conn.request("GET", "/metrics")
    scrape = conn.getresponse().read().decode()
    conn.close()
    queried = {name for name in queried_metric_names() if "_endpoint_" in name}
    assert queried == {
        "entra_tokend_endpoint_requests_total",
        "entra_tokend_endpoint_request_duration_seconds_bucket",
    }
    assert queried <= sample_names(scrape)
