"""report.md and the closing summary of `facevoice eval association`, from metrics.json."""

from __future__ import annotations

from pathlib import Path

from facevoice.training.association.protocol import MATCH_CONTROLS
from facevoice.training.association.trials import LARGEST_GROUP

# Kim et al. Table 3. Its G/E/F/A column draws both people from the single largest homogeneous
# group (sec. 4.4), which is our `largest group` row, not our G/E/F/A row (any cohort)
KIM_TABLE3 = {"v2f": {"-": 0.782, "G": 0.629, "E": 0.764, "G/E": 0.616, LARGEST_GROUP: 0.590},
              "f2v": {"-": 0.786, "G": 0.616, "E": 0.767, "G/E": 0.612, LARGEST_GROUP: 0.568}}
ARROW = {"v2f": "V→F", "f2v": "F→V"}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _ci(ci) -> str:
    return f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}"


def matching_lines(m: dict) -> list[str]:
    oracle = m.get("oracle") or {}
    lines = ["| direction | control | chance | model | 95% CI (trials) | 95% CI (identity bootstrap) "
             "| trials | identities | oracle | Kim et al. Table 3 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for d in ("v2f", "f2v"):
        for c in MATCH_CONTROLS:
            cell = m["matching"][d].get(c)
            if cell is None:
                lines.append(f"| {ARROW[d]} | {c} | 50.0 | n/a (the test set cannot form these trials) "
                             "| | | | | | |")
                continue
            lines.append(f"| {ARROW[d]} | {c} | 50.0 | **{_pct(cell['accuracy'])}** | {_ci(cell['ci95'])} | "
                         f"{_ci(cell['ci95_identity_bootstrap'])} | {cell['trials']} | {cell['identities']} | "
                         f"{_pct(oracle.get(d, {}).get(c))} | {_pct(KIM_TABLE3[d].get(c))} |")
    return lines


def retrieval_lines(r: dict) -> list[str]:
    ks = sorted(int(k) for k in next(iter(r["random"].values())))
    lines = ["| direction | set size | sets | " + " | ".join(f"R@{k}" for k in ks) + " | mAP |",
             "|---|---|---|" + "---|" * (len(ks) + 1)]
    for size in r["sizes"]:
        for d in ("v2f", "f2v"):
            row = r[d][size]
            lines.append(f"| {ARROW[d]} | {size} | {r['sets'][size]} | "
                         + " | ".join(_pct(row[k]) for k in ks) + f" | {_pct(r['map'][d][size])} |")
        lines.append(f"| random | {size} | | " + " | ".join(_pct(r["random"][size][k]) for k in ks)
                     + f" | {_pct(r['random_map'][size])} |")
        for d in ("v2f", "f2v"):
            if f"oracle_{d}" in r:
                lines.append(f"| oracle {ARROW[d]} | {size} | | "
                             + " | ".join(_pct(r[f"oracle_{d}"][size][k]) for k in ks) + " | |")
    return lines


def probe_lines(p: dict) -> list[str]:
    lines = ["| attribute | class | face AP ± 99% CI | voice AP ± 99% CI | chance (prevalence) |",
             "|---|---|---|---|---|"]
    for attr, by_mod in p.items():
        for c in sorted(set(by_mod.get("face", {})) | set(by_mod.get("voice", {}))):
            f, v = by_mod.get("face", {}).get(c), by_mod.get("voice", {}).get(c)
            cell = lambda x: "–" if x is None else f"{100 * x['ap']:.1f} ± {100 * x['ci99']:.1f}"  # noqa: E731
            chance = (f or v)["chance"]
            lines.append(f"| {attr} | {c} | {cell(f)} | {cell(v)} | {100 * chance:.1f} |")
    return lines


LINK_NAMES = {"face_width": "face width (<- z_size)", "face_nose_width": "nose width (<- z_nasal)",
              "face_age": "apparent age", "voice_pitch": "pitch (<- z_size, age)",
              "voice_variant_score": "variant score (<- z_nasal)", "voice_speed": "speaking rate (<- age)",
              "z_size": "z_size (shared; best r from one side 0.55)",
              "z_nasal": "z_nasal (shared; best r from one side 0.55)", "age": "age (shared)"}


def link_lines(links: dict) -> list[str]:
    lines = ["| generator number | from faces: r ± 99% CI | from voices: r ± 99% CI |", "|---|---|---|"]
    names = list(dict.fromkeys([*links.get("face", {}), *links.get("voice", {})]))
    for name in names:
        cells = [links.get(m, {}).get(name) for m in ("face", "voice")]
        lines.append(f"| {LINK_NAMES.get(name, name)} | "
                     + " | ".join("–" if c is None else f"{c['r']:.2f} ± {c['ci99']:.2f}" for c in cells) + " |")
    return lines


def label_provenance(backbones: dict) -> str:
    """Which attribute labels the model saw: the association loss uses none; a backbone from
    `train backbones --attributes` saw those of the training identities."""
    seen = {m: b["trained_on"]["attributes"] for m, b in backbones.items()
            if (b.get("trained_on") or {}).get("attributes")}
    if not seen:
        return "No attribute label was used in training."
    return ("The association training used no attribute label, but its backbones were pretrained with "
            + "; ".join(f"the {m} backbone on {', '.join(a)}" for m, a in seen.items())
            + " of the training identities (docs/association.md, deviations), so probes of those attributes "
            "measure what pretraining put there as much as what association learned.")


def write_report(m: dict, path: Path) -> Path:
    v = m["verification"]
    lg = m["matching"].get("largest_group")
    one = m["one_of_n"]
    ns = sorted(int(n) for n in next(iter(one.values())))
    text = [
        f"# Association model evaluation: {m['run']}",
        "",
        f"Checkpoint `{m['checkpoint']}` (step {m['step']}, config `{m['config']}`, trained direction "
        f"`{m['trained_direction']}`), corpus `{m['corpus']}`, split `{m['split']}`: {m['identities']} identities, "
        f"{m['faces']} faces, {m['voices']} voice clips. Protocols: Kim et al. 2018 sec. 4.4-4.5.",
        "",
        "## 1:2 matching (Table 3)",
        "",
        "Pick the candidate closer to the probe in L2. The impostor shares the control's attributes "
        "(G gender, E appearance group, F first language, A age group). `largest group` is Kim's "
        "G/E/F/A setting: both people from the largest homogeneous cohort"
        + (f" ({', '.join(f'{k}={x}' for k, x in lg['attributes'].items())}, {lg['identities']} identities)."
           if lg else "."),
        "The trial interval treats trials as independent; the identity bootstrap resamples people, "
        "which is the honest one on a small test set. Oracle: the generator's exact posterior (synthetic "
        "corpora only).",
        "",
        *matching_lines(m),
        "",
        "![matching](matching.png)",
        "",
        "## 1:N matching, no control",
        "",
        "| direction | " + " | ".join(f"N={n}" for n in ns) + " |",
        "|---|" + "---|" * len(ns),
        *[f"| {ARROW[d]} | " + " | ".join(_pct(one[d][n]) for n in ns) + " |" for d in one],
        "| chance | " + " | ".join(_pct(1 / n) for n in ns) + " |",
        "",
        "![1:N](one_of_n.png)",
        "",
        "## Verification",
        "",
        f"All {v['pairs']} voice-face pairs ({v['positives']} same identity), score = -L2 distance: "
        f"ROC AUC **{v['auc']:.3f}** (chance 0.5), EER **{100 * v['eer']:.1f}%** (chance 50%).",
        "",
        "![ROC](roc.png)",
        "",
        "## Retrieval (Table 6)",
        "",
        "Test pairs split into disjoint sets; within a set each voice queries the set's faces (V→F) "
        "and each face the voices (F→V). A hit is any item of the true identity in the top K.",
        "",
        *retrieval_lines(m["retrieval"]),
        "",
        "![recall](recall.png)",
        "",
        "## Linear probes (Table 4)",
        "",
        "One-vs-rest linear SVMs on standardised representations; holdouts split identities in half. "
        + label_provenance(m.get("backbones", {})),
        "",
        *probe_lines(m["probes"]),
        "",
        *(["## Within-gender links (synthetic corpora)", "",
           "Ridge regression from each side's representation to the generator's per-person numbers, "
           "fitted on half of one gender's identities and scored (Pearson r) on the other half, averaged "
           "over both genders and the holdouts. Chance is 0; a model that only separates gender reads "
           "about 0. The face side draws face width from z_size and nose width from z_nasal, the voice side "
           "pitch from z_size (and age) and its variant from z_nasal, each with r 0.55 (docs/corpus.md).",
           "", *link_lines(m["links"]), ""] if m.get("links") else []),
        "## t-SNE (Fig. 1, Fig. 2)",
        "",
        *[f"![{f}]({f})" for f in m["figures"] if f.startswith("fig")],
        "",
    ]
    path.write_text("\n".join(text))
    return path


def format_summary(m: dict, out: Path) -> str:
    oracle = m.get("oracle") or {}
    lines = [f"association evaluation of {m['run']} on {m['identities']} {m['split']} identities -> {out}",
             "  1:2 accuracy %   " + "  ".join(f"{c:>8}" for c in MATCH_CONTROLS)]
    for d in ("v2f", "f2v"):
        cells = m["matching"][d]
        lines.append(f"  {ARROW[d]} model      " + "  ".join(
            f"{_pct(cells[c]['accuracy'] if cells.get(c) else None):>8}" for c in MATCH_CONTROLS))
        if oracle:
            lines.append(f"  {ARROW[d]} oracle     " + "  ".join(
                f"{_pct(oracle.get(d, {}).get(c)):>8}" for c in MATCH_CONTROLS))
    v, r = m["verification"], m["retrieval"]
    size = r["sizes"][0]
    lines.append(f"  verification AUC {v['auc']:.3f}, EER {100 * v['eer']:.1f}%; "
                 f"R@10 at set size {size}: V→F {_pct(r['v2f'][size][10])}, F→V {_pct(r['f2v'][size][10])} "
                 f"(random {_pct(r['random'][size][10])})")
    lines.append(f"  report.md, metrics.json, {len(m['figures'])} figures")
    return "\n".join(lines)
