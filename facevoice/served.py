"""`facevoice eval service`: the served models on people they have never seen, through the
service itself (issue 30).

For each held-out corpus (synthetic, every person in `test`, generated when missing): `index
build` of all its faces and voices with MODEL_REPO, the gRPC service started on the embedded
default on a free loopback port, and every voice and face of the corpus sent to it as a client
would send them:

- SearchFaces (voice -> faces, the association search), SearchVoices (face -> voices);
- ReconstructFace's `nearest` (voice -> the S2F face feature -> faces, Oh et al. Table 3's
  retrieval; only where the release serves Speech2Face).

Two recalls, both reported:

- by item: the share of queries whose top K items hold one of the person's own (Kim et al. sec.
  4.4, with the served gallery as the gallery). Chance is what K random items give: 1 - C(N - n,
  K) / C(N, K) for a person with n items among the N indexed.
- by person: the share whose first K distinct people (read off the top POOL items) include the
  person, each person ranked by their nearest item; chance K / P for P people indexed (0 for a
  person with no item indexed). It is what a user asking "who is this?" reads. It differs from
  recall by item where a person's items sit close together, as the S2F face features of one
  person's photos do (a face-recognition feature): then the top 10 items hold few people, and
  the report gives how many.

Intervals: 95%, resampling people. A query the guards refuse counts as a miss, and is counted.
Nothing the queries carry is logged or kept.

`eval_service(EvalServiceOptions(...))` runs it and returns an `EvalServiceResult`, which is what
OUT/service.json holds (read back with `EvalServiceResult.read(OUT)`); OUT/service.md is its report.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from math import comb
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facevoice.cli import options
from facevoice.service.corpus import read_manifest
from facevoice.service.errors import CorpusError, FormatError
from facevoice.service.repository import read_repository_manifest

KS = (1, 5, 10)
POOL = 200  # items asked per query, from which the first K distinct people are read
SEARCHES = {"v2f": "association V->F (SearchFaces)", "f2v": "association F->V (SearchVoices)",
            "s2f": "Speech2Face V->F (ReconstructFace nearest)"}


SERVICE_JSON, SERVICE_MD = "service.json", "service.md"


@dataclass(frozen=True)
class EvalServiceOptions:
    corpora: Path  # where the held-out corpora are (heldout-SEED-N/, generated when missing)
    out: Path  # where service.json, service.md and the indexes go
    model_repo: Path = Path("models/demo")  # the served models (a release)
    seeds: tuple[int, ...] = (7101, 7102, 7103)  # one held-out corpus per seed
    identities: int = 300  # people per held-out corpus
    no_progress: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-repo", type=Path, default=EvalServiceOptions.model_repo,
                   help="the served models (a release)")
    p.add_argument("--corpora", type=Path, required=True,
                   help="where the held-out corpora are (heldout-SEED-N/, generated when missing)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(EvalServiceOptions.seeds))
    p.add_argument("--identities", type=int, default=EvalServiceOptions.identities, help="people per held-out corpus")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-progress", action="store_true")


def chance(indexed: int, own: int, k: int) -> float:
    """P(at least one of a person's `own` items among K drawn at random from `indexed`)."""
    k = min(k, indexed)
    return 1.0 - comb(indexed - own, k) / comb(indexed, k)


def recall_cell(hits: list[list[bool]], who: list[str], k: int, seed: int = 0, draws: int = 2000) -> dict:
    """Recall@k over the queries, with a 95% interval resampling people."""
    got = np.array([any(h[:k]) for h in hits], float)
    people = sorted(set(who))
    index = {p: i for i, p in enumerate(people)}
    owner = np.array([index[p] for p in who])
    sums, counts = np.bincount(owner, got, len(people)), np.bincount(owner, minlength=len(people))
    rng = np.random.default_rng(seed)
    pick = rng.integers(len(people), size=(draws, len(people)))
    boot = sums[pick].sum(1) / np.maximum(counts[pick].sum(1), 1)
    return {"recall": float(got.mean()), "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
            "queries": len(got), "people": len(people)}


def query_corpus(repo: Path, corpus: Path, indexes: Path, progress: bool) -> dict:
    """Builds CORPUS's indexes with REPO, serves them, sends every item; per search the hit lists."""
    import grpc

    from facevoice.service.build import IndexBuildOptions, index_build
    from facevoice.service.serve import Running, ServeConfig
    from facevoice.v1 import facevoice_pb2 as pb
    from facevoice.v1 import facevoice_pb2_grpc as pb_grpc

    items = [i for i in read_manifest(corpus) if i.split == "test" and i.modality in ("face", "voice")]
    own = {}
    for i in items:
        own.setdefault((i.identity, i.modality), 0)
        own[(i.identity, i.modality)] += 1
    indexed = {m: sum(v for (_, mm), v in own.items() if mm == m) for m in ("face", "voice")}
    people = {m: len({i for (i, mm) in own if mm == m}) for m in ("face", "voice")}
    if not all(people.values()):
        raise CorpusError(f"{corpus} has no {'face' if not people['face'] else 'voice'} in its test split")
    print(index_build(IndexBuildOptions(gallery=corpus / "manifest.csv", model_repo=repo, out=indexes, split=("test",),
                                        no_progress=not progress)).summary())
    running = Running(ServeConfig(model_repo=repo, index_root=indexes, host="127.0.0.1", port=0, metrics_port=-1,
                                  poll_s=0.0))
    stub = pb_grpc.FaceVoiceStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
    gender_of = {i.identity: i.gender for i in items}
    short: set[str] = set()
    got: dict[str, dict] = {s: _empty() for s in SEARCHES}
    s2f = True
    try:
        for item in tqdm(items, desc=f"queries: {corpus.name}", unit="query", disable=not progress):
            data = (corpus / item.path).read_bytes()
            if item.modality == "voice":
                calls = [("v2f", lambda data=data: stub.SearchFaces(pb.SearchFacesRequest(
                    voice=pb.Audio(data=data), top_k=POOL), timeout=60).hits)]
                if s2f:
                    calls.append(("s2f", lambda data=data: stub.ReconstructFace(pb.ReconstructFaceRequest(
                        voice=pb.Audio(data=data), top_k=POOL), timeout=60).nearest))
                gallery = "face"
            else:
                calls = [("f2v", lambda data=data: stub.SearchVoices(pb.SearchVoicesRequest(
                    face=pb.Image(data=data), top_k=POOL), timeout=60).hits)]
                gallery = "voice"
            for search, call in calls:
                try:
                    ranked = [h.identity for h in call()]
                except grpc.RpcError as e:
                    if search == "s2f" and e.code() == grpc.StatusCode.UNIMPLEMENTED:
                        s2f = False  # the release serves no Speech2Face
                        continue
                    if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                        raise
                    got[search]["refused"] += 1
                    ranked = []
                cell = got[search]
                by_item, by_person = hit_lists(ranked, item.identity)
                cell["hits"].append(by_item)
                cell["person_hits"].append(by_person)
                cell["who"].append(f"{corpus.name}/{item.identity}")
                if ranked:
                    cell["people_top10"].append(len(set(ranked[:10])))
                    cell["same_gender_top10"].append(
                        float(np.mean([gender_of[r] == item.gender for r in ranked[:10]])))
                if len(ranked) == POOL and len(distinct(ranked)) < max(KS):
                    short.add(search)
                mine = own.get((item.identity, gallery), 0)
                for k in KS:
                    cell["chance"][k].append(chance(indexed[gallery], mine, k))
                    cell["person_chance"][k].append(min(1.0, k / people[gallery]) if mine else 0.0)
    finally:
        running.stop(0)
    for search in short:  # by person is then a lower bound
        print(f"eval service: {corpus.name}: some {SEARCHES[search]} rankings held fewer than {max(KS)} people "
              f"in their first {POOL} items; recall by person there is a lower bound")
    return got


def _empty() -> dict:
    return {"hits": [], "person_hits": [], "who": [], "chance": {k: [] for k in KS},
            "person_chance": {k: [] for k in KS}, "people_top10": [], "same_gender_top10": [], "refused": 0}


def distinct(ranked: list[str]) -> list[str]:
    """The identities of a ranked hit list in order, each once."""
    return list(dict.fromkeys(ranked))


def hit_lists(ranked: list[str], identity: str, k: int = max(KS)) -> tuple[list[bool], list[bool]]:
    """A query's hits among its first K items, and among its first K distinct people."""
    return [r == identity for r in ranked[:k]], [r == identity for r in distinct(ranked)[:k]]


@dataclass(frozen=True)
class EvalServiceResult:
    """service.json, read and written only here (`write` puts its report, service.md, beside it).
    K keys are ints here, strings in the file."""

    model_repo: str
    corpora: list[str]  # the held-out corpora's names
    # search (v2f, f2v, s2f) -> {what, refused, recall: {K: cell}, chance: {K: share}, recall_people,
    # chance_people, people_in_top10, same_gender_in_top10}; a cell is recall_cell's
    searches: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    out: Path | None = None  # the folder written to or read from (not in the file)

    def to_dict(self) -> dict:
        return {"model_repo": self.model_repo, "corpora": self.corpora, "searches": self.searches,
                "seconds": self.seconds}

    def write(self, out: Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / SERVICE_JSON
        tmp = path.with_name(f".{SERVICE_JSON}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        (out / SERVICE_MD).write_text(self.report())
        return path

    @classmethod
    def from_dict(cls, d: dict, out: Path | None = None) -> EvalServiceResult:
        if not isinstance(d, dict) or not isinstance(d.get("searches"), dict):
            raise ValueError("no `searches`")
        by_k = ("recall", "chance", "recall_people", "chance_people")
        searches = {s: {key: ({int(k): v for k, v in value.items()} if key in by_k else value)
                        for key, value in cell.items()} for s, cell in d["searches"].items()}
        return cls(str(d["model_repo"]), list(d["corpora"]), searches, float(d.get("seconds", 0.0)), out)

    @classmethod
    def read(cls, out: Path) -> EvalServiceResult:
        """FormatError naming the file when it is missing or not a service.json."""
        path = Path(out) / SERVICE_JSON
        try:
            return cls.from_dict(json.loads(path.read_text()), Path(out))
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise FormatError(f"{path}: not an `eval service` result ({e})") from e

    def report(self) -> str:
        """service.md: the table of recalls beside chance, by item and by person."""
        lines = [f"The served models `{self.model_repo}` through the service: every face and voice of "
                 f"{', '.join(self.corpora)} a query against all of that corpus's items of the other modality.", "",
                 "| search | recall | R@1 | R@5 | R@10 | chance R@10 | R@10 / chance | people in the top 10 "
                 "| same gender in the top 10 | queries (refused) |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for cell in self.searches.values():
            for by, recall, chances in (("by item", cell["recall"], cell["chance"]),
                                        ("by person", cell["recall_people"], cell["chance_people"])):
                cells = [f"{100 * recall[k]['recall']:.1f} ({100 * recall[k]['ci95'][0]:.1f}–"
                         f"{100 * recall[k]['ci95'][1]:.1f})" for k in KS]
                r10, c10 = recall[10], chances[10]
                extra = (f"{cell['people_in_top10']:.1f} | {100 * cell['same_gender_in_top10']:.0f}%" if by == "by item"
                         else " | ")
                ratio = r10["recall"] / c10 if c10 else float("nan")
                lines.append(f"| {cell['what']} | {by} | " + " | ".join(cells) + f" | {100 * c10:.1f} | "
                             f"{ratio:.2f}x | {extra} | {r10['queries']} ({cell['refused']}) |")
        return "\n".join(lines) + "\n" + (
            "\nBy item: one of the person's own items among the first K items. By person: the person among "
            "the first K distinct people of the ranking, each ranked by their nearest item (chance K / people "
            "indexed). People in the top 10: distinct people among the first 10 items (10 when no two "
            "items of a person are neighbours); same gender: the share of the first 10 items of the query's "
            "gender.\n")

    def summary(self) -> str:
        n = len(self.corpora)
        v2f = self.searches["v2f"]
        r10, c10 = v2f["recall_people"][10]["recall"], v2f["chance_people"][10]
        where = f"; report in {self.out / SERVICE_MD}" if self.out is not None else ""
        return (self.report() + "\n"
                + f"eval service: {self.model_repo} on {n} held-out {'corpus' if n == 1 else 'corpora'}, "
                  f"{self.seconds:.0f} s: a voice's person among the first 10 people {100 * r10:.1f}% "
                  f"({r10 / c10 if c10 else float('nan'):.2f}x chance){where}")


def eval_service(opts: EvalServiceOptions) -> EvalServiceResult:
    """`eval service`: every item of each held-out corpus through the service serving MODEL_REPO;
    the result, written to OUT/service.json and its report to OUT/service.md."""
    from facevoice.training.association.heldout import heldout_corpus

    model_repo, out, progress = Path(opts.model_repo), Path(opts.out), not opts.no_progress
    read_repository_manifest(model_repo)  # FormatError, saying what to do, for a directory that is not one
    t0 = time.monotonic()
    corpora = Path(opts.corpora)
    corpora.mkdir(parents=True, exist_ok=True)
    held = [heldout_corpus(corpora, s, opts.identities, progress) for s in opts.seeds]
    pooled: dict[str, dict] = {s: _empty() for s in SEARCHES}
    for corpus in held:
        got = query_corpus(model_repo, corpus, out / "indexes" / corpus.name, progress)
        for s, cell in got.items():
            for key in ("hits", "person_hits", "who", "people_top10", "same_gender_top10"):
                pooled[s][key] += cell[key]
            pooled[s]["refused"] += cell["refused"]
            for k in KS:
                pooled[s]["chance"][k] += cell["chance"][k]
                pooled[s]["person_chance"][k] += cell["person_chance"][k]
    searches = {}
    for s, cell in pooled.items():
        if not cell["hits"]:
            continue
        searches[s] = {
            "what": SEARCHES[s], "refused": cell["refused"],
            "recall": {k: recall_cell(cell["hits"], cell["who"], k) for k in KS},
            "chance": {k: float(np.mean(cell["chance"][k])) for k in KS},
            "recall_people": {k: recall_cell(cell["person_hits"], cell["who"], k) for k in KS},
            "chance_people": {k: float(np.mean(cell["person_chance"][k])) for k in KS},
            "people_in_top10": float(np.mean(cell["people_top10"])) if cell["people_top10"] else 0.0,
            "same_gender_in_top10": float(np.mean(cell["same_gender_top10"])) if cell["same_gender_top10"] else 0.0}
    result = EvalServiceResult(str(model_repo), [c.name for c in held], searches,
                               round(time.monotonic() - t0, 1), out)
    result.write(out)
    return result


def run(args: argparse.Namespace) -> int:
    print(eval_service(options(EvalServiceOptions, args)).summary())
    return 0
