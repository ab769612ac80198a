//! Restricted API groups, as tritonserver's `--http-restricted-api` and
//! `--grpc-restricted-protocol` define them: each flag names groups of endpoints and a
//! `<key>=<value>` pair; a request to an endpoint of a restricted group must carry the header
//! `<key>` (HTTP) or the metadata key `triton-grpc-protocol-<key>` (gRPC) with that value, or it
//! is refused before it reaches the core: HTTP 403 `{"error": "This API is restricted,
//! expecting header '<key>'"}`, gRPC UNAVAILABLE "This protocol is restricted, expecting header
//! 'triton-grpc-protocol-<key>'" (Triton's statuses and words). Groups no flag names are open.
//!
//! Which group an endpoint belongs to is decided here, from the request's path, for both
//! protocols ([`http_group`], [`grpc_group`]); the tests check that every route of the HTTP
//! router and every method of the gRPC service has a group.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The metadata key prefix of gRPC restrictions (tritonserver's).
pub const GRPC_KEY_PREFIX: &str = "triton-grpc-protocol-";

/// A group of endpoints a restriction covers, named as tritonserver names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiGroup {
    /// Server live/ready, model ready.
    Health,
    /// Server and model metadata.
    Metadata,
    /// Inference: infer, stream infer, generate, generate_stream.
    Inference,
    /// System and CUDA shared-memory status, register, unregister.
    SharedMemory,
    /// Model configuration.
    ModelConfig,
    /// Repository index, model load and unload.
    ModelRepository,
    /// Model statistics.
    Statistics,
    /// Trace settings.
    Trace,
    /// Log settings.
    Logging,
}

impl ApiGroup {
    /// Every group, in tritonserver's order.
    pub const ALL: [ApiGroup; 9] = [
        ApiGroup::Health,
        ApiGroup::Metadata,
        ApiGroup::Inference,
        ApiGroup::SharedMemory,
        ApiGroup::ModelConfig,
        ApiGroup::ModelRepository,
        ApiGroup::Statistics,
        ApiGroup::Trace,
        ApiGroup::Logging,
    ];

    /// The group's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ApiGroup::Health => "health",
            ApiGroup::Metadata => "metadata",
            ApiGroup::Inference => "inference",
            ApiGroup::SharedMemory => "shared-memory",
            ApiGroup::ModelConfig => "model-config",
            ApiGroup::ModelRepository => "model-repository",
            ApiGroup::Statistics => "statistics",
            ApiGroup::Trace => "trace",
            ApiGroup::Logging => "logging",
        }
    }

    /// The group a command-line name means.
    pub fn from_name(name: &str) -> Option<ApiGroup> {
        ApiGroup::ALL.into_iter().find(|g| g.name() == name)
    }

    /// The group's slot in [`Restrictions`].
    fn index(self) -> usize {
        self as usize
    }
}

/// What a request to a restricted group must carry: this header (gRPC: metadata key) with
/// this value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restriction {
    /// The header or metadata key (lower case, as HTTP/2 sends it).
    pub header: HeaderName,
    /// The value it must have.
    pub value: HeaderValue,
}

impl Restriction {
    /// Whether `headers` carry the header with the value (compared in constant time, as it
    /// is a secret).
    fn allows(&self, headers: &HeaderMap) -> bool {
        headers
            .get(&self.header)
            .is_some_and(|v| same_bytes(v.as_bytes(), self.value.as_bytes()))
    }
}

/// Compares two byte strings without stopping at the first difference.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// One protocol's restrictions: at most one per group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restrictions {
    /// By [`ApiGroup::index`].
    groups: [Option<Restriction>; 9],
}

