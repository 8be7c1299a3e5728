"""Dovecot password schemes: check stored hashes, make new ones like ``doveadm pw``.

A stored password is ``{SCHEME}data``; without a ``{SCHEME}`` prefix the backend's default
scheme applies (``CRYPT`` for passwd-file, Dovecot's ``default_pass_scheme``), except that a
bare ``$1$salt$hash`` is MD5-CRYPT as in Dovecot. A ``.HEX``, ``.B64`` or ``.BASE64``
suffix on the scheme name (``{SSHA512.HEX}``) overrides the scheme's encoding. Scheme
names are case-insensitive. Passwords are hashed as their UTF-8 bytes.

Supported (Dovecot 2.3/2.4 ``src/lib-auth/password-scheme*.c``):

=================== ========================================== =========================
scheme              stored data                                implementation
=================== ========================================== =========================
SHA512-CRYPT        ``$6$[rounds=N$]salt$hash``                libpass ``sha512_crypt``
SHA256-CRYPT        ``$5$[rounds=N$]salt$hash``                libpass ``sha256_crypt``
BLF-CRYPT           ``$2y$05$...`` (also ``$2a$``, ``$2b$``)   libpass ``bcrypt``
CRYPT               any of the crypt(3) forms here             dispatch on the prefix
ARGON2ID, ARGON2    ``$argon2id$v=19$m=65536,t=3,p=1$...``     libpass ``argon2``
ARGON2I             ``$argon2i$v=19$m=32768,t=4,p=1$...``      libpass ``argon2``
PBKDF2              ``$1$salt$rounds$hex``                     ``hashlib.pbkdf2_hmac``
SCRAM-SHA-1/-256    ``iter,salt64,storedkey64,serverkey64``    ``hashlib``/``hmac``
SSHA512/SSHA256/    base64(digest || salt)                     ``hashlib``
SSHA/SMD5
SHA512/SHA256/      base64(digest) (hex accepted)              ``hashlib``
SHA/SHA1
PLAIN-MD5, LDAP-MD5 hex / base64 MD5 digest                    ``hashlib``
MD5-CRYPT, MD5      ``$1$salt$hash``                           libpass ``md5_crypt``
DES-CRYPT           13 characters                              libpass ``des_crypt``
PLAIN, CLEAR,       the password itself                        ``hmac.compare_digest``
CLEARTEXT
=================== ========================================== =========================

libpass has no Dovecot PBKDF2 or SCRAM format, so those two are written here on
``hashlib`` (PBKDF2 is PBKDF2-HMAC-SHA1 with the salt text used as is, 20-byte key, hex).
Not supported: CRAM-MD5, HMAC-MD5, DIGEST-MD5, PLAIN-MD4, PLAIN-TRUNC, OTP, and crypt(3)
formats libpass lacks (``$y$`` yescrypt, ``$7$`` scrypt); they raise
:class:`UnknownSchemeError`.

Weak schemes (DES-CRYPT, MD5-CRYPT, MD5, SMD5, PLAIN-MD5, LDAP-MD5, and CRYPT data in
DES or ``$1$`` form) are refused unless ``allow_weak=True``, like Dovecot 2.4's
``auth_allow_weak_schemes = no`` default.

``hash_password`` follows ``doveadm pw -s SCHEME [-r ROUNDS]``: salt alphabet and sizes,
default rounds (SHA-crypt 5000 and then no ``rounds=`` field, bcrypt cost 5, PBKDF2 5000,
SCRAM 4096) and libsodium's Argon2 limits (ARGON2ID: t=3, 64 MiB; ARGON2I: t=4, 32 MiB).
``CRYPT`` generates bcrypt, as current Dovecot does (``password-scheme-crypt.c``).

Hashes and passwords never appear in exception messages.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import importlib
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from passlib.exc import MissingBackendError

__all__ = [
    "MAX_PASSWORD_BYTES",
    "SCHEMES",
    "MalformedHashError",
    "PasswordSchemeError",
    "SchemeUnavailableError",
    "UnknownSchemeError",
    "WeakSchemeError",
    "check_hash",
    "hash_password",
    "libpass_needs",
    "preload_libpass",
    "split_scheme",
    "verify_password",
]

MAX_PASSWORD_BYTES: Final = 4096
"""Longest password checked, in UTF-8 bytes (libpass' limit); longer ones never match."""

_SALT_CHARS: Final = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BCRYPT_MAX_BYTES: Final = 72
_SHA_CRYPT_DEFAULT_ROUNDS: Final = 5000
_SHA_CRYPT_MIN_ROUNDS: Final = 1000
_SHA_CRYPT_MAX_ROUNDS: Final = 999_999_999
_BLF_DEFAULT_COST: Final = 5
_BLF_MIN_COST: Final = 4
_BLF_MAX_COST: Final = 31
_PBKDF2_DEFAULT_ROUNDS: Final = 5000
_PBKDF2_KEY_BYTES: Final = 20
_SCRAM_DEFAULT_ITERATIONS: Final = 4096
_SALTED_DIGEST_SALT_BYTES: Final = 4
_MAX_ITERATIONS: Final = 2**31 - 1
_MIB_IN_KIB: Final = 1024

# libsodium crypto_pwhash_argon2{i,id}_{OPS,MEM}LIMIT_{INTERACTIVE,MODERATE,SENSITIVE};
# memory in KiB as the PHC string's m= field.
_ARGON2I_LIMITS: Final = ((4, 32 * _MIB_IN_KIB), (6, 128 * _MIB_IN_KIB), (8, 512 * _MIB_IN_KIB))
_ARGON2ID_LIMITS: Final = (
    (2, 64 * _MIB_IN_KIB),
    (3, 256 * _MIB_IN_KIB),
    (4, 1024 * _MIB_IN_KIB),
)

Encoding = Literal["none", "base64", "hex"]


class PasswordSchemeError(ValueError):
    """A stored password cannot be checked. The message names the scheme, never the data."""


class UnknownSchemeError(PasswordSchemeError):
    """The scheme (or the crypt(3) format under CRYPT) is not supported."""


class MalformedHashError(PasswordSchemeError):
    """The stored data does not have the scheme's format."""


class WeakSchemeError(PasswordSchemeError):
    """A weak scheme was used while weak schemes are not allowed
    (Dovecot ``auth_allow_weak_schemes``)."""


class SchemeUnavailableError(PasswordSchemeError):
    """The library the scheme needs is not installed (``argon2-cffi``, ``bcrypt``)."""


class _Handler(Protocol):
    """The part of a libpass hash class used here (libpass is untyped)."""

    def verify(self, secret: bytes, hash: str) -> object: ...


class _Libpass:
    """A libpass hash class, imported at its first use.

    libpass' handlers, and the argon2-cffi and bcrypt backends they load, are about
    3.4 MiB in every process that imports them; a daemon whose users have PLAIN or
    hashlib-only passwords never needs them (:func:`preload_libpass` imports what a
    configuration needs before the worker processes are forked).

    Args:
        module: the libpass module, e.g. ``"passlib.handlers.sha2_crypt"``.
        name: the class in it, e.g. ``"sha512_crypt"``.
    """

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def load(self) -> Any:
        """Import the module; return the libpass class (untyped)."""
        return getattr(importlib.import_module(self.module), self.name)

    def verify(self, secret: bytes, hash: str) -> object:
        return self.load().verify(secret, hash)

    def using(self, **settings: object) -> Any:
        return self.load().using(**settings)

    def hash(self, secret: bytes) -> object:
        return self.load().hash(secret)


sha512_crypt: Final = _Libpass("passlib.handlers.sha2_crypt", "sha512_crypt")
sha256_crypt: Final = _Libpass("passlib.handlers.sha2_crypt", "sha256_crypt")
md5_crypt: Final = _Libpass("passlib.handlers.md5_crypt", "md5_crypt")
des_crypt: Final = _Libpass("passlib.handlers.des_crypt", "des_crypt")
bcrypt: Final = _Libpass("passlib.handlers.bcrypt", "bcrypt")
argon2: Final = _Libpass("passlib.handlers.argon2", "argon2")

#: The libpass classes each scheme may use (by base name, without encoding suffix).
_LIBPASS_USERS: Final[Mapping[str, tuple[_Libpass, ...]]] = {
    "SHA512-CRYPT": (sha512_crypt,),
    "SHA256-CRYPT": (sha256_crypt,),
    "BLF-CRYPT": (bcrypt,),
    "CRYPT": (sha512_crypt, sha256_crypt, md5_crypt, des_crypt, bcrypt),
    "DES-CRYPT": (des_crypt,),
    "MD5-CRYPT": (md5_crypt,),
    "MD5": (md5_crypt,),
    "ARGON2ID": (argon2,),
    "ARGON2": (argon2,),
    "ARGON2I": (argon2,),
}


def libpass_needs(stored: str, default_scheme: str = "CRYPT") -> frozenset[str]:
    """The libpass modules checking ``stored`` (see :func:`split_scheme`) may import.

    Returns:
        Module names (``passlib.handlers.*``); empty for the schemes written here on
        ``hashlib`` and for an unknown scheme. CRYPT data is matched by its prefix.
    """
    scheme, data = split_scheme(stored, default_scheme)
    base = scheme.upper().split(".")[0]
    handlers = _LIBPASS_USERS.get(base, ())
    if base == "CRYPT" and data:
        handler = _crypt_prefix_handler(data)
        handlers = (handler,) if handler is not None else handlers
    return frozenset(h.module for h in handlers)


def preload_libpass(modules: Iterable[str]) -> None:
    """Import libpass modules (:func:`libpass_needs`) and their backends now, e.g. before
    forking processes that will use them, so that their pages are shared.

    Missing backends (argon2-cffi, bcrypt) are left for the first use to report.
    """
    for handler in {h.module: h for hs in _LIBPASS_USERS.values() for h in hs}.values():
        if handler.module in modules:
            with contextlib.suppress(ImportError, MissingBackendError):
                get_backend = getattr(handler.load(), "get_backend", None)
                if get_backend is not None:
                    get_backend()


Verifier = Callable[[bytes, bytes, bool], bool]
Generator = Callable[[bytes, "int | None"], bytes]


@dataclass(frozen=True, slots=True)
class _Scheme:
    name: str
    encoding: Encoding
    raw_length: int  # 0: variable
    weak: bool
    generate: Generator
    verify: Verifier | None = None  # None: generate and compare (deterministic schemes)


# --- helpers -----------------------------------------------------------------------------


def _salt(length: int) -> str:
    return "".join(secrets.choice(_SALT_CHARS) for _ in range(length))


def _ascii(raw: bytes, scheme: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedHashError(f"{scheme} data is not ASCII") from None


def _b64decode(text: str) -> bytes:
    """Decode base64, tolerating missing padding; raise ``binascii.Error`` otherwise."""
    stripped = text.strip()
    padded = stripped + "=" * (-len(stripped) % 4)
    return binascii.a2b_base64(padded.encode("ascii"), strict_mode=True)


def _positive_int(text: str, scheme: str, what: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise MalformedHashError(f"{scheme} {what} is not a number")
    value = int(text)
    if not 1 <= value <= _MAX_ITERATIONS:
        raise MalformedHashError(f"{scheme} {what} out of range")
    return value


def _passlib_verify(handler: _Handler, password: bytes, stored: str, scheme: str) -> bool:
    try:
        return bool(handler.verify(password, stored))
    except MissingBackendError:
        raise SchemeUnavailableError(
            f"{scheme} needs a library that is not installed (argon2-cffi / bcrypt)"
        ) from None
    except (ValueError, TypeError):
        raise MalformedHashError(f"malformed {scheme} data") from None


def _passlib_hash(make: Callable[[], object], scheme: str) -> bytes:
    try:
        result = make()
    except MissingBackendError:
        raise SchemeUnavailableError(
            f"{scheme} needs a library that is not installed (argon2-cffi / bcrypt)"
        ) from None
    if not isinstance(result, str):
        raise TypeError(f"libpass returned {type(result).__name__} for {scheme}")
    return result.encode("ascii")


def _clamp(value: int | None, default: int, low: int, high: int) -> int:
    if value is None or value == 0:
        return default
    return max(low, min(high, value))


# --- crypt(3) family ------------------------------------------------------------------------

_DES_CRYPT: Final = re.compile(r"[./0-9A-Za-z]{13}")
_BLF_PREFIX: Final = re.compile(r"\$2[a-z]\$\d\d\$")


def _crypt_prefix_handler(stored: str) -> _Libpass | None:
    """The libpass class for crypt(3) data, from its prefix (None: not one of them)."""
    if stored.startswith("$6$"):
        return sha512_crypt
    if stored.startswith("$5$"):
        return sha256_crypt
    if stored.startswith("$1$"):
        return md5_crypt
    if stored.startswith("$2"):
        return bcrypt
    if _DES_CRYPT.fullmatch(stored):
        return des_crypt
    return None


def _crypt_handler(stored: str) -> tuple[_Handler, str]:
    if stored.startswith("$6$"):
        return sha512_crypt, "SHA512-CRYPT"
    if stored.startswith("$5$"):
        return sha256_crypt, "SHA256-CRYPT"
    if stored.startswith("$1$"):
        return md5_crypt, "MD5-CRYPT"
    if _DES_CRYPT.fullmatch(stored):
        return des_crypt, "DES-CRYPT"
    if stored.startswith("$"):
        ident = stored[: stored.find("$", 1) + 1] if "$" in stored[1:] else "$"
        if len(ident) > 8:
            ident = "$?"
        raise UnknownSchemeError(f"crypt(3) format {ident} is not supported")
    raise MalformedHashError("not a crypt(3) hash (is a {SCHEME} prefix missing?)")


def _crypt_verify(password: bytes, raw: bytes, allow_weak: bool) -> bool:
    stored = _ascii(raw, "CRYPT")
    if not stored:
        return False
    if len(stored) > 4 and stored.startswith("$2") and stored[3] == "$":
        return _blf_verify(password, raw, allow_weak)
    handler, name = _crypt_handler(stored)
    if not allow_weak and name in ("DES-CRYPT", "MD5-CRYPT"):
        raise WeakSchemeError(f"weak password scheme {name} refused")
    return _passlib_verify(handler, password, stored, name)


def _blf_verify(password: bytes, raw: bytes, allow_weak: bool) -> bool:
    stored = _ascii(raw, "BLF-CRYPT")
    if not stored:
        return False
    if len(stored) < 30 or not _BLF_PREFIX.match(stored):
        raise MalformedHashError("BLF-CRYPT data is not a bcrypt hash")
    # crypt_blowfish uses the first 72 bytes; the bcrypt package refuses longer input.
    return _passlib_verify(bcrypt, password[:_BCRYPT_MAX_BYTES], stored, "BLF-CRYPT")


def _md5_crypt_verify(password: bytes, raw: bytes, allow_weak: bool) -> bool:
    stored = _ascii(raw, "MD5-CRYPT")
    if not stored.startswith("$1$"):
        raise MalformedHashError("MD5-CRYPT data does not start with $1$")
    return _passlib_verify(md5_crypt, password, stored, "MD5-CRYPT")


def _md5_verify(password: bytes, raw: bytes, allow_weak: bool) -> bool:
    """Dovecot's ``MD5``: MD5-CRYPT when the data starts with ``$1$``, else PLAIN-MD5."""
    stored = _ascii(raw, "MD5")
    if stored.startswith("$1$"):
        return _passlib_verify(md5_crypt, password, stored, "MD5")
    digest = _decode(stored, _SCHEMES["PLAIN-MD5"], "hex", guessed=True)
    return hmac.compare_digest(hashlib.md5(password).digest(), digest)


def _sha_crypt_generator(handler: object, name: str) -> Generator:
    def generate(password: bytes, rounds: int | None) -> bytes:
        count = _clamp(
            rounds, _SHA_CRYPT_DEFAULT_ROUNDS, _SHA_CRYPT_MIN_ROUNDS, _SHA_CRYPT_MAX_ROUNDS
        )
        configured = handler.using(rounds=count, salt_size=16)  # type: ignore[attr-defined]
        return _passlib_hash(lambda: configured.hash(password), name)

    return generate


def _blf_generate(password: bytes, rounds: int | None) -> bytes:
    cost = _clamp(rounds, _BLF_DEFAULT_COST, _BLF_MIN_COST, _BLF_MAX_COST)
    return _passlib_hash(
        lambda: bcrypt.using(ident="2y", rounds=cost).hash(password[:_BCRYPT_MAX_BYTES]),
        "BLF-CRYPT",
    )


def _des_generate(password: bytes, rounds: int | None) -> bytes:
    return _passlib_hash(lambda: des_crypt.hash(password), "DES-CRYPT")


def _md5_crypt_generate(password: bytes, rounds: int | None) -> bytes:
    return _passlib_hash(lambda: md5_crypt.using(salt_size=8).hash(password), "MD5-CRYPT")


# --- Argon2 (Dovecot's libsodium schemes) -------------------------------------------------


def _argon2_verify(password: bytes, raw: bytes, allow_weak: bool) -> bool:
    stored = _ascii(raw, "ARGON2")
    if not stored.startswith(("$argon2i$", "$argon2id$")):
        raise MalformedHashError("ARGON2 data is not an argon2i/argon2id PHC string")
    return _passlib_verify(argon2, password, stored, "ARGON2")


def _argon2_generator(variant: Literal["I", "ID"]) -> Generator:
    limits = _ARGON2I_LIMITS if variant == "I" else _ARGON2ID_LIMITS

    def generate(password: bytes, rounds: int | None) -> bytes:
        ops = rounds if rounds else limits[0][0]
        memory_kib = limits[0][1]
        for minimum_ops, limit_kib in limits:
            if ops >= minimum_ops:
                memory_kib = limit_kib
        if variant == "ID":
            ops = max(ops, 3)  # Dovecot works around libsodium 1.0.13 needing t >= 3
        configured = argon2.using(
            type=variant,
            memory_cost=memory_kib,
            time_cost=ops,
            parallelism=1,
            salt_size=16,
            digest_size=32,
        )
        return _passlib_hash(lambda: configured.hash(password), "ARGON2" + variant)

    return generate


# --- PBKDF2 (Dovecot format) ----------------------------------------------------------------


def _pbkdf2_key(password: bytes, salt: str, rounds: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha1", password, salt.encode("ascii"), rounds, _PBKDF2_KEY_BYTES)


def _pbkdf2_verify(password: bytes, raw: bytes, allow_weak: bool) -> bool:
    stored = _ascii(raw, "PBKDF2")
    if not stored.startswith("$1$"):
        raise MalformedHashError("PBKDF2 data does not start with $1$")
    fields = stored[3:].split("$")
    if len(fields) != 3:
        raise MalformedHashError("PBKDF2 data is not $1$salt$rounds$hash")
    salt, rounds_text, key_hex = fields
    rounds = _positive_int(rounds_text, "PBKDF2", "rounds")
    if len(key_hex) != 2 * _PBKDF2_KEY_BYTES:
        raise MalformedHashError("PBKDF2 hash is not 160 bits of hex")
    try:
        expected = binascii.unhexlify(key_hex)
    except binascii.Error:
        raise MalformedHashError("PBKDF2 hash is not 160 bits of hex") from None
    return hmac.compare_digest(_pbkdf2_key(password, salt, rounds), expected)


def _pbkdf2_generate(password: bytes, rounds: int | None) -> bytes:
    count = _PBKDF2_DEFAULT_ROUNDS if not rounds else min(rounds, _MAX_ITERATIONS)
    salt = _salt(16)
    key = _pbkdf2_key(password, salt, count)
    return f"$1${salt}${count}${key.hex()}".encode("ascii")


# --- SCRAM (RFC 5802 / RFC 7677 stored keys, Dovecot format) -------------------------------


def _scram_keys(digest: str, password: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac(digest, password, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    stored_key = hashlib.new(digest, client_key).digest()
    server_key = hmac.new(salted, b"Server Key", digest).digest()
    return stored_key, server_key


def _scram_verifier(digest: str, name: str) -> Verifier:
    size = hashlib.new(digest).digest_size

    def verify(password: bytes, raw: bytes, allow_weak: bool) -> bool:
        fields = _ascii(raw, name).split(",")
        if len(fields) != 4:
            raise MalformedHashError(f"{name} data is not iter,salt,stored_key,server_key")
        iterations = _positive_int(fields[0], name, "iteration count")
        try:
            salt, stored_key, server_key = (_b64decode(field) for field in fields[1:])
        except (binascii.Error, ValueError):
            raise MalformedHashError(f"{name} data is not base64") from None
        if len(stored_key) != size or len(server_key) != size:
            raise MalformedHashError(f"{name} keys have the wrong length")
        calculated, _server = _scram_keys(digest, password, salt, iterations)
        return hmac.compare_digest(calculated, stored_key)

    return verify


def _scram_generator(digest: str) -> Generator:
    def generate(password: bytes, rounds: int | None) -> bytes:
        iterations = _clamp(rounds, _SCRAM_DEFAULT_ITERATIONS, 4096, _MAX_ITERATIONS)
        salt = secrets.token_bytes(16)
        stored_key, server_key = _scram_keys(digest, password, salt, iterations)
        parts = (base64.b64encode(part).decode("ascii") for part in (salt, stored_key, server_key))
        return f"{iterations},{','.join(parts)}".encode("ascii")

    return generate


# --- plain digests, salted digests, plaintext ------------------------------------------------


def _digest_generator(digest: str) -> Generator:
    def generate(password: bytes, rounds: int | None) -> bytes:
        return hashlib.new(digest, password).digest()

    return generate


def _salted_generator(digest: str) -> Generator:
    def generate(password: bytes, rounds: int | None) -> bytes:
        salt = secrets.token_bytes(_SALTED_DIGEST_SALT_BYTES)
        return hashlib.new(digest, password + salt).digest() + salt

    return generate


def _salted_verifier(digest: str, name: str) -> Verifier:
    size = hashlib.new(digest).digest_size

    def verify(password: bytes, raw: bytes, allow_weak: bool) -> bool:
        if len(raw) <= size:
            raise MalformedHashError(f"{name} data is too short")
        calculated = hashlib.new(digest, password + raw[size:]).digest()
        return hmac.compare_digest(calculated, raw[:size])

    return verify


def _plain_generate(password: bytes, rounds: int | None) -> bytes:
    return password


def _plain_verify(password: bytes, raw: bytes, allow_weak: bool) -> bool:
    return hmac.compare_digest(password, raw)


# --- the table ---------------------------------------------------------------------------


def _salted(name: str, digest: str, *, weak: bool = False) -> _Scheme:
    return _Scheme(
        name, "base64", 0, weak, _salted_generator(digest), _salted_verifier(digest, name)
    )


def _unsalted(name: str, digest: str, encoding: Encoding, *, weak: bool = False) -> _Scheme:
    size = hashlib.new(digest).digest_size
    return _Scheme(name, encoding, size, weak, _digest_generator(digest))


def _scram(name: str, digest: str) -> _Scheme:
    return _Scheme(name, "none", 0, False, _scram_generator(digest), _scram_verifier(digest, name))


def _stringy(name: str, generate: Generator, verify: Verifier, *, weak: bool = False) -> _Scheme:
    return _Scheme(name, "none", 0, weak, generate, verify)


def _table() -> dict[str, _Scheme]:
    sha512_generate = _sha_crypt_generator(sha512_crypt, "SHA512-CRYPT")
    sha256_generate = _sha_crypt_generator(sha256_crypt, "SHA256-CRYPT")
    schemes = [
        _stringy("SHA512-CRYPT", sha512_generate, _crypt_verify),
        _stringy("SHA256-CRYPT", sha256_generate, _crypt_verify),
        _stringy("BLF-CRYPT", _blf_generate, _blf_verify),
        _stringy("CRYPT", _blf_generate, _crypt_verify),
        _stringy("DES-CRYPT", _des_generate, _crypt_verify, weak=True),
        _stringy("MD5-CRYPT", _md5_crypt_generate, _md5_crypt_verify, weak=True),
        _stringy("MD5", _md5_crypt_generate, _md5_verify, weak=True),
        _stringy("ARGON2ID", _argon2_generator("ID"), _argon2_verify),
        _stringy("ARGON2", _argon2_generator("ID"), _argon2_verify),
        _stringy("ARGON2I", _argon2_generator("I"), _argon2_verify),
        _stringy("PBKDF2", _pbkdf2_generate, _pbkdf2_verify),
        _scram("SCRAM-SHA-1", "sha1"),
        _scram("SCRAM-SHA-256", "sha256"),
        _salted("SSHA512", "sha512"),
        _salted("SSHA256", "sha256"),
        _salted("SSHA", "sha1"),
        _salted("SMD5", "md5", weak=True),
        _unsalted("SHA512", "sha512", "base64"),
        _unsalted("SHA256", "sha256", "base64"),
        _unsalted("SHA1", "sha1", "base64"),
        _unsalted("SHA", "sha1", "base64"),
        _unsalted("PLAIN-MD5", "md5", "hex", weak=True),
        _unsalted("LDAP-MD5", "md5", "base64", weak=True),
        _stringy("PLAIN", _plain_generate, _plain_verify),
        _stringy("CLEAR", _plain_generate, _plain_verify),
        _stringy("CLEARTEXT", _plain_generate, _plain_verify),
    ]
    return {scheme.name: scheme for scheme in schemes}


_SCHEMES: Final[Mapping[str, _Scheme]] = _table()

SCHEMES: Final[tuple[str, ...]] = tuple(_SCHEMES)
"""Supported scheme names, strongest first (``roost pw -l``)."""


def _lookup(scheme: str) -> tuple[_Scheme, Encoding, bool]:
    """Resolve ``NAME[.ENCODING]``; return the scheme, the encoding and whether it was
    given explicitly."""
    name, dot, suffix = scheme.upper().partition(".")
    found = _SCHEMES.get(name)
    if found is None:
        raise UnknownSchemeError(f"unknown password scheme {name[:40]!r}")
    if not dot:
        return found, found.encoding, False
    if suffix in ("B64", "BASE64"):
        return found, "base64", True
    if suffix == "HEX":
        return found, "hex", True
    raise UnknownSchemeError(f"unknown password encoding {suffix[:20]!r} for {name}")


def _decode(text: str, scheme: _Scheme, encoding: Encoding, *, guessed: bool) -> bytes:
    if encoding == "none":
        return text.encode("utf-8")
    if guessed and scheme.raw_length:
        # Dovecot guesses between hex and base64 for fixed-length digests.
        encoding = "hex" if len(text) == 2 * scheme.raw_length else "base64"
    raw: bytes | None = None
    if encoding == "hex":
        try:
            raw = binascii.unhexlify(text)
        except (binascii.Error, ValueError):
            if not guessed:
                raise MalformedHashError(f"{scheme.name} data is not hex") from None
    if raw is None:
        try:
            raw = _b64decode(text)
        except (binascii.Error, ValueError):
            raise MalformedHashError(f"{scheme.name} data is not base64") from None
    if scheme.raw_length and len(raw) != scheme.raw_length:
        raise MalformedHashError(
            f"{scheme.name} data has {len(raw)} bytes instead of {scheme.raw_length}"
        )
    return raw


def _encode(raw: bytes, encoding: Encoding) -> str:
    if encoding == "base64":
        return base64.b64encode(raw).decode("ascii")
    if encoding == "hex":
        return raw.hex()
    return raw.decode("utf-8")


_MD5_CRYPT_BARE: Final = re.compile(r"\$1\$[^$]*\$")


def split_scheme(stored: str, default_scheme: str = "CRYPT") -> tuple[str, str]:
    """Split a stored password into its scheme name and data (Dovecot
    ``password_get_scheme``).

    Args:
        stored: ``{SCHEME}data``, or data alone.
        default_scheme: the scheme for data without a prefix (Dovecot
            ``default_pass_scheme``; ``CRYPT`` for passwd-file).

    Returns:
        ``(scheme, data)``; the scheme as written, possibly with an encoding suffix.
        Bare ``$1$salt$...`` data is ``MD5-CRYPT``.
    """
    if stored.startswith("{"):
        end = stored.find("}")
        if end > 0:
            return stored[1:end], stored[end + 1 :]
    if _MD5_CRYPT_BARE.match(stored):
        return "MD5-CRYPT", stored
    return default_scheme, stored


def _prepare(stored: str, default_scheme: str, allow_weak: bool) -> tuple[_Scheme, bytes]:
    scheme_text, data = split_scheme(stored, default_scheme)
    scheme, encoding, explicit = _lookup(scheme_text)
    if scheme.weak and not allow_weak:
        raise WeakSchemeError(f"weak password scheme {scheme.name} refused")
    return scheme, _decode(data, scheme, encoding, guessed=not explicit)


def check_hash(stored: str, *, default_scheme: str = "CRYPT", allow_weak: bool = False) -> None:
    """Check that a stored password can be used, without a password (``roost check``).

    Checks the scheme, its weakness and the data's encoding; format details inside the
    data (bcrypt salt length, PBKDF2 fields) are only checked by :func:`verify_password`.

    Raises:
        PasswordSchemeError: one of its subclasses, naming the problem.
    """
    _prepare(stored, default_scheme, allow_weak)


def verify_password(
    password: str, stored: str, *, default_scheme: str = "CRYPT", allow_weak: bool = False
) -> bool:
    """Check a password against a stored Dovecot password.

    Comparisons are constant-time (``hmac.compare_digest``, or the libraries' own).
    Passwords containing NUL, or longer than :data:`MAX_PASSWORD_BYTES`, never match
    (Dovecot handles passwords as C strings). Empty stored data never matches.

    Args:
        password: the password the client sent.
        stored: ``{SCHEME}data`` or bare data (see :func:`split_scheme`).
        default_scheme: the scheme for bare data.
        allow_weak: accept weak schemes (Dovecot ``auth_allow_weak_schemes``).

    Returns:
        Whether the password matches.

    Raises:
        UnknownSchemeError: the scheme or crypt(3) format is not supported.
        WeakSchemeError: a weak scheme while ``allow_weak`` is false.
        MalformedHashError: the data does not have the scheme's format.
        SchemeUnavailableError: the scheme's library is not installed.
    """
    scheme, raw = _prepare(stored, default_scheme, allow_weak)
    if "\x00" in password:
        return False
    try:
        secret = password.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if len(secret) > MAX_PASSWORD_BYTES:
        return False
    if scheme.verify is None:
        return hmac.compare_digest(scheme.generate(secret, None), raw)
    return scheme.verify(secret, raw, allow_weak)


def hash_password(
    password: str,
    scheme: str = "SHA512-CRYPT",
    *,
    rounds: int | None = None,
    allow_weak: bool = False,
) -> str:
    """Hash a password the way ``doveadm pw -s SCHEME [-r ROUNDS]`` does.

    Examples of the output: ``{SHA512-CRYPT}$6$<16 salt chars>$<86 chars>``,
    ``{BLF-CRYPT}$2y$05$...``, ``{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$...``,
    ``{PBKDF2}$1$<16 salt chars>$5000$<40 hex>``, ``{SSHA512}<base64 of 68 bytes>``.

    Args:
        password: the password; UTF-8 encoded for hashing.
        scheme: a name from :data:`SCHEMES`, optionally with ``.HEX``/``.B64``; echoed
            uppercased in the ``{...}`` prefix as doveadm does.
        rounds: the scheme's cost (SHA-crypt rounds, bcrypt log2 cost, PBKDF2 rounds, SCRAM
            iterations, Argon2 ops limit); ``None`` = Dovecot's default. Out-of-range values
            are clamped like Dovecot does.
        allow_weak: permit generating a weak scheme.

    Returns:
        ``{SCHEME}data``.

    Raises:
        UnknownSchemeError: the scheme is not supported.
        WeakSchemeError: a weak scheme while ``allow_weak`` is false.
        SchemeUnavailableError: the scheme's library is not installed.
        ValueError: the password contains NUL (Dovecot cannot check it).
    """
    found, encoding, _explicit = _lookup(scheme)
    if found.weak and not allow_weak:
        raise WeakSchemeError(f"weak password scheme {found.name} refused")
    if "\x00" in password:
        raise ValueError("a password cannot contain NUL")
    raw = found.generate(password.encode("utf-8"), rounds)
    return "{" + scheme.upper() + "}" + _encode(raw, encoding)
