"""Resume tokens: binding, tampering, expiry, revocation, key rotation, uniform refusals."""

from __future__ import annotations

import base64
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stuisession.clock import ManualClock
from stuisession.errors import AccessDenied, ConfigurationError
from stuisession.ids import new_session_id
from stuisession.keys import Keyring
from stuisession.security.auth import (
    TokenAuthority,
    client_secret_digest,
    new_client_secret,
    verify_client_secret,
)
from volume import examples

CLIENT = "alice"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ring() -> Keyring:
    return Keyring.generate("k1")


@pytest.fixture
def auth(ring: Keyring, clock: ManualClock) -> TokenAuthority:
    return TokenAuthority(ring, clock=clock)


@pytest.fixture
def sid() -> str:
    return new_session_id()


def refusal(
    auth: TokenAuthority, token: object, client: str, sid: str, **kw: int
) -> tuple[object, ...]:
    with pytest.raises(AccessDenied) as info:
        auth.verify(token, client, sid, **kw)
    err = info.value
    assert not auth.is_valid(token, client, sid, **kw)
    return (type(err), str(err), err.message, repr(err.details), err.error_code, err.__cause__)


DENIED = (AccessDenied, "Invalid credentials", "Invalid credentials", "{}", "AccessDenied", None)


def test_token_format(auth: TokenAuthority, sid: str, clock: ManualClock) -> None:
    token = auth.issue(CLIENT, sid)
    assert re.fullmatch(r"v1\.k1\.\d+\.0\.[A-Za-z0-9_-]{43}", token)
    assert token.split(".")[2] == str(int(clock.now()))
    assert CLIENT not in token and sid not in token and sid[8:] not in token


def test_valid_token_verifies(auth: TokenAuthority, sid: str) -> None:
    token = auth.issue(CLIENT, sid)
    auth.verify(token, CLIENT, sid)
    assert auth.is_valid(token, CLIENT, sid)


def test_tokens_differ_per_session_and_client(auth: TokenAuthority, sid: str) -> None:
    other = new_session_id()
    assert auth.issue(CLIENT, sid) != auth.issue(CLIENT, other)
    assert auth.issue(CLIENT, sid) != auth.issue("bob", sid)


def test_token_for_another_session_is_refused(auth: TokenAuthority, sid: str) -> None:
    token = auth.issue(CLIENT, sid)
    assert refusal(auth, token, CLIENT, new_session_id()) == DENIED


def test_token_for_another_client_is_refused(auth: TokenAuthority, sid: str) -> None:
    token = auth.issue(CLIENT, sid)
    assert refusal(auth, token, "bob", sid) == DENIED
    assert refusal(auth, token, CLIENT + " ", sid) == DENIED


def test_field_boundaries_are_unambiguous(auth: TokenAuthority) -> None:
    # ("ab", "c...") and ("a", "bc...") must not share a MAC
    token = auth.issue("ab", "cd")
    assert refusal(auth, token, "a", "bcd") == DENIED
    assert refusal(auth, token, "abc", "d") == DENIED


def test_modified_tokens_are_refused(auth: TokenAuthority, sid: str) -> None:
    token = auth.issue(CLIENT, sid, generation=3)
    prefix, kid, issued, gen, mac = token.split(".")
    variants = {
        f"{prefix}.{kid}.{int(issued) + 1}.{gen}.{mac}",
        f"{prefix}.{kid}.{int(issued) - 1}.{gen}.{mac}",
        f"{prefix}.{kid}.0{issued}.{gen}.{mac}",
        f"{prefix}.{kid}.{issued}.4.{mac}",
        f"{prefix}.{kid}.{issued}.03.{mac}",
        f"v2.{kid}.{issued}.{gen}.{mac}",
        f"{prefix}.{kid}.{issued}.{gen}.{mac}=",
        f"{prefix}.{kid}.{issued}.{gen}.{mac[:-1]}",
        f"{prefix}.{kid}.{issued}.{gen}",
        token + ".",
        " " + token,
        token + "\n",
        token.upper(),
        "",
    }
    # every single-character change of the MAC
    for i, ch in enumerate(mac):
        repl = "A" if ch != "A" else "B"
        variants.add(f"{prefix}.{kid}.{issued}.{gen}.{mac[:i]}{repl}{mac[i + 1 :]}")
    variants.discard(token)
    for bad in variants:
        assert refusal(auth, bad, CLIENT, sid, min_generation=0) == DENIED, bad
    auth.verify(token, CLIENT, sid)


