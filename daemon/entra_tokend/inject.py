"""Sidecar injection: a pod template and its ``entra-tokend.io/*`` annotations → the injected pod
template. One pure function, ``inject_template``, used by ``entra-tokend inject`` (YAML files) and
``entra-tokend webhook`` (admission reviews); it imports none of the daemon's code (only
``injectcheck``, the checks of its untrusted input).

A template is the parsed JSON shape of a Pod's ``{"metadata": ..., "spec": ...}`` (a Pod itself, or
a workload's ``spec.template``). ``inject_template`` never modifies its argument; it returns a new
dict. Injecting an injected template returns it unchanged (the ``entra-tokend.io/injected``
annotation holds a digest of the settings it was injected with). Every mistake is collected and
raised together as ``InjectError``, one line per problem naming the annotation to fix.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from entra_tokend import __version__
from entra_tokend.injectcheck import WI_SKIP, check_bounds, check_shape
from entra_tokend.injectcheck import InjectError as InjectError  # noqa: PLC0414 - re-exported

DEFAULT_IMAGE = f"registry.example.com/entra-tokend:{__version__}"  # as config/kubernetes/
PREFIX = "entra-tokend.io/"
INJECT = PREFIX + "inject"
INJECTED = PREFIX + "injected"  # written by injection: a digest of the settings
ENDPOINT_CONFIG = PREFIX + "endpoint-config"  # written: the generated [endpoint] TOML
WI_USE = "azure.workload.identity/use"

SIDECAR = "entra-tokend"
TOKENS_VOLUME = "entra-tokend-tokens"
CONFIG_VOLUME = "entra-tokend-config"
CONFIG_DIR = "/etc/entra-tokend"
CONFIG_FILE = "entra-tokend.toml"  # the key read from an entra-tokend.io/config ConfigMap
METRICS_PORT = 9464
ENDPOINT_LISTEN = "127.0.0.1:8081"
ENDPOINT_URL = f"http://{ENDPOINT_LISTEN}/msi/token"
SECRET_KEY = "identity-header"  # noqa: S105 - a key name, not a secret; the key read from an entra-tokend.io/endpoint-secret Secret
RUN_AS = 65532  # the image's non-root user and group

# Every annotation read, with its default as the README documents it.
ANNOTATIONS: dict[str, str] = {
    "inject": 'absent: the pod is left alone; "true" injects, "false" opts out',
    "token.NAME": "none; SCOPE of a token written to MOUNT_PATH/NAME (one per token)",
    "config": f"none; a ConfigMap whose key {CONFIG_FILE} is the full TOML configuration",
    "endpoint": f'"false"; "true" serves {ENDPOINT_URL} to the app containers',
    "endpoint-allow": "the resources of the token.NAME scopes; comma-separated resources",
    "endpoint-secret": f"none: the pod's UID; a Secret whose key {SECRET_KEY} is the header",
    "containers": "every container in spec.containers; comma-separated names (init ones too)",
    "mode": '"sidecar" (native sidecar, Kubernetes 1.29+); "init" (run --once, exits)',
    "image": "the --image of inject/webhook",
    "mount-path": '"/run/entra-tokend"; where the token volume is mounted in every container',
    "share-process-namespace": '"false"; "true" sets spec.shareProcessNamespace (signal hooks)',
}
_WRITTEN = {"injected", "endpoint-config"}

_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # the daemon's token names
_DNS_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_PLAIN = re.compile(r"^[!#-\[\]-~]+$")  # printable ASCII without space, quote or backslash
_PATH = re.compile(r"^(/[A-Za-z0-9._-]+)+$")


@dataclass(frozen=True)
class Settings:
    """What the annotations ask for, validated. Paths are absolute, names as Kubernetes has them."""

    tokens: tuple[tuple[str, str], ...]  # (NAME, SCOPE), sorted by NAME
    config: str | None
    endpoint: bool
    endpoint_allow: tuple[str, ...]
    endpoint_secret: str | None
    containers: tuple[str, ...] | None  # None: every container in spec.containers
    mode: str
    image: str
    mount_path: str
    share_process_namespace: bool

    def digest(self) -> str:
        """16 hex digits identifying these settings (the ``entra-tokend.io/injected`` value)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def requested(template: Mapping[str, Any]) -> bool:
    """Whether the template asks for injection (``entra-tokend.io/inject`` set, not "false").
    False for metadata or annotations that are no mapping (nothing can be read from them)."""
    value = _annotations(template).get(INJECT)
    return value is not None and value != "false"


def _annotations(template: Mapping[str, Any]) -> dict[str, str]:
    meta = template.get("metadata")
    ann = meta.get("annotations") if isinstance(meta, dict) else None
    return {str(k): v for k, v in ann.items()} if isinstance(ann, dict) else {}


