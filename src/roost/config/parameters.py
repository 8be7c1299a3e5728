"""The one table of every roost parameter: name, type, default and a one-line doc.

Names, meanings and defaults are Postfix's (postconf(5)) wherever Postfix has the
parameter, Dovecot's for the IMAP/POP3/auth side (e.g. ``mail_location``), and roost's own
only where neither has one (marked "roost" in the doc). Defaults are raw text exactly as
``roost conf -d`` prints them; ``$name`` references in them expand lazily like Postfix's.

Each component adds its parameters to :data:`PARAMETERS` here, so ``docs/configuration.md``
(generated from this table by ``roost conf --markdown``) never drifts.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from roost.config.types import ParamType

__all__ = [
    "PARAMETERS",
    "SERVICES",
    "SERVICE_DEFAULTS",
    "DefaultFunction",
    "Parameter",
    "system_hostname",
]


#: A computed default: receives a function that expands another parameter by name.
DefaultFunction = Callable[[Callable[[str], str]], str]


def system_hostname(_expand: Callable[[str], str] | None = None) -> str:
    """Return this host's fully qualified name, as Postfix's ``myhostname`` default.

    Postfix uses gethostname(); when that has no dot, the canonical name from the
    resolver is tried, and ``.localdomain`` is appended as a last resort.
    """
    name = socket.gethostname()
    if "." not in name:
        try:
            fqdn = socket.getfqdn(name)
        except OSError:
            fqdn = name
        name = fqdn if "." in fqdn else f"{name}.localdomain"
    return name.lower()


def _domain_of_myhostname(expand: Callable[[str], str]) -> str:
    """Postfix's ``mydomain`` default: ``$myhostname`` minus its first label."""
    _, _, rest = expand("myhostname").partition(".")
    return rest or "localdomain"


@dataclass(frozen=True, slots=True)
class Parameter:
    """One main.cf parameter.

    Attributes:
        name: the parameter name, e.g. ``myhostname``.
        type: the value type; the expanded value must parse as this type.
        default: the default as raw main.cf text (may contain ``$name``), or a function
            computing it from the system or other parameters (``myhostname``, ``mydomain``).
        doc: one line for ``docs/configuration.md``.
        section: the component the parameter belongs to, for grouping in the docs.
        choices: for STRING and LIST values, the allowed words (case-insensitive).
        minimum: for INTEGER values, the smallest allowed value.
        time_unit: for TIME values, the unit of a bare number (Postfix: per parameter).
    """

    name: str
    type: ParamType
    default: str | DefaultFunction
    doc: str
    section: str = "general"
    choices: tuple[str, ...] | None = None
    minimum: int | None = None
    time_unit: str = "s"

    def default_text(self, expand: Callable[[str], str]) -> str:
        """Return the default as main.cf text.

        Args:
            expand: expands another parameter by name, for computed defaults.
        """
        return self.default(expand) if callable(self.default) else self.default


S = ParamType.STRING
I = ParamType.INTEGER  # noqa: E741
B = ParamType.BOOLEAN
T = ParamType.TIME
Z = ParamType.SIZE
L = ParamType.LIST
M = ParamType.TABLE

#: The network services roost can run, with their default ports (master.cf's names).
SERVICES: Final[Mapping[str, int]] = {
    "smtp": 25,
    "submission": 587,
    "submissions": 465,
    "imap": 143,
    "imaps": 993,
    "pop3": 110,
    "pop3s": 995,
}

