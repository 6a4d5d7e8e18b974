"""The API reference: an OpenAPI 3.1 document derived from the types, a rendered page and
docs/api.md that match it, and every example in the docs run against a real server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import msgspec
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route
from starlette.testclient import TestClient

from stream.kafka.producers import publish_catalog
from stream.kafka.topics import ensure_topics
from stream.serve import Recommender, ServeContext, ServerThread, ServeRuntime, create_app
from stream.serve.apidoc import EXAMPLES, main, render_markdown
from stream.serve.app import RecommendRequest
from stream.serve.openapi import openapi_document
from stream.settings import ServeSettings
from tests.stream.serve.conftest import make_bundle
from tests.stream.serve.test_serve_broker import send_policy

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_URL = "http://127.0.0.1:8000"
TOKEN = "example-token"


def conforms(doc: dict, path: str, method: str, response: httpx.Response) -> None:
    """``response`` is one the document lists for this operation, and its body matches."""
    op = doc["paths"][path][method]
    listed = op["responses"].get(str(response.status_code))
    assert listed is not None, f"{method} {path} answered {response.status_code}, undocumented"
    schema = listed["content"].get("application/json", {}).get("schema")
    if schema is not None and "$ref" in schema:
        jsonschema.validate(response.json(), {**schema, "components": doc["components"]})


def test_the_document_is_valid_openapi_31_and_comes_from_the_request_types():
    doc = openapi_document()
    validate(doc)
    _, direct = msgspec.json.schema_components([RecommendRequest])
    ours = doc["components"]["schemas"]["RecommendRequest"]
    assert ours["properties"] == direct["RecommendRequest"]["properties"]
    assert ours["additionalProperties"] is False  # forbid_unknown_fields, as decoded


def test_every_route_the_app_serves_is_documented():
    app = create_app(ServeContext(Recommender())).app
    served = {(r.path, m.lower()) for r in app.routes if isinstance(r, Route)
              for m in r.methods - {"HEAD"}}
    documented = {(p, m) for p, ops in openapi_document()["paths"].items() for m in ops}
    assert served == documented


def test_docs_api_md_is_what_the_code_renders(tmp_path):
    assert (ROOT / "docs/api.md").read_text() == render_markdown(), \
        "run: python -m stream.serve.apidoc docs/api.md"
    stale = tmp_path / "api.md"
    stale.write_text("old\n")
    assert main([str(stale), "--check"]) == 1
    assert main([str(stale)]) == 0 and main([str(stale), "--check"]) == 0


def test_the_app_serves_the_document_and_the_page_and_its_answers_conform():
    doc = openapi_document()
    client = TestClient(create_app(ServeContext(Recommender(), ServeSettings(admin_token="t"))))
    assert client.get("/openapi.json").json() == doc
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "POST /recommend" in page.text and "<script" not in page.text
    conforms(doc, "/healthz", "get", client.get("/healthz"))
    for body in (b'{"user_id": "u"}', b'{"user_id": "u", "candidates": []}', b"{",
                 b'{"user_id": "u", "explain": 3, "x": 1}'):
        r = client.post("/recommend", content=body)
        assert r.status_code in (400, 503)
        conforms(doc, "/recommend", "post", r)
    conforms(doc, "/feedback", "post", client.post("/feedback", content=b"[]"))
    conforms(doc, "/admin/pin", "post", client.post("/admin/pin", content=b"{}"))
    conforms(doc, "/admin/pin", "post",
             client.post("/admin/pin", content=b"{}", headers={"Authorization": "Bearer x"}))


def test_an_empty_candidate_list_is_named_as_such_not_invalid_k():
    client = TestClient(create_app(ServeContext(Recommender())))
    r = client.post("/recommend", content=b'{"user_id": "u", "candidates": []}')
    assert r.status_code == 400 and r.json()["error"] == "invalid_field"
    assert "$.candidates" in r.json()["detail"] and ">= 1" in r.json()["detail"]


def json_values(text: str) -> list:
    """The JSON values printed one after another (curl adds no newline)."""
    decoder, out, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        value, at = decoder.raw_decode(text, at)
        out.append(value)
        while at < len(text) and text[at].isspace():
            at += 1
    return out


def examples() -> list[tuple[str, str, str]]:
    """Every fenced sh/python block of README.md and docs/api.md that talks to a server."""
    found = []
    for name in ("README.md", "docs/api.md"):
        text = (ROOT / name).read_text()
        for lang, code in re.findall(r"```(sh|python)\n(.*?)```", text, flags=re.S):
            if DEFAULT_URL in code:
                found.append((name, lang, code))
    return found


def test_the_docs_have_curl_and_python_examples():
    got = examples()
    assert {(n, lang) for n, lang, _ in got} >= {("README.md", "sh"), ("README.md", "python"),
                                                  ("docs/api.md", "sh"),
                                                  ("docs/api.md", "python")}
    assert sum(n == "docs/api.md" for n, _, _ in got) == len(EXAMPLES)


@pytest.mark.broker
@pytest.mark.model
def test_every_example_in_the_docs_runs_against_a_real_server(make_settings, ml_items,
                                                               ml_catalog, encoder):
    settings = make_settings()
    ensure_topics(settings)
    publish_catalog(settings, ml_items)
    send_policy(settings, make_bundle(settings, ml_catalog, 1))
    runtime = ServeRuntime(settings, ServeSettings(admin_token=TOKEN), encoder=encoder).start()
    doc = openapi_document()
    env = {**os.environ, "FAIRSTREAM_SERVE__ADMIN_TOKEN": TOKEN}
    try:
        with ServerThread(runtime.app) as srv:
            runtime.wait_ready(60)
            conforms(doc, "/readyz", "get", httpx.get(f"{srv.url}/readyz"))
            ran = 0
            for name, lang, code in examples():
                code = code.replace(DEFAULT_URL, srv.url)
                cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "sh" \
                    else [sys.executable, "-c", code]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                                      env=env, check=False)
                assert done.returncode == 0, f"{name}:\n{code}\n{done.stdout}{done.stderr}"
                if lang == "sh":  # every curl answer is JSON
                    values = json_values(done.stdout)
                    assert len(values) == code.count("curl ")
                    assert not [v for v in values if "error" in v], f"{code}\n{values}"
                ran += 1
            assert ran >= 6
            served = httpx.get(f"{srv.url}/metrics").text
            assert 'fairstream_serve_requests_total{code="202",endpoint="feedback"}' in served
    finally:
        runtime.close()
