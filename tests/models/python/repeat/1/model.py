"""Triton's decoupled repeat example, written again: a thread per request sends its
responses through the request's response sender, then the final flag."""

import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("repeat must be decoupled")
        self.lock = threading.Lock()
        self.inflight = 0

    def execute(self, requests):
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().copy()
            delay = int(pb_utils.get_input_tensor_by_name(request, "DELAY_MS").as_numpy()[0])
            sender = request.get_response_sender()
            with self.lock:
                self.inflight += 1
            threading.Thread(target=self.stream, args=(request, sender, values, delay)).start()
        return None

    def stream(self, request, sender, values, delay):
        try:
            for idx, value in enumerate(values):
                if request.is_cancelled() or sender.is_cancelled():
                    pb_utils.Logger.log_info(
                        f"repeat: request '{request.request_id()}' cancelled after {idx} responses"
                    )
                    break
                response = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("OUT", np.array([value], dtype=np.int32)),
                        pb_utils.Tensor("IDX", np.array([idx], dtype=np.uint32)),
                    ]
                )
                sender.send(response)
                time.sleep(delay / 1000.0)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            with self.lock:
                self.inflight -= 1

    def finalize(self):
        deadline = time.time() + 5
        while self.inflight > 0 and time.time() < deadline:
            time.sleep(0.01)
