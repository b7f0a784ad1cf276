"""Stand-ins for the outside world that users and tests run the real clients against.

``engine.testing.fake_bybit`` is a fault-injecting Bybit v5 exchange on 127.0.0.1 for the real ccxt
client. Nothing in the engine imports this package (an import-linter contract in pyproject.toml
keeps it that way); it imports no model code, so it runs without torch.
"""
