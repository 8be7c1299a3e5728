"""The ``roost`` command: argument parsing and dispatch to each subcommand.

Every mistake is a one-line message on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from roost import __version__
from roost.config import ConfigError, Settings, config_path, load_settings

__all__ = ["main"]

EPILOG_SERVE: Final = """examples:
  roost serve                      run with /etc/roost/main.cf, logs on stderr
  roost -c ./var/etc serve         run another instance
  roost serve --syslog             log to syslog (facility mail), as the systemd unit does
"""
EPILOG_CONF: Final = """examples:
  roost conf -n                    what main.cf sets (like postconf -n)
  roost conf -d myhostname         the default of one parameter
  roost conf -x mydestination      the value with $name expanded
  roost conf -e relayhost=[smtp.example.com]:587
  roost conf message_size_limit=52428800
  roost conf -X relayhost          remove a setting
  roost conf --markdown            the configuration reference (docs/configuration.md)
"""
EPILOG_QUEUE: Final = """examples:
  roost queue list                 like mailq; --json like postqueue -j
  roost queue flush                retry deferred mail now (postqueue -f)
  roost queue delete ID... | ALL   like postsuper -d; - reads IDs from stdin
  roost queue hold ALL deferred    like postsuper -h; release (-H), requeue (-r)
  roost queue show ID              like postcat -q
  roost queue shape --queue hold   like qshape
"""
EPILOG_SENDMAIL: Final = """examples:
  printf 'Subject: hi\\n\\nhello\\n' | roost sendmail -i alice@example.com
  roost sendmail -t -i < message.eml
  ln -s "$(command -v roost)" /usr/sbin/sendmail   (also mailq, newaliases)

options: -t, -i/-oi, -f SENDER, -F NAME, -bs, -bp, -bi, -q, -v, -N, -R, -V, -B;
-o*, -G, -U, -c, -m, -x ignored like Postfix (docs/queue.md)
"""
EPILOG_CHECK: Final = """examples:
  roost check && systemctl reload roost
  roost check --no-listen          skip the test that listening addresses are free
"""


def _fail(message: str, status: int = 1) -> int:
    print(f"roost: {message}", file=sys.stderr)
    return status


def _print_problems(problems: Sequence[object]) -> None:
    for problem in problems:
        print(f"roost: {problem}", file=sys.stderr)


def _load(args: argparse.Namespace) -> tuple[Path, Settings]:
    path = config_path(args.config)
    settings, warnings = load_settings(path)
    _print_problems(warnings)
    return path, settings


# --- subcommands ---------------------------------------------------------------------


def cmd_conf(args: argparse.Namespace) -> int:
    """postconf: show or edit parameters."""
    from roost.cli.conf import edit_file, load_for_show, markdown_reference, show

    if args.markdown:
        print(markdown_reference())
        return 0
    path = config_path(args.config)
    assignments = [a for a in args.names if "=" in a]
    if args.edit or assignments:
        if len(assignments) != len(args.names):
            return _fail("conf -e: every argument must be NAME=VALUE")
        changes: dict[str, str | None] = {}
        for assignment in assignments:
            name, _, value = assignment.partition("=")
            changes[name.strip()] = value.strip()
        problems = edit_file(path, changes)
        _print_problems(problems)
        return 0
    if args.remove:
        if not args.names:
            return _fail("conf -X: name the parameters to remove")
        _print_problems(edit_file(path, dict.fromkeys(args.names)))
        return 0
    settings, problems = load_for_show(path)
    _print_problems(problems)
    lines, unknown = show(settings, args.names, only_set=args.n, defaults=args.d, expand=args.x)
    for line in lines:
        print(line)
    for name in unknown:
        print(f"roost: warning: {name}: unknown parameter", file=sys.stderr)
    return 1 if unknown else 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate configuration and files."""
    from roost.cli.check import check

    path, settings = _load(args)
    errors, warnings = check(settings, listeners=not args.no_listen)
    for warning in warnings:
        print(f"roost: warning: {warning}", file=sys.stderr)
    for error in errors:
        print(f"roost: {error}", file=sys.stderr)
    if errors:
        return 1
    print(f"roost: {path}: configuration OK")
    return 0


