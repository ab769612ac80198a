//! Triton's ensembles: a model whose config wires other models into a graph
//! (`platform: "ensemble"`, `ensemble_scheduling { step [...] }`). Each step runs as soon as
//! every tensor it reads exists, steps without a path between them run at the same time, and
//! tensors pass from step to step without copies (the bytes a step returned are the bytes the
//! next one reads). Each step is an ordinary inference of its model through the core, so the
//! members' own statistics, batching and reloads apply; the ensemble's statistics count its
//! requests end to end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use ferrum_backend_api::DataType;

use crate::config::{ModelConfig, datatype_of};
use crate::error::{Error, Result};
use crate::plugins::ServerHost;
use crate::proto::inference::ModelEnsembling;
use crate::proto::inference::model_config::SchedulingChoice;
use crate::scheduler::{Outputs, ResponseMessage, ResponseRx, Ticket, responses};
use crate::server::{InferRequest, InputTensor, OutputData};

/// Whether a config is an ensemble's.
pub fn is_ensemble(config: &ModelConfig) -> bool {
    config.platform == "ensemble"
        || matches!(
            config.scheduling_choice,
            Some(SchedulingChoice::EnsembleScheduling(_))
        )
}

/// The models an ensemble's steps call, in step order (each once).
pub fn members(config: &ModelConfig) -> Vec<String> {
    let mut seen = Vec::new();
    if let Some(SchedulingChoice::EnsembleScheduling(e)) = &config.scheduling_choice {
        for step in &e.step {
            if !seen.contains(&step.model_name) {
                seen.push(step.model_name.clone());
            }
        }
    }
    seen
}

/// One step of an ensemble, ready to run.
#[derive(Clone, Debug)]
struct Step {
    /// The model it calls.
    model: String,
    /// The version it calls (none: the highest ready).
    version: Option<i64>,
    /// (the model's input, the ensemble tensor it reads).
    inputs: Vec<(String, String)>,
    /// (the model's output, the ensemble tensor it writes).
    outputs: Vec<(String, String)>,
    /// The model may send any number of responses: each one continues the graph on its own.
    decoupled: bool,
}

/// A loaded ensemble: its steps, and the core that runs them.
pub struct Ensemble {
    /// The ensemble's name, for messages.
    name: String,
    /// The steps.
    steps: Vec<Step>,
    /// The ensemble's outputs, by name.
    outputs: Vec<String>,
    /// A step is decoupled, so the ensemble may answer any number of times.
    decoupled: bool,
    /// Reaches the core.
    host: ServerHost,
}

/// A tensor that exists while an ensemble request runs.
#[derive(Clone)]
struct Value {
    /// Element type.
    datatype: DataType,
    /// Shape.
    shape: Vec<i64>,
    /// Bytes.
    data: Bytes,
}

/// A declared tensor of a model: (type, dims without the batch dimension).
type Declared = (DataType, Vec<i64>);

fn declared(config: &ModelConfig, input: bool, name: &str) -> Option<Declared> {
    if input {
        config
            .input
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| Some((datatype_of(t.data_type)?, t.dims.clone())))
    } else {
        config
            .output
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| Some((datatype_of(t.data_type)?, t.dims.clone())))
    }
}

/// Whether two declared shapes can hold the same tensor (-1 matches any size).
fn shapes_agree(a: &[i64], b: &[i64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| *x < 0 || *y < 0 || x == y)
}

