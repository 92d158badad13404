"""Issue 29 through the real service (the stack's models, trained with the guarded front ends):
real photos and speech, the variants users send, and what is not a face or a voice. Each row is
the same answer (cosine to the original's embedding) or a refusal with its message. The measured
cosines of docs/media.md's table: `python -m pytest -s tests/test_real_media.py` (the suite's
models), `python -m tests.test_real_media --model-repo models/demo` (the released ones)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from PIL import Image

from facevoice.v1 import facevoice_pb2 as pb
from tests.real_media import not_speech, photo, png, recording, voice_variants, wav
from tests.serving import start_service
from tests.toy_corpus import _speech

TARGET = 0.95  # issue 29: cosine to the 0 dB clip


@pytest.fixture(scope="module")
def service(stack):
    running, stub = start_service(stack)
    yield stub
    running.stop(0)


def embed(stub, media: pb.Media, space=pb.ASSOCIATION) -> np.ndarray:
    return np.asarray(stub.Embed(pb.EmbedRequest(media=media, space=space)).embedding, np.float32)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def refusal(call, request) -> str:
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return e.value.details()


SPEECH = {"ARCTIC a0007 (real)": lambda: recording("arctic_a0007.wav"), "espeak-ng": lambda: _speech(50)}


def voice_cosines(stub, space) -> dict[str, dict[str, float]]:
    out = {}
    for name, load in SPEECH.items():
        x, sr = load()
        ref = embed(stub, pb.Media(audio=pb.Audio(data=wav(x, sr))), space)
        out[name] = {k: cos(ref, embed(stub, pb.Media(audio=pb.Audio(data=v)), space))
                     for k, v in voice_variants(x, sr).items()}
    return out


@pytest.mark.parametrize("space", [pb.ASSOCIATION, pb.FACE_FEATURE])
def test_a_voice_embeds_the_same_at_any_level_after_any_silence(service, space):
    for speech, row in voice_cosines(service, space).items():
        print(f"\n{pb.Space.Name(space)} {speech}: " + "; ".join(f"{k} {v:.3f}" for k, v in row.items()))
        low = {k: round(v, 3) for k, v in row.items() if v < TARGET}
        assert not low, (speech, low)


@pytest.mark.parametrize("name", ["silence", "faint noise", "white noise", "room tone", "house music (pygame)",
                                  "synth music (pygame)"])
def test_what_is_not_speech_is_refused_everywhere(service, name):
    data = not_speech()[name]
    face = pb.Image(data=png(photo("astronaut.png")))
    calls = [(service.SearchFaces, pb.SearchFacesRequest(voice=pb.Audio(data=data), top_k=3)),
             (service.Embed, pb.EmbedRequest(media=pb.Media(audio=pb.Audio(data=data)))),
             (service.ReconstructFace, pb.ReconstructFaceRequest(voice=pb.Audio(data=data))),
             (service.Match, pb.MatchRequest(probe=pb.Media(image=face),
                                             candidates=[pb.Media(audio=pb.Audio(data=data))] * 2))]
    for call, request in calls:
        assert any(w in refusal(call, request) for w in ("no speech found", "silent")), name


def test_a_short_clip_is_refused_naming_the_speech_found(service):
    x, sr = _speech(50)
    message = refusal(service.Embed, pb.EmbedRequest(media=pb.Media(audio=pb.Audio(data=wav(x[: int(0.3 * sr)], sr)))))
    assert "no speech found" in message and "s of speech, 1 s needed" in message


NOT_FACES = ["chelsea.png", "coffee.png", "rocket.jpg", "moon.png", "horse.png", "page.png"]


@pytest.mark.parametrize("name", NOT_FACES)
def test_a_photo_without_a_face_is_refused_everywhere(service, stack, name):
    data = png(photo(name))
    voice = pb.Audio(data=(stack.corpus / next((stack.corpus).glob("*/0.wav")).relative_to(stack.corpus)).read_bytes())
    calls = [(service.SearchVoices, pb.SearchVoicesRequest(face=pb.Image(data=data), top_k=3)),
             (service.Embed, pb.EmbedRequest(media=pb.Media(image=pb.Image(data=data)))),
             (service.Match, pb.MatchRequest(probe=pb.Media(audio=voice),
                                             candidates=[pb.Media(image=pb.Image(data=data))] * 2)),
             (service.UpsertItems, pb.UpsertItemsRequest(items=[pb.GalleryItem(
                 item_id="cat", identity="cat", media=pb.Media(image=pb.Image(data=data)))]))]
    for call, request in calls:
        assert "no face found" in refusal(call, request), name


def test_real_faces_are_found_and_every_face_is_reported(service):
    hopper, astronaut = photo("grace_hopper.jpg"), photo("astronaut.png")
    for img in (hopper, astronaut):
        used = service.Embed(pb.EmbedRequest(media=pb.Media(image=pb.Image(data=png(img))))).face
        assert used.source == "detected" and len(used.faces) == 1
    pair = Image.new("RGB", (1100, 620), (90, 90, 90))
    pair.paste(hopper, (0, 10))
    pair.paste(astronaut, (560, 50))
    first = service.Embed(pb.EmbedRequest(media=pb.Media(image=pb.Image(data=png(pair))))).face
    second = service.Embed(pb.EmbedRequest(media=pb.Media(image=pb.Image(data=png(pair), face_index=1)))).face
    assert len(first.faces) == len(second.faces) == 2 and first.box.x < 512 < second.box.x
    message = refusal(service.Embed, pb.EmbedRequest(media=pb.Media(image=pb.Image(data=png(hopper), face_index=3))))
    assert message == "image: face 3 asked for, 1 found"


def test_a_small_face_in_a_large_photo_is_cut_from_where_it_is(service):
    hopper = photo("grace_hopper.jpg")
    big = Image.new("RGB", (3000, 2000), (140, 150, 120))
    big.paste(hopper.resize((256, 300)), (2300, 1500))
    alone = embed(service, pb.Media(image=pb.Image(data=png(hopper))))
    used = service.Embed(pb.EmbedRequest(media=pb.Media(image=pb.Image(data=png(big))))).face
    assert used.source == "detected" and used.box.x > 2300 and used.box.y > 1500
    assert cos(alone, embed(service, pb.Media(image=pb.Image(data=png(big))))) > 0.8


@pytest.mark.parametrize("box,words", [((0, 0, 1e9, 1e9), "larger than the"), ((10, 10, 0.01, 0.01), "under 8 px"),
                                       ((float("nan"), 0, 50, 50), "not finite")])
def test_client_boxes_are_bounded(service, box, words):
    image = pb.Image(data=png(photo("grace_hopper.jpg")), box=pb.FaceBox(x=box[0], y=box[1], width=box[2],
                                                                          height=box[3]))
    assert words in refusal(service.Embed, pb.EmbedRequest(media=pb.Media(image=image)))


def test_a_wav_whose_header_says_no_data_is_read(service):
    x, sr = recording("arctic_a0007.wav")
    data = bytearray(wav(x, sr))
    at = data.find(b"data")
    data[at + 4:at + 8] = (0).to_bytes(4, "little")
    ref = embed(service, pb.Media(audio=pb.Audio(data=wav(x, sr))))
    assert cos(ref, embed(service, pb.Media(audio=pb.Audio(data=bytes(data))))) > 0.999


if __name__ == "__main__":  # the cosine rows of docs/media.md for any model repository
    import argparse
    from pathlib import Path

    from facevoice.service.serve import Running, ServeConfig
    from facevoice.v1 import facevoice_pb2_grpc

    parser = argparse.ArgumentParser(description="voice variants' cosines through the real service")
    parser.add_argument("--model-repo", type=Path, default=Path("models/demo"))
    args = parser.parse_args()
    running = Running(ServeConfig(model_repo=args.model_repo, host="127.0.0.1", port=0, metrics_port=-1))
    try:
        stub = facevoice_pb2_grpc.FaceVoiceStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
        for space in (pb.ASSOCIATION, pb.FACE_FEATURE):
            for speech, row in voice_cosines(stub, space).items():
                print(f"{pb.Space.Name(space)} {speech}: " + "; ".join(f"{k} {v:.3f}" for k, v in row.items()))
    finally:
        running.stop(0)
