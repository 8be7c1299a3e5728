"""The process's dotlock registry holds entries only for locks in use: a daemon that
opens (and locks) many mailboxes over its life does not keep one entry per mailbox."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from roost.store import ChangeBus, MailStore, StoreMode
from roost.store import dotlock as dotlock_module


def _entries_under(root: Path) -> list[str]:
    prefix = os.fspath(root)
    return [path for path in dotlock_module._registry if path.startswith(prefix)]


def _templates(mailbox_dir: Path) -> list[str]:
    return [name for name in os.listdir(mailbox_dir / "tmp") if name.startswith(".")]


def test_registry_stays_bounded_over_many_mailboxes(tmp_path: Path) -> None:
    store = MailStore(tmp_path / "Maildir", fsync=False, bus=ChangeBus())
    names = [f"box{n}" for n in range(60)]
    for name in names:
        store.create(name)
        store.subscribe(name)  # replace_file: the subscriptions file's lock
        with store.open(name) as box:
            uid = box.append(b"Subject: x\r\n\r\nbody\r\n")
            box.sync()
            box.store_flags([uid], ["\\Deleted", "$Label"], StoreMode.ADD)  # keywords file
            assert box.expunge([uid]) == [uid]
            assert _entries_under(tmp_path)  # the open mailbox keeps its template
            assert _templates(store.mailbox_path(name))
        assert _entries_under(tmp_path) == []
        assert _templates(store.mailbox_path(name)) == []
    # Opened again (and by several threads at once): entries come and go again.
    errors: list[BaseException] = []

    def work(part: list[str]) -> None:
        try:
            for _ in range(3):
                for name in part:
                    with store.open(name) as box, store.open(name) as other:
                        box.append(b"Subject: y\r\n\r\nbody\r\n")
                        other.sync()
                    store.unsubscribe(name)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(names[n::3],)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _entries_under(tmp_path) == []
    for name in names:
        assert _templates(store.mailbox_path(name)) == []
        with store.open(name, readonly=True) as box:
            assert len(box) == 3


def test_template_outlives_a_closed_user_while_another_keeps_it(tmp_path: Path) -> None:
    store = MailStore(tmp_path / "Maildir", fsync=False, bus=ChangeBus())
    first = store.open("INBOX")
    second = store.open("INBOX")
    first.append(b"Subject: a\r\n\r\nbody\r\n")
    directory = store.mailbox_path("INBOX")
    [template] = _templates(directory)
    first.close()
    assert _templates(directory) == [template]
    second.append(b"Subject: b\r\n\r\nbody\r\n")
    assert _templates(directory) == [template]  # still the same per-process template
    second.close()
    assert _templates(directory) == []
    assert _entries_under(tmp_path) == []


def test_a_suspended_mailbox_gives_back_its_template_until_its_next_write(
    tmp_path: Path,
) -> None:
    store = MailStore(tmp_path / "Maildir", fsync=False, bus=ChangeBus())
    with store.open("INBOX") as box:
        box.append(b"Subject: x\r\n\r\nbody\r\n")
        assert _entries_under(tmp_path) and _templates(store.root)
        box.suspend()  # an idle session: no registry entry, no template file
        assert _entries_under(tmp_path) == []
        assert _templates(store.root) == []
        box.messages()  # a read does not take it again
        assert _entries_under(tmp_path) == []
        box.append(b"Subject: y\r\n\r\nbody\r\n")  # the next write does
        assert _entries_under(tmp_path) and _templates(store.root)
    assert _entries_under(tmp_path) == []
    assert _templates(store.root) == []
