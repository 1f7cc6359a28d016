"""The retry policy of the LLM client: what is retried, and how long to wait before the next attempt."""

from __future__ import annotations

import email.utils
import random
import time
from typing import Any

# 408 request timeout, 409 conflict, 429 rate limit, and every 5xx are transient; other 4xx are final.
TRANSIENT_4XX = (408, 409, 429)


def is_transient_status(status: int) -> bool:
    return status in TRANSIENT_4XX or status >= 500


def retry_after_seconds(headers: Any) -> float | None:
    """The server's `retry-after-ms` / `Retry-After` (seconds or an HTTP date), if any."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    try:
        if value is not None:
            return float(value) / 1000
        value = headers.get("retry-after")
        return None if value is None else float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, parsed.timestamp() - time.time())


def backoff_delay(attempt: int, retry_after: float | None, base_s: float, cap_s: float) -> float:
    """Seconds before attempt `attempt + 1`: at least Retry-After when given (capped at max(cap, 1 s)),
    else exponential `base·2^(attempt−1)` capped, with jitter."""
    if retry_after is not None:
        return min(retry_after, max(cap_s, 1.0)) * (1 + 0.1 * random.random())
    return min(cap_s, base_s * 2 ** (attempt - 1)) * (0.5 + 0.5 * random.random())
