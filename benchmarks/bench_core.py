"""Core latencies through ProtocolHandler beside the physical floors and Django's backends.

Run:  python benchmarks/bench_core.py [--n 300] [--json OUT]

Measures, in one process and on the disk of ``$STUISESSION_BENCH_DIR``
(default ``benchmarks/.work``):

- floors: a durable new-file write of 600 B (temp + fsync + rename + directory
  fsync), a durable replace of 2 KB and of 1 MB, and verify+decompress
  (HMAC-SHA256 over the stored snapshot + zstd decompression of its state) of
  the restore sizes;
- ``create_session`` through ``ProtocolHandler.handle_wire`` on MemoryStore,
  FileStore (durable) and RedisStore (a private redis-server on a free loopback
  port, no persistence);
- ``restore_session`` of a ~1 MB state and of the heavy session
  (``tests/heavy_session.py``), ``update_session_state`` of one variable of
  them, and a full 1 MB replacement (``state_data``, mode replace);
- Django's file session backend loading and saving the same JSON data;
- the on-disk size of the heavy and of a typical session.

Prints p50/p99 and ratios; ``--json`` writes everything for ``run_all.py``.
No timing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import Stats, counter, measure, summary

from stuisession import FileStore, MemoryStore, Policy, ProtocolHandler
from stuisession.codec.snapshot import TAG_SIZE, parse_header
from stuisession.stores.base import SessionStore
from stuisession.stores.file.layout import session_stem


# -- floors -------------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def floor_new_file(directory: Path, size: int, n: int) -> list[float]:
    """Durable creation of a new file: temp + fsync + rename + directory fsync."""
    directory.mkdir()
    data = os.urandom(size)
    next_name = counter("f")

    def write() -> None:
        name = next_name()
        tmp = directory / f".{name}.tmp"
        _write_synced(tmp, data)
        os.rename(tmp, directory / name)
        _fsync_dir(directory)

    return measure(write, n)


def floor_replace(directory: Path, size: int, n: int, budget: float) -> list[float]:
    """Durable replacement of an existing file (what a session update must at least do)."""
    directory.mkdir()
    target = directory / "current"
    target.write_bytes(os.urandom(size))
    datas = [os.urandom(size), os.urandom(size)]
    turn = iter(range(10**9))

    def replace() -> None:
        i = next(turn)
        tmp = directory / f".{i}.tmp"
        _write_synced(tmp, datas[i % 2])
        os.replace(tmp, target)
        _fsync_dir(directory)

    return measure(replace, n, budget=budget)


def verify_decompress_floor(store: SessionStore, blob: bytes, n: int) -> dict[str, Stats]:
    """HMAC-SHA256 verification of the stored bytes + zstd decompression of the state.

    Also the codec's own ``open`` + ``state_json`` (which decrypts as well) and a
    plain read of a file of that size, for reference.
    """
    import zstandard

    codec = store.codec
    header = parse_header(blob)
    mac_key = codec.keyring.mac_key(header.key_id)
    state_json = codec.open(blob).state_json()
    # the stored payload before encryption: the same level on the same bytes
    compressed = zstandard.ZstdCompressor(level=3).compress(state_json)
    body = memoryview(blob)[: len(blob) - TAG_SIZE]
    tag = blob[-TAG_SIZE:]

    def floor() -> None:
        expected = hmac.new(mac_key, body, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, tag):
            raise AssertionError("tag mismatch")
        zstandard.ZstdDecompressor().decompress(compressed)

    def codec_open() -> None:
        codec.open(blob).state_json()

    return {
        "verify_decompress": summary(measure(floor, n)),
        "codec_open": summary(measure(codec_open, n)),
    }


# -- helpers ------------------------------------------------------------------------------
class Client:
    """Requests through ``handle_wire``, with unique ids."""

    def __init__(self, handler: ProtocolHandler, prefix: str) -> None:
        self.handler = handler
        self.next_id = counter(prefix)

    def wire(self, command: str, **params: Any) -> bytes:
        return json.dumps({"id": self.next_id(), "command": command, "parameters": params}).encode()

    def call(self, command: str, **params: Any) -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(self.handler.handle_wire(self.wire(command, **params)))
        if reply.get("status") != "success":
            raise RuntimeError(f"{command} failed: {reply.get('error_type')}: {reply.get('error')}")
        return reply

    def create(self, client_id: str) -> str:
        sid: str = self.call("create_session", client_id=client_id)["result"]["session_id"]
        return sid


def session_files(store_dir: Path, sid: str) -> dict[str, int]:
    """Every file the file store keeps for *sid* (snapshot, backups, anything else)."""
    stem = session_stem(store_dir, sid)  # files are named by a keyed hash of the id
    return {
        p.name.replace(stem, "<id>"): p.stat().st_size
        for p in (store_dir / "sessions").rglob(f"{stem}*")
        if p.is_file()
    }


def cache_setting() -> dict[str, Any] | None:
    """The FileStore keyword(s) for a decoded-session cache, with defaults, if any."""
    params = inspect.signature(FileStore).parameters
    found = {
        name: (None if p.default is inspect.Parameter.empty else p.default)
        for name, p in params.items()
        if "cache" in name
    }
    return found or None


# -- the benchmark ------------------------------------------------------------------------
def run(n: int, quick: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n}
    budget = 1.0 if quick else 3.0
    with benchlib.scratch("core") as root:
        # floors --------------------------------------------------------------------------
        print("floors ...", flush=True)
        floors: dict[str, Any] = {
            "new_file_600": summary(floor_new_file(root / "floor-new", 600, n)),
            "replace_2k": summary(floor_replace(root / "floor-2k", 2048, n, budget)),
            "replace_1m": summary(floor_replace(root / "floor-1m", 1 << 20, n // 3, budget)),
        }
        out["floors"] = floors

        # create_session ------------------------------------------------------------------
        creates: dict[str, Any] = {}
        small: dict[str, Any] = {}
        stores: list[tuple[str, SessionStore]] = [
            ("memory", MemoryStore()),
            # as `serve` opens a file store: its shard directories made once
            ("file", FileStore(root / "create-store", make_shards=True)),
        ]
        redis_server = None
        try:
            from redis_server import RedisServerMissing, start_redis_server

            try:
                redis_server = start_redis_server()
                from stuisession.keys import Keyring
                from stuisession.stores.redis import RedisStore

                stores.append(("redis", RedisStore(redis_server.url, keyring=Keyring.generate())))
                out["redis"] = {"url": redis_server.url, "persistence": "off"}
            except (RedisServerMissing, RuntimeError) as exc:
                out["redis"] = {"skipped": str(exc)}
                print(f"redis rows skipped: {exc}")
            for name, store in stores:
                print(f"create/update/restore (small) on {name} ...", flush=True)
                handler = ProtocolHandler(
                    store, Policy(rate_limit=None, max_creates_per_second=None)
                )
                c = Client(handler, f"{name}-")
                next_client = counter(f"{name}-client-")
                creates[name] = summary(
                    measure(lambda: c.create(next_client()), n, budget=2 * budget)
                )
                sid = c.create("small-owner")
                small[name] = {
                    "update": summary(
                        measure(
                            lambda: c.call(
                                "update_session_state",
                                session_id=sid,
                                state_data={"k": "v" * 100},
                            ),
                            n,
                            budget=budget,
                        )
                    ),
                    "restore": summary(
                        measure(lambda: c.call("restore_session", session_id=sid), n, budget=budget)
                    ),
                }
                store.close()
        finally:
            if redis_server is not None:
                redis_server.close()
        out["create"] = creates
        out["small"] = small

        # big sessions on the file store -------------------------------------------------
        store_dir = root / "store"
        store = FileStore(store_dir)
        handler = ProtocolHandler(store, Policy(rate_limit=None, max_creates_per_second=None))
        c = Client(handler, "big-")
        from heavy_session import heavy_changes

        cases = {
            "1mb": benchlib.scaled_changes(1 << 20),
            "heavy": heavy_changes(),
            "typical": benchlib.typical_changes(),
        }
        django = benchlib.django_peers(root)
        out["django_version"] = django["version"]
        restore: dict[str, Any] = {}
        update: dict[str, Any] = {}
        storage: dict[str, Any] = {}
        peers: dict[str, Any] = {"file": {}, "db": {}}
        for case, (changes, history) in cases.items():
            print(f"session {case} ...", flush=True)
            sid = c.create(f"owner-{case}")
            c.call("update_session_state", session_id=sid, changes=changes, append_history=history)
            reply = c.call("restore_session", session_id=sid)
            state = reply["result"]
            wire_bytes = len(json.dumps(state, separators=(",", ":")))
            files = session_files(store_dir, sid)
            snap = (store_dir / "sessions").rglob(f"{session_stem(store_dir, sid)}.snap")
            blob = next(snap).read_bytes()
            # Django holds the same data: the restored state as the client receives it
            dj = django["file"]()
            dj["state"] = state
            dj.save()
            dj_bytes = Path(dj._key_to_file()).stat().st_size
            storage[case] = {
                "wire_bytes": wire_bytes,
                "snapshot_bytes": len(blob),
                "files": files,
                "total_bytes": sum(files.values()),
                "django_file_bytes": dj_bytes,
            }
            if case == "typical":
                continue
            restore_wire = c.wire("restore_session", session_id=sid)
            restore[case] = {
                "wire_bytes": wire_bytes,
                "snapshot_bytes": len(blob),
                "file": summary(
                    measure(lambda: handler.handle_wire(restore_wire), 3 * n, budget=budget)
                ),
                **verify_decompress_floor(store, blob, n),
            }
            key = dj.session_key
            peers["file"][f"load_{case}"] = summary(
                measure(lambda: django["file"](key).load(), n, budget=budget)
            )
            ddb = django["db"]()
            ddb["state"] = state
            ddb.save()
            dkey = ddb.session_key
            peers["db"][f"load_{case}"] = summary(
                measure(lambda: django["db"](dkey).load(), n, budget=budget)
            )
            values = iter(range(10**9))
            update[f"one_var_{case}"] = summary(
                measure(
                    lambda: c.call(
                        "update_session_state",
                        session_id=sid,
                        changes={"workspaces": {"default": {"variables": {"var17": next(values)}}}},
                    ),
                    n,
                    budget=2 * budget,
                    min_n=10,
                )
            )

        # full 1 MB replacement (upstream state_data, mode replace) vs Django save --------
        print("full 1 MB replacement ...", flush=True)
        versions = [benchlib.plain_state(1 << 20, seed=s) for s in (1, 2)]
        replace_bytes = len(json.dumps(versions[0], separators=(",", ":")))
        sid = c.create("owner-replace")
        turn = iter(range(10**9))
        # what the server does: the request arrives encoded (the client's json.dumps
        # is the client's cost) and the reply leaves encoded; ids stay unique
        encoded = [
            json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode() for v in versions
        ]
        head = b'{"command":"update_session_state","parameters":{"session_id":"' + sid.encode()

        def replace_wire() -> bytes:
            i = next(turn)
            return head + b'","state_data":' + encoded[i % 2] + b'},"id":"replace-%d"}' % i

        def replace() -> None:
            reply = handler.handle_wire(replace_wire())
            if b'"status":"success"' not in reply[:200]:
                raise RuntimeError(f"replace failed: {reply[:300]!r}")

        update["replace_1mb"] = summary(measure(replace, n, budget=2 * budget, min_n=5))
        update["replace_1mb_bytes"] = replace_bytes
        # the floor's parse: one plain C json.loads of such a request (no validation)
        body = replace_wire()
        floors["parse_1m"] = summary(measure(lambda: json.loads(body), n, budget=budget))
        for kind in ("file", "db"):
            dj = django[kind]()
            dj["state"] = versions[0]
            dj.save()

            def save() -> None:
                dj["state"] = versions[next(turn) % 2]
                dj.save()

            peers[kind]["save_1mb"] = summary(measure(save, n, budget=2 * budget, min_n=10))
        store.close()
    out["restore"] = restore
    out["update"] = update
    out["storage"] = storage
    out["django"] = peers
    out["settings"] = {
        "policy": "Policy(rate_limit=None, max_creates_per_second=None), other options default",
        "file_store": "FileStore(path): fsync=True, backups=2, encrypt=True",
        "file_store_cache": cache_setting(),
        "django": "file backend (no fsync) and db backend on SQLite with synchronous=FULL; "
        "JSONSerializer; load() of a new SessionStore object each time",
    }
    return out


def report(r: dict[str, Any]) -> None:
    fl = r["floors"]
    rows: list[tuple[str, Stats, str]] = [
        ("floor: durable new-file write, 600 B", fl["new_file_600"], ""),
        ("floor: durable replace, 2 KB", fl["replace_2k"], ""),
        ("floor: durable replace, 1 MB", fl["replace_1m"], ""),
    ]
    for name, s in r["create"].items():
        ratio = s["p50"] / fl["new_file_600"]["p50"]
        rows.append((f"{name}: create_session", s, f"{ratio:.2f}x floor" if name == "file" else ""))
    for name, s in r["small"].items():
        rows.append((f"{name}: update_session_state (small)", s["update"], ""))
        rows.append((f"{name}: restore_session (small)", s["restore"], ""))
    for case, d in r["restore"].items():
        fr = d["file"]["p50"] / d["verify_decompress"]["p50"]
        dj = r["django"]["file"][f"load_{case}"]["p50"] / d["file"]["p50"]
        rows.append(
            (
                f"file: restore_session {case} ({d['wire_bytes'] // 1024} KiB)",
                d["file"],
                f"{fr:.1f}x floor; Django file {dj:.1f}x slower",
            )
        )
        rows.append((f"floor: verify+decompress {case}", d["verify_decompress"], ""))
        rows.append((f"django file: load {case}", r["django"]["file"][f"load_{case}"], ""))
        rows.append((f"django db: load {case}", r["django"]["db"][f"load_{case}"], ""))
    for key, s in r["update"].items():
        if isinstance(s, dict):
            rows.append((f"file: update_session_state {key}", s, ""))
    rows.append(("django file: save 1 MB", r["django"]["file"]["save_1mb"], ""))
    rows.append(("django db: save 1 MB", r["django"]["db"]["save_1mb"], ""))
    benchlib.print_rows(rows)
    for case, st in r["storage"].items():
        print(f"storage {case}: snapshot {st['snapshot_bytes']} B, all files {st['files']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="samples per figure (upper bound)")
    ap.add_argument("--quick", action="store_true", help="shorter time budgets")
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = ap.parse_args()
    t0 = time.monotonic()
    result = run(args.n, args.quick)
    result["elapsed_s"] = time.monotonic() - t0
    report(result)
    benchlib.emit(result, args.json)


if __name__ == "__main__":
    main()
