"""The one event shape the runner streams: a JSON object per line (every kind, typed: protocol.py)."""

from __future__ import annotations

import json
import sys
from typing import Any

Event = dict[str, Any]  # one of protocol.py's TypedDicts; built as a plain dict, as JSON gives it to the host


def metric(name: str, value: float | None, unit: str, samples: list[float] | None = None, note: str | None = None,
           **extra: Any) -> Event:
    """``extra``: ``disturbed`` (why the timed region was disturbed, or None), ``attempts`` (how
    often it was measured), ``unit_size`` (samples per independent unit, e.g. a decode round),
    ``unsupported`` (True: this runtime cannot give the metric by design, e.g. KL without logits)."""
    return {"event": "metric", "name": name, "value": value, "unit": unit, "samples": samples, "note": note, **extra}


def emit(event: Event) -> None:
    """One event to the host: a JSON line on stdout, flushed at once."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()
