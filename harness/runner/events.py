"""The one event shape the runner streams: a JSON object per line."""

from __future__ import annotations

from typing import Any

Event = dict[str, Any]


def metric(name: str, value: float | None, unit: str, samples: list[float] | None = None, note: str | None = None) -> Event:
    return {"event": "metric", "name": name, "value": value, "unit": unit, "samples": samples, "note": note}
