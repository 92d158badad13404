"""Kim et al. 2018 Table 2: the demographics of a corpus, people counted by gender, ethnicity (our
appearance group), first language and age group in each split, beside the paper's own table
(its user-study dataset and its annotated VoxCeleb test set). `eval association` writes it as
demographics.md and into report.md."""

from __future__ import annotations

from pathlib import Path

from facevoice.service.corpus import read_manifest

# (attribute, its heading, the order its values are shown in; others follow, sorted). The appearance
# group is the ethnicity analogue (Kim's "ethnicity" column), first language Kim's "fluency"
COLUMNS = (("gender", "gender", ("male", "female")),
           ("appearance_group", "group", ("A", "B", "C", "D", "E")),
           ("first_language", "first language", ("native", "non-native")),
           ("age_group", "age", ("<30", "30s", "40s", "50s", ">=60")))
SPLITS = ("train", "val", "test")
UNRECORDED = "not recorded"

# Kim et al. Table 2, verbatim: ethnicity 1 American Indian, 2 Asian and Pacific Islander, 3 black
# or African American, 4 Hispanic or Latino, 5 non-Hispanic white, 6 others; fluency Y: English
# is the first language
KIM_TABLE2_COLUMNS = ("m.", "f.", "1", "2", "3", "4", "5", "6", "Y", "N",
                      "≤19", "20s", "30s", "40s", "50s", "60s", "70s", "≥80")
KIM_TABLE2 = {"Kim et al. user study (181 people)": (95, 86, 5, 30, 14, 15, 97, 20, 134, 47,
                                                     6, 101, 53, 14, 4, 3, 0, 0),
              "Kim et al. VoxCeleb test (250 people)": (150, 100, 1, 10, 19, 13, 189, 18, 223, 27,
                                                        2, 27, 77, 58, 43, 21, 14, 8)}
# Kim's age columns summed into our groups (<30 = ≤19 + 20s, >=60 = 60s + 70s + ≥80)
KIM_AGE_BINS = {"<30": ("≤19", "20s"), "30s": ("30s",), "40s": ("40s",), "50s": ("50s",),
                ">=60": ("60s", "70s", "≥80")}


def demographics(corpus: Path) -> dict:
    """{"columns": {attribute: [values]}, "splits": {split: {"people": n, attribute: {value: n}}}}:
    people (distinct identities, each counted once by the attributes of its first manifest row)
    per split and over all ("all"); a person without a value counts as "not recorded"."""
    people: dict[str, tuple[str, dict[str, str]]] = {}
    for item in read_manifest(corpus):
        people.setdefault(item.identity, (item.split, item.attributes()))
    found = {attr: {a.get(attr) or UNRECORDED for _, a in people.values()} for attr, _, _ in COLUMNS}
    columns = {attr: [v for v in order if v in found[attr]]
               + sorted(v for v in found[attr] if v not in order and v != UNRECORDED)
               + ([UNRECORDED] if UNRECORDED in found[attr] else [])
               for attr, _, order in COLUMNS}
    splits = [s for s in SPLITS if any(p[0] == s for p in people.values())]
    splits += sorted({p[0] for p in people.values()} - set(splits))
    table = {}
    for split in [*splits, "all"]:
        chosen = [a for s, a in people.values() if split in ("all", s)]
        table[split] = {"people": len(chosen),
                        **{attr: {v: sum((a.get(attr) or UNRECORDED) == v for a in chosen) for v in values}
                           for attr, values in columns.items()}}
    return {"corpus": str(corpus), "columns": columns, "splits": table}


def _kim_rebinned(row: tuple[int, ...]) -> dict[str, int]:
    value = dict(zip(KIM_TABLE2_COLUMNS, row, strict=True))
    return {ours: sum(value[k] for k in theirs) for ours, theirs in KIM_AGE_BINS.items()}


def demographics_lines(d: dict, name: str = "this corpus") -> list[str]:
    """Table 2 as Markdown: our counts per split, then Kim et al.'s rows as printed, then their age
    columns summed into our groups beside our test split's shares."""
    cols = [(attr, v) for attr, _, _ in COLUMNS for v in d["columns"][attr]]
    heading = {attr: title for attr, title, _ in COLUMNS}
    lines = [f"People of {name} (`{d['corpus']}`) by split; each cell counts people, not items. `group` is "
             "the appearance group, our ethnicity analogue; `first language` is Kim's fluency.", "",
             "| split | people | " + " | ".join(f"{heading[a]}: {v}" for a, v in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for split, row in d["splits"].items():
        lines.append(f"| {split} | {row['people']} | " + " | ".join(str(row[a][v]) for a, v in cols) + " |")
    lines += ["", "Kim et al. Table 2 as printed (ethnicity 1 American Indian, 2 Asian and Pacific Islander, "
              "3 black or African American, 4 Hispanic or Latino, 5 non-Hispanic white, 6 others; fluency Y: "
              "English is the first language). Our appearance groups A-E are an ethnicity analogue with no "
              "one-to-one map onto 1-6 (docs/corpus.md).", "",
              "| dataset | " + " | ".join(KIM_TABLE2_COLUMNS) + " |", "|---|" + "---|" * len(KIM_TABLE2_COLUMNS)]
    lines += [f"| {k} | " + " | ".join(str(v) for v in row) + " |" for k, row in KIM_TABLE2.items()]
    ours = d["splits"].get("test") or d["splits"]["all"]
    label = "test" if "test" in d["splits"] else "all"
    groups = list(KIM_AGE_BINS)
    lines += ["", f"Shares (%) in our age groups and by gender and first language: Kim's ages summed "
              "(<30 = ≤19 + 20s, >=60 = 60s + 70s + ≥80) beside our "
              f"{label} split.", "",
              "| dataset | male | native | " + " | ".join(groups) + " |", "|---|---|---|" + "---|" * len(groups)]
    for k, row in KIM_TABLE2.items():
        total, age = row[0] + row[1], _kim_rebinned(row)
        lines.append(f"| {k} | {100 * row[0] / total:.0f} | {100 * row[8] / total:.0f} | "
                     + " | ".join(f"{100 * age[g] / total:.0f}" for g in groups) + " |")
    n = max(ours["people"], 1)
    share = lambda attr, v: f"{100 * ours[attr].get(v, 0) / n:.0f}"  # noqa: E731
    lines.append(f"| {name}, {label} ({ours['people']} people) | {share('gender', 'male')} | "
                 f"{share('first_language', 'native')} | " + " | ".join(share("age_group", g) for g in groups) + " |")
    return lines


def write_demographics(tables: list[tuple[str, dict]], path: Path) -> Path:
    """demographics.md: Table 2 of each (name, demographics) corpus."""
    text = ["# Demographics (Kim et al. 2018 Table 2)", ""]
    for name, d in tables:
        text += [f"## {name}", "", *demographics_lines(d, name), ""]
    path.write_text("\n".join(text))
    return path
