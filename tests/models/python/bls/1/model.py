"""BLS from a Python model: exec, async_exec and exec(decoupled=True) on other models of
the same server, written as Triton's BLS documentation shows them."""

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


def mlp_request(features):
    return pb_utils.InferenceRequest(
        model_name="onnx_mlp",
        requested_output_names=["OUTPUT0"],
        inputs=[pb_utils.Tensor("INPUT0", features)],
    )


def repeat_request(values, delay_ms):
    return pb_utils.InferenceRequest(
        model_name="repeat",
        requested_output_names=["OUT"],
        inputs=[
            pb_utils.Tensor("IN", np.array(values, dtype=np.int32)),
            pb_utils.Tensor("DELAY_MS", np.array([delay_ms], dtype=np.uint32)),
        ],
    )


def output_of(response, name):
    if response.has_error():
        raise pb_utils.TritonModelException(response.error().message())
    return pb_utils.get_output_tensor_by_name(response, name).as_numpy()


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            features = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
            outputs = []
            if mode == "sync":
                outputs.append(pb_utils.Tensor("OUTPUT0", output_of(mlp_request(features).exec(), "OUTPUT0")))
            elif mode == "async":
                first, second = await asyncio.gather(
                    mlp_request(features).async_exec(),
                    mlp_request(-features).async_exec(),
                )
                outputs.append(pb_utils.Tensor("OUTPUT0", output_of(first, "OUTPUT0")))
                outputs.append(pb_utils.Tensor("OUTPUT1", output_of(second, "OUTPUT0")))
            elif mode == "decoupled":
                values = []
                for response in repeat_request([5, 6, 7], 10).exec(decoupled=True):
                    values.extend(output_of(response, "OUT").tolist())
                outputs.append(pb_utils.Tensor("REPEATED", np.array(values, dtype=np.int32)))
            elif mode == "stop":
                stream = repeat_request(list(range(50)), 20).exec(decoupled=True)
                first = next(iter(stream))
                stream.cancel()
                outputs.append(pb_utils.Tensor("REPEATED", output_of(first, "OUT")))
            elif mode == "missing":
                response = pb_utils.InferenceRequest(
                    model_name="no_such_model",
                    requested_output_names=["OUTPUT0"],
                    inputs=[pb_utils.Tensor("INPUT0", features)],
                ).exec()
                message = response.error().message() if response.has_error() else ""
                outputs.append(pb_utils.Tensor("ERROR", np.array([message], dtype=np.object_)))
            elif mode == "raise":
                response = pb_utils.InferenceRequest(
                    model_name="onnx_mlp",
                    requested_output_names=["OUTPUT0"],
                    inputs=[pb_utils.Tensor("WRONG", features)],
                ).exec()
                message = response.error().message() if response.has_error() else ""
                outputs.append(pb_utils.Tensor("ERROR", np.array([message], dtype=np.object_)))
            else:
                raise pb_utils.TritonModelException(f"unknown MODE '{mode}'")
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
