"""Suite files become pytest items: one per device x variant, failing alone when it breaks."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from edgegate.errors import ConfigError, EdgeGateError, VariantUnsupported
from edgegate.metrics import TASK_METRICS
from edgegate.profiles import DeviceProfile
from edgegate.suites import Suite, VariantSpec, load_suite
from edgegate.verdict import BLOCKED, INCONCLUSIVE, Verdict

from .extensions import final_verdict
from .recorder import recorder

SUITE_GLOBS = ("suite_*.yaml", "suite_*.yml")


class EdgeGateWarning(UserWarning):
    """Something in a profile or suite that does not stop the run but does not do what it says."""


class BlockedAsExpected(Exception):
    """An item declared ``expect: {blocked: ...}`` that was blocked: pytest reports it as xfailed."""


class SuiteFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        suite = load_suite(self.path)
        devices = recorder(self.config).profiles
        ordered = sorted(suite.variants, key=lambda v: v.name != suite.reference)
        for device in devices.values():
            _warn_inapplicable(device, suite)
            for variant in ordered:
                yield VariantItem.from_parent(self, name=item_name(variant.name, device.name),
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
        expected = variant.expected_blocked(device.name)
        if expected is not None and not recorder(self.config).settings.no_gate:
            # only a block raises BlockedAsExpected: a regression or an inconclusive number still fails
            self.add_marker(pytest.mark.xfail(reason=f"expected blocked: {expected.blocked}", strict=expected.strict,
                                              raises=BlockedAsExpected))

    def runtest(self) -> None:
        run = recorder(self.config).session
        try:
            # pytest_edgegate_verdict may make it stricter before it is recorded
            verdict = run.judge(self.suite, self.device, self.variant, review=partial(final_verdict, self))
        except VariantUnsupported as exc:
            run.record_unsupported(self.suite, self.device, self.variant, str(exc))
            self.user_properties.append(("edgegate.verdict", "unsupported"))
            if recorder(self.config).settings.unsupported == "fail":
                pytest.fail(f"unsupported on this device: {exc}", pytrace=False)
            pytest.skip(f"unsupported on this device: {exc}")
        except EdgeGateError as exc:
            run.record_error(self.suite, self.device, self.variant, str(exc))
            raise
        result = run.measure(self.suite, self.device, self.variant)
        for name, metric in result.metrics.items():
            self.user_properties.append((f"edgegate.{name}", metric.value if metric.value is not None else metric.note))
        outcome = "error" if result.errors else verdict.outcome
        self.user_properties.append(("edgegate.verdict", outcome))
        problems = verdict.messages(self.device.name, self.variant.name) if outcome != INCONCLUSIVE or \
            recorder(self.config).settings.inconclusive == "fail" else []
        problems += [f"{self.variant.name} on {self.device.name}: measurement failed: {e}" for e in result.errors]
        if outcome == INCONCLUSIVE:
            self.user_properties.append(("edgegate.inconclusive", "; ".join(verdict.inconclusive)))
        if problems and recorder(self.config).settings.no_gate:
            self.user_properties.append(("edgegate.not_gated", "; ".join(problems)))
        elif problems and self._blocked_as_expected(verdict, result.errors):
            raise BlockedAsExpected("\n".join(problems))
        elif problems:
            pytest.fail("\n".join(problems), pytrace=False)

    def _blocked_as_expected(self, verdict: Verdict, errors: list[str]) -> bool:
        """Blocked by its thresholds, as declared; a regression against its own baseline is news."""
        if self.variant.expected_blocked(self.device.name) is None or errors or verdict.outcome != BLOCKED:
            return False
        return not any(breach.threshold.kind == "baseline" for breach in verdict.breaches)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, (EdgeGateError, BlockedAsExpected)):
            prefix = "" if isinstance(excinfo.value, BlockedAsExpected) else f"{self.variant.name} on {self.device.name}: "
            return f"{prefix}{excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"{self.suite.name}: {self.variant.name} ({self.variant.recipe}) on {self.device.name}"


def _warn_inapplicable(device: DeviceProfile, suite: Suite) -> None:
    """A profile's limit on a metric this suite does not measure does not apply: say so, once."""
    measured = TASK_METRICS[suite.base_model.task]
    for metric in device.thresholds:
        if metric not in measured:
            warnings.warn(EdgeGateWarning(
                f"{device.path}: thresholds.{metric}: suite {suite.name} ({suite.base_model.task}) does not measure "
                f"{metric}; the limit does not apply to its items"), stacklevel=1)


def item_name(variant: str, device: str) -> str:
    return f"{variant}[{device}]"


class ItemDevices:
    """The device of each suite item, for the xdist controller, which collects nothing: from the
    suite files and the selected devices, as collection names the items (each suite read once)."""

    def __init__(self, rootpath: Path, devices: tuple[str, ...]) -> None:
        self.rootpath = rootpath
        self.devices = devices
        self._by_file: dict[str, dict[str, str]] = {}

    def of(self, nodeid: str) -> str | None:
        """The device of the item ``nodeid``; None for anything but a suite item."""
        path, _, name = nodeid.partition("::")
        if not is_suite_file(PurePosixPath(path).name):
            return None
        if path not in self._by_file:
            self._by_file[path] = self._items_of(path)
        return self._by_file[path].get(name.split("@", 1)[0])  # older pytest: xdist's "@group" suffix

    def _items_of(self, path: str) -> dict[str, str]:
        try:
            suite = load_suite(self.rootpath / path)
        except EdgeGateError:  # the workers report it
            return {}
        return {item_name(variant.name, device): device for variant in suite.variants for device in self.devices}


def is_suite_file(name: str) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(name, pattern) for pattern in SUITE_GLOBS)


__all__ = ["ConfigError", "SuiteFile", "VariantItem", "is_suite_file"]