_TABLE: Final[list[Parameter]] = [
    # --- identity and addressing (Postfix) ---
    Parameter("myhostname", S, system_hostname, "The fully qualified name of this host."),
    Parameter(
        "mydomain",
        S,
        _domain_of_myhostname,
        "The internet domain of this host; default: $myhostname minus its first label.",
    ),
    Parameter("myorigin", S, "$myhostname", "The domain locally posted mail appears to come from."),
    Parameter(
        "mydestination",
        L,
        "$myhostname, localhost.$mydomain, localhost",
        "Domains delivered locally (to system or passwd-file users and aliases).",
    ),
    Parameter(
        "inet_interfaces",
        L,
        "all",
        "Addresses the network services listen on: all, loopback-only, or addresses.",
    ),
    Parameter(
        "inet_protocols",
        L,
        "all",
        "IP versions to use: all, ipv4, ipv6, or ipv4, ipv6.",
        choices=("all", "ipv4", "ipv6"),
    ),
    Parameter(
        "mynetworks",
        L,
        "",
        "Trusted client networks (CIDR, or type:table); empty: computed from mynetworks_style.",
    ),
    Parameter(
        "mynetworks_style",
        S,
        "host",
        "How to compute mynetworks when unset: host, subnet or class.",
        choices=("host", "subnet", "class"),
    ),
    Parameter("relay_domains", L, "", "Domains this host relays mail to (besides local ones)."),
    Parameter("relayhost", S, "", "Next hop for non-local mail: [host]:port, or host (MX lookup)."),
    Parameter(
        "recipient_delimiter",
        S,
        "",
        "Characters separating a user name from an address extension (e.g. +).",
    ),
    # --- files and directories ---
    Parameter(
        "config_directory",
        S,
        "/etc/roost",
        "Directory of main.cf; set from the -c option, not in main.cf.",
    ),
    Parameter("queue_directory", S, "/var/spool/roost", "The mail queue (spool) directory."),
    Parameter(
        "data_directory",
        S,
        "/var/lib/roost",
        "Writable state: control socket, indexes, throttling and TLS session keys.",
    ),
    Parameter("mail_owner", S, "roost", "The unprivileged account the network services run as."),
    Parameter("message_size_limit", Z, "10240000", "Largest message accepted, in bytes."),
    Parameter(
        "alias_maps", M, "hash:/etc/aliases", "Alias tables for local delivery.", section="local"
    ),
    Parameter(
        "alias_database",
        M,
        "hash:/etc/aliases",
        "Alias tables rebuilt by newaliases.",
        section="local",
    ),
    Parameter(
        "home_mailbox",
        S,
        "",
        "Mailbox relative to home: Maildir/ for Maildir; empty: mail_spool_directory.",
        section="local",
    ),
    Parameter(
        "mail_spool_directory",
        S,
        "/var/mail",
        "Directory of mbox files named after users.",
        section="local",
    ),
    Parameter(
        "virtual_mailbox_domains",
        L,
        "",
        "Domains whose recipients are users of the user database (auth_backends).",
        section="local",
    ),
    Parameter(
        "auth_backends",
        L,
        "",
        "roost: the user database, in order: passwd-file:/path, ldap:/path, pam.",
        section="auth",
    ),
    Parameter(
        "auth_failure_delay_max",
        T,
        "15s",
        "roost: the longest delay before answering a client that keeps failing to log in.",
        section="auth",
    ),
    Parameter(
        "auth_failure_refuse_after",
        I,
        "10",
        "roost: failed logins per client address in auth_failure_window before refusal.",
        section="auth",
        minimum=1,
    ),
    Parameter(
        "auth_failure_window",
        T,
        "300s",
        "roost: how long failed logins are remembered (SMTP, IMAP and POP3 together).",
        section="auth",
    ),
    Parameter(
        "auth_default_realm",
        S,
        "",
        "Dovecot: the domain added to logins given without one (alice -> alice@realm).",
        section="auth",
    ),
    Parameter(
        "mail_location",
        S,
        "maildir:~/Maildir",
        "Dovecot: the mailbox store of each user, with %u %n %d %h variables.",
        section="store",
    ),
    # --- logging ---
    Parameter("syslog_name", S, "roost", "The prefix of program names in log lines."),
    Parameter("syslog_facility", S, "mail", "The syslog facility of log lines."),
    Parameter(
        "maillog_file",
        S,
        "",
        "Write log lines to this file instead of syslog (reopened on reload).",
    ),
    # --- TLS (shared, with per-service overrides) ---
    Parameter(
        "tls_cert_file",
        S,
        "$config_directory/tls/cert.pem",
        "roost: the PEM certificate (chain) shared by every TLS service.",
        section="tls",
    ),
    Parameter(
        "tls_key_file",
        S,
        "$config_directory/tls/key.pem",
        "roost: the PEM private key shared by every TLS service.",
        section="tls",
    ),
    Parameter(
        "smtpd_tls_cert_file",
        S,
        "$tls_cert_file",
        "The SMTP server's certificate.",
        section="tls",
    ),
    Parameter("smtpd_tls_key_file", S, "$tls_key_file", "The SMTP server's key.", section="tls"),
    Parameter(
        "imap_tls_cert_file",
        S,
        "$tls_cert_file",
        "roost: the IMAP server's certificate (Dovecot's ssl_cert).",
        section="tls",
    ),
    Parameter(
        "imap_tls_key_file",
        S,
        "$tls_key_file",
        "roost: the IMAP server's key (Dovecot's ssl_key).",
        section="tls",
    ),
    Parameter(
        "pop3_tls_cert_file",
        S,
        "$tls_cert_file",
        "roost: the POP3 server's certificate.",
        section="tls",
    ),
    Parameter(
        "pop3_tls_key_file", S, "$tls_key_file", "roost: the POP3 server's key.", section="tls"
    ),
    Parameter(
        "ssl_min_protocol",
        S,
        "TLSv1.2",
        "Dovecot: the oldest TLS version accepted by every service.",
        section="tls",
        choices=("TLSv1.2", "TLSv1.3"),
    ),
    Parameter(
        "tls_selfsigned_auto",
        B,
        "yes",
        "roost: create a self-signed certificate at start when none exists.",
        section="tls",
    ),
    # --- services and lifecycle ---
    Parameter(
        "master_service_disable",
        L,
        "",
        "Services not to run (smtp, submission, submissions, imap, imaps, pop3, pop3s, qmgr).",
        section="daemon",
    ),
    Parameter(
        "max_idle",
        T,
        "100s",
        "Postfix: how long a worker process that has served a connection waits with no"
        " client connection before it goes (its memory goes back to the system; one at a"
        " time): replaced by a new one while another worker has clients, else the pool"
        " shrinks, never below one, until a worker has a client again; 0: never. Nothing"
        " happens with worker_processes = 1.",
        section="daemon",
    ),
    Parameter(
        "shutdown_grace_time",
        T,
        "30s",
        "roost: how long sessions may finish after SIGTERM before they are closed.",
        section="daemon",
    ),
    Parameter(
        "worker_processes",
        S,
        "auto",
        "roost (nginx's name): processes serving the network services (SMTP, IMAP, POP3)"
        " beside the master; auto: one per CPU; 1: the master serves them itself.",
        section="daemon",
    ),
]