def test_forged_token_with_another_key_is_refused(auth: TokenAuthority, sid: str) -> None:
    forger = TokenAuthority(Keyring.generate("k1"), clock=auth.clock)
    assert refusal(auth, forger.issue(CLIENT, sid), CLIENT, sid) == DENIED


def test_unknown_key_id_is_refused(auth: TokenAuthority, sid: str) -> None:
    other = TokenAuthority(Keyring.generate("k9"), clock=auth.clock)
    assert refusal(auth, other.issue(CLIENT, sid), CLIENT, sid) == DENIED


@pytest.mark.parametrize("token", [None, 7, b"v1.k1.1.0.x", ["v1"], "v1." + "x" * 300, "é" * 10])
def test_non_tokens_are_refused(auth: TokenAuthority, sid: str, token: object) -> None:
    assert refusal(auth, token, CLIENT, sid) == DENIED


def test_non_string_ids_are_refused(auth: TokenAuthority, sid: str) -> None:
    token = auth.issue(CLIENT, sid)
    assert refusal(auth, token, None, sid) == DENIED  # type: ignore[arg-type]
    assert refusal(auth, token, CLIENT, None) == DENIED  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        auth.issue(CLIENT, None)  # type: ignore[arg-type]


def test_replay_is_bound_to_session_and_client_only(auth: TokenAuthority, sid: str) -> None:
    # a token is a bearer credential for its own (client, session): it verifies
    # repeatedly until rotated, and nowhere else
    token = auth.issue(CLIENT, sid)
    for _ in range(3):
        auth.verify(token, CLIENT, sid)
    assert refusal(auth, token, CLIENT, new_session_id()) == DENIED


def test_expired_token_is_refused(ring: Keyring, clock: ManualClock, sid: str) -> None:
    auth = TokenAuthority(ring, clock=clock, token_ttl=60)
    token = auth.issue(CLIENT, sid)
    clock.advance(60)
    auth.verify(token, CLIENT, sid)
    clock.advance(1)
    assert refusal(auth, token, CLIENT, sid) == DENIED


def test_token_from_the_future_is_refused_with_a_ttl(
    ring: Keyring, clock: ManualClock, sid: str
) -> None:
    auth = TokenAuthority(ring, clock=clock, token_ttl=60)
    clock.advance(301)
    token = auth.issue(CLIENT, sid)
    clock.advance(-301)
    assert refusal(auth, token, CLIENT, sid) == DENIED
    clock.advance(2)  # within the allowed skew
    auth.verify(token, CLIENT, sid)


def test_no_ttl_means_no_expiry(auth: TokenAuthority, clock: ManualClock, sid: str) -> None:
    token = auth.issue(CLIENT, sid)
    clock.advance(10 * 365 * 86400)
    auth.verify(token, CLIENT, sid)


def test_rotation_revokes_older_generations(auth: TokenAuthority, sid: str) -> None:
    first = auth.issue(CLIENT, sid)
    second, gen = auth.rotate(CLIENT, sid, 0)
    assert gen == 1 and second.split(".")[3] == "1"
    auth.verify(second, CLIENT, sid, min_generation=gen)
    assert refusal(auth, first, CLIENT, sid, min_generation=gen) == DENIED
    third, gen = auth.rotate(CLIENT, sid, gen)
    assert refusal(auth, second, CLIENT, sid, min_generation=gen) == DENIED
    auth.verify(third, CLIENT, sid, min_generation=gen)


def test_bad_generation_is_refused_at_issue(auth: TokenAuthority, sid: str) -> None:
    for bad in (-1, 2**32, "1"):
        with pytest.raises(ValueError):
            auth.issue(CLIENT, sid, generation=bad)  # type: ignore[arg-type]


