//! The server's side of a request's responder: forwards the backend's responses to the
//! request's channel and guarantees one final answer.

use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RResult};
use ferrum_backend_api::{
    BackendError, RESPONSE_FINAL, Responder, ResponderObj, ResponderObj_TO, Response,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// One response from the backend, with whether it is the request's last.
pub struct ResponseMessage {
    /// The response or the error.
    pub result: Result<Response, BackendError>,
    /// No more responses follow.
    pub is_final: bool,
}

/// Shared state of one request's responder.
pub struct ResponderState {
    /// The request's channel, taken once the final response is sent.
    tx: Mutex<Option<mpsc::UnboundedSender<ResponseMessage>>>,
}

impl ResponderState {
    fn send(&self, result: Result<Response, BackendError>, is_final: bool) {
        let mut tx = self.tx.lock();
        if let Some(sender) = tx.as_ref() {
            let _ = sender.send(ResponseMessage { result, is_final });
            if is_final {
                *tx = None;
            }
        }
    }

    /// Fails the request unless it already had its final response.
    pub fn fail(&self, error: BackendError) {
        self.send(Err(error), true);
    }

    /// Fails the request if the backend returned without answering it.
    pub fn finish_if_silent(&self) {
        self.fail(BackendError::internal(
            "the backend returned without sending a response",
        ));
    }
}

/// The ABI responder handed to the backend.
#[derive(Clone)]
struct ChannelResponder(Arc<ResponderState>);

impl ResponderObj for ChannelResponder {
    fn send(&self, response: RResult<Response, BackendError>, flags: u32) {
        self.0
            .send(response.into_result(), flags & RESPONSE_FINAL != 0);
    }
}

/// A responder over this channel, and the state to check after `execute` returns.
pub fn channel_responder(
    tx: mpsc::UnboundedSender<ResponseMessage>,
) -> (Responder, Arc<ResponderState>) {
    let state = Arc::new(ResponderState {
        tx: Mutex::new(Some(tx)),
    });
    let responder =
        ResponderObj_TO::from_ptr(RArc::new(ChannelResponder(Arc::clone(&state))), TD_Opaque);
    (responder, state)
}