def _smtpd(name: str, kind: ParamType, default: str, doc: str, **extra: object) -> Parameter:
    return Parameter(name, kind, default, doc, section="smtpd", **extra)  # type: ignore[arg-type]


_TABLE.extend(
    [
        Parameter("mail_name", S, "roost", "The mail system name in the SMTP greeting."),
        _smtpd(
            "smtpd_banner", S, "$myhostname ESMTP $mail_name", "Text after 220 in the greeting."
        ),
        _smtpd("smtpd_timeout", T, "300s", "Idle time before a silent SMTP client is dropped."),
        _smtpd("smtpd_recipient_limit", I, "1000", "Recipients accepted per message.", minimum=1),
        _smtpd(
            "smtpd_soft_error_limit",
            I,
            "10",
            "Errors after which each reply waits smtpd_error_sleep_time.",
            minimum=0,
        ),
        _smtpd(
            "smtpd_hard_error_limit",
            I,
            "20",
            "Errors after which the client is dropped.",
            minimum=1,
        ),
        _smtpd("smtpd_error_sleep_time", T, "1s", "The tarpit delay after the soft limit."),
        _smtpd(
            "smtpd_junk_command_limit",
            I,
            "100",
            "NOOP, VRFY, RSET commands before they count as errors.",
            minimum=1,
        ),
        _smtpd(
            "smtpd_client_connection_count_limit",
            I,
            "50",
            "Simultaneous connections per client address (0: no limit).",
            minimum=0,
        ),
        _smtpd(
            "smtpd_client_connection_rate_limit",
            I,
            "0",
            "New connections per client address per anvil_rate_time_unit (0: no limit).",
            minimum=0,
        ),
        _smtpd("anvil_rate_time_unit", T, "60s", "The time unit of the rate limits."),
        _smtpd(
            "smtpd_client_event_limit_exceptions",
            L,
            "$mynetworks",
            "Clients exempt from the connection limits (networks or type:table).",
        ),
        _smtpd("smtpd_sasl_auth_enable", B, "no", "Offer SMTP AUTH (submission services: yes)."),
        _smtpd(
            "smtpd_auth_required",
            B,
            "no",
            "roost: MAIL needs AUTH first (RFC 6409; submission services: yes).",
        ),
        _smtpd(
            "smtpd_tls_security_level",
            S,
            "may",
            "none, may (offer STARTTLS) or encrypt (require it; submission: encrypt).",
            choices=("none", "may", "encrypt"),
        ),
        _smtpd(
            "smtpd_tls_wrappermode",
            B,
            "no",
            "Implicit TLS from the first byte (RFC 8314; submissions: yes).",
        ),
        _smtpd("smtpd_tls_auth_only", B, "yes", "Offer and accept AUTH only over TLS."),
        _smtpd(
            "smtpd_forbid_bare_newline",
            S,
            "normalize",
            "Bare <LF> in DATA: normalize (store as CRLF) or reject; never ends the data.",
            choices=("normalize", "reject"),
        ),
        _smtpd(
            "hopcount_limit", I, "50", "Received: headers after which mail is refused.", minimum=1
        ),
        _smtpd(
            "header_size_limit",
            Z,
            "102400",
            "Header bytes examined for Received:, Message-ID: and Date: (the rest is body).",
        ),
        _smtpd("smtpd_client_restrictions", L, "", "Restrictions on the client (at RCPT time)."),
        _smtpd("smtpd_helo_restrictions", L, "", "Restrictions on HELO/EHLO (at RCPT time)."),
        _smtpd("smtpd_sender_restrictions", L, "", "Restrictions on MAIL FROM (at RCPT time)."),
        _smtpd(
            "smtpd_relay_restrictions",
            L,
            "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
            "Relay control at RCPT time; one of the two lists must refuse other destinations.",
        ),
        _smtpd("smtpd_recipient_restrictions", L, "", "Further restrictions at RCPT time."),
        _smtpd(
            "smtpd_reject_unlisted_recipient",
            B,
            "yes",
            "Refuse unknown local and virtual recipients at RCPT (550 5.1.1).",
        ),
        _smtpd(
            "smtpd_sender_login_maps",
            M,
            "",
            "Tables: sender address -> logins allowed to use it (reject_sender_login_mismatch).",
        ),
        _smtpd("disable_vrfy_command", B, "no", "Refuse VRFY (502) instead of answering 252."),
        _smtpd("smtpd_helo_required", B, "no", "MAIL needs HELO or EHLO first."),
        _smtpd(
            "strict_rfc821_envelopes",
            B,
            "no",
            "Refuse MAIL FROM/RCPT TO addresses without <> or with extra text.",
        ),
        _smtpd("smtputf8_enable", B, "yes", "Offer SMTPUTF8 (RFC 6531)."),
        _smtpd(
            "smtpd_peername_lookup",
            B,
            "yes",
            "Look up the client's name (reverse DNS, forward-confirmed) for logs and Received.",
        ),
    ]
)


