//! Tensor conversion, config reading and option parsing of the pytorch backend, against the
//! real libtorch.

use ferrum_backend_api::{DataType, ErrorCode};
use ferrum_pytorch::convert::{
    InputData, check_input, copy_output, datatype_of, from_torch, kind_of, output_tensor, to_torch,
};
use ferrum_pytorch::options::{Options, parse_bool, parse_threads};
use ferrum_pytorch::signature::{Signature, convention_index};
use ferrum_pytorch::torch_message;
use serde_json::json;

fn tensor<'a>(
    name: &'a str,
    datatype: DataType,
    shape: &'a [i64],
    data: &'a [u8],
) -> InputData<'a> {
    InputData {
        name,
        datatype,
        shape,
        data,
    }
}

const SUPPORTED: [DataType; 10] = [
    DataType::BOOL,
    DataType::UINT8,
    DataType::INT8,
    DataType::INT16,
    DataType::INT32,
    DataType::INT64,
    DataType::FP16,
    DataType::BF16,
    DataType::FP32,
    DataType::FP64,
];

#[test]
fn every_supported_type_round_trips_bytes() {
    for dt in SUPPORTED {
        let size = dt.element_size().expect("fixed size");
        let shape = [2i64, 3];
        // Bytes that are valid for every type: bool needs 0/1, floats avoid NaN patterns.
        let data: Vec<u8> = (0..6 * size)
            .map(|i| {
                if dt == DataType::BOOL {
                    (i % 2) as u8
                } else {
                    (i % 7) as u8
                }
            })
            .collect();
        let t = to_torch(&tensor("X", dt, &shape, &data), dt).expect("to torch");
        assert_eq!(t.size(), vec![2, 3]);
        assert_eq!(datatype_of(t.kind()), Some(dt));
        let out = from_torch("Y", &t, dt).expect("from torch");
        assert_eq!(out.name, "Y");
        assert_eq!(out.datatype, dt);
        assert_eq!(out.shape, shape);
        assert_eq!(out.data, data, "{dt}");
    }
}

#[test]
fn unsupported_types_have_no_kind() {
    for dt in [
        DataType::BYTES,
        DataType::UINT16,
        DataType::UINT32,
        DataType::UINT64,
    ] {
        assert_eq!(kind_of(dt), None, "{dt}");
    }
    for dt in SUPPORTED {
        assert_eq!(kind_of(dt).and_then(datatype_of), Some(dt));
    }
}

#[test]
fn bool_bytes_are_normalized() {
    let data = [0u8, 1, 2, 255];
    let t = to_torch(&tensor("B", DataType::BOOL, &[4], &data), DataType::BOOL).expect("bool");
    let out = from_torch("B", &t, DataType::BOOL).expect("back");
    assert_eq!(out.data.as_slice(), &[0, 1, 1, 1]);
}

#[test]
fn empty_and_scalar_shapes() {
    let t = to_torch(&tensor("E", DataType::FP32, &[0, 4], &[]), DataType::FP32).expect("empty");
    assert_eq!(t.size(), vec![0, 4]);
    let one = 1.5f32.to_le_bytes();
    let t = to_torch(&tensor("S", DataType::FP32, &[], &one), DataType::FP32).expect("scalar");
    let out = from_torch("S", &t, DataType::FP32).expect("back");
    assert!(out.shape.is_empty());
    assert_eq!(out.data.as_slice(), &one);
}

#[test]
fn wrong_byte_count_names_the_input() {
    let err = to_torch(
        &tensor("IN", DataType::INT32, &[3], &[0; 8]),
        DataType::INT32,
    )
    .expect_err("short data");
    assert_eq!(err.code, ErrorCode::INVALID_ARGUMENT);
    assert!(
        err.message.contains("'IN'") && err.message.contains("needs 12"),
        "{err}"
    );
}

#[test]
fn wrong_type_and_negative_dims_are_refused() {
    let err = to_torch(
        &tensor("IN", DataType::INT64, &[1], &[0; 8]),
        DataType::FP64,
    )
    .expect_err("type");
    assert_eq!(err.code, ErrorCode::INVALID_ARGUMENT);
    assert!(
        err.message.contains("'IN'") && err.message.contains("FP64"),
        "{err}"
    );
    let err = to_torch(&tensor("N", DataType::INT8, &[-1], &[]), DataType::INT8).expect_err("dim");
    assert!(err.message.contains("negative"), "{err}");
    let err = to_torch(
        &tensor("H", DataType::INT8, &[i64::MAX, 4], &[]),
        DataType::INT8,
    )
    .expect_err("huge");
    assert!(err.message.contains("'H'"), "{err}");
}

