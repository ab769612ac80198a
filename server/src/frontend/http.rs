//! The KServe v2 HTTP/REST protocol with Triton's extensions (axum).
//! Each handler decodes, calls the core, encodes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ferrum_backend_api::{DataType, ParamValue, Parameter};
use serde_json::{Value, json};

use ferrum_core::error::{Error, ErrorKind};
use ferrum_core::models::RepositoryParameter;
use ferrum_core::server::{
    Core, EXTENSIONS, InferRequest, InferResponse, InputTensor, SERVER_NAME, SERVER_VERSION,
    parse_version,
};
use ferrum_core::shm::SharedMemory;
use ferrum_core::stats::{DurationStat, ModelStatistics};
use ferrum_core::trace::TraceSettings;

use super::tensor_json;

/// The header that splits a binary-extension body into its JSON part and its binary part.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// Errors leave as `{"error": "..."}` with the status the kind calls for.
struct HttpError(Error);

impl From<Error> for HttpError {
    fn from(e: Error) -> Self {
        HttpError(e)
    }
}

/// The HTTP status for an error kind.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument | ErrorKind::Unsupported | ErrorKind::Cancelled => {
            StatusCode::BAD_REQUEST
        }
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::AlreadyExists => StatusCode::CONFLICT,
        ErrorKind::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (
            status_of(self.0.kind),
            axum::Json(json!({ "error": self.0.message })),
        )
            .into_response()
    }
}

type HttpResult<T> = Result<T, HttpError>;

/// How long a request body may take to arrive once its headers are in; the server puts it
/// on the router as an extension (`--http-body-timeout-secs`). Without it there is no limit.
#[derive(Clone, Copy, Debug)]
pub struct BodyTimeout(pub Duration);

/// A request body, read up to `--max-request-size`; a larger one is refused with 413 and a
/// JSON error, like every other error. A body that does not arrive within the
/// [`BodyTimeout`] is answered 408 and its connection closed, so a client that stalls
/// cannot hold the connection.
struct Body(Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Body {
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let timeout = request.extensions().get::<BodyTimeout>().copied();
        let read = Bytes::from_request(request, state);
        let read = match timeout {
            None => read.await,
            Some(BodyTimeout(limit)) => match tokio::time::timeout(limit, read).await {
                Ok(read) => read,
                Err(_) => {
                    let message = format!(
                        "the request body did not arrive within {} s \
                         (--http-body-timeout-secs); closing the connection",
                        limit.as_secs_f64()
                    );
                    return Err((
                        StatusCode::REQUEST_TIMEOUT,
                        [(header::CONNECTION, HeaderValue::from_static("close"))],
                        axum::Json(json!({ "error": message })),
                    )
                        .into_response());
                }
            },
        };
        match read {
            Ok(bytes) => Ok(Body(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(HttpError(Error::new(
                    ErrorKind::ResourceExhausted,
                    "request body exceeds the server's limit (--max-request-size)",
                ))
                .into_response())
            }
            Err(rejection) => Err(HttpError(Error::invalid(format!(
                "cannot read the request body: {}",
                rejection.body_text()
            )))
            .into_response()),
        }
    }
}

/// The HTTP router: the protocol's table of endpoints.
pub fn router(core: Arc<Core>, max_body: usize) -> Router {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_version),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_version),
        )
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config_version),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/generate", post(generate))
        .route(
            "/v2/models/{model}/versions/{version}/generate",
            post(generate_version),
        )
        .route("/v2/models/{model}/generate_stream", post(generate_stream))
        .route(
            "/v2/models/{model}/versions/{version}/generate_stream",
            post(generate_stream_version),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_version),
        )
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}/stats", get(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(model_version_stats),
        )
        .route("/v2/logging", get(get_logging).post(post_logging))
        .route("/v2/trace/setting", get(get_trace).post(post_trace))
        .route(
            "/v2/models/{model}/trace/setting",
            get(get_model_trace).post(post_model_trace),
        )
        .route("/v2/systemsharedmemory/status", get(shm_status_all))
        .route(
            "/v2/systemsharedmemory/region/{name}/status",
            get(shm_status),
        )
        .route(
            "/v2/systemsharedmemory/region/{name}/register",
            post(shm_register),
        )
        .route(
            "/v2/systemsharedmemory/unregister",
            post(shm_unregister_all),
        )
        .route(
            "/v2/systemsharedmemory/region/{name}/unregister",
            post(shm_unregister),
        )
        .route("/v2/cudasharedmemory/status", get(cuda_status))
        .route(
            "/v2/cudasharedmemory/region/{name}/status",
            get(cuda_status),
        )
        .route(
            "/v2/cudasharedmemory/region/{name}/register",
            post(cuda_register),
        )
        .route("/v2/cudasharedmemory/unregister", post(cuda_status))
        .route(
            "/v2/cudasharedmemory/region/{name}/unregister",
            post(cuda_status),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(core)
}

