//! Embeds Ferrum's inference core in a program, with no network frontend and no socket:
//! starts a core on a model repository in explicit control mode, infers `simple` and
//! `onnx_mlp` and checks the results, streams the decoupled `repeat_int32`, loads and unloads
//! a model, reads metadata and statistics, and shuts down.
//!
//! ```text
//! cargo run -p ferrum-examples --bin embedded -- [MODEL_REPOSITORY [BACKEND_DIRECTORY]]
//! ```
//!
//! Defaults: `$FERRUM_MODEL_REPOSITORY` or `model_repository`, and `$FERRUM_BACKEND_DIRECTORY`
//! or `target/debug/backends`. Exits with status 1 if a check fails.

use std::path::PathBuf;

use bytes::Bytes;
use ferrum_core::{
    Allocator, ControlMode, CoreBuilder, DataType, InferRequest, InferResponse, InputTensor,
    OutputAllocator, OutputData,
};

/// Fails the program with a message.
type Result<T> = std::result::Result<T, String>;

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok { Ok(()) } else { Err(what()) }
}

/// An input tensor from little-endian elements.
fn tensor(name: &str, datatype: DataType, shape: &[i64], bytes: Vec<u8>) -> InputTensor {
    InputTensor {
        name: name.to_string(),
        datatype,
        shape: shape.to_vec(),
        data: Bytes::from(bytes).into(),
    }
}

fn i32_bytes(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn output<'a>(response: &'a InferResponse, name: &str) -> Result<&'a OutputData> {
    response
        .outputs
        .iter()
        .find(|o| o.name == name)
        .ok_or_else(|| format!("no output {name} in {response:?}"))
}

