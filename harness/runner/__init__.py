"""The on-device runner.

This package is shipped to devices on its own: it imports nothing from the rest of EdgeGate and
needs only python, numpy, onnxruntime and psutil. It reads one job (JSON) on stdin and streams
one JSON object per line on stdout, so a lost connection loses at most the measurement in flight.
"""
