"""BYTES tensors both ways, and the request's context echoed back as JSON."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.args = dict(args)

    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            assert text.dtype == np.object_, text.dtype
            upper = np.array([t.upper() for t in text.reshape(-1)], dtype=np.object_)
            info = {
                "args": self.args,
                "request_id": request.request_id(),
                "correlation_id": request.correlation_id(),
                "parameters": json.loads(request.parameters()),
                "requested_output_names": request.requested_output_names(),
                "element_types": sorted({type(t).__name__ for t in text.reshape(-1)}),
            }
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("UPPER", upper.reshape(text.shape)),
                        pb_utils.Tensor("INFO", np.array([json.dumps(info)], dtype=np.object_)),
                    ]
                )
            )
        return responses
