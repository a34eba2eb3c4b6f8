"""EdgeGate: decide whether a compressed LLM may ship to an edge device."""

from __future__ import annotations

__version__ = "0.1.0"
