"""Unit tests for roost.auth.schemes: Dovecot password schemes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import traceback

import pytest
from passlib.hash import sha256_crypt, sha512_crypt

from roost.auth.schemes import (
    MAX_PASSWORD_BYTES,
    SCHEMES,
    MalformedHashError,
    PasswordSchemeError,
    UnknownSchemeError,
    WeakSchemeError,
    check_hash,
    hash_password,
    split_scheme,
    verify_password,
)

WEAK = {"DES-CRYPT", "MD5-CRYPT", "MD5", "SMD5", "PLAIN-MD5", "LDAP-MD5"}

# Dovecot's own vectors, password "test" (src/lib-auth/test-password-scheme.c).
DOVECOT_VECTORS = [
    "{PLAIN}test",
    "{CRYPT}//EsnG9FLTKjo",
    "{MD5}$1$wmyrgRuV$kImF6.9MAFQNHe23kq5vI/",
    "{SHA1}qUqP5cyxm6YcTAhz05Hph5gvu9M=",
    "{SMD5}JTu1KRwptKZJg/RLd+6Vn5GUd0M=",
    "{LDAP-MD5}CY9rzUYh03PK3k6DJie09g==",
    "{SHA256}n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=",
    "{SHA512}7iaw3Ur350mqGo7jwQrpkj9hiYB3Lkc/iBml1JQODbJ6wYX4oOHV+E+IvIh/1nsUNzLDBMxfqa2Ob1f1"
    "ACio/w==",
    "{SSHA}H/zrDv8FXUu1JmwvVYijfrYEF34jVZcO",
    "{MD5-CRYPT}$1$GgvxyNz8$OjZhLh4P.gF1lxYEbLZ3e/",
    "{PBKDF2}$1$bUnT4Pl7yFtYX0KU$5000$50a83cafdc517b9f46519415e53c6a858908680a",
    "{SCRAM-SHA-1}4096,GetyLXdBuHzf1FWf8SLz2Q==,NA/OqmF4hhrsrB9KR7po+dliTGM=,"
    "QBiURvQaE6H6qYTmeghDHLANBFQ=",
    "{SCRAM-SHA-256}4096,LfNGSFqiFykEZ1xDAYlnKQ==,HACNf9CII7cMz3XjRy/Oh3Ae2LHApoDyNw74d3YtFws=,"
    "AQH0j7Hf8J12g8eNBadvzlNB2am3PxgNwFCFd3RxEaw=",
    "{BLF-CRYPT}$2y$05$11ipvo5dR6CwkzwmhwM26OXgzXwhV2PyPuLV.Qi31ILcRcThQpEiW",
    "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$f2iuP4aUeNMrgu34fhOkkg$1XSZZMWlIs0zmE+snlUIcLADO3GXbA2"
    "O/hsQmmc317k",
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$vBb99oJ12p3WAdYlaMHz1A$jtFOtbo/sYV9OSlTxDo/nVNq3uAr"
    "Hd5GJSEx0ty85Cc",
    "{ARGON2}$argon2id$v=19$m=65536,t=3,p=1$vBb99oJ12p3WAdYlaMHz1A$jtFOtbo/sYV9OSlTxDo/nVNq3uArHd"
    "5GJSEx0ty85Cc",
]


@pytest.mark.parametrize("stored", DOVECOT_VECTORS, ids=lambda s: s[1 : s.index("}")])
def test_dovecot_vectors(stored: str) -> None:
    assert verify_password("test", stored, allow_weak=True)
    assert not verify_password("tesT", stored, allow_weak=True)
    assert not verify_password("test ", stored, allow_weak=True)


def test_glibc_sha_crypt_vectors() -> None:
    # The samples Dovecot checks libc crypt() with (password-scheme-crypt.c).
    sha256 = "$5$rounds=1000$0123456789abcdef$K/DksR0DT01hGc8g/kt9McEgrbFMKi9qrb1jehe7hn4"
    sha512 = (
        "$6$rounds=1000$0123456789abcdef$ZIAd5WqfyLkpvsVCVUU1GrvqaZTqvhJoouxdSqJO71l9Ld3tVrfO"
        "atEjarhghvEYADkq//LpDnTeO90tcbtHR1"
    )
    for stored in (sha256, sha512, "{SHA256-CRYPT}" + sha256, "{SHA512-CRYPT}" + sha512):
        assert verify_password("08/15!test~4711", stored)
        assert not verify_password("08/15!test~4712", stored)


def test_sha512_crypt_made_by_passlib_directly() -> None:
    stored = "{SHA512-CRYPT}" + sha512_crypt.using(rounds=5000).hash("correct horse")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsE", stored)
    bare = sha256_crypt.using(rounds=5000).hash("correct horse")  # CRYPT default scheme
    assert verify_password("correct horse", bare)


def test_ssha512_computed_by_hand() -> None:
    password, salt = "pässwörd".encode(), b"\x01\x02\x03\x04\x05\x06\x07\x08"
    raw = hashlib.sha512(password + salt).digest() + salt
    stored = "{SSHA512}" + base64.b64encode(raw).decode()
    assert verify_password("pässwörd", stored)
    assert not verify_password("passwörd", stored)
    hex_stored = "{SSHA512.HEX}" + raw.hex()
    assert verify_password("pässwörd", hex_stored)


def test_pbkdf2_computed_by_hand() -> None:
    # Dovecot: PBKDF2-HMAC-SHA1, the salt text used as is, 20-byte key, lowercase hex.
    key = hashlib.pbkdf2_hmac("sha1", b"hunter2", b"SaltSaltSaltSalt", 1234, 20)
    stored = "{PBKDF2}$1$SaltSaltSaltSalt$1234$" + key.hex()
    assert verify_password("hunter2", stored)
    assert verify_password("hunter2", "{PBKDF2}$1$SaltSaltSaltSalt$1234$" + key.hex().upper())
    assert not verify_password("hunter2", "{PBKDF2}$1$saltsaltsaltsalt$1234$" + key.hex())
    assert not verify_password("hunter3", stored)


def test_scram_sha_256_computed_by_hand() -> None:
    salt, iterations = b"0123456789abcdef", 4096
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = [base64.b64encode(x).decode() for x in (salt, stored_key, server_key)]
    stored = "{SCRAM-SHA-256}" + f"{iterations}," + ",".join(b64)
    assert verify_password("pencil", stored)
    assert not verify_password("pencils", stored)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_round_trips(scheme: str) -> None:
    password = "Pa55:wörd" if scheme != "DES-CRYPT" else "Pa55wd"  # DES uses 8 bytes only
    stored = hash_password(password, scheme, allow_weak=True)
    assert stored.startswith("{" + scheme + "}")
    assert verify_password(password, stored, allow_weak=True)
    assert not verify_password(
        password + "!" if scheme != "DES-CRYPT" else "Pa55we", stored, allow_weak=True
    )


@pytest.mark.parametrize(
    ("scheme", "pattern"),
    [
        ("SHA512-CRYPT", r"\{SHA512-CRYPT\}\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}"),
        ("SHA256-CRYPT", r"\{SHA256-CRYPT\}\$5\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{43}"),
        ("BLF-CRYPT", r"\{BLF-CRYPT\}\$2y\$05\$[./0-9A-Za-z]{53}"),
        ("CRYPT", r"\{CRYPT\}\$2y\$05\$[./0-9A-Za-z]{53}"),
        (
            "ARGON2ID",
            r"\{ARGON2ID\}\$argon2id\$v=19\$m=65536,t=3,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}",
        ),
        (
            "ARGON2I",
            r"\{ARGON2I\}\$argon2i\$v=19\$m=32768,t=4,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}",
        ),
        ("PBKDF2", r"\{PBKDF2\}\$1\$[./0-9A-Za-z]{16}\$5000\$[0-9a-f]{40}"),
        ("SSHA512", r"\{SSHA512\}[A-Za-z0-9+/]{91}="),  # 64 + 4 bytes
        ("SSHA256", r"\{SSHA256\}[A-Za-z0-9+/]{48}"),  # 32 + 4 bytes
        ("SSHA", r"\{SSHA\}[A-Za-z0-9+/]{32}"),  # 20 + 4 bytes
        ("SHA512", r"\{SHA512\}[A-Za-z0-9+/]{86}=="),
        (
            "SCRAM-SHA-256",
            r"\{SCRAM-SHA-256\}4096,[A-Za-z0-9+/]{22}==,[A-Za-z0-9+/]{43}=,[A-Za-z0-9+/]{43}=",
        ),
        ("PLAIN", r"\{PLAIN\}s3cret"),
        ("SSHA512.HEX", r"\{SSHA512\.HEX\}[0-9a-f]{136}"),
    ],
)
def test_output_has_doveadm_shape(scheme: str, pattern: str) -> None:
    assert re.fullmatch(pattern, hash_password("s3cret", scheme))


def test_hashes_are_salted() -> None:
    for scheme in ("SHA512-CRYPT", "SSHA512", "PBKDF2", "BLF-CRYPT"):
        assert hash_password("same", scheme) != hash_password("same", scheme)


def test_rounds_like_doveadm_r() -> None:
    assert "$6$rounds=10000$" in hash_password("x", "SHA512-CRYPT", rounds=10000)
    assert "$5$rounds=1000$" in hash_password("x", "SHA256-CRYPT", rounds=10)  # clamped
    assert hash_password("x", "BLF-CRYPT", rounds=3).startswith("{BLF-CRYPT}$2y$04$")
    stored = hash_password("x", "PBKDF2", rounds=100)
    assert re.fullmatch(r"\{PBKDF2\}\$1\$.{16}\$100\$[0-9a-f]{40}", stored)
    assert verify_password("x", stored)
    assert ",t=5," in hash_password("x", "ARGON2I", rounds=5)
    assert hash_password("x", "SCRAM-SHA-1", rounds=5000).startswith("{SCRAM-SHA-1}5000,")


def test_scheme_names_are_case_insensitive() -> None:
    stored = hash_password("pw", "ssha512")
    assert stored.startswith("{SSHA512}")
    assert verify_password("pw", "{ssha512}" + stored.removeprefix("{SSHA512}"))


def test_fixed_length_digests_accept_hex_or_base64() -> None:
    digest = hashlib.sha256(b"pw").digest()
    assert verify_password("pw", "{SHA256}" + digest.hex())
    assert verify_password("pw", "{SHA256}" + base64.b64encode(digest).decode())
    md5 = hashlib.md5(b"pw").digest()
    assert verify_password("pw", "{PLAIN-MD5}" + md5.hex(), allow_weak=True)
    assert verify_password("pw", "{PLAIN-MD5}" + base64.b64encode(md5).decode(), allow_weak=True)
    assert verify_password("pw", "{PLAIN.B64}cHc=")
    assert verify_password("pw", "{PLAIN.hex}7077")


def test_weak_schemes_refused_unless_allowed() -> None:
    for scheme in sorted(WEAK):
        with pytest.raises(WeakSchemeError):
            hash_password("pw", scheme)
        stored = hash_password("pw", scheme, allow_weak=True)
        with pytest.raises(WeakSchemeError):
            verify_password("pw", stored)
    with pytest.raises(WeakSchemeError):
        verify_password("test", "//EsnG9FLTKjo")  # DES under the CRYPT default
    with pytest.raises(WeakSchemeError):
        verify_password("test", "$1$wmyrgRuV$kImF6.9MAFQNHe23kq5vI/")  # bare $1$: MD5-CRYPT
    assert verify_password("test", "$1$wmyrgRuV$kImF6.9MAFQNHe23kq5vI/", allow_weak=True)


def test_bare_data_uses_the_default_scheme() -> None:
    assert verify_password("test", "test", default_scheme="PLAIN")
    blf = "$2y$05$11ipvo5dR6CwkzwmhwM26OXgzXwhV2PyPuLV.Qi31ILcRcThQpEiW"
    assert verify_password("test", blf)  # CRYPT dispatches on $2y$


def test_split_scheme() -> None:
    assert split_scheme("{SHA512-CRYPT}$6$x") == ("SHA512-CRYPT", "$6$x")
    assert split_scheme("$6$x$y") == ("CRYPT", "$6$x$y")
    assert split_scheme("$1$salt$hash") == ("MD5-CRYPT", "$1$salt$hash")
    assert split_scheme("plain", "PLAIN") == ("PLAIN", "plain")
    assert split_scheme("{broken") == ("CRYPT", "{broken")


SECRET_DATA = "Zm9vYmFyU0VDUkVU"


@pytest.mark.parametrize(
    ("stored", "error"),
    [
        ("{NOPE}" + SECRET_DATA, UnknownSchemeError),
        ("{CRAM-MD5}" + SECRET_DATA, UnknownSchemeError),
        ("{SHA256.ROT13}" + SECRET_DATA, UnknownSchemeError),
        ("$y$j9T$" + SECRET_DATA, UnknownSchemeError),
        ("{SSHA512}" + SECRET_DATA, MalformedHashError),
        ("{SHA256}" + SECRET_DATA, MalformedHashError),
        ("{SHA256}!!" + SECRET_DATA, MalformedHashError),
        ("{SSHA512.HEX}zz" + SECRET_DATA, MalformedHashError),
        ("{PBKDF2}$1$" + SECRET_DATA + "$5000$00", MalformedHashError),
        ("{PBKDF2}$1$" + SECRET_DATA + "$many$" + "0" * 40, MalformedHashError),
        ("{PBKDF2}$2$" + SECRET_DATA, MalformedHashError),
        ("{SCRAM-SHA-1}4096," + SECRET_DATA, MalformedHashError),
        ("{BLF-CRYPT}$2y$05$" + SECRET_DATA, MalformedHashError),
        ("{SHA512-CRYPT}$6$" + SECRET_DATA + "$short", MalformedHashError),
        ("{ARGON2ID}" + SECRET_DATA, MalformedHashError),
        ("plaintext" + SECRET_DATA, MalformedHashError),
    ],
)
def test_unusable_data_raises_without_echoing_it(
    stored: str, error: type[PasswordSchemeError]
) -> None:
    with pytest.raises(error) as caught:
        verify_password("pw", stored)
    exc = caught.value
    assert SECRET_DATA not in "".join(traceback.format_exception(exc))
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


def test_check_hash() -> None:
    check_hash(hash_password("pw"))
    with pytest.raises(UnknownSchemeError):
        check_hash("{NOPE}x")
    with pytest.raises(WeakSchemeError):
        check_hash("{PLAIN-MD5}" + "0" * 32)
    check_hash("{PLAIN-MD5}" + "0" * 32, allow_weak=True)


def test_passwords_with_nul_never_match() -> None:
    assert not verify_password("a\x00b", "{PLAIN}a")
    with pytest.raises(ValueError):
        hash_password("a\x00b", "SSHA512")


def test_overlong_passwords_never_match() -> None:
    long = "x" * (MAX_PASSWORD_BYTES + 1)
    assert not verify_password(long, "{PLAIN}" + long)
    assert verify_password("x" * MAX_PASSWORD_BYTES, "{PLAIN}" + "x" * MAX_PASSWORD_BYTES)


def test_bcrypt_uses_the_first_72_bytes_like_crypt_blowfish() -> None:
    stored = hash_password("a" * 100, "BLF-CRYPT")
    assert verify_password("a" * 100, stored)
    assert verify_password("a" * 72 + "different tail", stored)
    assert not verify_password("a" * 71, stored)


def test_empty_stored_crypt_never_matches() -> None:
    assert not verify_password("", "")
    assert not verify_password("x", "{CRYPT}")
    assert not verify_password("x", "{BLF-CRYPT}")


def test_unknown_scheme_for_hash_password() -> None:
    with pytest.raises(UnknownSchemeError):
        hash_password("pw", "ROT13")
