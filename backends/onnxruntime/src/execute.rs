//! Running requests on one session: each request on its own, or several requests of a batching
//! model joined along the batch dimension into one run and split again afterwards.

use std::borrow::Cow;
use std::sync::Arc;

use ferrum_backend_api::batch::{self, Batch};
use ferrum_backend_api::{BackendError, LogLevel, ParamValue, Request, Response, guard};
use ort::session::OutputSelector;
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::DynValue;

use crate::model::ModelSpec;
use crate::tensors::{OutputData, input_value};

/// One execution instance: its own session and the model's shared signature.
pub struct Runner {
    /// This instance's session.
    pub session: Session,
    /// The model's signature.
    pub spec: Arc<ModelSpec>,
}

/// The model inputs of one session run, by name.
type Inputs = Vec<(Cow<'static, str>, SessionInputValue<'static>)>;

/// Checks each request and answers those that fail on their own; splits the rest into runs of
/// consecutive joinable requests whose rows fit `max_batch_size` (each request alone when the
/// model does not batch).
fn plan(spec: &ModelSpec, requests: Vec<Request>) -> Vec<Vec<Request>> {
    let limit = if spec.inputs.is_empty() {
        0
    } else {
        usize::try_from(spec.max_batch_size).unwrap_or(0)
    };
    let mut runs: Vec<(Vec<Request>, usize)> = Vec::new();
    for request in requests {
        let rows = match spec.check_request(&request) {
            Ok(rows) => rows,
            Err(e) => {
                request.respond(Err(e));
                continue;
            }
        };
        match runs.last_mut() {
            Some((run, total))
                if *total + rows <= limit
                    && run
                        .last()
                        .is_some_and(|last| batch::joinable(last, &request)) =>
            {
                run.push(request);
                *total += rows;
            }
            _ => runs.push((vec![request], rows)),
        }
    }
    runs.into_iter().map(|(run, _)| run).collect()
}

/// A verbose log line about one joined run: which requests, with their parameters.
fn describe_run(model: &str, run: &[Request]) -> String {
    let requests: Vec<String> = run
        .iter()
        .map(|r| {
            let params: Vec<String> = r
                .parameters()
                .map(|p| match p.value {
                    ParamValue::Str(s) => format!("{}={s}", p.key),
                    ParamValue::Int(i) => format!("{}={i}", p.key),
                    other => format!("{}={other:?}", p.key),
                })
                .collect();
            format!("'{}' [{}]", r.id(), params.join(", "))
        })
        .collect();
    format!(
        "model '{model}': one session run for {} requests: {}",
        run.len(),
        requests.join(", ")
    )
}

impl Runner {
    /// Runs a batch of requests and sends each its one final response or error.
    pub fn execute(&mut self, requests: Vec<Request>) {
        let spec = Arc::clone(&self.spec);
        for run in plan(&spec, requests) {
            if let [request] = run.as_slice() {
                match guard(|| self.run_one(request)) {
                    Ok(response) => response.send(true),
                    Err(e) => request.responder().send_error(e, true),
                }
                continue;
            }
            ferrum_backend_api::log(LogLevel::VERBOSE, &describe_run(&spec.name, &run));
            match guard(|| self.run_joined(&run)) {
                Ok(responses) => responses.into_iter().for_each(|r| r.send(true)),
                Err(e) => {
                    for request in &run {
                        request.responder().send_error(e.clone(), true);
                    }
                }
            }
        }
    }

