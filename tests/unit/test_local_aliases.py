"""aliases(5) parsing and local(8) recipient expansion (sans-IO)."""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.delivery.aliases import (
    AddressTarget,
    CommandTarget,
    Expansion,
    ExpansionType,
    FileTarget,
    Forward,
    LookupUnavailable,
    expand_recipient,
    parse_aliases,
    parse_target_lines,
    split_extension,
    split_targets,
)

LOCAL_DOMAINS = {"example.com", "mx.example.com"}


def expand(
    address: str,
    aliases: Mapping[str, tuple[str, ...] | str],
    *,
    includes: Mapping[str, str] | None = None,
    forwards: Mapping[str, tuple[str, ...]] | None = None,
    users: set[str] | None = None,
    **options: object,
) -> Expansion:
    """Expand with in-memory tables; alias values may be given as alias-file text."""
    table = {k: split_targets(v) if isinstance(v, str) else v for k, v in aliases.items()}
    lookups: list[str] = []

    def lookup_alias(name: str) -> tuple[str, ...] | None:
        lookups.append(name)
        return table.get(name)

    def read_include(path: str) -> list[str]:
        if includes is None or path not in includes:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return includes[path].splitlines()

    lookup_forward: Callable[[str, str | None], Forward | None] | None = None
    if forwards is not None:
        known = forwards

        def lookup_forward(user: str, extension: str | None) -> Forward | None:
            if user not in known:
                return None
            return Forward(f"/home/{user}/.forward", known[user])

    return expand_recipient(
        address,
        lookup_alias=lookup_alias,
        read_include=read_include,
        is_local_domain=LOCAL_DOMAINS.__contains__,
        lookup_forward=lookup_forward,
        user_exists=None if users is None else users.__contains__,
        **options,  # type: ignore[arg-type]
    )


def summary(expansion: Expansion) -> list[str]:
    """One string per target: ``mailbox:ADDR``, ``remote:ADDR``, ``file:P``, ``cmd:C``."""
    out = []
    for target in expansion.targets:
        if isinstance(target, AddressTarget):
            out.append(f"{'mailbox' if target.is_local else 'remote'}:{target.address}")
        elif isinstance(target, FileTarget):
            out.append(f"file:{target.path}")
        else:
            out.append(f"cmd:{target.command}")
    return out


# --------------------------------------------------------------------------------------------
# Parsing


def test_parse_aliases_full_syntax() -> None:
    text = (
        "# system aliases\n"
        "\n"
        "Postmaster: root\n"
        "root:\talice, bob@example.org\n"
        "team: alice,\n"
        "  bob,\n"
        "\t# a comment inside the continuation\n"
        "  carol\n"
        'archive: "/var/spool/archive file"\n'
        'vacation: "|/usr/bin/vacation -a alice, -a bob"\n'
        "list: :include:/etc/roost/list.members\n"
        '"odd name": alice\n'
        "maildir: /var/spool/maildir/\n"
        "direct: \\alice\n"
    )
    aliases, problems = parse_aliases(text, "/etc/aliases")
    assert problems == []
    assert aliases == {
        "postmaster": ("root",),
        "root": ("alice", "bob@example.org"),
        "team": ("alice", "bob", "carol"),
        "archive": ("/var/spool/archive file",),
        "vacation": ("|/usr/bin/vacation -a alice, -a bob",),
        "list": (":include:/etc/roost/list.members",),
        "odd name": ("alice",),
        "maildir": ("/var/spool/maildir/",),
        "direct": ("\\alice",),
    }


