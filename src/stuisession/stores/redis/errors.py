"""Redis and Redis Cluster errors as :class:`~stuisession.errors.StorageError`, scrubbed."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from stuisession.errors import StorageError

#: ``retry_after`` (seconds) suggested by errors of a cluster in flux / an unreachable server
RETRY_AFTER_CLUSTER = 1.0
RETRY_AFTER_CONNECTION = 0.5


class ErrorMapper:
    """Maps the errors of one store's client; on a cluster, re-reads its slot map.

    :param redis: the ``redis`` module.
    :param display_url: the server's URL without its password (named in errors).
    :param secrets: strings to replace by ``***`` in every message.
    :param cluster: whether the client is a ``RedisCluster``.
    """

    def __init__(self, redis: Any, display_url: str, secrets: list[str], cluster: bool) -> None:
        self.redis = redis
        self.display_url = display_url
        self.secrets = secrets
        self.cluster = cluster
        #: the client whose topology :meth:`refresh_topology` refreshes (set once connected)
        self.client: Any = None
        self._topology_lock = threading.Lock()
        self._topology_at = 0.0

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def storage_error(self, action: str, exc: Exception) -> StorageError:
        rexc = self.redis.exceptions
        cluster_trouble = (
            rexc.ClusterError,  # CLUSTERDOWN, MASTERDOWN
            rexc.AskError,  # and MOVED: slots moving (a failover, resharding)
            rexc.TryAgainError,
            rexc.RedisClusterException,  # e.g. a slot not covered by any node
        )
        transient = (
            rexc.ConnectionError,
            rexc.TimeoutError,
            rexc.ReadOnlyError,
            rexc.OutOfMemoryError,
            *cluster_trouble,
            OSError,
        )
        auth = (rexc.AuthenticationError, rexc.AuthorizationError)
        retryable = isinstance(exc, transient) and not isinstance(exc, auth)
        details: dict[str, Any] = {"url": self.display_url, "reason": type(exc).__name__}
        if retryable:
            details["retry_after"] = (
                RETRY_AFTER_CLUSTER
                if self.cluster or isinstance(exc, cluster_trouble)
                else RETRY_AFTER_CONNECTION
            )
        err = StorageError(
            f"Redis store could not {action} ({self.display_url}): "
            f"{type(exc).__name__}: {self.scrub(str(exc))}",
            **details,
        )
        err.retryable = retryable
        if retryable and self.cluster:
            self.refresh_topology()
        return err

    @contextlib.contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Raise the Redis errors of the block as ``StorageError`` ("could not *action*")."""
        rexc = self.redis.exceptions
        try:
            yield
        except (rexc.RedisError, rexc.RedisClusterException) as exc:
            raise self.storage_error(action, exc) from None
        except OSError as exc:  # e.g. TLS errors surfacing as plain socket errors
            raise self.storage_error(action, exc) from None

    def refresh_topology(self, *, force: bool = False) -> None:
        """Re-read the cluster's slot map (at most every 0.2 s unless *force*d)."""
        now = time.monotonic()
        with self._topology_lock:
            if not force and now - self._topology_at < 0.2:
                return
            self._topology_at = now
        with contextlib.suppress(Exception):
            self.client.nodes_manager.initialize()
