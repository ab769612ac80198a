//! Running requests on one session: each request on its own, or several requests of a batching
//! model joined along the batch dimension into one run and split again afterwards.

use std::borrow::Cow;
use std::sync::Arc;

use ferrum_backend_api::{BackendError, OutputTensor};
use ort::session::OutputSelector;
use ort::session::{RunOptions, Session, SessionInputValue};

use crate::model::{CheckedRequest, ModelSpec, RequestView};
use crate::tensors::{OutputData, input_value};

/// One execution instance: its own session and the model's shared signature.
pub struct Runner {
    /// This instance's session.
    pub session: Session,
    /// The model's signature.
    pub spec: Arc<ModelSpec>,
}

/// One request's outputs, or why it failed.
type Outcome = Result<Vec<OutputTensor>, BackendError>;

impl Runner {
    /// Runs requests; returns one result per request, in order.
    pub fn run(&mut self, requests: &[RequestView<'_, '_>]) -> Vec<Outcome> {
        let spec = Arc::clone(&self.spec);
        let checked: Vec<Result<CheckedRequest<'_, '_>, BackendError>> =
            requests.iter().map(|r| spec.check_request(r)).collect();
        let mut results: Vec<Option<Outcome>> = (0..requests.len()).map(|_| None).collect();
        // Greedy groups of consecutive joinable requests within max_batch_size.
        let mut group: Vec<usize> = Vec::new();
        let mut group_batch = 0usize;
        let limit = usize::try_from(spec.max_batch_size).unwrap_or(0);
        for (i, c) in checked.iter().enumerate() {
            let c = match c {
                Ok(c) => c,
                Err(e) => {
                    results[i] = Some(Err(e.clone()));
                    continue;
                }
            };
            let fits = limit > 0
                && group.first().is_some_and(|&first| {
                    matches!(&checked[first], Ok(f) if f.joins(c)) && group_batch + c.batch <= limit
                });
            if !fits && !group.is_empty() {
                self.run_group(&checked, &group, &mut results);
                group.clear();
                group_batch = 0;
            }
            group.push(i);
            group_batch += c.batch;
        }
        if !group.is_empty() {
            self.run_group(&checked, &group, &mut results);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BackendError::internal("request was not run"))))
            .collect()
    }

    /// Runs a group of checked requests (one run when it has several) and files the results.
    fn run_group(
        &mut self,
        checked: &[Result<CheckedRequest<'_, '_>, BackendError>],
        group: &[usize],
        results: &mut [Option<Outcome>],
    ) {
        let members: Vec<&CheckedRequest<'_, '_>> = group
            .iter()
            .filter_map(|&i| checked.get(i).and_then(|c| c.as_ref().ok()))
            .collect();
        let outcomes = if members.len() == 1 {
            vec![self.run_one(members[0])]
        } else {
            match self.run_joined(&members) {
                Ok(outcomes) => outcomes,
                Err(e) => members.iter().map(|_| Err(e.clone())).collect(),
            }
        };
        for (&i, outcome) in group.iter().zip(outcomes) {
            results[i] = Some(outcome);
        }
    }

    /// The outputs any of `members` asked for, in the spec's order.
    fn wanted<'s>(spec: &'s ModelSpec, members: &[&CheckedRequest<'_, '_>]) -> Vec<&'s str> {
        spec.outputs
            .iter()
            .map(|o| o.name.as_str())
            .filter(|name| members.iter().any(|m| m.wants(name)))
            .collect()
    }

    /// Runs the session on these inputs and reads back the wanted outputs.
    fn session_run(
        &mut self,
        inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)>,
        wanted: &[&str],
    ) -> Result<Vec<OutputData>, BackendError> {
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
        wanted
            .iter()
            .map(|name| {
                let value = outputs.get(*name).ok_or_else(|| {
                    BackendError::internal(format!("ONNX Runtime returned no output '{name}'"))
                })?;
                OutputData::read(value).map_err(|e| {
                    BackendError::new(e.code, format!("output '{name}': {}", e.message))
                })
            })
            .collect()
    }

    /// Runs one request on its own.
    fn run_one(&mut self, request: &CheckedRequest<'_, '_>) -> Outcome {
        let spec = Arc::clone(&self.spec);
        let inputs = spec
            .inputs
            .iter()
            .zip(&request.inputs)
            .map(|(info, tensor)| {
                let value = input_value(info.element, info.datatype, tensor.shape(), &[*tensor])?;
                Ok((
                    Cow::Owned(info.name.clone()),
                    SessionInputValue::from(value),
                ))
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        let wanted = Self::wanted(&spec, &[request]);
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let data = self.session_run(inputs, &wanted)?;
        Ok(wanted
            .iter()
            .zip(data)
            .map(|(name, d)| d.into_tensor(name))
            .collect())
    }

    /// Runs several requests as one batch and splits the outputs; an error fails them all.
    fn run_joined(
        &mut self,
        members: &[&CheckedRequest<'_, '_>],
    ) -> Result<Vec<Outcome>, BackendError> {
        let spec = Arc::clone(&self.spec);
        let total: usize = members.iter().map(|m| m.batch).sum();
        let mut inputs = Vec::with_capacity(spec.inputs.len());
        for (k, info) in spec.inputs.iter().enumerate() {
            let parts: Vec<&ferrum_backend_api::Tensor<'_>> = members
                .iter()
                .filter_map(|m| m.inputs.get(k).copied())
                .collect();
            let mut shape = parts
                .first()
                .map(|t| t.shape().to_vec())
                .unwrap_or_default();
            if let Some(first) = shape.first_mut() {
                *first = i64::try_from(total)
                    .map_err(|_| BackendError::invalid_argument("joined batch is too large"))?;
            }
            let value = input_value(info.element, info.datatype, &shape, &parts)?;
            inputs.push((
                Cow::Owned(info.name.clone()),
                SessionInputValue::from(value),
            ));
        }
        let wanted = Self::wanted(&spec, members);
        if wanted.is_empty() {
            return Ok(members.iter().map(|_| Ok(Vec::new())).collect());
        }
        let data = self.session_run(inputs, &wanted)?;
        for (name, d) in wanted.iter().zip(&data) {
            if d.shape.first().and_then(|&n| usize::try_from(n).ok()) != Some(total) {
                return Err(BackendError::internal(format!(
                    "output '{name}' of model '{}' has shape {:?} for a joined batch of {total}; \
                     it cannot be split between requests",
                    spec.name, d.shape
                )));
            }
        }
        let mut start = 0usize;
        let mut outcomes = Vec::with_capacity(members.len());
        for member in members {
            let mut outputs = Vec::new();
            for (name, d) in wanted.iter().zip(&data) {
                if member.wants(name) {
                    let part = d.rows(name, start, member.batch).ok_or_else(|| {
                        BackendError::internal(format!("output '{name}' could not be split"))
                    })?;
                    outputs.push(part);
                }
            }
            start += member.batch;
            outcomes.push(Ok(outputs));
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    //! These run real sessions, so they need the ONNX Runtime library: `FERRUM_ONNXRUNTIME_LIBRARY`,
    //! the debug install tree (`make test-build`) or the download cache. Without it they say so
    //! and pass.
    use std::path::PathBuf;

    use ferrum_backend_api::abi_stable::std_types::{RSlice, RStr};
    use ferrum_backend_api::{DataType, Memory, Tensor, bytes};
    use serde_json::json;

    use super::*;
    use crate::settings::SessionSettings;

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

    fn tensor<'a>(name: &'a str, dt: DataType, shape: &'a [i64], data: &'a [u8]) -> Tensor<'a> {
        Tensor {
            name: RStr::from_str(name),
            datatype: dt,
            shape: RSlice::from_slice(shape),
            data: RSlice::from_slice(data),
            memory: Memory::CPU,
        }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn i64_bytes(v: &[i64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn joined_batch_equals_separate_runs() {
        let Some(mut r) = runner("multi_io", json!({"max_batch_size": 8})) else {
            return;
        };
        let batches = [1usize, 2, 3];
        let a: Vec<Vec<u8>> = batches
            .iter()
            .enumerate()
            .map(|(k, &b)| {
                f32_bytes(
                    &(0..b * 4)
                        .map(|i| (i as f32 - 3.0) * (k as f32 + 0.5))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let bv: Vec<Vec<u8>> = batches
            .iter()
            .map(|&b| i64_bytes(&(0..b * 4).map(|i| (i as i64 % 5) - 2).collect::<Vec<_>>()))
            .collect();
        let shapes: Vec<[i64; 2]> = batches.iter().map(|&b| [b as i64, 4]).collect();
        let inputs: Vec<[Tensor<'_>; 2]> = (0..3)
            .map(|k| {
                [
                    tensor("A", DataType::FP32, &shapes[k], &a[k]),
                    tensor("B", DataType::INT64, &shapes[k], &bv[k]),
                ]
            })
            .collect();
        let wanted: [&[&str]; 3] = [&[], &["GT"], &["IDX", "SUM"]];
        let views: Vec<RequestView<'_, '_>> = (0..3)
            .map(|k| RequestView {
                inputs: &inputs[k],
                requested_outputs: wanted[k],
            })
            .collect();
        let joined = r.run(&views);
        let separate: Vec<_> = views
            .iter()
            .map(|v| r.run(std::slice::from_ref(v)))
            .collect();
        for (k, (j, s)) in joined.iter().zip(&separate).enumerate() {
            let j = j.as_ref().unwrap();
            let s = s[0].as_ref().unwrap();
            assert_eq!(j.len(), s.len(), "request {k}");
            for (x, y) in j.iter().zip(s) {
                assert_eq!(x.name, y.name);
                assert_eq!(x.shape, y.shape, "request {k} output {}", x.name);
                assert_eq!(x.data, y.data, "request {k} output {}", x.name);
            }
        }
        let names: Vec<&str> = joined[2]
            .as_ref()
            .unwrap()
            .iter()
            .map(|o| o.name.as_str())
            .collect();
        assert_eq!(names, ["SUM", "IDX"]);
        assert_eq!(joined[0].as_ref().unwrap().len(), 3);
    }

    #[test]
    fn strings_join_and_split_and_bad_requests_fail_alone() {
        let Some(mut r) = runner("identity_bytes", json!({"max_batch_size": 8})) else {
            return;
        };
        let first = bytes::encode([&b"a"[..], b"", b"\x00z"]);
        let second = bytes::encode([&b"\xff"[..], b"long string"]);
        let third = bytes::encode([&b"q"[..], b"r", b"s", b"t"]);
        let shapes = [[1i64, 3], [2, 1], [2, 2]];
        let inputs = [
            [tensor("INPUT0", DataType::BYTES, &shapes[0], &first)],
            [tensor("INPUT0", DataType::BYTES, &shapes[1], &second)],
            [tensor(
                "INPUT0",
                DataType::BYTES,
                &shapes[2],
                &third[..third.len() - 1],
            )],
        ];
        let views: Vec<RequestView<'_, '_>> = inputs
            .iter()
            .map(|i| RequestView {
                inputs: i,
                requested_outputs: &[],
            })
            .collect();
        let results = r.run(&views);
        let out0 = &results[0].as_ref().unwrap()[0];
        assert_eq!(out0.shape.as_slice(), &[1, 3]);
        assert_eq!(out0.data.as_slice(), first.as_slice());
        let out1 = &results[1].as_ref().unwrap()[0];
        assert_eq!(out1.shape.as_slice(), &[2, 1]);
        assert_eq!(out1.data.as_slice(), second.as_slice());
        let err = results[2].as_ref().unwrap_err();
        assert!(err.message.as_str().contains("'INPUT0'"), "{}", err.message);
    }

    #[test]
    fn groups_respect_max_batch_size_and_shapes() {
        let Some(mut r) = runner("identity_int32", json!({"max_batch_size": 3})) else {
            return;
        };
        let data: Vec<u8> = (0..12i32).flat_map(|x| x.to_le_bytes()).collect();
        let shapes = [[2i64, 2], [2, 2], [1, 4]];
        let inputs = [
            [tensor("INPUT0", DataType::INT32, &shapes[0], &data[..16])],
            [tensor("INPUT0", DataType::INT32, &shapes[1], &data[16..32])],
            [tensor("INPUT0", DataType::INT32, &shapes[2], &data[32..48])],
        ];
        let views: Vec<RequestView<'_, '_>> = inputs
            .iter()
            .map(|i| RequestView {
                inputs: i,
                requested_outputs: &["OUTPUT0"],
            })
            .collect();
        for (k, result) in r.run(&views).iter().enumerate() {
            let out = &result.as_ref().unwrap()[0];
            assert_eq!(out.shape.as_slice(), &shapes[k]);
            assert_eq!(out.data.as_slice(), &data[k * 16..(k + 1) * 16]);
        }
    }
}
