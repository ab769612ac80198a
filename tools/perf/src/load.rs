//! Load generation: request plans, connected workers, concurrency and request-rate modes.

use crate::cli::Distribution;
use crate::client::grpc::{MarkedClient, StreamSession};
use crate::client::http::{HttpConn, HttpRequest, check};
use crate::client::inprocess::CoreHandle;
use crate::inputs::Rng;
use crate::measure::{Marks, Record, Recorder};
use crate::proto::inference as pb;
use anyhow::{Context, Result};
use bytes::Bytes;
use http::Method;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// What every request of a run looks like (several data sets are sent round-robin).
#[derive(Clone, Debug)]
pub enum Plan {
    /// HTTP requests (inference or health).
    Http(Vec<HttpRequest>),
    /// Unary gRPC ModelInfer.
    Grpc(Vec<pb::ModelInferRequest>),
    /// Streaming gRPC ModelStreamInfer.
    GrpcStream(Vec<pb::ModelInferRequest>),
    /// gRPC ServerReady (the health floor).
    GrpcHealth,
    /// Direct `Core::infer` calls on an in-process core.
    InProcess(CoreHandle, Vec<ferrum_core::server::InferRequest>),
    /// `Core::is_ready` on an in-process core (the health floor).
    InProcessHealth(CoreHandle),
}

impl Plan {
    /// The HTTP health plan: `GET /v2/health/ready`.
    pub fn http_health() -> Self {
        Self::Http(vec![HttpRequest {
            method: Method::GET,
            path: "/v2/health/ready".into(),
            body: Bytes::new(),
            header_len: None,
        }])
    }
}

/// One connected client that sends one request at a time.
pub enum Worker {
    /// HTTP/1.1 keep-alive connection.
    Http(HttpConn, Arc<Vec<HttpRequest>>),
    /// gRPC unary client.
    Grpc(MarkedClient, Arc<Vec<pb::ModelInferRequest>>),
    /// gRPC stream.
    Stream(StreamSession, Arc<Vec<pb::ModelInferRequest>>),
    /// gRPC health client.
    Health(MarkedClient),
    /// In-process core.
    InProcess(CoreHandle, Arc<Vec<ferrum_core::server::InferRequest>>),
    /// In-process readiness check.
    InProcessHealth(CoreHandle),
}

impl Worker {
    /// Connects a worker for a plan.
    pub async fn connect(plan: &Plan, authority: &str) -> Result<Self> {
        Ok(match plan {
            Plan::Http(reqs) => {
                let mut conn = HttpConn::new(authority);
                conn.ensure_connected().await?;
                Self::Http(conn, Arc::new(reqs.clone()))
            }
            Plan::Grpc(reqs) => Self::Grpc(
                MarkedClient::connect(authority).await?,
                Arc::new(reqs.clone()),
            ),
            Plan::GrpcStream(reqs) => {
                let mut client = MarkedClient::connect(authority).await?;
                Self::Stream(
                    StreamSession::open(&mut client).await?,
                    Arc::new(reqs.clone()),
                )
            }
            Plan::GrpcHealth => Self::Health(MarkedClient::connect(authority).await?),
            Plan::InProcess(core, reqs) => Self::InProcess(core.clone(), Arc::new(reqs.clone())),
            Plan::InProcessHealth(core) => Self::InProcessHealth(core.clone()),
        })
    }

    /// Sends request number `n` (data set n mod count), waits for its response, and returns
    /// its send/recv–wait marks when the client has them.
    pub async fn send(&mut self, n: usize) -> Result<Option<Marks>> {
        // The marks: HTTP, the request's last write and the response's first read on the
        // socket; gRPC, the request message encoded and the response message about to decode
        // (h2 writes and reads the bytes in between); in-process, the request built (a clone
        // of the prepared one) and `Core::infer` returned (the response is released after).
        match self {
            Self::Http(conn, reqs) => {
                let req = &reqs[n % reqs.len()];
                let (status, body) = conn.send(req).await?;
                check(status, &body, &req.path)?;
                Ok(conn.marks())
            }
            Self::Grpc(client, reqs) => {
                client.model_infer(reqs[n % reqs.len()].clone()).await?;
                Ok(client.marks())
            }
            Self::Stream(session, reqs) => {
                session.infer(reqs[n % reqs.len()].clone()).await?;
                Ok(session.marks())
            }
            Self::Health(client) => {
                client.server_ready().await?;
                Ok(client.marks())
            }
            Self::InProcess(core, reqs) => {
                let req = reqs[n % reqs.len()].clone();
                let sent = Instant::now();
                let response = core.infer(req).await;
                let answered = Instant::now();
                drop(response?);
                Ok(Some(Marks { sent, answered }))
            }
            Self::InProcessHealth(core) => {
                // The check never waits: yield so the workers cannot starve the runtime's
                // other tasks (the window timer) on a machine with few cores.
                tokio::task::yield_now().await;
                let sent = Instant::now();
                core.health()?;
                Ok(Some(Marks {
                    sent,
                    answered: Instant::now(),
                }))
            }
        }
    }
}

