"""Speech2Face evaluation metrics on constructed features with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facevoice.training.association.data import Modality
from facevoice.training.corpus.oracle import corpus_people, identity_scores, oracle_recall_at_k
from facevoice.training.corpus.people import Person, sample_population
from facevoice.training.metrics import one_per_identity_galleries
from facevoice.training.speech2face.data import S2FSplit
from facevoice.training.speech2face.measures import (
    KS,
    age_trend,
    attribute_agreement,
    cross_check,
    feature_similarity,
    ordered,
    reconstruction_variation,
    retrieval,
    voice_hearing,
)


def _split(people: int = 10, per: int = 2) -> S2FSplit:
    ident = np.repeat(np.arange(people), per)
    attrs = [{"gender": "male" if i % 2 else "female", "age_group": "30s" if i < people // 2 else "50s",
              "appearance_group": "AB"[i % 2]} for i in range(people)]
    mod = lambda: Modality(np.zeros((len(ident), 1)), ident.copy(), [str(k) for k in range(len(ident))])  # noqa: E731
    return S2FSplit([f"p{i}" for i in range(people)], attrs, mod(), mod(), None)


def _features(split: S2FSplit, seed: int = 0) -> torch.Tensor:
    """One well-separated direction per person (+ small noise per item)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(len(split.identities), 16) * 5
    return centres[split.face.identity] + 0.01 * torch.randn(len(split.face.identity), 16, generator=g)


def test_similarity_perfect_and_unrelated():
    s = _split()
    v_f = _features(s)
    perfect = feature_similarity(v_f.clone(), v_f, s)
    assert perfect["angle_deg"]["same_person"] < 1 and perfect["angle_deg"]["other_people"] > 85
    assert perfect["l2"]["same_person"] < perfect["l2"]["other_people"]


def test_retrieval_perfect_random_and_reversed():
    s = _split()
    v_f = _features(s)
    r = retrieval(v_f.clone(), v_f, s)
    assert r["gallery"] == 10 and r["draws"] == 2 and r["all_photos"]["gallery"] == 20
    for metric in ("l1", "l2", "cosine"):
        assert r[metric][1] == 1.0 and r["all_photos"][metric][1] == 1.0
    assert r["cosine_ci"][1] == (1.0, 1.0)
    # the paper's protocol: one true image among 10 people -> random R@K = K / 10
    assert r["random"][1] == pytest.approx(0.1) and r["random"][5] == pytest.approx(0.5)
    # all 20 photos, 2 per person: a random ranking finds one of the 2 in the top 1 with p = 2/20
    assert r["all_photos"]["random"][1] == pytest.approx(0.1)
    assert r["all_photos"]["random"][10] == pytest.approx(1 - (10 * 9) / (20 * 19))
    # reversed: each voice points at the next person's face -> never in the top 1
    shifted = _features(s)[(np.arange(20) + 2) % 20]
    wrong = retrieval(shifted, v_f, s)
    assert wrong["cosine"][1] == 0.0 and wrong["cosine_ci"][1] == (0.0, 0.0)
    # half the speakers right, half wrong: the interval over speakers straddles one half
    half = torch.where(torch.from_numpy(s.voice.identity < 5)[:, None], v_f, shifted)
    lo, hi = retrieval(half, v_f, s)["cosine_ci"][1]
    assert lo < 0.5 < hi


def test_one_per_identity_galleries_cover_every_photo_once_per_person():
    ident = np.array([0, 0, 0, 1, 2, 2])
    draws = one_per_identity_galleries(ident)
    assert len(draws) == 3
    for rows in draws:
        assert sorted(ident[rows]) == [0, 1, 2]
    assert set(np.concatenate(draws)) == set(range(6))


