"""``python -m engine serve``: the token file (0600, reused, refused when others can read it, rotated),
loopback only unless --allow-remote, and a real uvicorn process whose page address carries the
token once on its terminal and never in its log."""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the dashboard needs fastapi and uvicorn (make setup installs them)")

from engine.cli import main  # noqa: E402
from engine.serve.auth import default_token_file, is_loopback, load_or_create_token  # noqa: E402
from engine.serve.commands import RedactToken  # noqa: E402
from tests.serve_helpers import ROOT, record_backtest  # noqa: E402


def test_the_token_file_is_made_once_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "cfg" / "llmtrader" / "serve-token"
    token, created = load_or_create_token(path)
    assert created and len(token) >= 40 and path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_token(path) == (token, False)  # the next start reuses it
    rotated, created = load_or_create_token(path, rotate=True)
    assert created and rotated != token and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    with pytest.raises(Exception, match="can be read by other users"):
        load_or_create_token(path)
    assert list(path.parent.iterdir()) == [path]  # no scratch file left behind


def test_the_default_token_file_follows_xdg_config_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_token_file() == tmp_path / "llmtrader" / "serve-token"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert default_token_file() == Path.home() / ".config" / "llmtrader" / "serve-token"


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.8.9.1", True), ("localhost", True),
                                                ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                                ("192.168.1.5", False), ("example.com", False)])
def test_only_loopback_addresses_bind_without_allow_remote(host, loopback):
    assert is_loopback(host) is loopback


def test_a_remote_bind_without_allow_remote_is_refused_before_anything_starts(capsys, tmp_path):
    token_file = tmp_path / "token"
    code = main(["serve", "--host", "0.0.0.0", "--token-file", str(token_file), "--db", str(tmp_path / "x.db")])
    err = capsys.readouterr().err
    assert code == 2 and "--allow-remote" in err and not token_file.exists()


def test_the_help_says_where_the_token_lives_and_what_is_safe(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for words in ("--allow-remote", "serve-token", "0600", "Authorization: Bearer", "/api/openapi.json", "CORS"):
        assert words in text, words


def test_the_access_log_never_shows_the_token():
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/runs/x?a=1&token=s3cr3t-value&b=2", "1.1", 303), None)
    assert RedactToken().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "GET /runs/x?a=1&token=***&b=2 HTTP/1.1" 303'


def test_a_real_server_prints_the_address_once_and_logs_no_token(tmp_path):
    db = tmp_path / "store.db"
    run_id = record_backtest(f"sqlite:///{db}")["run_id"]
    log_file, token_file = tmp_path / "engine.log", tmp_path / "cfg" / "serve-token"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--db", str(db), "--port", "0",
                             "--token-file", str(token_file), "--set", f'logging.file="{log_file}"'],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        match = re.search(r"open  (http://127\.0\.0\.1:(\d+))/\?token=(\S+)", "".join(lines))
        assert match, lines
        base, token = match.group(1), match.group(3)
        assert token == token_file.read_text().strip()
        deadline = time.monotonic() + 30
        while True:  # uvicorn takes a moment to serve the socket it was given
            try:
                request = urllib.request.Request(base + "/api/runs", headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(request, timeout=5) as answer:
                    assert answer.status == 200 and run_id in answer.read().decode()
                break
            except urllib.error.URLError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as first_visit:
            opener.open(f"{base}/runs/{run_id}?token={token}", timeout=5)
        assert first_visit.value.code == 303 and first_visit.value.headers["location"] == f"/runs/{run_id}"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "/api/runs", timeout=5)
        assert refused.value.code == 401
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    # uvicorn shuts down cleanly on SIGTERM, then re-raises the signal: the exit status is the signal's
    assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in err, err
    printed = "".join(lines) + out
    assert printed.count(token) == 1 and "written to no log" in printed
    assert token not in err and "token=***" in err  # the access log shows the visit without its token
    assert token not in log_file.read_text() if log_file.exists() else True


def test_paper_start_serve_runs_the_dashboard_beside_the_daemon(tmp_path, tmp_path_factory):
    import json

    from tests.test_paper import first_hours

    bars = first_hours(tmp_path_factory, 1500)
    db, log_file = tmp_path / "store.db", tmp_path / "engine.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "paper", "start", "--replay", str(bars), "--strategy",
                             "sma_cross", "--speed", "20", "--serve", "0", "--set", f'store.url="sqlite:///{db}"',
                             "--set", f'logging.file="{log_file}"'],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = []
        while not any("dashboard: " in line for line in seen):
            line = proc.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
        match = re.search(r"dashboard: (http://127\.0\.0\.1:\d+)/\?token=(\S+)", "".join(seen))
        assert match, seen
        base, token = match.groups()
        assert token == (tmp_path / "cfg" / "llmtrader" / "serve-token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}

        def call(path: str, method: str = "GET") -> dict:
            request = urllib.request.Request(base + path, headers=headers, method=method)
            with urllib.request.urlopen(request, timeout=10) as answer:
                return json.loads(answer.read())

        deadline = time.monotonic() + 30
        while True:
            runs = call("/api/runs")["runs"]
            if runs and runs[0]["daemon_state"] == "running":
                break
            assert time.monotonic() < deadline, runs
            time.sleep(0.2)
        run_id = runs[0]["run_id"]
        assert call(f"/api/runs/{run_id}/daemon")["pid"] == proc.pid  # the same process serves and trades
        assert "stop requested" in call(f"/api/runs/{run_id}/stop", "POST")["message"]
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"run {run_id} stopped" in err
    assert token not in err and token not in log_file.read_text()


def test_serve_beside_a_detached_daemon_is_refused(capsys, tmp_path):
    code = main(["paper", "start", "--detach", "--serve", "--set", f'store.url="sqlite:///{tmp_path / "s.db"}"'])
    assert code == 2 and "drop --detach" in capsys.readouterr().err
