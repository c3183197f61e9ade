"""CurveZMQ for the bridge: key pairs, the client allow-list, the ZAP authenticator.

Nothing here is hand-rolled cryptography: keys are made by
:func:`zmq.auth.create_certificates`, the handshake and encryption are
libzmq's CURVE, and the allow-list is consulted by pyzmq's
:class:`zmq.auth.thread.ThreadAuthenticator` (ZAP). The authenticator sets
each connection's ``User-Id`` to the client's z85 public key; the bridge
reads it from every message and looks up the client ids the key is bound to.

The allow-list is a small TOML file::

    [[client]]
    public_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"   # z85, 40 characters
    client_ids = ["alice"]
    operator = false                                         # may see connection details

or a directory of such ``*.toml`` files and of public certificates
``<client_id>.key`` (as written by ``stuisession keys curve-client``), each
bound to the client id of its file name. It is re-read when its modification
time changes (checked at most every :data:`RELOAD_CHECK` seconds), so keys are
added and revoked without a restart; a connection whose key was removed gets
no client ids (every command is denied) from its next request on.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import stat
import tempfile
import threading
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from stuisession.errors import ConfigurationError
from stuisession.ids import check_client_id
from stuisession.security.identity import Caller, fingerprint

__all__ = [
    "NOBODY",
    "AllowList",
    "Binding",
    "CurveConfig",
    "caller_frame",
    "caller_from_frame",
    "generate_keypair",
    "is_loopback_endpoint",
    "load_keypair",
    "load_public_key",
]

log = logging.getLogger("stuisession.server")

#: the allow-list's modification time is checked at most this often (seconds)
RELOAD_CHECK: Final = 1.0
#: the ZAP domain the bridge's socket announces
ZAP_DOMAIN: Final = "stuisession"
_Z85_KEY_LENGTH: Final = 40


def _zmq() -> Any:
    try:
        import zmq
    except ImportError as exc:
        raise ImportError("CURVE needs pyzmq: pip install 'stuisession[zmq]'") from exc
    return zmq


def _check_key(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) != _Z85_KEY_LENGTH:
        raise ConfigurationError(f"{where}: public_key must be a 40-character z85 string")
    try:
        raw = _zmq().utils.z85.decode(value.encode("ascii"))
    except (ValueError, UnicodeEncodeError, KeyError):
        raise ConfigurationError(f"{where}: public_key is not valid z85") from None
    if len(raw) != 32:
        raise ConfigurationError(f"{where}: public_key must decode to 32 bytes")
    return value


# -- key pairs ----------------------------------------------------------------------------
def generate_keypair(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write a new CURVE key pair ``<name>.key`` (public) and ``<name>.key_secret``.

    The pair is made by :func:`zmq.auth.create_certificates` inside a private
    (0700) temporary directory, the secret file set to 0600, then both are
    moved into *out_dir* (created 0700 if missing), so the secret is never
    readable by others, not even for an instant. Refuses to overwrite.

    :returns: ``(public_file, secret_file)``.
    :raises FileExistsError: a file of that name exists.
    """
    _zmq()  # a helpful ImportError without pyzmq
    import zmq.auth

    out = Path(out_dir)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = out / f"{name}.key", out / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists; not overwriting a key")
    with tempfile.TemporaryDirectory(dir=out, prefix=".keygen-") as tmp:
        tmp_public, tmp_secret = zmq.auth.create_certificates(tmp, name)
        os.chmod(tmp_secret, 0o600)
        os.chmod(tmp_public, 0o644)
        os.link(tmp_secret, secret)  # link: fails instead of replacing a file made meanwhile
        os.link(tmp_public, public)
    return public, secret


