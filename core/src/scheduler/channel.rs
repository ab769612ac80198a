//! The channel a request's responses travel back on: many senders (the instance thread, a
//! backend's own threads, the batcher), one receiver (the request's async task). Built for
//! the common case of one response per request: the first message lives inside the channel's
//! one allocation, so a request costs one allocation here, not a block of slots.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::ResponseMessage;

/// A new channel for one request's responses.
pub fn responses() -> (ResponseTx, ResponseRx) {
    let inner = Arc::new(Mutex::new(State {
        first: None,
        more: VecDeque::new(),
        senders: 1,
        receiving: true,
        waker: None,
    }));
    (
        ResponseTx {
            inner: Arc::clone(&inner),
        },
        ResponseRx { inner },
    )
}

/// What both ends share.
struct State {
    /// The oldest waiting message, when the others are empty.
    first: Option<ResponseMessage>,
    /// Messages after `first`, oldest first.
    more: VecDeque<ResponseMessage>,
    /// Live senders; none left ends the stream.
    senders: usize,
    /// The receiver still exists.
    receiving: bool,
    /// Wakes the receiver.
    waker: Option<Waker>,
}

/// The sending end; clones share the channel.
pub struct ResponseTx {
    /// The channel.
    inner: Arc<Mutex<State>>,
}

/// The receiving end.
pub struct ResponseRx {
    /// The channel.
    inner: Arc<Mutex<State>>,
}

impl ResponseTx {
    /// Sends a message; false (and the message dropped) when the receiver is gone.
    pub fn send(&self, message: ResponseMessage) -> bool {
        let waker = {
            let mut state = self.inner.lock();
            if !state.receiving {
                drop(state);
                drop(message);
                return false;
            }
            if state.first.is_none() && state.more.is_empty() {
                state.first = Some(message);
            } else {
                state.more.push_back(message);
            }
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }
}

impl Clone for ResponseTx {
    fn clone(&self) -> Self {
        self.inner.lock().senders += 1;
        ResponseTx {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl Drop for ResponseTx {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.inner.lock();
            state.senders -= 1;
            if state.senders == 0 {
                state.waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl ResponseRx {
    /// The next message; none once every sender is gone and nothing is left.
    pub async fn recv(&mut self) -> Option<ResponseMessage> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<ResponseMessage>> {
        let mut state = self.inner.lock();
        if let Some(message) = state.first.take().or_else(|| state.more.pop_front()) {
            return Poll::Ready(Some(message));
        }
        if state.senders == 0 {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<ResponseMessage> {
        let mut state = self.inner.lock();
        state.first.take().or_else(|| state.more.pop_front())
    }
}

impl Drop for ResponseRx {
    fn drop(&mut self) {
        let left = {
            let mut state = self.inner.lock();
            state.receiving = false;
            state.waker = None;
            (state.first.take(), std::mem::take(&mut state.more))
        };
        // Messages nobody will read are dropped outside the lock.
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn message(n: usize) -> ResponseMessage {
        ResponseMessage::rejection(Error::internal(n.to_string()))
    }

    fn text(m: ResponseMessage) -> String {
        match m.result {
            Err(e) => e.message,
            Ok(_) => String::new(),
        }
    }

    #[test]
    fn messages_arrive_in_order_and_the_end_follows_the_last_sender() {
        let (tx, mut rx) = responses();
        let tx2 = tx.clone();
        for n in 0..5 {
            assert!(tx.send(message(n)));
        }
        assert_eq!(text(rx.try_recv().unwrap()), "0");
        tx2.send(message(5));
        let rest: Vec<_> = std::iter::from_fn(|| rx.try_recv()).map(text).collect();
        assert_eq!(rest, ["1", "2", "3", "4", "5"]);
        tx.send(message(6));
        assert_eq!(text(rx.try_recv().unwrap()), "6");
        drop(tx);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let waiting = std::thread::spawn(move || {
            tx2.send(message(7));
            drop(tx2);
        });
        runtime.block_on(async {
            waiting.join().unwrap();
            assert_eq!(text(rx.recv().await.unwrap()), "7");
            assert!(rx.recv().await.is_none());
        });
    }

    #[test]
    fn sending_to_a_dropped_receiver_says_so() {
        let (tx, rx) = responses();
        drop(rx);
        assert!(!tx.send(message(1)));
    }

    #[test]
    fn a_waiting_receiver_is_woken_by_a_send_from_another_thread() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let (tx, mut rx) = responses();
        runtime.block_on(async move {
            let sender = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                tx.send(message(9));
            });
            assert_eq!(text(rx.recv().await.unwrap()), "9");
            assert!(rx.recv().await.is_none());
            sender.join().unwrap();
        });
    }
}