async fn not_found() -> HttpError {
    HttpError(Error::not_found("no such endpoint"))
}

fn status_only(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

async fn live(State(core): State<Arc<Core>>) -> StatusCode {
    status_only(core.is_live())
}

async fn ready(State(core): State<Arc<Core>>) -> StatusCode {
    status_only(core.is_ready())
}

async fn server_metadata() -> axum::Json<Value> {
    axum::Json(json!({ "name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS }))
}

async fn model_metadata(
    state: State<Arc<Core>>,
    Path(model): Path<String>,
) -> HttpResult<axum::Json<Value>> {
    metadata(state, model, None)
}

async fn model_metadata_version(
    state: State<Arc<Core>>,
    Path((model, version)): Path<(String, String)>,
) -> HttpResult<axum::Json<Value>> {
    metadata(state, model, parse_version(&version)?)
}

fn metadata(
    State(core): State<Arc<Core>>,
    model: String,
    version: Option<i64>,
) -> HttpResult<axum::Json<Value>> {
    let m = core.model_metadata(&model, version)?;
    let tensors = |list: &[(String, String, Vec<i64>)]| -> Vec<Value> {
        list.iter()
            .map(|(n, d, s)| json!({ "name": n, "datatype": d, "shape": s }))
            .collect()
    };
    Ok(axum::Json(json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensors(&m.inputs),
        "outputs": tensors(&m.outputs),
    })))
}

async fn model_ready(State(core): State<Arc<Core>>, Path(model): Path<String>) -> StatusCode {
    status_only(core.model_ready(&model, None))
}

async fn model_ready_version(
    State(core): State<Arc<Core>>,
    Path((model, version)): Path<(String, String)>,
) -> HttpResult<StatusCode> {
    Ok(status_only(
        core.model_ready(&model, parse_version(&version)?),
    ))
}

async fn model_config(
    State(core): State<Arc<Core>>,
    Path(model): Path<String>,
) -> HttpResult<axum::Json<Value>> {
    Ok(axum::Json(
        core.model_config(&model, None)?.config_json.clone(),
    ))
}

async fn model_config_version(
    State(core): State<Arc<Core>>,
    Path((model, version)): Path<(String, String)>,
) -> HttpResult<axum::Json<Value>> {
    Ok(axum::Json(
        core.model_config(&model, parse_version(&version)?)?
            .config_json
            .clone(),
    ))
}

async fn repository_index(
    State(core): State<Arc<Core>>,
    Body(body): Body,
) -> HttpResult<axum::Json<Value>> {
    let ready_only = if body.is_empty() {
        false
    } else {
        let request: Value = serde_json::from_slice(&body).map_err(|e| {
            Error::invalid(format!("repository index request is not valid JSON: {e}"))
        })?;
        request
            .get("ready")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let rows: Vec<Value> = core
        .repository_index(ready_only)
        .into_iter()
        .map(|row| {
            let mut entry = json!({ "name": row.name, "state": row.state.as_str() });
            if let Some(v) = row.version {
                entry["version"] = json!(v.to_string());
            }
            if !row.reason.is_empty() {
                entry["reason"] = json!(row.reason);
            }
            entry
        })
        .collect();
    Ok(axum::Json(Value::Array(rows)))
}

/// A model version's statistics in the statistics extension's JSON shape.
fn stats_json(stats: &ModelStatistics) -> Value {
    let duration = |d: &DurationStat| json!({ "count": d.count, "ns": d.ns });
    let batches: Vec<Value> = stats
        .batches
        .iter()
        .map(|b| {
            json!({
                "batch_size": b.batch_size,
                "compute_input": duration(&b.compute_input),
                "compute_infer": duration(&b.compute_infer),
                "compute_output": duration(&b.compute_output),
            })
        })
        .collect();
    let inference = &stats.inference;
    json!({
        "name": stats.name,
        "version": stats.version.to_string(),
        "last_inference": stats.last_inference,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": duration(&inference.success),
            "fail": duration(&inference.fail),
            "queue": duration(&inference.queue),
            "compute_input": duration(&inference.compute_input),
            "compute_infer": duration(&inference.compute_infer),
            "compute_output": duration(&inference.compute_output),
            "cache_hit": duration(&inference.cache_hit),
            "cache_miss": duration(&inference.cache_miss),
        },
        "batch_stats": batches,
        "memory_usage": [],
    })
}

fn stats_response(
    core: &Core,
    model: Option<&str>,
    version: Option<i64>,
) -> HttpResult<axum::Json<Value>> {
    let stats = core.statistics(model, version)?;
    let list: Vec<Value> = stats.iter().map(stats_json).collect();
    Ok(axum::Json(json!({ "model_stats": list })))
}

async fn all_stats(State(core): State<Arc<Core>>) -> HttpResult<axum::Json<Value>> {
    stats_response(&core, None, None)
}

async fn model_stats(
    State(core): State<Arc<Core>>,
    Path(model): Path<String>,
) -> HttpResult<axum::Json<Value>> {
    stats_response(&core, Some(&model), None)
}

async fn model_version_stats(
    State(core): State<Arc<Core>>,
    Path((model, version)): Path<(String, String)>,
) -> HttpResult<axum::Json<Value>> {
    stats_response(&core, Some(&model), parse_version(&version)?)
}

async fn get_logging(State(core): State<Arc<Core>>) -> axum::Json<Value> {
    axum::Json(core.logging.to_json())
}

async fn post_logging(
    State(core): State<Arc<Core>>,
    Body(body): Body,
) -> HttpResult<axum::Json<Value>> {
    let changes: Value = serde_json::from_slice(&body)
        .map_err(|e| Error::invalid(format!("logging request is not valid JSON: {e}")))?;
    let mut changes = changes
        .as_object()
        .ok_or_else(|| Error::invalid("logging request must be a JSON object"))?
        .clone();
    // As Triton: a client may not point the log at a file (it would write anywhere the
    // server may); `--log-file` sets it. A null leaves it as it is.
    match changes.remove("log_file") {
        None | Some(Value::Null) => {}
        Some(_) => return Err(Error::unsupported(LOG_FILE_REFUSED).into()),
    }
    Ok(axum::Json(core.logging.update(&changes)?))
}

/// Why a logging request that sets `log_file` is refused (Triton's words).
pub const LOG_FILE_REFUSED: &str = "log file location can not be updated through network protocol";

/// Why a trace request that sets `trace_file` is refused (Triton's words).
pub const TRACE_FILE_REFUSED: &str =
    "trace file location can not be updated through network protocol";

fn trace_json(settings: &TraceSettings) -> Value {
    let map = settings.to_map();
    let entries = map.into_iter().map(|(key, mut values)| {
        let value = if key == "trace_level" {
            json!(values)
        } else {
            json!(values.pop().unwrap_or_default())
        };
        (key, value)
    });
    Value::Object(entries.collect())
}

fn trace_update(core: &Core, model: Option<&str>, body: &Bytes) -> HttpResult<axum::Json<Value>> {
    let request: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Error::invalid(format!("trace request is not valid JSON: {e}")))?
    };
    let request = request
        .as_object()
        .ok_or_else(|| Error::invalid("trace request must be a JSON object"))?;
    // As Triton: the trace file is set with `--trace-file` only, never by a client (the
    // server would create or truncate any file it may write).
    if request.contains_key("trace_file") {
        return Err(Error::unsupported(TRACE_FILE_REFUSED).into());
    }
    let mut changes = std::collections::BTreeMap::new();
    for (key, value) in request {
        let value = match value {
            Value::Null => None,
            Value::String(s) => Some(vec![s.clone()]),
            Value::Number(n) => Some(vec![n.to_string()]),
            Value::Array(items) => Some(
                items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| Error::invalid(format!("'{key}' must hold strings")))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            _ => {
                return Err(Error::invalid(format!(
                    "trace setting '{key}' must be a string, a list or null"
                ))
                .into());
            }
        };
        changes.insert(key.clone(), value);
    }
    Ok(axum::Json(trace_json(
        &core.update_trace_settings(model, &changes)?,
    )))
}

