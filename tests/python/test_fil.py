"""The fil backend (backends/fil): tree ensembles served as Triton's FIL backend serves them.

Models are trained at test time with the real libraries (fixed seeds, in a temporary folder):
XGBoost binary, multi-class and regression models (JSON, one also as UBJSON, one with a
categorical feature), LightGBM binary, multi-class and regression models (NaNs in the data,
a categorical feature, zero-as-missing), and scikit-learn RandomForest / ExtraTrees /
GradientBoosting models exported as Treelite checkpoints (plus one float32 model made with
Treelite's model builder, checked against Treelite's GTIL). Every prediction is compared with
the library's own (1e-5) and every ``treeshap_output`` with ``pred_contribs`` /
``pred_contrib`` (1e-4; for the checkpoints, each row's SHAP values must sum to its margin),
over HTTP and gRPC. Damaged model files leave the model UNAVAILABLE with a reason naming the file;
a request with the wrong number of features is refused as an invalid argument.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ferrum_harness import start_server

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")

TIMEOUT = 60
FEATURES = 8
CAT = 7  # the categorical column (integer codes 0..11)
TRAIN_ROWS = 600
SEED = 1234


def make_data(rows: int, seed: int, nan_columns=range(4), nan_rate=0.12):
    """Features with NaNs in ``nan_columns``, a categorical last column and exact zeros."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    x[:, CAT] = rng.integers(0, 12, size=rows)
    x[rng.random(rows) < 0.1, 5] = 0.0
    for c in nan_columns:
        x[rng.random(rows) < nan_rate, c] = np.nan
    return x


def labels(x):
    """Binary, 3-class and regression targets that depend on several features."""
    x0 = np.nan_to_num(x, nan=0.3)
    score = x0[:, 0] + 0.5 * x0[:, 1] - x0[:, 2] * x0[:, 3] + (x0[:, CAT] % 3 == 1) * 1.2
    binary = (score > 0.2).astype(np.float32)
    multi = np.digitize(score, [-0.5, 0.8]).astype(np.float32)
    reg = (score * 3.0 + x0[:, 4] + np.sin(x0[:, 5]) + (x0[:, CAT] == 4) * 2.0).astype(np.float32)
    return binary, multi, reg


TRAIN = make_data(TRAIN_ROWS, SEED)
# Test rows: NaNs in every column (also those that never had one in training), unseen,
# negative and missing categories, zeros.
TEST = make_data(200, SEED + 1, nan_columns=range(FEATURES), nan_rate=0.08)
TEST[:5, CAT] = [15, -1, np.nan, 3.5, 11]
TEST[5:10, 5] = 0.0


def config(name, features, out_dims, params, shap_dims=None, input_dims=None, max_batch=1024):
    """A FIL config.pbtxt as Triton's FIL docs write them."""
    outputs = [f'{{ name: "output__0" data_type: TYPE_FP32 dims: [ {out_dims} ] }}']
    if shap_dims is not None:
        outputs.append(f'{{ name: "treeshap_output" data_type: TYPE_FP32 dims: [ {shap_dims} ] }}')
    plist = ",\n".join(
        f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()
    )
    return f"""name: "{name}"
backend: "fil"
max_batch_size: {max_batch}
input [ {{ name: "input__0" data_type: TYPE_FP32 dims: [ {input_dims or features} ] }} ]
output [ {", ".join(outputs)} ]
instance_group [{{ kind: KIND_CPU }}]
parameters [
{plist}
]
dynamic_batching {{ }}
"""


class Case:
    """One served model and what the library says it should answer."""

    def __init__(self, name, output0, shap=None, class_threshold=None):
        self.name = name
        self.output0 = output0
        self.shap = shap
        # For class outputs: the probability compared with the threshold (rows too close to
        # it are skipped, since a 1e-7 difference may flip them).
        self.class_threshold = class_threshold


def xgb_train(params, label, rounds=25, x=TRAIN, **dm):
    booster = xgb.train(
        {"max_depth": 5, "eta": 0.3, "seed": SEED, "nthread": 1, **params},
        xgb.DMatrix(x, label=label, missing=np.nan, **dm),
        num_boost_round=rounds,
    )
    return booster


def xgb_ref(booster, x=TEST, **dm):
    d = xgb.DMatrix(x, missing=np.nan, **dm)
    return booster.predict(d), booster.predict(d, pred_contribs=True)


