"""Settings resolution: flag > DR_* environment variable > TOML config file > default.

A settings class is a pydantic model whose defaults are the only defaults. `resolve(cls, section, flags)`
reads `[section]` of the TOML file given by `--config` (or DR_CONFIG) and variables named
DR_<SECTION>_<FIELD>, then applies the flags a command was given (None meaning "not given").
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dr_core.errors import ConfigError
from dr_core.flags import flag_name

S = TypeVar("S", bound=BaseModel)

_config_file: Path | None = None


def use_config_file(path: str | Path | None) -> None:
    """Set the TOML file settings are read from; the `dr` root command calls this once per process."""
    global _config_file
    _config_file = Path(path) if path else None


def config_file() -> Path | None:
    if _config_file is not None:
        return _config_file
    env = os.environ.get("DR_CONFIG")
    return Path(env) if env else None


def env_name(section: str, field: str) -> str:
    return f"DR_{section}_{field}".upper().replace(".", "_").replace("-", "_")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _section(data: dict[str, Any], section: str, path: Path) -> dict[str, Any]:
    node: Any = data
    for part in section.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
    return dict(node)


def _collect(
    cls: type[BaseModel],
    section: str,
    flags: Mapping[str, Any] | None,
    environ: Mapping[str, str] | None,
    file: Path | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The values given for `section` (file, then environment, then flags) and where each came from."""
    environ = os.environ if environ is None else environ
    file = file if file is not None else config_file()
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    fields = cls.model_fields

    if file is not None:
        for key, value in _section(_read_toml(file), section, file).items():
            if key not in fields and isinstance(value, dict):
                continue  # a subsection, such as [judge.llm] inside [judge]
            if key not in fields:
                known = ", ".join(sorted(fields))
                raise ConfigError(f"{file}: [{section}] has unknown setting {key!r}; known: {known}")
            values[key] = value
            origin[key] = f"{file} [{section}] {key}"

    for name in fields:
        var = env_name(section, name)
        if environ.get(var, "") != "":  # set but empty counts as unset, as shells use it
            values[name] = environ[var]
            origin[name] = f"environment variable {var}"

    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in fields:
            raise ValueError(f"{cls.__name__} has no setting {name!r}")
        values[name] = value
        origin[name] = flag_name(name, fields[name]) or f"--{name.replace('_', '-')}"
    return values, origin


def origin(
    cls: type[BaseModel],
    section: str,
    name: str,
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    file: Path | None = None,
) -> str | None:
    """Where setting `name` of `section` is given (a flag, a variable, the file), or None: its default."""
    return _collect(cls, section, flags, environ, file)[1].get(name)


def is_configured(
    cls: type[BaseModel],
    section: str,
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    file: Path | None = None,
) -> bool:
    """Whether any setting of `section` is given at all (by flag, environment or file)."""
    return bool(_collect(cls, section, flags, environ, file)[0])


def resolve(
    cls: type[S],
    section: str,
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    file: Path | None = None,
) -> S:
    """Build `cls` from its defaults, the config file's [section], DR_<SECTION>_* variables and flags."""
    values, origin = _collect(cls, section, flags, environ, file)
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else ""
        where = origin.get(name, f"setting {name!r}")
        # a validator's own message, without pydantic's "Value error, " before it
        raise ConfigError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None
