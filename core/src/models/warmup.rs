//! Model warmup (the config's `model_warmup`): before a new version serves (before it is
//! READY, and before a live reload switches traffic to it) every sample runs `count` times
//! through the version's instances, the way client requests do. A sample that fails fails
//! the load, naming the sample; the version that was serving keeps serving.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use ferrum_backend_api::{DataType, ParamValue, Parameter};

use super::LiveModel;
use crate::error::{Error, Result};
use crate::proto::inference::ModelWarmup;
use crate::proto::inference::model_config::SchedulingChoice;
use crate::proto::inference::model_warmup::input::InputDataType;
use crate::server::{InferRequest, InputData, InputTensor};

/// Folder of a model's warmup data files (`input_data_file`), as in Triton.
const WARMUP_FOLDER: &str = "warmup";

/// Runs the config's warmup samples on a freshly loaded version. `model_dir` is the model's
/// folder (its `warmup/` holds the data files).
pub fn run(model: &LiveModel, model_dir: &Path) -> Result<()> {
    let config = &model.config;
    if config.model_warmup.is_empty() {
        return Ok(());
    }
    // One request per instance at a time, so that every instance runs each sample.
    let instances: usize = config
        .instance_group
        .iter()
        .map(|g| usize::try_from(g.count).unwrap_or(1))
        .sum::<usize>()
        .max(1);
    let sequences = matches!(
        config.scheduling_choice,
        Some(SchedulingChoice::SequenceBatching(_))
    );
    for (n, sample) in config.model_warmup.iter().enumerate() {
        let name = if sample.name.is_empty() {
            format!("#{n}")
        } else {
            sample.name.clone()
        };
        let failed =
            |e: Error| Error::invalid(format!("warmup sample '{name}' failed: {}", e.message));
        let request = sample_request(model, sample, model_dir).map_err(failed)?;
        for round in 0..sample.count.max(1) {
            let mut waiting = Vec::with_capacity(instances);
            for i in 0..instances {
                let mut request = request.clone();
                if sequences {
                    // Each warmup request is a sequence of its own.
                    let id = (1u64 << 62) + u64::from(round) * 4096 + i as u64;
                    request.parameters.extend([
                        param("sequence_id", ParamValue::Int(id as i64)),
                        param("sequence_start", ParamValue::Bool(true)),
                        param("sequence_end", ParamValue::Bool(true)),
                    ]);
                }
                waiting.push(submit(model, request).map_err(failed)?);
            }
            for rx in waiting {
                wait(rx).map_err(failed)?;
            }
        }
        tracing::info!(
            model = %model.name,
            version = model.version,
            "warmup sample '{name}' ran {} time(s) on {instances} instance(s)",
            sample.count.max(1)
        );
    }
    Ok(())
}

fn param(key: &str, value: ParamValue) -> Parameter {
    Parameter {
        key: key.to_string(),
        value,
    }
}

/// Queues one warmup request, checked like a client's.
fn submit(model: &LiveModel, mut request: InferRequest) -> Result<crate::scheduler::ResponseRx> {
    model.validate(&request)?;
    model.to_backend_shapes(&mut request)?;
    let ticket = crate::scheduler::Ticket {
        cancelled: Arc::new(AtomicBool::new(false)),
        delivery: Vec::new().into(),
        deadline: None,
        allocator: None,
    };
    model.submit(request, ticket)
}

/// Waits for a warmup request's final response; an error response is the request's error.
fn wait(rx: crate::scheduler::ResponseRx) -> Result<()> {
    let mut rx = rx;
    loop {
        match crate::plugins::host::block_on(rx.recv()) {
            None => {
                return Err(Error::internal(
                    "the backend ended the request without a final response",
                ));
            }
            Some(message) => {
                message.result?;
                if message.is_final {
                    return Ok(());
                }
            }
        }
    }
}

