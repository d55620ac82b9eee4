"""Structured logs and the CLI's own text: JSON lines in production, text otherwise; help that
names every command; the URLs `rollup run` prints."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from config import load_settings
from engine.cli import parser, welcome
from engine.logs import JsonFormatter
from tests.conftest import ROOT


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("engine.test", logging.WARNING, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_formatter_writes_one_object_per_line() -> None:
    line = JsonFormatter().format(record("two\nlines %s", "here", partition=3))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "two\nlines here"
    assert entry["level"] == "warning" and entry["logger"] == "engine.test"
    assert entry["partition"] == 3
    assert entry["time"].endswith("+00:00")


def test_json_formatter_keeps_exceptions() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in entry["exception"]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_roles_log_in_the_configured_format(fmt: str) -> None:
    # Through the real entry points: the CLI's setup and the dictConfig given to Faust.
    script = (
        "import logging, logging.config, sys\n"
        "from engine.logs import setup_logging, dict_config\n"
        f"setup_logging('info', '{fmt}')\n"
        "logging.getLogger('rollup').info('started %d', 1)\n"
        f"logging.config.dictConfig(dict_config('info', '{fmt}'))\n"
        "logging.getLogger('faust').info('Worker ready')\n"
        "logging.getLogger('faust').debug('hidden')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2
    if fmt == "json":
        entries = [json.loads(line) for line in lines]
        assert [e["message"] for e in entries] == ["started 1", "Worker ready"]
        assert [e["logger"] for e in entries] == ["rollup", "faust"]
    else:
        assert lines[0].endswith("INFO rollup: started 1")
        assert lines[1].endswith("INFO faust: Worker ready")


def test_log_format_setting_is_validated() -> None:
    assert load_settings(log_format="json").log_format == "json"
    with pytest.raises(ValueError):
        load_settings(log_format="xml")


def test_help_names_every_command() -> None:
    text = parser().format_help()
    for command in ("run", "ingest", "api", "worker", "migrate", "import", "sites"):
        assert f"\n    {command} " in text, command
    assert "ROLLUP_LOG_FORMAT=json" in text and "CLICKHOUSE_CLUSTER" in text
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and "getting started:" in done.stdout
    assert "production roles" in done.stdout


def test_welcome_lists_what_to_open() -> None:
    settings = load_settings(
        http_host="0.0.0.0", http_port=8123, worker_web_port=7001, live_web_port=7002
    )
    text = welcome(settings, ["a.example", "b.example"], "generated-token")
    assert "POST http://127.0.0.1:8123/api/event" in text
    assert "POST http://127.0.0.1:8123/api/v2/query" in text
    assert "http://127.0.0.1:8123/dashboard/a.example" in text
    assert "http://127.0.0.1:8123/dashboard/b.example" in text
    assert "http://127.0.0.1:8123/metrics" in text
    assert "http://127.0.0.1:7001/metrics (worker)" in text
    assert "http://127.0.0.1:7002/metrics (live)" in text
    assert "generated-token" in text
    quiet = welcome(settings, [], None)
    assert "token" not in quiet and "rollup sites add" in quiet


def test_worker_health_readiness_and_liveness() -> None:
    import time

    from topologies.role_web import STALL_SECONDS, RoleHealth

    health = RoleHealth()
    assert health.status()[0] == 503  # starting: not ready
    assert health.status(liveness=True)[0] == 200  # but alive, however long recovery takes
    health.beat(ready=False)
    assert health.status() == (503, {"worker": "joining group or recovering tables"})
    health.beat(ready=True)
    assert health.status() == (200, {"worker": "ok"})
    health.last_beat = time.monotonic() - STALL_SECONDS - 1
    assert health.status()[0] == 503 and health.status(liveness=True)[0] == 503