def _qmgr(name: str, kind: ParamType, default: str, doc: str, **extra: object) -> Parameter:
    return Parameter(name, kind, default, doc, section="queue", **extra)  # type: ignore[arg-type]


_TABLE.extend(
    [
        _qmgr("minimal_backoff_time", T, "300s", "The first wait before retrying deferred mail."),
        _qmgr("maximal_backoff_time", T, "4000s", "The longest wait between delivery attempts."),
        _qmgr(
            "queue_run_delay",
            T,
            "300s",
            "How often the deferred queue is scanned (and incoming/ for messages whose "
            "commit was never announced).",
        ),
        _qmgr(
            "maximal_queue_lifetime",
            T,
            "5d",
            "Undeliverable mail is returned after this long.",
            time_unit="d",
        ),
        _qmgr(
            "bounce_queue_lifetime",
            T,
            "5d",
            "The same for bounces (null sender); they are then discarded.",
            time_unit="d",
        ),
        _qmgr(
            "delay_warning_time",
            T,
            "0h",
            "Warn the sender of mail delayed this long (0: never).",
            time_unit="h",
        ),
        _qmgr(
            "2bounce_notice_recipient",
            S,
            "postmaster",
            "Who gets undeliverable bounces (double bounces).",
        ),
        _qmgr("bounce_size_limit", Z, "50000", "The largest original returned whole in a bounce."),
        _qmgr(
            "default_process_limit",
            I,
            "100",
            "Messages delivered at the same time.",
            minimum=1,
        ),
    ]
)

