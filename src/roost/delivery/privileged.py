"""Deliveries with a system user's rights, done by someone with the privileges to.

:class:`~roost.delivery.local.LocalTransport` runs as ``mail_owner`` when the daemon was
started as root; a mailbox, ``|command``, ``/file`` or ``.forward`` of another uid then
goes through a :class:`SystemDelivery`: the privileged helper's client
(:class:`roost.daemon.privhelper.HelperDelivery`, docs/privsep.md). The methods block;
call them from a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from roost.delivery.command import CommandEnvironment
from roost.delivery.forward import ForwardLookup

__all__ = ["SystemDelivery"]


class SystemDelivery(Protocol):
    """Writes and reads with the rights of ``uid`` (never 0).

    Every method raises :class:`roost.delivery.errors.DeliveryError` when the delivery
    fails or is refused (a refusal is temporary, 4.3.0, so nothing is lost).
    """

    def maildir(
        self,
        path: Path,
        message: BinaryIO,
        *,
        uid: int,
        prepend: bytes,
        folder: str | None,
        quota_bytes: int,
        size_limit: int,
        autocreate_folder: bool,
        hostname: str,
    ) -> Path:
        """:func:`roost.delivery.maildir.deliver_maildir` as ``uid``; the file written."""
        ...

    def mbox(
        self,
        path: Path,
        message: BinaryIO,
        *,
        uid: int,
        envelope_sender: str,
        prepend: bytes,
        lock_timeout: float,
        lock_delay: float,
        stale_lock_time: float,
        locks: Sequence[str],
        size_limit: int,
        arrival_time: float | None,
    ) -> None:
        """:func:`roost.delivery.mbox.deliver_mbox` as ``uid``."""
        ...

    def command(
        self,
        command: str,
        message: BinaryIO,
        *,
        uid: int,
        environment: CommandEnvironment,
        prepend: bytes,
        time_limit: float,
    ) -> None:
        """:func:`roost.delivery.command.deliver_command` as ``uid``."""
        ...

    def forward(self, paths: Sequence[tuple[Path, bool]], *, uid: int) -> ForwardLookup:
        """:func:`roost.delivery.forward.find_forward` as ``uid`` in its home."""
        ...