/// Sends one request, logging the first error, and records it.
async fn timed(
    worker: &mut Worker,
    n: usize,
    recorder: &Recorder,
    slot: usize,
    errors_seen: &AtomicBool,
) {
    let start = Instant::now();
    let result = worker.send(n).await;
    let end = Instant::now();
    let record = match result {
        Ok(marks) => Record::new(start, end, marks, true),
        Err(e) => {
            if !errors_seen.swap(true, Ordering::Relaxed) {
                eprintln!("warning: request failed: {e:#}");
            }
            Record::new(start, end, None, false)
        }
    };
    recorder.push(slot, record);
}

/// Running load: its recorder, stop flag and tasks.
pub struct Load {
    /// Where completed requests are recorded.
    pub recorder: Recorder,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Stops the workers; requests still in flight are abandoned (they are not measured).
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn connect_all(plan: &Plan, authority: &str, n: usize) -> Result<Vec<Worker>> {
    let mut workers = Vec::with_capacity(n);
    for i in 0..n {
        workers.push(
            Worker::connect(plan, authority)
                .await
                .with_context(|| format!("worker {i} cannot connect"))?,
        );
    }
    Ok(workers)
}

/// Starts `concurrency` workers, each keeping one request outstanding.
pub async fn start_concurrency(plan: &Plan, authority: &str, concurrency: usize) -> Result<Load> {
    let workers = connect_all(plan, authority, concurrency).await?;
    let recorder = Recorder::new(concurrency);
    let stop = Arc::new(AtomicBool::new(false));
    let errors_seen = Arc::new(AtomicBool::new(false));
    let tasks = workers
        .into_iter()
        .enumerate()
        .map(|(slot, mut worker)| {
            let (recorder, stop, errors_seen) =
                (recorder.clone(), stop.clone(), errors_seen.clone());
            tokio::spawn(async move {
                let mut n = slot;
                while !stop.load(Ordering::Relaxed) {
                    timed(&mut worker, n, &recorder, slot, &errors_seen).await;
                    n = n.wrapping_add(1);
                }
            })
        })
        .collect();
    Ok(Load {
        recorder,
        stop,
        tasks,
    })
}

/// Arrival schedule shared by the request-rate workers.
struct Schedule {
    next: Instant,
    index: usize,
    gap: f64,
    distribution: Distribution,
    rng: Rng,
}

impl Schedule {
    fn take(&mut self) -> (Instant, usize) {
        let at = self.next;
        let gap = match self.distribution {
            Distribution::Constant => self.gap,
            Distribution::Poisson => -(1.0 - self.rng.next_f64()).ln() * self.gap,
        };
        self.next += Duration::from_secs_f64(gap);
        self.index += 1;
        (at, self.index - 1)
    }
}

/// Starts request-rate load: requests at `rate`/s, sent by up to `max_in_flight` workers.
pub async fn start_rate(
    plan: &Plan,
    authority: &str,
    rate: f64,
    distribution: Distribution,
    max_in_flight: usize,
) -> Result<Load> {
    let workers = connect_all(plan, authority, max_in_flight.max(1)).await?;
    let recorder = Recorder::new(workers.len());
    let stop = Arc::new(AtomicBool::new(false));
    let errors_seen = Arc::new(AtomicBool::new(false));
    let schedule = Arc::new(Mutex::new(Schedule {
        next: Instant::now(),
        index: 0,
        gap: 1.0 / rate,
        distribution,
        rng: Rng::new(0xC0FFEE),
    }));
    let tasks = workers
        .into_iter()
        .enumerate()
        .map(|(slot, mut worker)| {
            let (recorder, stop, errors_seen, schedule) = (
                recorder.clone(),
                stop.clone(),
                errors_seen.clone(),
                schedule.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (at, n) = schedule
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take();
                    tokio::time::sleep_until(at.into()).await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    timed(&mut worker, n, &recorder, slot, &errors_seen).await;
                }
            })
        })
        .collect();
    Ok(Load {
        recorder,
        stop,
        tasks,
    })
}
