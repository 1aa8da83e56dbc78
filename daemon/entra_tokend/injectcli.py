"""``entra-tokend inject [-f FILE|-] [--image IMAGE]``: inject the sidecar into Kubernetes YAML.

Reads a stream of YAML documents, injects every annotated pod template (Pod, Deployment,
StatefulSet, DaemonSet, ReplicaSet, Job, CronJob; a ``List``'s items too) with
``inject.inject_template``, and writes the stream to stdout. A document that needs no change is
written back byte for byte (its text as read, comments included); a changed one is re-emitted by
PyYAML (its comments other than the leading ones are lost). Exit 0, or 2 with one line per problem
on stderr naming the document and the annotation, and nothing on stdout.

A document with a pod template to inject must not use YAML aliases (``*name``): the output is
written without them, so each would be expanded (a few lines of nested aliases expand to
gigabytes). Other documents may use them (they are written back as read). Templates are bounded
as the webhook's are (``injectcheck``); YAML nested too deeply to parse is refused.

Needs PyYAML (the ``inject`` extra); the webhook, which speaks JSON, does not.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import yaml

from entra_tokend.inject import DEFAULT_IMAGE, PREFIX, InjectError, inject_template, requested

EXIT_OK = 0
EXIT_CONFIG = 2

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
# A line that starts or ends a document. At column 0 these are markers wherever they appear
# (YAML 1.2 forbids them inside scalars), so splitting on them is exact.
_MARKER = re.compile(r"^(---|\.\.\.)(?=[ \t\r\n]|$)", re.MULTILINE)


def split_documents(text: str) -> list[str]:
    """``text`` cut before every ``---`` line and around every ``...`` line (a chunk of its
    own, as it ends a document); ``"".join`` of the result is ``text``."""
    cuts = {0, len(text)}
    for match in _MARKER.finditer(text):
        cuts.add(match.start())
        if match[1] == "...":
            end = text.find("\n", match.start())
            cuts.add(len(text) if end < 0 else end + 1)
    starts = sorted(cuts)
    return [text[a:b] for a, b in itertools.pairwise(starts) if b > a]


def _get(value: Any, key: str) -> Any:
    """``value[key]``; None when ``value`` is no mapping or has no ``key``."""
    return value.get(key) if isinstance(value, dict) else None


def templates(doc: Any) -> Iterator[dict[str, Any]]:
    """The pod templates of a parsed manifest (the Pod itself for a Pod), in place; fields of
    another type than Kubernetes has (a list for a mapping...) hold none."""
    kind, spec = _get(doc, "kind"), _get(doc, "spec")
    found = None
    if kind == "List" and isinstance(_get(doc, "items"), list):
        for item in doc["items"]:
            if _get(item, "kind") != "List":  # a List of Lists is no manifest
                yield from templates(item)
    elif kind == "Pod":
        found = doc
    elif kind in WORKLOADS:
        found = _get(spec, "template")
    elif kind == "CronJob":
        found = _get(_get(_get(spec, "jobTemplate"), "spec"), "template")
    if isinstance(found, dict):
        yield found


def inject_document(doc: Any, image: str) -> bool:
    """Inject every pod template of ``doc`` in place; whether anything changed.
    Raises InjectError."""
    changed = False
    if _get(doc, "kind") in (*WORKLOADS, "CronJob"):
        own = _get(_get(doc, "metadata"), "annotations")
        own = own if isinstance(own, dict) else {}
        misplaced = sorted(k for k in own if str(k).startswith(PREFIX))
        if misplaced:  # a workload's own annotations never reach its pods
            raise InjectError(
                [
                    f"{k}: on the {doc['kind']} itself; put it on the pod template's annotations "
                    "(spec.template.metadata.annotations)"
                    for k in misplaced
                ]
            )
    for template in list(templates(doc)):
        if not requested(template):
            continue  # left as it is, never copied or compared
        injected = inject_template(template, image)
        if injected != template:
            template.clear()
            template.update(injected)
            changed = True
    return changed


def _label(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "document"
    name = _get(doc.get("metadata"), "name") or "(no name)"
    return f"{doc.get('kind')}/{name}"


def _dumper() -> type[Any]:
    class Dumper(yaml.SafeDumper):
        """Block style; a multi-line string as a literal block; no anchors or aliases."""

        def ignore_aliases(self, data: Any) -> bool:
            return True

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return Dumper


def _load(chunk: str) -> tuple[Any, int]:
    """The document in ``chunk`` and how many aliases (``*name``) it uses.
    Raises yaml.YAMLError, RecursionError (nested too deeply)."""

    class Loader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
            return super().compose_node(parent, index)

    loader = Loader(chunk)
    try:
        return loader.get_single_data(), loader.aliases
    finally:
        loader.dispose()


def _dump(chunk: str, doc: Any) -> str:
    lines = chunk.splitlines(keepends=True)
    head = ""
    if lines and _MARKER.match(lines[0]):
        head, lines = "---\n", lines[1:]
    for line in lines:  # keep the document's leading comments
        if not line.startswith("#"):
            break
        head += line
    body = yaml.dump(doc, Dumper=_dumper(), sort_keys=False, default_flow_style=False, width=120)
    return head + body


def inject_stream(text: str, image: str) -> tuple[str, list[str]]:
    """(output text, problems). Problems name the document (``Kind/name``, its position) and the
    annotation; with problems the output is not to be used."""
    out, problems = [], []
    position = 0
    for chunk in split_documents(text):
        if chunk.startswith("..."):
            out.append(chunk)
            continue
        position += 1
        try:
            doc, aliases = _load(chunk)
        except yaml.YAMLError as exc:
            problems.append(f"document {position}: not YAML: {exc}".replace("\n", " "))
            continue
        except RecursionError:
            problems.append(f"document {position}: nested too deeply to read")
            continue
        where = f"document {position} ({_label(doc)})"
        if aliases and any(requested(t) for t in templates(doc)):
            problems.append(
                f"{where}: uses YAML aliases (*name), which injection would expand; "
                "write it without anchors and aliases"
            )
            continue
        try:
            changed = inject_document(doc, image)
            out.append(_dump(chunk, doc) if changed else chunk)
        except InjectError as exc:
            problems += [f"{where}: {p}" for p in exc.problems]
        except RecursionError:  # deep outside its pod templates (which are bounded)
            problems.append(f"{where}: nested too deeply to write")
    return "".join(out), problems


def build_parser() -> argparse.ArgumentParser:
    """``inject``'s flags."""
    parser = argparse.ArgumentParser(
        prog="entra-tokend inject",
        description="Add the entra-tokend sidecar to the pod templates of Kubernetes YAML whose "
        'annotations ask for it (entra-tokend.io/inject: "true"); write the YAML to stdout.',
        epilog="examples:\n  entra-tokend inject -f deployment.yaml | kubectl apply -f -\n"
        "  kustomize build . | entra-tokend inject > injected.yaml\n\n"
        "exit codes:\n  0  written\n  2  a malformed annotation or YAML (one line each on stderr)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-f", "--filename", default="-", metavar="FILE", help="'-': stdin (default)"
    )
    parser.add_argument(
        "--image",
        default=DEFAULT_IMAGE,
        help=f"the sidecar's image unless entra-tokend.io/image says (default {DEFAULT_IMAGE})",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``entra-tokend inject``; the exit code."""
    args = build_parser().parse_args(argv)
    try:
        # Bytes, so that line endings come back exactly as they were.
        if args.filename == "-":
            text = sys.stdin.buffer.read().decode("utf-8")
        else:
            with open(args.filename, "rb") as f:
                text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"entra-tokend: inject: {args.filename}: cannot be read: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    output, problems = inject_stream(text, args.image)
    for line in problems:
        print(f"entra-tokend: inject: {line}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    sys.stdout.buffer.write(output.encode("utf-8"))
    sys.stdout.flush()
    return EXIT_OK
