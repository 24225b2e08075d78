"""Yes/no parameters read strictly.

``papermill -p test_restore false`` passes the *string* ``"false"``, which Python counts
as true. A flag is therefore parsed, never truth-tested: true/false, yes/no, on/off, 1/0
(any case), or a real bool; anything else is refused before anything runs.
"""

from __future__ import annotations

from .errors import ConfigurationError

TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0")


def flag(value: object, name: str) -> bool:
    """``value`` as a bool; ConfigurationError (naming the parameter) if it is not one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise ConfigurationError(
        f"{name} must be true or false, got {value!r}. Nothing was changed.",
        next_step=f"pass {name} as true/false (yes/no and 1/0 are accepted too); with papermill "
        f"use -p {name} false or -y '{name}: false'.")
