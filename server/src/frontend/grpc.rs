//! The KServe v2 gRPC protocol (`inference.GRPCInferenceService`) with Triton's extensions
//! (tonic). Each method decodes, calls the core, encodes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use ferrum_backend_api::{DataType, ParamValue, Parameter};
use tonic::{Request, Response, Status};

use ferrum_core::error::{Error, ErrorKind};
use ferrum_core::models::RepositoryParameter;
use ferrum_core::server::{
    Core, EXTENSIONS, InferRequest, InferResponse, InputTensor, SERVER_NAME, SERVER_VERSION,
};
use ferrum_core::shm::SharedMemory;
use ferrum_core::stats::DurationStat;

use crate::proto::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use crate::proto::inference::infer_parameter::ParameterChoice;
use crate::proto::inference::model_infer_response::InferOutputTensor;
use crate::proto::inference::model_metadata_response::TensorMetadata;
use crate::proto::inference::repository_index_response::ModelIndex;
use crate::proto::inference::*;

/// The gRPC status for a server error.
pub fn status_of(error: Error) -> Status {
    let code = match error.kind {
        ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::Unavailable => tonic::Code::Unavailable,
        ErrorKind::Unsupported => tonic::Code::Unimplemented,
        ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
        ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorKind::Cancelled => tonic::Code::Cancelled,
        ErrorKind::Internal => tonic::Code::Internal,
    };
    Status::new(code, error.message)
}

