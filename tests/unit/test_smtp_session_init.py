"""aiosmtpd's per-connection set-up done once per class (roost.smtp.session._init_aiosmtpd):
a session set up from the class's template equals one set up by aiosmtpd's own
``SMTP.__init__``, with its command and AUTH tables bound to itself."""

from __future__ import annotations

import asyncio
import types
from typing import Any

from aiosmtpd.smtp import SMTP

from roost.smtp.session import SMTPSession, _init_aiosmtpd


class _Probe(SMTP):
    async def smtp_XTEST(self, arg: str) -> None:
        """A command of the subclass, found like aiosmtpd finds ``smtp_*`` methods."""


def _comparable(session: SMTP) -> dict[str, Any]:
    """The session's aiosmtpd attributes with bound methods replaced by (function, self)."""

    def plain(value: Any) -> Any:
        if isinstance(value, types.MethodType):
            return (value.__func__, value.__self__ is session)
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, tuple):
            return tuple(plain(item) for item in value)
        return value

    skip = {"_stream_reader_wr", "_strong_reader", "_closed", "_loop", "_drain_waiters"}
    skip |= {"_source_traceback"}
    return {k: plain(v) for k, v in vars(session).items() if k not in skip}


async def test_a_templated_session_equals_one_set_up_by_aiosmtpd() -> None:
    first = _Probe.__new__(_Probe)
    _init_aiosmtpd(first, hostname="one.example", ident="roost", timeout=300)  # the real one
    fast = _Probe.__new__(_Probe)
    _init_aiosmtpd(fast, hostname="mx.example", ident="roost 1", timeout=60)
    real = _Probe(
        None,
        data_size_limit=None,
        enable_SMTPUTF8=True,
        hostname="mx.example",
        ident="roost 1",
        tls_context=None,
        timeout=60,
        auth_require_tls=False,
    )
    assert _comparable(fast) == _comparable(real)
    assert fast._smtp_methods["XTEST"].__self__ is fast
    assert fast._smtp_methods["EHLO"].__self__ is fast
    assert all(attr.method.__self__ is fast for attr in fast._auth_methods.values())
    # its own stream protocol, holding its own reader
    assert fast._stream_reader is not first._stream_reader
    assert fast._strong_reader is fast._stream_reader is not None
    assert not set(vars(fast)) - set(vars(real))
    assert fast.loop is asyncio.get_running_loop()


def test_the_session_class_uses_the_template() -> None:
    # SMTPSession.__init__ goes through _init_aiosmtpd (not SMTP.__init__ directly)
    assert "_init_aiosmtpd" in SMTPSession.__init__.__code__.co_names
