"""Funding-rate history from a CSV: a time column (epoch ms/s or ISO) and a rate column
(``fundingRate``, ``funding_rate`` or ``rate``), as Bybit's funding history exports them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from engine.costs import FundingSeries
from engine.errors import DataError

_TIME = ("fundingratetimestamp", "timestamp", "time", "ts", "date", "datetime")
_RATE = ("fundingrate", "funding_rate", "rate")


def load_funding(path: str | Path) -> FundingSeries:
    name = Path(path).name
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"funding file {path} not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{name}: cannot read as CSV: {exc}") from None
    columns = {c.strip().lower(): c for c in frame.columns}
    time_col = next((columns[c] for c in _TIME if c in columns), None)
    rate_col = next((columns[c] for c in _RATE if c in columns), None)
    if time_col is None or rate_col is None:
        raise DataError(f"{name}: needs a time column ({', '.join(_TIME)}) and a rate column ({', '.join(_RATE)}); "
                        f"found {', '.join(frame.columns)}")
    raw = frame[time_col]
    if pd.api.types.is_numeric_dtype(raw):
        ms = raw.to_numpy(np.int64)
        ms = np.where(ms < 10**11, ms * 1000, ms)  # epoch seconds -> ms
    else:
        parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
        if parsed.isna().any():
            line = int(np.argmax(parsed.isna().to_numpy())) + 2
            raise DataError(f"{name}: line {line}: cannot parse time {raw.iloc[line - 2]!r}")
        ms = parsed.to_numpy("datetime64[ms]").astype(np.int64)
    rates = pd.to_numeric(frame[rate_col], errors="coerce").to_numpy(np.float64)
    if not np.isfinite(rates).all():
        line = int(np.argmax(~np.isfinite(rates))) + 2
        raise DataError(f"{name}: line {line}: funding rate {frame[rate_col].iloc[line - 2]!r} is not a number")
    return FundingSeries(ms.tolist(), rates.tolist())
