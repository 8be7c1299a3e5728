"""Start-up choices that keep the daemon's processes small (docs/performance.md, "IMAP
memory, session 3"): services imported only when enabled, cryptography only on demand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from roost.config import load_settings
from roost.daemon.app import ensure_certificate
from roost.daemon.compose import FACTORIES, WORKER_FACTORIES
from roost.tls import TLSError


def _settings(tmp_path: Path, extra: str = "") -> Path:
    main_cf = tmp_path / "main.cf"
    main_cf.write_text(
        f"myhostname = mx.roost.test\nqueue_directory = {tmp_path}/spool\n"
        f"data_directory = {tmp_path}/lib\ntls_cert_file = {tmp_path}/tls/cert.pem\n"
        f"tls_key_file = {tmp_path}/tls/key.pem\n{extra}"
    )
    return main_cf


def test_the_self_signed_certificate_is_made_without_loading_cryptography(
    tmp_path: Path,
) -> None:
    main_cf = _settings(tmp_path)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from roost.config import load_settings\n"
        "from roost.daemon.app import ensure_certificate\n"
        f"settings, _ = load_settings(Path({str(main_cf)!r}))\n"
        "ensure_certificate(settings)\n"
        "assert 'cryptography' not in sys.modules, 'cryptography was loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert b"BEGIN CERTIFICATE" in (tmp_path / "tls" / "cert.pem").read_bytes()
    assert b"PRIVATE KEY" in (tmp_path / "tls" / "key.pem").read_bytes()


def test_a_certificate_that_cannot_be_written_is_reported_with_the_childs_reason(
    tmp_path: Path,
) -> None:
    (tmp_path / "tls").write_text("a file where the directory should be\n")
    settings, _ = load_settings(_settings(tmp_path))
    with pytest.raises(TLSError, match="cannot create a self-signed certificate: .*tls"):
        ensure_certificate(settings)


def test_disabled_services_are_not_imported(tmp_path: Path) -> None:
    main_cf = _settings(
        tmp_path,
        "master_service_disable = smtp, submission, submissions, pop3, pop3s, imaps, qmgr\n",
    )
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from roost.config import load_settings\n"
        "from roost.daemon.compose import FACTORIES, preload\n"
        f"settings, _ = load_settings(Path({str(main_cf)!r}))\n"
        "preload(settings)\n"
        "assert [f.enabled(settings) for f in FACTORIES] == [False, False, True, False]\n"
        "loaded = {m for m in ('roost.smtp.server', 'roost.pop3.server', 'aiosmtpd',\n"
        "    'roost.queue.service', 'dns', 'ldap3', 'cryptography') if m in sys.modules}\n"
        "assert not loaded, loaded\n"
        "assert 'roost.imap.server' in sys.modules and 'sqlite3' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_worker_factories_are_the_listener_services() -> None:
    assert [f.module for f in WORKER_FACTORIES] == [
        "roost.smtp.server",
        "roost.imap.server",
        "roost.pop3.server",
    ]
    assert FACTORIES[0].disable == "qmgr"


def test_the_image_is_made_immortal_where_cpython_can_and_sockets_stay_closable() -> None:
    # CPython 3.12/3.13: objects of the image keep their pages shared after the fork
    # (never counted); a socket (it has a finalizer) is still closed by its last
    # reference. Elsewhere (3.11) nothing changes. In a child: immortality is for good.
    code = (
        "import gc, os, socket, sys\n"
        "from roost.daemon.workers import immortalize_image\n"
        "class Thing:\n"
        "    pass\n"
        "thing, sock = Thing(), socket.socket()\n"
        "fd, before = sock.fileno(), sys.getrefcount(thing)\n"
        "count = immortalize_image()\n"
        "held = [thing] * 10\n"
        "if (3, 12) <= sys.version_info[:2] <= (3, 13):\n"
        "    assert count > 10000, count\n"
        "    assert sys.getrefcount(thing) == sys.getrefcount(Thing) == 2**32 - 1\n"
        "    assert sys.getrefcount(sock) < 10\n"
        "else:\n"
        "    assert count == 0\n"
        "    assert sys.getrefcount(thing) == before + 10\n"
        "del sock\n"
        "gc.collect()\n"
        "try:\n"
        "    os.fstat(fd)\n"
        "except OSError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('the socket was not closed')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
