"""Pre-processing for onnx_mlp as a Triton Python model: bytes scaled to [0, 1], centred and
spread, FEATURES = (RAW / 255 - 0.5) / 0.25 in FP32. The requests of a batch are stacked and
computed in one numpy expression, then split back into one response each."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        features = pb_utils.get_output_config_by_name(config, "FEATURES")
        self.dtype = pb_utils.triton_string_to_numpy(features["data_type"])

    def execute(self, requests):
        raws = [pb_utils.get_input_tensor_by_name(r, "RAW").as_numpy() for r in requests]
        rows = [len(raw) for raw in raws]
        stacked = np.concatenate(raws).astype(self.dtype)
        features = (stacked / self.dtype(255) - self.dtype(0.5)) / self.dtype(0.25)
        responses = []
        for part in np.split(features, np.cumsum(rows)[:-1]):
            tensor = pb_utils.Tensor("FEATURES", part)
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
