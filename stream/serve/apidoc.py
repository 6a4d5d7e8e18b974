"""The API reference rendered from the OpenAPI document: ``docs/api.md`` and ``GET /docs``.

Both come from one list of blocks (headings, paragraphs, tables, code), written
out as Markdown or as a self-contained HTML page (no scripts, nothing fetched).
``python -m stream.serve.apidoc docs/api.md`` rewrites the file; with
``--check`` it exits 1 if the file is not what the code would write.

>>> md = render_markdown()
>>> md.startswith("# HTTP API reference") and "### POST /recommend" in md
True
>>> "<h3 id=\\"post-recommend\\">POST /recommend</h3>" in render_html()
True
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stream.serve.openapi import openapi_document

#: Examples, run against a real server by the suite (tests/stream/serve/test_api_docs.py).
EXAMPLES: tuple[tuple[str, str, str], ...] = (
    ("Recommend 3 of 5 candidates for a user (curl)", "sh",
     """curl -sS --fail-with-body http://127.0.0.1:8000/recommend \\
  -d '{"user_id": "u42", "user": {"gender": "F", "age": 31},
       "candidates": ["1", "50", "100", "181", "258"], "k": 3}'"""),
    ("Report a click on an item shown by that request (curl)", "sh",
     """curl -sS --fail-with-body http://127.0.0.1:8000/feedback \\
  -d '{"type": "click", "user_id": "u42", "request_id": "REQUEST_ID", "item_id": "50"}'"""),
    ("Why these items: each score in parts (content, the item's own terms, exploration, "
     "exposure) with its propensity", "sh",
     """curl -sS --fail-with-body http://127.0.0.1:8000/recommend \\
  -d '{"user_id": "u42", "candidates": ["1", "50", "100"], "k": 2, "explain": true}'"""),
    ("Readiness, and pinning a policy version (curl; admin token from the settings)", "sh",
     """curl -sS http://127.0.0.1:8000/readyz
curl -sS --fail-with-body http://127.0.0.1:8000/admin/pin \\
  -H "Authorization: Bearer $FAIRSTREAM_SERVE__ADMIN_TOKEN" -d '{"version": null}'"""),
    ("The same from Python (standard library only)", "python",
     """import json
import urllib.request

BASE = "http://127.0.0.1:8000"


def post(path, body):
    request = urllib.request.Request(BASE + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


slate = post("/recommend", {"user_id": "u42", "user": {"gender": "F", "age": 31},
                            "candidates": ["1", "50", "100", "181", "258"], "k": 3})
print(slate["items"], slate["propensities"], slate["policy_version"])
accepted = post("/feedback", {"type": "click", "user_id": "u42",
                              "request_id": slate["request_id"], "item_id": slate["items"][0]})
print(accepted["event_id"])"""),
)

