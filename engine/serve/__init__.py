"""The dashboard and its JSON API: ``python -m engine serve``.

- ``app``: ``create_app(store_url, token)``, the FastAPI application (API under ``/api``, pages, static files).
- ``data``: what the API answers, read from the store with the report's own readers.
- ``auth``: the token file, bearer and cookie checks, loopback addresses.
- ``pages``: the HTML shells that ``static/dashboard.js`` fills; ``static/`` also holds uPlot (MIT).
- ``commands``: the command line (uvicorn).

An application of the engine, like the daemons: nothing below imports it, and FastAPI is imported
only when the server starts, so ``python -m engine --help`` stays instant.
"""