def test_oracle_recall_is_a_ceiling_that_reads_the_generator():
    """On generated people the oracle's recall beats random, and scrambling which face belongs to
    which voice breaks it."""
    pop = sample_population(200, seed=3)
    ident = np.arange(200)
    ks = (1, 10)
    right = oracle_recall_at_k(identity_scores(pop.model, pop.people, "v2f"), ident, ident, ks)
    back = oracle_recall_at_k(identity_scores(pop.model, pop.people, "f2v"), ident, ident, ks)
    assert right[10] > 3 * 10 / 200 and back[10] > 3 * 10 / 200
    rng = np.random.default_rng(0)
    scrambled = [Person(p.identity, p.shared, p.face, q.voice)
                 for p, q in zip(pop.people, rng.permutation(pop.people), strict=True)]
    chance = oracle_recall_at_k(identity_scores(pop.model, scrambled, "v2f"), ident, ident, ks)
    assert chance[10] < 0.5 * right[10]


def test_retrieval_reports_the_oracle_on_the_same_galleries():
    pop = sample_population(10, seed=1)
    s = _split()
    v_f = _features(s)
    scores = identity_scores(pop.model, pop.people, "v2f")
    r = retrieval(v_f.clone(), v_f, s, scores)
    assert set(r["oracle"]) == set(r["random"]) and set(r["all_photos"]["oracle"]) == set(r["random"])
    assert all(0 <= v <= 1 for v in r["oracle"].values())
    assert r["oracle"] == oracle_recall_at_k(scores, s.voice.identity, np.arange(10), KS)


def test_attribute_agreement_identical_and_flipped():
    s = _split()
    train_vf = _features(s, seed=1)
    v_f = _features(s)
    same = attribute_agreement(s, train_vf, s, v_f, v_f.clone())
    assert same["gender"]["agreement"] == 1.0 and same["gender"]["photo_accuracy"] == 1.0
    assert np.trace(np.array(same["gender"]["confusion"])) == sum(map(sum, same["gender"]["confusion"]))
    # reconstructions that look like the next person: gender alternates, so it always disagrees
    flipped = v_f[(np.arange(20) + 2) % 20]
    assert attribute_agreement(s, train_vf, s, v_f, flipped)["gender"]["agreement"] == 0.0


def test_cross_check_perfect_and_reversed():
    s = _split()
    v_f = _features(s)
    good = cross_check(s, v_f.clone(), v_f.clone(), v_f, n=200, seed=0)
    assert good["via_feature"]["accuracy"] == 1.0 and good["via_reconstruction"]["trials"] == 200
    lo, hi = good["via_feature"]["ci95"]
    assert lo < 1.0 <= hi + 1e-9
    wrong = cross_check(s, -v_f, -v_f, v_f, n=200, seed=0)  # pointing away from the speaker's face
    assert wrong["via_feature"]["accuracy"] < 0.5


def test_voice_parameter_readout_recovers_a_feature_made_of_voice_parameters(tmp_path):
    """When v_f is a linear function of the audible voice parameters, the readout fitted on
    training people (read back from the corpus files) predicts test people's v_f; a corpus
    without a generator gives none."""
    from dataclasses import asdict

    from facevoice.service.corpus import IDENTITIES, CorpusInfo, write_csv
    from facevoice.training.corpus.people import person_row
    from facevoice.training.speech2face.measures import voice_parameter_readout

    pop = sample_population(80, seed=5)
    write_csv(tmp_path / IDENTITIES, [person_row(p) for p in pop.people])
    CorpusInfo(generator="facevoice corpus synth", population_model=asdict(pop.model)).write(tmp_path)

    def split(people):
        ident = np.arange(len(people))
        mod = lambda: Modality(np.zeros((len(ident), 1)), ident.copy(), [p.identity for p in people])  # noqa: E731
        return S2FSplit([p.identity for p in people], [{} for _ in people], mod(), mod(), None)

    def feature(people):
        return torch.tensor([[p.voice.pitch / 10, p.voice.speed / 20, float(p.voice.gender == "male"), 1.0]
                             for p in people])

    train, test = pop.people[:60], pop.people[60:]
    people = corpus_people(tmp_path)[1]
    pred = voice_parameter_readout(people, split(train), feature(train), split(test))
    assert pred.shape == (20, 4)
    assert torch.nn.functional.cosine_similarity(pred, feature(test)).min() > 0.95
    assert corpus_people(tmp_path / "elsewhere") is None  # no generator: eval s2f shows no readout