Block = tuple[Any, ...]  # ("h", level, text) | ("p", text) | ("table", head, rows) | ("code", ...)


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _type(schema: dict[str, Any], nested: bool = False) -> str:
    """A JSON Schema as a short type expression with links to named schemas."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{_anchor(name)})"
    if "anyOf" in schema:
        union = " or ".join(_type(s, nested=True) for s in schema["anyOf"])
        return f"({union})" if nested else union
    if "enum" in schema:
        return " \\| ".join(f"`{v!r}`".replace("'", '"') for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}), nested=True)}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'], nested=True)}"
    return str(kind)


_LIMITS = {"minLength": "length ≥ {}", "maxLength": "length ≤ {}", "minItems": "≥ {} items",
           "maxItems": "≤ {} items", "maxProperties": "≤ {} keys", "minimum": "≥ {}",
           "maximum": "≤ {}"}


def _limits(schema: dict[str, Any]) -> list[str]:
    out = [fmt.format(schema[key]) for key, fmt in _LIMITS.items() if key in schema]
    for part in schema.get("anyOf", []):
        out += _limits(part)
    names = schema.get("propertyNames")
    if names:
        out += [f"keys: {x}" for x in _limits(names)]
    if isinstance(schema.get("additionalProperties"), dict):
        out += [f"values: {x}" for x in _limits(schema["additionalProperties"])]
    return out


def blocks(doc: dict[str, Any] | None = None) -> Iterator[Block]:
    doc = doc or openapi_document()
    yield ("h", 1, "HTTP API reference")
    yield ("p", f"fairstream {doc['info']['version']}. {doc['info']['description']} "
                "Served by `fairstream serve` as OpenAPI 3.1 at `/openapi.json` and as a "
                "page at `/docs`. Generated from the code by "
                "`python -m stream.serve.apidoc docs/api.md`; do not edit by hand.")
    yield ("p", "Bodies are JSON. Every refusal is an [ErrorBody](#errorbody) with a 4xx "
                "status (503 while not ready), never a 500 for bad input.")
    ops = [(path, method, op) for path, item in doc["paths"].items()
           for method, op in item.items()]
    yield ("h", 2, "Endpoints")
    yield ("table", ("endpoint", "what"),
           [(f"[{m.upper()} {p}](#{_anchor(f'{m} {p}')})", op["summary"]) for p, m, op in ops])
    for path, method, op in ops:
        yield ("h", 3, f"{method.upper()} {path}")
        yield ("p", op["description"])
        if op.get("security"):
            yield ("p", "Needs `Authorization: Bearer <serve.admin_token>`.")
        if "requestBody" in op:
            yield ("p", f"Request body: {_media(op['requestBody']['content'])}.")
        yield ("table", ("status", "body", "when"),
               [(code, _media(r["content"]), r["description"])
                for code, r in op["responses"].items()])
    yield ("h", 2, "Schemas")
    for name, schema in doc["components"]["schemas"].items():
        yield ("h", 3, name)
        if schema.get("description"):
            yield ("p", " ".join(schema["description"].split()))
        required = set(schema.get("required", ()))
        yield ("table", ("field", "type", "required", "default", "limits", "meaning"),
               [(f"`{field}`", _type(s), "yes" if field in required else "no",
                 "" if "default" not in s else f"`{json.dumps(s['default'])}`",
                 ", ".join(_limits(s)), s.get("description", ""))
                for field, s in schema.get("properties", {}).items()])
    yield ("h", 2, "Examples")
    yield ("p", "Against a server on the default address (`fairstream serve`); the suite "
                "runs each of them against a real server.")
    for title, lang, code in EXAMPLES:
        yield ("p", title + ":")
        yield ("code", lang, code)


def _media(content: dict[str, Any]) -> str:
    (media, spec), = content.items()
    return _type(spec["schema"]) if "$ref" in spec["schema"] else f"`{media}`"


def render_markdown(doc: dict[str, Any] | None = None) -> str:
    out: list[str] = []
    for block in blocks(doc):
        if block[0] == "h":
            out.append(f"{'#' * block[1]} {block[2]}")
        elif block[0] == "p":
            out.append(block[1])
        elif block[0] == "table":
            head, rows = block[1], block[2]
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        else:
            out.append(f"```{block[1]}\n{block[2]}\n```")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    text = html.escape(str(text), quote=False).replace("\\|", "|")
    text = re.sub(r"`([^`]*)`", r"<code>\1</code>", text)
    return re.sub(r"\[([^\]]+)\]\((#[^)]+)\)", r'<a href="\2">\1</a>', text)


def render_html(doc: dict[str, Any] | None = None) -> str:
    out = ["<!doctype html><html><head><meta charset=\"utf-8\"><title>fairstream API</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:auto;padding:1em}"
           "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;"
           "text-align:left}pre{background:#f4f4f4;padding:.5em;overflow:auto}</style>",
           "</head><body><p><a href=\"/openapi.json\">/openapi.json</a></p>"]
    for block in blocks(doc):
        if block[0] == "h":
            out.append(f'<h{block[1]} id="{_anchor(block[2])}">{html.escape(block[2])}'
                       f"</h{block[1]}>")
        elif block[0] == "p":
            out.append(f"<p>{_inline(block[1])}</p>")
        elif block[0] == "table":
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                           for row in block[2])
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            out.append(f"<table><tr>{head}</tr>{rows}</table>")
        else:
            out.append(f"<pre><code>{html.escape(block[2])}</code></pre>")
    return "\n".join([*out, "</body></html>\n"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stream.serve.apidoc",
                                description="Write the HTTP API reference (Markdown).")
    p.add_argument("path", type=Path, help="where to write it, e.g. docs/api.md")
    p.add_argument("--check", action="store_true",
                   help="only compare: exit 1 if the file differs from what would be written")
    args = p.parse_args(argv)
    text = render_markdown()
    if args.check:
        current = args.path.read_text() if args.path.exists() else ""
        if current != text:
            print(f"{args.path} is out of date: run python -m stream.serve.apidoc {args.path}",
                  file=sys.stderr)
            return 1
        return 0
    args.path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