def lgb_train(params, label, rounds=25, **extra):
    ds = lgb.Dataset(TRAIN, label=label, categorical_feature=[CAT], free_raw_data=False)
    return lgb.train(
        {"num_leaves": 15, "learning_rate": 0.2, "seed": SEED, "verbose": -1,
         "deterministic": True, "num_threads": 1, "min_data_per_group": 5,
         "cat_smooth": 1.0, **params},
        ds,
        num_boost_round=rounds,
        **extra,
    )


def lgb_ref(booster, x=TEST):
    return booster.predict(x), booster.predict(x, pred_contrib=True)


def write(repo, name, file, cfg, content=None, booster=None):
    version = repo / name / "1"
    version.mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(cfg)
    if booster is not None:
        if isinstance(booster, lgb.Booster):
            booster.save_model(str(version / file))
        else:
            booster.save_model(str(version / file))
    else:
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(version / file, mode) as f:
            f.write(content)


@pytest.fixture(scope="module")
def fil(tmp_path_factory):
    repo = tmp_path_factory.mktemp("fil-repo")
    binary, multi, reg = labels(TRAIN)
    cases = {}
    f = FEATURES
    cls_params = {"output_class": "true", "predict_proba": "true"}

    # XGBoost binary: probabilities (2 columns) + SHAP; the class with a threshold.
    b = xgb_train({"objective": "binary:logistic"}, binary)
    p, contrib = xgb_ref(b)
    write(repo, "xgb_binary", "xgboost.json",
          config("xgb_binary", f, 2, {"model_type": "xgboost_json", **cls_params}, shap_dims=f + 1),
          booster=b)
    cases["xgb_binary"] = Case("xgb_binary", np.stack([1 - p, p], axis=1), contrib)
    write(repo, "xgb_binary_class", "xgboost.json",
          config("xgb_binary_class", f, 1,
                 {"model_type": "xgboost_json", "output_class": "true", "threshold": "0.3",
                  "algo": "ALGO_AUTO", "storage_type": "AUTO"}),
          booster=b)
    cases["xgb_binary_class"] = Case(
        "xgb_binary_class", (p > 0.3).astype(np.float32)[:, None], class_threshold=(p, 0.3))

    # XGBoost multi-class (softprob), probabilities + SHAP per class; the class index.
    m = xgb_train({"objective": "multi:softprob", "num_class": 3}, multi)
    p, contrib = xgb_ref(m)
    write(repo, "xgb_multi", "xgboost.json",
          config("xgb_multi", f, 3, {"model_type": "xgboost_json", **cls_params},
                 shap_dims=f"3, {f + 1}"),
          booster=m)
    cases["xgb_multi"] = Case("xgb_multi", p, contrib)
    write(repo, "xgb_multi_class", "xgboost.json",
          config("xgb_multi_class", f, 1, {"model_type": "xgboost_json", "output_class": "true"}),
          booster=m)
    cases["xgb_multi_class"] = Case("xgb_multi_class", p.argmax(axis=1).astype(np.float32)[:, None])

    # XGBoost regression (JSON and UBJSON) + SHAP.
    r = xgb_train({"objective": "reg:squarederror"}, reg, rounds=40)
    p, contrib = xgb_ref(r)
    for name, kind, file in [("xgb_reg", "xgboost_json", "xgboost.json"),
                             ("xgb_reg_ubj", "xgboost_ubj", "xgboost.ubj")]:
        write(repo, name, file,
              config(name, f, 1, {"model_type": kind, "output_class": "false"}, shap_dims=f + 1),
              booster=r)
        cases[name] = Case(name, p[:, None], contrib)

    # XGBoost with a categorical feature (native categorical splits).
    types = ["q"] * CAT + ["c"]
    xc = TRAIN.copy()
    c = xgb_train({"objective": "reg:squarederror", "tree_method": "hist",
                   "max_cat_to_onehot": 1}, reg, x=xc, feature_types=types,
                  enable_categorical=True)
    test_c = TEST.copy()
    test_c[:5, CAT] = [15, np.nan, np.nan, 3, 11]  # xgboost refuses negative categories
    p, contrib = xgb_ref(c, x=test_c, feature_types=types, enable_categorical=True)
    write(repo, "xgb_cat", "xgboost.json",
          config("xgb_cat", f, 1, {"model_type": "xgboost_json", "output_class": "false"},
                 shap_dims=f + 1),
          booster=c)
    cases["xgb_cat"] = Case("xgb_cat", p[:, None], contrib)
    cases["xgb_cat"].inputs = test_c

    # LightGBM binary / multi-class / regression, with the categorical column.
    lb = lgb_train({"objective": "binary"}, binary)
    p, contrib = lgb_ref(lb)
    write(repo, "lgb_binary", "model.txt",
          config("lgb_binary", f, 2, {"model_type": "lightgbm", **cls_params}, shap_dims=f + 1),
          booster=lb)
    cases["lgb_binary"] = Case("lgb_binary", np.stack([1 - p, p], axis=1), contrib)
    write(repo, "lgb_binary_class", "model.txt",
          config("lgb_binary_class", f, 1,
                 {"model_type": "lightgbm", "output_class": "true", "threshold": "0.6"}),
          booster=lb)
    cases["lgb_binary_class"] = Case(
        "lgb_binary_class", (p > 0.6).astype(np.float32)[:, None], class_threshold=(p, 0.6))

    lm = lgb_train({"objective": "multiclass", "num_class": 3}, multi)
    p, contrib = lgb_ref(lm)
    write(repo, "lgb_multi", "model.txt",
          config("lgb_multi", f, 3, {"model_type": "lightgbm", **cls_params},
                 shap_dims=f"3, {f + 1}"),
          booster=lm)
    cases["lgb_multi"] = Case("lgb_multi", p, contrib.reshape(len(TEST), 3, f + 1))

    lr = lgb_train({"objective": "regression"}, reg, rounds=40)
    p, contrib = lgb_ref(lr)
    write(repo, "lgb_reg", "model.txt",
          config("lgb_reg", f, 1, {"model_type": "lightgbm", "output_class": "false",
                                    "threads": "2"}, shap_dims=f + 1),
          booster=lr)
    cases["lgb_reg"] = Case("lgb_reg", p[:, None], contrib)

    lz = lgb_train({"objective": "regression", "zero_as_missing": True}, reg, rounds=30)
    p, contrib = lgb_ref(lz)
    write(repo, "lgb_zero", "model.txt",
          config("lgb_zero", f, 1, {"model_type": "lightgbm", "output_class": "false"},
                 shap_dims=f + 1),
          booster=lz)
    cases["lgb_zero"] = Case("lgb_zero", p[:, None], contrib)

    # The same binary model under FIL's newer parameter name, one probability column.
    write(repo, "xgb_binary_p1", "xgboost.json",
          config("xgb_binary_p1", f, 1, {"model_type": "xgboost_json", "is_classifier": "true",
                                         "predict_proba": "true"}),
          booster=b)
    cases["xgb_binary_p1"] = Case("xgb_binary_p1", cases["xgb_binary"].output0[:, 1:])

    # XGBoost's dart booster (tree weights from weight_drop).
    d = xgb_train({"objective": "binary:logistic", "booster": "dart", "rate_drop": 0.2,
                   "skip_drop": 0.0}, binary)
    p, contrib = xgb_ref(d)
    write(repo, "xgb_dart", "xgboost.json",
          config("xgb_dart", f, 1, {"model_type": "xgboost_json", "output_class": "false"},
                 shap_dims=f + 1),
          booster=d)
    cases["xgb_dart"] = Case("xgb_dart", p[:, None], contrib)

    # A model whose config accepts any width, so the backend itself checks the features.
    write(repo, "xgb_any_width", "xgboost.json",
          config("xgb_any_width", f, 1, {"model_type": "xgboost_json", "output_class": "false"},
                 input_dims=-1),
          booster=r)

    # Auto-complete: no inputs or outputs in the config.
    write(repo, "xgb_auto", "xgboost.json",
          'backend: "fil"\nmax_batch_size: 256\n'
          'parameters [ { key: "model_type" value: { string_value: "xgboost_json" } },'
          ' { key: "predict_proba" value: { string_value: "true" } } ]\n',
          booster=m)

    # Damaged files.
    good = json.loads(b.save_raw("json").decode())
    good["learner"]["gradient_booster"]["model"]["trees"][3]["right_children"][0] = 9999
    write(repo, "bad_xgb_tree", "xgboost.json",
          config("bad_xgb_tree", f, 2, {"model_type": "xgboost_json", **cls_params}),
          content=json.dumps(good))
    write(repo, "bad_xgb_json", "xgboost.json",
          config("bad_xgb_json", f, 2, {"model_type": "xgboost_json", **cls_params}),
          content=b.save_raw("json").decode()[:5000])
    text = lb.model_to_string()
    text = text.replace("split_feature=", "split_feature=oops ", 1)
    write(repo, "bad_lgb", "model.txt",
          config("bad_lgb", f, 2, {"model_type": "lightgbm", **cls_params}), content=text)
    write(repo, "bad_xgb_ubj", "xgboost.ubj",
          config("bad_xgb_ubj", f, 2, {"model_type": "xgboost_ubj", **cls_params}),
          content=bytes(b.save_raw("ubj"))[:3000])
    write(repo, "bad_type", "model.txt",
          config("bad_type", f, 2, {"model_type": "catboost"}), content=text)

    srv = start_server(repo, log_dir=tmp_path_factory.mktemp("fil-logs"))
    yield srv, cases
    srv.stop_and_check()


