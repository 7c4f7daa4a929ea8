"""schemathesis against the gateway's own OpenAPI document: no 5xx, documented statuses and
content types, response schemas, authentication not ignorable, OpenAI-format errors.

Bounded here (40 cases per operation, seed 12); ``scripts/fuzz`` runs the long version."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .target import KEY, fuzz_target

HOOKS = Path(__file__).with_name("st_checks.py")
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,ignored_auth,openai_error_format"
)


def schemathesis_cli() -> list[str]:
    script = Path(sys.executable).parent / "schemathesis"
    found = str(script) if script.exists() else shutil.which("schemathesis")
    if found is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[dev]'")
    return [found]


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    # scripts/fuzz raises QUANTROUTE_FUZZ_EXAMPLES for hypothesis; a tenth per operation here
    examples = max(40, int(os.environ.get("QUANTROUTE_FUZZ_EXAMPLES", "400")) // 10)
    seed = os.environ.get("QUANTROUTE_FUZZ_SEED", "12")
    with fuzz_target() as target:
        result = subprocess.run(
            [
                *schemathesis_cli(),
                "run",
                target.url + "/openapi.json",
                "--checks",
                CHECKS,
                "--max-examples",
                str(examples),
                "--seed",
                seed,
                "--header",
                f"Authorization: Bearer {KEY}",
                "--generation-database",
                "none",
                "--workers",
                "1",
                "--request-timeout",
                "20",
                "--no-color",
                "--report-dir",
                str(tmp_path),
            ],
            env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
            capture_output=True,
            text=True,
            timeout=None if os.environ.get("QUANTROUTE_FUZZ_SEED") else 540,
            check=False,
            cwd=tmp_path,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    print(output[-3000:])