def test_parse_aliases_reports_each_bad_line_with_file_and_line() -> None:
    text = (
        "  orphan continuation\n"  # 1
        "good: alice\n"  # 2
        "no colon here\n"  # 3
        ": nobody\n"  # 4
        "empty:\n"  # 5
        'quote: "unterminated\n'  # 6
        "inc: :include:relative/path\n"  # 7
        "pipe: |\n"  # 8
        "GOOD: bob\n"  # 9
        "at@domain: alice\n"  # 10
        "bad addr: alice\n"  # 11
        "half: alice@\n"  # 12
    )
    aliases, problems = parse_aliases(text, "aliases")
    assert aliases == {"good": ("alice",)}
    assert problems == [
        "aliases:1: continuation line without an alias",
        "aliases:3: need 'name: value' (no colon)",
        "aliases:4: empty alias name",
        "aliases:5: alias 'empty' has no targets",
        "aliases:6: unbalanced quote in '\"unterminated'",
        "aliases:7: alias 'inc': :include: file 'relative/path' is not an absolute path",
        "aliases:8: alias 'pipe': empty command after '|'",
        "aliases:9: duplicate alias 'good' (line 2 is used, this one is ignored)",
        "aliases:10: bad alias name 'at@domain': aliases are looked up by local part only",
        "aliases:11: bad alias name 'bad addr': whitespace (quote the name)",
        "aliases:12: alias 'half': bad address 'alice@': empty domain",
    ]


def test_split_targets_quoting_and_whitespace() -> None:
    assert split_targets('a, b c,"|x, y" , "/p q" ,,') == ("a", "b", "c", "|x, y", "/p q")
    assert split_targets('"john doe"@example.com, \\bob') == ('"john doe"@example.com', "\\bob")
    assert split_targets(":include: /etc/x, |cmd arg1 arg2") == (
        ":include:/etc/x",
        "|cmd arg1 arg2",
    )
    assert split_targets('"a \\" quote"') == ('a " quote',)
    with pytest.raises(ValueError, match="unbalanced quote"):
        split_targets('"open')


def test_parse_target_lines_comments_and_errors() -> None:
    lines = ["# my forward", "alice@example.org, \\me", "", '  "|/usr/bin/procmail -f-"  ']
    assert parse_target_lines(lines) == ("alice@example.org", "\\me", "|/usr/bin/procmail -f-")
    with pytest.raises(ValueError, match="line 2: unbalanced quote"):
        parse_target_lines(["ok", '"bad'])


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_parse_aliases_never_crashes(text: str) -> None:
    aliases, problems = parse_aliases(text, "f")
    for name, targets in aliases.items():
        assert name == name.lower() and targets
    assert all(p.startswith("f:") for p in problems)


# --------------------------------------------------------------------------------------------
# Expansion


def test_no_alias_is_the_local_user() -> None:
    result = expand("Alice@Example.COM", {})
    assert summary(result) == ["mailbox:alice@example.com"]
    (target,) = result.targets
    assert isinstance(target, AddressTarget)
    assert (target.user, target.extension, target.domain, target.chain) == (
        "alice",
        None,
        "example.com",
        (),
    )
    assert target.original_recipient == "alice@example.com"
    assert result.failures == ()


def test_remote_domain_is_not_looked_up() -> None:
    result = expand("root@remote.example", {"root": ("alice",)})
    assert summary(result) == ["remote:root@remote.example"]


def test_every_target_type_with_chain_and_source() -> None:
    aliases = {
        "team": "alice, Bob@Example.COM, carol@remote.example, /var/log/team, "
        '"|/usr/bin/notify team", /var/maildirs/team/',
    }
    result = expand("team@example.com", aliases)
    assert summary(result) == [
        "mailbox:alice@example.com",
        "mailbox:bob@example.com",
        "remote:carol@remote.example",
        "file:/var/log/team",
        "cmd:/usr/bin/notify team",
        "file:/var/maildirs/team/",
    ]
    for target in result.targets:
        assert target.chain == ("team@example.com",)
        assert target.source is not None and target.source.type is ExpansionType.ALIAS
        assert target.source.name == "team"
    remote = result.targets[2]
    assert isinstance(remote, AddressTarget) and remote.delivered_to == "team@example.com"
    maildir = result.targets[5]
    assert isinstance(maildir, FileTarget) and maildir.is_maildir
    assert not isinstance(result.targets[3], CommandTarget)


