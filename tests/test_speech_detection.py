"""Speech detection (issue 17, section 2): WebRTC's VAD trims silence and refuses clips without
speech; a model whose front end asks for it gets it from the service, one without does not."""

from __future__ import annotations

import dataclasses
import json
import shutil

import grpc
import numpy as np
import pytest

from devtools.media_samples import speech, wav_bytes
from facevoice.service import checksums
from facevoice.service.media.audio import AssociationAudio, association_waveform
from facevoice.service.media.errors import InvalidSignalError
from facevoice.service.media.frontends import from_dict, to_dict
from facevoice.service.media.speech import trim_to_speech
from facevoice.service.repository import REPOSITORY_MANIFEST
from facevoice.v1 import facevoice_pb2 as pb
from tests.serving import start_service


@pytest.fixture(scope="module")
def padded():
    """espeak-ng speech with a second of faint noise before and after it."""
    x, sr = speech()
    noise = (np.random.default_rng(0).standard_normal(sr) * 0.003).astype(np.float32)
    return x, sr, np.r_[noise, x, noise]


def test_trims_to_the_speech_and_refuses_noise(padded):
    x, sr, y = padded
    t = trim_to_speech(y, sr)
    assert len(x) <= len(t) <= len(x) + 0.5 * sr  # the two seconds of noise are gone, the speech is kept
    quiet = (np.random.default_rng(1).standard_normal(3 * sr) * 0.003).astype(np.float32)
    with pytest.raises(InvalidSignalError, match="no speech found"):
        trim_to_speech(quiet, sr)
    with pytest.raises(InvalidSignalError, match="no speech found"):
        trim_to_speech(x[: int(0.3 * sr)], sr, min_speech_seconds=0.5)


def test_the_front_end_records_and_applies_it(padded):
    _, sr, y = padded
    plain, vad = AssociationAudio(22_050, 4.0), AssociationAudio(22_050, 4.0, vad=True)
    assert from_dict(to_dict(vad)) == vad and from_dict({"kind": "association_audio"}) == AssociationAudio()
    data = wav_bytes(y, sr)
    assert np.array_equal(association_waveform(data, vad), association_waveform(wav_bytes(trim_to_speech(y, sr), sr),
                                                                                 plain))
    assert not np.array_equal(association_waveform(data, vad), association_waveform(data, plain))


def test_the_service_applies_the_models_speech_detection(stack, padded, tmp_path):
    x, sr, _ = padded
    repo = tmp_path / "repo"
    shutil.copytree(stack.repo, repo)
    manifest = json.loads((repo / REPOSITORY_MANIFEST).read_text())
    manifest["spaces"]["voice"]["frontend"]["vad"] = True  # as `train association --set voice.vad=true` records
    (repo / REPOSITORY_MANIFEST).write_text(json.dumps(manifest))
    checksums.write(repo)  # the service refuses a hand-edited manifest until its checksums are written anew
    quiet = wav_bytes((np.random.default_rng(2).standard_normal(2 * sr) * 0.003).astype(np.float32), sr)
    with_vad, stub = start_service(dataclasses.replace(stack, repo=repo))
    plain, plain_stub = start_service(stack)
    try:
        with pytest.raises(grpc.RpcError) as e:
            stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=quiet), top_k=3))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no speech found" in e.value.details()
        assert stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=wav_bytes(x, sr)), top_k=3)).hits
        # the guard is the service's, not the model's: every front end refuses the noise
        with pytest.raises(grpc.RpcError) as e:
            plain_stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=quiet), top_k=3))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no speech found" in e.value.details()
    finally:
        with_vad.stop(0)
        plain.stop(0)
