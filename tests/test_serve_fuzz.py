"""Fuzz the dashboard's API from its own OpenAPI document (schemathesis): whatever the path, query
and body, with the token, no answer is a server error. Bounded: a few examples per operation
against a real uvicorn on 127.0.0.1, over a store with a backtest (with signals) and a finished
paper run, so run ids that exist are tried as well as random ones."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the dashboard needs fastapi and uvicorn (make setup installs them)")
schemathesis = pytest.importorskip("schemathesis", reason="the fuzz test needs schemathesis (the dev extra)")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from engine.serve.app import create_app  # noqa: E402
from tests.serve_helpers import AUTH, TOKEN, add_signal_rows, record_backtest, served  # noqa: E402


@pytest.fixture(autouse=True)
def ieee_floats():
    """Subnormal floats on, as hypothesis requires: a backbone loaded earlier in the session
    (``models.backbone``, ``flush_denormal``) flushes them to zero process-wide; restored after."""
    import sys

    torch = sys.modules.get("torch")
    flushed = 2.2250738585072014e-308 / 2 == 0.0
    if torch is not None and flushed:
        torch.set_flush_denormal(False)
    yield
    if torch is not None and flushed:
        torch.set_flush_denormal(True)


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    import contextlib
    import io

    from engine.cli import main
    from tests.test_paper import first_hours

    db = tmp_path_factory.mktemp("fuzz") / "store.db"
    url = f"sqlite:///{db}"
    backtest = record_backtest(url)["run_id"]
    add_signal_rows(url, backtest)
    bars = first_hours(tmp_path_factory, 200)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["paper", "start", "--replay", str(bars), "--strategy", "sma_cross", "--json",
                     "--set", f'store.url="{url}"', "--set", 'logging.file=""']) == 0
    app = create_app(url, TOKEN)
    with served(app) as server:
        runs = app.state.reader.runs(10)
        yield {"app": app, "url": server.url, "run_ids": [r["run_id"] for r in runs] + [backtest[:9]]}


EXAMPLES = 10  # per operation and generation mode: 15 operations x 2 modes x 10, well under a minute


@pytest.mark.slow
def test_no_request_makes_a_server_error(fuzz_target):
    """Every operation of the document, with valid (positive) and invalid (negative) inputs. (Driven
    through ``as_strategy`` rather than schemathesis' pytest plugin, whose fixture loader does not work
    with pytest 9.)"""
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_dict(fuzz_target["app"].openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    run_ids = fuzz_target["run_ids"]
    seen: dict[int, int] = {}

    def check(case) -> None:
        if case.path_parameters and "run_id" in case.path_parameters:
            generated = str(case.path_parameters["run_id"])
            if len(generated) % 3:  # two thirds of the cases on a run that exists (backtest, paper, a prefix)
                case.path_parameters["run_id"] = run_ids[len(generated) % len(run_ids)]
        response = case.call(base_url=fuzz_target["url"], headers=AUTH, timeout=30)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500 and "Traceback" not in response.text, (case.path, response.text)

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                           suppress_health_check=list(HealthCheck))(given(case=operation.as_strategy(mode))(check))
            run()
    print("fuzz answers by status:", dict(sorted(seen.items())))
    assert seen.get(200, 0) > 50 and seen.get(422, 0) > 10 and seen.get(404, 0) > 0, seen  # it reached the handlers
