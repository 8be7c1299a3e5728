"""dovecot-uidlist: reading Dovecot's files, appending, rewriting; dovecot-uidvalidity."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from roost.store.uidlist import UidList, UidRecord
from roost.store.uidvalidity import UIDVALIDITY_NAME, next_uid_validity

DOVECOT_FILE = (
    "3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n"
    "25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394:2,\n"
    "25017 W2481 :1276533073.M242911P3632.kurkku:2,F\n"
    "25018 P0001abcd O3 :1276533074.M1P2.kurkku\n"
)


def write(path: Path, text: str) -> None:
    path.write_text(text)


def test_reads_dovecot_version_3(tmp_path: Path) -> None:
    path = tmp_path / "dovecot-uidlist"
    write(path, DOVECOT_FILE)
    uidlist = UidList(path, fsync=False)
    uidlist.refresh()
    assert uidlist.uid_validity == 1275660208
    assert uidlist.next_uid == 25022
    assert uidlist.guid == "3085f01b7f11094c501100008c4a11c1"
    assert not uidlist.needs_rewrite
    assert sorted(uidlist.records) == [25006, 25017, 25018]
    # The last known full name is reduced to the base: that is what identifies a message.
    assert uidlist.uid_of("1276528487.M364837P9451.kurkku,S=1355,W=1394") == 25006
    assert uidlist.uid_of("1276533073.M242911P3632.kurkku") == 25017
    assert uidlist.records[25017].field("W") == "2481"
    assert uidlist.records[25018].field("P") == "0001abcd"
    assert uidlist.records[25018].field("O") == "3"
    assert uidlist.records[25006].field("W") is None


def test_next_uid_is_at_least_last_record_plus_one(tmp_path: Path) -> None:
    # Dovecot appends records without rewriting the header: N may lag behind.
    path = tmp_path / "dovecot-uidlist"
    write(path, "3 V1 N1 Gaa\n1 :a\n2 :b\n")
    uidlist = UidList(path, fsync=False)
    uidlist.refresh()
    assert uidlist.next_uid == 3


def test_reads_version_1_and_wants_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "dovecot-uidlist"
    write(path, "1 1100000000 5\n3 1099999999.123.host:2,S\n4 1099999999.124.host\n")
    uidlist = UidList(path, fsync=False)
    uidlist.refresh()
    assert (uidlist.uid_validity, uidlist.next_uid) == (1100000000, 5)
    assert uidlist.uid_of("1099999999.123.host") == 3
    assert uidlist.needs_rewrite


def test_broken_lines_are_skipped_and_force_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "dovecot-uidlist"
    write(path, "3 V7 N10 Gbb\n1 :a\nxyz :b\n3 lower :c\n2 :d\n5 :e/f\n6 :g\n")
    uidlist = UidList(path, fsync=False)
    uidlist.refresh()
    assert sorted(uidlist.records) == [1, 2, 6]
    assert uidlist.needs_rewrite


def test_incremental_refresh_reads_only_appended_records(tmp_path: Path) -> None:
    path = tmp_path / "dovecot-uidlist"
    write(path, "3 V7 N2 Gbb\n1 :a\n")
    uidlist = UidList(path, fsync=False)
    assert uidlist.refresh() is True
    with path.open("a") as handle:
        handle.write("2 :b\n3 :c")  # the last line is still being written
    assert uidlist.refresh() is False
    assert sorted(uidlist.records) == [1, 2]
    with path.open("a") as handle:
        handle.write("\n")
    uidlist.refresh()
    assert sorted(uidlist.records) == [1, 2, 3]
    assert uidlist.next_uid == 4


def test_replaced_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "dovecot-uidlist"
    write(path, "3 V7 N3 Gbb\n1 :a\n2 :b\n")
    uidlist = UidList(path, fsync=False)
    uidlist.refresh()
    temp = tmp_path / "new"
    write(temp, "3 V7 N3 Gbb\n2 :b\n")
    os.rename(temp, path)
    assert uidlist.refresh() is True
    assert sorted(uidlist.records) == [2]
    assert uidlist.uid_of("a") is None


def test_append_writes_dovecot_lines(tmp_path: Path) -> None:
    path = tmp_path / "dovecot-uidlist"
    write(path, "3 V7 N2 Gbb\n1 :a\n")
    uidlist = UidList(path, fsync=False)
    uidlist.refresh()
    inode = path.stat().st_ino
    uidlist.append([UidRecord(2, "b"), UidRecord(3, "c", ("W99",))])
    assert path.stat().st_ino == inode  # appended in place, as Dovecot does
    assert path.read_text() == "3 V7 N2 Gbb\n1 :a\n2 :b\n3 W99 :c\n"
    assert uidlist.next_uid == 4
    with pytest.raises(ValueError):
        uidlist.append([UidRecord(3, "again")])


def test_rewrite_is_atomic_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "dovecot-uidlist"
    uidlist = UidList(path, fsync=True)
    uidlist.rewrite([UidRecord(5, "e"), UidRecord(2, "b", ("W10",))], uid_validity=99, next_uid=3)
    lines = path.read_text().splitlines()
    header = lines[0].split(" ")
    assert header[:3] == ["3", "V99", "N6"]  # never below the highest UID + 1
    assert header[3].startswith("G") and len(header[3]) == 33
    assert lines[1:] == ["2 W10 :b", "5 :e"]
    assert not (tmp_path / "dovecot-uidlist.tmp").exists()
    other = UidList(path, fsync=False)
    other.refresh()
    assert other.guid == uidlist.guid
    assert other.uid_of("e") == 5


def test_unknown_header_fields_survive_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "dovecot-uidlist"
    write(path, "3 V7 N2 Gbb Pxyz\n1 :a\n")
    uidlist = UidList(path, fsync=False)
    uidlist.refresh()
    uidlist.rewrite(uidlist.records.values())
    assert path.read_text().splitlines()[0] == "3 V7 N2 Gbb Pxyz"


def test_uidvalidity_starts_at_the_time_and_grows(tmp_path: Path) -> None:
    before = int(time.time())
    first = next_uid_validity(tmp_path)
    second = next_uid_validity(tmp_path)
    assert before <= first < second
    assert (tmp_path / UIDVALIDITY_NAME).read_text() == f"{second:08x}"
    assert (tmp_path / f"{UIDVALIDITY_NAME}.{second:08x}").exists()
    assert not (tmp_path / f"{UIDVALIDITY_NAME}.{first:08x}").exists()


def test_uidvalidity_continues_dovecot_state(tmp_path: Path) -> None:
    future = int(time.time()) + 10_000
    (tmp_path / UIDVALIDITY_NAME).write_text(f"{future:08x}")
    (tmp_path / f"{UIDVALIDITY_NAME}.{future:08x}").touch()
    assert next_uid_validity(tmp_path) == future + 1