async fn get_trace(State(core): State<Arc<Core>>) -> HttpResult<axum::Json<Value>> {
    Ok(axum::Json(trace_json(&core.trace_settings(None)?)))
}

async fn post_trace(
    State(core): State<Arc<Core>>,
    Body(body): Body,
) -> HttpResult<axum::Json<Value>> {
    trace_update(&core, None, &body)
}

async fn get_model_trace(
    State(core): State<Arc<Core>>,
    Path(model): Path<String>,
) -> HttpResult<axum::Json<Value>> {
    Ok(axum::Json(trace_json(&core.trace_settings(Some(&model))?)))
}

async fn post_model_trace(
    State(core): State<Arc<Core>>,
    Path(model): Path<String>,
    Body(body): Body,
) -> HttpResult<axum::Json<Value>> {
    trace_update(&core, Some(&model), &body)
}

fn shm_list(core: &Core, name: Option<&str>) -> HttpResult<axum::Json<Value>> {
    let regions = core.shm.status(name)?;
    let list: Vec<Value> = regions
        .iter()
        .map(|r| json!({ "name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size }))
        .collect();
    Ok(axum::Json(Value::Array(list)))
}

async fn shm_status_all(State(core): State<Arc<Core>>) -> HttpResult<axum::Json<Value>> {
    shm_list(&core, None)
}

async fn shm_status(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
) -> HttpResult<axum::Json<Value>> {
    shm_list(&core, Some(&name))
}

async fn shm_register(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    Body(body): Body,
) -> HttpResult<StatusCode> {
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| Error::invalid(format!("register request is not valid JSON: {e}")))?;
    let key = request["key"]
        .as_str()
        .ok_or_else(|| Error::invalid("register request needs a string 'key'"))?;
    let number = |field: &str| {
        request[field]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "register request needs a non-negative integer '{field}'"
                ))
            })
    };
    let offset = if request.get("offset").is_some() {
        number("offset")?
    } else {
        0
    };
    core.shm
        .register(&name, key, offset, number("byte_size")?)?;
    Ok(StatusCode::OK)
}

