//! Where a request's responses go: its channel back to the core, kept in request order when
//! the model asks for it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrum_backend_api::Parameter;
use parking_lot::Mutex;

use super::channel::ResponseTx;

use crate::error::{Error, Result};
use crate::server::OutputData;
use crate::stats::ComputeTimes;

/// The outputs of one response, in the server's terms.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// Output tensors, shapes as the backend produced them.
    pub outputs: Vec<OutputData>,
    /// Response parameters.
    pub parameters: Vec<Parameter>,
}

/// One response for a request, with whether it is the request's last.
pub struct ResponseMessage {
    /// The outputs (none: the final flag alone) or the error.
    pub result: Result<Option<Outputs>>,
    /// No more responses follow.
    pub is_final: bool,
    /// On the final response of an executed request: where its time went.
    pub timing: Option<RequestTiming>,
    /// The scheduler refused the request (queue timeout) rather than the backend failing it.
    pub rejected: bool,
}

impl ResponseMessage {
    /// A final message that refuses a request before it ran.
    pub fn rejection(error: Error) -> Self {
        ResponseMessage {
            result: Err(error),
            is_final: true,
            timing: None,
            rejected: true,
        }
    }
}

/// Where an executed request's time went.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestTiming {
    /// Waiting in the queue.
    pub queue: Duration,
    /// Its batch's compute phases.
    pub compute: ComputeTimes,
    /// When its execution started (for traces).
    pub compute_start: Option<Instant>,
    /// When the backend's final response arrived (for traces).
    pub compute_output_start: Option<Instant>,
    /// When the outputs were ready (for traces).
    pub compute_end: Option<Instant>,
}

/// Hands out responses in request order: a request's responses wait until every earlier
/// request has had its final one.
#[derive(Default)]
pub struct Sequencer {
    /// The next sequence number to deliver, and responses waiting for their turn.
    state: Mutex<SequencerState>,
}

#[derive(Default)]
struct SequencerState {
    /// Sequence number whose responses go out now.
    next: u64,
    /// Held responses by sequence number: channel, messages, final seen.
    waiting: BTreeMap<u64, (ResponseTx, Vec<ResponseMessage>, bool)>,
}

impl Sequencer {
    fn deliver(&self, seq: u64, tx: &ResponseTx, message: ResponseMessage) {
        let mut state = self.state.lock();
        let is_final = message.is_final;
        let entry = state
            .waiting
            .entry(seq)
            .or_insert_with(|| (tx.clone(), Vec::new(), false));
        entry.1.push(message);
        entry.2 |= is_final;
        loop {
            let next = state.next;
            let Some((tx, messages, done)) = state.waiting.get_mut(&next) else {
                break;
            };
            for m in messages.drain(..) {
                let _ = tx.send(m);
            }
            if !*done {
                break;
            }
            state.waiting.remove(&next);
            state.next += 1;
        }
    }
}

/// Sees each of a request's responses before the client does (and may change it).
pub trait ResponseHook: Send + Sync {
    /// Called with every response, in order, before it is sent on.
    fn on_response(&self, message: &mut ResponseMessage);
}

/// Where one request's responses go.
pub struct Destination {
    /// The request's channel.
    pub tx: ResponseTx,
    /// When the request entered the queue.
    pub queued_at: Instant,
    /// Its place in the response order, when the model preserves ordering.
    pub order: Option<(Arc<Sequencer>, u64)>,
    /// Sees each response first (the sequence batcher's state keeping).
    pub hook: Option<Arc<dyn ResponseHook>>,
}

impl Destination {
    /// A destination that takes whole responses, in any order.
    pub fn single(tx: ResponseTx) -> Self {
        Destination {
            tx,
            queued_at: Instant::now(),
            order: None,
            hook: None,
        }
    }

    /// Sends a message to the request, in order when ordering is kept.
    pub fn send(&self, mut message: ResponseMessage) {
        if let Some(hook) = &self.hook {
            hook.on_response(&mut message);
        }
        match &self.order {
            Some((sequencer, seq)) => sequencer.deliver(*seq, &self.tx, message),
            None => {
                let _ = self.tx.send(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequencer_releases_in_order() {
        let sequencer = Sequencer::default();
        let (tx0, mut rx0) = crate::scheduler::channel::responses();
        let (tx1, mut rx1) = crate::scheduler::channel::responses();
        let msg = || ResponseMessage {
            result: Ok(Some(Outputs::default())),
            is_final: true,
            timing: None,
            rejected: false,
        };
        sequencer.deliver(1, &tx1, msg());
        assert!(
            rx1.try_recv().is_none(),
            "request 1 must wait for request 0"
        );
        sequencer.deliver(0, &tx0, msg());
        assert!(rx0.try_recv().is_some());
        assert!(rx1.try_recv().is_some());
    }
}