impl Restrictions {
    /// Reads the values of a restriction flag (`flag` is its name for messages, e.g.
    /// `--http-restricted-api`), each `<group>[,<group>...]:<key>=<value>`; the header to
    /// check is `key_prefix` + `<key>`. A group may be in one value only.
    pub fn parse(flag: &str, key_prefix: &str, values: &[String]) -> Result<Self, String> {
        let mut restrictions = Restrictions::default();
        let known = || {
            ApiGroup::ALL
                .iter()
                .map(|g| g.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for spec in values {
            let malformed = || format!("{flag} '{spec}' is not <api>[,<api>...]:<key>=<value>");
            let (groups, setting) = spec.split_once(':').ok_or_else(malformed)?;
            let (key, value) = setting.split_once('=').ok_or_else(malformed)?;
            if groups.is_empty() || key.is_empty() || value.is_empty() {
                return Err(malformed());
            }
            let full_key = format!("{key_prefix}{key}");
            let header = HeaderName::from_bytes(full_key.as_bytes())
                .map_err(|_| format!("{flag} '{spec}': '{full_key}' cannot be a header name"))?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                format!("{flag} '{spec}': '{value}' cannot be a header value (visible ASCII only)")
            })?;
            for name in groups.split(',') {
                let group = ApiGroup::from_name(name).ok_or_else(|| {
                    format!(
                        "{flag} '{spec}': unknown API group '{name}'; known groups: {}",
                        known()
                    )
                })?;
                let slot = &mut restrictions.groups[group.index()];
                if slot.is_some() {
                    return Err(format!(
                        "{flag}: '{name}' is named in more than one restriction; a group \
                         can have only one"
                    ));
                }
                *slot = Some(Restriction {
                    header: header.clone(),
                    value: value.clone(),
                });
            }
        }
        Ok(restrictions)
    }

    /// Whether no group is restricted.
    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(Option::is_none)
    }

    /// The restriction of a group, if it has one.
    pub fn get(&self, group: ApiGroup) -> Option<&Restriction> {
        self.groups[group.index()].as_ref()
    }

    /// The restriction a request to `group` with `headers` fails, or `None` where it may go on.
    pub fn refusal(&self, group: Option<ApiGroup>, headers: &HeaderMap) -> Option<&Restriction> {
        group
            .and_then(|g| self.get(g))
            .filter(|r| !r.allows(headers))
    }
}

