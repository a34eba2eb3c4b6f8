"""How the host reaches a device. One interface; ``local`` runs the runner as a subprocess.

Other transports come from installed distributions, entry point group ``edgegate.transports``: a
callable ``factory(profile, accept_new_host_key=False)`` returning a ``Transport``; a profile's
``transport:`` names it, and its settings are the profile's mapping of that name
(``profile.transport_settings``). EdgeGate registers ``local`` and ``ssh`` there too (``open_local``,
``open_ssh``) but opens them itself.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Transport
from .local import LocalTransport

__all__ = ["LocalTransport", "Transport", "open_local", "open_ssh", "open_transport"]


def open_transport(profile: object, accept_new_host_key: bool = False) -> Transport:
    from .. import plugins_registry
    from ..errors import ConfigError
    from ..profiles import DeviceProfile

    assert isinstance(profile, DeviceProfile)
    if profile.transport in BUILTIN:
        return BUILTIN[profile.transport](profile, accept_new_host_key=accept_new_host_key)
    if profile.transport not in plugins_registry.transport_kinds():
        raise ConfigError(profile.path, "transport", f"transport {profile.transport!r} is not available; known: "
                                                     f"{', '.join(plugins_registry.transport_kinds())}")
    return plugins_registry.transport_factory(profile.transport)(profile, accept_new_host_key=accept_new_host_key)


def open_local(profile: object, accept_new_host_key: bool = False) -> Transport:
    from ..profiles import DeviceProfile

    assert isinstance(profile, DeviceProfile)
    return LocalTransport(profile)


def open_ssh(profile: object, accept_new_host_key: bool = False) -> Transport:
    from ..profiles import DeviceProfile
    from .ssh import SshTransport  # paramiko: imported for SSH devices only

    assert isinstance(profile, DeviceProfile)
    return SshTransport(profile, accept_new_host_key=accept_new_host_key)


BUILTIN: dict[str, Callable[..., Transport]] = {"local": open_local, "ssh": open_ssh}