#[test]
fn output_type_mismatch_is_reported() {
    let t = tch::Tensor::from_slice(&[1.0f64, 2.0]);
    let err = from_torch("OUT", &t, DataType::FP32).expect_err("FP64 is not FP32");
    assert!(
        err.message.contains("'OUT' is FP64") && err.message.contains("declares FP32"),
        "{err}"
    );
}

#[test]
fn non_contiguous_outputs_are_copied_in_order() {
    let t = tch::Tensor::from_slice(&[1i32, 2, 3, 4, 5, 6])
        .view([2, 3])
        .tr();
    let out = from_torch("T", &t, DataType::INT32).expect("transposed");
    assert_eq!(out.shape.as_slice(), &[3, 2]);
    let values: Vec<i32> = out
        .data
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(values, vec![1, 4, 2, 5, 3, 6]);
}

#[test]
fn convention_indices() {
    assert_eq!(convention_index("INPUT__0"), Some(0));
    assert_eq!(convention_index("x__12"), Some(12));
    assert_eq!(convention_index("a__b__3"), Some(3));
    assert_eq!(convention_index("INPUT0"), None);
    assert_eq!(convention_index("INPUT__"), None);
    assert_eq!(convention_index("INPUT__1a"), None);
    assert_eq!(convention_index("INPUT__-1"), None);
}

fn io(name: &str, ty: &str) -> serde_json::Value {
    json!({"name": name, "data_type": ty, "dims": [4]})
}

#[test]
fn convention_names_place_tensors_by_index() {
    let config = json!({
        "input": [io("INPUT__1", "TYPE_INT64"), io("INPUT__0", "TYPE_INT32")],
        "output": [io("OUTPUT__1", "TYPE_FP32"), io("OUTPUT__0", "TYPE_BOOL")],
    });
    let sig = Signature::from_config(&config).expect("signature");
    let inputs: Vec<&str> = sig.inputs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(inputs, ["INPUT__0", "INPUT__1"]);
    assert_eq!(sig.inputs[0].datatype, DataType::INT32);
    let outputs: Vec<(&str, usize)> = sig
        .outputs
        .iter()
        .map(|o| (o.declared.name.as_str(), o.index))
        .collect();
    assert_eq!(outputs, [("OUTPUT__1", 1), ("OUTPUT__0", 0)]);
}

#[test]
fn other_names_go_by_config_position() {
    let config = json!({
        "input": [io("b", "TYPE_FP32"), io("INPUT__0", "TYPE_FP32"), io("a", "TYPE_FP32")],
        "output": [io("sum", "TYPE_FP32"), io("OUTPUT__0", "TYPE_FP32")],
    });
    let sig = Signature::from_config(&config).expect("signature");
    let inputs: Vec<&str> = sig.inputs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(inputs, ["b", "INPUT__0", "a"]);
    assert_eq!(sig.outputs[1].index, 1);
}

#[test]
fn bad_configs_are_refused_with_reasons() {
    let duplicate = json!({
        "input": [io("A__0", "TYPE_FP32"), io("B__0", "TYPE_FP32")],
        "output": [io("O", "TYPE_FP32")],
    });
    let err = Signature::from_config(&duplicate).expect_err("duplicate index");
    assert!(
        err.message.contains("'A__0'") && err.message.contains("'B__0'"),
        "{err}"
    );

    let gap = json!({
        "input": [io("A__0", "TYPE_FP32"), io("B__2", "TYPE_FP32")],
        "output": [io("O", "TYPE_FP32")],
    });
    let err = Signature::from_config(&gap).expect_err("gap");
    assert!(
        err.message.contains("'B__2'") && err.message.contains("without gaps"),
        "{err}"
    );

    let strings = json!({
        "input": [io("S", "TYPE_STRING")],
        "output": [io("O", "TYPE_FP32")],
    });
    let err = Signature::from_config(&strings).expect_err("strings");
    assert_eq!(err.code, ErrorCode::UNSUPPORTED);
    assert!(
        err.message.contains("'S'") && err.message.contains("TYPE_STRING"),
        "{err}"
    );

    let no_outputs = json!({"input": [io("A", "TYPE_FP32")]});
    let err = Signature::from_config(&no_outputs).expect_err("no outputs");
    assert!(err.message.contains("declares no outputs"), "{err}");
}

#[test]
fn options_default_as_triton() {
    let options = Options::parse(|_| None).expect("defaults");
    assert_eq!(options, Options::default());
    assert!(options.optimized_execution && options.inference_mode && !options.weight_sharing);
    assert_eq!(options.jit_executor, None);
}