def run_daemon(path: Path, settings: Settings, *, syslog: bool, debug: bool) -> int:
    """Set up logging and run the daemon in this process until it stops."""
    from roost.daemon.app import Daemon
    from roost.daemon.logsetup import setup_logging
    from roost.daemon.sdnotify import Notifier

    maillog = settings.string("maillog_file")
    setup_logging(
        syslog_name=settings.string("syslog_name"),
        facility=settings.string("syslog_facility"),
        to_syslog=syslog and not maillog,
        maillog_file=Path(maillog) if maillog else None,
        debug=debug,
    )
    daemon = Daemon(path, settings, Notifier.from_environ())
    # The synchronous phase: directories, certificate, listening sockets, TLS keys.
    if status := daemon.prepare():
        return status
    # The privilege drop point: started as root, start the privileged helper and become
    # mail_owner. Sockets are bound and keys read above; no event loop and no thread exist
    # yet; the workers are forked below, so they start unprivileged.
    if status := daemon.drop_privileges():
        return status
    daemon.fork_workers()
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(daemon.run())


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the daemon in the foreground."""
    path, settings = _load(args)
    return run_daemon(path, settings, syslog=args.syslog, debug=args.verbose)


def _control(args: argparse.Namespace, command: str) -> dict[str, object]:
    from roost.daemon.app import control_socket_path
    from roost.daemon.control import request

    _, settings = _load(args)
    return request(control_socket_path(settings), command)


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask the running daemon to re-read main.cf and certificates."""
    answer = _control(args, "reload")
    if not answer.get("ok"):
        return _fail(f"reload failed: {answer.get('error')}")
    print("roost: reloaded")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Ask the running daemon to stop, and wait until it has."""
    from roost.daemon.app import control_socket_path

    _, settings = _load(args)
    _control(args, "stop")
    socket_path = control_socket_path(settings)
    deadline = time.monotonic() + settings.seconds("shutdown_grace_time") + 10
    while socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if socket_path.exists():
        return _fail("the daemon has not stopped yet")
    print("roost: stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show whether the daemon runs, and what it serves (``--json``: the daemon's whole
    answer as one JSON object, for scripts and monitoring)."""
    answer = _control(args, "status")
    if args.json:
        print(json.dumps(answer, sort_keys=True))
        return 0
    print(f"roost: running, pid {answer.get('pid')}, version {answer.get('version')}")
    print(f"  configuration {answer.get('config')}, up {answer.get('uptime')}s")
    services = answer.get("services")
    if isinstance(services, dict):
        for name, info in services.items():
            print(f"  {name}: {_status_line(info)}")
    hibernated = answer.get("hibernated")
    if isinstance(hibernated, dict):  # IMAP sessions idle in IDLE in the master
        print(f"  hibernated: {_status_line(hibernated)}")
    workers = answer.get("workers")
    if isinstance(workers, list):
        for worker in workers:
            if isinstance(worker, dict):
                print(
                    f"  worker {worker.get('index')}: pid {worker.get('pid')},"
                    f" up {worker.get('uptime')}s"
                )
    return 0


def _status_line(info: object) -> str:
    """One service's status for a person: ``accepted 3, sessions 1; listeners: smtp
    127.0.0.1:25, smtp [::1]:25`` (counts first, then each list); other values as they are."""
    if not isinstance(info, dict):
        return str(info)
    counts = ", ".join(f"{k} {v}" for k, v in info.items() if not isinstance(v, list | dict))
    lists = [
        f"{k}: {', '.join(map(str, v)) or '-'}" for k, v in info.items() if isinstance(v, list)
    ]
    return "; ".join(part for part in (counts, *lists) if part)


