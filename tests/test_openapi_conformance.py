"""`genrec serve` against its own OpenAPI document: a schemathesis run over a real socket.

Schemathesis generates requests for every operation from /openapi.json (valid and invalid
bodies) and checks each answer: no 5xx, a status and content type the document declares,
a body that matches the declared schema. Catalog edits run too (on a copy of the run).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_run
from test_routes import KEY
from test_serving_faults import _app, _wait_ready, served

pytest.importorskip("schemathesis")

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "negative_data_rejection",
        "ignored_auth",
    ]
)


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(trained_demo_run, tmp_path):
    run = copy_run(trained_demo_run, tmp_path / "demo")
    app, _ = _app(run)
    with served(app) as (base, _status):
        _wait_ready(base)
        report = tmp_path / "report.json"
        res = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{base}/openapi.json",
                "--header",
                f"Authorization: Bearer {KEY}",
                "--checks",
                CHECKS,
                "--max-examples",
                "40",
                "--seed",
                "1",
                "--request-timeout",
                "60",
                "--report",
                "junit",
                "--report-junit-path",
                str(report),
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,  # schemathesis keeps a .schemathesis folder in its working directory
        )
        assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
        assert "/v1/chat/completions" in res.stdout  # every operation ran
