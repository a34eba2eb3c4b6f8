"""One connection per device for the whole run, probed and given the runner once.

The measurements, the uploads and the device's lease all go over it (an SSH connection carries
each command on a channel of its own, so renewing the lease never waits on a measurement).
"""

from __future__ import annotations

from collections.abc import Callable

from . import devicecheck
from .devicecheck import DeviceReport
from .errors import DeviceNotReady, EdgeGateError
from .profiles import DeviceProfile
from .transport import Transport, open_transport


class DeviceConnections:
    def __init__(self, accept_new_host_keys: bool = False, log: Callable[[str], None] = lambda _: None) -> None:
        self.accept_new_host_keys = accept_new_host_keys
        self.log = log
        self.reports: dict[str, DeviceReport] = {}
        self._transports: dict[str, Transport] = {}
        self._failures: dict[str, EdgeGateError] = {}

    def transport(self, device: DeviceProfile) -> Transport:
        """The device's connection (opened on first use; not probed)."""
        if device.name not in self._transports:
            self._transports[device.name] = open_transport(device, self.accept_new_host_keys)
        return self._transports[device.name]

    def ready(self, device: DeviceProfile) -> Transport:
        """The device's transport after a successful probe and runner deploy (once per device).

        A device that failed this once fails every later item at once with the same reason,
        instead of each one waiting for its own timeouts.
        """
        if device.name in self._failures:
            raise self._failures[device.name]
        transport = self.transport(device)
        if device.name in self.reports:
            return transport
        try:
            report = devicecheck.probe(device.name, transport, device.execution_providers, device.threads)
            if not report.ready:
                raise DeviceNotReady(report.explain())
            if devicecheck.runner_too_old(report.facts) is None:  # else every variant is unsupported there
                transport.ensure_runner()
        except EdgeGateError as exc:
            self._failures[device.name] = exc
            raise
        self.log(report.explain())
        self.reports[device.name] = report
        return transport

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()
