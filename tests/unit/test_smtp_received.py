"""The Received header's date is computed once per second and equals email.utils' own."""

from __future__ import annotations

import datetime
import email.utils

import pytest

from roost.smtp.received import received_header


@pytest.mark.parametrize("now", [1_700_000_000.0, 1_700_000_000.75, 1_700_000_001.25, 1e9])
def test_the_date_is_the_local_time_of_the_second(now: float) -> None:
    header = received_header(
        helo="client.example",
        client_name="unknown",
        client_address="192.0.2.1",
        hostname="mx.example",
        mail_name="roost",
        protocol="ESMTP",
        queue_id="4Wk3nB0h2Fz1x",
        recipient=None,
        tls=None,
        now=now,
    )
    local = email.utils.localtime(datetime.datetime.fromtimestamp(int(now), datetime.UTC))
    assert header.endswith(f"\t{email.utils.format_datetime(local)}\r\n".encode())
