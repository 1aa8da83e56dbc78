"""Query-string rules every protocol applies before its own: one value per parameter, names
and values well formed, selector names exactly the protocol's, at most one selector."""

from __future__ import annotations

from collections.abc import Mapping

from entra_tokend.endpoint.core import (
    SELECTOR_SPELLINGS,
    Ask,
    Kind,
    Refusal,
    Selector,
    SelectorKind,
)
from entra_tokend.httpserver import Request


def _printable(text: str) -> bool:
    return text.isascii() and text.isprintable()


def parse_query(
    request: Request, selectors: Mapping[str, SelectorKind]
) -> tuple[dict[str, str], Selector | None] | Refusal:
    """(parameters, the selector or None) of ``request``, or a ``Refusal`` (BAD_REQUEST) that
    names the offending parameter.

    ``selectors`` maps this protocol's selector parameter names (exact, case-sensitive) to what
    they select by. Refused: an empty or non-printable parameter name, a value that was not
    valid UTF-8 once percent-decoded, a parameter given twice, a name that is some protocol's
    selector in another spelling (``Object_Id``, ``clientid`` where ``client_id`` is meant),
    two selectors at once, an empty selector value.
    """
    params: dict[str, str] = {}
    for name, value in request.query_pairs:
        if not name or not _printable(name) or "\ufffd" in value:
            return Refusal(Kind.BAD_REQUEST, "malformed query string", {"problem": "query"})
        if name in params:
            return Refusal(
                Kind.BAD_REQUEST, f"parameter {name} is given twice", {"parameter": name}
            )
        params[name] = value
    for name in params:
        if name.lower() in SELECTOR_SPELLINGS and name not in selectors:
            spelled = ", ".join(sorted(selectors))
            return Refusal(
                Kind.BAD_REQUEST,
                f"{name} is not an identity selector of this protocol (use one of {spelled})",
                {"parameter": name},
            )
    given = [name for name in params if name in selectors]
    if len(given) > 1:
        return Refusal(
            Kind.BAD_REQUEST,
            f"give one identity selector, not {' and '.join(given)}",
            {"parameter": ",".join(given)},
        )
    if not given:
        return params, None
    name = given[0]
    value = params[name].strip()
    if not value or not _printable(value):
        return Refusal(Kind.BAD_REQUEST, f"{name} is empty or malformed", {"parameter": name})
    return params, Selector(name, selectors[name], value)


def resource_param(params: Mapping[str, str]) -> str | Refusal:
    """The ``resource`` parameter, blanks removed, or the refusal for a missing one."""
    value = params.get("resource", "").strip()
    if not value:
        return Refusal(Kind.BAD_REQUEST, "resource is required", {"parameter": "resource"})
    return value


def parse_ask(request: Request, selectors: Mapping[str, SelectorKind]) -> Ask | Refusal:
    """The query's resource and selector (``parse_query`` then ``resource_param``): what every
    protocol asks once its own headers and ``api-version`` are accepted."""
    parsed = parse_query(request, selectors)
    if isinstance(parsed, Refusal):
        return parsed
    params, selector = parsed
    resource = resource_param(params)
    if isinstance(resource, Refusal):
        return resource
    return Ask(resource, selector)
