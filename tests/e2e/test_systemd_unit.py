"""The shipped unit passes ``systemd-analyze verify`` with no warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_program


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    analyze = require_program("systemd-analyze")
    roost = Path(sys.executable).parent / "roost"
    unit = tmp_path / "roost.service"
    unit.write_text(unit_text.replace("/opt/roost/bin/roost", str(roost)))
    return subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)


@pytest.mark.parametrize("unit", ["roost.service", "roost-vmail.service"])
def test_unit_verifies_cleanly(tmp_path: Path, unit: str) -> None:
    text = (ROOT / "etc" / unit).read_text()
    assert "Type=notify" in text and "ExecReload=" in text
    result = verify(text, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""


def test_virtual_user_unit_runs_without_root() -> None:
    text = (ROOT / "etc/roost-vmail.service").read_text()
    assert "User=vmail" in text
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in text
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in text


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    broken = (ROOT / "etc/roost.service").read_text().replace("Type=notify", "Type=notifyy")
    assert "Failed to parse service type" in verify(broken, tmp_path).stderr
