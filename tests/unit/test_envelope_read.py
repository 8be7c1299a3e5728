"""Envelope.from_json's reading of the usual document (queue/envelope.py, ``_envelope_fast``)
against its field-by-field reading: the same envelope for every good document, and for
every bad one no envelope at all (the field-by-field reading then names the fault)."""

from __future__ import annotations

import copy
import json

import pytest

from roost.queue import Envelope, EnvelopeError, Notify, Recipient, RecipientState, WithProtocol
from roost.queue.envelope import _envelope_fast, _envelope_from_fields

USUAL = Envelope(
    envelope_sender="sender@example.org",
    recipients=(Recipient("user@example.net"),),
    arrival_time=1_738_404_000.25,
    protocol=WithProtocol.ESMTP,
    queue_id="4Wk3nB0h2Fz1x",
    size=4123,
    client_address="127.0.0.1",
    helo_name="client.example",
)
DOCUMENT = json.loads(USUAL.to_json())
DEFERRED = Recipient(
    "other@example.net",
    orcpt="rfc822;alias@example.net",
    state=RecipientState.DEFERRED,
    reason="4.4.1 connection refused",
    next_try=1_738_404_300.0,
    attempts=2,
    dsn_status="4.4.1",
)

GOOD = [
    ("as written", lambda d: None),
    ("int arrival_time", lambda d: d.update(arrival_time=1_738_404_000)),
    ("int next_try", lambda d: d["recipients"][0].update(next_try=12)),
    ("unknown key", lambda d: d.update(later_field=[1, 2])),
    ("delay_warned", lambda d: d.update(delay_warned=True)),
    ("null sender", lambda d: d.update(envelope_sender="")),
    ("unicode", lambda d: d["recipients"][0].update(address="jörg@例え.jp")),
    (
        "second recipient",
        lambda d: d["recipients"].append(
            json.loads(
                json.dumps(
                    {
                        "address": DEFERRED.address,
                        "orcpt": DEFERRED.orcpt,
                        "notify": None,
                        "state": "deferred",
                        "reason": DEFERRED.reason,
                        "next_try": DEFERRED.next_try,
                        "attempts": 2,
                        "dsn_status": "4.4.1",
                    }
                )
            )
        ),
    ),
]
# what the usual reading leaves to the field-by-field one although it is good
UNUSUAL = [
    ("notify", lambda d: d["recipients"][0].update(notify=["FAILURE"])),
    ("body_type", lambda d: d.update(body_type="8BITMIME")),
    ("ret", lambda d: d.update(ret="HDRS")),
]
BAD = [
    ("v 2", lambda d: d.update(v=2)),
    ("v true", lambda d: d.update(v=True)),
    ("v missing", lambda d: d.pop("v")),
    ("sender null", lambda d: d.update(envelope_sender=None)),
    ("sender CRLF", lambda d: d.update(envelope_sender="a@b\r\nRCPT TO:<x@y>")),
    ("arrival string", lambda d: d.update(arrival_time="yesterday")),
    ("arrival negative", lambda d: d.update(arrival_time=-1)),
    ("arrival bool", lambda d: d.update(arrival_time=True)),
    ("size float", lambda d: d.update(size=1.5)),
    ("size bool", lambda d: d.update(size=False)),
    ("size missing", lambda d: d.pop("size")),
    ("protocol unknown", lambda d: d.update(protocol="HTTP")),
    ("protocol list", lambda d: d.update(protocol=["ESMTP"])),
    ("protocol object", lambda d: d.update(protocol={"a": 1})),
    ("protocol missing", lambda d: d.pop("protocol")),
    ("smtputf8 int", lambda d: d.update(smtputf8=1)),
    ("envid long", lambda d: d.update(envid="x" * 101)),
    ("envid number", lambda d: d.update(envid=5)),
    ("client_address", lambda d: d.update(client_address="not-an-ip")),
    ("helo list", lambda d: d.update(helo_name=["x"])),
    ("delay_warned string", lambda d: d.update(delay_warned="yes")),
    ("queue_id", lambda d: d.update(queue_id="../../etc/passwd")),
    ("queue_id null", lambda d: d.update(queue_id=None)),
    ("recipients empty", lambda d: d.update(recipients=[])),
    ("recipients object", lambda d: d.update(recipients={})),
    ("recipient string", lambda d: d["recipients"].__setitem__(0, "b@example.net")),
    ("address empty", lambda d: d["recipients"][0].update(address="")),
    ("address missing", lambda d: d["recipients"][0].pop("address")),
    ("orcpt no type", lambda d: d["recipients"][0].update(orcpt="b@example.net")),
    ("state lost", lambda d: d["recipients"][0].update(state="lost")),
    ("state list", lambda d: d["recipients"][0].update(state=["pending"])),
    ("state missing", lambda d: d["recipients"][0].pop("state")),
    ("attempts negative", lambda d: d["recipients"][0].update(attempts=-1)),
    ("attempts bool", lambda d: d["recipients"][0].update(attempts=False)),
    ("attempts missing", lambda d: d["recipients"][0].pop("attempts")),
    ("next_try string", lambda d: d["recipients"][0].update(next_try="soon")),
    ("next_try bool", lambda d: d["recipients"][0].update(next_try=True)),
    ("next_try negative", lambda d: d["recipients"][0].update(next_try=-5)),
    ("dsn_status", lambda d: d["recipients"][0].update(dsn_status="550")),
    ("reason number", lambda d: d["recipients"][0].update(reason=4)),
]


def mutated(change) -> dict[str, object]:  # type: ignore[no-untyped-def]
    document = copy.deepcopy(DOCUMENT)
    change(document)
    return document


@pytest.mark.parametrize(("name", "change"), GOOD, ids=[name for name, _ in GOOD])
def test_the_usual_reading_gives_what_the_field_by_field_one_gives(name, change) -> None:  # type: ignore[no-untyped-def]
    document = mutated(change)
    fast = _envelope_fast(document)
    assert fast is not None, "the usual document must not need the slow reading"
    assert fast == _envelope_from_fields(document)
    assert [type(r.next_try) for r in fast.recipients if r.next_try is not None] == [
        float for r in fast.recipients if r.next_try is not None
    ]
    assert type(fast.arrival_time) is float


@pytest.mark.parametrize(("name", "change"), UNUSUAL, ids=[name for name, _ in UNUSUAL])
def test_unusual_fields_are_read_field_by_field(name, change) -> None:  # type: ignore[no-untyped-def]
    document = mutated(change)
    assert _envelope_fast(document) is None
    parsed = Envelope.from_json(json.dumps(document))
    assert parsed == _envelope_from_fields(document)
    assert parsed.recipients[0].notify in (None, (Notify.FAILURE,))


@pytest.mark.parametrize(("name", "change"), BAD, ids=[name for name, _ in BAD])
def test_a_bad_document_gets_no_envelope_from_the_usual_reading(name, change) -> None:  # type: ignore[no-untyped-def]
    document = mutated(change)
    assert _envelope_fast(document) is None
    with pytest.raises(EnvelopeError) as slow:
        _envelope_from_fields(document)
    with pytest.raises(EnvelopeError) as caught:
        Envelope.from_json(json.dumps(document))
    assert caught.value.field == slow.value.field and caught.value.field
