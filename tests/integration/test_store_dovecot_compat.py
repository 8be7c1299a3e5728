"""Dovecot Maildirs built by hand are read as Dovecot reads them, and roost writes what
Dovecot writes: UIDs, UIDVALIDITY, flags, keywords, folders, subscriptions."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import pytest

from roost.store import (
    ChangeBus,
    MailStore,
    StoreMode,
    decode_mutf7,
)

VALIDITY = 1275660208
GUID = "3085f01b7f11094c501100008c4a11c1"
MESSAGE = b"From: a@example.org\nSubject: one\n\nline 1\nline 2\n"


def maildir(path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def put(path: Path, content: bytes = MESSAGE, mtime: float = 1_276_528_487) -> Path:
    path.write_bytes(content)
    os.utime(path, (mtime, mtime))
    return path


def store(root: Path, **kwargs: object) -> MailStore:
    return MailStore(root, fsync=False, bus=ChangeBus(), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def dovecot_inbox(tmp_path: Path) -> Path:
    """An INBOX as Dovecot 2.3 leaves it."""
    root = maildir(tmp_path / "Maildir")
    size, vsize = len(MESSAGE), len(MESSAGE) + MESSAGE.count(b"\n")
    put(root / "cur" / f"1276528487.M364837P9451.kurkku,S={size},W={vsize}:2,S")
    put(root / "cur" / "1276533073.M242911P3632.kurkku:2,FRab", mtime=1_276_533_073)
    put(root / "new" / "1276533080.M1P2.kurkku", mtime=1_276_533_080)
    put(root / "cur" / "1276533099.M5P6.kurkku:2,T", mtime=1_276_533_099)  # not in uidlist
    (root / "dovecot-uidlist").write_text(
        f"3 V{VALIDITY} N25021 G{GUID}\n"
        f"25006 :1276528487.M364837P9451.kurkku,S={size},W={vsize}\n"
        f"25017 W{vsize} :1276533073.M242911P3632.kurkku:2,F\n"
        "25018 :1276533075.M0P0.kurkku\n"  # expunged long ago: no file
        "25020 P+legacy-uidl :1276533080.M1P2.kurkku\n"
    )
    (root / "dovecot-keywords").write_text("0 $Junk\n1 $NonJunk\n")
    return root


def test_reads_dovecot_uids_flags_and_keywords(dovecot_inbox: Path) -> None:
    vsize = len(MESSAGE) + MESSAGE.count(b"\n")
    with store(dovecot_inbox).open("INBOX", readonly=True) as inbox:
        assert inbox.uid_validity == VALIDITY
        messages = {m.uid: m for m in inbox.messages()}
        assert sorted(messages) == [25006, 25017, 25020, 25021]
        assert messages[25006].flags == {"\\Seen"}
        assert messages[25017].flags == {"\\Flagged", "\\Answered", "$Junk", "$NonJunk"}
        assert messages[25020].flags == frozenset()
        assert messages[25021].flags == {"\\Deleted"}  # new file: the next UID
        assert inbox.uid_next == 25022
        for message in messages.values():
            assert message.size == len(MESSAGE)
            assert message.vsize == vsize
            assert inbox.read_message_crlf(message.uid) == MESSAGE.replace(b"\n", b"\r\n")
        assert messages[25006].internal_date == 1_276_528_487
        assert messages[25017].internal_date == 1_276_533_073
        assert inbox.pop3_uidl(messages[25006]) == f"{25006:08X}{VALIDITY:08X}"
        assert inbox.pop3_uidl(messages[25020]) == "+legacy-uidl"  # Dovecot's P field
        assert inbox.keywords() == ["$Junk", "$NonJunk"]
        # EXAMINE leaves new/ alone.
        assert (dovecot_inbox / "new" / "1276533080.M1P2.kurkku").exists()
    uidlist = (dovecot_inbox / "dovecot-uidlist").read_text().splitlines()
    assert uidlist[0] == f"3 V{VALIDITY} N25021 G{GUID}"  # appended to, not rewritten
    assert uidlist[-1] == "25021 :1276533099.M5P6.kurkku"


def test_select_moves_new_to_cur_as_dovecot_does(dovecot_inbox: Path) -> None:
    with store(dovecot_inbox).open("INBOX") as inbox:
        assert inbox.recent == {25006, 25017, 25020, 25021}
        message = inbox.message(25020)
        assert not (dovecot_inbox / "new" / "1276533080.M1P2.kurkku").exists()
        assert (dovecot_inbox / "cur" / "1276533080.M1P2.kurkku:2,").exists()
        assert inbox.read_message_crlf(message.uid).startswith(b"From: a@example.org\r\n")
    with store(dovecot_inbox).open("INBOX") as again:
        assert again.recent == frozenset()  # the first session took \Recent


def test_reads_dovecot_folders_and_subscriptions(tmp_path: Path) -> None:
    root = maildir(tmp_path / "Maildir")
    for dirname in (".Sent", ".Lists.dovecot", ".Entw&APw-rfe", ".~bad&", ".DOVECOT-TRASHED"):
        maildir(root / dirname)
    (root / ".Lists.dovecot" / "dovecot-uidlist").write_text(f"3 V77 N3 G{GUID}\n")
    put(root / ".Lists.dovecot" / "cur" / "1.M1P1.host:2,S")
    (root / "subscriptions").write_text("INBOX\nSent\nLists.dovecot\nEntw&APw-rfe\n")
    mail = store(root)
    listing = {info.name: info.attributes for info in mail.list_mailboxes()}
    assert list(listing) == ["INBOX", "Entwürfe", "Lists", "Lists.dovecot", "Sent"]
    assert listing["Lists"] == {"\\HasChildren", "\\Noselect", "\\NonExistent"}
    assert listing["Lists.dovecot"] == {"\\HasNoChildren", "\\Subscribed"}
    assert listing["Entwürfe"] == {"\\HasNoChildren", "\\Subscribed"}
    assert mail.subscriptions() == ["INBOX", "Sent", "Lists.dovecot", "Entwürfe"]
    with mail.open("Lists.dovecot") as folder:
        assert folder.uid_validity == 77
        assert [m.uid for m in folder.messages()] == [3]
        assert folder.messages()[0].flags == {"\\Seen"}


def test_api_writes_what_dovecot_writes(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    mail = store(root)
    mail.create("Entwürfe")
    folder = root / ".Entw&APw-rfe"
    assert sorted(p.name for p in folder.iterdir()) == [
        "cur",
        "dovecot-uidlist",
        "maildirfolder",
        "new",
        "tmp",
    ]
    header = (folder / "dovecot-uidlist").read_text()
    assert re.fullmatch(r"3 V\d+ N1 G[0-9a-f]{32}\n", header)
    with mail.open("Entwürfe") as box:
        uid = box.append(
            b"Subject: x\r\n\r\nhello\r\n", ["\\Seen", "$Junk", "\\Draft"], 1_700_000_000
        )
        assert uid == 1
        [path] = (folder / "cur").iterdir()
        base, _, info = path.name.partition(":")
        assert info == "2,DSa"  # sorted by ASCII: system letters, then keyword letters
        assert re.fullmatch(r"\d+\.M\d+P\d+Q\d+R[0-9a-f]{8}\.[^:/]+,S=18,W=21", base)
        assert path.read_bytes() == b"Subject: x\n\nhello\n"  # LF on disk, as Dovecot
        assert path.stat().st_mtime == 1_700_000_000  # INTERNALDATE is the mtime
        assert (folder / "dovecot-keywords").read_text() == "0 $Junk\n"
        assert (folder / "dovecot-uidlist").read_text().splitlines()[-1] == f"1 :{base}"
        assert [m.uid for m in box.sync().added] == [uid]  # the session learns of it
        box.store_flags([uid], ["$NonJunk", "\\Flagged"], StoreMode.ADD)
        assert [p.name for p in (folder / "cur").iterdir()] == [f"{base}:2,DFSab"]
        assert (folder / "dovecot-keywords").read_text() == "0 $Junk\n1 $NonJunk\n"
        box.store_flags([uid], ["$junk", "\\draft"], StoreMode.REMOVE)
        assert [p.name for p in (folder / "cur").iterdir()] == [f"{base}:2,FSb"]
        box.store_flags([uid], ["\\Deleted"], StoreMode.ADD)
        assert box.expunge() == [uid]
        assert list((folder / "cur").iterdir()) == []
    assert not list((folder / "tmp").iterdir())
    assert not (folder / "dovecot-uidlist.lock").exists()


def test_passed_flag_and_unknown_letters_survive(tmp_path: Path) -> None:
    root = maildir(tmp_path / "Maildir")
    put(root / "cur" / "100.M1P1.host:2,PSz")  # P: passed; z: no keyword on file
    with store(root).open("INBOX") as inbox:
        [message] = inbox.messages()
        assert message.flags == {"\\Seen", "unknown-25"}  # Dovecot's name for it
        inbox.store_flags([message.uid], ["\\Flagged"], StoreMode.ADD)
    assert [p.name for p in (root / "cur").iterdir()] == ["100.M1P1.host:2,FPSz"]
    assert "25 unknown-25" in (root / "dovecot-keywords").read_text()


def test_keywords_beyond_26_live_in_the_index(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    mail = store(root)
    many = [f"kw{n:02d}" for n in range(30)]
    with mail.open("INBOX") as inbox:
        uid = inbox.append(b"x\n", many)
        assert inbox.sync().added[0].flags == frozenset(many)
        [path] = (root / "cur").iterdir()
        assert path.name.endswith(":2,abcdefghijklmnopqrstuvwxyz")
        # Another program renames the file (removes \Seen-less... adds S): index-only
        # keywords must survive the rescan.
        os.rename(path, path.with_name(path.name.replace(":2,", ":2,S")))
        changes = inbox.sync()
        assert changes.flags[0].flags == frozenset([*many, "\\Seen"])
    with mail.open("INBOX") as again:
        assert again.message(uid).flags == frozenset([*many, "\\Seen"])


def test_version_1_uidlist_is_upgraded(tmp_path: Path) -> None:
    root = maildir(tmp_path / "Maildir")
    put(root / "cur" / "1099999999.123.host:2,S")
    (root / "dovecot-uidlist").write_text("1 1100000000 5\n3 1099999999.123.host:2,S\n")
    with store(root).open("INBOX") as inbox:
        assert inbox.uid_validity == 1100000000
        assert [m.uid for m in inbox.messages()] == [3]
        assert inbox.uid_next == 5
    lines = (root / "dovecot-uidlist").read_text().splitlines()
    assert re.fullmatch(r"3 V1100000000 N5 G[0-9a-f]{32}", lines[0])
    # Dovecot caches the vsize of names without W= in the uidlist; so does roost.
    vsize = len(MESSAGE) + MESSAGE.count(b"\n")
    assert lines[1] == f"3 W{vsize} :1099999999.123.host"


def test_plain_maildir_without_dovecot_files(tmp_path: Path) -> None:
    """A Maildir from procmail or another server: UIDs in file-name order."""
    root = maildir(tmp_path / "Maildir")
    for name in ("1300000002.b.host", "1300000001.a.host", "1300000003.c.host"):
        put(root / "new" / name)
    with store(root).open("INBOX", readonly=True) as inbox:
        assert [m.base_name for m in inbox.messages()] == [
            "1300000001.a.host",
            "1300000002.b.host",
            "1300000003.c.host",
        ]
        assert [m.uid for m in inbox.messages()] == [1, 2, 3]
    lines = (root / "dovecot-uidlist").read_text().splitlines()
    assert lines[1:] == ["1 :1300000001.a.host", "2 :1300000002.b.host", "3 :1300000003.c.host"]


def test_lost_index_is_rebuilt_with_same_uids_and_higher_modseq(dovecot_inbox: Path) -> None:
    mail = store(dovecot_inbox)
    with mail.open("INBOX") as inbox:
        inbox.store_flags([25006], ["\\Flagged"], StoreMode.ADD)
        assert not inbox.sync()  # its own change is not reported again
        before = {m.uid: m.flags for m in inbox.messages()}
        modseq = inbox.highest_modseq
        assert modseq == inbox.message(25006).modseq
    for suffix in ("", "-wal", "-shm"):
        (dovecot_inbox / f"roost.index.sqlite{suffix}").unlink(missing_ok=True)
    with mail.open("INBOX") as inbox:
        assert {m.uid: m.flags for m in inbox.messages()} == before
        assert inbox.highest_modseq > modseq
        # The expunge history is gone: QRESYNC gets every UID that is not there.
        assert inbox.expunged_since(modseq) == [uid for uid in range(1, 25022) if uid not in before]


def test_corrupt_index_is_rebuilt(dovecot_inbox: Path) -> None:
    with store(dovecot_inbox).open("INBOX") as inbox:
        uids = [m.uid for m in inbox.messages()]
    (dovecot_inbox / "roost.index.sqlite").write_bytes(b"this is not SQLite" * 100)
    for suffix in ("-wal", "-shm"):
        (dovecot_inbox / f"roost.index.sqlite{suffix}").unlink(missing_ok=True)
    with store(dovecot_inbox).open("INBOX") as inbox:
        assert [m.uid for m in inbox.messages()] == uids


def test_lost_uidlist_is_rebuilt_from_the_index(dovecot_inbox: Path) -> None:
    mail = store(dovecot_inbox)
    with mail.open("INBOX") as inbox:
        uids = [m.uid for m in inbox.messages()]
    (dovecot_inbox / "dovecot-uidlist").unlink()
    with mail.open("INBOX") as inbox:
        assert inbox.uid_validity == VALIDITY
        assert [m.uid for m in inbox.messages()] == uids
    assert (dovecot_inbox / "dovecot-uidlist").read_text().startswith(f"3 V{VALIDITY} N25022 ")


def test_separate_index_directory(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    indexes = tmp_path / "indexes"
    mail = store(root, index_dir=indexes)
    mail.create("Sent")
    with mail.open("Sent") as sent:
        sent.append(b"x\n")
    with mail.open("INBOX"):
        pass
    assert (indexes / "roost.index.sqlite").exists()
    assert (indexes / ".Sent" / "roost.index.sqlite").exists()
    assert not (root / "roost.index.sqlite").exists()
    assert not (root / ".Sent" / "roost.index.sqlite").exists()
    db = sqlite3.connect(indexes / ".Sent" / "roost.index.sqlite")
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (1,)
    db.close()


def test_folder_names_on_disk_are_modified_utf7(tmp_path: Path) -> None:
    mail = store(tmp_path / "Maildir")
    for name in ("Entwürfe", "日本語.台北", "Tom & Jerry"):
        mail.create(name)
    dirnames = sorted(p.name for p in (tmp_path / "Maildir").iterdir() if p.name.startswith("."))
    assert dirnames == [".&ZeVnLIqe-.&U,BTFw-", ".Entw&APw-rfe", ".Tom &- Jerry"]
    assert {decode_mutf7(d[1:]) for d in dirnames} == {"Entwürfe", "日本語.台北", "Tom & Jerry"}
