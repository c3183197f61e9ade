"""Protocol fuzzing in volume: at least 100,000 messages per run.

Each hypothesis example is a *batch* of about 50 messages sent through one
ProtocolHandler(MemoryStore, Policy(rate_limit=None)). Hypothesis draws the
seeds of a batch (raw bytes, JSON-ish byte soup, a structured envelope and a
random seed); a seeded PRNG expands them into the batch cheaply: byte-level
mutations of the drawn bytes and of serialised envelopes, near-valid envelopes
built from the real command and parameter names, and valid sequences
create -> update -> restore whose restored state must equal what was sent.
Every reply must satisfy the envelope invariants of ``test_protocol_fuzz``.

The messages are counted; the last test checks that the run sent at least
100,000 (10,000 in ``make test``; when the batch tests ran). The count lives in
this module, so the module's tests share one xdist worker (``xdist_group``; make
test runs ``--dist loadgroup``). Derandomized like ``test_protocol_fuzz``;
``STUISESSION_FUZZ=deep`` randomises and sends five times as many.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stuisession import ManualClock, MemoryStore, Policy, ProtocolHandler
from test_protocol_fuzz import (
    COMMANDS,
    DEEP,
    FRAGMENTS,
    PARAMETER_NAMES,
    check_reply,
    check_wire,
    json_ish,
    json_values,
)
from volume import examples

#: messages per run: 100,000 at full volume (make faults), 10,000 in make test
# one xdist worker for the whole module: test_volume_reached reads the others' counts
pytestmark = [pytest.mark.volume, pytest.mark.xdist_group("protocol_fuzz_volume")]

TARGET = examples(full=100_000, quick=10_000)
BATCH = 50
#: examples per batch test (each sends >= BATCH messages); byte batches are the
#: cheaper ones, so they carry most of the volume
EXAMPLES = {
    "test_batches_of_bytes": examples(full=1500, quick=150),
    "test_batches_of_envelopes_and_sequences": examples(full=520, quick=52),
}
SENT: dict[str, int] = {}
FINISHED: set[str] = set()
BATCH_TESTS = ("test_batches_of_bytes", "test_batches_of_envelopes_and_sequences")


def volume_settings(test: str) -> settings:
    return settings(
        max_examples=EXAMPLES[test] * 5 if DEEP else EXAMPLES[test],
        deadline=None,
        derandomize=not DEEP,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class Batch:
    """One handler and a message counter; alternates ``handle`` and ``handle_wire``."""

    def __init__(self, test: str) -> None:
        self.test = test
        self.handler = ProtocolHandler(
            MemoryStore(),
            Policy(rate_limit=None, max_sessions_per_client=10_000, max_snapshot_size=65_536),
            clock=ManualClock(),
        )
        self.sent = 0
        self.session_ids = ["session_" + "A" * 43]
        for client in ("alice", "bob"):
            reply = self.send(
                {"id": client, "command": "create_session", "parameters": {"client_id": client}}
            )
            self.session_ids.append(reply["result"]["session_id"])

    def send(self, message: Any, wire: bool | None = None) -> dict[str, Any]:
        self.sent += 1
        if wire is None:
            wire = self.sent % 2 == 0 and not isinstance(message, dict)
        if wire:
            return check_wire(self.handler.handle_wire(message))
        return check_reply(self.handler.handle(message))

    def close(self) -> None:
        SENT[self.test] = SENT.get(self.test, 0) + self.sent


# -- cheap expansion with a seeded PRNG --------------------------------------------------------
SCALARS: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**53,
    -(2**63),
    1.5,
    -0.0,
    "",
    "x",
    "é",
    "\u2028",
    "session_",
]


def random_json(rnd: random.Random, depth: int = 0) -> Any:
    kind = rnd.randrange(6 if depth < 3 else 3)
    if kind < 3:
        return rnd.choice(SCALARS) if kind else rnd.randbytes(rnd.randrange(6)).hex()
    if kind == 3:
        return [random_json(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    keys = [*PARAMETER_NAMES[:6], "a", "b", "", "nested"]
    return {rnd.choice(keys): random_json(rnd, depth + 1) for _ in range(rnd.randrange(4))}


def random_state(rnd: random.Random) -> dict[str, Any]:
    return {f"k{rnd.randrange(8)}": random_json(rnd, 1) for _ in range(rnd.randrange(1, 5))}


def near_valid(rnd: random.Random, session_ids: list[str]) -> dict[str, Any]:
    """A request with a real command and mostly right, sometimes wrong, parameters."""
    command = rnd.choice([*COMMANDS, "update_session_state", "restore_session", "nope", ""])
    params: dict[str, Any] = {
        "session_id": rnd.choice(session_ids),
        "client_id": rnd.choice(["alice", "bob", "carol"]),
    }
    if command == "update_session_state":
        params["state_data"] = random_state(rnd)
        params["mode"] = rnd.choice(["merge", "replace"])
        if rnd.random() < 0.3:
            params["base_revision"] = rnd.randrange(1, 6)
        if rnd.random() < 0.2:
            params["append_history"] = {"ws": [{"source": "3 + 4"}]}
    elif command in ("save_context", "load_context", "clear_context", "get_context_summary"):
        params["tool_id"] = rnd.choice(["ws-1", "insp-1"])
        params["variables"] = random_state(rnd)
    elif command == "restore_session" and rnd.random() < 0.3:
        params["since_revision"] = rnd.randrange(0, 6)
    for _ in range(rnd.randrange(3)):  # mutations: drop, retype, add
        action = rnd.randrange(3)
        name = rnd.choice(PARAMETER_NAMES)
        if action == 0:
            params.pop(rnd.choice(sorted(params) or ["x"]), None)
        else:
            params[name] = random_json(rnd)
    request: dict[str, Any] = {
        "id": rnd.choice([f"r{rnd.randrange(10**6)}", rnd.randrange(-5, 10**9)]),
        "command": command,
    }
    if rnd.random() < 0.9:
        request["parameters"] = params
    elif rnd.random() < 0.5:
        request["parameters"] = random_json(rnd)
    return request


def mutate(rnd: random.Random, data: bytes) -> bytes:
    """A few byte-level mutations: flips, cuts, splices, duplications."""
    out = bytearray(data)
    for _ in range(rnd.randrange(1, 4)):
        op = rnd.randrange(5)
        pos = rnd.randrange(len(out) + 1)
        if op == 0 and out:
            i = rnd.randrange(len(out))
            out[i] ^= 1 << rnd.randrange(8)
        elif op == 1:
            del out[pos:]
        elif op == 2:
            out[pos:pos] = rnd.choice(FRAGMENTS)
        elif op == 3 and out:
            j = rnd.randrange(len(out))
            out[pos:pos] = out[min(j, pos) : max(j, pos)][:64]
        else:
            del out[pos : pos + rnd.randrange(1, 8)]
    return bytes(out)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def valid_sequence(batch: Batch, rnd: random.Random) -> None:
    """create -> update -> restore on a fresh session: the state comes back exactly."""
    client = rnd.choice(["alice", "bob", "dave"])
    created = batch.send(
        {"id": f"c{batch.sent}", "command": "create_session", "parameters": {"client_id": client}}
    )
    assert created["status"] == "success", created
    sid = created["result"]["session_id"]
    state = random_state(rnd)
    mode = rnd.choice(["merge", "replace"])
    update = {
        "id": f"u{batch.sent}",
        "command": "update_session_state",
        "parameters": {"session_id": sid, "client_id": client, "state_data": state, "mode": mode},
    }
    updated = batch.send(json.dumps(update).encode(), wire=rnd.random() < 0.5)
    assert updated["status"] == "success", updated
    expected = state if mode == "replace" else merge_patch({}, state)
    assert updated["result"]["session_state"] == expected
    restore = json.dumps(
        {"id": f"g{batch.sent}", "command": "restore_session", "parameters": {"session_id": sid}}
    )
    for wire in (False, True):
        restored = batch.send(restore, wire=wire)
        assert restored["status"] == "success", restored
        assert restored["result"]["session_state"] == expected
        assert restored["result"]["revision"] == 2
    batch.session_ids.append(sid)  # later random messages may hit it


# -- the batch tests ---------------------------------------------------------------------------
@pytest.mark.slow
@volume_settings("test_batches_of_bytes")
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    raw=st.binary(max_size=96),
    soup=json_ish,
    text=st.text(max_size=48),
)
def test_batches_of_bytes(seed: int, raw: bytes, soup: bytes, text: str) -> None:
    rnd = random.Random(seed)
    batch = Batch("test_batches_of_bytes")
    batch.send(raw)
    batch.send(soup)
    batch.send(text)
    bases = [raw, soup, text.encode("utf-8", "surrogatepass")]
    while batch.sent < BATCH:
        kind = rnd.randrange(4)
        if kind == 0:
            message = mutate(rnd, rnd.choice(bases))
        elif kind == 1:
            message = mutate(rnd, json.dumps(near_valid(rnd, batch.session_ids)).encode())
        elif kind == 2:
            message = rnd.randbytes(rnd.randrange(64))
        else:
            message = b"".join(rnd.choice(FRAGMENTS) for _ in range(rnd.randrange(24)))
        reply = batch.send(message)
        if reply["status"] == "success":
            assert message.lstrip()[:1] == b"{"
    batch.close()
    FINISHED.add("test_batches_of_bytes")


@pytest.mark.slow
@volume_settings("test_batches_of_envelopes_and_sequences")
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    command=st.sampled_from([*COMMANDS, "nope"]),
    names=st.lists(st.sampled_from(PARAMETER_NAMES), max_size=3, unique=True),
    values=st.lists(json_values, min_size=3, max_size=3),
    pick=st.integers(min_value=0, max_value=2),
)
def test_batches_of_envelopes_and_sequences(
    seed: int, command: str, names: list[str], values: list[Any], pick: int
) -> None:
    rnd = random.Random(seed)
    batch = Batch("test_batches_of_envelopes_and_sequences")
    # the drawn envelope: a real command, drawn parameter names and values
    params = dict(zip(names, values, strict=False))
    if "session_id" in params:
        params["session_id"] = batch.session_ids[pick]
    drawn = {"id": f"d{seed}", "command": command, "parameters": params}
    for message in (drawn, json.dumps(drawn), json.dumps(drawn).encode()):
        assert batch.send(message)["id"] == drawn["id"]
    while batch.sent < BATCH:
        kind = rnd.randrange(30)
        if kind == 0:  # about one valid sequence per batch: they are the costly ones
            valid_sequence(batch, rnd)
            continue
        kind %= 10
        request = near_valid(rnd, batch.session_ids)
        if kind <= 5:
            reply = batch.send(request)
        else:
            reply = batch.send(json.dumps(request, ensure_ascii=kind % 2 == 0))
        usable = isinstance(request["id"], str) or type(request["id"]) is int
        assert reply["id"] == (request["id"] if usable else None), (request, reply)
        if reply["status"] == "success":
            assert request["command"] in COMMANDS
    batch.close()
    FINISHED.add("test_batches_of_envelopes_and_sequences")


def test_volume_reached() -> None:
    """The batch tests above (run earlier in this module) sent >= 100,000 messages.

    Each batch test body runs once per example and records itself; a run that
    selected only some of them (``-k``) checks their shares instead.
    """
    total = sum(SENT.values())
    if set(BATCH_TESTS) <= FINISHED:
        assert total >= TARGET, f"only {total} messages were sent"
    for name in FINISHED:  # a partial run (-k): each test sent its share
        assert SENT[name] >= EXAMPLES[name] * BATCH, (name, SENT[name])
