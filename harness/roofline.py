"""A decoder's decode speed against the ceiling memory bandwidth puts on it: every decode step
reads the weights once, so tok/s can be at most bandwidth / weight bytes read per token."""

from __future__ import annotations

from .profiles import DeviceProfile
from .results import MetricResult, VariantResult
from .variants.factory import Artifact


class Roofline:
    """Roofline metrics per variant; the weight bytes of each ONNX graph are read once per run."""

    def __init__(self) -> None:
        self._weight_bytes: dict[str, int] = {}

    def metrics(self, device: DeviceProfile, artifact: Artifact, result: VariantResult,
                measured_on: VariantResult | None) -> list[MetricResult]:
        """``measured_on``: the result that measured the device's bandwidth (the reference's)."""
        weight_bytes = self.weight_bytes(artifact)
        if weight_bytes is None:
            why = f"unavailable: the {artifact.recipe} recipe records no weight bytes read per token"
            return [MetricResult("weights_mb_per_token", None, "MB", note=why),
                    MetricResult("roofline_fraction", None, "", note=why)]
        metrics = [MetricResult("weights_mb_per_token", weight_bytes / 1e6, "MB")]
        bandwidth, source = _bandwidth(device, measured_on)
        decode = result.metrics.get("decode_tok_s")
        if bandwidth is None or decode is None or decode.value is None:
            note = "unavailable: no memory bandwidth (set memory_bandwidth_gbs in the profile)" if bandwidth is None \
                else "unavailable: decode not measured"
            return metrics + [MetricResult("roofline_fraction", None, "", note=note)]
        ceiling = bandwidth * 1e9 / weight_bytes
        basis = f"{bandwidth:.1f} GB/s ({source}) / {weight_bytes / 1e6:.0f} MB per token"
        return metrics + [MetricResult("decode_ceiling_tok_s", ceiling, "tok/s", note=basis),
                          MetricResult("roofline_fraction", decode.value / ceiling, "", note=basis,
                                       disturbed=decode.disturbed)]

    def weight_bytes(self, artifact: Artifact) -> int | None:
        """Bytes of weights one decode step reads: from the ONNX graph, or as the recipe of another
        runtime's file recorded it (None where it did not)."""
        if artifact.runtime != "onnxruntime":
            recorded = artifact.manifest.get("facts", {}).get("weight_bytes_per_token")
            return int(recorded) if recorded else None
        if artifact.key not in self._weight_bytes:
            import onnx

            from .variants.graph_passes import weight_bytes_per_token

            graph = onnx.load(str(artifact.model), load_external_data=False)
            self._weight_bytes[artifact.key] = weight_bytes_per_token(graph)
        return self._weight_bytes[artifact.key]


def _bandwidth(device: DeviceProfile, measured_on: VariantResult | None) -> tuple[float | None, str]:
    if device.memory_bandwidth_gbs:
        return device.memory_bandwidth_gbs, "the profile's memory_bandwidth_gbs, a spec-sheet figure"
    measured = measured_on.metrics.get("memory_bandwidth_gbs") if measured_on else None
    return (measured.value, "measured on the device") if measured and measured.value else (None, "")
