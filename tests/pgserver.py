"""A real PostgreSQL server for the tests, started from Debian's binaries in a temporary folder.

``initdb`` and ``pg_ctl`` refuse to run as root, so as root the server runs as the ``postgres``
user Debian's package creates (as anyone else, as that user). It listens on 127.0.0.1 and a
free port, password authentication (scram-sha-256) for TCP, and is stopped and deleted at the
end. :func:`unavailable` says why none can be started here (then the tests skip, saying so).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

USER, DATABASE = "edgegate", "history"


def binaries() -> Path | None:
    """The folder with initdb, pg_ctl and psql: Debian's /usr/lib/postgresql/<version>/bin (its
    newest), else the one on PATH that has all three."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    found = shutil.which("initdb")
    folders = [Path(c) for c in candidates] + ([Path(found).resolve().parent] if found else [])
    return next((f for f in folders if all((f / tool).exists() for tool in ("initdb", "pg_ctl", "psql"))), None)


def unavailable() -> str | None:
    if binaries() is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "no postgres user to run the server as (apt-get install postgresql creates it)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'edgegate[postgresql]')"
    return None


@contextlib.contextmanager
def server(password: str) -> Iterator[str]:
    """Start a server with a database ``history`` owned by ``edgegate``/``password``; yield its URL."""
    folder = Path(tempfile.mkdtemp(prefix="edgegate-pg-"))
    port = _free_port()
    try:
        _own(folder)
        _as_owner([str(binaries() / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "--auth-local=trust",
                   "--auth-host=scram-sha-256", "-E", "UTF8"])
        _as_owner([str(binaries() / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "log"), "-w", "-o",
                   f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=100", "start"])
        psql = [str(binaries() / "psql"), "-h", str(folder), "-p", str(port), "-U", "postgres", "-q", "-c"]
        _as_owner([*psql, f"CREATE ROLE {USER} LOGIN PASSWORD '{password}'"])
        _as_owner([*psql, f"CREATE DATABASE {DATABASE} OWNER {USER}"])
        yield f"postgresql://{USER}:{password}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if (folder / "data" / "postmaster.pid").exists():
            _as_owner([str(binaries() / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop"], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _own(folder: Path) -> None:
    folder.chmod(0o755)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(folder, entry.pw_uid, entry.pw_gid)


def _as_owner(command: list[str], check: bool = True) -> None:
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} failed ({done.returncode}): {done.stderr.strip()[-600:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
