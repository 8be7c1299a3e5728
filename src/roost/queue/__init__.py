"""The durable mail queue: spool storage on disk (see docs/spool.md).

Typical use in the SMTP server::

    async with spool.new_message() as writer:        # writer.queue_id for Received
        async for chunk in data:
            await writer.write(chunk)
        queue_id = await writer.commit(envelope)    # durable: now answer 250
"""

from __future__ import annotations

from roost.queue.directory import QueueDirectory, QueueName, RecoveryReport, SyncMethod
from roost.queue.envelope import (
    ENVELOPE_VERSION,
    BodyType,
    Envelope,
    EnvelopeError,
    Notify,
    Recipient,
    RecipientState,
    Ret,
    WithProtocol,
)
from roost.queue.errors import SpoolError, SpoolErrorKind
from roost.queue.queue_id import QueueIdGenerator, is_queue_id, queue_id_time
from roost.queue.spool import MessageWriter, OnCommit, Spool

__all__ = [
    "ENVELOPE_VERSION",
    "BodyType",
    "Envelope",
    "EnvelopeError",
    "MessageWriter",
    "Notify",
    "OnCommit",
    "QueueDirectory",
    "QueueIdGenerator",
    "QueueName",
    "Recipient",
    "RecipientState",
    "RecoveryReport",
    "Ret",
    "Spool",
    "SpoolError",
    "SpoolErrorKind",
    "SyncMethod",
    "WithProtocol",
    "is_queue_id",
    "queue_id_time",
]