async fn shm_unregister_all(State(core): State<Arc<Core>>) -> HttpResult<StatusCode> {
    core.shm.unregister(None)?;
    Ok(StatusCode::OK)
}

async fn shm_unregister(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
) -> HttpResult<StatusCode> {
    core.shm.unregister(Some(&name))?;
    Ok(StatusCode::OK)
}

/// CUDA shared memory: no region can exist, so status lists none and unregister has nothing to do.
async fn cuda_status() -> axum::Json<Value> {
    axum::Json(json!([]))
}

async fn cuda_register(State(core): State<Arc<Core>>) -> HttpResult<StatusCode> {
    core.register_cuda_shared_memory()?;
    Ok(StatusCode::OK)
}

/// The `parameters` object of a repository request body (empty body: none), each value in
/// the core's terms.
fn repository_parameters(body: &Bytes) -> Result<Vec<(String, RepositoryParameter)>, Error> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut request: Value = serde_json::from_slice(body)
        .map_err(|e| Error::invalid(format!("repository request is not valid JSON: {e}")))?;
    let map = match request.get_mut("parameters").map(Value::take) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(Error::invalid("'parameters' must be an object")),
    };
    Ok(map
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                Value::Bool(b) => RepositoryParameter::Bool(b),
                Value::String(text) => RepositoryParameter::Text(text),
                Value::Number(n) => n
                    .as_i64()
                    .map_or(RepositoryParameter::Other, RepositoryParameter::Int),
                _ => RepositoryParameter::Other,
            };
            (key, value)
        })
        .collect())
}

async fn repository_load(
    State(core): State<Arc<Core>>,
    Path(model): Path<String>,
    Body(body): Body,
) -> HttpResult<StatusCode> {
    use base64::Engine;
    let mut parameters = repository_parameters(&body)?;
    // JSON carries a `file:` parameter's bytes as base64 text.
    for (key, value) in &mut parameters {
        if !key.starts_with("file:") {
            continue;
        }
        if let RepositoryParameter::Text(b64) = value {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| {
                    Error::invalid(format!("parameter '{key}' is not valid base64: {e}"))
                })?;
            *value = RepositoryParameter::Bytes(bytes);
        }
    }
    core.load_model(model, parameters).await?;
    Ok(StatusCode::OK)
}

async fn repository_unload(
    State(core): State<Arc<Core>>,
    Path(model): Path<String>,
    Body(body): Body,
) -> HttpResult<StatusCode> {
    let parameters = repository_parameters(&body)?;
    core.unload_model(model, &parameters).await?;
    Ok(StatusCode::OK)
}

async fn infer(
    state: State<Arc<Core>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> HttpResult<Response> {
    run_infer(state, model, None, headers, body).await
}

async fn infer_version(
    state: State<Arc<Core>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    Body(body): Body,
) -> HttpResult<Response> {
    let version = parse_version(&version)?;
    run_infer(state, model, version, headers, body).await
}

async fn generate(
    state: State<Arc<Core>>,
    Path(model): Path<String>,
    Body(body): Body,
) -> HttpResult<Response> {
    run_generate(state, model, None, body).await
}

async fn generate_version(
    state: State<Arc<Core>>,
    Path((model, version)): Path<(String, String)>,
    Body(body): Body,
) -> HttpResult<Response> {
    let version = parse_version(&version)?;
    run_generate(state, model, version, body).await
}

/// The generate extension: one JSON object in, one out (models that send one response).
async fn run_generate(
    State(core): State<Arc<Core>>,
    model: String,
    version: Option<i64>,
    body: Bytes,
) -> HttpResult<Response> {
    if core.model_config(&model, version)?.decoupled() {
        return Err(Error::unsupported(format!(
            "model '{model}' is decoupled (it may send several responses per request); call \
             /v2/models/{model}/generate_stream"
        ))
        .into());
    }
    let request = super::generate::request(&core, &model, version, &body)?;
    let response = core.infer(request).await?;
    Ok(axum::Json(super::generate::response_json(&response)).into_response())
}

async fn generate_stream(
    state: State<Arc<Core>>,
    Path(model): Path<String>,
    Body(body): Body,
) -> HttpResult<Response> {
    run_generate_stream(state, model, None, body)
}

async fn generate_stream_version(
    state: State<Arc<Core>>,
    Path((model, version)): Path<(String, String)>,
    Body(body): Body,
) -> HttpResult<Response> {
    let version = parse_version(&version)?;
    run_generate_stream(state, model, version, body)
}

/// The generate extension, streamed: every response as a server-sent event.
fn run_generate_stream(
    State(core): State<Arc<Core>>,
    model: String,
    version: Option<i64>,
    body: Bytes,
) -> HttpResult<Response> {
    let request = super::generate::request(&core, &model, version, &body)?;
    let stream = core.infer_stream(request)?;
    Ok(super::generate::events(stream))
}

/// How the client wants each output encoded.
pub struct OutputPlan {
    /// (output name, send as binary) for outputs named in the request.
    named: Vec<(String, bool)>,
    /// Binary choice for outputs not named (the `binary_data_output` request parameter).
    default_binary: bool,
}

impl OutputPlan {
    fn binary(&self, name: &str) -> bool {
        self.named
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.default_binary, |(_, b)| *b)
    }
}

