"""``roost conf`` behaves like postconf, and ``-e`` keeps the rest of main.cf byte for byte."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import ROOST, ROOT

ORIGINAL = (
    "# Roost main.cf\r\n"  # CRLF on purpose: the editor must keep line endings
    "myhostname = mx.example.com\r\n"
    "\r\n"
    "# trusted networks\r\n"
    "mynetworks = 127.0.0.0/8,\r\n"
    "    [::1]/128\r\n"
    "relayhost =    [old.example.com]:587   \r\n"
    "message_size_limit = 20000000"  # no newline at the end
)


def roost(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ROOST, "-c", str(config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


def test_edit_replaces_in_place_and_appends_keeping_every_other_byte(tmp_path: Path) -> None:
    path = tmp_path / "main.cf"
    path.write_bytes(ORIGINAL.encode())
    path.chmod(0o640)
    result = roost("conf", "-e", "mynetworks=10.0.0.0/8", "mydomain=example.com", config=path)
    assert result.returncode == 0, result.stderr
    assert path.read_bytes() == (
        b"# Roost main.cf\r\n"
        b"myhostname = mx.example.com\r\n"
        b"\r\n"
        b"# trusted networks\r\n"
        b"mynetworks = 10.0.0.0/8\r\n"
        b"relayhost =    [old.example.com]:587   \r\n"
        b"message_size_limit = 20000000\r\n"
        b"mydomain = example.com\r\n"
    )
    assert path.stat().st_mode & 0o777 == 0o640


def test_name_value_alone_edits_too(tmp_path: Path) -> None:
    path = tmp_path / "main.cf"
    path.write_text("relayhost = a\n")
    assert roost("conf", "relayhost=[b]:25", config=path).returncode == 0
    assert path.read_text() == "relayhost = [b]:25\n"


def test_remove(tmp_path: Path) -> None:
    path = tmp_path / "main.cf"
    path.write_text("relayhost = a\nmyhostname = x.test\nrelayhost = b\n   continued\n")
    assert roost("conf", "-X", "relayhost", config=path).returncode == 0
    assert path.read_text() == "myhostname = x.test\n"


def test_invalid_value_is_refused_and_the_file_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "main.cf"
    path.write_bytes(ORIGINAL.encode())
    result = roost("conf", "-e", "message_size_limit=lots", config=path)
    assert result.returncode == 1
    assert f"{path}:8: message_size_limit: bad size value: 'lots'" in result.stderr
    assert path.read_bytes() == ORIGINAL.encode()


def test_edit_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "main.cf"
    assert roost("conf", "-e", "myhostname=new.test", config=path).returncode == 0
    assert path.read_text() == "myhostname = new.test\n"


def test_show_set_defaults_expanded_and_named(tmp_path: Path) -> None:
    path = tmp_path / "main.cf"
    path.write_text("myhostname = mx.example.com\nmyorigin = $mydomain\n")
    shown = roost("conf", "-n", config=path)
    assert shown.stdout == "myhostname = mx.example.com\nmyorigin = $mydomain\n"
    assert roost("conf", "-x", "myorigin", config=path).stdout == "myorigin = example.com\n"
    assert roost("conf", "-d", "myorigin", config=path).stdout == "myorigin = $myhostname\n"
    everything = roost("conf", config=path).stdout.splitlines()
    assert "message_size_limit = 10240000" in everything
    assert everything == sorted(everything)
    unknown = roost("conf", "no_such_thing", config=path)
    assert unknown.returncode == 1
    assert "roost: warning: no_such_thing: unknown parameter" in unknown.stderr


def test_configuration_reference_is_current() -> None:
    generated = subprocess.run(
        [*ROOST, "conf", "--markdown"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    on_disk = (ROOT / "docs" / "configuration.md").read_text()
    assert generated == on_disk, "docs/configuration.md is stale: run `make docs`"


def test_help_of_every_subcommand_has_examples() -> None:
    for command in ("conf", "check", "serve", "reload", "stop", "status", "tls", "demo"):
        result = subprocess.run(
            [*ROOST, command, "--help"], capture_output=True, text=True, check=True, cwd=ROOT
        )
        assert "examples:" in result.stdout, command


def test_version() -> None:
    result = subprocess.run([*ROOST, "--version"], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "roost 0.1.0"