def _aged_split(people: int = 20, per: int = 2) -> tuple[S2FSplit, torch.Tensor]:
    """People spread over the five age groups, and photo features whose first axis is the age."""
    s = _split(people, per)
    groups = ("<30", "30s", "40s", "50s", ">=60")
    for i, a in enumerate(s.attributes):
        a["age_group"] = groups[i % 5]
    g = torch.Generator().manual_seed(3)
    years = torch.tensor([25.0 + 10 * (i % 5) for i in s.face.identity])
    v_f = torch.cat([years[:, None] / 10, torch.randn(len(years), 7, generator=g)], 1)
    return s, v_f


def test_age_trend_follows_the_age_read_off_the_query():
    s, v_f = _aged_split()
    out = age_trend(s, v_f, s, v_f, {"same": v_f.clone(), "older": v_f[(np.arange(40) + 2) % 40]}, seed=0)
    assert out["regressor_r_on_photos"] > 0.99  # the first axis is the age
    assert out["same"]["r"] > 0.99 and out["same"]["p"] < 1e-6
    assert out["same"]["ci95"][0] > 0.95 and out["same"]["ci95"][0] <= out["same"]["r"] + 1e-9
    assert abs(out["same"]["random_r"]) < 0.5
    # each clip's query is the person one over: one age group older, but the oldest read as youngest
    assert out["older"]["r"] < out["same"]["r"] - 0.5
    assert abs(out["same"]["mean_years"] - out["photo_mean_years"]) < 1e-3


def test_age_trend_needs_age_groups():
    s, v_f = _aged_split()
    for a in s.attributes:
        a["age_group"] = "30s"
    assert age_trend(s, v_f, s, v_f, {"same": v_f}, seed=0) is None


def test_age_groups_are_ordered_by_age_and_other_classes_by_name():
    assert ordered(["30s", "40s", "50s", "<30", ">=60"]) == ["<30", "30s", "40s", "50s", ">=60"]
    assert ordered(["male", "female"]) == ["female", "male"]


def test_voice_hearing_reads_the_parameters_a_feature_carries():
    """v_s made of pitch and speed: both are heard on new speakers, pitch range is not."""
    pop = sample_population(120, seed=7)
    people = {p.identity: p for p in pop.people}

    def split(group):
        ident = np.repeat(np.arange(len(group)), 2)
        mod = lambda: Modality(np.zeros((len(ident), 1)), ident.copy(), [str(k) for k in ident])  # noqa: E731
        return S2FSplit([p.identity for p in group], [{} for _ in group], mod(), mod(), None)

    def v_s(group, seed):
        g = torch.Generator().manual_seed(seed)
        clean = torch.tensor([[p.voice.pitch / 10, p.voice.speed / 20] for p in group for _ in range(2)])
        return torch.cat([clean, 0.05 * torch.randn(len(clean), 6, generator=g)], 1)

    train, test = pop.people[:90], pop.people[90:]
    out = voice_hearing(people, split(train), v_s(train, 0), split(test), v_s(test, 1))
    assert out["pitch"]["test_r"] > 0.95 and out["speed"]["test_r"] > 0.95
    assert abs(out["pitch_range"]["test_r"]) < 0.5
    assert set(out) == {"pitch", "speed", "pitch_range", "variant_score", "age"}


