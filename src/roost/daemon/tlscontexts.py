"""Server TLS contexts per service, built from main.cf and rebuilt on reload.

Which parameters each service reads: ``smtpd_tls_cert_file``/``smtpd_tls_key_file`` for
smtp, submission and submissions (Postfix's names); ``imap_tls_*`` for imap and imaps;
``pop3_tls_*`` for pop3 and pop3s. They all default to ``$tls_cert_file``/``$tls_key_file``,
and per-service overrides (``submission/smtpd_tls_cert_file = ...``) apply.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Final

from roost.config import Settings
from roost.tls import make_server_context

__all__ = ["ContextLoader", "TLSContexts", "set_default_loader", "tls_files"]

#: (certificate file, key file, ``ssl_min_protocol``) -> a server context.
ContextLoader = Callable[[Path, Path, str], ssl.SSLContext]


def _load(cert: Path, key: Path, min_version: str) -> ssl.SSLContext:
    return make_server_context(cert, key, min_version=min_version)


_PREFIX: Final = {
    "smtp": "smtpd",
    "submission": "smtpd",
    "submissions": "smtpd",
    "imap": "imap",
    "imaps": "imap",
    "pop3": "pop3",
    "pop3s": "pop3",
}


def tls_files(settings: Settings, service: str) -> tuple[Path, Path]:
    """Return (certificate file, key file) of ``service`` after overrides."""
    view = settings.for_service(service)
    prefix = _PREFIX.get(service, "smtpd")
    return view.path_of(f"{prefix}_tls_cert_file"), view.path_of(f"{prefix}_tls_key_file")


#: The process's default context loader (one element; None: read the files directly).
_DEFAULT_LOADER: list[ContextLoader | None] = [None]


def set_default_loader(loader: ContextLoader | None) -> None:
    """Make ``loader`` the default of every :class:`TLSContexts` made from now on.

    The daemon sets it at the privilege drop (:meth:`roost.daemon.app.Daemon.drop_privileges`)
    to :func:`roost.daemon.privhelper.tls_loader`, so that reloads in the master and in the
    workers forked after the drop read root-only keys through the privileged helper.
    """
    _DEFAULT_LOADER[0] = loader


class TLSContexts:
    """The :class:`roost.daemon.service.TLSProvider` of the daemon.

    Contexts are built on first use and shared between services using the same files.
    A reload makes a new instance; sessions keep the context they started with.

    Args:
        settings: the settings naming the files.
        loader: builds a context from (certificate, key, ``ssl_min_protocol``); by default
            the one given to :func:`set_default_loader` (after the privilege drop: reading
            the files through the privileged helper), else the files are read directly.
    """

    def __init__(self, settings: Settings, loader: ContextLoader | None = None) -> None:
        self._settings = settings
        self._loader = loader or _DEFAULT_LOADER[0] or _load
        self._contexts: dict[tuple[Path, Path], ssl.SSLContext] = {}

    def server_context(self, service: str) -> ssl.SSLContext:
        """Return the server context of ``service``.

        Raises:
            roost.tls.TLSError: a file is missing, unreadable or the pair does not match.
        """
        files = tls_files(self._settings, service)
        context = self._contexts.get(files)
        if context is None:
            context = self._loader(*files, self._settings.string("ssl_min_protocol"))
            self._contexts[files] = context
        return context

    def preload(self, services: list[str]) -> None:
        """Build every service's context now so a bad file fails start-up or reload.

        Raises:
            roost.tls.TLSError: as :meth:`server_context`.
        """
        for service in services:
            self.server_context(service)
