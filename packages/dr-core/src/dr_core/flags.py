"""How a config field is set from a command line, stored on the field itself, so that a setting is declared
once: `flag()` names its flag where it differs from `--field-name`, `not_a_flag()` keeps it off the command
line. Typer-free, so configs import it without loading a CLI; `dr_core.config_cli` builds the options, and
`dr_core.config` names the flag in a setting's error."""

from __future__ import annotations

from typing import Any

from pydantic.fields import FieldInfo


def flag(
    name: str | None = None,
    *,
    short: str | None = None,
    aliases: tuple[str, ...] = (),
    off: str | None = None,
    hidden: bool = False,
) -> dict[str, Any]:
    """A field's flag where it differs from `--field-name`: `name`, a `short` alias (-o), other `aliases`
    (--tensor-parallel-size for --tp), the `off` name of a bool (--train-flat-groups for --skip-flat-groups),
    or `hidden` from --help. Goes in `Field(json_schema_extra=...)`."""
    meta: dict[str, Any] = {}
    if name:
        meta["flag"] = name
    if short:
        meta["short"] = short
    if aliases:
        meta["aliases"] = list(aliases)
    if off:
        meta["off"] = off
    if hidden:
        meta["hidden"] = True
    return {"cli": meta}


def not_a_flag() -> dict[str, Any]:
    """A field no command line sets (the command itself does, or the recipe computes it)."""
    return {"cli": None}


def cli_meta(field: FieldInfo) -> dict[str, Any] | None:
    """The field's flag settings ({} for the plain `--field-name`); None when no flag sets it."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "cli" in extra:
        value = extra["cli"]
        return dict(value) if isinstance(value, dict) else None
    return {}


def flag_name(name: str, field: FieldInfo) -> str | None:
    """The flag that sets field `name` (None: no flag sets it)."""
    meta = cli_meta(field)
    if meta is None:
        return None
    return str(meta.get("flag") or "--" + name.replace("_", "-"))
