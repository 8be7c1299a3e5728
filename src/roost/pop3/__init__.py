"""POP3 server protocol layer (RFC 1939, RFC 2449, RFC 2595 STLS, RFC 5034 AUTH).

Sans-IO, shaped like h11 (see STYLE.md): no asyncio, sockets or files in these modules.

Modules:
    protocol: :class:`~roost.pop3.protocol.Connection`, octets in, command events out.
    state: the RFC 1939 state machine (:class:`~roost.pop3.state.ServerState`), the
        commands valid per state, and :class:`~roost.pop3.state.MaildropView`.
    render: status lines, response codes, multi-line responses, message streaming
        (CRLF normalisation and byte-stuffing), CAPA.
    maildrop: the :class:`~roost.pop3.maildrop.Maildrop` protocol the store implements.
    errors: domain errors (user database, store) to POP3 failures; imports asyncio
        through ``roost.auth.users``, so it is not re-exported here.

This file re-exports nothing, so importing one module imports only what it needs.
"""

from __future__ import annotations