/// Turns tonic's OUT_OF_RANGE answer to an oversized message into RESOURCE_EXHAUSTED, the
/// code a request over the size limit gets everywhere else.
pub fn size_limit_status<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers();
    let out_of_range = headers.get("grpc-status").is_some_and(|v| v == "11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
    if out_of_range && too_large {
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

/// The gRPC service over the core.
pub struct GrpcFrontend {
    /// The core every method calls.
    core: Arc<Core>,
}

/// The tonic service, with message size limits set.
pub fn service(core: Arc<Core>, max_message: usize) -> GrpcInferenceServiceServer<GrpcFrontend> {
    GrpcInferenceServiceServer::new(GrpcFrontend { core })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX)
}

fn parse_version(version: &str) -> Result<Option<i64>, Status> {
    ferrum_core::server::parse_version(version).map_err(status_of)
}

fn from_wire_parameters(parameters: HashMap<String, InferParameter>) -> Vec<Parameter> {
    parameters
        .into_iter()
        .filter_map(|(key, p)| {
            let value = match p.parameter_choice? {
                ParameterChoice::BoolParam(b) => ParamValue::Bool(b),
                ParameterChoice::Int64Param(i) => ParamValue::Int(i),
                ParameterChoice::Uint64Param(u) => ParamValue::Int(u as i64),
                ParameterChoice::DoubleParam(d) => ParamValue::Double(d),
                ParameterChoice::StringParam(s) => ParamValue::Str(s),
            };
            Some(Parameter { key, value })
        })
        .collect()
}

fn to_wire_parameters(parameters: &[Parameter]) -> HashMap<String, InferParameter> {
    parameters
        .iter()
        .filter_map(|p| {
            let choice = match &p.value {
                ParamValue::Bool(b) => ParameterChoice::BoolParam(*b),
                ParamValue::Int(i) => ParameterChoice::Int64Param(*i),
                ParamValue::Double(d) => ParameterChoice::DoubleParam(*d),
                ParamValue::Str(s) => ParameterChoice::StringParam(s.to_string()),
                _ => return None,
            };
            Some((
                p.key.to_string(),
                InferParameter {
                    parameter_choice: Some(choice),
                },
            ))
        })
        .collect()
}

/// A repository load/unload request's parameters in the core's terms.
fn repository_parameters(
    parameters: HashMap<String, ModelRepositoryParameter>,
) -> Vec<(String, RepositoryParameter)> {
    use crate::proto::inference::model_repository_parameter::ParameterChoice as P;
    parameters
        .into_iter()
        .map(|(key, p)| {
            let value = match p.parameter_choice {
                Some(P::BoolParam(b)) => RepositoryParameter::Bool(b),
                Some(P::Int64Param(i)) => RepositoryParameter::Int(i),
                Some(P::StringParam(s)) => RepositoryParameter::Text(s),
                Some(P::BytesParam(b)) => RepositoryParameter::Bytes(b.to_vec()),
                None => RepositoryParameter::Other,
            };
            (key, value)
        })
        .collect()
}

/// Converts typed `contents` into little-endian bytes of the input's type.
fn contents_to_bytes(
    name: &str,
    datatype: DataType,
    c: InferTensorContents,
) -> Result<Bytes, Error> {
    let wrong = |field: &str| {
        Error::invalid(format!(
            "input '{name}' of type {datatype} cannot carry its data in {field}"
        ))
    };
    let mut out = Vec::new();
    macro_rules! narrow {
        ($src:expr, $t:ty) => {
            for v in $src {
                let x = <$t>::try_from(v).map_err(|_| {
                    Error::invalid(format!("input '{name}': value {v} does not fit {datatype}"))
                })?;
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    let used: Vec<&str> = [
        (!c.bool_contents.is_empty(), "bool_contents"),
        (!c.int_contents.is_empty(), "int_contents"),
        (!c.int64_contents.is_empty(), "int64_contents"),
        (!c.uint_contents.is_empty(), "uint_contents"),
        (!c.uint64_contents.is_empty(), "uint64_contents"),
        (!c.fp32_contents.is_empty(), "fp32_contents"),
        (!c.fp64_contents.is_empty(), "fp64_contents"),
        (!c.bytes_contents.is_empty(), "bytes_contents"),
    ]
    .into_iter()
    .filter_map(|(set, field)| set.then_some(field))
    .collect();
    let expected = match datatype {
        DataType::BOOL => "bool_contents",
        DataType::INT8 | DataType::INT16 | DataType::INT32 => "int_contents",
        DataType::INT64 => "int64_contents",
        DataType::UINT8 | DataType::UINT16 | DataType::UINT32 => "uint_contents",
        DataType::UINT64 => "uint64_contents",
        DataType::FP32 => "fp32_contents",
        DataType::FP64 => "fp64_contents",
        DataType::BYTES => "bytes_contents",
        _ => {
            return Err(Error::invalid(format!(
                "input '{name}' of type {datatype} must be sent in raw_input_contents"
            )));
        }
    };
    if let Some(other) = used.iter().find(|f| **f != expected) {
        return Err(wrong(other));
    }
    match datatype {
        DataType::BOOL => out.extend(c.bool_contents.iter().map(|&b| u8::from(b))),
        DataType::INT8 => narrow!(c.int_contents, i8),
        DataType::INT16 => narrow!(c.int_contents, i16),
        DataType::INT32 => c
            .int_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::INT64 => c
            .int64_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::UINT8 => narrow!(c.uint_contents, u8),
        DataType::UINT16 => narrow!(c.uint_contents, u16),
        DataType::UINT32 => c
            .uint_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::UINT64 => c
            .uint64_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::FP32 => c
            .fp32_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::FP64 => c
            .fp64_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        _ => {
            for item in &c.bytes_contents {
                let len = u32::try_from(item.len()).map_err(|_| {
                    Error::invalid(format!("input '{name}' has an element over 4 GiB"))
                })?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(item);
            }
        }
    }
    Ok(Bytes::from(out))
}

/// Builds the core request from the wire request.
pub fn decode_request(
    shm: &SharedMemory,
    request: ModelInferRequest,
) -> Result<InferRequest, Error> {
    let version = ferrum_core::server::parse_version(&request.model_version)?;
    // Inputs in shared memory or in typed contents take no raw_input_contents entry; every
    // other input takes the next one, in order.
    let mut raw = request.raw_input_contents.into_iter();
    let uses_raw = raw.len() > 0;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let datatype = DataType::from_name(&input.datatype).ok_or_else(|| {
            Error::invalid(format!(
                "input '{}' has unknown datatype '{}'",
                input.name, input.datatype
            ))
        })?;
        let params = from_wire_parameters(input.parameters);
        let data = match (shm.input_bytes(&input.name, &params)?, input.contents) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(format!(
                    "input '{}' names a shared memory region and also carries contents",
                    input.name
                )));
            }
            (Some(shared), None) => shared,
            (None, Some(contents)) if !uses_raw => {
                contents_to_bytes(&input.name, datatype, contents)?.into()
            }
            (None, Some(_)) => {
                return Err(Error::invalid(format!(
                    "input '{}' has contents while the request also uses raw_input_contents",
                    input.name
                )));
            }
            (None, None) => raw
                .next()
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "input '{}' has no data: raw_input_contents has too few entries",
                        input.name
                    ))
                })?
                .into(),
        };
        inputs.push(InputTensor {
            name: input.name,
            datatype,
            shape: input.shape,
            data,
        });
    }
    if raw.len() > 0 {
        return Err(Error::invalid(format!(
            "raw_input_contents has {} more entries than there are inputs that need one",
            raw.len()
        )));
    }
    let mut outputs = Vec::with_capacity(request.outputs.len());
    let mut delivery = Vec::with_capacity(request.outputs.len());
    for output in request.outputs {
        delivery.push(shm.output_delivery(&output.name, &from_wire_parameters(output.parameters))?);
        outputs.push(output.name);
    }
    Ok(InferRequest {
        model_name: request.model_name,
        model_version: version,
        id: request.id,
        parameters: from_wire_parameters(request.parameters),
        inputs,
        outputs,
        delivery,
        allocator: None,
    })
}

