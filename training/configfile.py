"""Configs are TOML files (a named one shipped with the package, or any path) plus
`section.key=value` overrides from the command line; each section is a frozen dataclass. What
cannot be a config (an unknown key, a bad value, an unreadable file) is a UsageError."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path

from facevoice.service.errors import UsageError


def build_section(kind, values: dict):
    """One dataclass from a TOML table; lists become tuples, unknown keys are an error."""
    known = {f.name for f in fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise UsageError(f"unknown {kind.__name__} keys: {', '.join(sorted(unknown))}")
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def build_config(cls, sections: dict, d: dict):
    """`cls(name=..., **one dataclass per section)` from a dict; unknown sections are an error."""
    unknown = set(d) - {"name", *sections}
    if unknown:
        raise UsageError(f"unknown config sections: {', '.join(sorted(unknown))}")
    return cls(name=d.get("name", "custom"), **{k: build_section(kind, d.get(k, {})) for k, kind in sections.items()})


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a string


def read_config(config_dir: Path, name_or_path: str, overrides: Iterable[str], sections: Iterable[str]) -> dict:
    """A named config in `config_dir` or a TOML file, then `section.key=value` overrides, as a dict."""
    sections = tuple(sections)
    path = Path(config_dir) / f"{name_or_path}.toml"
    if not path.exists():
        path = Path(name_or_path)
    if not path.exists():
        names = ", ".join(sorted(p.stem for p in Path(config_dir).glob("*.toml")))
        raise UsageError(f"no config {name_or_path!r}: give one of {names} or a TOML file")
    try:
        d = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"config {path}: not a readable TOML file ({e})") from e
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in sections:
            raise UsageError(f"override {item!r}: expected section.key=value, section one of "
                             f"{', '.join(sections)}")
        d.setdefault(section, {})[name] = _parse_value(value.strip())
    return d
