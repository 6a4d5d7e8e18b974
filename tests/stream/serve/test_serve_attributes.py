"""The one rule for user attributes at the HTTP edge (stream.serve.attributes)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from stream.serve import Recommender, ServeContext, create_app


@pytest.fixture(scope="module")
def client():
    return TestClient(create_app(ServeContext(Recommender())))  # not ready: 503 if valid


@pytest.mark.parametrize(("user", "names"), [
    ('{"age": "forty"}', "user.age: 'forty' is not an age"),
    ('{"age": 4.5}', "user.age: 4.5 is not a string or an integer"),
    ('{"age": 200}', "user.age: 200 is not an age"),
    ('{"age": "40.5"}', "user.age: '40.5' is not an age"),
    ('{"gender": "x"}', "user.gender: 'x' is not a gender"),
    ('{"plan": [1]}', "user.plan: [1] is not a string or an integer"),
    ('{"plan": null}', "user.plan: null is not a string or an integer"),
    ('{"plan": true}', "user.plan: true is not a string or an integer"),
])
def test_an_unreadable_attribute_is_refused_naming_its_key(client, user, names):
    r = client.post("/recommend", content=f'{{"user_id": "u", "user": {user}}}'.encode())
    assert r.status_code == 400 and r.json()["error"] == "invalid_field"
    assert r.json()["detail"].startswith(names), r.json()["detail"]


@pytest.mark.parametrize("user", ['{"age": 40}', '{"age": "40"}', '{"age": "25-34"}',
                                  '{"gender": "female", "age": 0}', '{"plan": "gold"}',
                                  '{"plan": 3, "gender": "M"}'])
def test_readable_and_unread_attributes_pass_validation(client, user):
    r = client.post("/recommend", content=f'{{"user_id": "u", "user": {user}}}'.encode())
    assert r.status_code == 503 and r.json()["error"] == "not_ready"  # validated, then 503