/// Encodes the core response, every output's bytes in raw_output_contents.
fn encode_response(response: InferResponse) -> ModelInferResponse {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw = Vec::with_capacity(response.outputs.len());
    for output in response.outputs {
        let mut parameters = HashMap::new();
        if let Some((region, size)) = &output.shm {
            let string = |s: &str| InferParameter {
                parameter_choice: Some(ParameterChoice::StringParam(s.to_string())),
            };
            parameters.insert("shared_memory_region".to_string(), string(region));
            parameters.insert(
                "shared_memory_byte_size".to_string(),
                InferParameter {
                    parameter_choice: Some(ParameterChoice::Int64Param(*size as i64)),
                },
            );
        }
        outputs.push(InferOutputTensor {
            name: output.name,
            datatype: output.datatype.to_string(),
            shape: output.shape,
            parameters,
            contents: None,
        });
        // Entries stay aligned with `outputs`: an output in shared memory gets an empty one.
        raw.push(output.data);
    }
    ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version.to_string(),
        id: response.id,
        parameters: to_wire_parameters(&response.parameters),
        outputs,
        raw_output_contents: raw,
    }
}

impl GrpcFrontend {
    /// Runs a unary ModelInfer.
    async fn infer(&self, request: ModelInferRequest) -> Result<ModelInferResponse, Error> {
        let request = decode_request(&self.core.shm, request)?;
        Ok(encode_response(self.core.infer(request).await?))
    }
}

/// Where a stream's replies go.
type StreamSender = tokio::sync::mpsc::Sender<Result<ModelStreamInferResponse, Status>>;

