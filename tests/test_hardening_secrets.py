"""No password or key in the store, the reports or the messages; yfinance's cookies out of the market cache.

A PostgreSQL URL here is never connected: the snapshot, the reports and the error messages are
checked on the text alone."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import update

from engine.cli import main
from engine.config import load_config
from engine.store.commands import config_snapshot
from engine.store.db import open_store

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "s3cr3t-Pa55"
HIDDEN = "***"
PG_URL = f"postgresql+psycopg://trader:{PASSWORD}@db.example.com:5432/runs"


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


# -- the rule for names ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    "password", "db_password", "DB_PASSWORD", "passwd", "passphrase", "secret", "api_secret", "client_secret_value",
    "token", "auth_token", "hf_token", "lease_token", "api_key", "apiKey", "key", "secret_key", "private_key",
    "openai-api-key", "llm.remote_key", "strategies.x.API_SECRET", "apisecret", "authtoken",
])
def test_names_that_say_password_secret_token_or_key_are_secret(name):
    from engine.store.redact import is_secret_name

    assert is_secret_name(name)


@pytest.mark.parametrize("name", [
    "max_order_notional", "cache_dir", "data.cache_dir", "model_cache_dir", "num_key_value_heads", "max_tokens",
    "max_sample_tokens", "keys", "keyword", "monkey_business", "key_value", "url", "api_url", "tokenizer",
    "news_feeds", "secretary", "risk.max_order_notional",
])
def test_ordinary_names_are_not_secret(name):
    from engine.store.redact import is_secret_name

    assert not is_secret_name(name)


def test_the_shipped_config_loses_nothing_to_redaction():
    """Every key of config.toml (and every default) is kept as it is: no false positive today."""
    config = load_config(ROOT / "config.toml", sections=["llm"])
    raw = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    assert config_snapshot(config) == raw


# -- the snapshot ----------------------------------------------------------------------------------
def test_config_snapshot_hides_the_store_url_password():
    config = load_config(ROOT / "config.toml", [f'store.url="{PG_URL}"'], sections=["llm"])
    snapshot = config_snapshot(config)
    assert PASSWORD not in json.dumps(snapshot)
    assert snapshot["store"]["url"] == "postgresql+psycopg://trader:***@db.example.com:5432/runs"


def test_config_snapshot_blanks_settings_named_like_secrets_and_passwords_in_any_url():
    config = load_config(ROOT / "config.toml", sections=["llm"])
    config = dataclasses.replace(
        config,
        strategies={**config.strategies, "remote": {"api_key": "AK-1", "client_secret": "CS-2", "fast": 3}},
        sections={**config.sections, "vault": {"auth_token": "TK-3", "db": {"password": "PW-4"},
                                               "feeds": ["https://bob:PW-5@news.example.com/rss?x=1"]}})
    snapshot = config_snapshot(config)
    text = json.dumps(snapshot)
    for secret in ("AK-1", "CS-2", "TK-3", "PW-4", "PW-5"):
        assert secret not in text
    assert snapshot["strategies"]["remote"] == {"api_key": HIDDEN, "client_secret": HIDDEN, "fast": 3}
    assert snapshot["sections"]["vault"]["db"] == {"password": HIDDEN}
    assert snapshot["sections"]["vault"]["feeds"] == ["https://bob:***@news.example.com/rss?x=1"]
    assert snapshot["data"]["cache_dir"] == config.data.cache_dir
    assert snapshot["risk"]["max_order_notional"] == config.risk.max_order_notional


def test_an_empty_secret_setting_stays_empty():
    """"" says "not set": keeping it tells the reader that nothing was configured."""
    from engine.store.redact import redact_settings

    assert redact_settings({"api_key": "", "token": None}) == {"api_key": "", "token": None}


# -- reports of runs recorded before the fix -------------------------------------------------------
@pytest.fixture
def leaky_store(tmp_path, monkeypatch) -> Path:
    """Two runs whose stored snapshots hold a password and a key, as runs recorded before the fix did."""
    from engine.store.models import Run

    monkeypatch.chdir(tmp_path)
    db = tmp_path / "store.db"
    for fast in ("10", "5"):
        code, _, _ = run_cli("backtest", "--json", "--no-progress", "--config", str(ROOT / "config.toml"),
                             "--set", f"store.url=sqlite:///{db}", "--set", "logging.file=''",
                             "--set", "sample.bars=300", "--set", f"strategies.sma_cross.fast={fast}")
        assert code == 0
    store = open_store(db)
    try:
        with store.write() as conn:
            rows = conn.execute(Run.__table__.select()).mappings().all()
            for i, row in enumerate(rows):
                config = json.loads(json.dumps(row["config"]))
                config["store"]["url"] = PG_URL.replace("runs", f"runs{i}")
                config["sections"] = {"remote": {"api_key": f"AK-{i}"}}
                conn.execute(update(Run.__table__).where(Run.__table__.c.pk == row["pk"]).values(config=config))
    finally:
        store.close()
    return db


def test_report_configuration_never_shows_a_password_or_key(leaky_store, tmp_path):
    code, _, err = run_cli("report", "--latest", "--db", str(leaky_store), "--out", str(tmp_path / "r"))
    assert code == 0, err
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Configuration" in html
    assert PASSWORD not in html and "AK-" not in html
    assert "trader:***@db.example.com" in html


def test_compare_never_shows_a_password_or_key(leaky_store, tmp_path):
    code, out, err = run_cli("runs", "--json", "--db", str(leaky_store))
    assert code == 0, err
    a, b = (r["run_id"] for r in json.loads(out))
    code, _, err = run_cli("report", "--compare", a, b, "--db", str(leaky_store), "--out", str(tmp_path / "c"))
    assert code == 0, err
    html = (tmp_path / "c" / "report.html").read_text()
    assert "store.url" in html  # the two URLs differ, so the setting is listed
    assert PASSWORD not in html and "AK-" not in html


# -- a bad store URL -------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    f"postgresql://trader:{PASSWORD}@db.example.com:notaport/runs",  # SQLAlchemy: ValueError on the port
    f"post gres://trader:{PASSWORD}@db.example.com/runs",  # not parsed at all
    f"postgresql+nosuchdriver://trader:{PASSWORD}@db.example.com/runs",  # no such dialect
])
def test_a_bad_store_url_is_a_config_error_without_the_password(url):
    code, _, err = run_cli("runs", "--db", url)
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert PASSWORD not in err
    assert "***" in err or "db.example.com" not in err


def test_a_bad_store_url_in_a_backtest_is_a_config_error_without_the_password(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("backtest", "--no-progress", "--set", "logging.file=''", "--set", "sample.bars=300",
                           "--set", f"store.url=postgresql://trader:{PASSWORD}@db.example.com:notaport/runs")
    assert code == 2
    assert "Traceback" not in err and PASSWORD not in err


# -- yfinance's own state --------------------------------------------------------------------------
def test_yfinance_cookies_are_kept_outside_the_market_cache(tmp_path, monkeypatch):
    """The README tells users to copy data.cache_dir between machines: yfinance's cookie and session
    state must not be in it."""
    import yfinance.cache as yf_cache

    from engine.feeds.cache import MarketCache
    from engine.feeds.market_data import make_source

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    market = tmp_path / "market"
    managers = (yf_cache._CookieDBManager, yf_cache._TzDBManager, yf_cache._ISINDBManager)
    before = [m.get_location() for m in managers]
    try:
        make_source("yfinance", cache=MarketCache(market))
        folders = [Path(m.get_location()) for m in managers]
    finally:
        for manager, location in zip(managers, before):
            manager.set_location(location)
    cookies = folders[0]
    for folder in folders:
        assert not folder.resolve().is_relative_to(market.resolve())
        assert folder.resolve().is_relative_to((tmp_path / "user-cache").resolve())
    assert not (market / "_yfinance").exists()
    if os.name == "posix":
        assert cookies.stat().st_mode & 0o077 == 0  # only its owner reads the session cookies


def test_a_driver_message_that_echoes_the_password_is_scrubbed():
    import sqlite3

    from engine.store.db import StoreError, parse_url, translate_errors

    with pytest.raises(StoreError) as info, translate_errors(parse_url(PG_URL)):
        raise sqlite3.DatabaseError(f"could not connect with password {PASSWORD}")
    assert PASSWORD not in str(info.value) and "trader:***@db.example.com" in str(info.value)
