"""PostgreSQL's binary COPY format, built by numpy: fixed-width columns, no per-row Python objects.

Each column is a numpy array whose dtype is the column's binary wire type, big-endian:
``>i8`` bigint, ``>i4`` integer, ``>f8`` double precision, ``>f4`` real, ``u1`` boolean (0/1),
and ``timestamptz`` as ``>i8`` microseconds since 2000-01-01 UTC (use ``pg_timestamps``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags 0, header extension length 0
TRAILER = b"\xff\xff"
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z in Unix microseconds


def pg_timestamps(unix_us: np.ndarray) -> np.ndarray:
    """Unix microseconds → PostgreSQL timestamptz wire values."""
    out: np.ndarray = unix_us.astype(np.int64) - PG_EPOCH_US
    return out


def encode(columns: Sequence[tuple[str, np.ndarray | int | float, str]]) -> bytes:
    """``columns``: (name, values or one scalar for every row, wire dtype). Returns a whole COPY payload."""
    n = max((len(v) for _, v, _ in columns if isinstance(v, np.ndarray)), default=0)
    fields: list[tuple[str, str]] = [("nf", ">i2")]
    for name, _, dtype in columns:
        fields += [(f"len_{name}", ">i4"), (name, dtype)]
    rows = np.empty(n, np.dtype(fields))
    rows["nf"] = len(columns)
    for name, values, dtype in columns:
        rows[f"len_{name}"] = np.dtype(dtype).itemsize
        rows[name] = values
    return HEADER + rows.tobytes() + TRAILER
