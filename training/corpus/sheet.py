"""What a person looks at and listens to: a contact sheet PNG and a static listening page."""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

from facevoice.service.corpus import Item, read_manifest

LABEL_W = 150


def _by_identity(corpus: Path) -> dict[str, list[Item]]:
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in read_manifest(corpus):
        groups[item.identity].append(item)
    return dict(sorted(groups.items()))


def _label(items: list[Item]) -> str:
    i = items[0]
    return f"{i.identity}\n{i.gender} {i.age_group}\ngroup {i.appearance_group}\n{i.first_language}"


def contact_sheet(corpus: Path, out: Path, n_identities: int = 8, tile: int = 112) -> Path:
    """Rows of identities: label, canonical face, then the face images."""
    rows = list(_by_identity(corpus).items())[:n_identities]
    n_cols = max(sum(i.modality != "voice" for i in items) for _, items in rows)
    sheet = Image.new("RGB", (LABEL_W + n_cols * tile, len(rows) * tile), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (_, items) in enumerate(rows):
        draw.multiline_text((6, r * tile + 20), _label(items), fill="black")
        faces = sorted((i for i in items if i.modality != "voice"),
                       key=lambda i: (i.modality != "canonical_face", i.item_id))
        for c, item in enumerate(faces):
            with Image.open(Path(corpus) / item.path) as img:
                sheet.paste(img.convert("RGB").resize((tile, tile)), (LABEL_W + c * tile, r * tile))
    draw.text((LABEL_W + 4, 2), "canonical", fill="black")
    sheet.save(out)
    return out


def listening_page(corpus: Path, out: Path, n_identities: int = 40) -> Path:
    """A static HTML page: each identity's faces beside its voice clips (open it in a browser)."""
    rows = []
    for _, items in list(_by_identity(corpus).items())[:n_identities]:
        imgs = "".join(f'<img src="{html.escape(i.path)}" width="96">' for i in items
                       if i.modality != "voice")
        clips = "".join(f'<audio controls preload="none" src="{html.escape(i.path)}"></audio>'
                        for i in items if i.modality == "voice")
        label = html.escape(_label(items)).replace("\n", "<br>")
        rows.append(f"<tr><td>{label}</td><td>{imgs}</td><td>{clips}</td></tr>")
    out.write_text("<!doctype html><meta charset=utf-8><title>facevoice corpus</title>"
                   "<table border=1 cellpadding=4>" + "".join(rows) + "</table>\n")
    return out
