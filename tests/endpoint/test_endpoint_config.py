"""The endpoint's configuration keys of issue 23: ``allow`` entries are absolute URIs (or
``api://…``), ``imds`` is a boolean, identities declare ``object_id``/``resource_id`` — each
mistake is exit 2 with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import run_cli

RID = (
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/app"
)
OID = "00000000-0000-0000-0000-0000000000aa"


def _check(tmp_path: Path, body: str) -> tuple[int, str, str]:
    path = tmp_path / "c.toml"
    path.write_text(f'output_dir = "{tmp_path / "out"}"\n{body}\n')
    env = {
        "S": "s3cr3t-value-long-enough",
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "sa"),
    }
    result = run_cli("check-config", "--offline", "--config", str(path), env=env)
    return result.returncode, result.stdout, result.stderr


ENDPOINT = '[endpoint]\nsecret_env = "S"\n'


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (ENDPOINT + 'allow = ["storage.azure.com"]', "endpoint.allow[0]: 'storage.azure.com'"),
        (ENDPOINT + 'allow = ["https://"]', "endpoint.allow[0]: 'https://' is not a resource"),
        (ENDPOINT + 'allow = ["api://"]', "endpoint.allow[0]: 'api://' is not a resource"),
        (ENDPOINT + 'allow = ["https://a.example/%zz"]', "endpoint.allow[0]"),
        (
            ENDPOINT + 'allow = ["https://a.example//b"]',
            "endpoint.allow[0]: 'https://a.example//b' has",
        ),
        (ENDPOINT + "imds = 1", "endpoint.imds: must be true or false"),
        (
            '[identity.default]\nobject_id = "not-a-guid"\n' + ENDPOINT,
            "identity.default.object_id: must be a GUID",
        ),
        (
            '[identity.default]\nresource_id = "app"\n' + ENDPOINT,
            "identity.default.resource_id: must be an ARM id",
        ),
        (
            f'[identity.default]\nobject_id = "{OID}"\n'
            f'[identity.b]\ntenant_id = "t"\nclient_id = "d"\ntoken_file = "/x"\n'
            f'object_id = "{OID.upper()}"\n' + ENDPOINT,
            "identity.default.object_id: identity.b has the same object_id",
        ),
        (
            '[identity.a]\ntenant_id = "t"\nclient_id = "AbC"\ntoken_file = "/x"\n'
            '[identity.b]\ntenant_id = "t2"\nclient_id = "abc"\ntoken_file = "/y"\n' + ENDPOINT,
            "identity.b.client_id: identity.a has the same client_id",
        ),
        (
            '[identity.b]\ntenant_id = "t"\nclient_id = "C"\ntoken_file = "/x"\n'
            + ENDPOINT
            + 'allow = ["https://storage.azure.com"]',
            "identity.default.client_id: identity.b has the same client_id",
        ),
    ],
)
def test_bad_endpoint_keys_are_exit_2_naming_the_key(
    tmp_path: Path, body: str, problem: str
) -> None:
    code, _, err = _check(tmp_path, body)
    assert code == 2, err
    assert problem in err


def test_good_endpoint_keys_are_printed(tmp_path: Path) -> None:
    body = (
        f'[identity.default]\nobject_id = "{OID}"\nresource_id = "{RID}"\n'
        + ENDPOINT
        + 'imds = true\nallow = ["https://management.core.windows.net/", "api://my-app"]'
    )
    code, out, err = _check(tmp_path, body)
    assert code == 0, err
    assert f'object_id = "{OID}"' in out
    assert f'resource_id = "{RID}"' in out
    assert "imds = true" in out
    assert 'resource = "api://my-app"' in out


def test_a_shared_client_id_is_accepted_without_an_endpoint(tmp_path: Path) -> None:
    # Nothing selects by client_id then: one app in two tenants is two identities.
    body = (
        '[identity.b]\ntenant_id = "t2"\nclient_id = "c"\ntoken_file = "/x"\n'
        '[token.x]\nscope = "https://storage.azure.com/.default"\nidentity = "b"\n'
        '[token.y]\nscope = "https://storage.azure.com/.default"\npath = "y"\n'
    )
    code, _, err = _check(tmp_path, body)
    assert code == 0, err
