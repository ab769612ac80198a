"""Errors raised in execute, errors returned in a response, Logger lines, and how input
tensors reach numpy (a read-only view of the server's buffer) and go through DLPack."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            mode = int(pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0])
            if mode == 1:
                raise ValueError("faulty model raised on purpose")
            if mode == 2:
                error = pb_utils.TritonError("MODE 2 is refused", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            if mode == 3:
                pb_utils.Logger.log_info("faulty: info line")
                pb_utils.Logger.log_warn("faulty: warning line")
                pb_utils.Logger.log_error("faulty: error line")
                pb_utils.Logger.log_verbose("faulty: verbose line")
            if mode == 4:
                # 1 when the input is a view of the server's buffer, not a copy.
                array = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()
                view = not array.flags.writeable and not array.flags.owndata
                out = pb_utils.Tensor("OUT", np.array([int(view)], dtype=np.int32))
            elif mode == 5:
                # Through DLPack and back.
                tensor = pb_utils.get_input_tensor_by_name(request, "MODE")
                out = pb_utils.Tensor.from_dlpack("OUT", tensor.to_dlpack())
            else:
                out = pb_utils.Tensor("OUT", np.array([mode], dtype=np.int32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