async fn run_infer(
    State(core): State<Arc<Core>>,
    model: String,
    version: Option<i64>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResult<Response> {
    let (request, plan) = decode_request(&core.shm, model, version, &headers, body)?;
    let response = core.infer(request).await?;
    Ok(encode_response(response, &plan)?)
}

/// The JSON part of an infer request, read straight from the body: names borrow from it and
/// tensor data stays unparsed text until its datatype is known.
#[derive(serde::Deserialize)]
struct RequestJson<'a> {
    /// The request id (a non-string id is ignored).
    #[serde(default, borrow)]
    id: Option<IdJson<'a>>,
    /// Request parameters.
    #[serde(default)]
    parameters: Option<ParamsJson>,
    /// The inputs.
    #[serde(default, borrow)]
    inputs: Option<Vec<InputJson<'a>>>,
    /// The requested outputs.
    #[serde(default, borrow)]
    outputs: Option<Vec<OutputRequestJson<'a>>>,
}

/// One requested output of [`RequestJson`].
#[derive(serde::Deserialize)]
struct OutputRequestJson<'a> {
    /// Output name.
    #[serde(default, borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
    /// Output parameters.
    #[serde(default)]
    parameters: Option<ParamsJson>,
}

/// A request id as given.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum IdJson<'a> {
    /// A string id.
    Text(#[serde(borrow)] std::borrow::Cow<'a, str>),
    /// Anything else.
    Other(serde::de::IgnoredAny),
}

/// One input of [`RequestJson`].
#[derive(serde::Deserialize)]
struct InputJson<'a> {
    /// Input name.
    #[serde(default, borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
    /// Datatype name.
    #[serde(default, borrow)]
    datatype: Option<std::borrow::Cow<'a, str>>,
    /// The shape; none inside when it is not a list of integers.
    #[serde(default)]
    shape: Option<ShapeJson>,
    /// Input parameters.
    #[serde(default)]
    parameters: Option<ParamsJson>,
    /// Tensor data as JSON text.
    #[serde(default, borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

/// A shape: a list of integers, or none when the JSON held something else.
struct ShapeJson(Option<Vec<i64>>);

impl<'de> serde::Deserialize<'de> for ShapeJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Either {
            /// Integers.
            Dims(Vec<i64>),
            /// Anything else.
            Other(serde::de::IgnoredAny),
        }
        Ok(ShapeJson(match Either::deserialize(d)? {
            Either::Dims(dims) => Some(dims),
            Either::Other(_) => None,
        }))
    }
}

