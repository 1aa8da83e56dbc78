"""Checks of a pod template before injection reads it: the JSON types of the fields it reads,
and its size. Imports nothing; ``inject`` raises what these raise.

Inputs are untrusted (an admission review's pod, a YAML file): a wrong type must become a named
problem, never an AttributeError deep in ``inject``, and an oversized or aliased input must be
refused before anything copies or recurses over it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

WI_SKIP = "azure.workload.identity/skip-containers"


class InjectError(ValueError):
    """The annotations cannot be applied. ``problems``: one line each, naming the annotation."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# A template larger than this is refused before it is copied: a real pod, even with its
# managedFields, has a few thousand JSON values at most and nests about 15 levels deep; a body
# of one million empty objects or a YAML alias bomb would otherwise cost gigabytes.
MAX_VALUES = 50_000
MAX_DEPTH = 64


def check_bounds(value: Any, key: str) -> None:
    """Raise InjectError when ``value`` (parsed JSON/YAML) holds more than ``MAX_VALUES`` values
    or nests deeper than ``MAX_DEPTH``, naming ``key`` (the annotation that asked). Iterative, stops
    at the bound: a shared (aliased) value counts each time it is reached, so aliases cannot
    hide an expansion."""
    stack, count = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            what = f"over {MAX_VALUES} values" if count > MAX_VALUES else f"over {MAX_DEPTH} levels"
            raise InjectError([f"{key}: the pod is too large to inject ({what})"])
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        stack.extend((child, depth + 1) for child in children)


def check_shape(template: Mapping[str, Any]) -> None:
    """Raise InjectError naming every field injection reads that has the wrong JSON type
    (null counts as absent): metadata, annotations, labels, spec, its securityContext, the
    containers, init containers and volumes (mappings with a string name), their env and
    volumeMounts (lists of mappings), the skip-containers annotation (a string)."""
    problems: list[str] = []

    def want(value: Any, kind: type, where: str) -> Any:
        if value is None or isinstance(value, kind):
            return kind() if value is None else value
        noun = "a mapping" if kind is dict else "a list"
        problems.append(f"{where}: must be {noun} (got {type(value).__name__})")
        return kind()

    meta = want(template.get("metadata"), dict, "metadata")
    want(meta.get("labels"), dict, "metadata.labels")
    if not isinstance(
        want(meta.get("annotations"), dict, "metadata.annotations").get(WI_SKIP, ""), str
    ):
        problems.append(f"{WI_SKIP}: must be a string; quote it in YAML")
    spec = want(template.get("spec"), dict, "spec")
    want(spec.get("securityContext"), dict, "spec.securityContext")
    for group in ("initContainers", "containers", "volumes"):
        for i, item in enumerate(want(spec.get(group), list, f"spec.{group}")):
            where = f"spec.{group}[{i}]"
            if not isinstance(item, dict):  # an item of a list: null is no container either
                problems.append(f"{where}: must be a mapping (got {type(item).__name__})")
                continue
            if not isinstance(item.get("name"), str):
                problems.append(f"{where}.name: must be a string")
            for field in ("env", "volumeMounts") if group != "volumes" else ():
                for j, entry in enumerate(want(item.get(field), list, f"{where}.{field}")):
                    if not isinstance(entry, dict):
                        kind = type(entry).__name__
                        problems.append(f"{where}.{field}[{j}]: must be a mapping (got {kind})")
    if problems:
        raise InjectError(problems)