def client_for(srv, protocol):
    if protocol == "http":
        return httpclient.InferenceServerClient(srv.http_url, network_timeout=TIMEOUT)
    return grpcclient.InferenceServerClient(srv.grpc_url)


def infer(srv, protocol, model, x, outputs=("output__0",)):
    mod = httpclient if protocol == "http" else grpcclient
    inp = mod.InferInput("input__0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    outs = [mod.InferRequestedOutput(o) for o in outputs]
    result = client_for(srv, protocol).infer(model, [inp], outputs=outs)
    return {o: result.as_numpy(o) for o in outputs}


MODELS = ["xgb_binary", "xgb_binary_class", "xgb_multi", "xgb_multi_class", "xgb_reg",
          "xgb_reg_ubj", "xgb_cat", "lgb_binary", "lgb_binary_class", "lgb_multi", "lgb_reg",
          "lgb_zero", "xgb_binary_p1", "xgb_dart"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", MODELS)
def test_predictions_match_the_library(fil, model, protocol):
    srv, cases = fil
    case = cases[model]
    x = getattr(case, "inputs", TEST)
    outputs = ["output__0"] + (["treeshap_output"] if case.shap is not None else [])
    got = infer(srv, protocol, model, x, outputs)
    out = got["output__0"]
    assert out.shape == case.output0.shape, (out.shape, case.output0.shape)
    if case.class_threshold is not None:
        p, thr = case.class_threshold
        clear = np.abs(p - thr) > 1e-5
        np.testing.assert_array_equal(out[clear], case.output0[clear])
    else:
        np.testing.assert_allclose(out, case.output0, rtol=1e-5, atol=1e-5)
    if case.shap is not None:
        shap = got["treeshap_output"]
        assert shap.shape == case.shap.shape, (shap.shape, case.shap.shape)
        np.testing.assert_allclose(shap, case.shap, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("model", ["xgb_binary", "lgb_multi", "lgb_reg"])
def test_one_row_and_a_large_batch(fil, model):
    """Batch 1 and a batch large enough to be split over threads give the same rows."""
    srv, cases = fil
    case = cases[model]
    one = infer(srv, "http", model, TEST[:1])["output__0"]
    np.testing.assert_allclose(one, case.output0[:1], rtol=1e-5, atol=1e-5)
    big = np.tile(TEST, (5, 1))  # 1000 rows
    out = infer(srv, "http", model, big)["output__0"]
    np.testing.assert_allclose(out, np.tile(case.output0, (5, 1)), rtol=1e-5, atol=1e-5)


def index_entry(srv, name):
    with httpclient.InferenceServerClient(srv.http_url, network_timeout=TIMEOUT) as c:
        for entry in c.get_model_repository_index():
            if entry["name"] == name:
                return entry
    raise AssertionError(f"{name} is not in the repository index")


@pytest.mark.parametrize(
    "model, mention",
    [
        ("bad_xgb_tree", "child index 9999"),
        ("bad_xgb_json", "not valid JSON"),
        ("bad_lgb", "oops"),
        ("bad_xgb_ubj", "UBJSON ends early"),
        ("bad_type", "catboost"),
    ],
)
def test_damaged_model_is_unavailable_with_a_reason(fil, model, mention):
    srv, _ = fil
    entry = index_entry(srv, model)
    assert entry["state"] == "UNAVAILABLE", entry
    reason = entry.get("reason", "")
    assert mention in reason, entry
    if model != "bad_type":
        assert any(n in reason for n in ("xgboost.json", "xgboost.ubj", "model.txt")), entry


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["xgb_reg", "xgb_any_width"])
def test_wrong_feature_count_is_invalid_argument(fil, model, protocol):
    srv, _ = fil
    x = TEST[:3, : FEATURES - 1].copy()
    with pytest.raises(InferenceServerException) as info:
        infer(srv, protocol, model, x)
    want = "400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"
    assert str(info.value.status()) == want, info.value
    assert info.value.message(), info.value
    if model == "xgb_any_width":
        assert "7 features per row" in info.value.message(), info.value


def test_auto_complete_fills_inputs_and_outputs(fil):
    srv, cases = fil
    with httpclient.InferenceServerClient(srv.http_url, network_timeout=TIMEOUT) as c:
        cfg = c.get_model_config("xgb_auto")
    assert cfg["input"][0]["name"] == "input__0"
    assert [int(d) for d in cfg["input"][0]["dims"]] == [FEATURES]
    assert cfg["output"][0]["name"] == "output__0"
    assert [int(d) for d in cfg["output"][0]["dims"]] == [3]
    out = infer(srv, "grpc", "xgb_auto", TEST)["output__0"]
    np.testing.assert_allclose(out, cases["xgb_multi"].output0, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# scikit-learn forests served through Treelite checkpoints (model_type treelite_checkpoint).
# Each estimator is trained here (fixed seeds, small), exported with
# treelite.sklearn.import_model(...).serialize("checkpoint.tl"), and its own predict_proba /
# predict is the reference. The random forests see NaNs (scikit-learn's trees take them since
# 1.4, ExtraTrees since 1.6); GradientBoosting does not, so its data has none.

SKL_MODELS = ["skl_rf_binary", "skl_rf_binary_class", "skl_rf_multi", "skl_rf_multi_class",
              "skl_rf_reg", "skl_et_reg", "skl_gb_binary", "skl_gb_binary_class",
              "skl_gb_multi", "skl_gb_reg"]


def skl_export(model, repo, name, cfg):
    import treelite.sklearn

    version = repo / name / "1"
    version.mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(cfg)
    treelite.sklearn.import_model(model).serialize(str(version / "checkpoint.tl"))
    return version / "checkpoint.tl"


def builder_model(features):
    """Six random float32 trees of depth 3 (a binary classifier with a sigmoid)."""
    from treelite.model_builder import Metadata, ModelBuilder, PostProcessorFunc, TreeAnnotation

    rng = np.random.default_rng(SEED)
    trees = 6
    builder = ModelBuilder(
        threshold_type="float32", leaf_output_type="float32",
        metadata=Metadata(num_feature=features, task_type="kBinaryClf",
                          average_tree_output=False, num_target=1, num_class=[1],
                          leaf_vector_shape=(1, 1)),
        tree_annotation=TreeAnnotation(num_tree=trees, target_id=[0] * trees,
                                       class_id=[0] * trees),
        postprocessor=PostProcessorFunc(name="sigmoid", sigmoid_alpha=1.5),
        base_scores=[0.25],
    )
    ops = ["<", "<=", ">", ">="]
    for _ in range(trees):
        builder.start_tree()
        for node in range(15):
            builder.start_node(node)
            if node >= 7:
                builder.leaf(float(rng.normal()))
            elif node % 3 == 2:
                cats = sorted(int(c) for c in rng.choice(12, size=4, replace=False))
                builder.categorical_test(CAT, category_list=cats, default_left=bool(rng.integers(2)),
                                         category_list_right_child=bool(rng.integers(2)),
                                         left_child_key=2 * node + 1,
                                         right_child_key=2 * node + 2)
            else:
                # Thresholds on training values, so that equal inputs occur.
                feature = int(rng.integers(CAT))
                column = TEST[:, feature]
                threshold = float(rng.choice(column[~np.isnan(column)]))
                builder.numerical_test(feature, threshold, default_left=bool(rng.integers(2)),
                                       opname=ops[node % 4], left_child_key=2 * node + 1,
                                       right_child_key=2 * node + 2)
            builder.end_node()
        builder.end_tree()
    return builder.commit()


@pytest.fixture(scope="module")
def skl(tmp_path_factory):
    ens = pytest.importorskip("sklearn.ensemble")
    pytest.importorskip("treelite")
    repo = tmp_path_factory.mktemp("fil-skl-repo")
    f = FEATURES
    binary, multi, reg = labels(TRAIN)
    clean = np.nan_to_num(TRAIN, nan=0.3)
    test_clean = np.nan_to_num(TEST, nan=0.3)
    # NaN in every column, also those the forests never saw NaN in (scikit-learn then sends
    # them the way missing_go_to_left says, which Treelite keeps as default_left).
    test_nan = TEST
    cases = {}
    tl = {"model_type": "treelite_checkpoint"}
    proba = {**tl, "output_class": "true", "predict_proba": "true"}

    def add(name, model, x, out_dims, params, reference, shap_dims=None, **case):
        skl_export(model, repo, name, config(name, f, out_dims, params, shap_dims=shap_dims))
        cases[name] = Case(name, reference, **case)
        cases[name].inputs = x
        cases[name].model = model

    rfb = ens.RandomForestClassifier(n_estimators=15, max_depth=8, random_state=SEED)
    rfb.fit(TRAIN, binary)
    p = rfb.predict_proba(test_nan)
    add("skl_rf_binary", rfb, test_nan, 2, proba, p, shap_dims=f"2, {f + 1}")
    add("skl_rf_binary_class", rfb, test_nan, 1, {**tl, "output_class": "true"},
        rfb.predict(test_nan).astype(np.float32)[:, None], class_threshold=(p[:, 1], 0.5))

    rfm = ens.RandomForestClassifier(n_estimators=12, max_depth=6, random_state=SEED)
    rfm.fit(TRAIN, multi)
    p = rfm.predict_proba(test_nan)
    add("skl_rf_multi", rfm, test_nan, 3, proba, p, shap_dims=f"3, {f + 1}")
    top2 = np.sort(p, axis=1)[:, -2:]
    add("skl_rf_multi_class", rfm, test_nan, 1, {**tl, "output_class": "true"},
        rfm.predict(test_nan).astype(np.float32)[:, None],
        class_threshold=(top2[:, 1] - top2[:, 0], 0.0))

    rfr = ens.RandomForestRegressor(n_estimators=10, max_depth=8, random_state=SEED)
    rfr.fit(TRAIN, reg)
    add("skl_rf_reg", rfr, test_nan, 1, {**tl, "output_class": "false"},
        rfr.predict(test_nan)[:, None], shap_dims=f + 1)

    etr = ens.ExtraTreesRegressor(n_estimators=10, max_depth=8, random_state=SEED)
    etr.fit(clean, reg)
    add("skl_et_reg", etr, test_clean, 1, {**tl, "output_class": "false"},
        etr.predict(test_clean)[:, None])

    gbb = ens.GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=SEED)
    gbb.fit(clean, binary)
    p = gbb.predict_proba(test_clean)
    add("skl_gb_binary", gbb, test_clean, 2, proba, p, shap_dims=f + 1)
    add("skl_gb_binary_class", gbb, test_clean, 1, {**tl, "output_class": "true"},
        gbb.predict(test_clean).astype(np.float32)[:, None], class_threshold=(p[:, 1], 0.5))

    gbm = ens.GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=SEED)
    gbm.fit(clean, multi)
    add("skl_gb_multi", gbm, test_clean, 3, proba, gbm.predict_proba(test_clean),
        shap_dims=f"3, {f + 1}")

    gbr = ens.GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=SEED)
    gbr.fit(clean, reg)
    add("skl_gb_reg", gbr, test_clean, 1, {**tl, "output_class": "false"},
        gbr.predict(test_clean)[:, None], shap_dims=f + 1)

    # A float32 model made with Treelite's model builder: every comparison operator, categorical
    # splits, a sigmoid, no node statistics (so no SHAP); the reference is Treelite's own GTIL.
    built = builder_model(f)
    version = repo / "tl_builder" / "1"
    version.mkdir(parents=True)
    (repo / "tl_builder" / "config.pbtxt").write_text(
        config("tl_builder", f, 1, {**tl, "output_class": "false"}))
    built.serialize(str(version / "checkpoint.tl"))
    import treelite.gtil

    x = TEST.copy()
    x[:20, CAT] = [-1, 0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 40, np.nan, 2.5, 3.999, -0.5, 1e9]
    cases["tl_builder"] = Case("tl_builder", treelite.gtil.predict(built, x).reshape(len(x), 1))
    cases["tl_builder"].inputs = x
    version = repo / "tl_builder_shap" / "1"
    version.mkdir(parents=True)
    (repo / "tl_builder_shap" / "config.pbtxt").write_text(
        config("tl_builder_shap", f, 1, tl, shap_dims=f + 1))
    built.serialize(str(version / "checkpoint.tl"))

    # Damaged checkpoints: truncated, and one claiming another format version.
    good = skl_export(gbr, repo, "skl_bad_cut", config("skl_bad_cut", f, 1, tl))
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    other = skl_export(gbr, repo, "skl_bad_version", config("skl_bad_version", f, 1, tl))
    other.write_bytes((3).to_bytes(4, "little") + data[4:])
    # The default file name without model_type is found too.
    skl_export(gbr, repo, "skl_detect", config("skl_detect", f, 1, {"output_class": "false"}))
    cases["skl_detect"] = Case("skl_detect", gbr.predict(test_clean)[:, None])
    cases["skl_detect"].inputs = test_clean

    srv = start_server(repo, log_dir=tmp_path_factory.mktemp("fil-skl-logs"))
    yield srv, cases
    srv.stop_and_check()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", SKL_MODELS + ["skl_detect", "tl_builder"])