def test_nested_aliases_record_the_chain() -> None:
    result = expand("all@example.com", {"all": "team, dave", "team": "alice"})
    assert summary(result) == ["mailbox:alice@example.com", "mailbox:dave@example.com"]
    assert result.targets[0].chain == ("all@example.com", "team@example.com")
    assert result.targets[0].original_recipient == "all@example.com"
    assert result.targets[1].chain == ("all@example.com",)


def test_bare_names_take_origin_when_given() -> None:
    result = expand("team@mx.example.com", {"team": "alice"}, origin="example.com")
    assert summary(result) == ["mailbox:alice@example.com"]
    result = expand("team@mx.example.com", {"team": "alice"})
    assert summary(result) == ["mailbox:alice@mx.example.com"]


def test_duplicates_are_delivered_once() -> None:
    aliases = {
        "all": "team, ops, alice, /var/log/x, /var/log/x",
        "team": "alice, bob, |notify",
        "ops": "bob, ALICE, |notify",
    }
    result = expand("all@example.com", aliases)
    assert summary(result) == [
        "mailbox:alice@example.com",
        "mailbox:bob@example.com",
        "cmd:notify",
        "file:/var/log/x",
    ]


def test_lookup_is_case_insensitive_on_the_local_part() -> None:
    result = expand("TeAm@example.com", {"team": "alice"})
    assert summary(result) == ["mailbox:alice@example.com"]


def test_alias_listing_itself_delivers_to_the_user() -> None:
    result = expand("alice@example.com", {"alice": "alice, bob"})
    assert summary(result) == ["mailbox:alice@example.com", "mailbox:bob@example.com"]
    assert result.failures == ()


def test_self_reference_to_a_missing_user_is_unknown() -> None:
    result = expand("sales@example.com", {"sales": "sales, bob"}, users={"bob"})
    assert summary(result) == ["mailbox:bob@example.com"]
    (failure,) = result.failures
    assert (failure.dsn, failure.text, failure.temporary) == (
        "5.1.1",
        'unknown user: "sales"',
        False,
    )


def test_pure_loop_is_a_forwarding_loop_error() -> None:
    result = expand("a@example.com", {"a": "b", "b": "c", "c": "a"})
    assert result.targets == ()
    (failure,) = result.failures
    assert failure.dsn == "5.4.6" and not failure.temporary
    assert failure.text == "mail forwarding loop for a@example.com"
    assert any("alias loop" in w for w in result.warnings)


def test_loop_branch_is_cut_but_other_members_get_the_mail() -> None:
    result = expand("a@example.com", {"a": "b, carol", "b": "a"})
    assert summary(result) == ["mailbox:carol@example.com"]
    assert result.failures == ()
    assert result.warnings


def test_delivered_to_header_loop() -> None:
    result = expand("team@example.com", {"team": "alice, bob"}, delivered_to={"Bob@Example.com"})
    assert summary(result) == ["mailbox:alice@example.com"]
    (failure,) = result.failures
    assert failure.text == "mail forwarding loop for bob@example.com"
    assert failure.dsn == "5.4.6"


def test_nesting_limit() -> None:
    chain = {f"l{i}": f"l{i + 1}" for i in range(10)}
    result = expand("l0@example.com", chain, max_depth=5)
    assert result.targets == ()
    assert result.failures[0].text == "recipient nesting limit exceeded"


