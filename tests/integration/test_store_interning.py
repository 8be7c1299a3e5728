"""A login's store work interns no folder names (docs/performance.md, "IMAP idle memory,
session 8").

``pathlib`` interns every component of each path it parses (``sys.intern``). A name
interned only for the life of a ``Path`` leaves a used slot in the table of interned
strings when it dies, so names interned anew at every login filled that table in each
IMAP worker until it grew (~1 MiB a process). The special-use folders are checked at
every login and created at a user's first: neither may go through ``pathlib``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from roost.store.bus import ChangeBus
from roost.store.store import DEFAULT_SPECIAL_USE, MailStore


@pytest.fixture
def interned(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The strings given to ``sys.intern`` (as pathlib calls it) from now on."""
    seen: list[str] = []
    real = sys.intern

    def intern(text: str) -> str:
        seen.append(text)
        return real(text)

    monkeypatch.setattr(sys, "intern", intern)
    return seen


def folder_names(seen: list[str]) -> list[str]:
    return [text for text in seen if text.startswith(".")]


def test_first_login_creates_special_use_without_interning(
    tmp_path: Path, interned: list[str]
) -> None:
    store = MailStore(tmp_path / "Maildir", fsync=False, bus=ChangeBus())
    interned.clear()
    created = store.ensure_special_use(DEFAULT_SPECIAL_USE)
    assert sorted(created) == sorted(DEFAULT_SPECIAL_USE)
    assert all(store.exists(name) for name in DEFAULT_SPECIAL_USE)
    assert folder_names(interned) == []


def test_later_login_checks_special_use_without_interning(
    tmp_path: Path, interned: list[str]
) -> None:
    MailStore(tmp_path / "Maildir", fsync=False, bus=ChangeBus()).ensure_special_use(
        DEFAULT_SPECIAL_USE
    )
    store = MailStore(tmp_path / "Maildir", fsync=False, bus=ChangeBus())
    interned.clear()
    assert store.ensure_special_use(DEFAULT_SPECIAL_USE) == []
    assert store.exists("INBOX") and store.exists("inbox")
    assert not store.exists("Nothing")
    assert folder_names(interned) == []
    # The check itself sees through pathlib's spelling: a folder made as a Path counts.
    store.create("Other")
    assert store.exists("Other")
    assert (store.mailbox_path("Other") / "cur").is_dir()