/// The group of an HTTP endpoint, from the request's path (as the router matches it, before
/// percent-decoding); `None` for paths that are no endpoint (answered 404).
pub fn http_group(path: &str) -> Option<ApiGroup> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() {
        return Some(ApiGroup::Metadata);
    }
    let rest = rest.strip_prefix('/')?;
    // Groups that own every path under their first segment.
    let first = rest.split('/').next().unwrap_or_default();
    match first {
        "health" => return Some(ApiGroup::Health),
        "systemsharedmemory" | "cudasharedmemory" => return Some(ApiGroup::SharedMemory),
        "repository" => return Some(ApiGroup::ModelRepository),
        _ => {}
    }
    // The other endpoints have at most six segments; a longer path is no endpoint.
    let mut parts = [""; 6];
    let mut count = 0;
    for part in rest.split('/') {
        *parts.get_mut(count)? = part;
        count += 1;
    }
    match &parts[..count] {
        ["logging"] => Some(ApiGroup::Logging),
        ["trace", "setting"] => Some(ApiGroup::Trace),
        ["models", "stats"] => Some(ApiGroup::Statistics),
        ["models", _model, tail @ ..] => {
            let tail = match tail {
                ["versions", _version, tail @ ..] => tail,
                tail => tail,
            };
            match tail {
                [] => Some(ApiGroup::Metadata),
                ["ready"] => Some(ApiGroup::Health),
                ["config"] => Some(ApiGroup::ModelConfig),
                ["infer"] | ["generate"] | ["generate_stream"] => Some(ApiGroup::Inference),
                ["stats"] => Some(ApiGroup::Statistics),
                ["trace", "setting"] => Some(ApiGroup::Trace),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The group of a gRPC method, from the request's path `/<package>.<Service>/<Method>`;
/// `None` for methods of no group (other services, unknown methods: answered UNIMPLEMENTED).
pub fn grpc_group(path: &str) -> Option<ApiGroup> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let known_services = ["inference.GRPCInferenceService", "grpc.health.v1.Health"];
    if !known_services.contains(&service) {
        return None;
    }
    Some(match method {
        "ServerLive" | "ServerReady" | "ModelReady" | "Check" | "Watch" => ApiGroup::Health,
        "ServerMetadata" | "ModelMetadata" => ApiGroup::Metadata,
        "ModelInfer" | "ModelStreamInfer" => ApiGroup::Inference,
        "ModelConfig" => ApiGroup::ModelConfig,
        "ModelStatistics" => ApiGroup::Statistics,
        "RepositoryIndex" | "RepositoryModelLoad" | "RepositoryModelUnload" => {
            ApiGroup::ModelRepository
        }
        "SystemSharedMemoryStatus"
        | "SystemSharedMemoryRegister"
        | "SystemSharedMemoryUnregister"
        | "CudaSharedMemoryStatus"
        | "CudaSharedMemoryRegister"
        | "CudaSharedMemoryUnregister" => ApiGroup::SharedMemory,
        "TraceSetting" => ApiGroup::Trace,
        "LogSettings" => ApiGroup::Logging,
        _ => return None,
    })
}

/// HTTP middleware (for `axum::middleware::from_fn_with_state`): refuses a request to a
/// restricted group without its header with 403, as Triton does.
pub async fn http_guard(
    axum::extract::State(restrictions): axum::extract::State<Arc<Restrictions>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let group = http_group(request.uri().path());
    if let Some(restriction) = restrictions.refusal(group, request.headers()) {
        let message = format!(
            "This API is restricted, expecting header '{}'",
            restriction.header
        );
        return (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({ "error": message })),
        )
            .into_response();
    }
    next.run(request).await
}

/// Tower layer for the gRPC server: refuses a call to a restricted group without its
/// metadata key with UNAVAILABLE, as Triton does.
#[derive(Clone, Debug)]
pub struct GrpcGuardLayer(Arc<Restrictions>);

impl GrpcGuardLayer {
    /// The layer over these restrictions.
    pub fn new(restrictions: Restrictions) -> Self {
        GrpcGuardLayer(Arc::new(restrictions))
    }
}

impl<S> tower::Layer<S> for GrpcGuardLayer {
    type Service = GrpcGuard<S>;

    fn layer(&self, inner: S) -> GrpcGuard<S> {
        GrpcGuard {
            inner,
            restrictions: Arc::clone(&self.0),
        }
    }
}

/// The service [`GrpcGuardLayer`] puts in front of the gRPC server.
#[derive(Clone, Debug)]
pub struct GrpcGuard<S> {
    /// The gRPC server.
    inner: S,
    /// What to check.
    restrictions: Arc<Restrictions>,
}

/// The answer of a [`GrpcGuard`]: the server's, or a refusal.
type GuardFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcGuard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = GuardFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let group = grpc_group(request.uri().path());
        if let Some(restriction) = self.restrictions.refusal(group, request.headers()) {
            let status = tonic::Status::unavailable(format!(
                "This protocol is restricted, expecting header '{}'",
                restriction.header
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Result<Restrictions, String> {
        let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        Restrictions::parse("--http-restricted-api", "", &values)
    }

    #[test]
    fn a_flag_restricts_its_groups_with_its_key_and_value() {
        let r = parse(&[
            "inference,health:infer-key=infer-value",
            "model-repository:admin=s3cr:t=x",
        ])
        .unwrap();
        let infer = r.get(ApiGroup::Inference).unwrap();
        assert_eq!(infer.header, "infer-key");
        assert_eq!(infer.value, "infer-value");
        assert_eq!(r.get(ApiGroup::Health), Some(infer));
        // The value is everything after the first '=' that follows the ':'.
        let admin = r.get(ApiGroup::ModelRepository).unwrap();
        assert_eq!(admin.header, "admin");
        assert_eq!(admin.value, "s3cr:t=x");
        assert_eq!(r.get(ApiGroup::Metadata), None);
        assert!(!r.is_empty());
        assert!(parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn grpc_keys_get_tritons_prefix() {
        let values = vec!["shared-memory:Admin-Key=v".to_string()];
        let r =
            Restrictions::parse("--grpc-restricted-protocol", GRPC_KEY_PREFIX, &values).unwrap();
        assert_eq!(
            r.get(ApiGroup::SharedMemory).unwrap().header,
            "triton-grpc-protocol-admin-key"
        );
    }

    #[test]
    fn malformed_unknown_and_repeated_groups_are_refused() {
        for bad in [
            "inference",
            "inference:key",
            ":k=v",
            "inference:=v",
            "inference:k=",
        ] {
            let e = parse(&[bad]).unwrap_err();
            assert!(
                e.contains("is not <api>[,<api>...]:<key>=<value>"),
                "{bad}: {e}"
            );
        }
        let e = parse(&["inference,infer:k=v"]).unwrap_err();
        assert!(e.contains("unknown API group 'infer'"), "{e}");
        assert!(
            e.contains("model-repository"),
            "lists the known groups: {e}"
        );
        let e = parse(&["inference:a=1", "health,inference:b=2"]).unwrap_err();
        assert!(e.contains("'inference' is named in more than one"), "{e}");
        let e = parse(&["inference:bad key=1"]).unwrap_err();
        assert!(e.contains("cannot be a header name"), "{e}");
        let e = parse(&["inference:k=line\nbreak"]).unwrap_err();
        assert!(e.contains("cannot be a header value"), "{e}");
    }

    #[test]
    fn a_request_passes_only_with_the_exact_value() {
        let r = parse(&["inference:infer-key=infer-value"]).unwrap();
        let mut headers = HeaderMap::new();
        assert!(r.refusal(Some(ApiGroup::Inference), &headers).is_some());
        assert!(r.refusal(Some(ApiGroup::Health), &headers).is_none());
        assert!(r.refusal(None, &headers).is_none());
        headers.insert("infer-key", HeaderValue::from_static("infer-valuE"));
        assert!(r.refusal(Some(ApiGroup::Inference), &headers).is_some());
        headers.insert("Infer-Key", HeaderValue::from_static("infer-value"));
        assert!(r.refusal(Some(ApiGroup::Inference), &headers).is_none());
    }

    /// Fills an HTTP route pattern's parameters with sample values.
    fn sample_path(pattern: &str) -> String {
        pattern
            .replace("{model}", "m")
            .replace("{version}", "1")
            .replace("{name}", "region")
    }

    #[test]
    fn every_http_route_has_a_group() {
        let source = include_str!("frontend/http.rs");
        let routes: Vec<&str> = source
            .split(".route(")
            .skip(1)
            .filter_map(|call| call.split('"').nth(1))
            .collect();
        assert!(routes.len() >= 30, "found only {} routes", routes.len());
        for route in routes {
            assert!(
                http_group(&sample_path(route)).is_some(),
                "HTTP route {route} has no API group"
            );
        }
    }

    #[test]
    fn http_endpoints_map_to_tritons_groups() {
        let cases = [
            ("/v2/health/live", ApiGroup::Health),
            ("/v2/health/ready", ApiGroup::Health),
            ("/v2/models/m/ready", ApiGroup::Health),
            ("/v2/models/m/versions/2/ready", ApiGroup::Health),
            ("/v2", ApiGroup::Metadata),
            ("/v2/models/m", ApiGroup::Metadata),
            ("/v2/models/m/versions/2", ApiGroup::Metadata),
            ("/v2/models/m/config", ApiGroup::ModelConfig),
            ("/v2/models/m/infer", ApiGroup::Inference),
            ("/v2/models/m/versions/2/infer", ApiGroup::Inference),
            ("/v2/models/m/generate", ApiGroup::Inference),
            ("/v2/models/m/generate_stream", ApiGroup::Inference),
            ("/v2/models/stats", ApiGroup::Statistics),
            ("/v2/models/m/stats", ApiGroup::Statistics),
            ("/v2/logging", ApiGroup::Logging),
            ("/v2/trace/setting", ApiGroup::Trace),
            ("/v2/models/m/trace/setting", ApiGroup::Trace),
            ("/v2/systemsharedmemory/status", ApiGroup::SharedMemory),
            (
                "/v2/cudasharedmemory/region/r/register",
                ApiGroup::SharedMemory,
            ),
            ("/v2/repository/index", ApiGroup::ModelRepository),
            ("/v2/repository/models/m/load", ApiGroup::ModelRepository),
            // A model called "versions" is still a model.
            ("/v2/models/versions/ready", ApiGroup::Health),
        ];
        for (path, group) in cases {
            assert_eq!(http_group(path), Some(group), "{path}");
        }
        for path in ["/", "/metrics", "/v2x", "/v2/models", "/v2/models/m/other"] {
            assert_eq!(http_group(path), None, "{path}");
        }
    }

    #[test]
    fn every_grpc_method_has_a_group() {
        let proto = include_str!("../proto/grpc_service.proto");
        let methods: Vec<&str> = proto
            .split("rpc ")
            .skip(1)
            .filter_map(|rest| rest.split('(').next())
            .map(str::trim)
            .collect();
        assert!(methods.len() >= 20, "found only {} methods", methods.len());
        for method in methods {
            let path = format!("/inference.GRPCInferenceService/{method}");
            assert!(
                grpc_group(&path).is_some(),
                "gRPC method {method} has no API group"
            );
        }
        assert_eq!(
            grpc_group("/inference.GRPCInferenceService/RepositoryModelLoad"),
            Some(ApiGroup::ModelRepository)
        );
        assert_eq!(
            grpc_group("/inference.GRPCInferenceService/ModelStreamInfer"),
            Some(ApiGroup::Inference)
        );
        assert_eq!(grpc_group("/other.Service/ModelInfer"), None);
        assert_eq!(grpc_group("/inference.GRPCInferenceService/Nope"), None);
    }
}