def test_old_key_id_verifies_after_rotation(ring: Keyring, clock: ManualClock, sid: str) -> None:
    auth = TokenAuthority(ring, clock=clock)
    old = auth.issue(CLIENT, sid)
    auth.keyring = ring.rotated("k2")
    new = auth.issue(CLIENT, sid)
    assert old.split(".")[1] == "k1" and new.split(".")[1] == "k2"
    auth.verify(old, CLIENT, sid)
    auth.verify(new, CLIENT, sid)
    # once the old key is retired, its tokens are refused
    retired = Keyring({"k2": _raw_key(auth.keyring, "k2")}, "k2")
    assert refusal(TokenAuthority(retired, clock=clock), old, CLIENT, sid) == DENIED
    TokenAuthority(retired, clock=clock).verify(new, CLIENT, sid)


def _raw_key(ring: Keyring, kid: str) -> bytes:
    return base64.b64decode(json.loads(ring.to_json())["keys"][kid])


def test_key_ids_with_dots_parse(clock: ManualClock, sid: str) -> None:
    ring = Keyring.generate("k.2026.01")
    auth = TokenAuthority(ring, clock=clock)
    token = auth.issue(CLIENT, sid, generation=12)
    assert token.startswith("v1.k.2026.01.")
    auth.verify(token, CLIENT, sid, min_generation=12)


def test_all_refusals_are_identical(ring: Keyring, clock: ManualClock, sid: str) -> None:
    auth = TokenAuthority(ring, clock=clock, token_ttl=60)
    good = auth.issue(CLIENT, sid)
    _, gen = auth.rotate(CLIENT, sid, 0)
    cases = [
        ("malformed", "garbage", CLIENT, sid, 0),
        ("unknown key", good.replace("v1.k1.", "v1.k2.", 1), CLIENT, sid, 0),
        ("other client", good, "bob", sid, 0),
        ("other session", good, CLIENT, new_session_id(), 0),
        ("revoked", good, CLIENT, sid, gen),
    ]
    outcomes = {refusal(auth, t, c, s, min_generation=g) for _, t, c, s, g in cases}
    clock.advance(61)
    outcomes.add(refusal(auth, good, CLIENT, sid))
    assert outcomes == {DENIED}


def test_config_and_repr(ring: Keyring) -> None:
    for bad in (0, -5, 1.5):
        with pytest.raises(ConfigurationError):
            TokenAuthority(ring, token_ttl=bad)  # type: ignore[arg-type]
    auth = TokenAuthority(ring, token_ttl=10)
    text = repr(auth)
    assert "k1" in text and _raw_key(ring, "k1").hex() not in text
    # default clock is wall time
    auth.verify(auth.issue(CLIENT, "s"), CLIENT, "s")


@pytest.mark.volume
@settings(max_examples=examples(full=300, quick=100), deadline=None)
@given(token=st.text(max_size=300))
def test_random_strings_are_always_refused_cleanly(token: str) -> None:
    auth = TokenAuthority(Keyring({"k1": b"\1" * 32}, "k1"), clock=ManualClock())
    with pytest.raises(AccessDenied) as info:
        auth.verify(token, CLIENT, "session")
    assert str(info.value) == "Invalid credentials" and info.value.details == {}


@settings(max_examples=100, deadline=None)
@given(client=st.text(max_size=50), session=st.text(max_size=50), gen=st.integers(0, 2**32 - 1))
def test_issued_tokens_verify_for_any_ids(client: str, session: str, gen: int) -> None:
    auth = TokenAuthority(Keyring({"k1": b"\2" * 32}, "k1"), clock=ManualClock())
    token = auth.issue(client, session, generation=gen)
    auth.verify(token, client, session, min_generation=gen)


def test_client_secrets() -> None:
    secrets_ = {new_client_secret() for _ in range(50)}
    assert len(secrets_) == 50
    secret = secrets_.pop()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)
    digest = client_secret_digest(secret)
    assert re.fullmatch(r"[0-9a-f]{64}", digest) and secret not in digest
    assert verify_client_secret(secret, digest)
    assert not verify_client_secret(secret + "x", digest)
    assert not verify_client_secret(new_client_secret(), digest)
    assert not verify_client_secret(None, digest)
    assert not verify_client_secret("x" * 1000, digest)
    assert not verify_client_secret(secret, "é")
