"""Lookup tables: texthash, inline, static, cidr, regexp (Postfix's DATABASE_README)."""

from __future__ import annotations

from pathlib import Path

import pytest

from roost.config import TableError, open_table


def table_file(tmp_path: Path, text: str, name: str = "table") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_texthash_keys_are_case_insensitive_with_continuations(tmp_path: Path) -> None:
    path = table_file(tmp_path, "# access\nExample.COM   REJECT no thanks\nfoo@bar  OK\n  more\n")
    table = open_table(f"texthash:{path}")
    assert table.lookup("example.com") == "REJECT no thanks"
    assert table.lookup("FOO@BAR") == "OK more"
    assert table.lookup("other") is None
    assert table.ref == f"texthash:{path}"


def test_hash_reads_the_text_source(tmp_path: Path) -> None:
    path = table_file(tmp_path, "key value\n")
    assert open_table(f"hash:{path}").lookup("KEY") == "value"


def test_texthash_line_without_value(tmp_path: Path) -> None:
    path = table_file(tmp_path, "ok value\nlonely\n")
    with pytest.raises(TableError, match=f"{path}:2: expected 'key whitespace value'"):
        open_table(f"texthash:{path}")


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="nope: cannot read: No such file or directory"):
        open_table(f"texthash:{tmp_path}/nope")


def test_unknown_type() -> None:
    with pytest.raises(TableError, match="unknown table type 'mysql'"):
        open_table("mysql:/etc/x.cf")


def test_not_a_reference() -> None:
    with pytest.raises(TableError, match="expected type:name"):
        open_table("texthash:")


def test_inline() -> None:
    table = open_table("inline:{ a=1, { B = two words }, { c = x, y } }")
    assert table.lookup("a") == "1"
    assert table.lookup("b") == "two words"
    assert table.lookup("c") == "x, y"
    assert table.lookup("d") is None
    with pytest.raises(TableError, match="expected key=value"):
        open_table("inline:{ novalue }")
    with pytest.raises(TableError, match="expected inline:"):
        open_table("inline:a=1")


def test_static() -> None:
    assert open_table("static:OK").lookup("anything") == "OK"
    assert open_table("static:{ 450 try later }").lookup("x") == "450 try later"


def test_cidr_first_match_wins_ipv4_and_ipv6(tmp_path: Path) -> None:
    path = table_file(
        tmp_path,
        "192.168.1.1     REJECT one host\n192.168.0.0/16  OK\n"
        "[2001:db8::]/32 DUNNO\n::1 OK local\n",
    )
    table = open_table(f"cidr:{path}")
    assert table.lookup("192.168.1.1") == "REJECT one host"
    assert table.lookup("192.168.7.7") == "OK"
    assert table.lookup("2001:db8::5") == "DUNNO"
    assert table.lookup("::ffff:192.168.3.3") == "OK"  # IPv4-mapped
    assert table.lookup("::1") == "OK local"
    assert table.lookup("10.0.0.1") is None
    assert table.lookup("not-an-ip") is None


def test_cidr_host_bits_set_is_an_error(tmp_path: Path) -> None:
    path = table_file(tmp_path, "10.0.0.1/8 OK\n")
    with pytest.raises(TableError, match=f"{path}:1: bad network '10.0.0.1/8'"):
        open_table(f"cidr:{path}")


def test_regexp_case_insensitive_by_default_with_substitution(tmp_path: Path) -> None:
    path = table_file(
        tmp_path,
        "/^(.*)@Example\\.com$/   $1@example.org\n"
        "/^Exact$/i               case-sensitive\n"
        "!/\\.test$/              not-test\n",
    )
    table = open_table(f"regexp:{path}")
    assert table.lookup("alice@EXAMPLE.com") == "alice@example.org"
    assert table.lookup("Exact") == "case-sensitive"
    assert table.lookup("exact") == "not-test"
    assert table.lookup("a.test") is None


def test_regexp_if_endif(tmp_path: Path) -> None:
    path = table_file(tmp_path, "if /@example\\.com$/\n/^admin@/ REJECT\nendif\n/^admin@/ OK\n")
    table = open_table(f"regexp:{path}")
    assert table.lookup("admin@example.com") == "REJECT"
    assert table.lookup("admin@other.org") == "OK"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no slashes here\n", ":1: expected /pattern/flags result"),
        ("/(/ x\n", ":1: bad regular expression"),
        ("/a/q x\n", ":1: unknown regexp flag 'q'"),
        ("/a/\n", ":1: missing result after the pattern"),
        ("endif\n", ":1: endif without if"),
        ("if /a/\n/b/ c\n", ":1: if without endif"),
    ],
)
def test_regexp_errors(tmp_path: Path, text: str, message: str) -> None:
    path = table_file(tmp_path, text)
    with pytest.raises(TableError, match=message):
        open_table(f"regexp:{path}")