#: master.cf-like defaults of one service; ``service/name`` lines in main.cf override them
#: (and they override main.cf's global values, as master.cf's ``-o`` does).
SERVICE_DEFAULTS: Final[Mapping[str, Mapping[str, str]]] = {
    "submission": {
        "smtpd_tls_security_level": "encrypt",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_auth_required": "yes",
        "smtpd_reject_unlisted_recipient": "no",
    },
    "submissions": {
        "smtpd_tls_wrappermode": "yes",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_auth_required": "yes",
        "smtpd_reject_unlisted_recipient": "no",
    },
}

_TABLE.extend(
    Parameter(
        f"{service}_service_port",
        I,
        str(port),
        f"roost: TCP port of the {service} service (master.cf's service port).",
        section="daemon",
        minimum=0,
    )
    for service, port in SERVICES.items()
)

# --- local delivery: aliases, .forward, |command, /file, mailbox writers (local) ---
_TABLE.extend(
    [
        Parameter(
            "allow_mail_to_commands",
            L,
            "alias, forward",
            "Where |command targets are allowed: alias, forward, include.",
            section="local",
            choices=("alias", "forward", "include"),
        ),
        Parameter(
            "allow_mail_to_files",
            L,
            "alias, forward",
            "Where /file targets are allowed: alias, forward, include.",
            section="local",
            choices=("alias", "forward", "include"),
        ),
        Parameter(
            "forward_path",
            S,
            "$home/.forward${recipient_delimiter}${extension}, $home/.forward",
            "The .forward files to try; $user $home $shell $recipient $local $domain "
            "$extension $recipient_delimiter expand per recipient.",
            section="local",
        ),
        Parameter(
            "default_privs",
            S,
            "nobody",
            "The account for |command and /file deliveries of root-owned aliases.",
            section="local",
        ),
        Parameter(
            "mailbox_size_limit",
            Z,
            "51200000",
            "Largest mbox file or Maildir message file, in bytes; 0: no limit.",
            section="local",
        ),
        Parameter(
            "command_time_limit",
            T,
            "1000s",
            "Time limit of a |command delivery.",
            section="local",
        ),
        Parameter(
            "lda_mailbox_autocreate",
            B,
            "no",
            "Dovecot: create a missing Maildir++ folder; no: deliver to INBOX instead.",
            section="local",
        ),
        Parameter(
            "mailbox_delivery_lock",
            L,
            "fcntl, dotlock",
            "Locks taken on mbox files: fcntl, flock, dotlock.",
            section="local",
            choices=("fcntl", "flock", "dotlock"),
        ),
        Parameter(
            "deliver_lock_attempts",
            I,
            "20",
            "Attempts to lock an mbox file before deferring.",
            section="local",
            minimum=1,
        ),
        Parameter(
            "deliver_lock_delay",
            T,
            "1s",
            "Time between attempts to lock an mbox file.",
            section="local",
        ),
        Parameter(
            "stale_lock_time",
            T,
            "500s",
            "Age after which an mbox dotlock (MBOX.lock) is removed.",
            section="local",
        ),
        Parameter(
            "propagate_unmatched_extensions",
            L,
            "canonical, virtual",
            "Where an unmatched address extension is kept: canonical, virtual, alias, "
            "forward, include, generic.",
            section="local",
            choices=("canonical", "virtual", "alias", "forward", "include", "generic"),
        ),
        Parameter(
            "expand_owner_alias",
            B,
            "no",
            "Send errors for an alias with an owner-NAME alias to that alias's value.",
            section="local",
        ),
        Parameter(
            "owner_request_special",
            B,
            "yes",
            "Use owner-NAME aliases for errors; never split owner-NAME or NAME-request.",
            section="local",
        ),
    ]
)