/// The request a warmup sample describes.
fn sample_request(
    model: &LiveModel,
    sample: &ModelWarmup,
    model_dir: &Path,
) -> Result<InferRequest> {
    let config = &model.config;
    if config.max_batch_size > 0 && sample.batch_size == 0 {
        return Err(Error::invalid(
            "batch_size must be at least 1 for a model that batches",
        ));
    }
    if config.max_batch_size > 0 && i64::from(sample.batch_size) > i64::from(config.max_batch_size)
    {
        return Err(Error::invalid(format!(
            "batch_size {} is over the model's max_batch_size {}",
            sample.batch_size, config.max_batch_size
        )));
    }
    let batch = if config.max_batch_size > 0 {
        Some(i64::from(sample.batch_size))
    } else {
        None
    };
    let mut names: Vec<&String> = sample.inputs.keys().collect();
    names.sort();
    let mut inputs = Vec::with_capacity(names.len());
    for name in names {
        let input = &sample.inputs[name];
        let datatype = crate::config::datatype_of(input.data_type)
            .ok_or_else(|| Error::invalid(format!("input '{name}' has no data_type")))?;
        if input.dims.iter().any(|&d| d < 0) {
            return Err(Error::invalid(format!(
                "input '{name}' has variable dims {:?}; warmup dims must be fixed",
                input.dims
            )));
        }
        let per_sample: usize = input
            .dims
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(0))
            .product();
        let mut shape = input.dims.clone();
        let copies = match batch {
            Some(b) => {
                shape.insert(0, b);
                usize::try_from(b).unwrap_or(1)
            }
            None => 1,
        };
        let one = sample_data(
            name,
            datatype,
            per_sample,
            input.input_data_type.as_ref(),
            model_dir,
        )?;
        let data = one.repeat(copies);
        inputs.push(InputTensor {
            name: name.clone(),
            datatype,
            shape,
            data: InputData::Owned(Bytes::from(data)),
        });
    }
    Ok(InferRequest {
        model_name: model.name.clone(),
        model_version: Some(model.version),
        id: format!("warmup-{}", sample.name),
        parameters: Vec::new(),
        inputs,
        outputs: Vec::new(),
        delivery: Vec::new(),
        allocator: None,
    })
}

/// The bytes of one batch row of a warmup input.
fn sample_data(
    name: &str,
    datatype: DataType,
    elements: usize,
    kind: Option<&InputDataType>,
    model_dir: &Path,
) -> Result<Vec<u8>> {
    let size = datatype.element_size();
    match kind {
        None | Some(InputDataType::ZeroData(_)) => Ok(match size {
            Some(size) => vec![0; elements * size],
            // BYTES: empty strings.
            None => vec![0; elements * 4],
        }),
        Some(InputDataType::RandomData(_)) => {
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ elements as u64;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            Ok(match datatype {
                // Small values in range for every type: floats in [0, 1), integers 0..=9.
                DataType::FP32 => (0..elements)
                    .flat_map(|_| ((next() % 1000) as f32 / 1000.0).to_le_bytes())
                    .collect(),
                DataType::FP64 => (0..elements)
                    .flat_map(|_| ((next() % 1000) as f64 / 1000.0).to_le_bytes())
                    .collect(),
                DataType::BYTES => {
                    let texts: Vec<String> = (0..elements)
                        .map(|_| format!("{}", next() % 1000))
                        .collect();
                    ferrum_backend_api::bytes::encode(texts)
                }
                _ => {
                    let size = size.unwrap_or(1);
                    let mut out = vec![0u8; elements * size];
                    for chunk in out.chunks_mut(size) {
                        chunk[0] = (next() % 10) as u8;
                    }
                    out
                }
            })
        }
        Some(InputDataType::InputDataFile(file)) => {
            let relative = Path::new(file);
            if relative.is_absolute()
                || relative
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(Error::invalid(format!(
                    "input '{name}': input_data_file '{file}' must be a plain path inside the model's {WARMUP_FOLDER}/ folder"
                )));
            }
            let path = model_dir.join(WARMUP_FOLDER).join(relative);
            let data = std::fs::read(&path).map_err(|e| {
                Error::invalid(format!(
                    "input '{name}': cannot read {}: {e}",
                    path.display()
                ))
            })?;
            match size {
                Some(size) if data.len() != elements * size => Err(Error::invalid(format!(
                    "input '{name}': {} holds {} bytes, one sample of {elements} {datatype} \
                     elements takes {}",
                    path.display(),
                    data.len(),
                    elements * size
                ))),
                Some(_) => Ok(data),
                None => {
                    let items = ferrum_backend_api::bytes::decode(&data).map_err(|e| {
                        Error::invalid(format!(
                            "input '{name}': {} is not length-prefixed strings: {}",
                            path.display(),
                            e.message
                        ))
                    })?;
                    if items.len() != elements {
                        return Err(Error::invalid(format!(
                            "input '{name}': {} holds {} strings, one sample takes {elements}",
                            path.display(),
                            items.len()
                        )));
                    }
                    Ok(data)
                }
            }
        }
    }
}