def cmd_tls(args: argparse.Namespace) -> int:
    """Create a self-signed certificate (like Dovecot's mkcert)."""
    from roost.tls import generate_selfsigned

    path = config_path(args.config)
    settings = load_settings(path)[0] if path.exists() else Settings(path=path)
    hostname = args.hostname or settings.string("myhostname")
    cert = Path(args.cert) if args.cert else settings.path_of("tls_cert_file")
    key = Path(args.key) if args.key else settings.path_of("tls_key_file")
    generate_selfsigned(hostname, cert, key, days=args.days, overwrite=args.force)
    print(f"roost: created a self-signed certificate for {hostname}: {cert} (key {key})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Create (once) and run the embedded demo instance (``make run``)."""
    from roost.cli.demo import create_instance, tour

    directory = Path(args.dir).resolve()
    if os.geteuid() == 0:  # the demo's files belong to whoever runs it: no mail_owner drop
        from roost.daemon.privileges import STAY_ROOT_ENV

        os.environ.setdefault(STAY_ROOT_ENV, "1")
    created = create_instance(directory)
    path = directory / "etc" / "main.cf"
    settings, warnings = load_settings(path)
    _print_problems(warnings)
    print(tour(directory, settings, created=created), flush=True)
    return run_daemon(path, settings, syslog=False, debug=args.verbose)


def cmd_setup(args: argparse.Namespace) -> int:
    """Prepare the host: mail_owner, directories, main.cf, certificate, sendmail links."""
    from roost.cli.setup import SetupError, setup

    try:
        report = setup(
            config_path(args.config),
            destdir=Path(args.destdir).absolute() if args.destdir else None,
            prefix=Path(args.prefix),
            roost=Path(args.roost) if args.roost else None,
            mail_owner=args.mail_owner,
            hostname=args.hostname,
            force_links=args.force_links,
        )
    except (SetupError, ConfigError, OSError) as exc:
        return _fail(str(exc))
    for line in report.changed:
        print(f"roost setup: {line}")
    if not report.changed:
        print("roost setup: nothing to do, everything is in place")
    for line in report.warnings:
        print(f"roost setup: warning: {line}", file=sys.stderr)
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    """The mail queue: list, flush, delete, hold, release, requeue, show, shape."""
    from roost.cli import queue
    from roost.daemon.privileges import become_queue_owner
    from roost.queue.errors import SpoolError

    _, settings = _load(args)
    become_queue_owner(settings)  # root's changes stay readable by mail_owner
    action: str = args.action
    try:
        if action == "list":
            return queue.run_list(settings, as_json=args.json)
        if action == "flush":
            status = queue.run_flush(settings)
            if status == 0:
                print("roost: queue flush requested")
            return status
        if action == "show":
            return queue.run_show(
                settings,
                args.queue_id,
                envelope_only=args.envelope,
                header_only=args.header,
                body_only=args.body,
            )
        if action == "shape":
            return queue.run_shape(settings, queues=args.queue or (), by_sender=args.sender)
        return queue.run_change(settings, action, args.ids, queues=args.queue or ())
    except SpoolError as exc:
        return _fail(str(exc))


def cmd_newaliases(args: argparse.Namespace) -> int:
    """newaliases: check the alias files and make a running daemon reload them."""
    from roost.cli.sendmail import newaliases

    _, settings = _load(args)
    return newaliases(settings, args.tables or None)


def cmd_sendmail(args: argparse.Namespace) -> int:
    """sendmail: local submission (normally dispatched before argparse; see main)."""
    from roost.cli.sendmail import sendmail_main

    return sendmail_main(args.arguments, config=args.config)


# --- parser --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``roost``."""
    parser = argparse.ArgumentParser(
        prog="roost",
        description="Roost mail server: SMTP, local delivery, IMAP and POP3 in one daemon.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'roost COMMAND --help' for the options and examples of a command.",
    )
    parser.add_argument("--version", action="version", version=f"roost {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="main.cf, or its directory (default: $ROOST_CONFIG or /etc/roost/main.cf)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str,
        func: Callable[[argparse.Namespace], int],
        help_text: str,
        epilog: str = "",
    ) -> argparse.ArgumentParser:
        command = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=epilog or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.set_defaults(func=func)
        return command

    conf = add("conf", cmd_conf, "show or edit main.cf parameters, like postconf", EPILOG_CONF)
    conf.add_argument("-n", action="store_true", help="only parameters set in main.cf")
    conf.add_argument("-d", action="store_true", help="default values")
    conf.add_argument("-x", action="store_true", help="expand $name in values")
    conf.add_argument("-e", dest="edit", action="store_true", help="edit: NAME=VALUE ...")
    conf.add_argument("-X", dest="remove", action="store_true", help="remove: NAME ...")
    conf.add_argument("--markdown", action="store_true", help="print the reference in Markdown")
    conf.add_argument("names", nargs="*", metavar="NAME[=VALUE]")

    check = add("check", cmd_check, "validate the configuration and its files", EPILOG_CHECK)
    check.add_argument("--no-listen", action="store_true", help="do not test listening addresses")

    setup = add(
        "setup",
        cmd_setup,
        "prepare the host: mail_owner, directories, main.cf, certificate, sendmail links",
        "examples:\n"
        "  roost setup                      as root, after installing (make install runs it)\n"
        "  roost setup --destdir /tmp/stage a staged install\n",
    )
    setup.add_argument("--destdir", help="put every file under this directory (staged install)")
    setup.add_argument("--prefix", default="/usr", help="links go into PREFIX/sbin (default /usr)")
    setup.add_argument("--roost", help="the roost program the links point to (default: this one)")
    setup.add_argument("--mail-owner", help="mail_owner of a new main.cf (default roost)")
    setup.add_argument("--hostname", help="myhostname of a new main.cf (default: the FQDN)")
    setup.add_argument(
        "--force-links", action="store_true", help="replace another sendmail/mailq/newaliases"
    )

    serve = add("serve", cmd_serve, "run the daemon in the foreground", EPILOG_SERVE)
    serve.add_argument("--syslog", action="store_true", help="log to syslog instead of stderr")
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    add(
        "reload",
        cmd_reload,
        "re-read main.cf and certificates (like SIGHUP)",
        "examples:\n  roost reload\n  roost -c ./var/etc reload\n",
    )
    add("stop", cmd_stop, "stop the daemon gracefully and wait for it", "examples:\n  roost stop\n")
    status = add(
        "status",
        cmd_status,
        "show whether the daemon runs and what it serves",
        "examples:\n  roost status\n  roost status --json\n",
    )
    status.add_argument(
        "--json", action="store_true", help="the daemon's answer as one JSON object"
    )

    tls = add(
        "tls",
        cmd_tls,
        "TLS helpers",
        "examples:\n  roost tls selfsigned\n  roost tls selfsigned --hostname mx.example.com"
        " --force\n",
    )
    tls.add_argument("action", choices=["selfsigned"], help="create a self-signed certificate")
    tls.add_argument("--hostname", help="the certificate's name (default: $myhostname)")
    tls.add_argument("--cert", help="certificate file (default: $tls_cert_file)")
    tls.add_argument("--key", help="key file (default: $tls_key_file)")
    tls.add_argument("--days", type=int, default=3650, help="validity in days")
    tls.add_argument("--force", action="store_true", help="overwrite existing files")

    demo = add(
        "demo",
        cmd_demo,
        "create and run the demo instance (make run)",
        "examples:\n  roost demo --dir ./var\n",
    )
    demo.add_argument("--dir", default="var", help="instance directory (default: ./var)")
    demo.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _add_queue_commands(add)

    sendmail = add(
        "sendmail",
        cmd_sendmail,
        "submit a message from standard input, like sendmail(1); also run as 'sendmail'",
        EPILOG_SENDMAIL,
    )
    sendmail.add_argument("arguments", nargs=argparse.REMAINDER, help="sendmail options")

    aliases = add(
        "newaliases",
        cmd_newaliases,
        "check the alias files and make the daemon reload them; also run as 'newaliases'",
        "examples:\n  roost newaliases\n  roost newaliases texthash:/etc/roost/aliases\n",
    )
    aliases.add_argument("tables", nargs="*", metavar="TYPE:FILE", help="default: alias_database")

    from roost.cli.users import add_user_commands

    add_user_commands(sub)
    return parser


def _add_queue_commands(
    add: Callable[[str, Callable[[argparse.Namespace], int], str, str], argparse.ArgumentParser],
) -> None:
    queue = add(
        "queue", cmd_queue, "list and manage the mail queue (mailq, postsuper...)", EPILOG_QUEUE
    )
    actions = queue.add_subparsers(dest="action", metavar="ACTION", required=True)
    queue_names = ["maildrop", "incoming", "active", "deferred", "hold", "corrupt"]

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=help_text, description=help_text)

    listing = action("list", "list the queue like mailq (postqueue -p)")
    listing.add_argument(
        "--json", action="store_true", help="one JSON object per message (postqueue -j)"
    )
    action("flush", "retry deferred mail now (postqueue -f)")
    for name, text in (
        ("delete", "delete messages (postsuper -d)"),
        ("hold", "put messages on hold (postsuper -h)"),
        ("release", "release messages from hold (postsuper -H)"),
        ("requeue", "requeue messages and retry them now (postsuper -r)"),
    ):
        change = action(name, text)
        change.add_argument("ids", nargs="+", metavar="ID", help="queue IDs, ALL, or - (stdin)")
        change.add_argument("--queue", action="append", choices=queue_names, help="only this queue")
    show = action("show", "print a queued message with its envelope (postcat -q)")
    show.add_argument("queue_id", metavar="ID")
    show.add_argument("-e", "--envelope", action="store_true", help="the envelope only")
    show.add_argument("--header", action="store_true", help="the message header only")
    show.add_argument("-b", "--body", action="store_true", help="the message body only")
    shape = action("shape", "counts by domain and age, like qshape (default: deferred)")
    shape.add_argument("--queue", action="append", choices=queue_names, help="queue(s) to count")
    shape.add_argument("-s", "--sender", action="store_true", help="count sender domains")


