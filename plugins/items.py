"""Suite files become pytest items: one per device x variant, failing alone when it breaks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from edgegate.errors import ConfigError, EdgeGateError
from edgegate.profiles import DeviceProfile
from edgegate.suites import Suite, VariantSpec, load_suite

from .recorder import recorder

SUITE_GLOBS = ("suite_*.yaml", "suite_*.yml")


class SuiteFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        suite = load_suite(self.path)
        devices = recorder(self.config).profiles
        ordered = sorted(suite.variants, key=lambda v: v.name != suite.reference)
        for device in devices.values():
            for variant in ordered:
                yield VariantItem.from_parent(self, name=f"{variant.name}[{device.name}]",
                                              suite=suite, device=device, variant=variant)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, EdgeGateError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)


class VariantItem(pytest.Item):
    """Builds (or reuses) the variant, measures it on the device, checks its thresholds."""

    def __init__(self, *, suite: Suite, device: DeviceProfile, variant: VariantSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.device = device
        self.variant = variant
        self.add_marker(pytest.mark.edgegate(device=device.name, variant=variant.name))
        self.add_marker(pytest.mark.xdist_group(device.name))  # a device's items share one worker and its reference

    def runtest(self) -> None:
        run = recorder(self.config).session
        try:
            breaches = run.judge(self.suite, self.device, self.variant)
        except EdgeGateError as exc:
            run.record_error(self.suite, self.device, self.variant, str(exc))
            raise
        result = run.measure(self.suite, self.device, self.variant)
        for name, metric in result.metrics.items():
            self.user_properties.append((f"edgegate.{name}", metric.value if metric.value is not None else metric.note))
        problems = [b.message(self.device.name, self.variant.name) for b in breaches]
        problems += [f"{self.variant.name} on {self.device.name}: measurement failed: {e}" for e in result.errors]
        if problems and recorder(self.config).settings.no_gate:
            self.user_properties.append(("edgegate.not_gated", "; ".join(problems)))
        elif problems:
            pytest.fail("\n".join(problems), pytrace=False)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, EdgeGateError):
            return f"{self.variant.name} on {self.device.name}: {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"{self.suite.name}: {self.variant.name} ({self.variant.recipe}) on {self.device.name}"


def is_suite_file(name: str) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(name, pattern) for pattern in SUITE_GLOBS)


__all__ = ["ConfigError", "SuiteFile", "VariantItem", "is_suite_file"]
