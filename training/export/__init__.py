"""`facevoice export`: trained runs -> a Triton model repository (ONNX + config.pbtxt + the manifest
the service reads). The one hand-off from the offline side to the online side."""
