"""report.md and the printed summary of `facevoice eval s2f`, with Oh et al. 2019's figures
beside ours where the paper gives them."""

from __future__ import annotations

from pathlib import Path

from facevoice.training.speech2face.figures import FIG4A_PIXELS, FIG4B, FIG7

# Oh et al. 2019 Table 3 (AVSpeech test set, a database of 5,000 face images): R@1/2/5/10 in %
# of S2F features, by input duration and distance. Its "Random" row reads 1 / 2 / 5 / 10 %, which
# is K / 100, not the K / 5,000 that "a database of 5,000 images" implies (0.02 / 0.04 / 0.1 /
# 0.2 %): the table does not say which gallery its random row is for, so both are reported.
PAPER_TABLE3 = {("3s", "l2"): (5.86, 10.02, 18.98, 28.92), ("3s", "l1"): (6.22, 9.92, 18.94, 28.70),
                ("3s", "cosine"): (8.54, 13.64, 24.80, 38.54), ("6s", "l2"): (8.28, 13.66, 24.66, 35.84),
                ("6s", "l1"): (8.34, 13.70, 24.66, 36.22), ("6s", "cosine"): (10.92, 17.00, 30.60, 45.82)}
PAPER_KS = (1, 2, 5, 10)
# Oh et al. Table 2 (AVSpeech, 5,000 test samples): mean ± sd of cos (deg), L2, L1 between v_s and
# the speaker's v_f, normalisation unstated (see measures.feature_similarity)
PAPER_TABLE2 = {"3s": {"angle_deg": (48.43, 6.01), "l2": (0.19, 0.03), "l1": (9.81, 1.74)},
                "6s": {"angle_deg": (45.75, 5.09), "l2": (0.18, 0.02), "l1": (9.42, 1.54)}}
PAPER_RANDOM_PRINTED = dict(zip(PAPER_KS, (1.0, 2.0, 5.0, 10.0), strict=True))
PAPER_GALLERY = 5000


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _get(d: dict, k: int):
    return d[k] if k in d else d[str(k)]  # JSON keys are strings


def _ci(v: dict) -> str:
    return "{:.2f} to {:.2f}".format(*v["ci95"]) if "ci95" in v else ""


def _recall_table(r: dict, ks: list[int]) -> list[str]:
    names = [n for n in ("l1", "l2", "cosine", "random", "voice_params", "oracle") if n in r]
    return ["| metric | " + " | ".join(f"R@{k}" for k in ks) + " |", "|---|" + "---|" * len(ks),
            *[f"| {n} | " + " | ".join(_pct(_get(r[n], k)) for k in ks) + " |" for n in names]]


def table2_lines(similarity: dict) -> list[str]:
    """Ours (same person / other people) beside Oh et al. Table 2 (same person, mean ± sd)."""
    def cell(v: dict, name: str, fmt: str) -> str:
        x = v.get(name)
        return "–" if x is None else f"{x['same_person']:{fmt}} / {x['other_people']:{fmt}}"

    lines = ["| input | angle (deg) same / other | Oh et al. angle | L2 / L1 on unit vectors (eq. (1)'s "
             "normalisation), same / other | L2 / L1 raw, same / other | Oh et al. L2 / L1 (unstated) |",
             "|---|---|---|---|---|---|"]
    for s, v in similarity.items():
        paper = PAPER_TABLE2.get(s)
        angle = "–" if paper is None else "{:.2f} ± {:.2f}".format(*paper["angle_deg"])
        dists = "–" if paper is None else "{:.2f} ± {:.2f} / {:.2f} ± {:.2f}".format(*paper["l2"], *paper["l1"])
        lines.append(f"| {s} | {cell(v, 'angle_deg', '.1f')} | {angle} | "
                     f"{cell(v, 'l2_unit', '.3f')}; {cell(v, 'l1_unit', '.2f')} | "
                     f"{cell(v, 'l2', '.3f')}; {cell(v, 'l1', '.2f')} | {dists} |")
    lines += ["", "Only the angle compares directly: the paper does not say how its L2 and L1 are normalised, "
              "and its L2 of 0.18 at 45.75 degrees does not fit unit vectors (that would be 0.78)."]
    return lines


