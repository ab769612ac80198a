"""System shared memory, classification, streaming and CUDA shared memory (refused cleanly)
through tritonclient, over HTTP and gRPC."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from ferrum_checks import assert_simple_result, simple_data

BYTES = 16 * 4  # one INT32 [1, 16] tensor


@pytest.fixture
def regions(request):
    """Input and output shared memory objects with simple's data written in."""
    tag = request.node.name.replace("[", "_").replace("]", "")
    handles = {}
    for name in ("input0", "input1", "output0", "output1"):
        handles[name] = shm.create_shared_memory_region(f"{tag}_{name}", f"/{tag}_{name}", BYTES)
    in0, in1 = simple_data()
    shm.set_shared_memory_region(handles["input0"], [in0])
    shm.set_shared_memory_region(handles["input1"], [in1])
    yield tag, handles, in0, in1
    for handle in handles.values():
        shm.destroy_shared_memory_region(handle)


def register(client, tag):
    for name in ("input0", "input1", "output0", "output1"):
        client.register_system_shared_memory(f"{tag}_{name}", f"/{tag}_{name}", BYTES)


def shm_inputs_outputs(module, tag):
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory(f"{tag}_input0", BYTES)
    inputs[1].set_shared_memory(f"{tag}_input1", BYTES)
    outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory(f"{tag}_output0", BYTES)
    outputs[1].set_shared_memory(f"{tag}_output1", BYTES)
    return inputs, outputs


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_system_shared_memory_round_trip(server, regions, protocol):
    tag, handles, in0, in1 = regions
    module = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    client = module.InferenceServerClient(url)
    try:
        register(client, tag)
        status = client.get_system_shared_memory_status()
        names = [r["name"] for r in status] if protocol == "http" else list(status.regions)
        assert {f"{tag}_{n}" for n in ("input0", "input1", "output0", "output1")} <= set(names)

        inputs, outputs = shm_inputs_outputs(module, tag)
        result = client.infer("simple", inputs, outputs=outputs)
        out0 = result.get_output("OUTPUT0")
        out0_params = out0["parameters"] if protocol == "http" else out0.parameters
        region = out0_params["shared_memory_region"]
        region = region if protocol == "http" else region.string_param
        assert region == f"{tag}_output0"
        sum_ = shm.get_contents_as_numpy(handles["output0"], np.int32, [1, 16])
        diff = shm.get_contents_as_numpy(handles["output1"], np.int32, [1, 16])
        np.testing.assert_array_equal(sum_, in0 + in1)
        np.testing.assert_array_equal(diff, in0 - in1)

        # Bounds: a byte size past the region's end is refused, the server keeps serving.
        bad = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
        bad[0].set_shared_memory(f"{tag}_input0", BYTES, offset=8)
        bad[1].set_shared_memory(f"{tag}_input1", BYTES)
        with pytest.raises(InferenceServerException) as info:
            client.infer("simple", bad)
        assert "runs past its end" in info.value.message()

        client.unregister_system_shared_memory(f"{tag}_input0")
        with pytest.raises(InferenceServerException) as info:
            client.infer("simple", *shm_inputs_outputs(module, tag)[:1])
        assert "not registered" in info.value.message()
        client.unregister_system_shared_memory()
        status = client.get_system_shared_memory_status()
        assert (len(status) if protocol == "http" else len(status.regions)) == 0
        with pytest.raises(InferenceServerException):
            client.register_system_shared_memory("missing", "/ferrum_no_such_key", BYTES)
    finally:
        client.close()


def test_cuda_shared_memory_is_refused_cleanly(server):
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.get_cuda_shared_memory_status() == []
        with pytest.raises(InferenceServerException) as info:
            client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64)
        assert "not supported" in info.value.message()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64)
        assert info.value.status() == "StatusCode.UNIMPLEMENTED"
        assert "not supported" in info.value.message()


@pytest.fixture
def labelled_repo(model_repository_copy):
    model = model_repository_copy / "identity_fp32"
    (model / "labels.txt").write_text("zero\none\ntwo\nthree\n")
    config = (model / "config.pbtxt").read_text()
    config = config.replace('output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]',
                            'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] label_filename: "labels.txt" } ]')
    assert "labels.txt" in config
    (model / "config.pbtxt").write_text(config)
    return model_repository_copy


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classification_top_k(server_factory, labelled_repo, protocol):
    srv = server_factory(labelled_repo)
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(srv.http_url if protocol == "http" else srv.grpc_url)
    try:
        values = np.array([[0.1, 0.7, 0.05, 0.15], [0.9, 0.0, 0.3, 0.2]], dtype=np.float32)
        inp = module.InferInput("INPUT0", list(values.shape), "FP32")
        inp.set_data_from_numpy(values)
        out = module.InferRequestedOutput("OUTPUT0", class_count=2)
        result = client.infer("identity_fp32", [inp], outputs=[out]).as_numpy("OUTPUT0")
        got = [[v.decode() for v in row] for row in result]
        assert got == [["0.700000:1:one", "0.150000:3:three"], ["0.900000:0:zero", "0.300000:2:two"]]
    finally:
        client.close()


def test_stream_infer_answers_every_request(server):
    """Requests on one stream run concurrently, so their responses may come in any order;
    each carries its request's id, and a bad request's error does not end the stream."""
    responses = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        sent = {}
        for i in range(5):
            in0, in1 = simple_data(seed=100 + i)
            inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
            inputs[0].set_data_from_numpy(in0)
            inputs[1].set_data_from_numpy(in1)
            client.async_stream_infer("simple", inputs, request_id=str(i))
            sent[str(i)] = (in0, in1)
        bad = grpcclient.InferInput("INPUT0", [1, 3], "INT32")
        bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.int32))
        client.async_stream_infer("simple", [bad], request_id="bad")
        errors = []
        for _ in range(len(sent) + 1):
            result, error = responses.get(timeout=30)
            if error is not None:
                errors.append(error)
                continue
            response = result.get_response()
            assert response.parameters["triton_final_response"].bool_param
            in0, in1 = sent.pop(response.id)
            assert_simple_result(result, in0, in1)
        assert not sent, f"no response for {sorted(sent)}"
        assert len(errors) == 1 and "INPUT0" in str(errors[0]), errors
    finally:
        client.stop_stream()
        client.close()
