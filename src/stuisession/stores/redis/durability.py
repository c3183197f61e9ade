"""Durability of Redis writes: the AOF check at start, ``WAIT``/``WAITAOF`` after each write."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import attrs

from stuisession.errors import ConfigurationError, StorageError
from stuisession.stores.redis.errors import ErrorMapper
from stuisession.stores.redis.keys import text

log = logging.getLogger("stuisession.stores.redis")

#: default seconds a ``replicas=N`` write waits for its replicas
DURABILITY_TIMEOUT = 2.0


@attrs.frozen
class Durability:
    mode: Literal["none", "aof", "replicas"]
    replicas: int = 0

    @classmethod
    def parse(cls, value: str) -> Durability:
        text = value.strip().lower()
        if text in ("none", "aof"):
            return cls(text)  # type: ignore[arg-type]
        name, eq, count = text.partition("=")
        if name == "replicas" and eq and count.isdigit() and 1 <= int(count) <= 64:
            return cls("replicas", int(count))
        raise ConfigurationError(
            f"durability must be 'none', 'aof' or 'replicas=N' (N >= 1), not {value!r}"
        )


def nodes(client: Any, cluster: bool, display_url: str) -> list[tuple[str, Any]]:
    """(name, client) of every server: all cluster nodes, or the one server."""
    if not cluster:
        return [(display_url, client)]
    return [(n.name, client.get_redis_connection(n)) for n in client.get_nodes()]


def has_waitaof(node: Any, rexc: Any) -> bool:
    """Whether the server has WAITAOF (Redis 7.2 and later), by its version."""
    try:
        version = text(node.info("server").get("redis_version"))
        major, minor = (int(x) for x in version.split(".")[:2])
    except (rexc.RedisError, ValueError, TypeError):
        return False
    return (major, minor) >= (7, 2)


class DurabilityGuard:
    """The chosen durability of a store: checked at start, then after every write.

    :param durability: the mode.
    :param timeout: seconds a ``replicas=N`` write waits.
    :param display_url: the server's URL without its password (named in errors).
    """

    def __init__(self, durability: Durability, timeout: float, display_url: str) -> None:
        self.durability = durability
        self.timeout = timeout
        self.display_url = display_url
        #: the commands sent after every write (on its connection): WAIT, maybe WAITAOF
        self.wait_cmds: list[tuple[Any, ...]] = []
        #: the effective durability, as a sentence
        self.text = ""

    def check(self, servers: list[tuple[str, Any]], errors: ErrorMapper) -> None:
        """Check the *servers* can give the chosen durability; sets :attr:`text`."""
        self.text = self._check(servers, errors)

    def _check(self, servers: list[tuple[str, Any]], errors: ErrorMapper) -> str:
        d = self.durability
        rexc = errors.redis.exceptions
        if d.mode == "none":
            return "none (a reply means the primary holds the write in memory)"
        aof_nodes: list[str] = []
        unverified: list[str] = []
        waitaof = True
        with errors.errors("check the durability settings"):
            for name, node in servers:
                try:
                    cfg = node.config_get("append*")
                except rexc.ResponseError as exc:  # CONFIG renamed away or not allowed
                    unverified.append(f"{name}: {type(exc).__name__}")
                    waitaof = False
                    continue
                on = text(cfg.get(b"appendonly", cfg.get("appendonly"))) == "yes"
                fsync = text(cfg.get(b"appendfsync", cfg.get("appendfsync")))
                if d.mode == "aof" and not (on and fsync == "always"):
                    raise ConfigurationError(
                        f"durability='aof' needs appendonly yes and appendfsync always on every "
                        f"Redis node; {name} has appendonly {'yes' if on else 'no'}, "
                        f"appendfsync {fsync or '?'}"
                    )
                if on:
                    aof_nodes.append(name)
                waitaof = waitaof and on and has_waitaof(node, rexc)
        if unverified:
            log.warning(
                "durability=%s could not be checked (CONFIG GET refused on %s): the guarantee "
                "rests on the servers' configuration",
                d.mode if d.mode != "replicas" else f"replicas={d.replicas}",
                ", ".join(unverified),
            )
        ms = max(1, round(self.timeout * 1000))
        if d.mode == "aof":
            note = " (unverified: CONFIG GET refused)" if unverified else ""
            return f"aof (appendonly yes, appendfsync always on {len(aof_nodes)} node(s)){note}"
        self.wait_cmds = [("WAIT", d.replicas, ms)]
        extra = ""
        if waitaof:
            self.wait_cmds.append(("WAITAOF", 1, d.replicas, ms))
            extra = " + WAITAOF"
        return (
            f"replicas={d.replicas} (each write waits for WAIT {d.replicas}{extra}, up to {ms} ms)"
        )

    def check_durable(self, results: Sequence[Any], action: str) -> None:
        """Raise ``durability_unknown`` unless the WAIT/WAITAOF replies reach the target."""
        need = self.durability.replicas
        got = [results[-len(self.wait_cmds) + i] for i in range(len(self.wait_cmds))]
        reached = True
        for cmd, reply in zip(self.wait_cmds, got, strict=True):
            if cmd[0] == "WAIT":
                reached = reached and int(reply) >= need
            else:  # WAITAOF -> [local fsynced, replicas fsynced]
                reached = reached and int(reply[0]) >= 1 and int(reply[1]) >= need
        if not reached:
            raise StorageError(
                f"Redis store applied a {action} but could not confirm it reached "
                f"{need} replica(s) within {self.timeout:g} s",
                url=self.display_url,
                reason="durability_unknown",
                replies=[r if isinstance(r, int) else list(r) for r in got],
            )
