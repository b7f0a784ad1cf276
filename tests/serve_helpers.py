"""Shared pieces of the dashboard's tests: a recorded run, hand-written signal rows, a daemon stepped
by the test, and the app served by a real uvicorn on a free 127.0.0.1 port in a thread."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.cli import main

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-0123456789abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def record_backtest(url: str, *args: str) -> dict[str, Any]:
    """A backtest of the synthetic sample (6,000 bars, seconds) recorded into the store at ``url``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["backtest", "--json", "--no-progress", "--config", str(ROOT / "config.toml"),
                     "--set", f'store.url="{url}"', "--set", 'logging.file=""', *args])
    assert code == 0
    return json.loads(out.getvalue())


def add_signal_rows(url: str, run_id: str, n: int = 30) -> None:
    """Signals and predictions as the LLM strategy records them (its components JSON), written by hand
    so that the LLM panel is tested without training a model; one signal lacks the news component."""
    from sqlalchemy import insert, select

    from engine.store.db import open_store
    from engine.store.models import PredictionRow, Run, SignalRow

    store = open_store(url, create=False)
    try:
        with store.write() as conn:
            pk = conn.scalar(select(Run.pk).where(Run.run_id == run_id))
            t0 = 1_704_070_800_000
            signals, predictions = [], []
            for k in range(n):
                score = ((k % 7) - 3) / 4
                news = {"score": 0.5, "count": 2} if k % 5 else {"score": 0.0, "count": 0}
                signals.append({"run_pk": pk, "ts_event": t0 + k * 3_600_000, "symbol": "SYN/USDT", "value": score,
                                "confidence": 0.5 + k / 100, "model": "tiny", "components": {
                                    "signal": {"direction": float((score > 0.2) - (score < -0.2)), "components": {
                                        "regression": {"score": score / 2}, "news": news}},
                                    "decision": {"action": ("open", "hold", "flat")[k % 3], "expected_move": score / 100,
                                                 "round_trip_cost": 0.002}}})
                predictions.append({"run_pk": pk, "ts_event": t0 + k * 3_600_000, "symbol": "SYN/USDT",
                                    "kind": "regression" if k % 2 else "sentiment", "model": "tiny", "horizon_ms": 3_600_000,
                                    "value": score / 100, "uncertainty": 0.01, "confidence": 0.6,
                                    "probabilities": None if k % 2 else {"bearish": 0.2, "neutral": 0.3, "bullish": 0.5},
                                    "input_text": None if k % 2 else f"headline {k}"})
            conn.execute(insert(SignalRow), signals)
            conn.execute(insert(PredictionRow), predictions)
    finally:
        store.close()


def stepped_daemon(url: str, bars_file: Path, steps: int) -> Any:
    """A paper daemon of ``sma_cross`` on ``bars_file``, opened in this process and stepped ``steps``
    bars by the test (as tests/test_paper.py does); ``.step(n)`` steps further."""
    from engine.daemon import specs
    from engine.daemon.runner import Daemon
    from engine.session import load_settings

    config = load_settings(ROOT / "config.toml", [f'store.url="{url}"', 'run.strategy="sma_cross"',
                                                 f"data.bars={json.dumps(str(bars_file))}", 'data.source="csv"',
                                                 'logging.file=""'])

    class Args:
        replay, warmup = str(bars_file), 0

    spec, time_source = specs.daemon_spec(Args, config, say=lambda _line: None)
    daemon = Daemon(spec, say=lambda _line: None)
    daemon.open()
    position = {"k": 0}

    def step(n: int) -> None:
        for _ in range(n):
            k = position["k"]
            time_source.ms = int(spec.series.ts_close[k])
            daemon._controls_read = float("-inf")  # read the controls at every step, not every 0.25 s
            daemon.tick(time_source.ms)
            position["k"] = k + 1

    daemon.step = step
    step(steps)
    return daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServedApp:
    """The app under a real uvicorn on 127.0.0.1 in a thread: ``url``, and ``stop()``."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@contextlib.contextmanager
def served(app: Any) -> Iterator[ServedApp]:
    server = ServedApp(app)
    try:
        yield server
    finally:
        server.stop()
