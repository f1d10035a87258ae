"""Loading frontdesk.toml: TOML first, then FRONTDESK_<SECTION>__<KEY> environment overrides.

Errors come back as a list of ``(key, message)`` so ``frontdesk check`` can name every bad or
unknown key at once.
"""

from __future__ import annotations

import functools
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from frontdesk.config.schema import CoreSettings, TemplateCheck

ENV_PREFIX = "FRONTDESK_"
CONFIG_ENV = "FRONTDESK_CONFIG"
DEFAULT_PATH = "frontdesk.toml"


class ConfigError(Exception):
    """The configuration cannot be used. ``problems`` is a list of (key, message)."""

    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        lines = [f"{key}: {msg}" if key else msg for key, msg in problems]
        super().__init__(f"{path}: " + "; ".join(lines))


S = TypeVar("S", bound=CoreSettings)

_ENV_CONFIG = SettingsConfigDict(
    env_prefix=ENV_PREFIX,
    env_nested_delimiter="__",
    env_nested_max_split=0,
    case_sensitive=False,
    extra="forbid",
    validate_default=True,
    hide_input_in_errors=True,
)


@functools.cache
def _with_environment(model: type[CoreSettings]) -> type[BaseSettings]:
    """``model`` with pydantic-settings' environment source layered over the TOML values."""

    class EnvSettings(model, BaseSettings):  # type: ignore[valid-type,misc]
        model_config = _ENV_CONFIG

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # The first source wins: the environment overrides the file.
            return env_settings, init_settings

    return EnvSettings


def resolve_path(path: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """``-c`` wins, then $FRONTDESK_CONFIG, then ./frontdesk.toml."""
    return Path(path or environ.get(CONFIG_ENV) or DEFAULT_PATH)


def _key(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif item == "from_":
            parts.append("from")
        else:
            parts.append(str(item))
    return ".".join(parts)


def _message(err: Mapping[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def problems_of(exc: ValidationError,
                from_environment: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``(key, message)`` per error; a key set from the environment says so, naming the
    variable, so the file is not blamed for it."""
    problems = []
    for error in exc.errors():
        key = _key(tuple(error["loc"]))
        message = _message(error)
        variable = _variable_for(key, from_environment or {})
        problems.append((key, f"{message} (from the environment: {variable})" if variable
                         else message))
    return problems


def _variable_for(key: str, from_environment: Mapping[str, str]) -> str | None:
    for path, variable in from_environment.items():
        if key == path or key.startswith(path + ".") or key.startswith(path + "["):
            return variable
    return None


def _environment_keys(model: type[BaseModel], environ: Mapping[str, str],
                      ) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The config keys that ``FRONTDESK_<SECTION>__<KEY>`` variables set (key -> variable
    name), and a problem for each such variable that names no key. A ``FRONTDESK_`` variable
    without ``__`` (``FRONTDESK_CONFIG``) is not a key and is left alone."""
    keys: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX):]:
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        key = ".".join(path)
        if _names_a_key(model, path):
            keys[key] = name
        else:
            problems.append((key, f"unknown key (from the environment: {name})"))
    return keys, problems


def _names_a_key(model: type[BaseModel], path: list[str]) -> bool:
    current: Any = model
    for depth, part in enumerate(path):
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            # a table of free-form keys ([saved_replies] names) takes any name below it
            return depth > 0 and typing.get_origin(current) is dict
        fields = {(f.alias or name).lower(): f for name, f in current.model_fields.items()}
        field = fields.get(part)
        if field is None:
            return False
        current = _model_of(field.annotation)
    return True


def _model_of(annotation: Any) -> Any:
    """The model (or dict) a field holds, looking through ``X | None``."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        if typing.get_origin(candidate) is dict:
            return candidate
    return annotation


def load_settings(path: Path | str, model: type[S], *, require_file: bool = True,
                  check_template: TemplateCheck | None = None,
                  environ: Mapping[str, str] = os.environ) -> S:
    """Read and validate the config file plus environment overrides as ``model`` (the whole
    configuration, composed above this layer), or raise ConfigError.

    ``check_template`` checks the message templates' wording (see :data:`TemplateCheck`)."""
    path = Path(path)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), [("", f"not valid TOML: {exc}")]) from None
        except OSError as exc:
            raise ConfigError(str(path), [("", f"cannot read: {exc.strerror}")]) from None
    elif require_file:
        raise ConfigError(
            str(path), [("", "no such config file; `frontdesk init` writes a starter one")]
        )
    from_environment, unknown = _environment_keys(model, environ)
    try:
        env_settings = _with_environment(model)(**data)
    except ValidationError as exc:
        raise ConfigError(str(path), unknown + problems_of(exc, from_environment)) from None
    if unknown:
        raise ConfigError(str(path), unknown)
    try:
        return model.model_validate(env_settings.model_dump(by_alias=True),
                                    context={"check_template": check_template,
                                             "base_dir": path.resolve().parent})
    except ValidationError as exc:
        raise ConfigError(str(path), problems_of(exc, from_environment)) from None


__all__ = ["ConfigError", "InitSettingsSource", "load_settings", "resolve_path"]