/// Splits an infer request body (JSON, or JSON then binary tensor data), parses it and
/// builds the core request; also returns how each output is to be encoded.
pub fn decode_request(
    shm: &SharedMemory,
    model: String,
    version: Option<i64>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(InferRequest, OutputPlan), Error> {
    let header_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n <= body.len())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "Inference-Header-Content-Length {v:?} is not a length within the {}-byte body",
                    body.len()
                ))
            })?,
    };
    let json_part = body.slice(..header_len);
    let mut binary = body.slice(header_len..);
    let root: RequestJson<'_> = serde_json::from_slice(&json_part)
        .map_err(|e| Error::invalid(format!("failed to parse the request JSON: {e}")))?;

    let mut parameters = parse_parameters(root.parameters, || "request".to_string())?;
    let default_binary = take_bool(&mut parameters, "binary_data_output");
    let inputs_json = root
        .inputs
        .ok_or_else(|| Error::invalid("the request has no 'inputs' array"))?;
    let mut inputs = Vec::with_capacity(inputs_json.len());
    for input in inputs_json {
        let name = input
            .name
            .ok_or_else(|| Error::invalid("an input has no 'name'"))?
            .into_owned();
        let datatype_name = input
            .datatype
            .ok_or_else(|| Error::invalid(format!("input '{name}' has no 'datatype'")))?;
        let datatype = DataType::from_name(&datatype_name).ok_or_else(|| {
            Error::invalid(format!(
                "input '{name}' has unknown datatype '{datatype_name}'"
            ))
        })?;
        let shape = input
            .shape
            .ok_or_else(|| Error::invalid(format!("input '{name}' has no 'shape' array")))?
            .0
            .ok_or_else(|| {
                Error::invalid(format!(
                    "input '{name}' has a shape that is not a list of integers"
                ))
            })?;
        let input_params = parse_parameters(input.parameters, || format!("input '{name}'"))?;
        let binary_size = input_params
            .iter()
            .find(|p| p.key.as_str() == "binary_data_size");
        let from_shm = shm.input_bytes(&name, &input_params)?;
        let data = match (binary_size, input.data) {
            _ if from_shm.is_some() && (binary_size.is_some() || input.data.is_some()) => {
                return Err(Error::invalid(format!(
                    "input '{name}' names a shared memory region and also carries data"
                )));
            }
            _ if from_shm.is_some() => from_shm.unwrap_or_default(),
            (Some(p), None) => {
                let size = match &p.value {
                    ParamValue::Int(n) => usize::try_from(*n).ok(),
                    _ => None,
                }
                .ok_or_else(|| {
                    Error::invalid(format!("input '{name}' has an invalid binary_data_size"))
                })?;
                if size > binary.len() {
                    return Err(Error::invalid(format!(
                        "input '{name}' binary_data_size {size} runs past the end of the body ({} bytes left)",
                        binary.len()
                    )));
                }
                binary.split_to(size).into()
            }
            (None, Some(data)) => {
                Bytes::from(tensor_json::decode_text(&name, datatype, data.get())?).into()
            }
            (Some(_), Some(_)) => {
                return Err(Error::invalid(format!(
                    "input '{name}' has both 'data' and binary_data_size"
                )));
            }
            (None, None) => return Err(Error::invalid(format!("input '{name}' has no 'data'"))),
        };
        inputs.push(InputTensor {
            name,
            datatype,
            shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(Error::invalid(format!(
            "{} bytes of binary data follow the request JSON but no input claims them",
            binary.len()
        )));
    }
    let mut named = Vec::new();
    let mut delivery = Vec::new();
    for output in root.outputs.unwrap_or_default() {
        let name = output
            .name
            .ok_or_else(|| Error::invalid("a requested output has no 'name'"))?
            .into_owned();
        let mut params = parse_parameters(output.parameters, || format!("output '{name}'"))?;
        let binary = if params.iter().any(|p| p.key.as_str() == "binary_data") {
            take_bool(&mut params, "binary_data")
        } else {
            default_binary
        };
        delivery.push(shm.output_delivery(&name, &params)?);
        named.push((name, binary));
    }
    let id = match root.id {
        Some(IdJson::Text(id)) => id.into_owned(),
        _ => String::new(),
    };
    let request = InferRequest {
        model_name: model,
        model_version: version,
        id,
        parameters,
        inputs,
        outputs: named.iter().map(|(n, _)| n.clone()).collect(),
        delivery,
        allocator: None,
    };
    Ok((
        request,
        OutputPlan {
            named,
            default_binary,
        },
    ))
}

/// Removes a parameter and returns it as a bool (false when absent or not a bool).
fn take_bool(parameters: &mut Vec<Parameter>, key: &str) -> bool {
    let mut value = false;
    parameters.retain(|p| {
        if p.key.as_str() == key {
            value = matches!(p.value, ParamValue::Bool(true));
            false
        } else {
            true
        }
    });
    value
}

/// The parameters given, or an error naming their `owner` (made only when needed).
fn parse_parameters(
    value: Option<ParamsJson>,
    owner: impl Fn() -> String,
) -> Result<Vec<Parameter>, Error> {
    match value {
        None => Ok(Vec::new()),
        Some(ParamsJson::NotObject) => Err(Error::invalid(format!(
            "{} 'parameters' must be an object",
            owner()
        ))),
        Some(ParamsJson::Entries(entries)) => entries
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => Ok(Parameter {
                    key: key.as_str().into(),
                    value,
                }),
                None => Err(Error::invalid(format!(
                    "{} parameter '{key}' must be a bool, number or string",
                    owner()
                ))),
            })
            .collect(),
    }
}

/// A `parameters` object as given: each value a parameter, or none where it is not a bool,
/// number or string.
enum ParamsJson {
    /// The entries, in order.
    Entries(Vec<(String, Option<ParamValue>)>),
    /// The JSON held something other than an object.
    NotObject,
}

impl<'de> serde::Deserialize<'de> for ParamsJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ParamsVisitor)
    }
}

/// Reads a [`ParamsJson`]; anything but an object is consumed and marked.
struct ParamsVisitor;

impl<'de> serde::de::Visitor<'de> for ParamsVisitor {
    type Value = ParamsJson;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object of parameters")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ParamsJson, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<ParamScalar>()?.0;
            entries.push((key, value));
        }
        Ok(ParamsJson::Entries(entries))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ParamsJson, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(ParamsJson::NotObject)
    }

    fn visit_bool<E>(self, _: bool) -> Result<ParamsJson, E> {
        Ok(ParamsJson::NotObject)
    }
    fn visit_i64<E>(self, _: i64) -> Result<ParamsJson, E> {
        Ok(ParamsJson::NotObject)
    }
    fn visit_u64<E>(self, _: u64) -> Result<ParamsJson, E> {
        Ok(ParamsJson::NotObject)
    }
    fn visit_f64<E>(self, _: f64) -> Result<ParamsJson, E> {
        Ok(ParamsJson::NotObject)
    }
    fn visit_str<E>(self, _: &str) -> Result<ParamsJson, E> {
        Ok(ParamsJson::NotObject)
    }
    fn visit_unit<E>(self) -> Result<ParamsJson, E> {
        Ok(ParamsJson::NotObject)
    }
}