#[test]
fn options_read_every_parameter() {
    let values = [
        ("DISABLE_OPTIMIZED_EXECUTION", "true"),
        ("INFERENCE_MODE", "False"),
        ("ENABLE_JIT_EXECUTOR", "0"),
        ("ENABLE_JIT_PROFILING", "no"),
        ("ENABLE_TENSOR_FUSER", "on"),
        ("ENABLE_WEIGHT_SHARING", "yes"),
        ("INTRA_OP_THREAD_COUNT", "2"),
        ("INTER_OP_THREAD_COUNT", "0"),
    ];
    let options = Options::parse(|key| values.iter().find(|(k, _)| *k == key).map(|(_, v)| *v))
        .expect("options");
    assert_eq!(
        options,
        Options {
            optimized_execution: false,
            inference_mode: false,
            jit_executor: Some(false),
            jit_profiling: Some(false),
            tensor_fuser: Some(true),
            weight_sharing: true,
            intra_op_threads: Some(2),
            inter_op_threads: None,
        }
    );
}

#[test]
fn bad_parameter_values_name_the_key() {
    let err = parse_bool("INFERENCE_MODE", "maybe").expect_err("not a bool");
    assert!(err.message.contains("INFERENCE_MODE") && err.message.contains("maybe"));
    let err = parse_threads("INTRA_OP_THREAD_COUNT", "two").expect_err("not a number");
    assert!(err.message.contains("INTRA_OP_THREAD_COUNT"));
    assert!(parse_threads("INTRA_OP_THREAD_COUNT", "99999999999").is_err());
    assert_eq!(parse_threads("X", "-3").expect("negative"), None);
}

#[test]
fn torch_errors_are_condensed() {
    let raw = "The following operation failed in the TorchScript interpreter.\n\
               Traceback of TorchScript (most recent call last):\n\
               File \"code/__torch__.py\", line 8, in forward\n\
               RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x5 and 32x64)\n\
               Exception raised from foo at bar.cpp:12\n\
               frame #0: baz";
    assert_eq!(
        torch_message(&tch::TchError::Torch(raw.to_string())),
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x5 and 32x64)"
    );
    let plain = "open file failed because of errno 2\nException raised from x\nframe #0: y";
    assert_eq!(
        torch_message(&tch::TchError::Torch(plain.to_string())),
        "open file failed because of errno 2"
    );
}

#[test]
fn a_real_load_error_is_readable() {
    let dir = std::env::temp_dir().join(format!("ferrum-pytorch-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("model.pt");
    std::fs::write(&path, b"not a zip archive").expect("write");
    let err = tch::CModule::load(&path).expect_err("garbage");
    let message = torch_message(&err);
    std::fs::remove_dir_all(&dir).ok();
    assert!(!message.contains("frame #"), "{message}");
    assert!(!message.is_empty());
}

#[test]
fn checks_need_only_the_byte_count() {
    // What a request is checked against before any of its bytes are read.
    assert_eq!(
        check_input("X", DataType::FP32, &[2, 3], 24, DataType::FP32).expect("fits"),
        tch::Kind::Float
    );
    let err = check_input("X", DataType::FP32, &[2, 3], 20, DataType::FP32).expect_err("short");
    assert!(
        err.message.contains("holds 20 bytes") && err.message.contains("needs 24"),
        "{err}"
    );
    let err = check_input("X", DataType::UINT16, &[1], 2, DataType::UINT16).expect_err("type");
    assert!(err.message.contains("does not support"), "{err}");
}

#[test]
fn outputs_copy_into_a_buffer_of_exactly_their_size() {
    let t = tch::Tensor::from_slice(&[1i64, 2, 3]);
    let t = output_tensor("O", &t, DataType::INT64).expect("int64");
    let mut buffer = vec![0u8; 24];
    copy_output("O", &t, &mut buffer).expect("copy");
    assert_eq!(&buffer[8..16], &2i64.to_le_bytes());
    let mut short = vec![0u8; 16];
    let err = copy_output("O", &t, &mut short).expect_err("short buffer");
    assert!(
        err.message.contains("'O'") && err.message.contains("24 bytes"),
        "{err}"
    );
    let undefined = output_tensor("U", &tch::Tensor::new(), DataType::FP32).expect_err("undefined");
    assert!(undefined.message.contains("undefined"), "{undefined}");
}

#[test]
fn joined_inputs_run_as_one_batch() {
    // Two requests of 1 and 2 rows joined along the batch dimension, as the backend does.
    let a = [1.0f32, 2.0];
    let b = [3.0f32, 4.0, 5.0, 6.0];
    let joined: Vec<u8> = a.iter().chain(&b).flat_map(|v| v.to_le_bytes()).collect();
    let t = to_torch(
        &tensor("X", DataType::FP32, &[3, 2], &joined),
        DataType::FP32,
    )
    .expect("x");
    let doubled = output_tensor("Y", &(&t * 2.0), DataType::FP32).expect("y");
    assert_eq!(doubled.size(), vec![3, 2]);
    let out = from_torch("Y", &doubled, DataType::FP32).expect("back");
    let values: Vec<f32> = out
        .data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(values, vec![2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
}
