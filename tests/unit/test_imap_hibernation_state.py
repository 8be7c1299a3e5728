"""A hibernated session's view (SelectedMailbox.hibernation_state / from_hibernation) and
the connection counts that move with it (SharedCounts.move), on a real Maildir store.

The view that goes to the master holds only what the client was told (UIDs, MODSEQs,
\\Recent, keywords); the worker that takes the session back rebuilds it on the mailbox
opened again and gets, as changes, what happened meanwhile.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from roost.daemon.shared import SharedCounts
from roost.imap.response import ExistsResponse, ExpungeResponse, FetchResponse
from roost.imap.selected import SelectedMailbox, UpdateMode
from roost.store import MailStore, StoreMode


def _view(store: MailStore) -> SelectedMailbox:
    mailbox = store.open("INBOX")
    return SelectedMailbox(
        "INBOX",
        mailbox,
        readonly=False,
        messages=mailbox.messages(),
        recent=mailbox.recent,
        keywords=mailbox.keywords(),
        uid_validity=mailbox.uid_validity,
        uid_next=mailbox.uid_next,
        highest_modseq=mailbox.highest_modseq,
    )


def test_a_view_taken_back_reports_what_changed_meanwhile(tmp_path: Path) -> None:
    store = MailStore(tmp_path / "Maildir")
    with store.open("INBOX") as writer:
        for number in range(4):
            writer.append(b"Subject: %d\n\nbody\n" % number)
    view = _view(store)
    state = view.hibernation_state()
    assert state is not None
    state = pickle.loads(pickle.dumps(state))  # it travels through the master
    view.mailbox.close()
    with store.open("INBOX") as other:  # meanwhile: a flag change, an expunge, a new one
        uids = [info.uid for info in other.messages()]
        other.store_flags([uids[1]], ["\\Flagged"], StoreMode.ADD)
        other.store_flags([uids[0]], ["\\Deleted"], StoreMode.ADD)
        other.expunge()
        other.append(b"Subject: new\n\nbody\n")
    mailbox = store.open("INBOX")
    try:
        again, changes = SelectedMailbox.from_hibernation(
            state, mailbox, mailbox.messages(), mailbox.recent
        )
        assert [info.uid for info in changes.added] == [uids[-1] + 1]
        assert changes.expunged == (uids[0],)
        assert [update.uid for update in changes.flags] == [uids[1]]
        assert again.client_count == 4
        again.apply(changes, uid_next=mailbox.uid_next, highest_modseq=mailbox.highest_modseq)
        responses = again.take_updates(UpdateMode(), allow_expunge=True)
        kinds = [type(response) for response in responses]
        assert ExpungeResponse in kinds and ExistsResponse in kinds and FetchResponse in kinds
        assert again.client_count == 4  # 4 - 1 expunged + 1 new
        assert again.uids == [*uids[1:], uids[-1] + 1]
        assert "\\Flagged" in again.infos[uids[1]].flags
    finally:
        mailbox.close()


def test_no_state_while_updates_are_pending(tmp_path: Path) -> None:
    store = MailStore(tmp_path / "Maildir")
    with store.open("INBOX") as writer:
        writer.append(b"Subject: 1\n\nbody\n")
    view = _view(store)
    try:
        with store.open("INBOX") as other:
            other.append(b"Subject: 2\n\nbody\n")
        view.apply(view.mailbox.sync(), uid_next=view.mailbox.uid_next, highest_modseq=0)
        assert view.hibernation_state() is None  # its EXISTS has not gone out
        view.take_updates(UpdateMode(), allow_expunge=True)
        assert view.hibernation_state() is not None
    finally:
        view.mailbox.close()


def test_moved_counts_keep_the_sum_and_tell_nobody() -> None:
    sent: list[object] = []
    table = SharedCounts("imap.per_ip", lambda *event: sent.append(event))
    table["127.0.0.1"] = 1
    assert sent == [("imap.per_ip", "127.0.0.1", 1)]
    table.move("127.0.0.1", -1)  # to the master
    assert table.get("127.0.0.1") == 1 and table.local == {} and len(sent) == 1
    table.move("127.0.0.1", 1)  # back
    assert table.local == {"127.0.0.1": 1} and table.remote == {} and len(sent) == 1
