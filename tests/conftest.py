"""Shared fixtures."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence

import pytest
from hypothesis import HealthCheck, settings

from redis_server import RedisServer, RedisServerMissing, start_redis_server

# -- Hypothesis: no wall-clock checks -------------------------------------------------
# make test runs on two xdist workers on a 2-core machine that may be busy: a per-example
# deadline or the "too slow to generate" health check would fail a correct test when the
# machine is slow, so neither applies (a test that sets its own settings keeps these
# unless it overrides them; one that lists health checks to suppress lists too_slow too)
settings.register_profile(
    "stuisession", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("stuisession")


# -- Redis: a hermetic redis-server per test session ---------------------------------
def _start_or_fail(*, extra_args: Sequence[str] = (), password: str | None = None) -> RedisServer:
    try:
        return start_redis_server(extra_args=extra_args, password=password)
    except RedisServerMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server on a free 127.0.0.1 port for the whole test session.

    Fails (never skips) when redis-server is not installed. Tests must not
    stop it; use :func:`redis_server_factory` for a server a test may restart.
    """
    server = _start_or_fail()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's redis-server (restarted if a test killed it)."""
    if not redis_server.running:
        redis_server.start()
    return redis_server.url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to one test, so tests sharing the server never meet."""
    return f"t{secrets.token_hex(6)}"


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start private redis-servers (``factory(password=..., extra_args=...)``).

    Each one can be ``.stop()``-ed, ``.start()``-ed and ``.restart()``-ed on
    the same port mid-test; all are killed at the end of the test.
    """
    started: list[RedisServer] = []

    def factory(*, extra_args: Sequence[str] = (), password: str | None = None) -> RedisServer:
        server = _start_or_fail(extra_args=extra_args, password=password)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.close()