/// One parameter value: a bool, number or string, or none for anything else (consumed).
struct ParamScalar(Option<ParamValue>);

impl<'de> serde::Deserialize<'de> for ParamScalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// Reads a [`ParamScalar`].
struct ScalarVisitor;

impl<'de> serde::de::Visitor<'de> for ScalarVisitor {
    type Value = ParamScalar;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a bool, number or string")
    }

    fn visit_bool<E>(self, v: bool) -> Result<ParamScalar, E> {
        Ok(ParamScalar(Some(ParamValue::Bool(v))))
    }
    fn visit_i64<E>(self, v: i64) -> Result<ParamScalar, E> {
        Ok(ParamScalar(Some(ParamValue::Int(v))))
    }
    fn visit_u64<E>(self, v: u64) -> Result<ParamScalar, E> {
        Ok(ParamScalar(Some(ParamValue::Int(v as i64))))
    }
    fn visit_f64<E>(self, v: f64) -> Result<ParamScalar, E> {
        Ok(ParamScalar(Some(ParamValue::Double(v))))
    }
    fn visit_str<E>(self, v: &str) -> Result<ParamScalar, E> {
        Ok(ParamScalar(Some(ParamValue::Str(v.into()))))
    }
    fn visit_unit<E>(self) -> Result<ParamScalar, E> {
        Ok(ParamScalar(None))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ParamScalar, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(ParamScalar(None))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ParamScalar, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(ParamScalar(None))
    }
}

/// An infer response's JSON, written straight from the response (no JSON values built).
#[derive(serde::Serialize)]
struct ResponseJson<'a> {
    /// The model that answered.
    model_name: &'a str,
    /// Its version, as a string.
    #[serde(serialize_with = "as_text")]
    model_version: i64,
    /// The request id, when there is one.
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    /// Response parameters, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<ParametersJson<'a>>,
    /// The outputs.
    outputs: Vec<OutputJson<'a>>,
}

/// One output of [`ResponseJson`].
#[derive(serde::Serialize)]
struct OutputJson<'a> {
    /// Output name.
    name: &'a str,
    /// Datatype name.
    datatype: &'static str,
    /// Its shape.
    shape: &'a [i64],
    /// Where the data is instead (binary part, shared memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<OutputParamsJson<'a>>,
    /// The data as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<tensor_json::TensorJson<'a>>,
}

/// The parameters of an output whose data is not in the JSON.
#[derive(serde::Serialize)]
struct OutputParamsJson<'a> {
    /// The shared memory region written.
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_memory_region: Option<&'a str>,
    /// Bytes written into it.
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_memory_byte_size: Option<usize>,
    /// Size of the output's binary part.
    #[serde(skip_serializing_if = "Option::is_none")]
    binary_data_size: Option<usize>,
}

/// Parameters as a JSON object (kinds JSON cannot carry are left out).
struct ParametersJson<'a>(&'a [Parameter]);

impl serde::Serialize for ParametersJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for p in self.0 {
            let key = p.key.as_str();
            match &p.value {
                ParamValue::Bool(b) => map.serialize_entry(key, b)?,
                ParamValue::Int(i) => map.serialize_entry(key, i)?,
                ParamValue::Double(d) => map.serialize_entry(key, d)?,
                ParamValue::Str(s) => map.serialize_entry(key, s.as_str())?,
                _ => {}
            }
        }
        map.end()
    }
}

