"""Loading the :class:`~stuisession.policy.Policy` from a TOML file and the environment.

A TOML file holds the options under a ``[policy]`` table (or at top level)::

    [policy]
    session_timeout = 7200
    auth_mode = "strict"
    deny_clients = ["eve"]

Environment variables ``STUISESSION_<OPTION>`` (upper case) override the file,
e.g. ``STUISESSION_SESSION_TIMEOUT=7200``. Values from the environment are
parsed by the option's type: integers, floats, booleans (``true``/``false``,
``1``/``0``), comma-separated lists for client sets, ``none`` for "unset".
Unknown options and bad values raise :class:`~stuisession.errors.ConfigurationError`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from stuisession.errors import ConfigurationError
from stuisession.policy import Policy

ENV_PREFIX = "STUISESSION_"
_NAMES = {a.name: a for a in attrs.fields(Policy)}
# the annotation strings of Policy's fields decide how an environment value is parsed
_LISTS = {"allow_clients", "deny_clients"}


def _parse_env(name: str, text: str) -> Any:
    kind = str(_NAMES[name].type)
    raw = text.strip()
    if raw.lower() in ("none", "null", "") and "None" in kind:
        return None
    if name in _LISTS:
        return [x.strip() for x in raw.split(",") if x.strip()]
    try:
        if kind.startswith("bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise ConfigurationError(f"{ENV_PREFIX}{name.upper()} has an invalid value") from None
    return raw


def load_policy(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
) -> Policy:
    """The policy from *path* (TOML, optional) overridden by ``STUISESSION_*`` variables.

    *defaults* (option name to value, e.g. :data:`~stuisession.policy.SERVE_DEFAULTS`)
    replace ``Policy()``'s defaults; the file and the environment override them.
    Raises :class:`~stuisession.errors.ConfigurationError` for a bad file or value.
    """
    values: dict[str, Any] = dict(defaults or {})
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"can not read configuration {path}: {exc}") from None
        table = doc.get("policy", doc)
        if not isinstance(table, dict):
            raise ConfigurationError("[policy] must be a table")
        for key, value in table.items():
            if key not in _NAMES:
                raise ConfigurationError(f"unknown option {key!r} in {path}")
            values[key] = value
    env = os.environ if environ is None else environ
    for name in _NAMES:
        text = env.get(ENV_PREFIX + name.upper())
        if text is not None:
            values[name] = _parse_env(name, text)
    try:
        return Policy(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"invalid configuration: {exc}") from None


__all__ = ["ENV_PREFIX", "load_policy"]
