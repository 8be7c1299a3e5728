"""The systemd notify protocol: tell the service manager we are ready, reloading, stopping.

The few lines of sd_notify(3) roost needs, without libsystemd: each notification is one
datagram of ``KEY=value`` lines sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``.
Used with ``Type=notify-reload`` (systemd >= 253) or ``Type=notify``.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from typing import Final

__all__ = ["Notifier"]

_log: Final = logging.getLogger("roost")

_KEY: Final = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_SEND_TIMEOUT: Final = 2.0  # seconds; systemd reads at once, this only bounds a stuck manager


class Notifier:
    """Sends state changes to systemd, or does nothing when not run by systemd.

    A failed send never raises: the first failure is logged as a warning, later ones are
    ignored, because the service must keep working when the manager cannot be told.

    Example::

        notifier = Notifier.from_environ()
        notifier.ready("accepting connections")
        ...
        notifier.reloading()   # on SIGHUP, then ready() when the new config is in place
        notifier.stopping()    # on SIGTERM
    """

    def __init__(self, address: str | None) -> None:
        """Create a notifier for one socket.

        Args:
            address: the ``NOTIFY_SOCKET`` value: an absolute filesystem path, or an
                abstract socket name starting with ``@``. ``None`` or ``""`` makes a no-op
                notifier. Other forms (systemd's ``vsock:``) are not supported: a warning
                is logged and the notifier does nothing.
        """
        self._address: str | bytes | None = None
        self._socket: socket.socket | None = None
        self._connected = False
        self._warned = False
        if not address:
            return
        if address.startswith("@"):
            # Linux abstract namespace: a leading NUL byte instead of "@".
            self._address = b"\0" + os.fsencode(address[1:])
        elif address.startswith("/"):
            self._address = address
        else:
            self._warn(f"unsupported NOTIFY_SOCKET address {address!r}; not notifying systemd")

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, *, unset: bool = False
    ) -> Notifier:
        """Create the notifier systemd asked for through ``$NOTIFY_SOCKET``.

        Args:
            environ: the environment to read; ``os.environ`` by default.
            unset: remove ``NOTIFY_SOCKET`` from ``os.environ`` afterwards, so child
                processes (``|command`` deliveries) cannot notify in the daemon's name
                (sd_notify(3)'s *unset_environment*).

        Returns:
            A notifier; a no-op one when the variable is absent or empty.
        """
        source = os.environ if environ is None else environ
        notifier = cls(source.get("NOTIFY_SOCKET"))
        if unset:
            os.environ.pop("NOTIFY_SOCKET", None)
        return notifier

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere (false for the no-op notifier)."""
        return self._address is not None

    def ready(self, status: str | None = None) -> None:
        """Send ``READY=1``: startup, or a reload, is complete.

        Args:
            status: an optional ``STATUS=`` text shown by ``systemctl status``.
        """
        if status is None:
            self.send(READY=1)
        else:
            self.send(READY=1, STATUS=_one_line(status))

    def reloading(self) -> None:
        """Send ``RELOADING=1`` with ``MONOTONIC_USEC``, as ``Type=notify-reload`` expects.

        ``MONOTONIC_USEC`` is CLOCK_MONOTONIC in microseconds; systemd >= 253 uses it to
        tell this reload from an earlier one. Call :meth:`ready` when the reload is done.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(RELOADING=1, MONOTONIC_USEC=usec)

    def stopping(self) -> None:
        """Send ``STOPPING=1``: a graceful shutdown has begun."""
        self.send(STOPPING=1)

    def status(self, text: str) -> None:
        """Send ``STATUS=text`` for ``systemctl status``; line breaks become spaces."""
        self.send(STATUS=_one_line(text))

    def send(self, **fields: str | int) -> None:
        """Send one datagram of ``KEY=value`` lines, in the order given.

        Does nothing on a no-op notifier. A failure to send is logged once and otherwise
        ignored.

        Args:
            **fields: the variables of sd_notify(3), e.g. ``READY=1``, ``STATUS="..."``,
                ``MAINPID=1234``.

        Raises:
            ValueError: a key is not an upper-case sd_notify variable name, or a value
                contains a line break (a programming error, unlike a failed send).
        """
        lines = []
        for key, value in fields.items():
            text = str(value)
            if not _KEY.match(key):
                raise ValueError(f"not an sd_notify variable name: {key!r}")
            if "\n" in text:
                raise ValueError(f"sd_notify value of {key} contains a line break")
            lines.append(f"{key}={text}\n")
        if self._address is None or not lines:
            return
        data = "".join(lines).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.settimeout(_SEND_TIMEOUT)
            if self._connected:
                self._socket.send(data)
            else:
                self._socket.sendto(data, self._address)
        except OSError as error:
            self._warn(f"cannot notify systemd at {self._describe_address()}: {error}")

    def connect(self) -> None:
        """Connect the socket now (as root, before the privilege drop): later sends need no
        permission on the socket's path, which may be in a directory only root can enter.

        A failure is logged once; sends then keep trying ``sendto`` as before.
        """
        if self._address is None:
            return
        try:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.settimeout(_SEND_TIMEOUT)
            self._socket.connect(self._address)
            self._connected = True
        except OSError as error:
            self._warn(f"cannot connect to systemd at {self._describe_address()}: {error}")

    def close(self) -> None:
        """Close the socket; a later send opens a new one."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
            self._connected = False

    def _describe_address(self) -> str:
        if isinstance(self._address, bytes):
            return "@" + os.fsdecode(self._address[1:])
        return str(self._address)

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            _log.warning(message)


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())