def test_include_targets_and_their_class() -> None:
    includes = {"/etc/list": "# members\nalice, bob\n|/usr/bin/archive\n/var/log/list\n"}
    result = expand("list@example.com", {"list": ":include:/etc/list"}, includes=includes)
    assert summary(result) == ["mailbox:alice@example.com", "mailbox:bob@example.com"]
    texts = [(f.address, f.text, f.dsn) for f in result.failures]
    assert texts == [
        ("|/usr/bin/archive", "mail to command is restricted", "5.7.1"),
        ("/var/log/list", "mail to file is restricted", "5.7.1"),
    ]
    assert result.targets[0].source is not None
    assert result.targets[0].source.type is ExpansionType.INCLUDE
    assert result.targets[0].source.name == "/etc/list"

    allowed = expand(
        "list@example.com",
        {"list": ":include:/etc/list"},
        includes=includes,
        allow_mail_to_commands=("alias", "forward", "include"),
        allow_mail_to_files=("include",),
    )
    assert summary(allowed)[2:] == ["cmd:/usr/bin/archive", "file:/var/log/list"]
    assert allowed.failures == ()


def test_include_missing_file_bounces_and_loop_is_cut() -> None:
    result = expand("list@example.com", {"list": ":include:/etc/nope, alice"})
    assert summary(result) == ["mailbox:alice@example.com"]
    (failure,) = result.failures
    assert (failure.dsn, failure.text) == ("5.3.5", "mail system configuration error")

    includes = {"/etc/a": ":include:/etc/b\ncarol", "/etc/b": ":include:/etc/a"}
    result = expand("x@example.com", {"x": ":include:/etc/a"}, includes=includes)
    assert summary(result) == ["mailbox:carol@example.com"]


def test_include_read_error_other_than_missing_defers() -> None:
    def read_include(path: str) -> list[str]:
        raise OSError(errno.EIO, "Input/output error", path)

    result = expand_recipient(
        "list@example.com",
        lookup_alias={"list": (":include:/etc/list",)}.get,
        read_include=read_include,
        is_local_domain=LOCAL_DOMAINS.__contains__,
    )
    assert result.deferred
    assert result.failures[0].dsn == "4.3.0"


def test_alias_database_unavailable_defers() -> None:
    def lookup_alias(name: str) -> tuple[str, ...] | None:
        raise LookupUnavailable("ldap down")

    result = expand_recipient(
        "alice@example.com",
        lookup_alias=lookup_alias,
        read_include=lambda path: [],
        is_local_domain=LOCAL_DOMAINS.__contains__,
    )
    assert result.targets == ()
    assert [(f.dsn, f.text) for f in result.failures] == [("4.3.0", "alias database unavailable")]
    assert result.deferred


def test_owner_alias_receives_errors() -> None:
    aliases = {
        "team": "alice, ghost, sub",
        "owner-team": "listmaster",
        "sub": "bob",
        "ops": "carol",
    }
    result = expand("team@example.com", aliases, users={"alice", "bob", "listmaster"})
    assert summary(result) == ["mailbox:alice@example.com", "mailbox:bob@example.com"]
    assert [t.owner for t in result.targets] == ["owner-team@example.com"] * 2
    (failure,) = result.failures
    assert failure.owner == "owner-team@example.com"
    assert failure.text == 'unknown user: "ghost"'

    plain = expand("ops@example.com", aliases)
    assert plain.targets[0].owner is None

    expanded = expand("team@example.com", aliases, expand_owner_alias=True)
    assert expanded.targets[0].owner == "listmaster@example.com"

    off = expand("team@example.com", aliases, owner_request_special=False)
    assert off.targets[0].owner is None