#: Program names roost answers to like Postfix's sendmail does: name -> sendmail mode.
PERSONALITIES: Final = {"sendmail": "enqueue", "mailq": "mailq", "newaliases": "newaliases"}


def _sendmail_arguments(argv: Sequence[str]) -> tuple[str | None, list[str]] | None:
    """Find ``roost [-c CONFIG] sendmail ARGS...``: return (CONFIG, ARGS), else None.

    sendmail's options (``-t``, ``-oi``, ``-fsender``) are not argparse's, so this
    subcommand is recognised before argparse sees the line.
    """
    config: str | None = None
    index = 0
    while index < len(argv):
        word = argv[index]
        if word in ("-c", "--config") and index + 1 < len(argv):
            config, index = argv[index + 1], index + 2
        elif word.startswith("--config="):
            config, index = word.partition("=")[2], index + 1
        elif word.startswith("-c") and len(word) > 2:
            config, index = word[2:], index + 1
        else:
            break
    if index < len(argv) and argv[index] == "sendmail" and argv[index + 1 :] != ["--help"]:
        return config, list(argv[index + 1 :])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``roost`` command; return its exit status."""
    from roost.daemon.control import ControlError
    from roost.tls import TLSError

    if argv is None:
        personality = Path(sys.argv[0]).name
        if personality in PERSONALITIES:
            from roost.cli import sendmail

            return sendmail.run(sys.argv[1:], mode=PERSONALITIES[personality])
        argv = sys.argv[1:]
    submission = _sendmail_arguments(argv)
    if submission is not None:
        from roost.cli.sendmail import sendmail_main

        return sendmail_main(submission[1], config=submission[0])
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return 1
    except (ControlError, TLSError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
