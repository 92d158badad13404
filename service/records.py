"""What every small JSON file's owner shares (corpus.json, run.json, an index version's
meta.json, release.json, ...): one frozen dataclass per file, with a format version, read and
written only through it. A subclass names its file and its version key; `details` holds what a
writer records and no reader needs by name, at the top level of the file beside the named fields
(a named field wins over a detail of the same name)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import ClassVar, Self

from facevoice.service.errors import FormatError


class JsonRecord:
    """A mixin for a frozen dataclass with a `details: dict` field."""

    FILE: ClassVar[str]  # the file's name in its directory
    WHAT: ClassVar[str]  # what it is, for errors: "a corpus's corpus.json"
    VERSION_KEY: ClassVar[str] = "format_version"
    VERSION: ClassVar[int] = 1  # the newest format this code reads and writes
    HINT: ClassVar[str] = ""  # what to do about a file that is not one (appended to the error)

    def to_dict(self) -> dict:
        named = {f.name: self._plain(f.name) for f in fields(self) if f.name != "details"}
        return {**self.details, **named, self.VERSION_KEY: self.VERSION}

    def _plain(self, name: str):
        """A named field as JSON holds it (a subclass converts nested dataclasses)."""
        return getattr(self, name)

    @classmethod
    def upgrade(cls, d: dict) -> dict:
        """An older layout of the file as today's (a subclass's hook); today's as it is."""
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        """ValueError / TypeError / KeyError on anything but this format (a version from before
        the key existed reads as 1)."""
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        version = d.get(cls.VERSION_KEY, 1)
        if not isinstance(version, int) or not 1 <= version <= cls.VERSION:
            raise ValueError(f"format {version!r}, this version reads 1 to {cls.VERSION}")
        d = cls.upgrade({k: v for k, v in d.items() if k != cls.VERSION_KEY})
        named = {f.name for f in fields(cls)} - {"details"}
        return cls(**{k: v for k, v in d.items() if k in named}, details={k: v for k, v in d.items() if k not in named})

    def write(self, directory: Path) -> Path:
        """DIRECTORY/FILE, replaced atomically (a reader never sees half of it)."""
        path = Path(directory) / self.FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{self.FILE}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, directory: Path) -> Self:
        """FormatError naming the file when it is missing or not one."""
        path = Path(directory) / cls.FILE
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise FormatError(f"{path}: not {cls.WHAT} ({type(e).__name__}: {e}){cls.HINT}") from e

    @classmethod
    def find(cls, directory: Path) -> Self | None:
        """The record, or None when DIRECTORY has no FILE (made by hand, or by an older version)."""
        return cls.read(directory) if (Path(directory) / cls.FILE).exists() else None
