"""Triton python-backend model: runs the `model.onnx` beside it with onnxruntime.

Copied as `<model>/<version>/model.py` by `facevoice export`. The `tritonserver` that
nvidia-pytriton ships has only the python backend; the NGC image runs the same `model.onnx` with
its onnxruntime backend instead (configs/gpu.pbtxt, configs/cpu.pbtxt).
"""

import json
import os
import sys
from pathlib import Path

# The stub's embedded interpreter ignores PYTHONPATH, but the environment reaches it: honour it,
# so onnxruntime and numpy come from the environment the server was started from.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        """Parse the config once; one onnxruntime session for this instance."""
        config = json.loads(args["model_config"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        # Triton runs several instances side by side; each gets a deliberate thread budget
        options.intra_op_num_threads = int(os.environ.get("FACEVOICE_ORT_THREADS", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        """One response per request; the requests of a dynamic batch run as one onnxruntime call."""
        arrays = {name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
                  for name in self.inputs}
        sizes = [len(a) for a in arrays[self.inputs[0]]]
        feeds = {name: np.concatenate(parts) for name, parts in arrays.items()}
        try:
            results = self.session.run(self.outputs, feeds)
        except Exception as e:  # a bad batch fails its requests, never the instance
            error = pb_utils.TritonError(f"onnxruntime: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            tensors = [pb_utils.Tensor(name, out[start:start + n])
                       for name, out in zip(self.outputs, results, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses

    def finalize(self):
        self.session = None
