"""Policy from TOML and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from stuisession import ConfigurationError
from stuisession.config import load_policy


def test_defaults_without_sources() -> None:
    p = load_policy(environ={})
    assert p.session_timeout == 3600 and p.max_sessions_per_client == 5


def test_toml_and_env_override(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        '[policy]\nsession_timeout = 7200\nauth_mode = "strict"\ndeny_clients = ["eve"]\n'
    )
    p = load_policy(
        cfg,
        environ={
            "STUISESSION_SESSION_TIMEOUT": "900",
            "STUISESSION_RATE_LIMIT": "none",
            "STUISESSION_ROTATE_ON_RESTORE": "false",
            "STUISESSION_ALLOW_CLIENTS": "a, b",
        },
    )
    assert p.session_timeout == 900
    assert p.strict and p.deny_clients == frozenset({"eve"})
    assert p.rate_limit is None and p.rotate_on_restore is False
    assert p.allow_clients == frozenset({"a", "b"})
    top = tmp_path / "top.toml"
    top.write_text("max_sessions_per_client = 9\n")
    assert load_policy(top, environ={}).max_sessions_per_client == 9


@pytest.mark.parametrize(
    ("text", "env"),
    [
        ("bogus = 1\n", {}),
        ("session_timeout = -5\n", {}),
        ("session_timeout = 'x'\n", {}),
        ("[policy\n", {}),
        ("", {"STUISESSION_SESSION_TIMEOUT": "soon"}),
        ("", {"STUISESSION_ROTATE_ON_RESTORE": "maybe"}),
        ('auth_mode = "lax"\n', {}),
        ("policy = 3\n", {}),
    ],
)
def test_bad_configuration(tmp_path: Path, text: str, env: dict[str, str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigurationError):
        load_policy(cfg, environ=env)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        load_policy(tmp_path / "nope.toml", environ={})
