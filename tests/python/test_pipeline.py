"""The example classification pipeline of model_repository/ (docs/pipelines.md), through
tritonclient over HTTP and gRPC.

Three models make the pipeline: ``preprocess`` (RAW UINT8 [16] -> FEATURES FP32 [16]),
``onnx_mlp`` (INPUT0 FP32 [16] -> OUTPUT0 FP32 [4]) and ``postprocess`` (SCORES FP32 [4] ->
CLASS STRING [1], SCORE FP32 [1], labels from its labels.txt). It is wired twice: as the
ensemble ``classify_pipeline`` and as the business-logic backend ``classify_bls``. Both must
answer exactly what calling the three models in turn answers. A postprocess model whose
labels file is too short must fail to load with a clear reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from ferrum_harness import copy_model_repository, default_model_repository, start_server

TIMEOUT = 60
PIPELINE_MODELS = ["preprocess", "onnx_mlp", "postprocess", "classify_pipeline", "classify_bls"]
LABELS = [b"cat", b"dog", b"bird", b"fish"]
PROTOCOLS = ["http", "grpc"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = copy_model_repository(tmp_path_factory.mktemp("repo"), PIPELINE_MODELS)
    srv = start_server(repo)
    yield srv
    srv.stop_and_check()


def infer(server, protocol, model, name, array, dtype, outputs):
    """One inference of ``model`` with one input; returns the named outputs as numpy arrays."""
    mod = httpclient if protocol == "http" else grpcclient
    client = (httpclient.InferenceServerClient(server.http_url, network_timeout=TIMEOUT)
              if protocol == "http" else grpcclient.InferenceServerClient(server.grpc_url))
    try:
        inp = mod.InferInput(name, list(array.shape), dtype)
        inp.set_data_from_numpy(array)
        wanted = [mod.InferRequestedOutput(o) for o in outputs]
        result = client.infer(model, [inp], outputs=wanted)
        return {o: result.as_numpy(o) for o in outputs}
    finally:
        client.close()


def in_turn(server, protocol, raw):
    """CLASS and SCORE from calling preprocess, onnx_mlp and postprocess one after another."""
    features = infer(server, protocol, "preprocess", "RAW", raw, "UINT8", ["FEATURES"])["FEATURES"]
    scores = infer(server, protocol, "onnx_mlp", "INPUT0", features, "FP32", ["OUTPUT0"])["OUTPUT0"]
    return features, scores, infer(server, protocol, "postprocess", "SCORES", scores, "FP32",
                                   ["CLASS", "SCORE"])


def raw_batch(seed, rows):
    return np.random.default_rng(seed).integers(0, 256, size=(rows, 16), dtype=np.uint8)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_steps_compute_what_the_pipeline_promises(server, protocol):
    raw = raw_batch(7, 3)
    features, scores, post = in_turn(server, protocol, raw)
    np.testing.assert_allclose(features, (raw.astype(np.float32) / 255 - 0.5) / 0.25, rtol=1e-6)
    assert scores.shape == (3, 4)
    assert post["CLASS"].shape == (3, 1) and post["SCORE"].shape == (3, 1)
    for row in range(3):
        best = int(np.argmax(scores[row]))
        assert post["CLASS"][row, 0] == LABELS[best]
        assert post["SCORE"][row, 0] == scores[row, best]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["classify_pipeline", "classify_bls"])
@pytest.mark.parametrize("rows", [1, 3])
def test_the_pipeline_answers_what_calling_its_steps_in_turn_answers(server, protocol, model, rows):
    for seed in range(3):
        raw = raw_batch(100 * rows + seed, rows)
        _, _, expected = in_turn(server, protocol, raw)
        got = infer(server, protocol, model, "RAW", raw, "UINT8", ["CLASS", "SCORE"])
        assert got["CLASS"].shape == (rows, 1), got["CLASS"]
        assert got["SCORE"].shape == (rows, 1), got["SCORE"]
        assert got["CLASS"].dtype == np.object_
        assert got["CLASS"].tolist() == expected["CLASS"].tolist()
        assert all(c in LABELS for c in got["CLASS"].ravel())
        np.testing.assert_array_equal(got["SCORE"], expected["SCORE"])


def test_both_pipelines_are_listed_ready(server):
    index = requests.post(f"{server.http_base}/v2/repository/index", json={}, timeout=TIMEOUT)
    states = {row["name"]: row.get("state") for row in index.json()}
    for name in PIPELINE_MODELS:
        assert states.get(name) == "READY", (name, states)


def test_bad_labels_and_a_self_calling_pipeline_are_clear_load_errors(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(default_model_repository() / "postprocess", repo / "postprocess")
    (repo / "postprocess" / "labels.txt").write_text("cat\ndog\n")
    shutil.copytree(default_model_repository() / "postprocess", repo / "postprocess_nolabels")
    (repo / "postprocess_nolabels" / "labels.txt").unlink()
    config = repo / "postprocess_nolabels" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "postprocess"', 'name: "postprocess_nolabels"'))
    # A business-logic pipeline told to call itself as a step refuses to load.
    shutil.copytree(default_model_repository() / "classify_bls", repo / "classify_bls")
    config = repo / "classify_bls" / "config.pbtxt"
    config.write_text(config.read_text() + 'parameters { key: "classifier_model" '
                      'value: { string_value: "classify_bls" } }\n')
    srv = start_server(repo)
    try:
        index = requests.post(f"{srv.http_base}/v2/repository/index", json={}, timeout=TIMEOUT)
        rows = {row["name"]: row for row in index.json()}
        looping = rows["classify_bls"]
        assert looping.get("state") == "UNAVAILABLE", looping
        assert "must name another model" in looping.get("reason", ""), looping
        short = rows["postprocess"]
        assert short.get("state") == "UNAVAILABLE", short
        for text in ("labels.txt", "2 label(s)", "4 scores per row"):
            assert text in short.get("reason", ""), short
        missing = rows["postprocess_nolabels"]
        assert missing.get("state") == "UNAVAILABLE", missing
        assert "cannot read the labels file" in missing.get("reason", ""), missing
        assert "labels.txt" in missing.get("reason", ""), missing
    finally:
        srv.stop_and_check()
