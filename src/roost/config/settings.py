"""Effective settings: main.cf over the parameter table, typed and validated.

:class:`Settings` is immutable. It answers typed questions (``settings.integer("x")``),
expands ``$name`` lazily and caches the result, and gives per-service views where
``service/name`` overrides apply. :func:`load_settings` reads a file and validates every
parameter, so a running daemon never meets a value it cannot use.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final, TypeVar

from roost.config.expand import ExpansionError, expand, references
from roost.config.maincf import Entry, Problem, parse_main_cf
from roost.config.parameters import PARAMETERS, SERVICE_DEFAULTS, SERVICES, Parameter
from roost.config.types import (
    ParamType,
    parse_boolean,
    parse_integer,
    parse_list,
    parse_size,
    parse_table_refs,
    parse_time,
)

__all__ = ["DEFAULT_CONFIG", "ConfigError", "Settings", "config_path", "load_settings"]

V = TypeVar("V")

#: Where main.cf is when neither ``-c`` nor ``ROOST_CONFIG`` says otherwise.
DEFAULT_CONFIG: Final = Path("/etc/roost/main.cf")


class ConfigError(Exception):
    """The configuration cannot be used.

    Attributes:
        problems: every error found, each printable as ``FILE:LINE: NAME: reason``.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def config_path(option: str | None) -> Path:
    """Choose main.cf: the ``-c`` option, else ``$ROOST_CONFIG``, else /etc/roost/main.cf.

    ``-c`` may name the file or its directory, as Postfix's ``-c config_dir`` does.
    """
    chosen = option or os.environ.get("ROOST_CONFIG") or str(DEFAULT_CONFIG)
    path = Path(chosen)
    path = path.absolute()
    return path / "main.cf" if path.is_dir() else path


