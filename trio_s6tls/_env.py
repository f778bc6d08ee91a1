"""The environment of a program we start: the TLS configuration variables
that the wrappers remove unless ``-Z``, and the one way to apply updates
(a value sets a variable, ``None`` unsets it — the notification block's
convention). Pure."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

TLS_VARIABLES = ("CADIR", "CAFILE", "CERTFILE", "KEYFILE", "TLS_UID", "TLS_GID")


def is_tls_variable(name: str) -> bool:
    """The variables s6-tlsc/s6-tlsd and friends remove unless ``-Z``."""
    return name in TLS_VARIABLES or name.startswith(("CERTFILE:", "KEYFILE:"))


def apply_variables(env: MutableMapping[str, str], variables: Mapping[str, str | None]) -> None:
    """Set or unset each variable in ``env``."""
    for name, value in variables.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value


def program_environment(
    base: Mapping[str, str],
    *,
    keep_tls: bool,
    updates: Mapping[str, str | None] = {},
) -> dict[str, str]:
    """prog's environment: ``base`` without the TLS configuration variables
    (unless ``keep_tls``, ``-Z``), then ``updates`` applied (``None`` unsets)."""
    env = {name: value for name, value in base.items() if keep_tls or not is_tls_variable(name)}
    apply_variables(env, updates)
    return env
