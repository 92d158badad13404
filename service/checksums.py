"""`checksums.sha256`: one SHA-256 per file of a directory, in `sha256sum`'s format (so
`sha256sum -c checksums.sha256` checks it too). Index versions and model repositories carry one;
whatever reads them refuses a file whose digest does not match."""

from __future__ import annotations

import hashlib
from pathlib import Path

from facevoice.service.errors import FormatError

NAME = "checksums.sha256"


class ChecksumMismatch(FormatError):
    """A file that is not the one recorded: changed, damaged, or missing."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree(root: Path) -> list[str]:
    """Every file under ROOT (relative, '/'-separated, sorted), less the checksums themselves,
    hidden files (an interrupted writer's `.tmp`) and `__pycache__` (Triton's python backend
    writes one beside each model.py it runs)."""
    root = Path(root)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.name != NAME and not any(part.startswith(".") or part == "__pycache__"
                                                                  for part in p.relative_to(root).parts))


def write(root: Path, files: list[str] | None = None) -> dict[str, str]:
    """Writes ROOT/checksums.sha256 for FILES (default: the whole tree); returns {file: digest}."""
    root = Path(root)
    digests = {f: sha256(root / f) for f in (tree(root) if files is None else files)}
    tmp = root / f".{NAME}.tmp"
    tmp.write_text("".join(f"{d}  {f}\n" for f, d in digests.items()))
    tmp.replace(root / NAME)
    return digests


def read(root: Path) -> dict[str, str]:
    """{file: digest} from ROOT/checksums.sha256; ChecksumMismatch when it is missing or malformed."""
    path = Path(root) / NAME
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ChecksumMismatch(f"{path}: no checksums ({type(e).__name__}: {e})") from e
    digests = {}
    for n, line in enumerate(lines, 1):
        digest, sep, fname = line.partition("  ")
        if not sep or len(digest) != 64 or not fname or fname.startswith("/") or ".." in fname.split("/"):
            raise ChecksumMismatch(f"{path}:{n}: not a `sha256sum` line")
        digests[fname] = digest
    return digests


def verify(root: Path, digests: dict[str, str], progress=None) -> int:
    """Checks each file of DIGESTS under ROOT; ChecksumMismatch naming the first that differs.
    PROGRESS, when given, is called once per file checked. Returns how many were checked."""
    root = Path(root)
    for fname, digest in digests.items():
        path = root / fname
        if not path.is_file():
            raise ChecksumMismatch(f"{path}: missing (its SHA-256 is recorded)")
        actual = sha256(path)
        if actual != digest:
            raise ChecksumMismatch(f"{path}: SHA-256 {actual[:12]}... does not match the recorded {digest[:12]}... "
                                   "(changed or damaged: restore it, or export again)")
        if progress is not None:
            progress()
    return len(digests)


def main(argv: list[str]) -> int:
    """`python -m facevoice.service.checksums write|verify DIR`."""
    from facevoice.service.errors import UsageError

    if len(argv) != 2 or argv[0] not in ("write", "verify"):
        raise UsageError("usage: python -m facevoice.service.checksums write|verify DIR")
    where = Path(argv[1])
    try:
        n = len(write(where)) if argv[0] == "write" else verify(where, read(where))
    except OSError as e:
        raise ChecksumMismatch(f"{where}: {e}") from e
    print(f"{where / NAME}: {n} files {'recorded' if argv[0] == 'write' else 'match'}")
    return 0


if __name__ == "__main__":
    import sys

    from facevoice.cli import run_script

    run_script(lambda: main(sys.argv[1:]), "python -m facevoice.service.checksums")
