"""Business logic in Python: pre-processing in numpy, the network through BLS, the
post-processing in numpy again. Each request of a batch calls onnx_mlp with its own rows."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "RAW").as_numpy()
            features = ((raw.astype(np.float32) / 255.0 - 0.5) / 0.25).astype(np.float32)
            result = pb_utils.InferenceRequest(
                model_name="onnx_mlp",
                requested_output_names=["OUTPUT0"],
                inputs=[pb_utils.Tensor("INPUT0", features)],
            ).exec()
            if result.has_error():
                responses.append(pb_utils.InferenceResponse(error=result.error()))
                continue
            scores = pb_utils.get_output_tensor_by_name(result, "OUTPUT0").as_numpy()
            best = np.argmax(scores, axis=1)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("CLASS", best.astype(np.int32).reshape(-1, 1)),
                        pb_utils.Tensor(
                            "SCORE", scores[np.arange(len(best)), best].reshape(-1, 1).astype(np.float32)
                        ),
                    ]
                )
            )
        return responses