def load_keypair(path: str | Path) -> tuple[bytes, bytes]:
    """``(public, secret)`` z85 keys from a ``.key_secret`` file (see :func:`generate_keypair`).

    :raises ConfigurationError: the file is readable or writable by group or
        others (as ``ssh`` refuses such keys), or holds no secret key.
    """
    _zmq()
    import zmq.auth

    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        raise ConfigurationError(f"cannot read the CURVE secret key {p}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigurationError(
            f"{p} is accessible by group or others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    public, secret = zmq.auth.load_certificate(p)
    if not secret:
        raise ConfigurationError(f"{p} holds no secret key")
    return public, secret


def load_public_key(path: str | Path) -> bytes:
    """The z85 public key from a ``.key`` (or ``.key_secret``) certificate file."""
    _zmq()
    import zmq.auth

    public, _ = zmq.auth.load_certificate(Path(path))
    return bytes(public)


# -- the allow-list -----------------------------------------------------------------------
@attrs.frozen
class Binding:
    """One allowed client key and what it may act as."""

    public_key: str
    client_ids: frozenset[str]
    operator: bool = False

    def caller(self) -> Caller:
        """The :class:`Caller` of a connection authenticated with this key."""
        return Caller.curve(self.public_key, self.client_ids, operator=self.operator)


def _parse_toml(data: Mapping[str, Any], where: str) -> list[Binding]:
    clients = data.get("client", [])
    if not isinstance(clients, list):
        raise ConfigurationError(f"{where}: [[client]] must be an array of tables")
    out = []
    for n, entry in enumerate(clients, 1):
        here = f"{where}: client #{n}"
        if not isinstance(entry, dict):
            raise ConfigurationError(f"{here} must be a table")
        unknown = set(entry) - {"public_key", "client_ids", "operator"}
        if unknown:
            raise ConfigurationError(f"{here}: unknown keys {sorted(unknown)}")
        key = _check_key(entry.get("public_key"), here)
        ids = entry.get("client_ids", [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ConfigurationError(f"{here}: client_ids must be a list of strings")
        for cid in ids:
            check_client_id(cid)
        operator = entry.get("operator", False)
        if not isinstance(operator, bool):
            raise ConfigurationError(f"{here}: operator must be true or false")
        out.append(Binding(key, frozenset(ids), operator))
    return out


def _read_allow_list(path: Path) -> dict[str, Binding]:
    bindings: list[Binding] = []
    if path.is_dir():
        for item in sorted(path.iterdir()):
            if item.suffix == ".toml":
                bindings += _parse_toml(tomllib.loads(item.read_text("utf-8")), str(item))
            elif item.suffix == ".key":
                key = load_public_key(item).decode("ascii")
                bindings.append(Binding(_check_key(key, str(item)), frozenset({item.stem})))
    else:
        try:
            doc = tomllib.loads(path.read_text("utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None
        bindings = _parse_toml(doc, str(path))
    table: dict[str, Binding] = {}
    for b in bindings:
        prior = table.get(b.public_key)
        # the same key listed twice: the union of its bindings
        table[b.public_key] = (
            b
            if prior is None
            else Binding(
                b.public_key, prior.client_ids | b.client_ids, prior.operator or b.operator
            )
        )
    return table


def _stamp(path: Path) -> tuple[int, ...]:
    try:
        st = path.stat()
        stamps = [st.st_mtime_ns, st.st_ino, st.st_size]
        if path.is_dir():
            for item in sorted(path.iterdir()):
                if item.suffix in (".toml", ".key"):
                    s = item.stat()
                    stamps += [s.st_mtime_ns, s.st_ino, s.st_size]
        return tuple(stamps)
    except OSError:
        return ()


class AllowList:
    """The allowed client keys and their client ids, reloaded when the file changes.

    Thread-safe: the ZAP thread checks keys at the handshake, the bridge looks
    up the bound client ids of every request. A reload that fails (bad TOML, a
    bad key) keeps the previous list and logs the error.

    :param path: a TOML file, or a directory (see the module docs).
    :raises ConfigurationError: the initial list can not be read.
    """

    def __init__(self, path: str | Path, *, check_interval: float = RELOAD_CHECK) -> None:
        self.path = Path(path)
        self.check_interval = check_interval
        # reentrant: a SIGHUP reload may interrupt a lookup on the same thread
        self._lock = threading.RLock()
        self._stamp = _stamp(self.path)
        try:
            self._table = _read_allow_list(self.path)
        except OSError as exc:
            raise ConfigurationError(f"cannot read {self.path}: {exc.strerror}") from None
        self._checked = time.monotonic()

    def reload(self) -> bool:
        """Re-read the list now (e.g. on SIGHUP). False (and the old list kept) on error."""
        stamp = _stamp(self.path)
        try:
            table = _read_allow_list(self.path)
        except (OSError, ConfigurationError, ValueError) as exc:
            log.error("could not reload the CURVE allow-list %s: %s", self.path, exc)
            return False
        with self._lock:
            self._table, self._stamp = table, stamp
        log.info("CURVE allow-list reloaded: %d key(s)", len(table))
        return True

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_interval:
            return
        self._checked = now
        if _stamp(self.path) != self._stamp:
            self.reload()

    def lookup(self, public_key: str) -> Binding | None:
        """The binding of the z85 *public_key*, or None if it is not (or no longer) allowed."""
        self._maybe_reload()
        with self._lock:
            return self._table.get(public_key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)

    # the ZAP authenticator's credentials-provider interface
    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: allow the handshake of an allow-listed key (z85 *key*)."""
        allowed = self.lookup(key.decode("ascii", "replace")) is not None
        if not allowed:
            log.warning("CURVE handshake refused for an unknown key %s", fingerprint(key))
        return allowed


@attrs.frozen
class CurveConfig:
    """What the bridge needs to serve CURVE: its key pair and the allow-list."""

    public_key: bytes
    secret_key: bytes
    allow_list: AllowList

    @classmethod
    def from_files(cls, secret_file: str | Path, clients: str | Path) -> CurveConfig:
        """Load the server's ``.key_secret`` file and the client allow-list."""
        public, secret = load_keypair(secret_file)
        return cls(bytes(public), bytes(secret), AllowList(clients))

    def apply(self, sock: Any) -> None:
        """Make *sock* a CURVE server (before it binds)."""
        zmq = _zmq()
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())

    def start_authenticator(self, context: Any) -> Any:
        """Start the ZAP handler on *context*; the caller stops it when done."""
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(context, log=logging.getLogger("stuisession.zap"))
        auth.start()
        auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self.allow_list)
        return auth

    def caller(self, user_id: str) -> Caller:
        """The caller of a message whose connection authenticated as *user_id* (z85 key)."""
        binding = self.allow_list.lookup(user_id)
        if binding is None:  # revoked since the handshake: bound to nothing
            return Caller.curve(user_id, frozenset())
        return binding.caller()

    def message_caller(self, frame: Any) -> Caller:
        """The caller of a message received on a CURVE socket (*frame*: a :class:`zmq.Frame`).

        Its ZAP ``User-Id`` (the client's z85 key, set at the handshake) looked up
        now, so a key revoked since then is bound to nothing; no ``User-Id`` gives
        :data:`NOBODY` (never a fallback to trust).
        """
        try:
            user_id = frame.get("User-Id")
        except _zmq().ZMQError:
            user_id = None
        return self.caller(user_id) if user_id else NOBODY


# -- callers behind a supervisor (``serve --workers N`` with CURVE) ------------------------
#: the caller a message is attributed to when its caller frame is missing or unreadable:
#: authenticated as nobody and bound to no client id (never a fallback to trust)
NOBODY = Caller.curve("", frozenset())


def caller_frame(caller: Caller) -> bytes:
    """The frame that carries a CURVE caller from the parent to a worker.

    Shape: UTF-8 JSON ``{"key": str, "client_ids": [str, ...], "operator": bool}``
    (*key* is the caller's z85 public key; client ids sorted).
    """
    key = caller.key.removeprefix("curve:")
    ids = sorted(caller.client_ids or ())
    return json.dumps({"key": key, "client_ids": ids, "operator": caller.operator}).encode()


def caller_from_frame(frame: bytes) -> Caller:
    """The :class:`Caller` of :func:`caller_frame`'s output (bound to nothing if unreadable)."""
    try:
        d = json.loads(frame)
        key, ids, operator = d["key"], d["client_ids"], d["operator"]
    except (ValueError, TypeError, KeyError):
        return NOBODY
    if not (
        isinstance(key, str)
        and key
        and isinstance(ids, list)
        and all(isinstance(i, str) for i in ids)
        and isinstance(operator, bool)
    ):
        return NOBODY
    return Caller.curve(key, frozenset(ids), operator=operator)


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ``ipc://``/``inproc://`` endpoints and TCP on a loopback address."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0]
    if ";" in host:  # "source;destination": the bound side is the destination
        host = host.rsplit(";", 1)[1]
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: may be reachable from outside