def _generator_corpus(tmp_path, n: int, seed: int):
    from dataclasses import asdict

    from facevoice.service.corpus import IDENTITIES, CorpusInfo, write_csv
    from facevoice.training.corpus.people import person_row

    pop = sample_population(n, seed=seed)
    write_csv(tmp_path / IDENTITIES, [person_row(p) for p in pop.people])
    CorpusInfo(generator="facevoice corpus synth", population_model=asdict(pop.model)).write(tmp_path)
    return pop.people, corpus_people(tmp_path)[1]


def _per_person(people) -> S2FSplit:
    ident = np.arange(len(people))
    mod = lambda: Modality(np.zeros((len(ident), 1)), ident.copy(), [p.identity for p in people])  # noqa: E731
    return S2FSplit([p.identity for p in people], [{} for _ in people], mod(), mod(), None)


def test_ranking_readout_finds_people_by_a_feature_made_of_voice_parameters(tmp_path):
    """v_f made of (centred) pitch, speed and gender: the map trained for cosine ranking puts the
    speaker first far above chance (1 in 20), and the ridge readout does too."""
    from facevoice.training.speech2face.ceiling import ranking_readout
    from facevoice.training.speech2face.measures import voice_parameter_readout

    pop, people = _generator_corpus(tmp_path, 80, seed=5)

    def feature(group):
        return torch.tensor([[(p.voice.pitch - 50) / 10, (p.voice.speed - 165) / 15,
                              2 * float(p.voice.gender == "male") - 1] for p in group])

    train, test = _per_person(pop[:60]), _per_person(pop[60:])
    for readout in (ranking_readout, voice_parameter_readout):
        pred = readout(people, train, feature(pop[:60]), test)
        assert pred.shape == (20, 3)
        r = retrieval(pred, feature(pop[60:]), test)
        assert r["cosine"][1] >= 0.4 and r["random"][1] == pytest.approx(0.05)


def test_ideal_features_hold_the_named_face_parameters(tmp_path):
    from facevoice.training.speech2face.ceiling import IDEAL, ideal_features

    pop, _ = _generator_corpus(tmp_path, 30, seed=2)
    widths = {name: ideal_features(pop, parts).shape for name, parts in IDEAL.items()}
    assert widths == {"demographics": (30, 7), "demographics + linked geometry": (30, 9), "all": (30, 16)}
    geometry = ideal_features(pop, ("linked geometry",))
    assert torch.equal(geometry[:, 0], torch.tensor([p.face.face_width for p in pop]))


def test_ceilings_need_a_generator(tmp_path):
    from facevoice.service.errors import CorpusError
    from facevoice.training.speech2face.ceiling import ceilings

    with pytest.raises(CorpusError, match="no generator parameters"):
        ceilings(tmp_path, tmp_path / "face_net.pt", tmp_path / "cache", progress=False)


def test_geometry_reads_the_generator_parameters_off_reconstructions(tmp_path):
    """Reconstructions that are the people's canonical faces: the tool (fitted on renders of other
    people) measures face width on them, F2F and S2F agree; S2F drawn from other people does not."""
    from facevoice.service.media import FaceImage
    from facevoice.service.media.image import normalise
    from facevoice.training.corpus.faces import FaceNuisance, render_face
    from facevoice.training.speech2face.data import to_rgb
    from facevoice.training.speech2face.measures import geometry

    pop, _ = _generator_corpus(tmp_path, 40, seed=4)
    frontend = FaceImage(size=32)
    s = _split(40, 2)
    s.identities[:] = [p.identity for p in pop]
    canonical = to_rgb(torch.from_numpy(np.stack([normalise(render_face(p.face, FaceNuisance.canonical(), 64), frontend)
                                                  for p in pop])), frontend).numpy()
    f2f, s2f = canonical[s.face.identity], canonical[s.voice.identity]
    generator = corpus_people(tmp_path)
    out = geometry(generator, s, f2f, s2f, frontend, seed=0, renders=300)
    width = out["face_width"]
    assert width["tool_r_on_renders"] > 0.9 and width["tool_r_on_f2f"] > 0.9 and width["tool_r_on_s2f"] > 0.9
    assert width["r"] > 0.95 and width["p"] < 1e-6 and abs(width["random_r"]) < 0.5
    assert width["ci95"][0] > 0.9
    others = geometry(generator, s, f2f, s2f[(np.arange(80) + 2) % 80], frontend, seed=0, renders=300)
    assert others["face_width"]["r"] < 0.5
    assert geometry(None, s, f2f, s2f, frontend, seed=0) is None  # not a synthetic corpus