def test_recipient_delimiter_tries_full_then_user() -> None:
    aliases = {"alice+lists": "lists-archive", "bob": "robert"}
    result = expand("alice+lists@example.com", aliases, recipient_delimiter="+")
    assert summary(result) == ["mailbox:lists-archive@example.com"]

    # The unmatched extension is kept for the local user without an alias.
    result = expand("carol+Shop@example.com", aliases, recipient_delimiter="+")
    assert summary(result) == ["mailbox:carol+shop@example.com"]
    (target,) = result.targets
    assert isinstance(target, AddressTarget)
    assert (target.user, target.extension) == ("carol", "shop")

    # bob+x matches the alias bob; by default the extension is not propagated...
    result = expand("bob+x@example.com", aliases, recipient_delimiter="+")
    assert summary(result) == ["mailbox:robert@example.com"]
    # ... with propagate_unmatched_extensions = alias it is.
    result = expand(
        "bob+x@example.com",
        aliases,
        recipient_delimiter="+-",
        propagate_unmatched_extensions=("canonical", "virtual", "alias"),
    )
    assert summary(result) == ["mailbox:robert+x@example.com"]


def test_extension_with_a_slash_is_dropped() -> None:
    result = expand("alice+../../x@example.com", {}, recipient_delimiter="+")
    assert summary(result) == ["mailbox:alice@example.com"]
    assert result.warnings


def test_backslash_user_skips_alias_and_forward() -> None:
    forwards = {"alice": ("elsewhere@remote.example",)}
    aliases = {"me": "\\alice, alice2", "alice": "nobody", "alice2": "alice"}
    result = expand("me@example.com", aliases, forwards=forwards)
    # \alice: the mailbox; alice2 -> alice goes through alice's alias as usual.
    assert summary(result) == ["mailbox:alice@example.com", "mailbox:nobody@example.com"]


def test_forward_file_expansion() -> None:
    forwards = {"alice": ("\\alice", "alice@remote.example", '|"/usr/bin/vacation" alice')}
    result = expand("alice@example.com", {}, forwards=forwards)
    assert summary(result) == [
        "mailbox:alice@example.com",
        "remote:alice@remote.example",
        'cmd:"/usr/bin/vacation" alice',
    ]
    command = result.targets[2]
    assert isinstance(command, CommandTarget)
    assert command.source is not None
    assert command.source.type is ExpansionType.FORWARD
    assert (command.source.name, command.source.user) == ("/home/alice/.forward", "alice")
    assert command.delivered_to == "alice@example.com"


def test_forward_listing_the_user_goes_to_the_mailbox() -> None:
    forwards = {"alice": ("alice", "bob")}
    result = expand("alice@example.com", {}, forwards=forwards)
    assert summary(result) == ["mailbox:alice@example.com", "mailbox:bob@example.com"]


def test_alias_then_forward_loop_back_is_cut() -> None:
    forwards = {"alice": ("team",)}
    result = expand("team@example.com", {"team": "alice, bob"}, forwards=forwards)
    assert summary(result) == ["mailbox:bob@example.com"]


def test_mutual_forwards_loop() -> None:
    forwards = {"alice": ("bob",), "bob": ("alice",)}
    result = expand("alice@example.com", {}, forwards=forwards)
    # alice -> bob -> alice: alice's .forward is already being expanded, so her mailbox.
    assert summary(result) == ["mailbox:alice@example.com"]


def test_commands_in_forward_can_be_refused() -> None:
    forwards = {"alice": ("|procmail",)}
    result = expand("alice@example.com", {}, forwards=forwards, allow_mail_to_commands=("alias",))
    assert result.targets == ()
    assert result.failures[0].text == "mail to command is restricted"


def test_split_extension_owner_request_special() -> None:
    assert split_extension("owner-team", "-") == ("owner-team", None)
    assert split_extension("owner-team", "-", owner_request_special=False) == ("owner", "team")
    assert split_extension("alice+x+y", "+") == ("alice", "x+y")
    assert split_extension("alice", "") == ("alice", None)


def test_alias_maps_from_other_table_types() -> None:
    from roost.delivery.aliasfile import open_alias_maps

    maps = open_alias_maps(["inline:{ root=alice, { team = bob, |notify } }"])
    assert maps.lookup("ROOT") == ("alice",)
    assert maps.lookup("team") == ("bob", "|notify")
    assert maps.lookup("nobody") is None
    assert maps.owner_uid("team") == 0
