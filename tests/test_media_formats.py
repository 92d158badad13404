"""Every common audio format, and the audio track of video, decodes to the same speech (within
codec tolerance) and gives the same embedding through every audio RPC (issue 17, section 2)."""

from __future__ import annotations

import numpy as np
import pytest

from devtools.media_samples import FORMATS, encode, speech, wav_bytes
from facevoice.service.media.audio import decode_audio, resample
from facevoice.service.media.containers import sniff
from facevoice.v1 import facevoice_pb2 as pb
from tests.serving import start_service


@pytest.fixture(scope="module")
def voice():
    x, sr = speech()
    return x, sr, {name: encode(x, sr, name) for name in FORMATS}


def test_each_format_is_sniffed_and_decodes_to_the_same_speech(voice):
    x, sr, files = voice
    expected = {"mp3": "mp3", "m4a": "mp4", "webm-opus": "matroska", "ogg-opus": "ogg", "mp4-video": "mp4",
                "mkv-video": "matroska", "webm-video": "matroska"}
    for name, data in files.items():
        assert sniff(data) == expected[name]
        y, rate = decode_audio(data)
        y = resample(y, rate, sr)
        assert abs(len(y) - len(x)) < 0.05 * sr, name  # within codec padding
        n = min(len(x), len(y))
        r = np.corrcoef(x[:n], y[:n])[0, 1]
        assert r > 0.98, (name, r)


def test_every_audio_rpc_embeds_every_format_as_the_wav(stack, voice):
    x, sr, files = voice
    running, stub = start_service(stack)
    try:
        def embeds(data: bytes) -> dict[str, np.ndarray]:
            audio = pb.Audio(data=data)
            return {"association": np.asarray(stub.Embed(pb.EmbedRequest(media=pb.Media(audio=audio))).embedding),
                    "s2f": np.asarray(stub.Embed(pb.EmbedRequest(media=pb.Media(audio=audio),
                                                                 space=pb.FACE_FEATURE)).embedding),
                    "search": np.asarray([h.distance for h in stub.SearchFaces(
                        pb.SearchFacesRequest(voice=audio, top_k=5)).hits])}

        wav = embeds(wav_bytes(x, sr))
        for name, data in files.items():
            got = embeds(data)
            for key in ("association", "s2f"):
                cos = got[key] @ wav[key] / (np.linalg.norm(got[key]) * np.linalg.norm(wav[key]))
                assert cos > 0.99, (name, key, cos)
            assert stub.ReconstructFace(pb.ReconstructFaceRequest(voice=pb.Audio(data=data))).png
            assert np.allclose(got["search"], wav["search"], rtol=0.05, atol=0.05), name
            face = pb.Media(image=pb.Image(data=(stack.corpus / "toy001" / "0.png").read_bytes()))
            ranked = stub.Match(pb.MatchRequest(probe=pb.Media(audio=pb.Audio(data=data)), candidates=[face, face]))
            assert len(ranked.ranking) == 2
            up = stub.UpsertItems(pb.UpsertItemsRequest(items=[pb.GalleryItem(
                item_id=f"fmt-{name}", identity="speaker", media=pb.Media(audio=pb.Audio(data=data)))]))
            assert up.upserted == 1
    finally:
        running.stop(0)


def test_index_build_takes_a_gallery_of_compressed_voices(stack, voice, tmp_path):
    from facevoice.service.build import IndexBuildOptions, index_build
    from facevoice.service.versions import current_version, load_version

    files = voice[2]
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    rows = ["item_id,identity,modality,path,split"]
    for name, data in files.items():
        (gallery / f"{name}.bin").write_bytes(data)
        rows.append(f"{name},speaker,voice,{name}.bin,test")
    (gallery / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "indexes"
    index_build(IndexBuildOptions(gallery=gallery / "manifest.csv", model_repo=stack.repo, out=out,
                                  modalities=("voice",), no_progress=True))
    built = load_version(out, "voice", current_version(out, "voice"), _voice_version(stack))
    assert built.size == len(files) and not (out / "skipped-voice.csv").exists()


def _voice_version(stack) -> str:
    from facevoice.service.repository import read_repository_manifest

    return read_repository_manifest(stack.repo).spaces["voice"].version
