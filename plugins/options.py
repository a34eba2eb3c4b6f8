"""Command-line options, defined once; ``add_options`` takes any ``addoption``-like callable."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgegate.errors import ConfigError
from edgegate.profiles import DeviceProfile, ProfileCatalog
from edgegate.store_sql import history_location

DEFAULT_DEVICE = "local"
ALL_DEVICES = "all"
TAG_PREFIX = "tag:"
INCONCLUSIVE_CHOICES = ("fail", "pass")
UNSUPPORTED_CHOICES = ("skip", "fail")


def add_options(addoption: Callable[..., Any], prefix: str = "--edgegate-") -> None:
    addoption("--device", action="append", dest="edgegate_devices", metavar="NAME", default=None,
              help=f"device profile to measure on; repeat for several, '{ALL_DEVICES}' for every profile, "
                   f"'{TAG_PREFIX}TAG' for those tagged TAG (default: {DEFAULT_DEVICE}); with pytest-xdist, "
                   "-n auto gives each device its own worker")
    addoption(f"{prefix}lease-wait", dest="edgegate_lease_wait", metavar="SECONDS", type=float, default=None,
              help="how long to wait for a device another run holds (default: the profile's lease.wait_s, "
                   "else 1800; 0 fails at once, naming the holder)")
    addoption(f"{prefix}profiles", dest="edgegate_profiles", metavar="DIR", default=None,
              help="folder of device profiles (default: <rootdir>/device_profiles)")
    addoption(f"{prefix}history", dest="edgegate_history", metavar="FILE_OR_URL", default=None,
              help="history store: a SQLite file or a postgresql://user@host/db URL shared by several machines "
                   "(default: $EDGEGATE_HISTORY, else <rootdir>/reports/history.sqlite; keep a password in "
                   "the environment variable, never on the command line)")
    addoption(f"{prefix}reports", dest="edgegate_reports", metavar="DIR", default=None,
              help="where HTML reports go (default: <rootdir>/reports)")
    addoption(f"{prefix}cache", dest="edgegate_cache", metavar="DIR", default=None,
              help="variant build cache (default: $EDGEGATE_CACHE_DIR or ~/.cache/edgegate)")
    addoption(f"{prefix}templates", dest="edgegate_templates", metavar="DIR", default=None,
              help="folder with a report.html.j2 that replaces the built-in report template")
    addoption(f"{prefix}baseline", dest="edgegate_baseline", metavar="SPEC", default=None,
              help="compare with this baseline: a run id, git ref or tag (default: the pinned baseline, "
                   "else the last passing run on main)")
    addoption(f"{prefix}inconclusive", dest="edgegate_inconclusive", choices=INCONCLUSIVE_CHOICES, default="fail",
              help="what an inconclusive item does (a judged latency whose timed region stayed disturbed after "
                   "re-measuring): 'fail' it, saying inconclusive (default: a night cannot go green on an "
                   "unjudged number), or 'pass' it; either way it is recorded as inconclusive, never a baseline")
    addoption(f"{prefix}unsupported", dest="edgegate_unsupported", choices=UNSUPPORTED_CHOICES, default="skip",
              help="what an item does whose variant the device cannot run (found before upload: too old a "
                   "Python or runtime, an operator without a kernel there): 'skip' it with the reason (default: "
                   "the variant cannot ship to that device, and nothing regressed), or 'fail' it")
    addoption("--no-gate", dest="edgegate_no_gate", action="store_true", default=False,
              help="measure, record and report, but fail no test on thresholds or regressions")
    addoption(f"{prefix}accept-new-host-keys", dest="edgegate_accept_new_host_keys", action="store_true",
              default=False, help="trust and record the SSH host key of a device seen for the first time")


@dataclass(frozen=True)
class Settings:
    devices: tuple[str, ...]
    profiles_dir: Path
    history: Path | str  # a SQLite file, or a PostgreSQL URL
    reports_dir: Path
    cache_dir: Path
    rootdir: Path
    accept_new_host_keys: bool = False
    baseline: str | None = None
    no_gate: bool = False
    templates: Path | None = None
    lease_wait_s: float | None = None
    inconclusive: str = "fail"  # one of INCONCLUSIVE_CHOICES
    unsupported: str = "skip"  # one of UNSUPPORTED_CHOICES
    catalog: ProfileCatalog | None = field(default=None, compare=False)  # the profiles, each read once per run

    def profile(self, name: str) -> DeviceProfile:
        return (self.catalog or ProfileCatalog(self.profiles_dir)).get(name)


def settings_from(getoption: Callable[[str], Any], rootdir: Path) -> Settings:
    def path(name: str, default: Path) -> Path:
        value = getoption(name)
        return Path(value).expanduser().resolve() if value else default

    cache_default = Path(os.environ.get("EDGEGATE_CACHE_DIR") or Path.home() / ".cache" / "edgegate")
    profiles_dir = path("edgegate_profiles", rootdir / "device_profiles")
    catalog = ProfileCatalog(profiles_dir)
    return Settings(
        devices=resolve_devices(getoption("edgegate_devices") or [DEFAULT_DEVICE], catalog),
        profiles_dir=profiles_dir,
        history=history_location(getoption("edgegate_history"), rootdir / "reports" / "history.sqlite"),
        reports_dir=path("edgegate_reports", rootdir / "reports"),
        cache_dir=path("edgegate_cache", cache_default.expanduser()),
        rootdir=rootdir,
        accept_new_host_keys=bool(getoption("edgegate_accept_new_host_keys")),
        baseline=getoption("edgegate_baseline"),
        no_gate=bool(getoption("edgegate_no_gate")),
        templates=path("edgegate_templates", None) if getoption("edgegate_templates") else None,
        lease_wait_s=getoption("edgegate_lease_wait"),
        inconclusive=getoption("edgegate_inconclusive") or "fail",
        unsupported=getoption("edgegate_unsupported") or "skip",
        catalog=catalog,
    )


def resolve_devices(selectors: list[str], catalog: ProfileCatalog) -> tuple[str, ...]:
    """Profile names for ``--device`` values (a name, ``all``, ``tag:TAG``), in order, each once.

    Names are checked later (an unknown one lists the registered ones); ``all`` and tags must
    match at least one profile.
    """
    names: list[str] = []
    for selector in selectors:
        if selector == ALL_DEVICES:
            names += _matching(catalog, lambda tags: True, "no device profiles registered")
        elif selector.startswith(TAG_PREFIX):
            tag = selector[len(TAG_PREFIX):]
            names += _matching(catalog, lambda tags, tag=tag: tag in tags, f"no device profile has tag {tag!r}")
        else:
            names.append(selector)
    return tuple(dict.fromkeys(names))


def _matching(catalog: ProfileCatalog, wanted: Callable[[tuple[str, ...]], bool], none_found: str) -> list[str]:
    tags = catalog.tags()
    found = [name for name, tagged in tags.items() if wanted(tagged)]
    if not found:
        in_use = sorted({tag for tagged in tags.values() for tag in tagged})
        raise ConfigError(catalog.directory, "--device", f"{none_found}; tags in use: {', '.join(in_use) or 'none'}")
    return found