# --- auth: the pam backend (roost.auth.pam) ---
_TABLE.extend(
    [
        Parameter(
            "auth_pam_service",
            S,
            "roost",
            "roost: the PAM service of the pam backend (/etc/pam.d/roost), like Dovecot's.",
            section="auth",
        ),
        Parameter(
            "first_valid_uid",
            I,
            "500",
            "Dovecot: system users (pam backend) with a smaller uid are not mail users.",
            section="auth",
            minimum=0,
        ),
    ]
)

# --- IMAP (roost.imap): Dovecot's names where Dovecot has the setting ---
_TABLE.extend(
    [
        Parameter(
            "disable_plaintext_auth",
            B,
            "yes",
            "Dovecot: refuse plaintext logins (IMAP LOGIN, POP3 USER/PASS, SASL PLAIN/LOGIN)"
            " unless the connection is TLS or from this host's own address.",
            section="auth",
        ),
        Parameter(
            "login_greeting",
            S,
            "roost ready.",
            "Dovecot: the text of the IMAP greeting (* OK [CAPABILITY ...] text).",
            section="imap",
        ),
        Parameter(
            "imap_max_line_length",
            Z,
            "64k",
            "Dovecot: longest IMAP command line, and longest literal outside APPEND.",
            section="imap",
        ),
        Parameter(
            "imap_append_size_limit",
            Z,
            "50M",
            "roost: largest message APPEND accepts (advertised as APPENDLIMIT, RFC 7889).",
            section="imap",
        ),
        Parameter(
            "imap_client_timeout",
            T,
            "30m",
            "roost: idle time after which a logged-in IMAP client is disconnected (RFC 9051"
            " §5.4: at least 30 minutes); before login the limit is 3 minutes at most.",
            section="imap",
        ),
        Parameter(
            "imap_idle_notify_interval",
            T,
            "2m",
            "Dovecot: how often an IDLE client gets '* OK Still here'.",
            section="imap",
        ),
        Parameter(
            "imap_hibernate_timeout",
            T,
            "30s",
            "Dovecot: how long an IMAP session stays in IDLE with nothing to send before it"
            " moves from its worker into the master, which keeps only the socket and a few"
            " hundred bytes of state and hands it back to a worker when the client sends"
            " something, its mailbox changes or the poll finds a change (0: never). Only"
            " plaintext connections (TLS state cannot move) and only with worker_processes"
            " above 1. Dovecot's default is 0; roost's is 30s: waking a session takes"
            " milliseconds and nothing is lost (docs/imap.md, IDLE).",
            section="imap",
        ),
        Parameter(
            "mailbox_idle_check_interval",
            T,
            "5s",
            "Dovecot: how often IDLE looks for changes made by other programs (roost's own"
            " deliveries and sessions wake IDLE at once).",
            section="imap",
        ),
        Parameter(
            "mail_process_per_user",
            B,
            "yes",
            "Started as root: an IMAP or POP3 session of a user whose uid is not"
            " mail_owner's goes on, after its login, in a process of its own running as that"
            " user (Dovecot's mail processes; docs/privsep.md). Ignored when not root.",
            section="imap",
        ),
        Parameter(
            "mail_max_userip_connections",
            I,
            "10",
            "Dovecot: IMAP sessions one user may have open from one address (0: no limit).",
            section="imap",
            minimum=0,
        ),
        Parameter(
            "imap_client_connection_count_limit",
            I,
            "50",
            "roost: simultaneous IMAP connections per client address (0: no limit).",
            section="imap",
            minimum=0,
        ),
        Parameter(
            "imap_capability",
            S,
            "",
            "Dovecot: the capabilities shown after login; '+NAME ...' adds to roost's list.",
            section="imap",
        ),
        Parameter(
            "imap_id_send",
            S,
            "name *",
            "Dovecot: the ID fields sent to clients, as pairs; * is roost's value (name,"
            " version, vendor, os, os-version).",
            section="imap",
        ),
        Parameter(
            "imap_id_log",
            S,
            "",
            "Dovecot: the client ID fields to log (* for all).",
            section="imap",
        ),
        Parameter(
            "imap_logout_format",
            S,
            "in=%i out=%o deleted=%{deleted} expunged=%{expunged} trashed=%{trashed}"
            " hdr_count=%{fetch_hdr_count} hdr_bytes=%{fetch_hdr_bytes}"
            " body_count=%{fetch_body_count} body_bytes=%{fetch_body_bytes}",
            "Dovecot: what the 'Disconnected' line of an IMAP session reports.",
            section="imap",
        ),
        Parameter(
            "special_use_folders",
            S,
            "Drafts=\\Drafts, Sent=\\Sent, Trash=\\Trash, Junk=\\Junk, Archive=\\Archive",
            "roost: mailboxes created and subscribed at IMAP login, NAME=\\Attribute"
            " (RFC 6154), comma-separated; empty: none (Dovecot: auto = subscribe).",
            section="imap",
        ),
    ]
)


