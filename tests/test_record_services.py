"""The service fixtures of tests/conftest.py answer (a Prefect server and an S3 server on loopback)."""

from __future__ import annotations

import json
import urllib.request

import flor_lib as flor
from flor_lib.store import Store


def test_prefect_server_fixture_answers(prefect_api):
    with urllib.request.urlopen(f"{prefect_api}/health", timeout=30) as resp:
        assert json.loads(resp.read()) is True


def test_s3_store_fixture_is_a_writable_empty_store(s3_store):
    store = Store()
    assert store.root == s3_store and not store.is_local
    store.check_writable()
    store.write_json(store.run_meta_path("p", "r"), {"runid": "r", "projid": "p"})
    assert store.run_meta("p", "r") == {"runid": "r", "projid": "p"}
    assert [m["runid"] for m in store.runs()] == ["r"]
    assert flor.dataframe("loss").empty
