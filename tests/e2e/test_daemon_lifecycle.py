"""``roost serve``: readiness over NOTIFY_SOCKET, reload on SIGHUP, graceful stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import stat
from pathlib import Path

from tests.conftest import write_instance
from tests.e2e.daemon import RoostDaemon, roost_cli


def test_start_reload_and_stop_with_systemd_notifications(tmp_path: Path) -> None:
    config = write_instance(tmp_path / "etc")
    daemon = RoostDaemon(config)
    try:
        ready = daemon.wait_ready()
        assert ready["STATUS"].startswith("serving")
        # first start created the self-signed certificate and said so
        cert, key = tmp_path / "etc/tls/cert.pem", tmp_path / "etc/tls/key.pem"
        assert cert.exists() and stat.S_IMODE(key.stat().st_mode) == 0o600
        assert "created a self-signed certificate for mx.roost.test" in daemon.log_text()
        control = tmp_path / "etc/lib/control.sock"
        assert stat.S_IMODE(control.stat().st_mode) == 0o600

        status = roost_cli(config, "status")
        assert status.returncode == 0, status.stderr
        assert f"pid {daemon.process.pid}" in status.stdout
        shown = roost_cli(config, "status", "--json")
        assert shown.returncode == 0, shown.stderr
        answer = json.loads(shown.stdout)
        assert answer["pid"] == daemon.process.pid
        assert answer["services"]["smtpd"]["sessions"] == 0
        assert [w["index"] for w in answer["workers"]] == list(range(len(answer["workers"])))

        daemon.signal(signal.SIGHUP)
        daemon.notify.wait_for("RELOADING=1")
        assert daemon.notify.wait_for("READY=1")["STATUS"] == "reloaded"

        # a broken main.cf: the reload is refused, the old settings stay
        config.write_text(config.read_text() + "message_size_limit = big\n")
        daemon.signal(signal.SIGHUP)
        after = daemon.notify.wait_for("READY=1")
        assert after["STATUS"] == "reload failed: keeping the running configuration"
        assert "reload failed, keeping the running configuration" in daemon.log_text()
        assert "message_size_limit: bad size value: 'big'" in daemon.log_text()
        assert daemon.process.poll() is None

        refused = roost_cli(config, "reload")
        assert refused.returncode == 1  # the CLI itself validates main.cf first
        assert "message_size_limit: bad size value" in refused.stderr

        config.write_text(config.read_text().replace("message_size_limit = big\n", ""))
        assert roost_cli(config, "reload").returncode == 0

        daemon.signal(signal.SIGTERM)
        daemon.notify.wait_for("STOPPING=1")
        assert daemon.process.wait(30) == 0
        assert not control.exists()
        assert "daemon stopped" in daemon.log_text()
    finally:
        daemon.kill()


def test_roost_stop_waits_for_the_daemon(tmp_path: Path) -> None:
    config = write_instance(tmp_path / "etc")
    with RoostDaemon(config) as daemon:
        result = roost_cli(config, "stop")
        assert result.returncode == 0, result.stderr
        assert daemon.process.wait(10) == 0


def test_second_daemon_on_the_same_instance_refuses_to_start(tmp_path: Path) -> None:
    config = write_instance(tmp_path / "etc")
    with RoostDaemon(config):
        second = roost_cli(config, "serve")
        assert second.returncode == 1
        assert "another roost daemon is running" in second.stderr


def test_invalid_configuration_exits_non_zero_with_file_and_line(tmp_path: Path) -> None:
    config = write_instance(tmp_path / "etc", "smtp_service_port = twenty-five\n")
    line = len(config.read_text().splitlines())
    result = roost_cli(config, "serve")
    assert result.returncode == 1
    assert f"roost: {config}:{line}: smtp_service_port: bad integer value" in result.stderr
    assert "Traceback" not in result.stderr
    check = roost_cli(config, "check")
    assert check.returncode == 1
    assert f"{config}:{line}: smtp_service_port" in check.stderr


def test_missing_configuration_file(tmp_path: Path) -> None:
    result = roost_cli(tmp_path / "nope.cf", "check")
    assert result.returncode == 1
    assert result.stderr == f"roost: {tmp_path}/nope.cf: configuration file does not exist\n"


def test_control_commands_without_a_daemon(tmp_path: Path) -> None:
    config = write_instance(tmp_path / "etc")
    result = roost_cli(config, "status")
    assert result.returncode == 1
    assert "is the roost daemon running?" in result.stderr