# --- outbound SMTP: the smtp transport (roost.delivery.smtp) ---
def _smtp(name: str, kind: ParamType, default: str, doc: str, **extra: object) -> Parameter:
    return Parameter(name, kind, default, doc, section="smtp", **extra)  # type: ignore[arg-type]


_TABLE.extend(
    [
        _smtp(
            "transport_maps",
            M,
            "",
            "Per-recipient routes: smtp:[host]:port, smtp:host, error:text, retry:text, "
            "discard:text (keys: address, domain, .parent, *).",
        ),
        _smtp(
            "smtp_tcp_port",
            S,
            "25",
            "The port (number or smtp, submission, submissions) of MX hosts and of next hops "
            "given without one.",
        ),
        _smtp(
            "dns_nameservers",
            L,
            "",
            "roost: DNS servers as address or address:port ([v6]:port), instead of "
            "/etc/resolv.conf.",
        ),
        _smtp(
            "dns_lookup_timeout",
            T,
            "10s",
            "roost: how long one DNS lookup may take before it is a temporary failure.",
        ),
        _smtp("smtp_connect_timeout", T, "30s", "Time limit of the TCP connection."),
        _smtp("smtp_helo_timeout", T, "300s", "Time limit of the greeting and EHLO/HELO replies."),
        _smtp("smtp_starttls_timeout", T, "300s", "Time limit of STARTTLS and its handshake."),
        _smtp("smtp_mail_timeout", T, "300s", "Time limit of the MAIL FROM reply."),
        _smtp("smtp_rcpt_timeout", T, "300s", "Time limit of each RCPT TO reply."),
        _smtp("smtp_data_init_timeout", T, "120s", "Time limit of the DATA reply."),
        _smtp("smtp_data_xfer_timeout", T, "180s", "Time limit of sending the message content."),
        _smtp(
            "smtp_data_done_timeout",
            T,
            "600s",
            "Time limit of the reply to the end of the content.",
        ),
        _smtp("smtp_rset_timeout", T, "20s", "Time limit of the RSET reply."),
        _smtp("smtp_quit_timeout", T, "300s", "Time limit of the QUIT reply."),
        _smtp("smtp_helo_name", S, "$myhostname", "The name sent with EHLO and HELO."),
        _smtp("smtp_bind_address", S, "", "The local IPv4 address of outbound connections."),
        _smtp("smtp_bind_address6", S, "", "The local IPv6 address of outbound connections."),
        _smtp(
            "smtp_tls_security_level",
            S,
            "may",
            "none, may (opportunistic STARTTLS), encrypt (required), verify (certificate "
            "checked against the MX name) or secure (against the next-hop domain).",
            choices=("none", "may", "encrypt", "verify", "secure"),
        ),
        _smtp(
            "smtp_tls_CAfile",
            S,
            "",
            "Trusted CA certificates (PEM) for verify/secure; empty: the system's.",
        ),
        _smtp("smtp_tls_CApath", S, "", "A directory of trusted CA certificates (c_rehash)."),
        _smtp(
            "smtp_sasl_auth_enable", B, "no", "Authenticate to servers listed in the password maps."
        ),
        _smtp(
            "smtp_sasl_password_maps",
            M,
            "",
            "Tables: [host]:port, [host], host or next-hop domain -> user:password.",
        ),
        _smtp(
            "smtp_sasl_security_options",
            L,
            "noplaintext, noanonymous",
            "SASL restrictions without TLS: noplaintext keeps PLAIN/LOGIN passwords off "
            "unencrypted sessions.",
            choices=("noplaintext", "noanonymous", "noactive", "nodictionary", "mutual_auth"),
        ),
        _smtp(
            "smtp_sasl_tls_security_options",
            L,
            "noanonymous",
            "SASL restrictions over TLS (roost default: PLAIN and LOGIN allowed).",
            choices=("noplaintext", "noanonymous", "noactive", "nodictionary", "mutual_auth"),
        ),
        _smtp(
            "smtp_skip_5xx_greeting",
            B,
            "yes",
            "Treat a 5xx greeting as temporary and try the next MX (no: bounce).",
        ),
        _smtp(
            "smtp_mx_address_limit",
            I,
            "5",
            "Addresses tried per delivery (all MX hosts together; 0: no limit).",
            minimum=0,
        ),
        _smtp(
            "smtp_mx_session_limit",
            I,
            "2",
            "Sessions that got past the greeting per delivery before giving up (0: no limit).",
            minimum=0,
        ),
        _smtp(
            "default_destination_concurrency_limit",
            I,
            "20",
            "Parallel deliveries to one destination (next hop).",
            minimum=1,
        ),
        _smtp(
            "smtp_destination_concurrency_limit",
            I,
            "$default_destination_concurrency_limit",
            "Parallel SMTP sessions to one destination.",
            minimum=1,
        ),
        _smtp(
            "default_destination_recipient_limit",
            I,
            "50",
            "Recipients per delivery request (per SMTP transaction).",
            minimum=1,
        ),
        _smtp(
            "smtp_destination_recipient_limit",
            I,
            "$default_destination_recipient_limit",
            "Recipients per SMTP transaction.",
            minimum=1,
        ),
        _smtp(
            "default_destination_concurrency_failed_cohort_limit",
            I,
            "1",
            "Consecutive failed connection attempts after which a destination is dead "
            "(its mail deferred at once for minimal_backoff_time).",
            minimum=1,
        ),
        _smtp(
            "smtp_destination_concurrency_failed_cohort_limit",
            I,
            "$default_destination_concurrency_failed_cohort_limit",
            "The same for the smtp transport.",
            minimum=1,
        ),
        _smtp(
            "smtp_connection_cache_time_limit",
            T,
            "2s",
            "How long an idle SMTP connection is kept for the next message (0: never).",
        ),
        _smtp(
            "smtp_connection_reuse_time_limit",
            T,
            "300s",
            "How long one SMTP connection may be reused.",
        ),
    ]
)

