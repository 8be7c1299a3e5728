"""One user's Maildir++ tree: the mailbox list, subscriptions, special-use, quota.

Layout (Dovecot's default ``mail_location = maildir:~/Maildir``, LAYOUT=Maildir++)::

    ~/Maildir/                 INBOX: cur/ new/ tmp/, dovecot-uidlist, dovecot-keywords
    ~/Maildir/.Sent/           the folder "Sent" (and a "maildirfolder" marker file)
    ~/Maildir/.Archive.2024/   "Archive.2024": "2024" below "Archive"
    ~/Maildir/.Entw&APw-rfe/   "Entwürfe": names on disk in modified UTF-7
    ~/Maildir/subscriptions    Dovecot's subscriptions file
    ~/Maildir/dovecot-uidvalidity, dovecot-uidvalidity.<hex>   UIDVALIDITY allocation
    ~/Maildir/roost-special-use                                special-use attributes

Names in the API are Unicode with ``.`` as the hierarchy separator, which is what Dovecot
shows IMAP clients for a Maildir++ namespace by default (``separator = .``).

Special-use attributes (RFC 6154) have no place in Dovecot's Maildir; Dovecot takes them
from its configuration. Roost keeps those of CREATE (USE ...) and of
:meth:`MailStore.ensure_special_use` in ``roost-special-use`` (``<attribute> TAB <name>``
lines), which Dovecot ignores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

from roost.store._fs import FsPolicy
from roost.store.bus import DEFAULT_BUS, ChangeBus
from roost.store.dotlock import replace_file
from roost.store.errors import (
    InvalidMailboxName,
    MailboxExists,
    MailboxNotFound,
    NotAllowed,
    OverQuota,
    StoreError,
    UnsupportedSpecialUse,
)
from roost.store.index import INDEX_NAME
from roost.store.mailbox import CUR, NEW, TMP, Mailbox
from roost.store.model import MailboxInfo, MailboxStatus
from roost.store.mutf7 import MUTF7Error, decode_mutf7, encode_mutf7
from roost.store.subscriptions import read_subscriptions, set_subscribed
from roost.store.uidlist import UIDLIST_NAME, UidList
from roost.store.uidvalidity import next_uid_validity

__all__ = [
    "DEFAULT_SPECIAL_USE",
    "HIERARCHY_SEPARATOR",
    "INBOX",
    "SPECIAL_USE_ATTRIBUTES",
    "MailStore",
    "normalize_mailbox_name",
]

logger = logging.getLogger("roost.store")

#: The hierarchy separator of mailbox names (Dovecot's Maildir++ default).
HIERARCHY_SEPARATOR: Final = "."
INBOX: Final = "INBOX"
#: RFC 6154 §2 attributes, and \\Important (RFC 8457).
SPECIAL_USE_ATTRIBUTES: Final = frozenset(
    {"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Important", "\\Junk", "\\Sent", "\\Trash"}
)
#: What :meth:`MailStore.ensure_special_use` is usually given (Dovecot's example config).
DEFAULT_SPECIAL_USE: Final[Mapping[str, str]] = MappingProxyType(
    {
        "Drafts": "\\Drafts",
        "Sent": "\\Sent",
        "Trash": "\\Trash",
        "Junk": "\\Junk",
        "Archive": "\\Archive",
    }
)
SPECIAL_USE_NAME: Final = "roost-special-use"
MAILDIRFOLDER_NAME: Final = "maildirfolder"
#: Dovecot renames a folder to this before removing it; listings skip it.
_TRASHED: Final = ".DOVECOT-TRASHED"
_NAME_MAX: Final = 255
_FORBIDDEN: Final = frozenset("*%/")
_ATTRIBUTES_BY_LOWER: Final = {attribute.lower(): attribute for attribute in SPECIAL_USE_ATTRIBUTES}


def normalize_mailbox_name(name: str) -> str:
    """Check a mailbox name and return its canonical form (``inbox.x`` -> ``INBOX.x``).

    See Also: RFC 9051 §5.1 (mailbox naming); Dovecot's Maildir++ name rules.

    Raises:
        InvalidMailboxName: empty, an empty level (``a..b``, leading or trailing ``.``),
            ``/``, ``*``, ``%``, a leading ``~``, control characters, or longer than a
            directory name can be (255 bytes in modified UTF-7).
    """
    head, sep, rest = name.partition(HIERARCHY_SEPARATOR)
    if head.upper() == INBOX:
        name = INBOX + sep + rest
    levels = name.split(HIERARCHY_SEPARATOR)
    problem = ""
    if not name or any(not level for level in levels):
        problem = "empty hierarchy level"
    elif name.startswith("~") or any(char in _FORBIDDEN for char in name):
        problem = "character not allowed"
    elif any(char < " " or char == "\x7f" for char in name):
        problem = "control character"
    elif name == _TRASHED[1:]:
        problem = "reserved name"
    else:
        try:
            encoded = encode_mutf7(name)
        except ValueError:
            problem = "not representable in modified UTF-7"
        else:
            if len(encoded) + 1 > _NAME_MAX:
                problem = "name too long"
    if problem:
        raise InvalidMailboxName(f"invalid mailbox name {name!r}: {problem}", mailbox=name)
    return name


def _special_use(attribute: str) -> str:
    canonical = _ATTRIBUTES_BY_LOWER.get(attribute.lower())
    if canonical is None:
        raise UnsupportedSpecialUse(f"unsupported special-use attribute {attribute!r}")
    return canonical


def _folder_directory(name: str) -> str:
    """The Maildir++ directory name of folder ``name`` (normalized, not INBOX): ``.``
    and its modified UTF-7 (RFC 3501 §5.1.3), e.g. ``.Sent`` or ``.Parent.Child``."""
    return "." + encode_mutf7(name)


class MailStore:
    """One user's mail: a Maildir++ tree laid out as Dovecot lays it out.

    Args:
        root: the Maildir root (INBOX's directory), e.g. ``/home/ann/Maildir``.
        uid: owner for new files and directories (when the daemon runs as root).
        gid: group for them.
        fsync: make messages and control files durable before reporting success.
        quota: the most bytes (sum of message file sizes, all mailboxes) the user may
            store; None for no limit. Checked on append and copy.
        index_dir: where the indexes go (Dovecot's ``INDEX=``): ``<index_dir>/`` for
            INBOX and ``<index_dir>/.<name>/`` for folders. Default: in each mailbox
            directory.
        bus: where changes are published.
        create: create ``root`` (and its cur/new/tmp) when missing.

    Raises:
        MailboxNotFound: ``root`` is not a Maildir and ``create`` is False.
        StoreError: ``root`` cannot be created.
    """

    def __init__(
        self,
        root: Path,
        *,
        uid: int | None = None,
        gid: int | None = None,
        fsync: bool = True,
        quota: int | None = None,
        index_dir: Path | None = None,
        bus: ChangeBus = DEFAULT_BUS,
        create: bool = True,
    ) -> None:
        self.root = Path(root)
        self.quota = quota
        self.index_dir = index_dir
        self.bus = bus
        try:
            if create:
                self._create_root(FsPolicy(uid, gid, fsync))
            elif not (self.root / CUR).is_dir():
                raise MailboxNotFound(f"{self.root} is not a Maildir", mailbox=INBOX)
            dir_mode = (os.stat(self.root).st_mode & 0o7777) | 0o700
        except OSError as exc:
            raise StoreError.from_os_error(exc, f"open {self.root}") from exc
        self._policy = FsPolicy(uid, gid, fsync, dir_mode, dir_mode & 0o666)

    def _create_root(self, policy: FsPolicy) -> None:
        if not self.root.is_dir():
            self.root.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                policy.mkdir(self.root)
        for sub in (TMP, NEW, CUR):
            with contextlib.suppress(FileExistsError):
                policy.mkdir(self.root / sub)

    # ------------------------------------------------------------------ names

    @property
    def separator(self) -> str:
        """The hierarchy separator: ``.``."""
        return HIERARCHY_SEPARATOR

    def mailbox_path(self, name: str) -> Path:
        """The Maildir directory of a mailbox (it need not exist).

        Raises:
            InvalidMailboxName: see :func:`normalize_mailbox_name`.
        """
        name = normalize_mailbox_name(name)
        if name == INBOX:
            return self.root
        return self.root / _folder_directory(name)

    def _index_path(self, name: str, directory: Path) -> Path:
        if self.index_dir is None:
            return directory / INDEX_NAME
        folder = self.index_dir if name == INBOX else self.index_dir / directory.name
        folder.mkdir(parents=True, exist_ok=True, mode=self._policy.dir_mode)
        return folder / INDEX_NAME

    def _folders(self) -> dict[str, Path]:
        """Every folder directory: name -> path (INBOX excluded)."""
        folders: dict[str, Path] = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                dirname = entry.name
                if not dirname.startswith(".") or dirname in (".", "..", _TRASHED):
                    continue
                if not entry.is_dir():
                    continue
                try:
                    name = normalize_mailbox_name(decode_mutf7(dirname[1:]))
                except (MUTF7Error, InvalidMailboxName):
                    logger.warning("%s: ignoring folder %r (not a valid name)", self.root, dirname)
                    continue
                if name == INBOX:
                    continue
                folders[name] = Path(entry.path)
        return folders

    def exists(self, name: str) -> bool:
        """True if ``name`` is a selectable mailbox.

        Raises:
            InvalidMailboxName: see :func:`normalize_mailbox_name`.
        """
        # A string path, not mailbox_path(): pathlib interns each component it parses,
        # and every login checks the special-use folders (ensure_special_use), so a
        # worker's logins added five short-lived interned strings each, until the
        # table of interned strings grew (~1 MiB a process; docs/performance.md, "IMAP
        # idle memory, session 8").
        name = normalize_mailbox_name(name)
        if name == INBOX:
            return os.path.isdir(os.path.join(self.root, CUR))
        return os.path.isdir(os.path.join(self.root, _folder_directory(name), CUR))

    # ------------------------------------------------------------------ listing

    def list_mailboxes(self) -> list[MailboxInfo]:
        """Every mailbox, INBOX first, then by name; parents that exist only through their
        children come with ``\\Noselect`` and ``\\NonExistent`` (RFC 9051 §6.3.9).

        Raises:
            StoreError: the root cannot be listed.
        """
        try:
            folders = self._folders()
            selectable = {name: (path / CUR).is_dir() for name, path in folders.items()}
            subscribed = set(read_subscriptions(self.root))
            special = self._read_special_use()
        except OSError as exc:
            raise StoreError.from_os_error(exc, f"list {self.root}") from exc
        selectable[INBOX] = True
        parents: set[str] = set()
        for name in selectable:
            levels = name.split(HIERARCHY_SEPARATOR)
            for end in range(1, len(levels)):
                parents.add(HIERARCHY_SEPARATOR.join(levels[:end]))
        infos: list[MailboxInfo] = []
        for name in sorted(selectable.keys() | parents, key=lambda n: (n != INBOX, n)):
            attributes = {"\\HasChildren" if name in parents else "\\HasNoChildren"}
            if name not in selectable:
                attributes |= {"\\Noselect", "\\NonExistent"}
            elif not selectable[name]:
                attributes.add("\\Noselect")
            if name in subscribed:
                attributes.add("\\Subscribed")
            infos.append(MailboxInfo(name, frozenset(attributes), special.get(name)))
        return infos

    # ------------------------------------------------------------ create/delete

    def create(self, name: str, special_use: str | None = None) -> None:
        """Create a mailbox (CREATE, RFC 9051 §6.3.4; CREATE-SPECIAL-USE, RFC 6154 §3).

        A trailing separator is dropped (Maildir++ cannot hold a pure directory). Parents
        are not created: they show as ``\\Noselect`` until created themselves.

        Args:
            name: the new mailbox.
            special_use: an RFC 6154 attribute to give it, e.g. ``"\\\\Sent"``.

        Raises:
            MailboxExists: it exists (INBOX always does).
            InvalidMailboxName: see :func:`normalize_mailbox_name`.
            UnsupportedSpecialUse: unknown attribute.
            StoreError: the directories cannot be created.
        """
        if name.endswith(HIERARCHY_SEPARATOR):
            name = name[:-1]
        name = normalize_mailbox_name(name)
        attribute = None if special_use is None else _special_use(special_use)
        if name == INBOX:
            raise MailboxExists("INBOX always exists", mailbox=name)
        # A string path, as in exists(): the first login creates the special-use
        # folders, and pathlib would intern each folder's name (short-lived).
        directory = os.path.join(self.root, _folder_directory(name))
        policy = self._policy
        try:
            try:
                policy.mkdir(directory)
            except FileExistsError:
                if os.path.exists(os.path.join(directory, CUR)) or os.path.exists(
                    os.path.join(directory, UIDLIST_NAME)
                ):
                    raise MailboxExists(f"mailbox {name!r} exists", mailbox=name) from None
            for sub in (TMP, NEW):
                with contextlib.suppress(FileExistsError):
                    policy.mkdir(os.path.join(directory, sub))
            marker = os.open(
                os.path.join(directory, MAILDIRFOLDER_NAME),
                os.O_WRONLY | os.O_CREAT,
                policy.file_mode,
            )
            policy.chown_fd(marker)
            os.close(marker)
            uidlist = UidList(
                os.path.join(directory, UIDLIST_NAME),
                fsync=policy.fsync,
                file_mode=policy.file_mode,
                chown=policy.chown_fd,
            )
            validity = next_uid_validity(
                self.root, file_mode=policy.file_mode, chown=policy.chown_fd
            )
            uidlist.rewrite([], uid_validity=validity, next_uid=1)
            policy.mkdir(os.path.join(directory, CUR))  # last: now it is selectable
        except OSError as exc:
            raise StoreError.from_os_error(exc, f"create {name}", mailbox=name) from exc
        if attribute is not None:
            self._set_special_use(name, attribute)

    def delete(self, name: str) -> None:
        """Delete a mailbox and its messages (DELETE, RFC 9051 §6.3.5).

        Inferior mailboxes stay; the name then lists as ``\\Noselect`` while they exist.
        Subscriptions stay too (RFC 9051 §6.3.9: the server must not remove them).

        Raises:
            NotAllowed: INBOX, or a ``\\Noselect`` name that has inferiors.
            MailboxNotFound: no such mailbox.
            InvalidMailboxName: see :func:`normalize_mailbox_name`.
            StoreError: removing failed.
        """
        name = normalize_mailbox_name(name)
        if name == INBOX:
            raise NotAllowed("INBOX cannot be deleted", mailbox=name)
        directory = self.mailbox_path(name)
        try:
            has_children = any(
                other.startswith(name + HIERARCHY_SEPARATOR) for other in self._folders()
            )
            if not (directory / CUR).is_dir():
                if has_children:
                    raise NotAllowed(
                        f"{name!r} has inferior mailboxes and is \\Noselect", mailbox=name
                    )
                if not directory.is_dir():
                    raise MailboxNotFound(f"mailbox {name!r} does not exist", mailbox=name)
            trash = self.root / _TRASHED
            if trash.exists():
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(directory, trash)
            shutil.rmtree(trash, onerror=_log_rmtree_error)
            if self.index_dir is not None:
                shutil.rmtree(self.index_dir / directory.name, ignore_errors=True)
        except FileNotFoundError as exc:
            raise MailboxNotFound(f"mailbox {name!r} does not exist", mailbox=name) from exc
        except OSError as exc:
            raise StoreError.from_os_error(exc, f"delete {name}", mailbox=name) from exc
        self._set_special_use(name, None)
        self.bus.publish(directory)

    def rename(self, old: str, new: str) -> None:
        """Rename a mailbox and its inferiors (RENAME, RFC 9051 §6.3.6).

        Renaming INBOX moves its messages into a new mailbox ``new`` and leaves INBOX
        empty; INBOX's inferiors stay. Subscriptions and special-use follow the names,
        as in Dovecot. UIDVALIDITY and UIDs are kept.

        Raises:
            MailboxNotFound: ``old`` does not exist (and has no inferiors).
            MailboxExists: ``new`` (or one of the renamed inferiors) exists.
            NotAllowed: ``new`` is below ``old``.
            InvalidMailboxName: see :func:`normalize_mailbox_name`.
            StoreError: renaming failed.
        """
        old = normalize_mailbox_name(old)
        new = normalize_mailbox_name(new)
        if new == INBOX or old == new:
            raise MailboxExists(f"mailbox {new!r} exists", mailbox=new)
        if new.startswith(old + HIERARCHY_SEPARATOR):
            raise NotAllowed(f"cannot rename {old!r} below itself", mailbox=old)
        if old == INBOX:
            self._rename_inbox(new)
            return
        try:
            folders = self._folders()
            prefix = old + HIERARCHY_SEPARATOR
            moves = [(old, new)] if old in folders else []
            moves += [
                (child, new + child[len(old) :]) for child in folders if child.startswith(prefix)
            ]
            if not moves:
                raise MailboxNotFound(f"mailbox {old!r} does not exist", mailbox=old)
            for _, target in moves:
                if target in folders:
                    raise MailboxExists(f"mailbox {target!r} exists", mailbox=target)
            for source, target in moves:
                source_dir, target_dir = self.mailbox_path(source), self.mailbox_path(target)
                os.rename(source_dir, target_dir)
                if self.index_dir is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(
                            self.index_dir / source_dir.name, self.index_dir / target_dir.name
                        )
                self.bus.publish(source_dir)
        except OSError as exc:
            raise StoreError.from_os_error(exc, f"rename {old}", mailbox=old) from exc
        subscribed = set(self.subscriptions())
        special = self._read_special_use()
        for source, target in moves:
            if source in subscribed:
                self.unsubscribe(source)
                self.subscribe(target)
            if source in special:
                self._set_special_use(source, None)
                self._set_special_use(target, special[source])

    def _rename_inbox(self, new: str) -> None:
        self.create(new)
        with (
            self._open(INBOX, readonly=True, quota=False) as inbox,
            self._open(new, readonly=True, quota=False) as target,
        ):
            inbox.move([message.uid for message in inbox.messages()], target)

    # ------------------------------------------------------------ subscriptions

    def subscribe(self, name: str) -> None:
        """Add ``name`` to the subscriptions (SUBSCRIBE, RFC 9051 §6.3.7); it need not exist.

        Raises:
            InvalidMailboxName: see :func:`normalize_mailbox_name`.
            StoreError: the file cannot be written.
        """
        self._subscribe(normalize_mailbox_name(name), True)

    def unsubscribe(self, name: str) -> None:
        """Remove ``name`` from the subscriptions (UNSUBSCRIBE, RFC 9051 §6.3.8).

        Raises:
            InvalidMailboxName: see :func:`normalize_mailbox_name`.
            StoreError: the file cannot be written.
        """
        self._subscribe(normalize_mailbox_name(name), False)

    def _subscribe(self, name: str, subscribed: bool) -> None:
        policy = self._policy
        try:
            set_subscribed(
                self.root,
                name,
                subscribed,
                fsync=policy.fsync,
                file_mode=policy.file_mode,
                chown=policy.chown_fd,
            )
        except OSError as exc:
            raise StoreError.from_os_error(exc, "write subscriptions", mailbox=name) from exc

    def subscriptions(self) -> list[str]:
        """The subscribed names, existing or not, in file order.

        Raises:
            StoreError: the file cannot be read.
        """
        try:
            return read_subscriptions(self.root)
        except OSError as exc:
            raise StoreError.from_os_error(exc, "read subscriptions") from exc

    # -------------------------------------------------------------- special-use

    def _read_special_use(self) -> dict[str, str]:
        try:
            text = (self.root / SPECIAL_USE_NAME).read_text("utf-8")
        except FileNotFoundError:
            return {}
        special: dict[str, str] = {}
        for line in text.splitlines():
            attribute, sep, name = line.partition("\t")
            if sep and attribute.lower() in _ATTRIBUTES_BY_LOWER:
                special[name] = _ATTRIBUTES_BY_LOWER[attribute.lower()]
        return special

    def _set_special_use(self, name: str, attribute: str | None) -> None:
        path = self.root / SPECIAL_USE_NAME

        def content() -> bytes | None:
            special = self._read_special_use()
            if special.get(name) == attribute:
                return None
            if attribute is None:
                del special[name]
            else:
                special[name] = attribute
            lines = "".join(f"{attr}\t{box}\n" for box, attr in sorted(special.items()))
            return lines.encode("utf-8")

        try:
            replace_file(
                path,
                content,
                fsync=self._policy.fsync,
                mode=self._policy.file_mode,
                chown=self._policy.chown_fd,
            )
        except OSError as exc:
            raise StoreError.from_os_error(exc, f"write {SPECIAL_USE_NAME}", mailbox=name) from exc

    def special_use(self) -> dict[str, str]:
        """Mailbox name -> special-use attribute, for the mailboxes that have one."""
        try:
            return self._read_special_use()
        except OSError as exc:
            raise StoreError.from_os_error(exc, f"read {SPECIAL_USE_NAME}") from exc

    def ensure_special_use(
        self, names: Mapping[str, str] = DEFAULT_SPECIAL_USE, *, subscribe: bool = True
    ) -> list[str]:
        """Create the special-use mailboxes a user lacks (Dovecot's ``auto = subscribe``).

        A mailbox is not created when another one already has its attribute (say the
        client made "Sent Items" with ``\\Sent``). An existing mailbox of that name that
        has no attribute gets it.

        Args:
            names: mailbox name -> RFC 6154 attribute, e.g. :data:`DEFAULT_SPECIAL_USE`.
            subscribe: subscribe the mailboxes created.

        Returns:
            The names created.

        Raises:
            UnsupportedSpecialUse: an unknown attribute.
            InvalidMailboxName: a bad name.
            StoreError: creating failed.
        """
        created: list[str] = []
        special = self.special_use()
        for raw_name, raw_attribute in names.items():
            name = normalize_mailbox_name(raw_name)
            attribute = _special_use(raw_attribute)
            if self.exists(name):
                if name not in special and attribute not in special.values():
                    self._set_special_use(name, attribute)
                    special[name] = attribute
                continue
            if attribute in special.values():
                continue
            try:
                self.create(name, special_use=attribute)
            except MailboxExists:
                continue
            special[name] = attribute
            created.append(name)
            if subscribe:
                self.subscribe(name)
        return created

    # --------------------------------------------------------------- mailboxes

    def open(self, name: str, *, readonly: bool = False) -> Mailbox:
        """Open a mailbox (SELECT; EXAMINE with ``readonly``).

        Raises:
            MailboxNotFound: no such (selectable) mailbox.
            InvalidMailboxName: see :func:`normalize_mailbox_name`.
            StoreError: the Maildir or its index cannot be read.
        """
        return self._open(normalize_mailbox_name(name), readonly=readonly, quota=True)

    def _open(self, name: str, *, readonly: bool, quota: bool, view: bool = True) -> Mailbox:
        directory = self.mailbox_path(name)
        if not (directory / CUR).is_dir():
            raise MailboxNotFound(f"mailbox {name!r} does not exist", mailbox=name)
        return Mailbox(
            name,
            directory,
            index_path=self._index_path(name, directory),
            root=self.root,
            policy=self._policy,
            bus=self.bus,
            readonly=readonly,
            quota_check=self._check_quota if quota and self.quota is not None else None,
            view=view,
        )

    def status(self, name: str) -> MailboxStatus:
        """STATUS of a mailbox without loading its message list (RFC 9051 §6.3.11).

        Raises:
            MailboxNotFound, InvalidMailboxName, StoreError: as :meth:`open`.
        """
        with self._open(
            normalize_mailbox_name(name), readonly=True, quota=False, view=False
        ) as box:
            return box.status()

    def _selectable(self) -> Iterator[str]:
        yield INBOX
        for name, path in self._folders().items():
            if (path / CUR).is_dir():
                yield name

    def quota_usage(self) -> int:
        """Bytes stored in all mailboxes (message file sizes).

        Raises:
            StoreError: a mailbox cannot be read.
        """
        total = 0
        for name in self._selectable():
            try:
                with self._open(name, readonly=True, quota=False, view=False) as box:
                    total += box.physical_size
            except MailboxNotFound:
                continue  # deleted meanwhile
        return total

    def _check_quota(self, adding: int) -> None:
        if self.quota is None:
            return
        used = self.quota_usage()
        if used + adding > self.quota:
            raise OverQuota(f"quota exceeded: {used} + {adding} > {self.quota} bytes")


def _log_rmtree_error(function: object, path: str, exc_info: object) -> None:
    logger.warning("cannot remove %s while deleting a mailbox", path)
