"""Folders (CREATE, DELETE, RENAME incl. INBOX), subscriptions, special-use, quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from roost.store import (
    DEFAULT_SPECIAL_USE,
    ChangeBus,
    InvalidMailboxName,
    MailboxExists,
    MailboxNotFound,
    MailStore,
    NotAllowed,
    OverQuota,
    StoreError,
    StoreMode,
    UnsupportedSpecialUse,
)


@pytest.fixture
def mail(tmp_path: Path) -> MailStore:
    return MailStore(tmp_path / "Maildir", fsync=False, bus=ChangeBus())


def names(mail: MailStore) -> dict[str, frozenset[str]]:
    return {info.name: info.attributes for info in mail.list_mailboxes()}


def test_new_store_has_an_empty_inbox(mail: MailStore) -> None:
    assert sorted(p.name for p in mail.root.iterdir()) == ["cur", "new", "tmp"]
    assert names(mail) == {"INBOX": frozenset({"\\HasNoChildren"})}
    assert mail.separator == "."
    with mail.open("inbox") as inbox:
        assert inbox.name == "INBOX"
        assert inbox.messages() == []


def test_create_and_hierarchy(mail: MailStore) -> None:
    mail.create("Work.Projects.Roost")
    mail.create("Work.")  # trailing separator: "I will put mailboxes below it"
    mail.create("INBOX.Lists")
    assert names(mail) == {
        "INBOX": frozenset({"\\HasChildren"}),
        "INBOX.Lists": frozenset({"\\HasNoChildren"}),
        "Work": frozenset({"\\HasChildren"}),
        "Work.Projects": frozenset({"\\HasChildren", "\\Noselect", "\\NonExistent"}),
        "Work.Projects.Roost": frozenset({"\\HasNoChildren"}),
    }
    assert (mail.root / ".Work.Projects.Roost" / "cur").is_dir()
    assert (mail.root / ".INBOX.Lists").is_dir()
    with pytest.raises(MailboxExists):
        mail.create("Work")
    with pytest.raises(MailboxExists):
        mail.create("inbox")
    with pytest.raises(MailboxNotFound):
        mail.open("Work.Projects")


@pytest.mark.parametrize(
    "name", ["", ".", "a..b", ".a", "a/b", "~x", "a*", "50%", "tab\there", "x" * 300]
)
def test_invalid_names(mail: MailStore, name: str) -> None:
    with pytest.raises(InvalidMailboxName):
        mail.create(name)


def test_new_mailbox_gets_a_new_uidvalidity(mail: MailStore) -> None:
    mail.create("A")
    with mail.open("A") as box:
        first = box.uid_validity
    mail.delete("A")
    mail.create("A")
    with mail.open("A") as box:
        assert box.uid_validity > first


def test_delete(mail: MailStore) -> None:
    mail.create("Old")
    with mail.open("Old") as old:
        old.append(b"x\n")
    mail.delete("Old")
    assert "Old" not in names(mail)
    assert not (mail.root / ".Old").exists()
    assert not (mail.root / ".DOVECOT-TRASHED").exists()
    with pytest.raises(MailboxNotFound):
        mail.delete("Old")
    with pytest.raises(NotAllowed):
        mail.delete("INBOX")


def test_delete_with_inferiors_keeps_the_name_as_noselect(mail: MailStore) -> None:
    """RFC 9051 §6.3.5: messages go, the name stays while it has inferiors."""
    mail.create("Parent")
    mail.create("Parent.Child")
    with mail.open("Parent") as parent:
        parent.append(b"x\n")
    mail.delete("Parent")
    assert names(mail)["Parent"] == {"\\HasChildren", "\\Noselect", "\\NonExistent"}
    with mail.open("Parent.Child") as child:
        assert child.messages() == []
    with pytest.raises(NotAllowed):
        mail.delete("Parent")  # \Noselect with inferiors
    mail.delete("Parent.Child")
    assert "Parent" not in names(mail)


def test_deleted_mailbox_fails_open_sessions(mail: MailStore) -> None:
    mail.create("Gone")
    with mail.open("Gone") as gone:
        mail.delete("Gone")
        with pytest.raises(MailboxNotFound):
            gone.sync()
        with pytest.raises(MailboxNotFound):
            gone.append(b"x\n")


def test_rename_with_children_keeps_uids_subscriptions_and_special_use(mail: MailStore) -> None:
    mail.create("Projects", special_use="\\Archive")
    mail.create("Projects.2024")
    mail.subscribe("Projects.2024")
    with mail.open("Projects.2024") as box:
        uid = box.append(b"x\n", ["\\Seen"])
        validity = box.uid_validity
    mail.rename("Projects", "Archive.Projects")
    assert set(names(mail)) == {"INBOX", "Archive", "Archive.Projects", "Archive.Projects.2024"}
    with mail.open("Archive.Projects.2024") as box:
        assert box.uid_validity == validity
        assert box.message(uid).flags == {"\\Seen"}
    assert mail.subscriptions() == ["Archive.Projects.2024"]
    assert mail.special_use() == {"Archive.Projects": "\\Archive"}


def test_rename_errors(mail: MailStore) -> None:
    mail.create("A")
    mail.create("B")
    mail.create("A.X")
    mail.create("B.X")
    with pytest.raises(MailboxExists):
        mail.rename("A", "B")
    mail.delete("B")
    with pytest.raises(MailboxExists):
        mail.rename("A", "B")  # B.X would be overwritten
    with pytest.raises(NotAllowed):
        mail.rename("A", "A.Y")
    with pytest.raises(MailboxNotFound):
        mail.rename("Nope", "Other")
    with pytest.raises(MailboxExists):
        mail.rename("A", "INBOX")
    assert {"A", "A.X", "B.X"} <= set(names(mail))


def test_rename_inbox_moves_its_messages(mail: MailStore) -> None:
    """RFC 9051 §6.3.6: INBOX stays, empty; its inferiors are not renamed."""
    mail.create("INBOX.Sub")
    with mail.open("INBOX") as inbox:
        first = inbox.append(b"one\n", ["\\Seen"])
        inbox.append(b"two\n")
        inbox.sync()
        mail.rename("INBOX", "Old Mail")
        changes = inbox.sync()
        assert changes.expunged == (first, first + 1)
        assert inbox.messages() == []
    with mail.open("Old Mail") as moved:
        assert [(m.uid, m.flags) for m in moved.messages()] == [
            (1, frozenset({"\\Seen"})),
            (2, frozenset()),
        ]
        assert moved.read_message_crlf(2) == b"two\r\n"
    assert "INBOX.Sub" in names(mail)
    with pytest.raises(MailboxExists):
        mail.rename("INBOX", "Old Mail")


def test_subscriptions(mail: MailStore) -> None:
    mail.create("Lists")
    mail.subscribe("Lists")
    mail.subscribe("Not There Yet")  # allowed (RFC 9051 §6.3.7)
    mail.subscribe("inbox")
    assert mail.subscriptions() == ["Lists", "Not There Yet", "INBOX"]
    assert "\\Subscribed" in names(mail)["Lists"]
    mail.delete("Lists")
    assert "Lists" in mail.subscriptions()  # RFC 9051: not removed unilaterally
    mail.unsubscribe("Lists")
    assert mail.subscriptions() == ["Not There Yet", "INBOX"]
    assert (mail.root / "subscriptions").read_text() == "V\t2\n\nNot There Yet\nINBOX\n"


def test_ensure_special_use(mail: MailStore) -> None:
    created = mail.ensure_special_use()
    assert created == ["Drafts", "Sent", "Trash", "Junk", "Archive"]
    assert mail.special_use() == {name: attr for name, attr in DEFAULT_SPECIAL_USE.items()}
    assert mail.subscriptions() == created
    infos = {info.name: info.special_use for info in mail.list_mailboxes()}
    assert infos["Sent"] == "\\Sent" and infos["INBOX"] is None
    assert mail.ensure_special_use() == []  # idempotent
    assert (mail.root / "roost-special-use").read_text().splitlines()[0] == "\\Archive\tArchive"


def test_ensure_special_use_respects_the_clients_choice(mail: MailStore) -> None:
    mail.create("Sent Items", special_use="\\sent")
    mail.create("Trash")
    assert mail.ensure_special_use({"Sent": "\\Sent", "Trash": "\\Trash"}) == []
    assert mail.special_use() == {"Sent Items": "\\Sent", "Trash": "\\Trash"}
    with pytest.raises(UnsupportedSpecialUse):
        mail.create("X", special_use="\\Spam")
    with pytest.raises(UnsupportedSpecialUse):
        mail.ensure_special_use({"Y": "\\Bogus"})


def test_status_without_loading_messages(mail: MailStore) -> None:
    with mail.open("INBOX") as inbox:
        inbox.append(b"one\n", ["\\Seen"])
        inbox.append(b"two\r\n", ["\\Deleted"])
        inbox.sync()
        inbox.store_flags([2], ["\\Flagged"], StoreMode.ADD)
        view_status = inbox.status()
    status = mail.status("INBOX")
    assert status.messages == 2
    assert status.unseen == 1
    assert status.deleted == 1
    assert status.uid_next == 3
    assert status.size == len(b"one\r\ntwo\r\n")
    assert status.highest_modseq >= view_status.highest_modseq
    assert status.uid_validity == view_status.uid_validity
    assert (status.messages, status.unseen, status.deleted, status.size) == (
        view_status.messages,
        view_status.unseen,
        view_status.deleted,
        view_status.size,
    )
    with pytest.raises(MailboxNotFound):
        mail.status("Nope")


def test_quota(tmp_path: Path) -> None:
    mail = MailStore(tmp_path / "Maildir", fsync=False, bus=ChangeBus(), quota=100)
    mail.create("Archive")
    with mail.open("INBOX") as inbox, mail.open("Archive") as archive:
        uid = inbox.append(b"x" * 60)
        inbox.sync()
        assert mail.quota_usage() == 60
        with pytest.raises(OverQuota):
            inbox.append(b"y" * 41)
        with pytest.raises(OverQuota):
            inbox.copy([uid], archive)  # a hard link counts again, as in Dovecot
        inbox.append(b"y" * 40)
        assert mail.quota_usage() == 100
        # no message left behind (the dotlock template of open mailboxes is a dot file)
        assert not [p for p in (mail.root / "tmp").iterdir() if not p.name.startswith(".")]
    assert not list((mail.root / "tmp").iterdir())
    assert OverQuota("x").temporary is False


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner_of_new_files(tmp_path: Path) -> None:
    mail = MailStore(tmp_path / "Maildir", uid=4321, gid=4322, fsync=False, bus=ChangeBus())
    mail.create("Sent")
    with mail.open("Sent") as sent:
        sent.append(b"x\n", ["$Junk"])
    for path in [mail.root, *mail.root.rglob("*")]:
        if path.name.endswith(("-wal", "-shm")):
            continue  # SQLite gives these the database file's owner itself
        assert (path.stat().st_uid, path.stat().st_gid) == (4321, 4322), path


def test_store_errors_say_whether_to_retry() -> None:
    assert StoreError("disk", temporary=True).temporary
    assert not MailboxNotFound("x").temporary
    error = StoreError.from_os_error(OSError(28, "No space left on device"), "write")
    assert isinstance(error, OverQuota)