# --- POP3 (roost.pop3): Dovecot's names where Dovecot has the setting ---
_TABLE.extend(
    [
        Parameter(
            "pop3_uidl_format",
            S,
            "%08Xu%08Xv",
            "Dovecot: how POP3 UIDLs are made: %u UID, %v UIDVALIDITY, %f/%g Maildir base"
            " name; 0, width and X (hex) as Dovecot; a dovecot-uidlist P field wins.",
            section="pop3",
        ),
        Parameter(
            "pop3_lock_session",
            B,
            "yes",
            "Dovecot (default no there): one POP3 session per mailbox, others get -ERR"
            " [IN-USE] (dovecot-pop3-session.lock; delivery and IMAP are not blocked).",
            section="pop3",
        ),
        Parameter(
            "pop3_no_flag_updates",
            B,
            "no",
            "Dovecot: no changes but deletions: RETR does not set \\Seen and new mail keeps"
            " \\Recent for IMAP.",
            section="pop3",
        ),
        Parameter(
            "pop3_client_timeout",
            T,
            "10m",
            "roost: idle time after which a logged-in POP3 client is disconnected (RFC 1939"
            " §3: at least 10 minutes); before login the limit is 3 minutes at most.",
            section="pop3",
        ),
        Parameter(
            "pop3_logout_format",
            S,
            "top=%t/%p, retr=%r/%b, del=%d/%m, size=%s",
            "Dovecot: what the 'Disconnected' line of a POP3 session reports.",
            section="pop3",
        ),
    ]
)

#: Every parameter by name.
PARAMETERS: Final[Mapping[str, Parameter]] = {p.name: p for p in _TABLE}
