"""report.md and the closing summary of `facevoice eval association`, from metrics.json."""

from __future__ import annotations

from pathlib import Path

from facevoice.training.association.demographics import demographics_lines
from facevoice.training.association.protocol import MATCH_CONTROLS
from facevoice.training.association.trials import LARGEST_GROUP

# Kim et al. Table 3. Its G/E/F/A column draws both people from the single largest homogeneous
# group (sec. 4.4), which is our `largest group` row, not our G/E/F/A row (any cohort)
KIM_TABLE3 = {"v2f": {"-": 0.782, "G": 0.629, "E": 0.764, "G/E": 0.616, LARGEST_GROUP: 0.590},
              "f2v": {"-": 0.786, "G": 0.616, "E": 0.767, "G/E": 0.612, LARGEST_GROUP: 0.568}}
# Kim et al. Table 8: the VoxCeleb model on the user-study dataset (sec. 4.6), whose G/E/F/A column
# is that dataset's largest group as in Table 3
KIM_TABLE8 = {"v2f": {"-": 0.712, "G": 0.580, "E": 0.707, "G/E": 0.550, LARGEST_GROUP: 0.426},
              "f2v": {"-": 0.645, "G": 0.524, "E": 0.651, "G/E": 0.524, LARGEST_GROUP: 0.514}}
ARROW = {"v2f": "V→F", "f2v": "F→V"}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _ci(ci) -> str:
    return f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}"


def matching_lines(m: dict, kim: dict = KIM_TABLE3, kim_label: str = "Kim et al. Table 3") -> list[str]:
    oracle = m.get("oracle") or {}
    lines = ["| direction | control | chance | model | 95% CI (trials) | 95% CI (identity bootstrap) "
             f"| trials | identities | oracle | {kim_label} |",
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
                         f"{_pct(oracle.get(d, {}).get(c))} | {_pct(kim[d].get(c))} |")
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
              "z_nasal": "z_nasal (shared; best r from one side 0.55)", "age": "age (shared)",
              "measured_f0": "measured F0 (the speaker's median, log Hz, YIN; no generator needed)"}


def link_lines(links: dict) -> list[str]:
    lines = ["| per-person number | from faces: r ± 99% CI | from voices: r ± 99% CI |", "|---|---|---|"]
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


def f0_line(f0: dict | None) -> str:
    """What the measured F0 (Fig. 2, the measured link) found."""
    if not f0:
        return ""
    hz = ", ".join(f"{g} {x:.0f} Hz" for g, x in f0["median_hz"].items())
    r = ", ".join(f"{g} {x:.2f}" for g, x in f0["r_generator_pitch"].items())
    return (f"Measured F0 ({f0['estimator']}: each clip's median over its voiced frames, of the input the encoder "
            f"sees): {f0['voiced_clips']} of {f0['clips']} clips voiced; the speakers' median F0 {hz}"
            + (f"; Pearson r of the speaker's log F0 on the generator's pitch setting (espeak-ng -p): {r}."
               if r else "."))


FIGURE_CAPTIONS = {
    "fig1_tsne.png": "Fig. 1: identity, gender, age group, apparent age in years (where the corpus records it), "
                     "appearance group",
    "fig2_tsne_prosody.png": "Fig. 2: measured F0 (a face takes its speaker's mean), loudness, and the generator's "
                             "pitch setting where the corpus records it",
    "figA6_tsne_voice.png": "Fig. A.6: voices by gender, first language, age, ethnicity (appearance group)",
    "figA7_tsne_face.png": "Fig. A.7: faces by gender, first language, age, ethnicity (appearance group)",
    "fig3_cross_corpus_tsne.png": "Fig. 3: both corpora's faces in one t-SNE and their voices in another, "
                                  "coloured by corpus",
}


def figure_lines(figures: list[str]) -> list[str]:
    out = []
    for f in figures:
        if f.startswith("fig"):
            out += [f"{FIGURE_CAPTIONS.get(f, f)}.", "", f"![{f}]({f})", ""]
    return out


def cross_corpus_lines(c: dict) -> list[str]:
    """Table 8: the same model's 1:2 table on the second corpus."""
    return [f"## On another corpus: {c['name']} (Table 8)", "",
            f"The same model on `{c['corpus']}`, split as above: {c['identities']} identities, {c['faces']} faces, "
            f"{c['voices']} voice clips. Kim et al. Table 8 is their VoxCeleb model on their own user-study "
            "recordings (sec. 4.6, \"dataset bias\"); Fig. 3 below draws both corpora in one t-SNE.", "",
            *matching_lines(c, KIM_TABLE8, "Kim et al. Table 8"), ""]


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
        *([f"## The data (Table 2, also in {(m.get('tables') or ['demographics.md'])[0]})", ""]
          + [line for d in m["demographics"][:1] for line in demographics_lines(d, d["name"])] + [""]
          if m.get("demographics") else []),
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
        *(["## Within-gender links", "",
           "Ridge regression from each side's representation to per-person numbers, "
           "fitted on half of one gender's identities and scored (Pearson r) on the other half, averaged "
           "over both genders and the holdouts. Chance is 0; a model that only separates gender reads "
           "about 0. The measured F0 needs no generator; the others are the generator's (synthetic corpora): "
           "the face side draws face width from z_size and nose width from z_nasal, the voice side "
           "pitch from z_size (and age) and its variant from z_nasal, each with r 0.55 (docs/corpus.md).",
           "", *link_lines(m["links"]), ""] if m.get("links") else []),
        *(cross_corpus_lines(m["cross_corpus"]) if m.get("cross_corpus") else []),
        "## t-SNE (Figs. 1, 2, 3, A.6, A.7)",
        "",
        *([f0_line(m["f0"]), ""] if m.get("f0") else []),
        *figure_lines(m["figures"]),
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
    if m.get("f0"):
        f0 = m["f0"]
        lines.append(f"  measured F0 (YIN): {f0['voiced_clips']}/{f0['clips']} clips voiced, speakers' median "
                     + ", ".join(f"{g} {x:.0f} Hz" for g, x in f0["median_hz"].items()))
    if m.get("cross_corpus"):
        c = m["cross_corpus"]
        lines.append(f"  on {c['name']} ({c['identities']} identities, Table 8): 1:2 " + ", ".join(
            f"{ARROW[d]} {_pct((c['matching'][d].get('-') or {}).get('accuracy'))}%" for d in ("v2f", "f2v")))
    lines.append("  " + ", ".join(["report.md", "metrics.json", *m.get("tables", []), f"{len(m['figures'])} figures"]))
    return "\n".join(lines)
