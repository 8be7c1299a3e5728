"""Server CPU per SMTP command, without messages: the command loop alone.

A client in this process sends ``EHLO``, ``MAIL``, ``RCPT`` over and over on one session
(``--pipelined``: the three in one write, else one at a time waiting for each reply, as
smtp-source does) to roost servers given as in ``smtp_ingest.py`` (``roost``,
``roost@DIR`` to run another source, ``roost:PATCH``), alternating; no message is
accepted, so neither the spool nor the log writer works. Reported: the server's CPU (its
process tree, from /proc) per command.

Usage::

    .venv/bin/python bench/smtp_commands.py --servers roost@/var/tmp/base/src,roost \\
        [--commands 30000] [--rounds 3] [--pipelined] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import common

ROUND = (b"EHLO client.example\r\n", b"MAIL FROM:<sender@example.com>\r\n")


def transaction_lines() -> list[bytes]:
    return [*ROUND, f"RCPT TO:<{common.RECIPIENT}>\r\n".encode()]


def drive(port: int, commands: int, *, pipelined: bool) -> None:
    """Send ``commands`` commands on one session and read every reply."""
    lines = transaction_lines()
    with socket.create_connection(("127.0.0.1", port), 30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")

        def reply() -> bytes:
            while True:
                line = reader.readline()
                if line[3:4] != b"-":
                    return line

        for _ in range(commands // len(lines)):
            if pipelined:
                sock.sendall(b"".join(lines))
                answers = [reply() for _ in lines]
            else:
                answers = []
                for line in lines:
                    sock.sendall(line)
                    answers.append(reply())
            if not all(a.startswith(b"250") for a in answers):
                raise RuntimeError(f"unexpected replies {answers!r}")
        sock.sendall(b"QUIT\r\n")
        reply()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--servers", default="roost", help="comma-separated, in order")
    parser.add_argument("--commands", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pipelined", action="store_true")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args(argv)
    servers = args.servers.split(",")
    common.use_roost_source(args.dir, snapshot=True)
    results: dict[str, list[float]] = {server: [] for server in servers}
    try:
        for round_ in range(1, args.rounds + 1):
            for server in servers:
                instance = common.make_instance(server, args.dir, "commands", deliver=False)
                with common.serving(instance):
                    load = common.load_average()
                    before = instance.cpu_seconds()
                    started = time.monotonic()
                    drive(instance.port, args.commands, pipelined=args.pipelined)
                    elapsed = time.monotonic() - started
                    cpu_us = (instance.cpu_seconds() - before) * 1e6 / args.commands
                results[server].append(cpu_us)
                print(
                    f"  round {round_} {server:<40} {cpu_us:6.1f} us CPU/command"
                    f"  {args.commands / elapsed:7.0f} commands/s  load {load:4.1f}",
                    flush=True,
                )
    finally:
        common.drop_roost_snapshot()
    print()
    first = statistics.median(results[servers[0]])
    for server in servers:
        median = statistics.median(results[server])
        print(f"{server:<40} median {median:6.1f} us CPU/command ({median / first:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