    /// The outputs any of `requests` asked for, in the spec's order.
    fn wanted<'s>(spec: &'s ModelSpec, requests: &[Request]) -> Vec<&'s str> {
        spec.outputs
            .iter()
            .map(|o| o.name.as_str())
            .filter(|name| requests.iter().any(|r| r.wants_output(name)))
            .collect()
    }

    /// Runs the session on these inputs and returns the wanted outputs, in order.
    fn session_run(
        &mut self,
        inputs: Inputs,
        wanted: &[&str],
    ) -> Result<Vec<DynValue>, BackendError> {
        let spec = Arc::clone(&self.spec);
        let failed = |e: ort::Error| {
            BackendError::internal(format!(
                "ONNX Runtime failed to run model '{}': {e}",
                spec.name
            ))
        };
        let every = spec.all_outputs && wanted.len() == spec.outputs.len();
        let options;
        let outputs = if every {
            self.session.run(inputs).map_err(failed)?
        } else {
            let selector = wanted
                .iter()
                .fold(OutputSelector::no_default(), |s, name| s.with(*name));
            options = RunOptions::new().map_err(failed)?.with_outputs(selector);
            self.session
                .run_with_options(inputs, &options)
                .map_err(failed)?
        };
        let mut produced: Vec<(&str, DynValue)> = outputs.into_iter().collect();
        wanted
            .iter()
            .map(|name| {
                let at = produced
                    .iter()
                    .position(|(key, _)| key == name)
                    .ok_or_else(|| {
                        BackendError::internal(format!("ONNX Runtime returned no output '{name}'"))
                    })?;
                Ok(produced.swap_remove(at).1)
            })
            .collect()
    }

    /// Runs one request on its own and returns its response, ready to send.
    fn run_one(&mut self, request: &Request) -> Result<Response, BackendError> {
        let spec = Arc::clone(&self.spec);
        let inputs = spec
            .inputs
            .iter()
            .map(|info| {
                let tensor = request.require_input(&info.name)?;
                let value = input_value(info, tensor.shape, &[tensor])?;
                Ok((
                    Cow::Owned(info.name.clone()),
                    SessionInputValue::from(value),
                ))
            })
            .collect::<Result<Inputs, BackendError>>()?;
        let wanted = Self::wanted(&spec, std::slice::from_ref(request));
        let mut response = request.response();
        if wanted.is_empty() {
            return Ok(response);
        }
        let values = self.session_run(inputs, &wanted)?;
        for (name, value) in wanted.iter().zip(&values) {
            let output = read_output(name, value)?;
            response.output_from(name, output.datatype, &output.shape, &output.data)?;
        }
        Ok(response)
    }

    /// Runs several requests as one batch and splits each output among the responses of the
    /// requests that asked for it; an error fails them all.
    fn run_joined(&mut self, requests: &[Request]) -> Result<Vec<Response>, BackendError> {
        let spec = Arc::clone(&self.spec);
        let key = spec
            .inputs
            .first()
            .ok_or_else(|| BackendError::internal("a batch of a model without inputs"))?;
        let batch = Batch::of(requests, &key.name)?;
        let total = i64::try_from(batch.total())
            .map_err(|_| BackendError::invalid_argument("joined batch is too large"))?;
        let mut inputs = Inputs::with_capacity(spec.inputs.len());
        for info in &spec.inputs {
            let parts = requests
                .iter()
                .map(|r| r.require_input(&info.name))
                .collect::<Result<Vec<_>, _>>()?;
            let mut shape = parts.first().map(|t| t.shape.to_vec()).unwrap_or_default();
            if let Some(rows) = shape.first_mut() {
                *rows = total;
            }
            let value = input_value(info, &shape, &parts)?;
            inputs.push((
                Cow::Owned(info.name.clone()),
                SessionInputValue::from(value),
            ));
        }
        let wanted = Self::wanted(&spec, requests);
        let mut responses: Vec<Response> = requests.iter().map(Request::response).collect();
        if wanted.is_empty() {
            return Ok(responses);
        }
        let values = self.session_run(inputs, &wanted)?;
        for (name, value) in wanted.iter().zip(&values) {
            let output = read_output(name, value)?;
            if output.shape.first() != Some(&total) {
                return Err(BackendError::internal(format!(
                    "output '{name}' of model '{}' has shape {:?} for a joined batch of {total}; \
                     it cannot be split between requests",
                    spec.name, output.shape
                )));
            }
            let wants: Vec<bool> = requests.iter().map(|r| r.wants_output(name)).collect();
            batch::split_output_where(
                &mut responses,
                &batch,
                &wants,
                name,
                output.datatype,
                &output.shape,
                &output.data,
            )?;
        }
        Ok(responses)
    }
}