def table3_rows(m: dict) -> list[dict]:
    """Oh et al. Table 3 beside ours, row for row (input duration x distance), each R@K also as a
    multiple of its own protocol's random R@K: ours (one photo per test person) and the paper's,
    both for its printed random row and for the K / 5,000 its database implies."""
    rows = []
    by_seconds = m.get("retrieval_by_seconds") or {"6s": m["retrieval"]}
    for seconds, r in by_seconds.items():
        for metric in ("l2", "l1", "cosine"):
            ours = [_get(r[metric], k) for k in PAPER_KS]
            rand = [_get(r["random"], k) for k in PAPER_KS]
            paper = PAPER_TABLE3.get((seconds, metric))
            rows.append({"input": seconds, "metric": metric, "ours": ours, "random": rand,
                         "ours_x": [o / x for o, x in zip(ours, rand, strict=True)], "paper": paper,
                         "paper_x_printed": None if paper is None else
                         [p / PAPER_RANDOM_PRINTED[k] for p, k in zip(paper, PAPER_KS, strict=True)],
                         "paper_x_database": None if paper is None else
                         [p / (100 * k / PAPER_GALLERY) for p, k in zip(paper, PAPER_KS, strict=True)]})
    return rows


def table3_lines(m: dict) -> list[str]:
    def nums(xs, fmt="{:.1f}") -> str:
        return "–" if xs is None else " / ".join(fmt.format(x) for x in xs)

    lines = ["| input | distance | ours R@1/2/5/10 (%) | ours ÷ our random | Oh et al. R@1/2/5/10 (%) | "
             "Oh ÷ its printed random (1/2/5/10 %) | Oh ÷ K/5,000 |", "|---|---|---|---|---|---|---|"]
    for row in table3_rows(m):
        lines.append(f"| {row['input']} | {row['metric']} | {nums([100 * x for x in row['ours']])} | "
                     f"{nums(row['ours_x'], '{:.2f}x')} | {nums(row['paper'])} | "
                     f"{nums(row['paper_x_printed'], '{:.2f}x')} | {nums(row['paper_x_database'], '{:.0f}x')} |")
    rand = table3_rows(m)[0]["random"]
    lines += ["", f"Our random R@1/2/5/10: {nums([100 * x for x in rand])} % (K / {m['retrieval']['gallery']}). "
              "Oh et al.'s Table 3 prints a random row of 1 / 2 / 5 / 10 % for \"a database of 5,000 images\", "
              "where random would be 0.02 / 0.04 / 0.1 / 0.2 %; the paper does not resolve this, so the paper's "
              "ratios are given against both."]
    return lines


SHOWN_IN_SECTIONS = {"attributes.png", FIG4A_PIXELS, FIG4B}  # drawn in their sections, not under Pictures


