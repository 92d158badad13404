"""The exported repository in a real Triton (the tritonserver nvidia-pytriton ships, python
backend): every network equals PyTorch, and the service's Triton path survives Triton going away."""

from __future__ import annotations

import json
import time

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as tc

from devtools.local_servers import LocalTriton
from facevoice.v1 import facevoice_pb2 as pb
from tests.serving import media, start_service
from tests.test_export import _torch_networks


@pytest.fixture(scope="module")
def triton(stack, tmp_path_factory):
    server = LocalTriton(stack.repo, workdir=tmp_path_factory.mktemp("triton")).start()
    yield server
    server.stop()


def test_every_model_loads_and_matches_pytorch(stack, triton):
    client = tc.InferenceServerClient(triton.grpc_url)
    manifest = json.loads((stack.repo / "facevoice.json").read_text())
    entries = {**manifest["groups"]["association"]["networks"], **manifest["groups"]["speech2face"]["networks"]}
    nets = _torch_networks(stack)
    rng = np.random.default_rng(2)
    for name, e in entries.items():
        assert client.is_model_ready(name, str(e["triton_version"]))
        x = rng.standard_normal((3, *e["input_dims"]), dtype=np.float32)
        inp = tc.InferInput(e["input"], list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out = client.infer(name, [inp]).as_numpy(e["output"])
        with torch.no_grad():
            ref = nets[name].eval()(torch.from_numpy(x)).numpy()
        assert out.shape == ref.shape and np.abs(out - ref).max() <= 1e-4, name


def test_service_on_triton_answers_like_the_embedded_default(stack, triton):
    embedded, stub_e = start_service(stack)
    remote, stub_t = start_service(stack, triton_url=triton.grpc_url)
    try:
        request = pb.SearchFacesRequest(voice=pb.Audio(data=media(stack, "toy006", "voice")), top_k=5)
        a, b = stub_e.SearchFaces(request), stub_t.SearchFaces(request)
        assert [h.item_id for h in a.hits] == [h.item_id for h in b.hits]
        assert np.allclose([h.distance for h in a.hits], [h.distance for h in b.hits], atol=1e-4)
        r = stub_t.ReconstructFace(pb.ReconstructFaceRequest(voice=request.voice))
        assert r.png.startswith(b"\x89PNG")
    finally:
        embedded.stop(0)
        remote.stop(0)


def test_triton_down_is_unavailable_and_recovers_without_a_restart(stack, triton):
    running, stub = start_service(stack, triton_url=triton.grpc_url, triton_retries=1)
    request = pb.SearchFacesRequest(voice=pb.Audio(data=media(stack, "toy006", "voice")), top_k=2)
    try:
        assert stub.SearchFaces(request, timeout=30).hits
        triton.stop()
        with pytest.raises(grpc.RpcError) as e:
            stub.SearchFaces(request, timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "Triton" in e.value.details()
        # the process is fine, and searches work again once Triton is back (clients retry UNAVAILABLE)
        triton.start()
        codes = []
        for _ in range(50):
            try:
                assert stub.SearchFaces(request, timeout=30).hits
                break
            except grpc.RpcError as err:
                codes.append(err.code())
                time.sleep(0.2)
        else:
            pytest.fail(f"no recovery: {codes}")
        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}
    finally:
        running.stop(0)
