"""Unit tests for roost.auth.sasl: sans-IO PLAIN and LOGIN, base64 framing."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.auth.sasl import (
    MAX_RESPONSE_LINE,
    MECHANISMS,
    AuthzidRejected,
    Challenge,
    Credentials,
    EncryptionRequiredError,
    LoginMechanism,
    Mechanism,
    MechanismStateError,
    PlainMechanism,
    SASLCancelled,
    SASLError,
    UnknownMechanismError,
    advertised_mechanisms,
    decode_response,
    encode_challenge,
    start_mechanism,
)

# --- PLAIN (RFC 4616) -----------------------------------------------------------------------


def test_plain_with_initial_response() -> None:
    mechanism = start_mechanism("PLAIN")
    step = mechanism.receive(b"\x00alice\x00s3cret")
    assert step == Credentials(authcid="alice", password="s3cret", authzid=None)
    assert mechanism.complete


def test_plain_without_initial_response_sends_empty_challenge() -> None:
    mechanism = start_mechanism("plain")
    assert mechanism.receive(None) == Challenge(b"")
    assert not mechanism.complete
    step = mechanism.receive(b"alice\x00alice\x00pw")
    assert step == Credentials(authcid="alice", password="pw", authzid="alice")


def test_plain_rfc4616_example_utf8() -> None:
    # RFC 4616 §4 examples use UTF-8 identities.
    message = b"\x00tim\x00tanstaaftanstaaf"
    assert start_mechanism("PLAIN").receive(message) == Credentials("tim", "tanstaaftanstaaf")
    unicode = "\x00jürgen\x00пароль".encode()
    assert start_mechanism("PLAIN").receive(unicode) == Credentials("jürgen", "пароль")


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"alice",
        b"\x00alice",
        b"\x00\x00pw",
        b"\x00alice\x00",
        b"\x00alice\x00pw\x00extra",
        b"\x00al\xffice\x00pw",
    ],
)
def test_plain_malformed(message: bytes) -> None:
    mechanism = PlainMechanism()
    with pytest.raises(SASLError) as caught:
        mechanism.receive(message)
    assert not isinstance(caught.value, AuthzidRejected)
    with pytest.raises(MechanismStateError):
        mechanism.receive(b"\x00alice\x00pw")


def test_plain_other_authzid_is_rejected() -> None:
    with pytest.raises(AuthzidRejected) as caught:
        start_mechanism("PLAIN").receive(b"admin\x00alice\x00pw")
    assert "pw" not in caught.value.reason.split()


# --- LOGIN ----------------------------------------------------------------------------------


def test_login_challenges_username_then_password() -> None:
    mechanism = start_mechanism("LOGIN")
    assert mechanism.receive(None) == Challenge(b"Username:")
    assert mechanism.receive(b"alice") == Challenge(b"Password:")
    assert mechanism.receive(b"s3cret") == Credentials("alice", "s3cret")
    assert mechanism.complete
    with pytest.raises(MechanismStateError):
        mechanism.receive(b"more")


def test_login_initial_response_is_the_username() -> None:
    mechanism = start_mechanism("LOGIN")
    assert mechanism.receive(b"alice") == Challenge(b"Password:")
    assert mechanism.receive(b"pw") == Credentials("alice", "pw")


@pytest.mark.parametrize(
    "steps",
    [[None, b""], [None, b"a\x00b"], [None, b"alice", b""], [b"alice", b"p\x00w"], [b"\xff"]],
)
def test_login_rejects_empty_nul_and_non_utf8(steps: list[bytes | None]) -> None:
    mechanism = LoginMechanism()
    with pytest.raises(SASLError):
        for step in steps:
            mechanism.receive(step)


def test_none_only_as_first_response() -> None:
    mechanism = start_mechanism("LOGIN")
    mechanism.receive(None)
    with pytest.raises(MechanismStateError):
        mechanism.receive(None)


def test_credentials_repr_hides_password() -> None:
    credentials = start_mechanism("PLAIN").receive(b"\x00alice\x00hunter2")
    assert "hunter2" not in repr(credentials)
    assert "hunter2" not in str(credentials)
    mechanism = start_mechanism("LOGIN")
    mechanism.receive(b"alice")
    mechanism.receive(b"hunter2")
    assert "hunter2" not in repr(mechanism)


# --- starting mechanisms ------------------------------------------------------------------


def test_unknown_mechanism() -> None:
    with pytest.raises(UnknownMechanismError) as caught:
        start_mechanism("CRAM-MD5")
    assert caught.value.mechanism == "CRAM-MD5"
    assert isinstance(caught.value, ValueError)
    with pytest.raises(UnknownMechanismError):
        start_mechanism("LOGIN", enabled=["PLAIN"])


def test_plaintext_mechanisms_need_tls() -> None:
    with pytest.raises(EncryptionRequiredError):
        start_mechanism("PLAIN", secured=False)
    assert isinstance(start_mechanism("PLAIN", secured=False, allow_plaintext=True), PlainMechanism)
    assert isinstance(start_mechanism("login", secured=True), LoginMechanism)


def test_advertised_mechanisms() -> None:
    assert advertised_mechanisms(secured=True) == ("PLAIN", "LOGIN")
    assert advertised_mechanisms(secured=False) == ()
    assert advertised_mechanisms(secured=False, allow_plaintext=True) == ("PLAIN", "LOGIN")
    assert advertised_mechanisms(secured=True, enabled=["login"]) == ("LOGIN",)


def test_registry_entries_are_mechanisms() -> None:
    for name, mechanism in MECHANISMS.items():
        assert issubclass(mechanism, Mechanism)
        assert mechanism.name == name and isinstance(mechanism.plaintext, bool)


# --- base64 framing ---------------------------------------------------------------------------


def test_decode_response() -> None:
    assert decode_response(b"AGFsaWNlAHB3\r\n") == b"\x00alice\x00pw"
    assert decode_response(b"=", initial=True) == b""
    assert decode_response(b"=") == b""
    assert decode_response(b"", initial=True) is None
    assert decode_response(b"\r\n") == b""
    with pytest.raises(SASLCancelled):
        decode_response(b"*\r\n")
    with pytest.raises(SASLError):
        decode_response(b"not base64!")
    with pytest.raises(SASLError):
        decode_response(b"YWJj ZGVm")
    with pytest.raises(SASLError):
        decode_response(b"A" * (MAX_RESPONSE_LINE + 4))


def test_encode_challenge() -> None:
    assert encode_challenge(b"Username:") == b"VXNlcm5hbWU6"
    assert encode_challenge(b"") == b""


def test_sasl_module_is_sans_io() -> None:
    code = (
        "import sys, roost.auth.sasl, roost.auth.throttle; "
        "bad = {'asyncio', 'socket', 'roost.auth.users'} & set(sys.modules); "
        "print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- properties ---------------------------------------------------------------------------

identity = st.text(
    alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
    min_size=1,
    max_size=64,
)


@given(authcid=identity, password=identity, with_authzid=st.booleans())
def test_plain_round_trip(authcid: str, password: str, with_authzid: bool) -> None:
    authzid = authcid if with_authzid else ""
    message = f"{authzid}\x00{authcid}\x00{password}".encode()
    line = base64.b64encode(message) + b"\r\n"
    step = start_mechanism("PLAIN").receive(decode_response(line, initial=True))
    assert step == Credentials(authcid, password, authzid or None)


@given(username=identity, password=identity)
def test_login_round_trip(username: str, password: str) -> None:
    mechanism = start_mechanism("LOGIN")
    assert mechanism.receive(None) == Challenge(b"Username:")
    mechanism.receive(decode_response(base64.b64encode(username.encode())))
    step = mechanism.receive(decode_response(base64.b64encode(password.encode())))
    assert step == Credentials(username, password)


@given(st.binary(max_size=200), st.booleans())
def test_decode_response_never_crashes(line: bytes, initial: bool) -> None:
    try:
        result = decode_response(line, initial=initial)
    except SASLError:
        return
    assert result is None or isinstance(result, bytes)


@given(
    name=st.sampled_from(sorted(MECHANISMS)),
    responses=st.lists(st.one_of(st.none(), st.binary(max_size=80)), max_size=5),
)
def test_mechanisms_never_crash_on_junk(name: str, responses: list[bytes | None]) -> None:
    mechanism = start_mechanism(name)
    for response in responses:
        try:
            step = mechanism.receive(response)
        except (SASLError, MechanismStateError):
            continue
        assert isinstance(step, Challenge | Credentials)
        if isinstance(step, Credentials):
            assert step.authcid and step.password
            assert "\x00" not in step.authcid + step.password