def _matrix_lines(classes: list[str], matrix: list[list[int]], rows: str, cols: str) -> list[str]:
    """A confusion matrix as a table: counts, each with its share of the row (Fig. 4(a)
    normalises rows)."""
    lines = [f"| {rows} \\ {cols} | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for name, row in zip(classes, matrix, strict=True):
        total = max(1, sum(row))
        lines.append(f"| {name} | " + " | ".join(f"{n} ({100 * n / total:.0f}%)" for n in row) + " |")
    return lines


def pixel_attribute_lines(m: dict) -> list[str]:
    """Fig. 4(a) by the classifier on pixels (pixel_attributes.py): a summary table beside the
    feature read-out, then per attribute the photo-vs-S2F and truth-vs-S2F confusion tables."""
    pixels = m.get("attributes_pixels")
    if not pixels:
        return []
    c = m.get("pixel_classifier", {})
    lines = ["### The same on pixels, independent of the model", "",
             f"A small CNN ({c.get('architecture', '')}) trained {c.get('steps', '?')} steps on the "
             f"{c.get('train_photos', '?')} training photos ({c.get('input_px', '?')} px) and their labels, as Face++ "
             "is a classifier of its own: it never sees the face network's features. It labels each test "
             "photo, each clip's S2F reconstruction and each photo's F2F reconstruction; accuracies are "
             "against the people's true attributes.", "",
             "| attribute | agreement photo vs S2F | (feature read-out) | photo accuracy | S2F accuracy | "
             "F2F accuracy | majority class | chance |", "|---|---|---|---|---|---|---|---|"]
    for a, v in pixels.items():
        feature = m["attributes"].get(a, {}).get("agreement")
        lines.append(f"| {a} | **{_pct(v['agreement'])}** | {'–' if feature is None else _pct(feature)} | "
                     f"{_pct(v['photo_accuracy'])} | {_pct(v['s2f_accuracy'])} | "
                     f"{_pct(v['f2f_accuracy']) if 'f2f_accuracy' in v else '–'} | {_pct(v['majority'])} | "
                     f"{_pct(v['chance'])} |")
    lines.append("")
    for a, v in pixels.items():
        lines += [f"**{a}**: the photo's class (rows) against its S2F reconstruction's (columns), over "
                  f"same-person (clip, photo) pairs, agreement {_pct(v['agreement'])}%; then the speaker's true "
                  "class against the reconstruction's, one per clip.", "",
                  *_matrix_lines(v["classes"], v["confusion"], "photo", "S2F"), "",
                  *_matrix_lines(v["classes"], v["confusion_truth"], "truth", "S2F"), ""]
    return [*lines, f"![pixel classifier]({FIG4A_PIXELS})", ""]


def dataset_lines(m: dict) -> list[str]:
    """Fig. 4(b): the people of each split by attribute."""
    stats = m.get("dataset")
    if not stats:
        return []
    lines = ["## Dataset statistics (Fig. 4(b))", "",
             "People of each split of the corpus by attribute (each person counted once):", "",
             "| attribute | class | " + " | ".join(f"{s} ({v['people']})" for s, v in stats.items()) + " |",
             "|---|---|" + "---|" * len(stats)]
    for attr in ("gender", "age_group", "appearance_group"):
        classes = list(dict.fromkeys(c for v in stats.values() for c in v.get(attr, {})))
        for c in classes:
            lines.append(f"| {attr} | {c} | " + " | ".join(
                f"{v[attr].get(c, 0)} ({100 * v[attr].get(c, 0) / max(1, v['people']):.0f}%)"
                for v in stats.values()) + " |")
    return [*lines, "", f"![dataset]({FIG4B})", ""]


def retrieval_example_lines(m: dict) -> list[str]:
    """Fig. 7: where each example query ranked its speaker's photo."""
    ex = m.get("retrieval_examples")
    if not ex:
        return []
    return ["## Retrieval examples (Fig. 7)", "",
            f"Each row of `{FIG7}`: one clip's S2F reconstruction and the 5 photos nearest its v_s "
            f"(cosine) in a gallery of {ex[0]['gallery']} test photos, one per person; the speaker's own is "
            "framed in green. Rank of the speaker's photo: "
            + ", ".join(f"{e['identity']} {e['true_rank']}" for e in ex) + ".", ""]


def write_report(m: dict, path: Path) -> Path:
    r = m["retrieval"]
    ks = sorted(int(k) for k in r["random"])
    lines = [
        f"# Speech2Face evaluation: {m['run']}",
        "",
        f"Checkpoint `{m['checkpoint']}` (step {m['step']}, config `{m['config']}`), corpus `{m['corpus']}`, "
        f"split `{m['split']}`: {m['identities']} identities, {m['faces']} photos, {m['voices']} clips. "
        "Protocols: Oh et al. 2019 sec. 4.",
        "",
        "## Feature similarity (Table 2)",
        "",
        "Between the predicted feature v_s and the face feature v_f of a photo of the same person, "
        "and of other people (the baseline). Lower is better.",
        "",
        *table2_lines(m["similarity"]),
        "",
        "## S2F -> face retrieval (Table 3)",
        "",
        f"The paper's protocol: each clip's v_s queries a gallery of {r['gallery']} test photos, one per person, "
        "so exactly one image is the speaker's (random R@K = K / gallery); averaged over "
        f"{r['draws']} such galleries, which together hold every test photo.",
        "",
        *_recall_table(r, ks),
        *(["| cosine, 95% interval over speakers | " + " | ".join(
            "{}-{}".format(*map(_pct, _get(r["cosine_ci"], k))) for k in ks) + " |"] if "cosine_ci" in r else []),
        "",
        "Beside Oh et al. Table 3, row for row, each R@K also as a multiple of its own protocol's random R@K:",
        "",
        *table3_lines(m),
        "",
        f"All {r['all_photos']['gallery']} test photos in one gallery; a hit is any photo of the speaker:",
        "",
        *_recall_table(r["all_photos"], ks),
        "",
        "The oracle (synthetic corpora) ranks by the generator's own face and voice parameters under its "
        "joint model, the Bayes-optimal ranking: no model of the media can beat it on average. A person's "
        "photos share parameters, so in the all-photos gallery the oracle spends K on one person's photos. "
        "`voice_params` (cosine) queries with a ridge regression from the generator's audible voice "
        "parameters to v_f, fitted on training photos: what this face feature space allows a voice "
        "encoder that heard those parameters perfectly.",
        "",
        "## Attribute agreement (Fig. 4)",
        "",
        "A logistic classifier on face features, trained on the training photos (our stand-in for Face++), "
        "labels each test photo and the S2F reconstruction of each clip of the same person.",
        "",
        "| attribute | agreement photo vs S2F | photo classifier accuracy | S2F accuracy | majority class |",
        "|---|---|---|---|---|",
        *[f"| {a} | **{_pct(v['agreement'])}** | {_pct(v['photo_accuracy'])} | {_pct(v['s2f_accuracy'])} | "
          f"{_pct(v['majority'])} |" for a, v in m["attributes"].items()],
        "",
        "![attributes](attributes.png)",
        "",
        *pixel_attribute_lines(m),
        *dataset_lines(m),
    ]
    if m.get("age_trend"):
        a = m["age_trend"]
        names = {"reconstruction": "S2F reconstruction", "feature": "v_s itself",
                 "voice_params": "voice-parameter readout (ceiling)"}
        lines += ["### Age trend", "",
                  "A ridge regressor from face features to age (training photos' age groups as years) reads an "
                  "age off each test photo and off each clip's S2F output; Pearson r between the two over "
                  "same-person pairs, and over random pairs. Its r against the test photos' own age groups is "
                  f"{a['regressor_r_on_photos']:.2f}." if a["regressor_r_on_photos"] is not None else "", "",
                  "| read off | r with the photo's age | 95% interval over speakers | p (pairs as independent) | "
                  "random pairs r | mean age read |", "|---|---|---|---|---|---|",
                  *[f"| {names.get(k, k)} | **{v['r']:.2f}** | {_ci(v)} | {v['p']:.1g} | {v['random_r']:.2f} | "
                    f"{v['mean_years']:.0f} (photos {a['photo_mean_years']:.0f}) |"
                    for k, v in a.items() if isinstance(v, dict)], ""]
    if m.get("hearing"):
        lines += ["## What the voice encoder hears", "",
                  "A ridge regressor from v_s to each of the generator's voice parameters (and the speaker's "
                  "age), fitted on training clips: Pearson r with the truth on test clips (new speakers) and "
                  "on the training clips. A large gap is the encoder memorising its training speakers.", "",
                  "| parameter | r, test speakers | r, training speakers |", "|---|---|---|",
                  *[f"| {k} | **{v['test_r']:.2f}** | {v['train_r']:.2f} |" for k, v in m["hearing"].items()], ""]
    if m["geometry"]:
        lines += ["## Geometry (Fig. 5)", "",
                  "Our landmark detector: a ridge regressor from pixels to the generator's geometry scores, fitted "
                  "on canonical faces of new people drawn by the generator. It reads each score off the S2F "
                  "reconstruction of every test clip and off the F2F reconstruction of a photo of the same person: "
                  "Pearson r between the two, and for random pairs. The last three columns are the tool's r "
                  "against the truth: on held-out renders (can it measure), on F2F (what the face feature and "
                  "decoder keep) and on S2F.", "",
                  "| parameter | r (F2F vs S2F) | 95% interval over speakers | p | random pairs r | "
                  "tool r: renders | F2F | S2F |", "|---|---|---|---|---|---|---|---|",
                  *[f"| {k} | **{v['r']:.2f}** | {_ci(v)} | {v['p']:.1g} | {v['random_r']:.2f} | "
                    f"{v['tool_r_on_renders']:.2f} | "
                    f"{v['tool_r_on_f2f']:.2f} | {v['tool_r_on_s2f']:.2f} |" for k, v in m["geometry"].items()], ""]
    if m.get("consistency"):
        lines += ["## Consistency across segments (Fig. 9)", "",
                  "Mean cosine between the predicted features of two clips: of the same speaker from the same "
                  "video, from different videos (where the corpus records videos), and of different speakers.", "",
                  "| clips | mean cosine of v_s | pairs |", "|---|---|---|",
                  *[f"| {k.replace('_', ' ')} | {v['cosine']:.3f} | {v['pairs']} |"
                    for k, v in m["consistency"].items()],
                  ""]
    if any(m.get("variation", {}).values()):
        lines += ["## Do the reconstructions follow the person?", "",
                  "Mean distance between reconstructions of different people of the same gender, over the mean "
                  "distance between reconstructions of two clips (S2F) or two photos (F2F) of the same person. A "
                  "decoder that draws one face per gender scores near 1. Not a figure of the paper.", "",
                  "| reconstruction | space | same person | different people, same gender | ratio | pairs |",
                  "|---|---|---|---|---|---|",
                  *[f"| {kind.upper()} | {space} | {v[space]['same_person']:.4f} | "
                    f"{v[space]['different_people_same_gender']:.4f} | **{v[space]['ratio']:.2f}** | "
                    f"{v['pairs']['same_person']} / {v['pairs']['different_people_same_gender']} |"
                    for kind, v in m["variation"].items() if v for space in ("pixel", "feature")], ""]
    c = m["cross_check"]
    lines += ["## Cross-check: 1:2 V->F through S2F", "",
              "| by | accuracy | 95% CI | trials |", "|---|---|---|---|",
              *[f"| {k.replace('_', ' ')} | {_pct(v['accuracy'])} | {_pct(v['ci95'][0])}-{_pct(v['ci95'][1])} | "
                f"{v['trials']} |" for k, v in c.items()],
              "| chance | 50.0 | | |", "",
              *retrieval_example_lines(m),
              "## Pictures (Fig. 3, 6, 7, 9, 8)", "",
              *[f"![{f}]({f})" for f in m["figures"] if f not in SHOWN_IN_SECTIONS], ""]
    path.write_text("\n".join(lines))
    return path


def format_summary(m: dict, out: Path) -> str:
    r = m["retrieval"]
    sim = "; ".join(f"{s}: {v['angle_deg']['same_person']:.1f} deg vs {v['angle_deg']['other_people']:.1f} other"
                    for s, v in m["similarity"].items())
    attrs = ", ".join(f"{a} {_pct(v['agreement'])}%" for a, v in m["attributes"].items())
    pixel_attrs = ", ".join(f"{a} {_pct(v['agreement'])}% (S2F vs truth {_pct(v['s2f_accuracy'])}%, photos "
                            f"{_pct(v['photo_accuracy'])}%)" for a, v in m.get("attributes_pixels", {}).items())
    cc = m["cross_check"]["via_reconstruction"]
    return "\n".join([
        f"Speech2Face evaluation of {m['run']} on {m['identities']} {m['split']} identities -> {out}",
        f"  feature angle v_s to own v_f: {sim}",
        f"  retrieval, one photo per person ({r['gallery']}), cosine R@1/5/10 = "
        + "/".join(_pct(_get(r["cosine"], k)) for k in (1, 5, 10))
        + (" (R@10 95% interval {}-{})".format(*map(_pct, _get(r["cosine_ci"], 10))) if "cosine_ci" in r else "")
        + " vs random " + "/".join(_pct(_get(r["random"], k)) for k in (1, 5, 10))
        + ("; oracle " + "/".join(_pct(_get(r["oracle"], k)) for k in (1, 5, 10)) if "oracle" in r else ""),
        f"  attribute agreement photo vs S2F: {attrs} (face-feature read-out)",
        *([f"  the same by a CNN on pixels: {pixel_attrs}"] if pixel_attrs else []),
        *([f"  age trend: r = {m['age_trend']['reconstruction']['r']:.2f} ({_ci(m['age_trend']['reconstruction'])}) "
           f"between the age read off the photo and off the reconstruction (random pairs "
           f"{m['age_trend']['reconstruction']['random_r']:.2f})"]
          if m.get("age_trend") else []),
        f"  1:2 V->F via the reconstruction {_pct(cc['accuracy'])}% (chance 50%)",
        *([f"  reconstructions follow the person (different people of a gender / same person, pixels): S2F "
           f"{m['variation']['s2f']['pixel']['ratio']:.2f}, F2F {m['variation']['f2f']['pixel']['ratio']:.2f} "
           "(one face per gender: about 1)"] if m.get("variation", {}).get("s2f") and m["variation"].get("f2f")
          else []),
        f"  report.md, metrics.json, {len(m['figures'])} figures",
    ])
