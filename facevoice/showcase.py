"""The demo's showcase: the service started on a model repository and its indexes, queried through
the gRPC client, each answer printed beside the truth (the true identity's rank among the test
people), recall through the service beside the evaluation's, and the faces ReconstructFace draws
beside the people's photos as one PNG. `facevoice demo` runs it on whatever its pipeline made."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from facevoice.service.corpus import Item, read_manifest


def test_rows(corpus: Path) -> list[Item]:
    return [i for i in read_manifest(corpus) if i.split == "test" and i.modality in ("face", "voice")]


def people_of_test_split(corpus: Path, n: int) -> list[dict[str, Item]]:
    """The first n test identities with a face and a voice: {modality: manifest row}."""
    people: dict[str, dict] = {}
    for r in test_rows(corpus):
        people.setdefault(r.identity, {}).setdefault(r.modality, r)
    return [p for p in people.values() if len(p) == 2][:n]


def service_recall(stub, corpus: Path, ks: tuple[int, ...] = (1, 5, 10),
                   progress: bool = False) -> dict[str, dict[int, float]]:
    """Recall@K through the service: every test voice against the face index and back (Kim et al.
    sec. 4.4's retrieval, with the served gallery as the gallery). A query the service's guards
    refuse (no face, no speech) counts as a miss."""
    import grpc

    from facevoice.v1 import facevoice_pb2 as pb

    hits: dict[str, list[list[bool]]] = {"v2f": [], "f2v": []}
    refused = 0
    for r in tqdm(test_rows(corpus), desc="recall through the service", unit="query", disable=not progress):
        data = (corpus / r.path).read_bytes()
        direction = "v2f" if r.modality == "voice" else "f2v"
        try:
            if r.modality == "voice":
                found = stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=data), top_k=max(ks)), timeout=60)
            else:
                found = stub.SearchVoices(pb.SearchVoicesRequest(face=pb.Image(data=data), top_k=max(ks)), timeout=60)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            refused += 1
            hits[direction].append([])
            continue
        hits[direction].append([h.identity == r.identity for h in found.hits])
    if refused:
        print(f"demo: the service's guards refused {refused} of the test split's queries (counted as misses)")
    return {d: {k: sum(any(h[:k]) for h in rows_) / max(len(rows_), 1) for k in ks} for d, rows_ in hits.items()}


def people_for_grid(corpus: Path, n: int) -> list[dict[str, Item]]:
    """Up to N test people with a face and a voice, women and men alternating (so a decoder that
    draws one face per gender shows as two faces)."""
    people = people_of_test_split(corpus, 10_000)
    by = {g: [p for p in people if p["face"].gender == g] for g in sorted({p["face"].gender for p in people})}
    out: list[dict[str, Item]] = []
    while len(out) < n and any(by.values()):
        for g in by:
            if by[g] and len(out) < n:
                out.append(by[g].pop(0))
    return out


def identity_rank(hits, identity: str) -> int | None:
    """The true identity's rank among the distinct identities of HITS (1 = first); None if absent."""
    seen: list[str] = []
    for h in hits:
        if h.identity not in seen:
            seen.append(h.identity)
        if h.identity == identity:
            return len(seen)
    return None


TRUTH = ("gender", "age_group", "appearance_group")


def beside_truth(hits, truth: Item, top_k: int) -> str:
    """The first TOP_K hits, each with its attributes and which of them are the truth's."""
    lines = [f"  {'rank':>4}  {'identity':<10} {'score':>7}  {'gender':<7} {'age':<5} {'group':<5}  same as the truth"]
    for k, h in enumerate(hits[:top_k], 1):
        same = ["THE PERSON"] if h.identity == truth.identity else \
            [a for a in TRUTH if h.attributes.get(a) == getattr(truth, a)]
        a = [h.attributes.get(x, "?") for x in TRUTH]
        lines.append(f"  {k:>4}  {h.identity:<10} {h.score:>7.4f}  {a[0]:<7} {a[1]:<5} {a[2]:<5}  "
                     + (", ".join(same) or "-"))
    return "\n".join(lines)


def _rank_text(rank: int | None, people: int, searched: int) -> str:
    return (f"the true identity is rank {rank} of {people} people" if rank is not None
            else f"the true identity is not in the first {searched} hits")


def s2f_grid(cells: list[tuple[str, bytes, bytes]], path: Path, size: int = 128) -> None:
    """One PNG: for each person (label, photo bytes, S2F PNG bytes) the photo above the face drawn
    from their voice."""
    import io

    from PIL import Image, ImageDraw

    label_h, pad = 30, 4
    width = len(cells) * (size + pad) + pad
    grid = Image.new("RGB", (width, 2 * size + label_h + 3 * pad + 14), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((pad, 2), "top: the person's photo    bottom: ReconstructFace from their voice (Speech2Face)",
              fill="black")
    for k, (label, photo, png) in enumerate(cells):
        x = pad + k * (size + pad)
        for row, data in enumerate((photo, png)):
            im = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BICUBIC)
            grid.paste(im, (x, 14 + row * (size + pad)))
        for n, text in enumerate(label.split("\n")[:2]):
            draw.text((x, 14 + 2 * (size + pad) + n * 12), text, fill="black")
    grid.save(path)


def serve_and_query(repo: Path, indexes: Path, corpus: Path, out: Path, people: int = 3, top_k: int = 5,
                    grid: int = 8, figures: dict | None = None, progress: bool = False, echo: bool = False,
                    on_answer: Callable[[], None] | None = None) -> str:
    """Starts the service on a free port, queries it through the gRPC client, stops it; returns
    the readable result: each query's hits beside the truth and the true identity's rank, Match,
    ReconstructFace, recall through the service beside FIGURES (the evaluation's, release.figures
    names), and OUT/s2f_grid.png (the S2F faces beside the photos)."""
    import grpc

    from facevoice.service.handlers import MAX_TOP_K
    from facevoice.service.serve import Running, ServeConfig
    from facevoice.v1 import facevoice_pb2 as pb
    from facevoice.v1 import facevoice_pb2_grpc as pb_grpc

    out.mkdir(parents=True, exist_ok=True)
    running = Running(ServeConfig(model_repo=repo, index_root=indexes, host="127.0.0.1", port=0, metrics_port=-1,
                                  poll_s=0.0))
    stub = pb_grpc.FaceVoiceStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
    lines = [f"service on 127.0.0.1:{running.port} ({running.embedder.runner.name} runner, models {repo})"]
    found = {"SearchFaces": 0, "SearchVoices": 0, "Match": 0}
    chosen = people_of_test_split(corpus, people + 1)
    gallery_people = len({r.identity for r in test_rows(corpus)})
    shown = 0
    try:
        for k, person in enumerate(chosen[:people]):
            face_row, voice_row = person["face"], person["voice"]
            ident = face_row.identity
            truth = " ".join(f"{a}={getattr(face_row, a)}" for a in TRUTH)
            voice = pb.Audio(data=(corpus / voice_row.path).read_bytes())
            face = pb.Image(data=(corpus / face_row.path).read_bytes())
            lines.append(f"\n{ident}, the truth: {truth}")
            r = stub.SearchFaces(pb.SearchFacesRequest(voice=voice, top_k=MAX_TOP_K), timeout=60)
            rank = identity_rank(r.hits, ident)
            found["SearchFaces"] += rank is not None and rank <= top_k
            lines += [f" SearchFaces, voice {voice_row.path}: {_rank_text(rank, gallery_people, len(r.hits))}",
                      beside_truth(r.hits, face_row, top_k)]
            if echo:
                print("\n".join(lines[shown:]), flush=True)  # each answer as soon as it is there
                shown = len(lines)
            if on_answer:
                on_answer()
            r = stub.SearchVoices(pb.SearchVoicesRequest(face=face, top_k=MAX_TOP_K), timeout=60)
            rank = identity_rank(r.hits, ident)
            found["SearchVoices"] += rank is not None and rank <= top_k
            lines += [f" SearchVoices, face {face_row.path}: {_rank_text(rank, gallery_people, len(r.hits))}",
                      beside_truth(r.hits, face_row, top_k)]
            other = chosen[(k + 1) % len(chosen)]["face"]
            m = stub.Match(pb.MatchRequest(probe=pb.Media(audio=voice), candidates=[
                pb.Media(image=face), pb.Media(image=pb.Image(data=(corpus / other.path).read_bytes()))]),
                timeout=60)
            right = m.ranking[0].index == 0
            found["Match"] += right
            lines.append(f" Match, voice vs [{ident}, {other.identity}]: chose "
                         f"{[ident, other.identity][m.ranking[0].index]} ({'right' if right else 'wrong'})")
            try:
                rec = stub.ReconstructFace(pb.ReconstructFaceRequest(voice=voice, top_k=3), timeout=60)
                path = out / f"{ident}_s2f.png"
                path.write_bytes(rec.png)
                lines.append(f" ReconstructFace -> {path}; nearest by face feature: "
                             + ", ".join(f"{h.identity} ({h.attributes.get('gender', '?')})" for h in rec.nearest))
            except grpc.RpcError as e:
                lines.append(f" ReconstructFace: {e.code().name}: {e.details()}")
            if echo:
                print("\n".join(lines[shown:]), flush=True)
                shown = len(lines)
        cells = []
        for p in tqdm(people_for_grid(corpus, grid), desc="S2F grid", unit="person", disable=not progress):
            try:
                rec = stub.ReconstructFace(pb.ReconstructFaceRequest(
                    voice=pb.Audio(data=(corpus / p["voice"].path).read_bytes())), timeout=60)
            except grpc.RpcError as e:
                lines.append(f"\nS2F grid: ReconstructFace {e.code().name}: {e.details()}")
                cells = []
                break
            f = p["face"]
            cells.append((f"{f.identity}\n{f.gender} {f.age_group} {f.appearance_group}",
                          (corpus / f.path).read_bytes(), rec.png))
        if cells:
            s2f_grid(cells, out / "s2f_grid.png")
            lines.append(f"\nS2F faces beside the photos of {len(cells)} test people: {out / 's2f_grid.png'}")
        recall = service_recall(stub, corpus, progress=progress)
    finally:
        running.stop(0)
    for d, arrow, name in (("v2f", "V->F", "voice -> faces"), ("f2v", "F->V", "face -> voices")):
        line = f"\nrecall@1/5/10 through the service, every test {name}: " + \
            " / ".join(f"{100 * v:.1f}%" for v in recall[d].values())
        offline = (figures or {}).get(f"association {arrow} recall@10")
        if offline:
            line += f"  (the evaluation's recall@10: {100 * offline['value']:.1f}%; {offline['what']})"
        lines.append(line)
    n = min(people, len(chosen))
    lines.append(f"\ntrue identity in the top {top_k}: SearchFaces {found['SearchFaces']}/{n}, "
                 f"SearchVoices {found['SearchVoices']}/{n}; Match right {found['Match']}/{n} "
                 f"(chance: top-{top_k} of {gallery_people} test people ~{top_k / max(gallery_people, 1):.0%}, "
                 "Match 50%)")
    text = "\n".join(lines)
    (out / "queries.txt").write_text(text + "\n")
    if echo:
        print("\n".join(lines[shown:]), flush=True)
    return text