/// Serves one ModelStreamInfer call: every request on the stream runs concurrently, each
/// request's responses go out in order, and when the client cancels the call or goes away,
/// every request still running is cancelled. A client that only closes its sending side
/// still gets the responses of the requests already sent.
async fn serve_stream(
    core: Arc<Core>,
    mut incoming: tonic::Streaming<ModelInferRequest>,
    tx: StreamSender,
) {
    let mut running = tokio::task::JoinSet::new();
    // Per open sequence: fires once the responses of its latest request were all sent.
    let mut sequences: HashMap<SequenceKey, tokio::sync::oneshot::Receiver<()>> = HashMap::new();
    loop {
        tokio::select! {
            message = incoming.message() => match message {
                Ok(Some(message)) => {
                    // Queued here, in the order the client sent them (the requests of a
                    // sequence must reach its batcher in order); answered concurrently,
                    // except that a sequence's responses go out in its requests' order.
                    match start_one(&core, message) {
                        Ok(mut started) => {
                            let (done, turn) = tokio::sync::oneshot::channel();
                            let before = match started.sequence.take() {
                                Some((key, false)) => sequences.insert(key, turn),
                                Some((key, true)) => sequences.remove(&key),
                                None => None,
                            };
                            running.spawn(stream_one(started, tx.clone(), before, done));
                        }
                        Err(reply) => {
                            if tx.send(Ok(*reply)).await.is_err() {
                                return running.abort_all();
                            }
                        }
                    }
                }
                Ok(None) => break,
                // The client cancelled the call (or the connection broke).
                Err(_) => return running.abort_all(),
            },
            () = tx.closed() => return running.abort_all(),
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
    loop {
        tokio::select! {
            done = running.join_next() => if done.is_none() { return },
            () = tx.closed() => return running.abort_all(),
        }
    }
}

/// A stream reply carrying an error.
fn stream_error(error: &Error) -> ModelStreamInferResponse {
    ModelStreamInferResponse {
        error_message: error.message.clone(),
        infer_response: None,
    }
}

/// A stream's sequence: the model and the correlation id.
type SequenceKey = (String, ferrum_core::scheduler::SequenceId);

/// A request of a stream, queued: its responses and how to label them.
struct Queued {
    /// The request's responses.
    stream: ferrum_core::server::ResponseStream,
    /// Whether the final flag alone is sent as an empty response.
    empty_final: bool,
    /// Model name, version and request id, for an empty final response.
    labels: [String; 3],
    /// The sequence it belongs to, and whether it ends it.
    sequence: Option<(SequenceKey, bool)>,
}

/// Queues one request of a stream; an error comes back as the reply to send.
fn start_one(
    core: &Core,
    message: ModelInferRequest,
) -> Result<Queued, Box<ModelStreamInferResponse>> {
    let empty_final = matches!(
        message
            .parameters
            .get("triton_enable_empty_final_response")
            .and_then(|p| p.parameter_choice.as_ref()),
        Some(ParameterChoice::BoolParam(true))
    );
    let labels = [
        message.model_name.clone(),
        message.model_version.clone(),
        message.id.clone(),
    ];
    let request = decode_request(&core.shm, message).map_err(|e| Box::new(stream_error(&e)))?;
    let sequence = match ferrum_core::scheduler::sequence_fields(&request) {
        Ok((Some(id), _, end)) => Some(((request.model_name.clone(), id), end)),
        _ => None,
    };
    let stream = core
        .infer_stream(request)
        .map_err(|e| Box::new(stream_error(&e)))?;
    Ok(Queued {
        stream,
        empty_final,
        labels,
        sequence,
    })
}

/// Sends the responses of one queued request of a stream, each marked with
/// `triton_final_response`. The final flag alone is sent as an empty response only when the
/// request asked for it with `triton_enable_empty_final_response`.
async fn stream_one(
    Queued {
        mut stream,
        empty_final,
        labels: [model_name, model_version, id],
        ..
    }: Queued,
    tx: StreamSender,
    before: Option<tokio::sync::oneshot::Receiver<()>>,
    _done: tokio::sync::oneshot::Sender<()>,
) {
    // The previous request of the same sequence sends all its responses first (`_done`
    // fires when this one returns, sent or not).
    if let Some(before) = before {
        let _ = before.await;
    }
    let final_flag = |is_final: bool| InferParameter {
        parameter_choice: Some(ParameterChoice::BoolParam(is_final)),
    };
    while let Some(item) = stream.next().await {
        let reply = match item {
            Ok(item) => {
                let mut response = match item.response {
                    Some(response) => encode_response(response),
                    None if item.is_final && empty_final => ModelInferResponse {
                        model_name: model_name.clone(),
                        model_version: model_version.clone(),
                        id: id.clone(),
                        ..Default::default()
                    },
                    None => continue,
                };
                response.parameters.insert(
                    "triton_final_response".to_string(),
                    final_flag(item.is_final),
                );
                ModelStreamInferResponse {
                    error_message: String::new(),
                    infer_response: Some(response),
                }
            }
            Err(e) => stream_error(&e),
        };
        // A closed stream drops `stream`, which cancels the request.
        if tx.send(Ok(reply)).await.is_err() {
            return;
        }
    }
}

type GrpcResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl GrpcInferenceService for GrpcFrontend {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> GrpcResult<ServerLiveResponse> {
        Ok(Response::new(ServerLiveResponse {
            live: self.core.is_live(),
        }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> GrpcResult<ServerReadyResponse> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.core.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> GrpcResult<ModelReadyResponse> {
        let r = request.into_inner();
        let version = parse_version(&r.version)?;
        Ok(Response::new(ModelReadyResponse {
            ready: self.core.model_ready(&r.name, version),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> GrpcResult<ServerMetadataResponse> {
        Ok(Response::new(ServerMetadataResponse {
            name: SERVER_NAME.to_string(),
            version: SERVER_VERSION.to_string(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> GrpcResult<ModelMetadataResponse> {
        let r = request.into_inner();
        let m = self
            .core
            .model_metadata(&r.name, parse_version(&r.version)?)
            .map_err(status_of)?;
        let tensors = |list: Vec<(String, String, Vec<i64>)>| {
            list.into_iter()
                .map(|(name, datatype, shape)| TensorMetadata {
                    name,
                    datatype,
                    shape,
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform,
            inputs: tensors(m.inputs),
            outputs: tensors(m.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> GrpcResult<ModelInferResponse> {
        self.infer(request.into_inner())
            .await
            .map(Response::new)
            .map_err(status_of)
    }

    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> GrpcResult<tonic::codegen::BoxStream<ModelStreamInferResponse>> {
        let incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(serve_stream(Arc::clone(&self.core), incoming, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> GrpcResult<ModelConfigResponse> {
        let r = request.into_inner();
        let live = self
            .core
            .model_config(&r.name, parse_version(&r.version)?)
            .map_err(status_of)?;
        Ok(Response::new(ModelConfigResponse {
            config: Some(live.config.clone()),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> GrpcResult<ModelStatisticsResponse> {
        let r = request.into_inner();
        let name = (!r.name.is_empty()).then_some(r.name.as_str());
        let stats = self
            .core
            .statistics(name, parse_version(&r.version)?)
            .map_err(status_of)?;
        let duration = |d: DurationStat| {
            Some(StatisticDuration {
                count: d.count,
                ns: d.ns,
            })
        };
        let model_stats = stats
            .into_iter()
            .map(|s| ModelStatistics {
                name: s.name,
                version: s.version.to_string(),
                last_inference: s.last_inference,
                inference_count: s.inference_count,
                execution_count: s.execution_count,
                inference_stats: Some(InferStatistics {
                    success: duration(s.inference.success),
                    fail: duration(s.inference.fail),
                    queue: duration(s.inference.queue),
                    compute_input: duration(s.inference.compute_input),
                    compute_infer: duration(s.inference.compute_infer),
                    compute_output: duration(s.inference.compute_output),
                    cache_hit: duration(s.inference.cache_hit),
                    cache_miss: duration(s.inference.cache_miss),
                }),
                batch_stats: s
                    .batches
                    .into_iter()
                    .map(|b| InferBatchStatistics {
                        batch_size: b.batch_size,
                        compute_input: duration(b.compute_input),
                        compute_infer: duration(b.compute_infer),
                        compute_output: duration(b.compute_output),
                    })
                    .collect(),
                memory_usage: Vec::new(),
                response_stats: HashMap::new(),
            })
            .collect();
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn log_settings(
        &self,
        request: Request<LogSettingsRequest>,
    ) -> GrpcResult<LogSettingsResponse> {
        use crate::proto::inference::log_settings_request::setting_value::ParameterChoice as In;
        use crate::proto::inference::log_settings_response::{
            SettingValue, setting_value::ParameterChoice as Out,
        };
        let mut changes = serde_json::Map::new();
        let settings = request.into_inner().settings;
        if settings.contains_key("log_file") {
            return Err(Status::unimplemented(
                crate::frontend::http::LOG_FILE_REFUSED,
            ));
        }
        for (key, value) in settings {
            let value = match value.parameter_choice {
                Some(In::BoolParam(b)) => serde_json::Value::Bool(b),
                Some(In::Uint32Param(n)) => serde_json::Value::from(n),
                Some(In::StringParam(s)) => serde_json::Value::String(s),
                None => continue,
            };
            changes.insert(key, value);
        }
        let current = self.core.logging.update(&changes).map_err(status_of)?;
        let settings = current
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(key, value)| {
                let choice = match value {
                    serde_json::Value::Bool(b) => Out::BoolParam(*b),
                    serde_json::Value::Number(n) => {
                        Out::Uint32Param(n.as_u64().unwrap_or(0) as u32)
                    }
                    serde_json::Value::String(s) => Out::StringParam(s.clone()),
                    _ => return None,
                };
                Some((
                    key.clone(),
                    SettingValue {
                        parameter_choice: Some(choice),
                    },
                ))
            })
            .collect();
        Ok(Response::new(LogSettingsResponse { settings }))
    }

    async fn trace_setting(
        &self,
        request: Request<TraceSettingRequest>,
    ) -> GrpcResult<TraceSettingResponse> {
        let r = request.into_inner();
        if r.settings.contains_key("trace_file") {
            return Err(Status::unimplemented(
                crate::frontend::http::TRACE_FILE_REFUSED,
            ));
        }
        let model = (!r.model_name.is_empty()).then_some(r.model_name.as_str());
        // An empty list resets its key.
        let changes = r
            .settings
            .into_iter()
            .map(|(key, value)| (key, (!value.value.is_empty()).then_some(value.value)))
            .collect();
        let settings = self
            .core
            .update_trace_settings(model, &changes)
            .map_err(status_of)?;
        let settings = settings
            .to_map()
            .into_iter()
            .map(|(key, value)| {
                (
                    key,
                    crate::proto::inference::trace_setting_response::SettingValue { value },
                )
            })
            .collect();
        Ok(Response::new(TraceSettingResponse { settings }))
    }

    async fn system_shared_memory_status(
        &self,
        request: Request<SystemSharedMemoryStatusRequest>,
    ) -> GrpcResult<SystemSharedMemoryStatusResponse> {
        use crate::proto::inference::system_shared_memory_status_response::RegionStatus;
        let name = request.into_inner().name;
        let regions = self
            .core
            .shm
            .status((!name.is_empty()).then_some(name.as_str()))
            .map_err(status_of)?;
        let regions = regions
            .iter()
            .map(|r| {
                let status = RegionStatus {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    offset: r.offset as u64,
                    byte_size: r.byte_size as u64,
                };
                (r.name.clone(), status)
            })
            .collect();
        Ok(Response::new(SystemSharedMemoryStatusResponse { regions }))
    }

    async fn system_shared_memory_register(
        &self,
        request: Request<SystemSharedMemoryRegisterRequest>,
    ) -> GrpcResult<SystemSharedMemoryRegisterResponse> {
        let r = request.into_inner();
        let size = |v: u64| {
            usize::try_from(v).map_err(|_| Status::invalid_argument("region size does not fit"))
        };
        self.core
            .shm
            .register(&r.name, &r.key, size(r.offset)?, size(r.byte_size)?)
            .map_err(status_of)?;
        Ok(Response::new(SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        request: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> GrpcResult<SystemSharedMemoryUnregisterResponse> {
        let name = request.into_inner().name;
        self.core
            .shm
            .unregister((!name.is_empty()).then_some(name.as_str()))
            .map_err(status_of)?;
        Ok(Response::new(SystemSharedMemoryUnregisterResponse {}))
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<CudaSharedMemoryStatusRequest>,
    ) -> GrpcResult<CudaSharedMemoryStatusResponse> {
        Ok(Response::new(CudaSharedMemoryStatusResponse {
            regions: HashMap::new(),
        }))
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<CudaSharedMemoryRegisterRequest>,
    ) -> GrpcResult<CudaSharedMemoryRegisterResponse> {
        self.core.register_cuda_shared_memory().map_err(status_of)?;
        Ok(Response::new(CudaSharedMemoryRegisterResponse {}))
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> GrpcResult<CudaSharedMemoryUnregisterResponse> {
        Ok(Response::new(CudaSharedMemoryUnregisterResponse {}))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> GrpcResult<RepositoryModelLoadResponse> {
        let r = request.into_inner();
        self.core
            .load_model(r.model_name, repository_parameters(r.parameters))
            .await
            .map_err(status_of)?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> GrpcResult<RepositoryModelUnloadResponse> {
        let r = request.into_inner();
        self.core
            .unload_model(r.model_name, &repository_parameters(r.parameters))
            .await
            .map_err(status_of)?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> GrpcResult<RepositoryIndexResponse> {
        let r = request.into_inner();
        let models = self
            .core
            .repository_index(r.ready)
            .into_iter()
            .map(|row| ModelIndex {
                name: row.name,
                version: row.version.map(|v| v.to_string()).unwrap_or_default(),
                state: row.state.as_str().to_string(),
                reason: row.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }
}
