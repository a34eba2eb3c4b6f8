"""Power sensors. Only the absence of one is implemented so far, and it says so."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .measure import Event, metric


def power(settings: dict[str, Any]) -> Iterator[Event]:
    kind = settings.get("kind", "none")
    if kind == "none":
        yield metric("power_w", None, "W", note="unavailable: no sensor (the device profile names none)")
        return
    yield metric("power_w", None, "W", note=f"unavailable: the {kind!r} sensor is not supported by this runner yet")