def test_table3_puts_each_paper_row_beside_the_same_duration_and_distance():
    """Oh et al. Table 3: 6 s cosine is 10.92 / 17.00 / 30.60 / 45.82; 3 s L2 is 5.86 / 10.02 /
    18.98 / 28.92 (what the report once printed as cosine)."""
    from facevoice.training.speech2face.report import table3_lines, table3_rows

    def r(scale: float) -> dict:  # every distance `scale` times the random K / 60
        return {m: {str(k): (1 if m == "random" else scale) * k / 60 for k in (1, 2, 5, 10)}
                for m in ("l1", "l2", "cosine", "random")} | {"gallery": 60}
    m = {"retrieval": r(3.0), "retrieval_by_seconds": {"3s": r(2.0), "6s": r(3.0)}}
    rows = {(x["input"], x["metric"]): x for x in table3_rows(m)}
    assert set(rows) == {(s, d) for s in ("3s", "6s") for d in ("l1", "l2", "cosine")}
    assert rows[("6s", "cosine")]["paper"] == (10.92, 17.00, 30.60, 45.82)
    assert rows[("3s", "l2")]["paper"] == (5.86, 10.02, 18.98, 28.92)
    assert rows[("3s", "cosine")]["ours_x"] == pytest.approx([2.0] * 4)  # ours over our random K/60
    assert rows[("6s", "cosine")]["paper_x_printed"][3] == pytest.approx(4.582)  # 45.82 / 10
    assert rows[("6s", "cosine")]["paper_x_database"][3] == pytest.approx(229.1)  # 45.82 / 0.2
    text = "\n".join(table3_lines(m))
    assert ("| 6s | cosine | 5.0 / 10.0 / 25.0 / 50.0 | 3.00x / 3.00x / 3.00x / 3.00x | 10.9 / 17.0 / 30.6 / 45.8 |"
            in text)


def test_table2_reports_unit_and_raw_distances_beside_the_paper_angle():
    from facevoice.training.speech2face.report import table2_lines

    v_f = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    v_s = torch.tensor([[1.0, 1.0], [0.0, 5.0]])  # 45 and 0 degrees from their own person's v_f
    split = S2FSplit(["a", "b"], [{}, {}], Modality(np.zeros((2, 1)), np.array([0, 1]), ["fa", "fb"]),
                     Modality(np.zeros((2, 1)), np.array([0, 1]), ["va", "vb"]), None)
    sim = feature_similarity(v_s, v_f, split)
    assert sim["angle_deg"]["same_person"] == pytest.approx(22.5)
    assert sim["l2_unit"]["same_person"] == pytest.approx((2 * np.sin(np.radians(45) / 2) + 0) / 2)
    assert sim["l2"]["same_person"] == pytest.approx((np.hypot(2, 1) + 3) / 2)
    text = "\n".join(table2_lines({"6s": sim}))
    assert "| 6s | 22.5 / " in text and "45.75 ± 5.09" in text and "0.18 ± 0.02 / 9.42 ± 1.54" in text


