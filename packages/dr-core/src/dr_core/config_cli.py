"""A command's flags built from its pydantic config, so that every setting is declared once: its type,
default and help live on the config field, and the command only names which config it takes.

Each field becomes `--field-name` (or the name its `flag()` metadata gives), with:
- Literal and StrEnum fields as choices; bool fields as `--x/--no-x` (or the pair `flag()` names);
  list fields as repeatable options; a tuple of numbers as one option taking that many;
- the field's `description` as help, followed by its default, read from the field;
- None as the value of a flag not given, so that the config file and DR_* variables still apply
  (`dr_core.config.resolve`).

    class RLConfig(BaseModel):
        lr: float = Field(1e-5, description="Learning rate.")
        warmup_steps: int = Field(0, description="Warm-up steps.", json_schema_extra=flag("--warmup"))

    config_command(app, "rl", RLConfig, run, arguments={"inputs": Inputs})
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from dr_core.flags import cli_meta, flag, flag_name, not_a_flag

__all__ = ["config_command", "flag", "flag_name", "not_a_flag", "option_parameters", "with_flags"]


def _unoptional(annotation: Any) -> Any:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


_CHOICES: dict[tuple[str, tuple[str, ...]], type[StrEnum]] = {}


def _choices(name: str, values: tuple[Any, ...]) -> type[StrEnum]:
    key = (name, tuple(str(v) for v in values))
    if key not in _CHOICES:
        members = {str(v): str(v) for v in values}
        made: Any = StrEnum(name.title().replace("_", "") + "Choice", members)  # type: ignore[misc]
        _CHOICES[key] = made
    return _CHOICES[key]


def _cli_type(name: str, annotation: Any) -> Any:
    """The type typer parses the flag of a field with this annotation into."""
    inner = _unoptional(annotation)
    origin = get_origin(inner)
    if origin is Literal:
        return _choices(name, get_args(inner))
    if (
        origin in (list, tuple)
        or inner in (int, float, str, bool)
        or (isinstance(inner, type) and issubclass(inner, Enum))
    ):
        if origin is list:
            return list[_cli_type(name, get_args(inner)[0])]  # type: ignore[misc]
        return inner
    if inner is Path:
        return str
    if inner is dict or origin is dict:
        return str  # JSON text, which the model's own validator parses
    raise TypeError(f"config field {name!r}: no flag for a field of type {annotation!r}")


def default_text(field: FieldInfo) -> str | None:
    default = field.default
    if default is PydanticUndefined or default is None:
        if field.default_factory is not None:
            made = field.default_factory()  # type: ignore[call-arg]
            return ", ".join(map(str, made)) if isinstance(made, list | tuple) and made else None
        return None
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, Enum):
        return str(default.value)
    if isinstance(default, tuple):
        return " ".join(map(str, default))
    return str(default)


def option_parameters(
    model: type[BaseModel], skip: Iterable[str] = (), panel: str | None = None
) -> list[inspect.Parameter]:
    """A typer option parameter per field of `model` that a flag sets, in field order."""
    skipped = set(skip)
    params = []
    for name, field in model.model_fields.items():
        meta = cli_meta(field)
        if name in skipped or meta is None:
            continue
        cli_type = _cli_type(name, field.annotation)
        names = [flag_name(name, field) or ""]
        if cli_type is bool:
            off = meta.get("off") or "--no-" + names[0].removeprefix("--")
            names = [f"{names[0]}/{off}"]
        if meta.get("short"):
            names.append(str(meta["short"]))
        names += [str(alias) for alias in meta.get("aliases", ())]
        help_text = (field.description or "").strip()
        shown = default_text(field)
        if shown is not None:
            help_text = f"{help_text} (default: {shown})" if help_text else f"(default: {shown})"
        option = typer.Option(
            *names,
            help=help_text or None,
            show_default=False,
            hidden=bool(meta.get("hidden")),
            rich_help_panel=panel,
        )
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[cli_type | None, option],
            )
        )
    return params


def config_command(
    app: typer.Typer,
    name: str,
    model: type[BaseModel],
    run: Callable[[dict[str, Any]], None],
    *,
    help: str | None = None,
    arguments: Mapping[str, Any] | None = None,
    skip: Iterable[str] = (),
) -> Callable[..., None]:
    """Register command `name` on `app` with a flag per field of `model` (but `skip` and `arguments`); it
    calls `run` with {field: value or None} of every flag, values of choices as plain strings.
    `arguments`: {field: Annotated type} of positional arguments, which come first."""
    positional = [
        inspect.Parameter(field, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=annotation)
        for field, annotation in (arguments or {}).items()
    ]
    params = positional + option_parameters(model, [*skip, *(arguments or {})])

    def command(**flags: Any) -> None:
        run({key: value.value if isinstance(value, Enum) else value for key, value in flags.items()})

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = name.replace("-", "_")
    command.__doc__ = help or model.__doc__
    app.command(name)(command)
    return command


def with_flags(model: type[BaseModel], into: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a typer command a flag per field of `model` (as `option_parameters` makes them), passed to it
    as one `model` instance, its parameter `into`; the flags given override the fields' defaults. For flags
    that several commands share (dr_agent.flags.AgentFlags):

        @app.command()
        @with_flags(AgentFlags, "agent_flags")
        def research(question: str, agent_flags: AgentFlags) -> None: ...
    """

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(func, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(func).parameters.values()
            if p.name != into
        ]
        added = option_parameters(model)
        names = {p.name for p in added}

        def command(**given: Any) -> Any:
            values = {name: given.pop(name) for name in names}
            fields = {k: v.value if isinstance(v, Enum) else v for k, v in values.items() if v is not None}
            return func(**given, **{into: model(**fields)})

        params = own + added
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__ = func.__name__
        command.__doc__ = func.__doc__
        return command

    return wrap