def test_sklearn_checkpoint_matches_sklearn(skl, model, protocol):
    srv, cases = skl
    case = cases[model]
    out = infer(srv, protocol, model, case.inputs)["output__0"]
    assert out.shape == case.output0.shape, (out.shape, case.output0.shape)
    if case.class_threshold is not None:
        p, thr = case.class_threshold
        clear = np.abs(p - thr) > 1e-6
        assert clear.sum() > len(clear) // 2
        np.testing.assert_array_equal(out[clear], case.output0[clear])
    else:
        np.testing.assert_allclose(out, case.output0, rtol=1e-5, atol=1e-5)


def skl_margins(case):
    """What the SHAP values of a row must sum to: the margin before the postprocessor."""
    model, x = case.model, case.inputs
    if hasattr(model, "decision_function") and hasattr(model, "loss"):  # GradientBoosting
        m = model.decision_function(x)
        return m[:, None] if m.ndim == 1 else m
    if hasattr(model, "predict_proba"):
        return model.predict_proba(x)
    return model.predict(x)[:, None]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["skl_rf_binary", "skl_rf_multi", "skl_rf_reg",
                                   "skl_gb_binary", "skl_gb_multi", "skl_gb_reg"])
def test_sklearn_checkpoint_shap_sums_to_the_margin(skl, model, protocol):
    """TreeSHAP from the stored sample weights: each row's values add up to its margin."""
    srv, cases = skl
    case = cases[model]
    shap = infer(srv, protocol, model, case.inputs, ("treeshap_output",))["treeshap_output"]
    margins = skl_margins(case)
    groups = margins.shape[1]
    want = (len(case.inputs), FEATURES + 1) if groups == 1 else (len(case.inputs), groups,
                                                                 FEATURES + 1)
    assert shap.shape == want
    sums = shap.sum(axis=-1).reshape(len(case.inputs), groups)
    np.testing.assert_allclose(sums, margins, rtol=1e-4, atol=1e-4)
    # A feature no tree splits on gets nothing.
    assert np.isfinite(shap).all()


@pytest.mark.parametrize(
    "model, mention",
    [("skl_bad_cut", "truncated"), ("skl_bad_version", "version 3."),
     ("tl_builder_shap", "sample counts")],
)
def test_damaged_checkpoint_is_unavailable_with_a_reason(skl, model, mention):
    srv, _ = skl
    entry = index_entry(srv, model)
    assert entry["state"] == "UNAVAILABLE", entry
    reason = entry.get("reason", "")
    assert mention in reason and "checkpoint.tl" in reason, entry
