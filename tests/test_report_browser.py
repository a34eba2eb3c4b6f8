"""The report in a real browser: Debian's headless Chromium loads it from disk, offline."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edgegate.report import render_run
from test_report import make_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]


def chromium(tmp_path: Path, page: Path, *action: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *action, page.as_uri()],
                          capture_output=True, text=True, timeout=90)


def test_report_renders_verdict_and_tables_without_console_errors(tmp_path: Path) -> None:
    page = render_run(make_run(tmp_path), "r1", tmp_path / "reports")
    dom = chromium(tmp_path, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="overall" class="verdict blocked"' in dom.stdout
    assert '<table id="verdicts">' in dom.stdout and '<table id="metrics" class="sortable">' in dom.stdout
    assert "decode_ms = 12.5 ms &gt; limit 10" in dom.stdout
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    shot = tmp_path / "report.png"
    taken = chromium(tmp_path, page, "--window-size=1400,1000", f"--screenshot={shot}")
    assert taken.returncode == 0 and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_a_script_error_would_be_caught(tmp_path: Path) -> None:
    """The console check above can fail: a page with a broken script shows up on stderr."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>notDefined();</script></body></html>")
    result = chromium(tmp_path, page, "--dump-dom")
    assert any(":CONSOLE" in line and "notDefined" in line for line in result.stderr.splitlines())
