"""The helper child's own check of a session request's login (roost.daemon.handoff).

:func:`verified_user` runs as root in the privileged helper's child, before it becomes the
user; here it runs as whoever runs the tests, against a real passwd-file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from roost.auth.passwdfile import hash_password
from roost.config import Settings, load_settings
from roost.daemon.handoff import HandOffFailed, verified_user

PASSWORD = "correct horse 5"


def _settings(tmp_path: Path, backends: str = "") -> Settings:
    users = tmp_path / "users"
    hashed = hash_password(PASSWORD, "SHA256-CRYPT")
    users.write_text(
        f"alice:{hashed}:4321:4321::{tmp_path}/alice::\n"
        f"bob:{hashed}:4322:4322::{tmp_path}/bob::\n"
        f"carol:{hashed}:4323:4323::{tmp_path}/carol::allow_nets=192.0.2.0/24\n"
    )
    main_cf = tmp_path / "main.cf"
    main_cf.write_text(f"auth_backends = {backends or f'passwd-file:{users}'}\n")
    settings, _ = load_settings(main_cf)
    return settings


def _failure(settings: Settings, auth: object, uid: int, remote: str = "127.0.0.1") -> str:
    with pytest.raises(HandOffFailed) as caught:
        verified_user(settings, auth, uid, remote, "imap")
    return caught.value.kind


def test_the_login_and_password_must_be_right_and_name_the_uid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    caplog.set_level(logging.INFO)
    auth: dict[str, object] = {"login": "ALICE", "password": PASSWORD}
    user = verified_user(settings, auth, 4321, "127.0.0.1", "imap")
    assert (user.login, user.uid, user.home) == ("alice", 4321, f"{tmp_path}/alice")
    assert auth == {}  # the password is taken out of the request
    assert _failure(settings, {"login": "alice", "password": "wrong"}, 4321) == "auth-failed"
    assert _failure(settings, {"login": "nobody", "password": PASSWORD}, 4321) == "auth-failed"
    # bob's own password does not give a session of alice's uid
    assert _failure(settings, {"login": "bob", "password": PASSWORD}, 4321) == "auth-failed"
    # allow_nets is checked against the client's address, as in the worker
    assert _failure(settings, {"login": "carol", "password": PASSWORD}, 4323) == "auth-failed"
    assert verified_user(settings, {"login": "carol", "password": PASSWORD}, 4323, "192.0.2.9")
    failed = [r.getMessage() for r in caplog.records if "session refused" in r.getMessage()]
    assert len(failed) == 4, failed
    assert failed[2].startswith("imap-login: session refused (auth failed): user=<bob>, uid=4321")
    assert "bob has uid 4322" in failed[2]
    assert PASSWORD not in caplog.text and "wrong" not in caplog.text


def test_a_request_without_a_password_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert _failure(settings, None, 4321) == "refused"
    assert _failure(settings, {"login": "alice"}, 4321) == "refused"
    assert _failure(settings, {"login": "alice", "password": 1}, 4321) == "refused"
    assert _failure(settings, {"login": "", "password": PASSWORD}, 4321) == "refused"
    assert _failure(settings, {"login": "alice", "password": ""}, 4321) == "auth-failed"


def test_a_user_database_that_cannot_answer_is_temporary(tmp_path: Path) -> None:
    missing = _settings(tmp_path, f"passwd-file:{tmp_path}/missing")
    assert _failure(missing, {"login": "alice", "password": PASSWORD}, 4321) == "temporary"
    main_cf = tmp_path / "empty.cf"
    main_cf.write_text("")
    empty, _ = load_settings(main_cf)
    assert _failure(empty, {"login": "alice", "password": PASSWORD}, 4321) == "temporary"