impl Ensemble {
    /// Checks an ensemble's graph against its members' configs (`member` looks a loaded model
    /// up by name) and prepares it to run. Every error names the step and tensor at fault.
    pub fn new(
        config: &ModelConfig,
        host: ServerHost,
        member: impl Fn(&str) -> Option<ModelConfig>,
    ) -> Result<Self> {
        let name = &config.name;
        let Some(SchedulingChoice::EnsembleScheduling(ModelEnsembling { step, .. })) =
            &config.scheduling_choice
        else {
            return Err(Error::invalid(format!(
                "ensemble '{name}' has no ensemble_scheduling section"
            )));
        };
        if step.is_empty() {
            return Err(Error::invalid(format!("ensemble '{name}' has no steps")));
        }
        // Every tensor of the graph: who produces it and its declared type and shape.
        let mut producer: HashMap<String, Option<usize>> = HashMap::new();
        let mut kinds: HashMap<String, Declared> = HashMap::new();
        for input in &config.input {
            let datatype = datatype_of(input.data_type).ok_or_else(|| {
                Error::invalid(format!(
                    "ensemble '{name}' input '{}' has no data_type",
                    input.name
                ))
            })?;
            producer.insert(input.name.clone(), None);
            kinds.insert(input.name.clone(), (datatype, input.dims.clone()));
        }
        let mut steps = Vec::with_capacity(step.len());
        let mut member_configs = Vec::with_capacity(step.len());
        for (i, s) in step.iter().enumerate() {
            let at = |what: String| {
                Error::invalid(format!(
                    "ensemble '{name}' step {i} ('{}'): {what}",
                    s.model_name
                ))
            };
            if s.model_name == *name {
                return Err(at("an ensemble cannot call itself".to_string()));
            }
            let member_config = member(&s.model_name)
                .ok_or_else(|| at(format!("model '{}' is not loaded", s.model_name)))?;
            for model_output in s.output_map.keys() {
                if declared(&member_config, false, model_output).is_none() {
                    return Err(at(format!(
                        "'{model_output}' in output_map is not an output of model '{}'",
                        s.model_name
                    )));
                }
            }
            for (model_output, tensor) in &s.output_map {
                if let Some(previous) = producer.get(tensor) {
                    let by = match previous {
                        None => "it is an ensemble input".to_string(),
                        Some(p) => format!("step {p} produces it too"),
                    };
                    return Err(at(format!("tensor '{tensor}' is produced twice ({by})")));
                }
                producer.insert(tensor.clone(), Some(i));
                if let Some(kind) = declared(&member_config, false, model_output) {
                    kinds.insert(tensor.clone(), kind);
                }
            }
            let version = (s.model_version > 0).then_some(s.model_version);
            let decoupled = crate::config::is_decoupled(&member_config);
            steps.push(Step {
                decoupled,
                model: s.model_name.clone(),
                version,
                inputs: s
                    .input_map
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                outputs: s
                    .output_map
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
            member_configs.push(member_config);
        }
        // What each step reads must exist, with the type and shape the model declares.
        for (i, (s, member_config)) in steps.iter().zip(&member_configs).enumerate() {
            let at = |what: String| {
                Error::invalid(format!(
                    "ensemble '{name}' step {i} ('{}'): {what}",
                    s.model
                ))
            };
            for (model_input, tensor) in &s.inputs {
                let want = declared(member_config, true, model_input).ok_or_else(|| {
                    at(format!(
                        "'{model_input}' in input_map is not an input of model '{}'",
                        s.model
                    ))
                })?;
                if !producer.contains_key(tensor) {
                    return Err(at(format!(
                        "tensor '{tensor}' is neither an ensemble input nor produced by a step"
                    )));
                }
                if let Some((datatype, dims)) = kinds.get(tensor) {
                    if *datatype != want.0 {
                        return Err(at(format!(
                            "tensor '{tensor}' is {datatype}, but input '{model_input}' of model '{}' takes {}",
                            s.model, want.0
                        )));
                    }
                    if !shapes_agree(dims, &want.1) {
                        return Err(at(format!(
                            "tensor '{tensor}' has dims {dims:?}, but input '{model_input}' of model '{}' takes {:?}",
                            s.model, want.1
                        )));
                    }
                }
            }
            for input in &member_config.input {
                if !input.optional && !s.inputs.iter().any(|(m, _)| *m == input.name) {
                    return Err(at(format!(
                        "required input '{}' of model '{}' is not in input_map",
                        input.name, s.model
                    )));
                }
            }
        }
        for output in &config.output {
            let at = |what: String| {
                Error::invalid(format!(
                    "ensemble '{name}' output '{}': {what}",
                    output.name
                ))
            };
            match producer.get(&output.name) {
                Some(Some(_)) => {}
                _ => return Err(at("no step produces it".to_string())),
            }
            let datatype = datatype_of(output.data_type)
                .ok_or_else(|| at("it has no data_type".to_string()))?;
            if let Some((produced, dims)) = kinds.get(&output.name) {
                if *produced != datatype {
                    return Err(at(format!(
                        "the step that produces it gives {produced}, the ensemble declares {datatype}"
                    )));
                }
                if !shapes_agree(dims, &output.dims) {
                    return Err(at(format!(
                        "the step that produces it gives dims {dims:?}, the ensemble declares {:?}",
                        output.dims
                    )));
                }
            }
        }
        check_acyclic(name, &steps, &producer)?;
        Ok(Ensemble {
            name: name.clone(),
            decoupled: steps.iter().any(|s| s.decoupled),
            steps,
            outputs: config.output.iter().map(|o| o.name.clone()).collect(),
            host,
        })
    }

    /// Whether a step is decoupled (the ensemble then answers once per path through the
    /// graph, and clients call it with the streaming API).
    pub fn decoupled(&self) -> bool {
        self.decoupled
    }

    /// Starts a request through the graph; its responses arrive on the returned channel.
    pub fn submit(self: &Arc<Self>, request: InferRequest, ticket: Ticket) -> Result<ResponseRx> {
        let Some((core, runtime)) = self.host.core() else {
            return Err(Error::unavailable("the server is not ready for inference"));
        };
        let (tx, rx) = responses();
        let ensemble = Arc::clone(self);
        runtime.spawn(async move {
            let run = Run {
                ensemble: &ensemble,
                core: &core,
                request: &request,
                ticket: &ticket,
                tx: &tx,
            };
            let values = request
                .inputs
                .iter()
                .map(|t| {
                    let value = Value {
                        datatype: t.datatype,
                        shape: t.shape.clone(),
                        data: t.data.to_bytes(),
                    };
                    (t.name.clone(), value)
                })
                .collect();
            let done = vec![false; ensemble.steps.len()];
            let result = run.branch(values, done).await;
            let message = match result {
                // A decoupled ensemble has sent its responses; the final flag ends them.
                Ok(None) => ResponseMessage {
                    result: Ok(None),
                    is_final: true,
                    timing: None,
                    rejected: false,
                },
                Ok(Some(outputs)) => ResponseMessage {
                    result: Ok(Some(outputs)),
                    is_final: true,
                    timing: None,
                    rejected: false,
                },
                Err(e) => ResponseMessage {
                    result: Err(e),
                    is_final: true,
                    timing: None,
                    rejected: false,
                },
            };
            tx.send(message);
        });
        Ok(rx)
    }

    /// The ensemble's outputs (those the request asked for) from a finished path.
    fn outputs(&self, request: &InferRequest, values: &HashMap<String, Value>) -> Result<Outputs> {
        let wanted: Vec<&String> = if request.outputs.is_empty() {
            self.outputs.iter().collect()
        } else {
            request.outputs.iter().collect()
        };
        let mut outputs = Vec::with_capacity(wanted.len());
        for name in wanted {
            let v = values.get(name).ok_or_else(|| {
                Error::invalid(format!("ensemble '{}' has no output '{name}'", self.name))
            })?;
            outputs.push(OutputData {
                name: name.clone(),
                datatype: v.datatype,
                shape: v.shape.clone(),
                data: v.data.clone(),
                shm: None,
            });
        }
        Ok(Outputs {
            outputs,
            parameters: Vec::new(),
        })
    }

    /// The request a step sends its model, its inputs taken from `values`.
    fn step_request(
        &self,
        step: &Step,
        request: &InferRequest,
        values: &HashMap<String, Value>,
    ) -> InferRequest {
        InferRequest {
            model_name: step.model.clone(),
            model_version: step.version,
            id: request.id.clone(),
            parameters: request.parameters.clone(),
            inputs: step
                .inputs
                .iter()
                .filter_map(|(input, tensor)| {
                    let v = values.get(tensor)?;
                    Some(InputTensor {
                        name: input.clone(),
                        datatype: v.datatype,
                        shape: v.shape.clone(),
                        data: v.data.clone().into(),
                    })
                })
                .collect(),
            outputs: step.outputs.iter().map(|(o, _)| o.clone()).collect(),
            delivery: Vec::new(),
            allocator: None,
        }
    }

    /// Adds what a step returned to `values`, under the ensemble's tensor names.
    fn take_outputs(
        &self,
        i: usize,
        response: crate::server::InferResponse,
        values: &mut HashMap<String, Value>,
    ) -> Result<()> {
        let step = &self.steps[i];
        let mut produced: BTreeMap<String, OutputData> = response
            .outputs
            .into_iter()
            .map(|o| (o.name.clone(), o))
            .collect();
        for (output, tensor) in &step.outputs {
            let o = produced.remove(output).ok_or_else(|| {
                Error::internal(format!(
                    "ensemble '{}' step {i}: model '{}' did not return output '{output}'",
                    self.name, step.model
                ))
            })?;
            values.insert(
                tensor.clone(),
                Value {
                    datatype: o.datatype,
                    shape: o.shape,
                    data: o.data,
                },
            );
        }
        Ok(())
    }

    /// A step's error, naming the step.
    fn step_error(&self, i: usize, e: Error) -> Error {
        Error::new(
            e.kind,
            format!(
                "ensemble '{}' step {i} (model '{}'): {}",
                self.name, self.steps[i].model, e.message
            ),
        )
    }
}

/// One request going through an ensemble.
struct Run<'a> {
    /// The graph.
    ensemble: &'a Ensemble,
    /// Runs the steps.
    core: &'a Arc<crate::server::Core>,
    /// The ensemble's request.
    request: &'a InferRequest,
    /// Cancellation.
    ticket: &'a Ticket,
    /// Where a decoupled ensemble's responses go.
    tx: &'a crate::scheduler::ResponseTx,
}

impl Run<'_> {
    /// Runs the steps not yet `done` on `values`: the others as soon as their tensors exist
    /// (side by side), a decoupled one once nothing else is running, each of its responses
    /// continuing the graph on a copy of the tensors so far. Returns the outputs of a
    /// non-decoupled ensemble; a decoupled one sends a response per finished path.
    fn branch(
        &self,
        mut values: HashMap<String, Value>,
        mut done: Vec<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<Outputs>>> + Send + '_>>
    {
        Box::pin(async move {
            let ensemble = self.ensemble;
            let mut started = done.clone();
            let mut running = tokio::task::JoinSet::new();
            loop {
                if self
                    .ticket
                    .cancelled
                    .load(std::sync::atomic::Ordering::Relaxed)
                {
                    return Err(Error::cancelled("the ensemble request was cancelled"));
                }
                let ready = |i: usize, values: &HashMap<String, Value>, started: &[bool]| {
                    !started[i]
                        && ensemble.steps[i]
                            .inputs
                            .iter()
                            .all(|(_, t)| values.contains_key(t))
                };
                for (i, step) in ensemble.steps.iter().enumerate() {
                    if step.decoupled || !ready(i, &values, &started) {
                        continue;
                    }
                    started[i] = true;
                    let member = ensemble.step_request(step, self.request, &values);
                    let core = Arc::clone(self.core);
                    running.spawn(async move { (i, core.infer(member).await) });
                }
                if let Some(joined) = running.join_next().await {
                    let (i, answer) = joined
                        .map_err(|e| Error::internal(format!("an ensemble step failed: {e}")))?;
                    let response = answer.map_err(|e| ensemble.step_error(i, e))?;
                    ensemble.take_outputs(i, response, &mut values)?;
                    done[i] = true;
                    continue;
                }
                // Nothing running: a ready decoupled step, or the end of this path.
                let Some(i) = (0..ensemble.steps.len())
                    .find(|&i| ensemble.steps[i].decoupled && ready(i, &values, &started))
                else {
                    if done.iter().all(|d| *d) {
                        let outputs = ensemble.outputs(self.request, &values)?;
                        if ensemble.decoupled {
                            self.tx.send(ResponseMessage {
                                result: Ok(Some(outputs)),
                                is_final: false,
                                timing: None,
                                rejected: false,
                            });
                            return Ok(None);
                        }
                        return Ok(Some(outputs));
                    }
                    return Err(Error::internal(format!(
                        "ensemble '{}' has steps whose inputs never appear",
                        ensemble.name
                    )));
                };
                let member = ensemble.step_request(&ensemble.steps[i], self.request, &values);
                let mut stream = self
                    .core
                    .infer_stream(member)
                    .map_err(|e| ensemble.step_error(i, e))?;
                while let Some(item) = stream.next().await {
                    let item = item.map_err(|e| ensemble.step_error(i, e))?;
                    if let Some(response) = item.response {
                        let mut path = values.clone();
                        ensemble.take_outputs(i, response, &mut path)?;
                        let mut path_done = done.clone();
                        path_done[i] = true;
                        self.branch(path, path_done).await?;
                    }
                    if item.is_final {
                        break;
                    }
                }
                return Ok(None);
            }
        })
    }
}

/// Refuses graphs where a step needs, through other steps, a tensor it produces itself.
fn check_acyclic(
    name: &str,
    steps: &[Step],
    producer: &HashMap<String, Option<usize>>,
) -> Result<()> {
    // Kahn's order over "step a produces a tensor step b reads".
    let mut needs: Vec<HashSet<usize>> = steps
        .iter()
        .map(|s| {
            s.inputs
                .iter()
                .filter_map(|(_, t)| producer.get(t).copied().flatten())
                .collect()
        })
        .collect();
    let mut done = vec![false; steps.len()];
    loop {
        let ready: Vec<usize> = (0..steps.len())
            .filter(|&i| !done[i] && needs[i].is_empty())
            .collect();
        if ready.is_empty() {
            break;
        }
        for i in ready {
            done[i] = true;
            for n in &mut needs {
                n.remove(&i);
            }
        }
    }
    match done.iter().position(|d| !d) {
        None => Ok(()),
        Some(i) => Err(Error::invalid(format!(
            "ensemble '{name}' step {i} ('{}') is part of a cycle: it needs, through other \
             steps, a tensor it produces",
            steps[i].model
        ))),
    }
}