/// Reads an output value, naming the output in errors.
fn read_output<'v>(name: &str, value: &'v DynValue) -> Result<OutputData<'v>, BackendError> {
    OutputData::read(value)
        .map_err(|e| BackendError::new(e.code, format!("output '{name}': {}", e.message)))
}

#[cfg(test)]
mod tests {
    //! The planning tests need nothing else. The others run real sessions, so they need the ONNX
    //! Runtime library: `FERRUM_ONNXRUNTIME_LIBRARY`, the debug install tree (`make test-build`)
    //! or the download cache. Without it they say so and pass.
    use std::path::PathBuf;

    use ferrum_backend_api::{DataType, OutputTensor, bytes};
    use ort::value::TensorElementType;
    use serde_json::json;

    use super::*;
    use crate::model::IoInfo;
    use crate::settings::SessionSettings;
    use crate::testing::{Answers, Input, input, request};

    fn library() -> Option<PathBuf> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut places: Vec<PathBuf> = std::env::var_os(crate::runtime::LIBRARY_ENV)
            .map(PathBuf::from)
            .into_iter()
            .collect();
        places.push(root.join("target/debug/backends/onnxruntime"));
        if let Some(home) = std::env::var_os("HOME") {
            places.push(PathBuf::from(home).join(".cache/ferrum/onnxruntime-1.31.1"));
        }
        places.into_iter().find_map(|p| {
            crate::runtime::locate(None, Some(p.into_os_string()), None)
                .ok()
                .map(|(path, _)| path)
        })
    }

    fn runner(model: &str, config: serde_json::Value) -> Option<Runner> {
        let Some(lib) = library() else {
            eprintln!("skipped: no ONNX Runtime library found (run `make test-build`)");
            return None;
        };
        let env = crate::runtime::environment(&lib).unwrap();
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/models/onnx")
            .join(model)
            .join("1/model.onnx");
        let session = SessionSettings::default().open(&env, &file).unwrap();
        let spec = ModelSpec::new(model, &config, &session).unwrap();
        Some(Runner {
            session,
            spec: Arc::new(spec),
        })
    }

    /// Runs these requests as one batch; returns where each one's answer can be read.
    fn execute(runner: &mut Runner, requests: Vec<(Vec<Input>, &[&str])>) -> Vec<Answers> {
        let (requests, answers): (Vec<Request>, Vec<Answers>) = requests
            .into_iter()
            .map(|(inputs, outputs)| request(inputs, outputs))
            .unzip();
        runner.execute(requests);
        answers
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn i64_bytes(v: &[i64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn i32_bytes(v: impl IntoIterator<Item = i32>) -> Vec<u8> {
        v.into_iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn int32_matrix_spec(max_batch_size: i64) -> ModelSpec {
        let io = |name: &str| IoInfo {
            name: name.into(),
            element: TensorElementType::Int32,
            datatype: DataType::INT32,
            shape: vec![-1, -1],
        };
        let config = json!({ "max_batch_size": max_batch_size });
        ModelSpec::from_parts("m", &config, vec![io("INPUT0")], vec![io("OUTPUT0")]).unwrap()
    }

    /// A request of the int32 matrix model with this shape.
    fn matrix(shape: [i64; 2]) -> (Request, Answers) {
        let data = i32_bytes(0..(shape[0] * shape[1]) as i32);
        request(vec![input("INPUT0", DataType::INT32, &shape, &data)], &[])
    }

    #[test]
    fn plan_joins_neighbours_within_max_batch_size() {
        let spec = int32_matrix_spec(3);
        let bad = request(
            vec![input("INPUT0", DataType::FP32, &[1, 4], &[0; 16])],
            &[],
        );
        let requests = vec![
            matrix([2, 2]),
            matrix([1, 2]),
            matrix([1, 2]),
            matrix([1, 4]),
            bad,
            matrix([2, 4]),
            matrix([1, 4]),
        ];
        let (requests, answers): (Vec<Request>, Vec<Answers>) = requests.into_iter().unzip();
        let runs = plan(&spec, requests);
        let shapes: Vec<Vec<Vec<i64>>> = runs
            .iter()
            .map(|run| {
                run.iter()
                    .map(|r| r.require_input("INPUT0").unwrap().shape.to_vec())
                    .collect()
            })
            .collect();
        assert_eq!(
            shapes,
            [
                vec![vec![2, 2], vec![1, 2]],
                vec![vec![1, 2]],
                vec![vec![1, 4], vec![2, 4]],
                vec![vec![1, 4]],
            ]
        );
        assert!(answers[4].error().contains("data type FP32"));

        let alone = plan(
            &int32_matrix_spec(0),
            vec![matrix([1, 2]).0, matrix([1, 2]).0],
        );
        assert_eq!(alone.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
    }

    #[test]
    fn joined_batch_equals_separate_runs() {
        let Some(mut r) = runner("multi_io", json!({"max_batch_size": 8})) else {
            return;
        };
        let batches = [1usize, 2, 3];
        let a: Vec<Vec<f32>> = batches
            .iter()
            .enumerate()
            .map(|(k, &b)| {
                (0..b * 4)
                    .map(|i| (i as f32 - 3.0) * (k as f32 + 0.5))
                    .collect()
            })
            .collect();
        let bv: Vec<Vec<i64>> = batches
            .iter()
            .map(|&b| (0..b * 4).map(|i| (i as i64 % 5) - 2).collect())
            .collect();
        let wanted: [&[&str]; 3] = [&[], &["GT"], &["IDX", "SUM"]];
        let requests = || -> Vec<(Vec<Input>, &[&str])> {
            (0..3)
                .map(|k| {
                    let shape = [batches[k] as i64, 4];
                    let a = input("A", DataType::FP32, &shape, &f32_bytes(&a[k]));
                    let b = input("B", DataType::INT64, &shape, &i64_bytes(&bv[k]));
                    // The second request's first input comes from shared memory, in two parts.
                    let a = if k == 1 { a.shared_in_two(12) } else { a };
                    (vec![a, b], wanted[k])
                })
                .collect()
        };
        let joined: Vec<Vec<OutputTensor>> = execute(&mut r, requests())
            .iter()
            .map(Answers::outputs)
            .collect();
        let separate: Vec<Vec<OutputTensor>> = requests()
            .into_iter()
            .map(|one| execute(&mut r, vec![one])[0].outputs())
            .collect();
        assert_eq!(joined, separate);
        let names = |k: usize| -> Vec<&str> { joined[k].iter().map(|o| o.name.as_str()).collect() };
        assert_eq!(names(0), ["SUM", "GT", "IDX"]);
        assert_eq!(names(1), ["GT"]);
        assert_eq!(names(2), ["SUM", "IDX"]);
        let sum: Vec<f32> = a[2]
            .iter()
            .zip(&bv[2])
            .map(|(x, y)| x + *y as f32)
            .collect();
        assert_eq!(joined[2][0].shape, [3, 4]);
        assert_eq!(joined[2][0].data, f32_bytes(&sum));
        assert_eq!(joined[2][1].shape, [3]);
    }

    #[test]
    fn strings_join_and_split_and_bad_requests_fail_alone() {
        let Some(mut r) = runner("identity_bytes", json!({"max_batch_size": 8})) else {
            return;
        };
        let first = bytes::encode([&b"a"[..], b""]);
        let second = bytes::encode([&b"\xff"[..], b"long string", b"\x00z", b"q"]);
        let third = bytes::encode([&b"r"[..], b"s"]);
        let answers = execute(
            &mut r,
            vec![
                (vec![input("INPUT0", DataType::BYTES, &[1, 2], &first)], &[]),
                (
                    vec![input("INPUT0", DataType::BYTES, &[2, 2], &second).shared_in_two(7)],
                    &[],
                ),
                (
                    vec![input(
                        "INPUT0",
                        DataType::BYTES,
                        &[1, 2],
                        &third[..third.len() - 1],
                    )],
                    &[],
                ),
                (vec![input("INPUT0", DataType::BYTES, &[1, 2], &third)], &[]),
            ],
        );
        let expect = [(&[1i64, 2], &first), (&[2, 2], &second)];
        for (answer, (shape, data)) in answers.iter().zip(expect) {
            let out = &answer.outputs()[0];
            assert_eq!(
                (out.name.as_str(), out.datatype),
                ("OUTPUT0", DataType::BYTES)
            );
            assert_eq!(out.shape.as_slice(), shape);
            assert_eq!(&out.data, data);
        }
        assert!(answers[2].error().contains("'INPUT0'"));
        assert_eq!(answers[3].outputs()[0].data, third);
    }

    #[test]
    fn joined_runs_respect_max_batch_size_and_shapes() {
        let Some(mut r) = runner("identity_int32", json!({"max_batch_size": 3})) else {
            return;
        };
        let data = i32_bytes(0..14);
        let shapes = [[2i64, 2], [1, 2], [2, 2], [1, 4]];
        let mut at = 0;
        let mut requests: Vec<(Vec<Input>, &[&str])> = Vec::new();
        for shape in &shapes {
            let len = (shape[0] * shape[1] * 4) as usize;
            let t = input("INPUT0", DataType::INT32, shape, &data[at..at + len]);
            requests.push((vec![t.shared_in_two(4)], &["OUTPUT0"]));
            at += len;
        }
        let mut at = 0;
        for (answer, shape) in execute(&mut r, requests).iter().zip(&shapes) {
            let out = &answer.outputs()[0];
            let len = (shape[0] * shape[1] * 4) as usize;
            assert_eq!(out.shape.as_slice(), shape);
            assert_eq!(out.data, &data[at..at + len]);
            at += len;
        }
    }

    #[test]
    fn bools_are_normalised() {
        let Some(mut r) = runner("identity_bool", json!({"max_batch_size": 4})) else {
            return;
        };
        let answers = execute(
            &mut r,
            vec![
                (
                    vec![input("INPUT0", DataType::BOOL, &[1, 3], &[0, 7, 1])],
                    &[],
                ),
                (
                    vec![input("INPUT0", DataType::BOOL, &[1, 3], &[255, 0, 0])],
                    &[],
                ),
            ],
        );
        assert_eq!(answers[0].outputs()[0].data, [0, 1, 1]);
        assert_eq!(answers[1].outputs()[0].data, [1, 0, 0]);
    }

    #[test]
    fn a_model_without_batching_runs_each_request_alone() {
        let Some(mut r) = runner("no_batch_fp64", json!({"max_batch_size": 0})) else {
            return;
        };
        let x = |v: &[f64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let answers = execute(
            &mut r,
            vec![
                (
                    vec![input("X", DataType::FP64, &[1, 3], &x(&[1.0, 2.0, 3.0]))],
                    &["S"],
                ),
                (
                    vec![input("X", DataType::FP64, &[2, 3], &x(&[0.0; 6]))],
                    &["S", "Y"],
                ),
            ],
        );
        let first = answers[0].outputs();
        assert_eq!(first.len(), 1);
        assert_eq!(
            (first[0].name.as_str(), first[0].shape.as_slice()),
            ("S", &[1][..])
        );
        assert_eq!(first[0].data, x(&[6.0]));
        let second = answers[1].outputs();
        assert_eq!(second[0].name, "Y");
        assert_eq!(second[0].data, x(&[1.0; 6]));
        assert_eq!(second[1].data, x(&[0.0; 2]));
    }
}
