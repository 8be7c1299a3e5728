"""The packed message list of an idle session (roost.store.packed) and its use by Mailbox."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.store import MailStore, MessageInfo
from roost.store.packed import PackedMessages, PackedUids

_NAME = st.text(
    alphabet=st.characters(codec="utf-8", blacklist_characters="\0/:"),
    min_size=1,
    max_size=20,
)


@st.composite
def _messages(draw: st.DrawFn) -> list[MessageInfo]:
    uids = sorted(draw(st.sets(st.integers(1, 2**32 - 1), max_size=12)))
    messages = []
    for uid in uids:
        base = draw(_NAME)
        letters = draw(st.sampled_from(["", "S", "FS", "DRST"]))
        filename = f"{draw(st.sampled_from(['cur', 'new']))}/{base}:2,{letters}"
        if draw(st.booleans()):  # a base that the file name does not start with
            base = draw(_NAME)
        messages.append(
            MessageInfo(
                uid,
                draw(st.frozensets(st.sampled_from(["\\Seen", "\\Deleted", "$Junk"]))),
                draw(st.integers(0, 2**40)),
                draw(st.integers(0, 2**40)),
                draw(st.floats(0, 2e9)),
                draw(st.floats(0, 2e9)),
                draw(st.integers(0, 2**62)),
                base,
                filename,
                "/var/mail/u/Maildir",
                draw(st.sampled_from(["", "UID1-abc"])),
            )
        )
    return messages


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_messages())
def test_unpack_gives_equal_messages(messages: list[MessageInfo]) -> None:
    packed = PackedMessages(messages)
    assert list(packed.unpack()) == messages
    assert [m.directory for m in packed.unpack()] == [m.directory for m in messages]
    assert packed.uids() == [m.uid for m in messages]
    assert len(packed) == len(messages)
    assert packed == PackedMessages(messages)


def test_packs_differ_when_one_flag_differs() -> None:
    one = MessageInfo(1, frozenset(), 10, 11, 1.0, 1.0, 5, "b", "cur/b:2,", "/d")
    seen = MessageInfo(1, frozenset({"\\Seen"}), 10, 11, 1.0, 1.0, 5, "b", "cur/b:2,S", "/d")
    assert PackedMessages([one]) != PackedMessages([seen])
    assert PackedUids([3, 1, 2]) == PackedUids([1, 2, 3])
    assert PackedUids([1]) != PackedUids([])
    assert PackedUids([5, 1]).unpack() == {1, 5}


def test_a_nul_in_a_file_name_is_refused() -> None:
    bad = MessageInfo(1, frozenset(), 1, 1, 1.0, 1.0, 1, "b", "cur/b\0x", "/d")
    with pytest.raises(ValueError):
        PackedMessages([bad])


def test_mailbox_suspend_packs_and_next_use_unpacks(tmp_path: Path) -> None:
    store = MailStore(tmp_path / "Maildir")
    with store.open("INBOX") as writer:
        for number in range(3):
            writer.append(b"Subject: %d\n\nbody\n" % number, flags=["\\Seen"] if number else [])
    mailbox = store.open("INBOX")
    try:
        before, recent = mailbox.messages(), mailbox.recent
        assert len(before) == 3
        mailbox.suspend()
        assert mailbox.packed_view() is not None
        assert len(mailbox) == 3
        assert not mailbox.sync()  # nothing changed: still packed
        assert mailbox.packed_view() is not None
        assert mailbox.messages() == before and mailbox.recent == recent
        assert mailbox.packed_view() is None
        mailbox.suspend()
        with store.open("INBOX") as other:  # a change while packed
            other.append(b"Subject: new\n\nbody\n")
        changes = mailbox.sync()
        assert [m.uid for m in changes.added] == [before[-1].uid + 1]
        assert mailbox.messages()[:3] == before and len(mailbox) == 4
    finally:
        mailbox.close()
