"""User and password databases, SASL and failed-auth throttling.

One user database serves SMTP recipient validation, local delivery, SMTP AUTH, IMAP and
POP3. The package imports nothing from ``roost.config``: constructors take plain values and
``daemon/`` builds the objects.

Modules:
    users: ``User``, the ``UserBackend`` protocol, ``VerifyResult`` and ``UserDatabase``
        (the async facade), ``expand_mail_location`` (Dovecot ``mail_location`` variables).
    schemes: Dovecot password schemes (``{SHA512-CRYPT}``, ``{BLF-CRYPT}``, ...):
        ``verify_password`` and ``hash_password``.
    passwdfile: the Dovecot passwd-file backend.
    sasl: sans-IO SASL server mechanisms (PLAIN, LOGIN) for SMTP, IMAP and POP3.
    throttle: sans-IO failed-authentication throttling.

This file deliberately re-exports nothing so that importing the sans-IO modules
(``roost.auth.sasl``, ``roost.auth.throttle``) does not import asyncio.
"""

from __future__ import annotations
