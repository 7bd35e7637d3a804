"""Sleep durations: milliseconds, or Flowcraft's strings ("500ms", "5s", "1m", "2h", "1d")."""

from __future__ import annotations

import math
import re
from typing import Any

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
ACCEPTED_FORMS = 'a number of milliseconds >= 0, or a string such as "500ms", "5s", "1m", "2h", "1d"'


def duration_ms(value: Any) -> float:
    """The duration in milliseconds; ValueError naming the accepted forms for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            return float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return float(int(match.group(1)) * _UNIT_MS[match.group(2)])
    raise ValueError(f"duration {value!r} is not {ACCEPTED_FORMS}")
