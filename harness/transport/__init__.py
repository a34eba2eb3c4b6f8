"""How the host reaches a device. One interface; ``local`` runs the runner as a subprocess."""

from __future__ import annotations

from .base import Transport
from .local import LocalTransport

__all__ = ["LocalTransport", "Transport", "open_transport"]


def open_transport(profile: object, accept_new_host_key: bool = False) -> Transport:
    from ..errors import ConfigError
    from ..profiles import DeviceProfile

    assert isinstance(profile, DeviceProfile)
    if profile.transport == "local":
        return LocalTransport(profile)
    if profile.transport == "ssh":
        from .ssh import SshTransport

        return SshTransport(profile, accept_new_host_key=accept_new_host_key)
    raise ConfigError(profile.path, "transport", f"transport {profile.transport!r} is not available")
