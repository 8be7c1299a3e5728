"""Several sessions and a lockless mail program hammer one mailbox; afterwards every
session, the index, dovecot-uidlist and the files tell the same story."""

from __future__ import annotations

import contextlib
import os
import random
import threading
from pathlib import Path

from roost.store import ChangeBus, Mailbox, MailStore, StoreMode
from roost.store.filename import LETTER_FLAGS

ROUNDS = 60


def session(mail: MailStore, seed: int, appended: list[int], errors: list[BaseException]) -> None:
    rng = random.Random(seed)
    try:
        with mail.open("INBOX") as box:
            for n in range(ROUNDS):
                box.sync()
                uids = [m.uid for m in box.messages()]
                action = rng.random()
                if action < 0.35 or not uids:
                    appended.append(box.append(f"{seed}-{n}\n".encode(), [f"$S{seed}"]))
                elif action < 0.7:
                    picked = rng.sample(uids, min(3, len(uids)))
                    flag = rng.choice(["\\Seen", "\\Flagged", "\\Deleted", "$Work"])
                    box.store_flags(picked, [flag], rng.choice(list(StoreMode)))
                elif action < 0.85:
                    box.expunge()
                else:
                    uid = rng.choice(uids)
                    try:
                        box.read_message_crlf(uid)
                    except Exception as exc:  # expunged by another session: fine
                        assert type(exc).__name__ == "MessageNotFound"
    except BaseException as exc:  # pragma: no cover - reported by the test
        errors.append(exc)


def mutt(root: Path, stop: threading.Event, errors: list[BaseException]) -> None:
    """A program without the dot-lock: marks messages seen by renaming them."""
    rng = random.Random(7)
    try:
        while not stop.is_set():
            names = os.listdir(root / "cur")
            if names:
                name = rng.choice(names)
                if ":2," in name and "S" not in name.partition(":2,")[2]:
                    base, _, letters = name.partition(":2,")
                    new = f"{base}:2,{''.join(sorted(letters + 'S'))}"
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(root / "cur" / name, root / "cur" / new)
            stop.wait(0.002)
    except BaseException as exc:  # pragma: no cover
        errors.append(exc)


def disk_state(box: Mailbox) -> dict[int, frozenset[str]]:
    return {m.uid: m.flags for m in box.messages()}


def test_sessions_and_a_lockless_program_stay_consistent(tmp_path: Path) -> None:
    mail = MailStore(tmp_path / "Maildir", fsync=False, bus=ChangeBus())
    appended: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    renamer = threading.Thread(target=mutt, args=(mail.root, stop, errors))
    renamer.start()
    workers = [
        threading.Thread(target=session, args=(mail, seed, appended, errors)) for seed in range(3)
    ]
    watcher = mail.open("INBOX")
    mirror: dict[int, frozenset[str]] = {}  # built from Changes alone
    for worker in workers:
        worker.start()
    while any(worker.is_alive() for worker in workers):
        apply(mirror, watcher)
    stop.set()
    renamer.join()
    assert not errors, errors

    assert len(appended) == len(set(appended)), "a UID was given twice"
    with mail.open("INBOX") as box:
        state = disk_state(box)
        files = {p.name.partition(":")[0]: p.name for p in (mail.root / "cur").iterdir()}
        assert not list((mail.root / "new").iterdir())
        assert len(files) == len(state)
        uidlist = {}
        for line in (mail.root / "dovecot-uidlist").read_text().splitlines()[1:]:
            uid, _, base = line.partition(" :")
            uidlist[base] = int(uid.split()[0])
        keywords = dict(
            line.split(" ", 1)[::-1]
            for line in (mail.root / "dovecot-keywords").read_text().splitlines()
        )
        letters_of = {name: "abcdefghijklmnopqrstuvwxyz"[int(i)] for name, i in keywords.items()}
        for message in box.messages():
            name = files[message.base_name]
            assert uidlist[message.base_name] == message.uid
            letters = set(name.partition(":2,")[2])
            expected = {LETTER_FLAGS[c] for c in letters if c in LETTER_FLAGS}
            expected |= {kw for kw, letter in letters_of.items() if letter in letters}
            assert message.flags == expected, name
        assert set(appended) >= set(state)

        # Sessions opened before and synced now agree with a fresh one.
        with mail.open("INBOX") as other:
            assert disk_state(other) == state
        assert box.sync().expunged == ()
    apply(mirror, watcher)
    assert mirror == state
    watcher.close()


def apply(mirror: dict[int, frozenset[str]], watcher: Mailbox) -> None:
    """Update a client's picture of the mailbox from one sync(), as an IMAP client would."""
    changes = watcher.sync()
    for uid in changes.expunged:
        assert uid in mirror, f"EXPUNGE of unknown UID {uid}"
        del mirror[uid]
    for update in changes.flags:
        assert update.uid in mirror, f"FETCH of unknown UID {update.uid}"
        mirror[update.uid] = update.flags
    for message in changes.added:
        assert message.uid not in mirror, f"EXISTS twice for UID {message.uid}"
        assert message.uid > max(mirror, default=0), "new UIDs must ascend"
        mirror[message.uid] = message.flags
