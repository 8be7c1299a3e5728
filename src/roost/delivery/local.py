"""The local and virtual transports: aliases, ``.forward``, then a mailbox, a file or a pipe.

For a recipient in a local domain (``mydestination``), Postfix local(8)'s order: the alias
of the whole local part, then of the user; the user's ``.forward``; the mailbox. A user is
a user of the user database (``auth_backends``) or a system account. For a recipient in a
virtual mailbox domain the user database alone answers and the mail goes to the mailbox.

Where the mailbox is: :mod:`roost.delivery.mailbox` (``home_mailbox`` or
``mail_location``), the same answer IMAP and POP3 serve, so delivery and reading always
agree.

Addresses in other domains that aliases or ``.forward`` lead to are queued again as a new
message (same content, ``Delivered-To:`` added for loop detection).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import pwd
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, TypedDict, TypeVar

from roost.address import AddressError, parse_mailbox, split_extension
from roost.auth.users import UserBackendError, UserDatabase
from roost.delivery._stream import MessageSource
from roost.delivery.aliases import (
    AddressTarget,
    CommandTarget,
    Expansion,
    FileTarget,
    Forward,
    Target,
    expand_recipient,
)
from roost.delivery.aliasfile import AliasMaps
from roost.delivery.command import CommandEnvironment, deliver_command
from roost.delivery.errors import DeliveryError
from roost.delivery.forward import find_forward, forward_paths, read_include
from roost.delivery.headers import delivered_to_addresses, delivery_headers
from roost.delivery.mailbox import Account, LocalConfig, Mailbox, resolve_mailbox
from roost.delivery.maildir import MaildirDelivery, deliver_maildir, deliver_maildir_files
from roost.delivery.mbox import deliver_mbox
from roost.delivery.privileged import SystemDelivery
from roost.delivery.router import Destination, Router, parse_recipient
from roost.queue.envelope import Envelope, Recipient, WithProtocol
from roost.queue.errors import SpoolError
from roost.queue.manager import DeliveryJob, Outcome, RecipientResult
from roost.queue.spool import Spool
from roost.store.bus import notify_delivery

__all__ = ["LocalTransport"]

log = logging.getLogger("roost.local")

#: Threads for mailbox writes and lookups. Their own pool, not asyncio's default one (a
#: few threads, shared with the SMTP server's recipient lookups): deliveries spend most of
#: their time waiting in fsync, and more of those waits in parallel share journal commits
#: and the group fsync of ``new/``.
DELIVERY_THREADS: Final = 32
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_T = TypeVar("_T")


async def _in_thread(function: Callable[..., _T], /, *args: object) -> _T:
    """Run a blocking call in the delivery threads."""
    return await asyncio.get_running_loop().run_in_executor(_executor(), function, *args)


#: Most virtual deliveries one thread hand-off carries (:class:`_VirtualBatches`).
BATCH_LIMIT: Final = 32
#: Batches of virtual deliveries written at the same time, each by one delivery thread.
#: Under load the deliveries ready together share a thread hand-off, a loop wake-up and
#: the fsync of ``new/``; a lone delivery starts a batch of its own at once. Two, not
#: more: every system call of a delivery thread hands the interpreter's lock over, and
#: threads creating files in the same ``tmp/`` wait for its directory lock, so more
#: threads cost CPU without writing more (docs/performance.md, session 10); two keep an
#: fsync's wait from stopping all deliveries.
BATCH_RUNNERS: Final = 2
#: While a batch is being written, the deliveries ready meanwhile start another only once
#: this many wait (else they wait for a runner to finish, and go as one larger batch): a
#: steady stream of mail then shares each hand-off among several messages instead of
#: starting a batch of one or two per arrival. With no batch running, one starts at once.
BATCH_GATHER: Final = 8


@dataclass(frozen=True, slots=True)
class _VirtualItem:
    """One recipient of a virtual mailbox domain waiting for its batch."""

    job: DeliveryJob
    index: int
    local_part: str
    domain: str
    original: str | None


_Outcome = RecipientResult | BaseException


class _VirtualBatches:
    """Gathers the virtual deliveries ready at the same time into batches, each written by
    one delivery thread (:meth:`LocalTransport._virtual_many_sync`): one thread hand-off
    and one loop wake-up per batch instead of per message. Event loop only.

    Args:
        run: the blocking function that delivers one batch, one outcome per item.
    """

    def __init__(self, run: Callable[[list[_VirtualItem]], list[_Outcome]]) -> None:
        self._run = run
        self._pending: list[tuple[_VirtualItem, asyncio.Future[RecipientResult]]] = []
        self._running = 0
        self._scheduled = False

    async def deliver(self, item: _VirtualItem) -> RecipientResult:
        """Deliver one recipient with the next batch; its result.

        Raises:
            DeliveryError: as :meth:`LocalTransport._virtual_sync` raises it.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RecipientResult] = loop.create_future()
        self._pending.append((item, future))
        if (
            not self._scheduled
            and self._running < BATCH_RUNNERS
            and (not self._running or len(self._pending) >= BATCH_GATHER)
        ):
            # after the other tasks of this loop iteration: what they add joins the batch
            self._scheduled = True
            loop.call_soon(self._start, loop)
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        while self._pending and self._running < BATCH_RUNNERS:
            if self._running and len(self._pending) < BATCH_GATHER:
                break  # gather more while the running batches are written
            free = BATCH_RUNNERS - self._running
            size = min(BATCH_LIMIT, max(BATCH_GATHER, -(-len(self._pending) // free)))
            batch, self._pending = self._pending[:size], self._pending[size:]
            self._running += 1
            done = loop.run_in_executor(_executor(), self._run, [item for item, _ in batch])
            done.add_done_callback(functools.partial(self._finished, loop, batch))

    def _finished(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[_VirtualItem, asyncio.Future[RecipientResult]]],
        done: asyncio.Future[list[_Outcome]],
    ) -> None:
        self._running -= 1
        if done.cancelled():
            outcomes: list[_Outcome] = [asyncio.CancelledError()] * len(batch)
        elif (error := done.exception()) is not None:
            outcomes = [error] * len(batch)
        else:
            outcomes = done.result()
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        if self._pending:
            self._start(loop)


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(DELIVERY_THREADS, "roost-local")
    return _pool


def _delivery_prepend(job: DeliveryJob, target: Target, original: str | None) -> bytes:
    """The ``Return-Path:`` and ``Delivered-To:`` lines written before a message delivered
    to ``target`` (:func:`delivery_headers`); ``original``: the ORCPT address, if any."""
    return delivery_headers(
        job.envelope.envelope_sender,
        target.delivered_to,
        original_recipient=original or target.original_recipient,
    )


def _system_account(name: str) -> Account | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(entry.pw_name, entry.pw_dir, entry.pw_uid, entry.pw_gid, entry.pw_shell)


@dataclass(slots=True)
class LocalTransport:
    """Delivers local and virtual recipients (the ``local`` and ``virtual`` transports).

    Args:
        config: the parameters.
        router: tells local domains.
        aliases: ``alias_maps``.
        users: the user database (None: system accounts only).
        spool: for re-queuing forwarded mail.
        system_accounts: finds a system account (``pwd`` by default).
        system_delivery: the privileged helper's deliveries (docs/privsep.md): when set,
            every write, command and ``.forward`` read for another uid than the
            daemon's goes there, with that user's rights (``/file`` and ``|command``
            with the rights Postfix local(8) gives them, ``default_privs`` for aliases).
    """

    config: LocalConfig
    router: Router
    aliases: AliasMaps
    users: UserDatabase | None
    spool: Spool
    system_accounts: Callable[[str], Account | None] = _system_account
    name: str = "local"
    system_delivery: SystemDelivery | None = None
    _batches: _VirtualBatches = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._batches = _VirtualBatches(self._virtual_many_sync)

    def _as_user(self, uid: int | None) -> SystemDelivery | None:
        """The privileged helper when ``uid`` is not the daemon's own (one indirection)."""
        if self.system_delivery is None or uid is None or uid == os.geteuid():
            return None
        return self.system_delivery

    def _rights(self, source_user: str | None) -> Account | None:
        """Whose rights a ``|command`` or ``/file`` target runs with (Postfix local(8)
        "DELIVERY RIGHTS"): the user whose ``.forward`` listed it, else ``default_privs``."""
        account = self.system_accounts(source_user) if source_user else None
        return account or self.system_accounts(self.config.default_privs)

    async def deliver(self, job: DeliveryJob) -> list[RecipientResult]:
        """Deliver each recipient of the job; one result each."""
        header: list[Collection[str]] = []

        async def seen_delivered_to() -> Collection[str]:
            """The message's Delivered-To addresses, read once, when expansion needs them."""
            if not header:
                header.append(delivered_to_addresses(await _in_thread(_read_header, job)))
            return header[0]

        results: list[RecipientResult] = []
        for index, recipient in job.recipients:
            try:
                results.append(await self._one(job, index, recipient, seen_delivered_to))
            except DeliveryError as exc:
                status = Outcome.DEFERRED if exc.temporary else Outcome.BOUNCED
                results.append(
                    RecipientResult(index, status, exc.dsn, exc.text, "local", agent="local")
                )
        return results

    async def _one(
        self,
        job: DeliveryJob,
        index: int,
        recipient: Recipient,
        seen: Callable[[], Awaitable[Collection[str]]],
    ) -> RecipientResult:
        try:
            address = parse_recipient(recipient.address)
        except AddressError as exc:
            return RecipientResult(
                index, Outcome.BOUNCED, "5.1.3", str(exc), "local", agent="local"
            )
        domain = address.domain_key if address.domain else ""
        original = _orcpt_address(recipient)
        if self.router.destination(address) is Destination.VIRTUAL:
            # the user lookup and the mailbox write in one thread hand-off, shared with
            # the other virtual deliveries ready now
            item = _VirtualItem(job, index, address.local_part, domain, original)
            return await self._batches.deliver(item)
        expansion = await self._expand(recipient.address, await seen())
        return await self._deliver_expansion(job, index, expansion, domain, original)

    def _virtual_sync(
        self, job: DeliveryJob, index: int, local_part: str, domain: str, original: str | None
    ) -> RecipientResult:
        """Deliver to a virtual mailbox user (blocking: user lookup and mailbox write)."""
        base, extension = split_extension(local_part, self.config.recipient_delimiter)
        account = self._virtual_account_sync(f"{local_part}@{domain}")
        if account is None and extension is not None:
            account = self._virtual_account_sync(f"{base}@{domain}")
        else:
            base, extension = local_part, None
        if account is None:
            return _unknown(index, local_part, "virtual")
        target = AddressTarget(f"{local_part}@{domain}", True, base, extension, domain)
        where = self._to_mailbox_sync(job, target, account, domain, original)
        return RecipientResult(index, Outcome.SENT, "2.0.0", where, "virtual", agent="virtual")

    def _virtual_many_sync(self, items: list[_VirtualItem]) -> list[_Outcome]:
        """Deliver a batch of virtual recipients (blocking); one outcome per item.

        A recipient whose mail goes to a Maildir INBOX written by this process joins one
        :func:`deliver_maildir_files`; any other (unknown user, mbox, a folder, the
        privileged helper's rights) is delivered alone by :meth:`_virtual_sync`, as
        before. An outcome is the result, or the exception its delivery raised
        (``DeliveryError`` for a deferral or bounce).
        """
        outcomes: list[_Outcome | None] = [None] * len(items)
        batched: list[tuple[int, Path]] = []  # (position in items, Maildir)
        deliveries: list[MaildirDelivery] = []
        opened: list[BinaryIO] = []  # queue files of messages not read into memory
        config = self.config
        # the batch's recipients are mostly the same few: one lookup each per batch, and
        # the headers written before each message once per sender, target and ORCPT
        found: dict[tuple[str, str], tuple[AddressTarget, Mailbox] | None] = {}
        prepends: dict[tuple[str, tuple[str, str], str | None], bytes] = {}
        try:
            for position, item in enumerate(items):
                try:
                    key = (item.local_part, item.domain)
                    if key in found:
                        simple = found[key]
                    else:
                        simple = found[key] = self._virtual_simple_sync(item)
                    if simple is None:
                        outcomes[position] = self._virtual_sync(
                            item.job, item.index, item.local_part, item.domain, item.original
                        )
                        continue
                    target, mailbox = simple
                    header_key = (item.job.envelope.envelope_sender, key, item.original)
                    cached = prepends.get(header_key)
                    if cached is None:
                        cached = prepends[header_key] = _delivery_prepend(
                            item.job, target, item.original
                        )
                    prepend = cached
                    message: MessageSource
                    if item.job.content is not None:
                        message = item.job.content
                    else:
                        message = item.job.open_content()
                        opened.append(message)
                except Exception as exc:
                    outcomes[position] = exc
                    continue
                batched.append((position, mailbox.path))
                deliveries.append(
                    MaildirDelivery(
                        mailbox.path,
                        message,
                        prepend=prepend,
                        uid=mailbox.uid,
                        gid=mailbox.gid,
                        quota_bytes=mailbox.quota_bytes,
                        size_limit=config.mailbox_size_limit,
                        hostname=config.hostname,
                    )
                )
            written = deliver_maildir_files(deliveries) if deliveries else []
        finally:
            for handle in opened:
                handle.close()
        notified: set[Path] = set()
        for (position, maildir), result in zip(batched, written, strict=True):
            if isinstance(result, Exception):
                outcomes[position] = result
                continue
            if maildir not in notified:  # IMAP IDLE and POP3 learn at once
                notified.add(maildir)
                notify_delivery(maildir)
            outcomes[position] = _virtual_sent(items[position].index)
        return [
            outcome if outcome is not None else RuntimeError("no outcome") for outcome in outcomes
        ]

    def _virtual_simple_sync(self, item: _VirtualItem) -> tuple[AddressTarget, Mailbox] | None:
        """The target and mailbox of a virtual recipient whose mail goes to a Maildir INBOX
        written in this process; None for any other case (:meth:`_virtual_sync` does it)."""
        local_part, domain = item.local_part, item.domain
        account = self._virtual_account_sync(f"{local_part}@{domain}")
        if account is None:
            return None  # unknown, or an extension to look up without it
        mailbox = resolve_mailbox(account, self.config, domain)
        if mailbox.kind != "maildir" or self._as_user(mailbox.uid) is not None:
            return None
        target = AddressTarget(f"{local_part}@{domain}", True, local_part, None, domain)
        return target, mailbox

    async def _expand(self, address: str, seen: Collection[str]) -> Expansion:
        domain = address.rpartition("@")[2].lower() if "@" in address else ""

        def user_exists(name: str) -> bool:
            return self._account_sync(name, domain) is not None

        def lookup_forward(user: str, extension: str | None) -> Forward | None:
            account = self._account_sync(user, domain)
            entry = account.user if account is not None else None
            virtual = entry is not None and not entry.backend.startswith("pam:")
            if account is None or virtual or not account.home:
                return None  # .forward is for system accounts (PAM users are ones)
            paths = forward_paths(
                self.config.forward_path,
                user=account.name,
                home=account.home,
                shell=account.shell,
                extension=extension,
                delimiter=self.config.recipient_delimiter,
            )
            helper = self._as_user(account.uid)
            if helper is not None and account.uid is not None:
                found = helper.forward(paths, uid=account.uid)
            else:
                found = find_forward(paths, uid=account.uid or 0, home=Path(account.home))
            for warning in found.warnings:
                log.warning("%s", warning)
            return found.forward

        def is_local(domain: str) -> bool:
            try:
                probe = parse_mailbox(f"x@{domain}") if domain else None
            except AddressError:
                return False
            return probe is None or self.router.destination(probe) is Destination.LOCAL

        return await _in_thread(
            functools.partial(
                expand_recipient,
                address,
                lookup_alias=self.aliases.lookup,
                read_include=read_include,
                is_local_domain=is_local,
                lookup_forward=lookup_forward,
                user_exists=user_exists,
                recipient_delimiter=self.config.recipient_delimiter,
                propagate_unmatched_extensions=self.config.propagate_unmatched_extensions,
                allow_mail_to_commands=self.config.allow_mail_to_commands,
                allow_mail_to_files=self.config.allow_mail_to_files,
                owner_request_special=self.config.owner_request_special,
                expand_owner_alias=self.config.expand_owner_alias,
                delivered_to=seen,
            )
        )

    async def _deliver_expansion(
        self,
        job: DeliveryJob,
        index: int,
        expansion: Expansion,
        domain: str,
        original: str | None,
    ) -> RecipientResult:
        for warning in expansion.warnings:
            log.warning("%s: %s", job.queue_id, warning)
        temporary: list[str] = []
        permanent: list[tuple[str, str]] = []
        for failure in expansion.failures:
            if failure.temporary:
                temporary.append(failure.text)
            else:
                permanent.append((failure.dsn, failure.text))
        delivered: list[str] = []
        remote: list[AddressTarget] = []
        for target in expansion.targets:
            try:
                if isinstance(target, AddressTarget) and not target.is_local:
                    remote.append(target)
                    continue
                delivered.append(await self._target(job, target, domain, original))
            except DeliveryError as exc:
                (
                    temporary.append(exc.text)
                    if exc.temporary
                    else permanent.append((exc.dsn, exc.text))
                )
        if remote:
            try:
                delivered.append(await self._forward(job, remote, original))
            except SpoolError as exc:
                temporary.append(f"cannot queue forwarded mail: {exc}")
        if temporary:
            return RecipientResult(
                index, Outcome.DEFERRED, "4.3.0", "; ".join(temporary), "local", agent="local"
            )
        if permanent:
            dsn, text = permanent[0]
            return RecipientResult(index, Outcome.BOUNCED, dsn, text, "local", agent="local")
        return RecipientResult(
            index,
            Outcome.SENT,
            "2.0.0",
            ", ".join(delivered) or "delivered",
            "local",
            agent="local",
        )

    async def _target(
        self, job: DeliveryJob, target: Target, domain: str, original: str | None
    ) -> str:
        envelope = job.envelope
        prepend = _delivery_prepend(job, target, original)
        if isinstance(target, AddressTarget):
            account = await self._local_account(target.user, domain)
            if account is None:
                raise DeliveryError(False, "5.1.1", f'unknown user: "{target.user}"')
            return await self._to_mailbox(job, target, account, domain, original)
        source_user = target.source.user if target.source is not None else None
        if isinstance(target, FileTarget):
            path = Path(target.path)
            rights = self._rights(source_user) if self.system_delivery is not None else None
            uid = rights.uid if rights is not None else None
            if target.is_maildir:
                await _in_thread(self._maildir, path, job, prepend, uid, None, 0, None)
                return f"delivered to maildir {path}"
            await _in_thread(self._mbox, path, job, prepend, uid, None)
            return f"delivered to file: {path}"
        assert isinstance(target, CommandTarget)
        account = self._rights(source_user)
        uid = account.uid if account is not None else None
        gid = account.gid if account is not None else None
        local = target.delivered_to.partition("@")[0]
        base, extension = split_extension(local, self.config.recipient_delimiter)
        environment = CommandEnvironment(
            sender=envelope.envelope_sender,
            recipient=target.delivered_to,
            original_recipient=target.original_recipient,
            local=local,
            extension=extension or "",
            domain=target.delivered_to.partition("@")[2],
            user=account.name if account else base,
            home=account.home if account else "/",
        )
        helper = self._as_user(uid)
        if helper is not None and uid is not None:
            with job.open_content() as message:
                await asyncio.to_thread(
                    helper.command,
                    target.command,
                    message,
                    uid=uid,
                    environment=environment,
                    prepend=prepend,
                    time_limit=self.config.command_time_limit,
                )
            return f"delivered to command: {target.command}"
        with job.open_content() as message:
            result = await deliver_command(
                target.command,
                message,
                environment=environment,
                prepend=prepend,
                uid=uid,
                gid=gid,
                time_limit=self.config.command_time_limit,
            )
        del result
        return f"delivered to command: {target.command}"

    async def _to_mailbox(
        self,
        job: DeliveryJob,
        target: AddressTarget,
        account: Account,
        domain: str,
        original: str | None,
    ) -> str:
        return await _in_thread(self._to_mailbox_sync, job, target, account, domain, original)

    def _to_mailbox_sync(
        self,
        job: DeliveryJob,
        target: AddressTarget,
        account: Account,
        domain: str,
        original: str | None,
    ) -> str:
        """Write into the account's mailbox (blocking); return the result text."""
        mailbox = resolve_mailbox(account, self.config, domain)
        prepend = _delivery_prepend(job, target, original)
        folder = None
        if target.extension and mailbox.kind == "maildir":
            folder = target.extension
        if mailbox.kind == "maildir":
            self._maildir(
                mailbox.path,
                job,
                prepend,
                mailbox.uid,
                mailbox.gid,
                mailbox.quota_bytes,
                folder,
            )
            return "delivered to maildir"
        self._mbox(mailbox.path, job, prepend, mailbox.uid, mailbox.gid)
        return "delivered to mailbox"

    def _maildir(
        self,
        path: Path,
        job: DeliveryJob,
        prepend: bytes,
        uid: int | None,
        gid: int | None,
        quota: int,
        folder: str | None,
    ) -> None:
        helper = self._as_user(uid)
        if helper is not None and uid is not None:
            with job.open_content() as message:  # the helper needs a file descriptor
                written = helper.maildir(
                    path,
                    message,
                    uid=uid,
                    prepend=prepend,
                    folder=folder,
                    quota_bytes=quota,
                    size_limit=self.config.mailbox_size_limit,
                    autocreate_folder=self.config.autocreate_folder,
                    hostname=self.config.hostname,
                )
            notify_delivery(written.parent.parent)
            return
        with _content(job) as message:
            written = deliver_maildir(
                path,
                message,
                prepend=prepend,
                folder=folder if folder and (path / f".{folder}").is_dir() else None,
                uid=uid,
                gid=gid,
                quota_bytes=quota,
                size_limit=self.config.mailbox_size_limit,
                autocreate_folder=self.config.autocreate_folder,
                hostname=self.config.hostname,
            )
        notify_delivery(written.parent.parent)  # IMAP IDLE and POP3 learn at once

    def _mbox(
        self, path: Path, job: DeliveryJob, prepend: bytes, uid: int | None, gid: int | None
    ) -> None:
        helper = self._as_user(uid)
        config = self.config
        # the options deliver_mbox takes, the same for the privileged helper (which calls
        # deliver_mbox as the user) and for a delivery in this process
        options = _MboxOptions(
            envelope_sender=job.envelope.envelope_sender,
            prepend=prepend,
            lock_timeout=config.lock_timeout,
            lock_delay=config.lock_delay,
            stale_lock_time=config.stale_lock_time,
            locks=config.locks,
            size_limit=config.mailbox_size_limit,
            arrival_time=job.envelope.arrival_time,
        )
        if helper is not None and uid is not None:
            with job.open_content() as message:  # the helper needs a file descriptor
                helper.mbox(path, message, uid=uid, **options)
        else:
            with _content(job) as message:
                deliver_mbox(path, message, uid=uid, gid=gid, **options)

    async def _forward(
        self, job: DeliveryJob, targets: Sequence[AddressTarget], original: str | None
    ) -> str:
        envelope = job.envelope
        sender = targets[0].owner or envelope.envelope_sender
        prepend = f"Delivered-To: {targets[0].delivered_to}\r\n".encode()
        content = await _in_thread(_read_all, job)
        new = Envelope(
            envelope_sender=sender,
            recipients=tuple(
                Recipient(t.address, orcpt=f"rfc822;{original or t.original_recipient}")
                for t in targets
            ),
            arrival_time=envelope.arrival_time,
            protocol=WithProtocol.LOCAL,
            smtputf8=envelope.smtputf8,
            body_type=envelope.body_type,
        )
        queue_id = await self.spool.enqueue(new, prepend + content)
        return f"forwarded as {queue_id}"

    def _virtual_account_sync(self, address: str) -> Account | None:
        if self.users is None:
            return None
        try:
            user = self.users.lookup_sync(address)
        except UserBackendError as exc:
            raise DeliveryError(True, "4.3.0", f"user lookup failed: {exc}") from None
        if user is None:
            return None
        return Account(user.login, user.home or "", user.uid, user.gid, user=user)

    async def _local_account(self, name: str, domain: str) -> Account | None:
        return await _in_thread(self._account_sync, name, domain)

    def _account_sync(self, name: str, domain: str) -> Account | None:
        """A local user: the user database (``name@domain``, then ``name``), else an account.

        Raises:
            DeliveryError: the user database failed (4.3.0).
        """
        if self.users is not None:
            try:
                user = self.users.lookup_sync(f"{name}@{domain}" if domain else name)
                if user is None and domain:
                    user = self.users.lookup_sync(name)
            except UserBackendError as exc:
                raise DeliveryError(True, "4.3.0", f"user lookup failed: {exc}") from None
            if user is not None:
                return Account(user.login, user.home or "", user.uid, user.gid, user=user)
        return self.system_accounts(name.lower())


class _MboxOptions(TypedDict):
    """The keyword arguments :func:`deliver_mbox` and :meth:`SystemDelivery.mbox` share."""

    envelope_sender: str
    prepend: bytes
    lock_timeout: float
    lock_delay: float
    stale_lock_time: float
    locks: tuple[str, ...]
    size_limit: int
    arrival_time: float | None


def _orcpt_address(recipient: Recipient) -> str | None:
    """The address part of an ``rfc822;`` ORCPT (the recipient before forwarding)."""
    if recipient.orcpt is None:
        return None
    kind, _, address = recipient.orcpt.partition(";")
    return address if kind.lower() == "rfc822" and address else None


@functools.lru_cache(maxsize=64)  # the usual few first recipients
def _virtual_sent(index: int) -> RecipientResult:
    """``RecipientResult`` of a virtual recipient delivered into a Maildir, by its index
    in the envelope: the same for every message (frozen, so shared), made once."""
    return RecipientResult(
        index, Outcome.SENT, "2.0.0", "delivered to maildir", "virtual", agent="virtual"
    )


def _unknown(index: int, user: str, relay: str) -> RecipientResult:
    return RecipientResult(
        index, Outcome.BOUNCED, "5.1.1", f'unknown user: "{user}"', relay, agent=relay
    )


@contextlib.contextmanager
def _content(job: DeliveryJob) -> Iterator[MessageSource]:
    """The message for a write in this process: the bytes the queue manager read already,
    else the open queue file (closed afterwards)."""
    if job.content is not None:
        yield job.content
        return
    with job.open_content() as handle:
        yield handle


def _read_header(job: DeliveryJob) -> bytes:
    if job.content is not None:
        data = job.content[: 256 * 1024]
    else:
        with job.open_content() as handle:
            data = handle.read(256 * 1024)
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def _read_all(job: DeliveryJob) -> bytes:
    if job.content is not None:
        return job.content
    with job.open_content() as handle:
        return handle.read()