def _child(parent: dict[str, Any], key: str) -> dict[str, Any]:
    """``parent[key]``, a new empty mapping when absent or null."""
    if parent.get(key) is None:
        parent[key] = {}
    child: dict[str, Any] = parent[key]
    return child


def _flag(annotations: Mapping[str, str], name: str, problems: list[str]) -> bool:
    value = annotations.get(PREFIX + name, "false")
    if value not in ("true", "false"):
        problems.append(f'{PREFIX}{name}: must be "true" or "false" (got {value!r})')
    return value == "true"


def _names(value: str, key: str, problems: list[str]) -> tuple[str, ...]:
    items = [item.strip() for item in value.split(",")]
    if not all(items) or len(set(items)) != len(items):
        problems.append(f"{key}: must be a comma-separated list of distinct names (got {value!r})")
    return tuple(i for i in items if i)


def _tokens(annotations: Mapping[str, str], problems: list[str]) -> tuple[tuple[str, str], ...]:
    tokens = []
    for key, scope in annotations.items():
        if not key.startswith(PREFIX + "token."):
            continue
        name = key.removeprefix(PREFIX + "token.")
        if not _TOKEN_NAME.match(name):
            problems.append(f"{key}: NAME must be letters, digits, '.', '_' or '-' (a file name)")
        elif not _PLAIN.match(scope):
            problems.append(f"{key}: must be one scope, e.g. https://storage.azure.com/.default")
        else:
            tokens.append((name, scope))
    return tuple(sorted(tokens))


def _unknown(annotations: Mapping[str, str], problems: list[str]) -> None:
    for key in annotations:
        name = key.removeprefix(PREFIX)
        ours = key.startswith(PREFIX) and not name.startswith("token.")
        if ours and name not in ANNOTATIONS and name not in _WRITTEN:
            known = ", ".join(n for n in ANNOTATIONS if n != "token.NAME")
            problems.append(f"{key}: unknown annotation (known: token.NAME, {known})")


def _choice(
    annotations: Mapping[str, str],
    name: str,
    pattern: re.Pattern[str],
    what: str,
    problems: list[str],
) -> str | None:
    value = annotations.get(PREFIX + name)
    if value is not None and not pattern.match(value):
        problems.append(f"{PREFIX}{name}: must be {what} (got {value!r})")
        return None
    return value


def parse_settings(template: Mapping[str, Any], default_image: str) -> Settings:
    """Read and validate the annotations of ``template`` against its containers.

    Raises InjectError listing every problem (malformed values, unknown annotations, names of
    containers the pod does not have, nothing to fetch, a pod without the workload identity label).
    """
    ann, problems = _annotations(template), []
    for key, value in list(ann.items()):
        if key.startswith(PREFIX) and not isinstance(value, str):
            # YAML reads an unquoted true or 5 as a boolean or number; Kubernetes wants text.
            problems.append(f'{key}: must be a string; quote it in YAML ("{value}")')
            del ann[key]
    if ann.get(INJECT) not in ("true", "false", None):
        problems.append(f'{INJECT}: must be "true" or "false" (got {ann[INJECT]!r})')
    _unknown(ann, problems)
    labels = (template.get("metadata") or {}).get("labels") or {}
    if labels.get(WI_USE) != "true":
        problems.append(
            f'{INJECT}: the pod needs the label {WI_USE}: "true" (the workload '
            "identity webhook then mounts the federated token entra-tokend exchanges)"
        )
    spec = template.get("spec") or {}
    # Init containers may be named too (e.g. a migration that needs a token): they start after
    # the native sidecar's startupProbe passed, or after the init-mode container exited.
    present = [c.get("name") for c in [*_init(spec), *(spec.get("containers") or [])]]
    # Not the list of every container: another webhook (the azure-workload-identity proxy) may
    # add one before a reinvocation, and the digest must not change with it.
    containers = None
    if PREFIX + "containers" in ann:
        containers = _names(ann[PREFIX + "containers"], PREFIX + "containers", problems)
        for name in sorted(set(containers) - set(present)):
            problems.append(
                f"{PREFIX}containers: the pod has no container {name!r} "
                f"(it has {', '.join(map(str, present))})"
            )
    tokens = _tokens(ann, problems)
    config = _choice(ann, "config", _DNS_SUBDOMAIN, "the name of a ConfigMap", problems)
    secret = _choice(ann, "endpoint-secret", _DNS_SUBDOMAIN, "the name of a Secret", problems)
    image = _choice(ann, "image", _PLAIN, "an image reference", problems) or default_image
    mount_path = _choice(ann, "mount-path", _PATH, "an absolute path", problems)
    if mount_path is not None and ".." in mount_path.split("/"):
        problems.append(f"{PREFIX}mount-path: must not contain '..' (got {mount_path!r})")
    mode = ann.get(PREFIX + "mode", "sidecar")
    if mode not in ("sidecar", "init"):
        problems.append(f'{PREFIX}mode: must be "sidecar" or "init" (got {mode!r})')
    endpoint = _flag(ann, "endpoint", problems)
    allow: tuple[str, ...] = tuple(sorted({s.removesuffix("/.default") for _, s in tokens}))
    if PREFIX + "endpoint-allow" in ann:
        allow = _names(ann[PREFIX + "endpoint-allow"], PREFIX + "endpoint-allow", problems)
        if not all(_PLAIN.match(a) for a in allow):
            problems.append(f"{PREFIX}endpoint-allow: resources are URLs without spaces or quotes")
    if endpoint and mode == "init":
        problems.append(f'{PREFIX}endpoint: needs mode "sidecar" (an init container exits)')
    if endpoint and not allow and config is None:
        problems.append(
            f"{PREFIX}endpoint: no resource to serve: add {PREFIX}endpoint-allow "
            f"or a {PREFIX}token.NAME annotation"
        )
    if not tokens and config is None and not endpoint:
        problems.append(
            f"{INJECT}: nothing to fetch: add {PREFIX}token.NAME: SCOPE "
            f"or {PREFIX}config: CONFIGMAP"
        )
    settings = Settings(
        tokens=tokens,
        config=config,
        endpoint=endpoint,
        endpoint_allow=allow,
        endpoint_secret=secret,
        containers=containers,
        mode=mode,
        image=image,
        mount_path=mount_path or "/run/entra-tokend",
        share_process_namespace=_flag(ann, "share-process-namespace", problems),
    )
    if problems:
        raise InjectError(problems)
    return settings


