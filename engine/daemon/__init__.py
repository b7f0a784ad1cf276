"""The paper-trading daemon (and, with the Bybit broker plugged in, live trading): the kernel
(``engine.kernel``) fed with closed bars and headlines as they arrive, on a wall clock, recording
every decision in the store before it is acted on.

- ``engine.daemon.feeds``: live closed bars (the closed-bar rule, late and missing bars) from any
  market-data source (Bybit through ccxt, yfinance) or from a recorded file replayed as if live;
  headlines from the live pollers or a recorded file.
- ``engine.daemon.runner``: ``Daemon``, one run of one strategy: start or resume, the warm-up
  replay, ``tick(now)`` (the step, a plain function), halt, stop.
- ``engine.daemon.schedule``: APScheduler jobs a few seconds after each bar close; the replay driver.
- ``engine.daemon.commands``: ``python -m engine paper start|status|stop|halt``.

How orders survive a crash: ``README.md``, "Paper trading", and ``LIVE.md``.
"""
