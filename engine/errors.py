"""Exception hierarchy: each class says what the user should do about it.

- ``ConfigError``: a setting is wrong; fix the config file or the flag named in the message.
- ``DataError``: an input file is malformed; the message names the file, the row and the problem.
- ``OrderRejected`` is not an exception: rejections are events (see ``engine.domain.Rejection``).
- ``TemporaryError``: network or exchange trouble worth retrying (used by live adapters).
- ``OperationalError``: a fatal problem at run time that retrying will not fix.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(EngineError):
    """A configuration value or key is invalid."""


class DataError(EngineError):
    """An input file (bars, news) cannot be used as it is."""


class OperationalError(EngineError):
    """A fatal run-time problem (bad state, exchange rejection) that a retry will not fix."""


class TemporaryError(EngineError):
    """A transient problem (network, rate limit); the caller may retry."""