fn as_text<S: serde::Serializer>(value: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// Encodes a response as JSON, or JSON followed by binary output data.
fn encode_response(response: InferResponse, plan: &OutputPlan) -> Result<Response, Error> {
    let mut binary_parts = Vec::new();
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for output in &response.outputs {
        let (parameters, data) = if let Some((region, size)) = &output.shm {
            let parameters = OutputParamsJson {
                shared_memory_region: Some(region),
                shared_memory_byte_size: Some(*size),
                binary_data_size: None,
            };
            (Some(parameters), None)
        } else if plan.binary(&output.name) {
            binary_parts.push(output.data.clone());
            let parameters = OutputParamsJson {
                shared_memory_region: None,
                shared_memory_byte_size: None,
                binary_data_size: Some(output.data.len()),
            };
            (Some(parameters), None)
        } else {
            let data = tensor_json::TensorJson {
                datatype: output.datatype,
                data: &output.data,
            };
            (None, Some(data))
        };
        outputs.push(OutputJson {
            name: &output.name,
            datatype: output.datatype.name().unwrap_or("UNKNOWN"),
            shape: &output.shape,
            parameters,
            data,
        });
    }
    let root = ResponseJson {
        model_name: &response.model_name,
        model_version: response.model_version,
        id: &response.id,
        parameters: (!response.parameters.is_empty())
            .then_some(ParametersJson(&response.parameters)),
        outputs,
    };
    let mut json_bytes = Vec::with_capacity(256);
    serde_json::to_writer(&mut json_bytes, &root).map_err(|e| Error::internal(e.to_string()))?;
    if binary_parts.is_empty() {
        return Ok(([(header::CONTENT_TYPE, "application/json")], json_bytes).into_response());
    }
    let json_len = json_bytes.len();
    let total = json_len + binary_parts.iter().map(Bytes::len).sum::<usize>();
    // The output buffers go out as they are (slices of what the backend produced), no copy.
    let chunks = std::iter::once(Bytes::from(json_bytes)).chain(binary_parts);
    let stream = tokio_stream::iter(chunks.map(Ok::<Bytes, std::convert::Infallible>));
    let mut response = axum::body::Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(HEADER_LENGTH, HeaderValue::from(json_len));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: &str) -> Result<(InferRequest, OutputPlan), Error> {
        let shm = SharedMemory::default();
        let body = Bytes::copy_from_slice(json.as_bytes());
        decode_request(&shm, "m".into(), None, &HeaderMap::new(), body)
    }

    fn message(json: &str) -> String {
        match decode(json) {
            Ok(_) => panic!("{json} was accepted"),
            Err(e) => e.message,
        }
    }

    #[test]
    fn a_full_request_is_read_field_by_field() {
        let (request, plan) = decode(
            r#"{"id": "r1", "parameters": {"priority": 2, "note": "x", "w": 0.5, "binary_data_output": true},
                "inputs": [{"name": "IN", "datatype": "INT32", "shape": [1, 2], "data": [[1, 2]],
                            "parameters": {"k": false}}],
                "outputs": [{"name": "A", "parameters": {"binary_data": false}}, {"name": "B"}]}"#,
        )
        .unwrap();
        assert_eq!(request.id, "r1");
        let params: Vec<_> = request
            .parameters
            .iter()
            .map(|p| (p.key.as_str().to_string(), p.value.clone()))
            .collect();
        assert_eq!(
            params,
            [
                ("priority".to_string(), ParamValue::Int(2)),
                ("note".to_string(), ParamValue::Str("x".into())),
                ("w".to_string(), ParamValue::Double(0.5)),
            ]
        );
        assert_eq!(request.inputs[0].shape, [1, 2]);
        assert_eq!(
            &request.inputs[0].data.to_bytes()[..],
            &[1, 0, 0, 0, 2, 0, 0, 0]
        );
        assert_eq!(request.outputs, ["A", "B"]);
        assert!(!plan.binary("A"));
        assert!(plan.binary("B"));
    }

    #[test]
    fn a_non_string_id_is_ignored() {
        let (request, _) = decode(
            r#"{"id": 7, "inputs": [{"name": "IN", "datatype": "BOOL", "shape": [1], "data": [true]}]}"#,
        )
        .unwrap();
        assert_eq!(request.id, "");
    }

    #[test]
    fn bad_fields_are_named() {
        let input = r#"{"name": "IN", "datatype": "INT32", "shape": [1], "data": [1]}"#;
        for (json, expected) in [
            (
                r#"{"inputs": 5}"#.to_string(),
                "failed to parse the request JSON",
            ),
            ("{}".to_string(), "no 'inputs' array"),
            (r#"{"inputs": [{}]}"#.to_string(), "an input has no 'name'"),
            (
                format!(r#"{{"parameters": [1], "inputs": [{input}]}}"#),
                "request 'parameters' must be an object",
            ),
            (
                format!(r#"{{"parameters": {{"p": [1]}}, "inputs": [{input}]}}"#),
                "request parameter 'p' must be a bool, number or string",
            ),
            (
                format!(r#"{{"inputs": [{input}], "outputs": [{{"parameters": {{}}}}]}}"#),
                "a requested output has no 'name'",
            ),
            (
                format!(
                    r#"{{"inputs": [{input}], "outputs": [{{"name": "O", "parameters": {{"x": {{}}}}}}]}}"#
                ),
                "output 'O' parameter 'x' must be a bool",
            ),
            (
                r#"{"inputs": [{"name": "IN", "datatype": "INT32", "shape": ["a"], "data": [1]}]}"#
                    .to_string(),
                "input 'IN' has a shape that is not a list of integers",
            ),
            (
                r#"{"inputs": [{"name": "IN", "datatype": "INT8", "shape": [1], "data": [300]}]}"#
                    .to_string(),
                "value 300 is not a valid INT8 element",
            ),
        ] {
            let got = message(&json);
            assert!(got.contains(expected), "{json}: {got}");
        }
    }
}
