//! The services the server offers backends through the ABI: logging and in-process inference.

use std::sync::{Arc, OnceLock, Weak};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RResult, RStr, RVec};
use ferrum_backend_api::{
    BackendError, Host, HostInferRequest, HostObj, HostObj_TO, LogLevel, Response,
};

use crate::core::{Core, InferRequest};

/// The server side of the backend callback table.
#[derive(Clone, Default)]
pub struct ServerHost {
    /// The core, set once the server is assembled; used for backend-initiated inference.
    core: Arc<OnceLock<(Weak<Core>, tokio::runtime::Handle)>>,
}

impl ServerHost {
    /// Connects the host to the core that serves backend-initiated inferences.
    pub fn attach(&self, core: &Arc<Core>, runtime: tokio::runtime::Handle) {
        let _ = self.core.set((Arc::downgrade(core), runtime));
    }

    /// The host as it crosses the ABI.
    pub fn to_ffi(&self) -> Host {
        HostObj_TO::from_ptr(RArc::new(self.clone()), TD_Opaque)
    }
}

impl HostObj for ServerHost {
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
        let (target, message) = (target.as_str(), message.as_str());
        match level {
            LogLevel::ERROR => tracing::error!(backend = target, "{message}"),
            LogLevel::WARN => tracing::warn!(backend = target, "{message}"),
            LogLevel::INFO => tracing::info!(backend = target, "{message}"),
            _ => tracing::debug!(backend = target, "{message}"),
        }
    }

    fn infer(&self, request: HostInferRequest<'_>) -> RResult<RVec<Response>, BackendError> {
        let Some((core, runtime)) = self.core.get() else {
            return RResult::RErr(BackendError::unavailable(
                "the server is not ready for inference",
            ));
        };
        let Some(core) = core.upgrade() else {
            return RResult::RErr(BackendError::unavailable("the server is shutting down"));
        };
        let request = InferRequest::from_host(&request);
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let _ = tx.send(core.infer(request).await);
        });
        match rx.recv() {
            Ok(Ok(response)) => RResult::ROk(RVec::from(vec![response.into_backend_response()])),
            Ok(Err(e)) => RResult::RErr(e.into()),
            Err(_) => RResult::RErr(BackendError::internal(
                "inference was dropped before it answered",
            )),
        }
    }
}