fn as_i32(data: &[u8]) -> Vec<i32> {
    data.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn as_f32(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// `onnx_mlp`'s closed-form weights (scripts/make-onnx-models.py): relu(x W1 + B1) W2 + B2.
fn mlp_reference(x: &[f32]) -> Vec<f64> {
    let w = |scale: f64, phase: f64, r: usize, c: usize| {
        f64::from((scale * (phase + 0.7 * r as f64 + 1.3 * c as f64).sin()) as f32)
    };
    let hidden: Vec<f64> = (0..32)
        .map(|c| {
            let sum = (0..16).fold(w(0.05, 0.2, 0, c), |acc, r| {
                acc + f64::from(x[r]) * w(0.25, 0.1, r, c)
            });
            sum.max(0.0)
        })
        .collect();
    (0..4)
        .map(|c| {
            (0..32).fold(w(0.05, 0.4, 0, c), |acc, r| {
                acc + hidden[r] * w(0.25, 0.3, r, c)
            })
        })
        .collect()
}

/// Listening TCP sockets this process holds (Linux; 0 expected: the core opens none).
fn listening_sockets() -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let inodes: Vec<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .map(|line| {
                    line.split_whitespace()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .filter(|cols| cols.get(3).map(String::as_str) == Some("0A"))
        .filter(|cols| cols.get(9).is_some_and(|inode| inodes.contains(inode)))
        .count()
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(()) => println!("embedded: all checks passed"),
        Err(e) => {
            eprintln!("embedded: FAILED: {e}");
            std::process::exit(1);
        }
    }
}

async fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let repository = args
        .next()
        .or_else(|| std::env::var("FERRUM_MODEL_REPOSITORY").ok())
        .unwrap_or_else(|| "model_repository".to_string());
    let backends = args
        .next()
        .or_else(|| std::env::var("FERRUM_BACKEND_DIRECTORY").ok())
        .unwrap_or_else(|| "target/debug/backends".to_string());

    // Start: explicit control mode, three models loaded at start-up.
    let core = CoreBuilder::new([PathBuf::from(&repository)])
        .control_mode(ControlMode::Explicit)
        .backend_directory(&backends)
        .startup_models(vec![
            "simple".into(),
            "onnx_mlp".into(),
            "repeat_int32".into(),
        ])
        .start()
        .await
        .map_err(|e| format!("start: {e}"))?;
    ensure(core.is_live() && core.is_ready(), || "not ready".into())?;
    ensure(listening_sockets() == 0, || "a socket listens".into())?;

    // Metadata.
    let meta = core
        .model_metadata("simple", None)
        .map_err(|e| e.to_string())?;
    ensure(
        meta.inputs.len() == 2 && meta.inputs[0].1 == "INT32",
        || format!("metadata {meta:?}"),
    )?;

    // simple: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.
    let a: Vec<i32> = (0..16).collect();
    let b = vec![1i32; 16];
    let request = InferRequest {
        model_name: "simple".into(),
        id: "embedded-1".into(),
        inputs: vec![
            tensor("INPUT0", DataType::INT32, &[1, 16], i32_bytes(&a)),
            tensor("INPUT1", DataType::INT32, &[1, 16], i32_bytes(&b)),
        ],
        ..Default::default()
    };
    let response = core.infer(request).await.map_err(|e| e.to_string())?;
    let sum = as_i32(&output(&response, "OUTPUT0")?.data);
    let diff = as_i32(&output(&response, "OUTPUT1")?.data);
    ensure(
        sum == (1..17).collect::<Vec<_>>() && diff == (-1..15).collect::<Vec<_>>(),
        || format!("simple: {sum:?} {diff:?}"),
    )?;
    println!("simple: OUTPUT0 {sum:?}");

    // onnx_mlp: a batch of two rows against the closed-form reference.
    let x: Vec<f32> = (0..32)
        .map(|i| ((i % 16) as f32 - 8.0) / if i < 16 { 8.0 } else { -4.0 })
        .collect();
    let request = InferRequest {
        model_name: "onnx_mlp".into(),
        inputs: vec![tensor(
            "INPUT0",
            DataType::FP32,
            &[2, 16],
            x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )],
        outputs: vec!["OUTPUT0".into()],
        ..Default::default()
    };
    let response = core.infer(request).await.map_err(|e| e.to_string())?;
    let y = as_f32(&output(&response, "OUTPUT0")?.data);
    ensure(y.len() == 8, || format!("onnx_mlp: {y:?}"))?;
    for row in 0..2 {
        let want = mlp_reference(&x[16 * row..16 * (row + 1)]);
        for (c, w) in want.iter().enumerate() {
            let got = f64::from(y[4 * row + c]);
            ensure((got - w).abs() < 1e-4, || {
                format!("onnx_mlp[{row}][{c}] = {got}, expected {w}")
            })?;
        }
    }
    println!("onnx_mlp: {y:?}");

    // The same request with the outputs written into this program's own buffer: the
    // allocator hands out a vector, the backend writes OUTPUT0 into it, and the response
    // gives back that same allocation (no copy).
    struct Pool(std::sync::Mutex<Vec<(usize, Vec<u8>)>>);
    impl OutputAllocator for Pool {
        fn allocate(&self, _: &str, _: DataType, _: &[i64], byte_size: usize) -> Option<Vec<u8>> {
            let mut buffers = self.0.lock().ok()?;
            let index = buffers.iter().position(|(_, b)| b.len() == byte_size)?;
            Some(buffers.swap_remove(index).1)
        }
    }
    let mine = vec![0u8; 8 * 4];
    let address = mine.as_ptr() as usize;
    let pool = std::sync::Arc::new(Pool(std::sync::Mutex::new(vec![(address, mine)])));
    let request = InferRequest {
        model_name: "onnx_mlp".into(),
        inputs: vec![tensor(
            "INPUT0",
            DataType::FP32,
            &[2, 16],
            x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )],
        outputs: vec!["OUTPUT0".into()],
        allocator: Some(Allocator(pool.clone())),
        ..Default::default()
    };
    let response = core.infer(request).await.map_err(|e| e.to_string())?;
    let data = output(&response, "OUTPUT0")?.data.clone();
    ensure(as_f32(&data) == y, || {
        "onnx_mlp into my buffer differs".into()
    })?;
    ensure(data.as_ptr() as usize == address, || {
        "onnx_mlp's output is not in the buffer the allocator gave".into()
    })?;
    drop(response);
    let back: Vec<u8> = Vec::from(data);
    ensure(back.as_ptr() as usize == address, || {
        "the buffer did not come back".into()
    })?;
    println!("onnx_mlp: written straight into the caller's buffer");

    // repeat_int32 (decoupled): one response per element of IN, then the final flag.
    let values = [10i32, 20, 30];
    let request = InferRequest {
        model_name: "repeat_int32".into(),
        inputs: vec![
            tensor("IN", DataType::INT32, &[3], i32_bytes(&values)),
            tensor("DELAY", DataType::UINT32, &[3], vec![0; 12]),
            tensor("WAIT", DataType::UINT32, &[1], vec![0; 4]),
        ],
        ..Default::default()
    };
    let mut stream = core.infer_stream(request).map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    while let Some(item) = stream.next().await {
        let item = item.map_err(|e| e.to_string())?;
        if let Some(response) = item.response {
            got.extend(as_i32(&output(&response, "OUT")?.data));
        }
        if item.is_final {
            break;
        }
    }
    ensure(got == values, || format!("repeat_int32 streamed {got:?}"))?;
    println!("repeat_int32: streamed {got:?}");

    // Explicit mode: load a model, use it, unload it.
    ensure(!core.model_ready("identity_fp32", None), || {
        "identity_fp32 ready before loading".into()
    })?;
    core.load_model("identity_fp32".into(), Vec::new())
        .await
        .map_err(|e| e.to_string())?;
    ensure(core.model_ready("identity_fp32", Some(1)), || {
        "identity_fp32 not ready".into()
    })?;
    let config = core
        .model_config("identity_fp32", None)
        .map_err(|e| e.to_string())?;
    ensure(config.config.max_batch_size == 8, || {
        format!("config {:?}", config.config_json)
    })?;
    core.unload_model("identity_fp32".into(), &[])
        .await
        .map_err(|e| e.to_string())?;
    ensure(!core.model_ready("identity_fp32", None), || {
        "identity_fp32 ready after unloading".into()
    })?;
    println!("identity_fp32: loaded and unloaded");

    // Statistics.
    let stats = core
        .statistics(Some("simple"), None)
        .map_err(|e| e.to_string())?;
    ensure(stats.len() == 1 && stats[0].inference_count == 1, || {
        format!("statistics {stats:?}")
    })?;
    ensure(listening_sockets() == 0, || "a socket listens".into())?;

    // Shut down: readiness goes false, then every model unloads after its in-flight requests.
    core.begin_shutdown();
    core.unload_all().await.map_err(|e| e.to_string())?;
    ensure(!core.is_ready(), || "ready after shutdown".into())?;
    Ok(())
}