def inject_template(template: Mapping[str, Any], default_image: str) -> dict[str, Any]:
    """The injected copy of ``template``, or an unchanged copy when it asks for no injection or
    was injected with the same settings already. Raises InjectError (see ``parse_settings``, and
    names the pod's existing containers, volumes, mounts or variables that would clash, fields of
    the wrong type (``check_shape``), a template too large (``check_bounds``))."""
    if not requested(template):
        return copy.deepcopy(dict(template))
    check_bounds(template, INJECT)  # before any copy or recursion
    check_shape(template)
    out = copy.deepcopy(dict(template))
    settings = parse_settings(template, default_image)
    ann = _annotations(template)
    if INJECTED in ann:
        if ann[INJECTED] == settings.digest():
            return out
        raise InjectError(
            [
                f"{INJECTED}: the pod was injected with other annotations; inject the "
                "manifest without the entra-tokend sidecar (the source) instead"
            ]
        )
    _check_clashes(out, settings)
    annotations = _child(_child(out, "metadata"), "annotations")
    annotations[INJECTED] = settings.digest()
    spec = _child(out, "spec")
    if settings.endpoint and settings.config is None:
        annotations[ENDPOINT_CONFIG] = _endpoint_toml(settings)
    if settings.endpoint:
        skip = [s.strip() for s in annotations.get(WI_SKIP, "").split(";") if s.strip()]
        skip += [c for c in _apps(out, settings) if c not in skip]
        annotations[WI_SKIP] = ";".join(skip)
    if settings.share_process_namespace:
        spec["shareProcessNamespace"] = True
    security = _child(spec, "securityContext")
    # Token files are 0640: the app reads them through the group kubelet gives the volume.
    security.setdefault("fsGroup", RUN_AS)
    for container in [*_init(spec), *(spec.get("containers") or [])]:
        if container.get("name") in _apps(out, settings):
            _wire_app(container, settings)
    spec["initContainers"] = [_sidecar(settings), *_init(spec)]
    spec["volumes"] = [*(spec.get("volumes") or []), *_volumes(settings)]
    return out


def _check_clashes(template: Mapping[str, Any], s: Settings) -> None:
    spec = template.get("spec") or {}
    problems = []
    everything = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    if any(c.get("name") == SIDECAR for c in everything):
        problems.append(f"{INJECT}: the pod already has a container {SIDECAR!r} (hand-written?)")
    for volume in spec.get("volumes") or []:
        if volume.get("name") in (TOKENS_VOLUME, CONFIG_VOLUME):
            problems.append(f"{INJECT}: the pod already has a volume {volume['name']!r}")
    skip = _annotations(template).get(WI_SKIP, "")
    if SIDECAR in [s.strip() for s in skip.split(";")]:
        problems.append(f"{WI_SKIP}: lists {SIDECAR}, which then gets no federated token")
    for c in [*_init(spec), *(spec.get("containers") or [])]:
        if c.get("name") not in _apps(template, s):
            continue
        if any(m.get("mountPath") == s.mount_path for m in c.get("volumeMounts") or []):
            problems.append(
                f"{PREFIX}mount-path: container {c['name']!r} already mounts {s.mount_path}"
            )
        taken = {str(e.get("name")) for e in c.get("env") or []} & {
            "IDENTITY_ENDPOINT",
            "IDENTITY_HEADER",
        }
        if s.endpoint and taken:
            problems.append(
                f"{PREFIX}endpoint: container {c['name']!r} already sets {', '.join(sorted(taken))}"
            )
    if problems:
        raise InjectError(problems)