def test_convergence_figure_overlays_runs(tmp_path):
    from facevoice.service.errors import UsageError
    from facevoice.training.speech2face.convergence import convergence

    for name, scale in (("bn", 1.0), ("nobn", 2.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_text(
            "step,loss,val_loss\n" + "".join(f"{s},{scale / s},{scale / s + 0.1}\n" for s in (10, 20, 30)))
    out = tmp_path / "fig8.png"
    result = convergence([f"BN={tmp_path / 'bn'}", f"no BN={tmp_path / 'nobn'}"], out)
    assert result.figure == out and result.runs == {"BN": tmp_path / "bn", "no BN": tmp_path / "nobn"}
    assert out.stat().st_size > 5000
    with pytest.raises(UsageError, match="LABEL=RUN_DIR"):
        convergence([str(tmp_path / "bn")], out)


def test_segment_consistency_separates_same_video_other_video_and_other_speakers():
    """Fig. 9: a speaker's clips from one video agree more than across videos, and both more than
    two speakers'."""
    from facevoice.training.speech2face.measures import segment_consistency

    v_s = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    voice = Modality(np.zeros((4, 1)), np.array([0, 0, 0, 1]), ["a", "b", "c", "d"], np.array(["v1", "v1", "v2", "v3"]))
    split = S2FSplit(["p0", "p1"], [{}, {}], voice, voice, None)
    c = segment_consistency(v_s, split)
    assert c["same_speaker_same_video"]["pairs"] == 1 and c["same_speaker_other_video"]["pairs"] == 2
    assert c["same_speaker_same_video"]["cosine"] == pytest.approx(1 / np.sqrt(1.01))
    assert c["same_speaker_same_video"]["cosine"] > c["same_speaker_other_video"]["cosine"] > \
        c["different_speakers"]["cosine"]
    unknown = S2FSplit(["p0", "p1"], [{}, {}], voice, Modality(voice.data, voice.identity, voice.item_ids), None)
    assert set(segment_consistency(v_s, unknown)) == {"same_speaker_any", "different_speakers"}


def test_reconstruction_variation_is_one_for_a_face_per_gender_and_large_for_a_face_per_person():
    split = _split(people=10, per=3)
    g = torch.Generator().manual_seed(0)
    ident = torch.as_tensor(split.voice.identity)
    gender = torch.tensor([split.attributes[i]["gender"] == "male" for i in split.voice.identity]).float()
    noise = lambda: 0.01 * torch.randn(len(ident), 3, 8, 8, generator=g)  # noqa: E731
    per_gender = gender[:, None, None, None] * torch.ones(len(ident), 3, 8, 8) + noise()
    per_person = torch.rand(10, 3, 8, 8, generator=g)[ident] + noise()
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    one = reconstruction_variation(split, per_gender, flat(per_gender), "voice")
    own = reconstruction_variation(split, per_person, flat(per_person), "voice")
    assert 0.8 < one["pixel"]["ratio"] < 1.25  # only clip noise tells two women apart
    assert own["pixel"]["ratio"] > 10 and own["feature"]["ratio"] > 5
    # 10 people x 3 clips: 3 same-person pairs each; 5 people per gender, 3 x 3 clips per pair of them
    assert one["pairs"] == {"same_person": 30, "different_people_same_gender": 2 * 10 * 9}
    # by hand: two women, two clips each, drawn as flat grey 0.0 / 0.1 and 1.0 / 1.1: within a person
    # the RMS distance is 0.1; across them 1.0, 1.1, 0.9, 1.0 (mean 1.0): ratio 10
    ident2 = np.array([0, 0, 1, 1])
    two = S2FSplit(["a", "b"], [{"gender": "female"}] * 2, split.face,
                   Modality(np.zeros((4, 1)), ident2, ["0", "1", "2", "3"]), None)
    grey = torch.tensor([0.0, 0.1, 1.0, 1.1])[:, None, None, None] * torch.ones(4, 3, 4, 4)
    v = reconstruction_variation(two, grey, torch.randn(4, 8, generator=g), "voice")
    assert v["pixel"]["same_person"] == pytest.approx(0.1) and v["pixel"]["ratio"] == pytest.approx(10.0)