class Settings:
    """The effective value of every parameter.

    Args:
        entries: main.cf's entries in file order (later ones win).
        path: the file they came from (None: defaults only).
        service: the service whose ``service/name`` overrides apply (None: main.cf only).
    """

    def __init__(
        self,
        entries: Iterable[Entry] = (),
        *,
        path: Path | None = None,
        service: str | None = None,
    ) -> None:
        self.path = path
        self.service = service
        self._entries: tuple[Entry, ...] = tuple(entries)
        self._set: dict[str, Entry] = {}
        for entry in self._entries:
            self._set[entry.name] = entry
        if service is not None:
            prefix = f"{service}/"
            for entry in self._entries:
                if entry.name.startswith(prefix):
                    self._set[entry.name[len(prefix) :]] = entry
        self._cache: dict[str, str] = {}
        self._expanding: list[str] = []

    # --- raw values -------------------------------------------------------------------

    @property
    def entries(self) -> tuple[Entry, ...]:
        """main.cf's entries in file order, overrides included."""
        return self._entries

    def for_service(self, service: str) -> Settings:
        """Return the view of one service, with its ``service/name`` overrides applied."""
        return Settings(self._entries, path=self.path, service=service)

    def is_set(self, name: str) -> bool:
        """Tell whether main.cf (or this service's override) sets ``name``."""
        return name in self._set

    def service_default(self, name: str) -> str | None:
        """Return this service's master.cf-like default of ``name``, if it has one."""
        return SERVICE_DEFAULTS.get(self.service or "", {}).get(name)

    def entry(self, name: str) -> Entry | None:
        """Return the main.cf entry that sets ``name``, or None for a default."""
        return self._set.get(name)

    def raw(self, name: str) -> str:
        """Return the unexpanded value: the setting, else the table's default, else ""."""
        entry = self._set.get(name)
        if entry is not None and (self.service is None or "/" in entry.name):
            return entry.value
        if self.service is not None:
            service_default = SERVICE_DEFAULTS.get(self.service, {}).get(name)
            if service_default is not None:
                return service_default
            if entry is not None:
                return entry.value
        if name == "config_directory" and self.path is not None:
            return str(self.path.parent)
        parameter = PARAMETERS.get(name)
        if parameter is None:
            return ""
        return parameter.default_text(self.expand)

    def expand(self, name: str) -> str:
        """Return the value of ``name`` with every ``$`` form expanded.

        Raises:
            ConfigError: a reference loop or unbalanced braces, naming the parameter.
        """
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        if name in self._expanding:
            loop = " -> ".join([*self._expanding[self._expanding.index(name) :], name])
            raise self._error(name, f"parameter refers to itself: {loop}")
        self._expanding.append(name)
        try:
            value = expand(self.raw(name), self.expand)
        except ExpansionError as exc:
            raise self._error(name, str(exc)) from None
        finally:
            self._expanding.pop()
        self._cache[name] = value
        return value

    # --- typed values -------------------------------------------------------------------

    def string(self, name: str) -> str:
        """Return a string parameter, expanded."""
        return self._typed(name, ParamType.STRING, str)

    def integer(self, name: str) -> int:
        """Return an integer parameter."""
        return self._typed(name, ParamType.INTEGER, self._parse_integer(name))

    def boolean(self, name: str) -> bool:
        """Return a yes/no parameter."""
        return self._typed(name, ParamType.BOOLEAN, parse_boolean)

    def seconds(self, name: str) -> int:
        """Return a time parameter in seconds."""
        unit = PARAMETERS[name].time_unit if name in PARAMETERS else "s"
        return self._typed(name, ParamType.TIME, lambda text: parse_time(text, default_unit=unit))

    def size(self, name: str) -> int:
        """Return a size parameter in bytes."""
        return self._typed(name, ParamType.SIZE, parse_size)

    def strings(self, name: str) -> tuple[str, ...]:
        """Return a list parameter split on commas and whitespace."""
        return self._typed(name, ParamType.LIST, parse_list)

    def tables(self, name: str) -> tuple[str, ...]:
        """Return a lookup-table parameter as ``type:name`` references."""
        return self._typed(name, ParamType.TABLE, parse_table_refs)

    def path_of(self, name: str) -> Path:
        """Return a string parameter holding a file or directory name as a Path."""
        return Path(self.string(name))

    # --- validation ---------------------------------------------------------------------

    def problems(self) -> list[Problem]:
        """Check every parameter; return the errors and warnings, in file order.

        Unknown names are warnings naming the closest known name, unless another value
        refers to them with ``$name`` (user-defined parameters, as Postfix allows).
        """
        found: list[Problem] = []
        referenced = {ref for entry in self._entries for ref in references(entry.value)}
        for entry in self._entries:
            service, _, base = entry.name.rpartition("/")
            if service and service not in SERVICES:
                found.append(
                    self._problem(
                        entry, f"unknown service {service!r} (known: {', '.join(SERVICES)})"
                    )
                )
            if base not in PARAMETERS and entry.name not in referenced:
                close = difflib.get_close_matches(base, PARAMETERS, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                found.append(self._problem(entry, f"unknown parameter{hint}", warning=True))
        views = [self] + [self.for_service(s) for s in SERVICES if self._has_overrides(s)]
        seen: set[tuple[str, int, str]] = set()
        for view in views:
            for parameter in PARAMETERS.values():
                try:
                    view.check(parameter)
                except ConfigError as exc:
                    for problem in exc.problems:
                        key = (problem.file, problem.line, problem.reason)
                        if key not in seen:
                            seen.add(key)
                            found.append(problem)
        found.sort(key=lambda p: (p.file, p.line))
        return found

    def check(self, parameter: Parameter) -> None:
        """Parse one parameter's value as its type.

        Raises:
            ConfigError: the value is invalid.
        """
        getters: Mapping[ParamType, Callable[[str], object]] = {
            ParamType.STRING: self.string,
            ParamType.INTEGER: self.integer,
            ParamType.BOOLEAN: self.boolean,
            ParamType.TIME: self.seconds,
            ParamType.SIZE: self.size,
            ParamType.LIST: self.strings,
            ParamType.TABLE: self.tables,
        }
        getters[parameter.type](parameter.name)

    # --- helpers ------------------------------------------------------------------------

    def _has_overrides(self, service: str) -> bool:
        return any(entry.name.startswith(f"{service}/") for entry in self._entries)

    def _parse_integer(self, name: str) -> Callable[[str], int]:
        minimum = PARAMETERS[name].minimum if name in PARAMETERS else None
        return lambda text: parse_integer(text, minimum=minimum)

    def _typed(self, name: str, kind: ParamType, parse: Callable[[str], V]) -> V:
        parameter = PARAMETERS.get(name)
        if parameter is not None and parameter.type is not kind:
            raise TypeError(f"{name} is a {parameter.type.value}, not a {kind.value}")
        text = self.expand(name)
        try:
            value = parse(text)
        except ValueError as exc:
            raise self._error(name, str(exc)) from None
        if parameter is not None and parameter.choices is not None:
            words = [text] if kind is ParamType.STRING else list(parse_list(text))
            allowed = {choice.lower() for choice in parameter.choices}
            for word in words:
                if word.lower() not in allowed:
                    raise self._error(
                        name, f"bad value {word!r} (allowed: {', '.join(parameter.choices)})"
                    )
        return value

    def _problem(self, entry: Entry, reason: str, *, warning: bool = False) -> Problem:
        return Problem(str(self.path or ""), entry.line, entry.name, reason, warning)

    def error(self, name: str, reason: str) -> ConfigError:
        """Return a ConfigError about ``name`` located at its main.cf line (or default)."""
        return self._error(name, reason)

    def _error(self, name: str, reason: str) -> ConfigError:
        entry = self._set.get(name)
        if entry is not None:
            return ConfigError([self._problem(entry, reason)])
        return ConfigError([Problem(str(self.path or ""), 0, name, f"{reason} (default value)")])


def load_settings(path: Path) -> tuple[Settings, list[Problem]]:
    """Read and validate main.cf.

    Args:
        path: the main.cf file.

    Returns:
        The settings and the warnings found (unknown or repeated names).

    Raises:
        ConfigError: the file is missing or unreadable, has a syntax error, or a value is
            invalid; every error is listed, each as ``FILE:LINE: NAME: reason``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [Problem(str(path), 0, "", "configuration file does not exist")]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([Problem(str(path), 0, "", f"cannot read: {reason}")]) from None
    entries, problems = parse_main_cf(text, str(path))
    settings = Settings(entries, path=path)
    problems.extend(settings.problems())
    problems.sort(key=lambda p: p.line)
    errors = [p for p in problems if not p.warning]
    if errors:
        raise ConfigError(errors)
    return settings, [p for p in problems if p.warning]