def _init(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers") or [])


def _apps(template: Mapping[str, Any], s: Settings) -> tuple[str, ...]:
    """The names of the app containers that get the volume and the variables."""
    if s.containers is not None:
        return s.containers
    return tuple(c.get("name") for c in (template.get("spec") or {}).get("containers") or [])


def _endpoint_toml(s: Settings) -> str:
    # json.dumps quotes a _PLAIN string exactly as a TOML basic string.
    allow = ", ".join(json.dumps(a) for a in s.endpoint_allow)
    return (
        "# Generated by entra-tokend inject from the entra-tokend.io/endpoint* annotations.\n"
        f'[endpoint]\nlisten = "{ENDPOINT_LISTEN}"\nsecret_env = "IDENTITY_HEADER"\n'
        f"allow = [{allow}]\n"
    )


def _header_source(s: Settings) -> dict[str, Any]:
    if s.endpoint_secret is not None:
        return {"secretKeyRef": {"name": s.endpoint_secret, "key": SECRET_KEY}}
    # Made by the API server per pod, never in a manifest, unguessable from outside the pod.
    return {"fieldRef": {"fieldPath": "metadata.uid"}}


def _sidecar(s: Settings) -> dict[str, Any]:
    args = ["run", "--once"] if s.mode == "init" else ["run"]
    if s.config is not None or s.endpoint:
        args += ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}"]
    args += ["--output-dir", s.mount_path]
    args += ["--listen", ""] if s.mode == "init" else ["--listen", f"[::]:{METRICS_PORT}"]
    for name, scope in s.tokens:
        args += ["--token", f"{name}={scope}"]
    mounts: list[dict[str, Any]] = [{"name": TOKENS_VOLUME, "mountPath": s.mount_path}]
    if s.config is not None or s.endpoint:
        mounts.append({"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True})
    container: dict[str, Any] = {"name": SIDECAR, "image": s.image, "args": args}
    if s.endpoint:
        container["env"] = [{"name": "IDENTITY_HEADER", "valueFrom": _header_source(s)}]
    if s.mode == "sidecar":
        probe = {"path": "/readyz", "port": "metrics"}
        container |= {
            "restartPolicy": "Always",
            "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
            # Holds the app containers back until every token is on disk (2 minutes at most).
            "startupProbe": {"httpGet": probe, "periodSeconds": 2, "failureThreshold": 60},
            "readinessProbe": {"httpGet": probe, "periodSeconds": 10},
            "livenessProbe": {
                "httpGet": {"path": "/healthz", "port": "metrics"},
                "periodSeconds": 20,
                "failureThreshold": 3,
            },
        }
    container["resources"] = {
        "requests": {"cpu": "10m", "memory": "48Mi"},
        "limits": {"memory": "128Mi"},
    }
    container["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container["volumeMounts"] = mounts
    return container


def _wire_app(container: dict[str, Any], s: Settings) -> None:
    if s.tokens or s.config is not None:
        mount = {"name": TOKENS_VOLUME, "mountPath": s.mount_path, "readOnly": True}
        container["volumeMounts"] = [*(container.get("volumeMounts") or []), mount]
    if s.endpoint:
        container["env"] = [
            *(container.get("env") or []),
            {"name": "IDENTITY_ENDPOINT", "value": ENDPOINT_URL},
            {"name": "IDENTITY_HEADER", "valueFrom": _header_source(s)},
        ]


def _volumes(s: Settings) -> list[dict[str, Any]]:
    # In memory: tokens never reach the node's disk. Small: a token is a few KiB.
    volumes: list[dict[str, Any]] = [
        {"name": TOKENS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    ]
    if s.config is not None:
        volumes.append({"name": CONFIG_VOLUME, "configMap": {"name": s.config}})
    elif s.endpoint:
        path = f"metadata.annotations['{ENDPOINT_CONFIG}']"
        item = {"path": CONFIG_FILE, "fieldRef": {"fieldPath": path}}
        volumes.append({"name": CONFIG_VOLUME, "downwardAPI": {"items": [item]}})
    return volumes
