//! Process isolation, opt-in per model: each instance of an isolated model runs in a child
//! process that loads the same backend library through the same ABI. Tensors cross through
//! shared memory; a crash of the child (segfault, abort, OOM kill, `exit`) fails only that
//! instance's in-flight requests, the instance restarts with backoff, and after repeated
//! crashes in a row the model version turns UNAVAILABLE and says why. The child dies with the
//! server (parent-death signal, and it exits when its socket closes).
//!
//! The server side is an ordinary instance (`InstanceObj`) to the scheduler, so batching,
//! sequences and decoupled responses work unchanged. An `execute` returns once every request
//! of the batch has its final response, so the regions are reused batch after batch.

pub mod child;
mod wire;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use abi_stable::std_types::{RResult, RSlice, RStr, RVec};
use ferrum_backend_api::{
    BackendError, DataType, InstanceObj, Memory, MemoryKind, RESPONSE_FINAL, RequestBox,
    ResponderHandle,
};

use parking_lot::Mutex;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::plugins::ServerHost;
use crate::stats::ModelStats;
use wire::{
    Answer, CallAnswer, CallMsg, ErrorMsg, FromChild, ParamMsg, Region, RequestMsg, Setup, ShmFile,
    TensorMsg, ToChild,
};

pub use child::CHILD_ARGUMENT;

/// The model config parameter that runs a model's instances in child processes: `"process"`
/// (or `"none"` to run them inside the server; the default, except for the `python` backend).
pub const ISOLATION: &str = "ferrum.isolation";

/// The model config parameter that sets after how many crashes in a row (without a batch
/// that finished in between) an isolated model turns UNAVAILABLE; default
/// [`DEFAULT_MAX_CRASHES`].
pub const MAX_CRASHES: &str = "ferrum.isolation.max_crashes";

/// Crashes in a row after which an isolated model turns UNAVAILABLE, unless configured.
pub const DEFAULT_MAX_CRASHES: u32 = 5;

/// First wait before restarting a crashed instance; it doubles with every crash in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a running batch's requests are checked for cancellation while the child is quiet.
const CANCEL_CHECK: Duration = Duration::from_millis(20);
/// How long an instance process may take to exit after its socket closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// The executable started for isolated instances; the running one unless set.
static PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Sets the executable started for isolated instances (it must call [`child::main`] when
/// its first argument is [`CHILD_ARGUMENT`]); the `ferrum` binary is the default.
pub fn set_program(path: PathBuf) {
    let _ = PROGRAM.set(path);
}

fn program() -> std::io::Result<PathBuf> {
    match PROGRAM.get() {
        Some(path) => Ok(path.clone()),
        None => std::env::current_exe(),
    }
}

/// How a model asks to be isolated.
#[derive(Clone, Debug)]
pub struct Isolation {
    /// Crashes in a row before the model turns UNAVAILABLE.
    pub max_crashes: u32,
}

impl Isolation {
    /// The model's isolation settings, or none when it runs inside the server.
    pub fn from_config(config: &ModelConfig) -> Result<Option<Isolation>> {
        let value = |key: &str| config.parameters.get(key).map(|p| p.string_value.trim());
        // Python models run isolated unless they say otherwise: one interpreter (and GIL) per
        // instance, and an interpreter that dies takes only its own requests along.
        let default = if config.backend == "python" {
            "process"
        } else {
            "none"
        };
        match value(ISOLATION).unwrap_or(default) {
            "none" | "" => return Ok(None),
            "process" => {}
            other => {
                return Err(Error::invalid(format!(
                    "parameter '{ISOLATION}' is '{other}'; use 'process' or 'none'"
                )));
            }
        }
        let max_crashes = match value(MAX_CRASHES) {
            None => DEFAULT_MAX_CRASHES,
            Some(text) => text.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::invalid(format!(
                    "parameter '{MAX_CRASHES}' is '{text}'; use a whole number of at least 1"
                ))
            })?,
        };
        Ok(Some(Isolation { max_crashes }))
    }
}

/// Whether a model version still serves; set once, for good, when an isolated instance kept
/// crashing.
#[derive(Default)]
pub struct Health(OnceLock<String>);

impl Health {
    /// Why the version stopped serving, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    fn fail(&self, reason: String) {
        let _ = self.0.set(reason);
    }
}

/// Runs process spawns on one thread that lives as long as the server, because the
/// parent-death signal fires when the *thread* that started a child ends.
fn spawn(command: Command) -> std::io::Result<Child> {
    type Job = (Command, crossbeam_channel::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<std::io::Result<crossbeam_channel::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        std::thread::Builder::new()
            .name("ferrum-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .map(|_| tx)
    });
    let spawner = spawner
        .as_ref()
        .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    spawner
        .send((command, tx))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// One running instance process.
struct Process {
    /// The process.
    child: Child,
    /// The socket to it.
    socket: UnixStream,
    /// Inputs, written here.
    input: Region,
    /// Outputs, written there.
    output: Region,
    /// Where the process is listed while it runs.
    stats: Arc<ModelStats>,
    /// Messages to the child, from the instance thread and from the calls' tasks.
    writer: Arc<Mutex<UnixStream>>,
    /// The inferences the child's backend started and that still run, by call number.
    calls: HashMap<u64, tokio::task::AbortHandle>,
}

impl Process {
    /// Starts an instance process and waits until it loaded the model (or failed to).
    fn start(setup: &Setup, stats: &Arc<ModelStats>) -> std::result::Result<Process, BackendError> {
        let fail = |what: &str, e: std::io::Error| {
            BackendError::unavailable(format!(
                "cannot start an isolated process for instance '{}': {what}: {e}",
                setup.instance
            ))
        };
        let (socket, theirs) = UnixStream::pair().map_err(|e| fail("socket", e))?;
        let input = Region::create("ferrum-inputs").map_err(|e| fail("shared memory", e))?;
        let output = Region::create("ferrum-outputs").map_err(|e| fail("shared memory", e))?;
        let program = program().map_err(|e| fail("executable", e))?;
        let mut command = Command::new(program);
        command.arg(CHILD_ARGUMENT).arg(&setup.instance);
        let fds = [theirs.as_raw_fd(), input.raw_fd(), output.raw_fd()];
        let server = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Move the descriptors out of the way first, then to their fixed numbers
                // (dup2 leaves the copies open across exec).
                let mut high = [0; 3];
                for (slot, fd) in high.iter_mut().zip(fds) {
                    *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                    if *slot < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (target, fd) in [wire::SOCKET_FD, wire::INPUT_FD, wire::OUTPUT_FD]
                    .into_iter()
                    .zip(high)
                {
                    if libc::dup2(fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The server may have died between fork and prctl.
                if libc::getppid() != server {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = spawn(command).map_err(|e| fail("spawn", e))?;
        drop(theirs);
        stats.processes.lock().insert(child.id());
        let writer = match socket.try_clone() {
            Ok(writer) => Arc::new(Mutex::new(writer)),
            Err(e) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                stats.processes.lock().remove(&child.id());
                return Err(fail("socket", e));
            }
        };
        let mut process = Process {
            child,
            socket,
            input,
            output,
            stats: Arc::clone(stats),
            writer,
            calls: HashMap::new(),
        };
        wire::send(
            &mut process.socket,
            &ToChild::Setup(Box::new(setup.clone())),
        )
        .map_err(|e| BackendError::unavailable(process.died(&format!("setup: {e}"))))?;
        let mut buffer = Vec::new();
        match wire::receive::<FromChild>(&mut process.socket, &mut buffer) {
            Ok(Some(FromChild::Ready)) => Ok(process),
            Ok(Some(FromChild::Failed(e))) => Err(e.into()),
            Ok(Some(_)) => Err(BackendError::internal(
                "the isolated process answered its setup out of turn",
            )),
            Ok(None) => Err(BackendError::unavailable(process.died("while loading"))),
            Err(e) => Err(BackendError::unavailable(
                process.died(&format!("while loading: {e}")),
            )),
        }
    }

    /// Waits for the process after its socket broke and says how it ended.
    fn died(&mut self, when: &str) -> String {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        let status = wait_for(&mut self.child);
        format!(
            "pid {} {} ({when})",
            self.child.id(),
            status.unwrap_or_else(|| "stopped answering".to_string())
        )
    }
}

impl Process {
    /// Sends a message to the child.
    fn send(&self, message: &ToChild) -> std::io::Result<()> {
        wire::send(&mut *self.writer.lock(), message)
    }

    /// Waits up to `timeout` for a message from the child; whether one is there.
    fn readable(&self, timeout: Duration) -> bool {
        let mut fd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for a descriptor we own.
        let ready = unsafe { libc::poll(&mut fd, 1, ms) };
        // An error or hang-up also counts: the read then reports it.
        ready != 0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        for call in self.calls.values() {
            call.abort();
        }
        // Closing the socket tells the child to exit; it gets a grace period, then SIGKILL.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        let _ = wait_for(&mut self.child);
        wire::remove_leftovers(self.child.id());
        self.stats.processes.lock().remove(&self.child.id());
    }
}

/// Waits (at most [`EXIT_GRACE`], then kills) for a child and describes its end.
fn wait_for(child: &mut Child) -> Option<String> {
    let deadline = Instant::now() + EXIT_GRACE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(describe_exit(status)),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                return child.wait().ok().map(describe_exit);
            }
            Err(_) => return None,
        }
    }
}

/// "exited with status N" or "was killed by signal N (SIGNAME)".
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(signal) => {
            let name = match signal {
                libc::SIGSEGV => "SIGSEGV, a segmentation fault",
                libc::SIGABRT => "SIGABRT, an abort",
                libc::SIGBUS => "SIGBUS",
                libc::SIGILL => "SIGILL",
                libc::SIGFPE => "SIGFPE",
                libc::SIGKILL => "SIGKILL, e.g. the out-of-memory killer",
                libc::SIGTERM => "SIGTERM",
                _ => "a signal",
            };
            format!("was killed by signal {signal} ({name})")
        }
        None => "ended".to_string(),
    }
}

/// An instance whose backend code runs in a child process.
pub struct IsolatedInstance {
    /// What the child loads.
    setup: Setup,
    /// The model's settings.
    isolation: Isolation,
    /// The running process; none after a crash until it restarted.
    process: Option<Process>,
    /// Crashes since the last batch that finished.
    crashes: u32,
    /// The version's health, shared with its other instances.
    health: Arc<Health>,
    /// The version's statistics (its processes are listed there).
    stats: Arc<ModelStats>,
    /// Runs the inferences the child's backend starts on other models.
    host: ServerHost,
    /// Numbers batches.
    batch: u64,
    /// Reused message buffer.
    buffer: Vec<u8>,
}

/// What an isolated instance is started with.
pub struct InstanceSpec {
    /// The backend's name.
    pub backend: String,
    /// The library file the server loaded.
    pub library: PathBuf,
    /// The JSON the backend is created with.
    pub backend_config: String,
    /// The model's name.
    pub model: String,
    /// Its version.
    pub version: i64,
    /// The config the backend sees, as JSON.
    pub config_json: String,
    /// The model's folder.
    pub model_path: String,
    /// The version's folder.
    pub version_path: String,
    /// The instance's name.
    pub instance: String,
    /// Its index.
    pub index: u32,
    /// Its kind.
    pub kind: u32,
    /// The version's statistics.
    pub stats: Arc<ModelStats>,
    /// Runs the inferences the child's backend starts on other models.
    pub host: ServerHost,
}

impl IsolatedInstance {
    /// Starts the instance's process; fails as loading an in-process instance would.
    pub fn start(
        spec: InstanceSpec,
        isolation: Isolation,
        health: Arc<Health>,
    ) -> Result<IsolatedInstance> {
        let setup = Setup {
            backend: spec.backend,
            library: spec.library.to_string_lossy().into_owned(),
            backend_config: spec.backend_config,
            model: spec.model,
            version: spec.version,
            config_json: spec.config_json,
            model_path: spec.model_path,
            version_path: spec.version_path,
            instance: spec.instance,
            index: spec.index,
            kind: spec.kind,
            device_id: 0,
        };
        let process = Process::start(&setup, &spec.stats)?;
        tracing::info!(
            model = %setup.model,
            instance = %setup.instance,
            pid = process.child.id(),
            "started isolated instance process"
        );
        Ok(IsolatedInstance {
            setup,
            isolation,
            process: Some(process),
            crashes: 0,
            health,
            stats: spec.stats,
            host: spec.host,
            batch: 0,
            buffer: Vec::new(),
        })
    }

    /// Restarts a crashed process after the backoff its crash count calls for.
    fn restart(&mut self) -> std::result::Result<(), BackendError> {
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << self.crashes.saturating_sub(1).min(16))
            .min(MAX_BACKOFF);
        std::thread::sleep(backoff);
        match Process::start(&self.setup, &self.stats) {
            Ok(process) => {
                tracing::warn!(
                    model = %self.setup.model,
                    instance = %self.setup.instance,
                    pid = process.child.id(),
                    crashes_in_a_row = self.crashes,
                    "restarted isolated instance process after {} ms",
                    backoff.as_millis()
                );
                self.process = Some(process);
                Ok(())
            }
            Err(e) => {
                self.crashed(format!("it could not be restarted: {}", e.message));
                Err(e)
            }
        }
    }

    /// Counts a crash; too many in a row turn the model UNAVAILABLE.
    fn crashed(&mut self, what: String) {
        self.crashes += 1;
        tracing::error!(
            model = %self.setup.model,
            instance = %self.setup.instance,
            crashes_in_a_row = self.crashes,
            "isolated instance process crashed: {what}"
        );
        if self.crashes >= self.isolation.max_crashes {
            self.health.fail(format!(
                "instance '{}' crashed {} times in a row (last: {what}); load the model again \
                 to retry",
                self.setup.instance, self.crashes
            ));
        }
    }

    /// Runs one batch in the child; returns once every request has its final response.
    fn run(&mut self, requests: &[RequestBox]) -> std::result::Result<(), BackendError> {
        let Some(process) = self.process.as_mut() else {
            return Err(BackendError::unavailable(
                "the isolated process is not running",
            ));
        };
        self.batch += 1;
        let batch = self.batch;
        let mut messages = Vec::with_capacity(requests.len());
        let mut offset = 0usize;
        for request in requests {
            messages.push(request_message(request, &process.input, &mut offset)?);
        }
        let responders: Vec<ResponderHandle> = requests.iter().map(|r| r.responder()).collect();
        let mut finished = vec![false; requests.len()];
        let mut cancel_sent = vec![false; requests.len()];
        let mut open = requests.len();
        let mut executed = false;
        if let Err(e) = process.send(&ToChild::Execute {
            batch,
            requests: messages,
        }) {
            return self.lost(
                &responders,
                &mut finished,
                &format!("sending the batch: {e}"),
            );
        }
        while open > 0 || !executed {
            let Some(process) = self.process.as_mut() else {
                return Ok(());
            };
            if !process.readable(CANCEL_CHECK) {
                // Nothing from the child for a while: pass on cancellations meanwhile.
                for (index, request) in requests.iter().enumerate() {
                    if !finished[index] && !cancel_sent[index] && request.is_cancelled() {
                        cancel_sent[index] = true;
                        let _ = process.send(&ToChild::Cancel {
                            batch,
                            request: index as u32,
                        });
                    }
                }
                continue;
            }
            let message = match wire::receive::<FromChild>(&mut process.socket, &mut self.buffer) {
                Ok(Some(message)) => message,
                Ok(None) => return self.lost(&responders, &mut finished, "while running"),
                Err(e) => {
                    return self.lost(&responders, &mut finished, &format!("while running: {e}"));
                }
            };
            match message {
                FromChild::Response {
                    batch: b,
                    request,
                    flags,
                    answer,
                } if b == batch => {
                    let index = request as usize;
                    let (Some(responder), Some(done)) =
                        (responders.get(index), finished.get_mut(index))
                    else {
                        continue;
                    };
                    if *done {
                        continue;
                    }
                    deliver(responder, &process.output, flags, answer);
                    if flags & RESPONSE_FINAL != 0 {
                        *done = true;
                        open -= 1;
                    }
                }
                FromChild::Executed { batch: b, error } if b == batch => {
                    executed = true;
                    if let Some(error) = error {
                        let error = BackendError::from(error);
                        for (responder, done) in responders.iter().zip(finished.iter_mut()) {
                            if !std::mem::replace(done, true) {
                                responder.send_error(error.clone(), RESPONSE_FINAL);
                                open -= 1;
                            }
                        }
                    }
                }
                FromChild::Call(call) => {
                    let number = call.call;
                    let pid = process.child.id();
                    let writer = Arc::clone(&process.writer);
                    process.calls.retain(|_, task| !task.is_finished());
                    if let Some(task) =
                        start_call(&self.host, &self.setup.model, pid, writer, *call)
                    {
                        process.calls.insert(number, task);
                    }
                }
                FromChild::CancelCall { call } => {
                    if let Some(task) = process.calls.remove(&call) {
                        task.abort();
                    }
                }
                _ => {}
            }
        }
        self.crashes = 0;
        Ok(())
    }

    /// The child died (or its socket broke) during a batch: its open requests fail, and it
    /// restarts unless it crashed too often.
    fn lost(
        &mut self,
        responders: &[ResponderHandle],
        finished: &mut [bool],
        when: &str,
    ) -> std::result::Result<(), BackendError> {
        let how = match self.process.take() {
            Some(mut process) => process.died(when),
            None => when.to_string(),
        };
        let message = format!(
            "the isolated process of instance '{}' of model '{}' {how}; the request was lost \
             with it{}",
            self.setup.instance,
            self.setup.model,
            if self.crashes + 1 >= self.isolation.max_crashes {
                "; the model is now unavailable"
            } else {
                "; the instance is restarting"
            }
        );
        for (responder, done) in responders.iter().zip(finished.iter_mut()) {
            if !std::mem::replace(done, true) {
                responder.send_error(BackendError::internal(message.clone()), RESPONSE_FINAL);
            }
        }
        self.crashed(how);
        if self.health.failure().is_none() {
            // A failed restart is counted, and the next batch tries again.
            let _ = self.restart();
        }
        Ok(())
    }
}

impl InstanceObj for IsolatedInstance {
    fn execute(&mut self, requests: RVec<RequestBox>) -> RResult<(), BackendError> {
        if let Some(reason) = self.health.failure() {
            return RResult::RErr(BackendError::unavailable(format!(
                "model '{}' is unavailable: {reason}",
                self.setup.model
            )));
        }
        if self.process.is_none()
            && let Err(e) = self.restart()
        {
            return RResult::RErr(e);
        }
        self.run(&requests).into()
    }
}

/// Runs an inference the child's backend started on another model: its inputs are read in
/// place from the child's call file, and each response's outputs go to a file of their own
/// that the child maps. Returns the task sending the answers (none when it failed at once).
fn start_call(
    host: &ServerHost,
    own_model: &str,
    pid: u32,
    writer: Arc<Mutex<UnixStream>>,
    call: CallMsg,
) -> Option<tokio::task::AbortHandle> {
    let number = call.call;
    let answer = move |writer: &Mutex<UnixStream>, answer: CallAnswer| {
        let _ = wire::send(
            &mut *writer.lock(),
            &ToChild::CallAnswer {
                call: number,
                answer,
            },
        );
    };
    let fail = |e: BackendError| {
        answer(&writer, CallAnswer::Error(ErrorMsg::from(&e)));
        None
    };
    if call.model == own_model {
        return fail(BackendError::invalid_argument(format!(
            "model '{own_model}' cannot call itself from its own execute: its instances would \
             wait on themselves"
        )));
    }
    let Some((core, runtime)) = host.core() else {
        return fail(BackendError::unavailable(
            "the server is not ready for inference",
        ));
    };
    let file: Arc<ShmFile> = match call.file.as_deref().map(ShmFile::open).transpose() {
        Ok(Some(file)) => Arc::new(file),
        Ok(None) => Arc::new(ShmFile::empty()),
        Err(e) => {
            return fail(BackendError::internal(format!(
                "cannot read the inputs of the call: {e}"
            )));
        }
    };
    let mut inputs = Vec::with_capacity(call.inputs.len());
    for t in call.inputs {
        let Some(bytes) = file.range(t.offset, t.len) else {
            return fail(BackendError::internal(format!(
                "input '{}' lies outside its call file",
                t.name
            )));
        };
        let release: Arc<dyn Send + Sync> = file.clone();
        // SAFETY: the mapping lives as long as `release`, which every copy of the input holds.
        let data =
            unsafe { crate::server::LentBytes::new(bytes.as_ptr(), bytes.len(), false, release) };
        inputs.push(crate::server::InputTensor {
            name: t.name,
            datatype: DataType(t.datatype),
            shape: t.shape,
            data: crate::server::InputData::Lent(data),
        });
    }
    let request = crate::server::InferRequest {
        model_name: call.model,
        model_version: (call.version > 0).then_some(call.version),
        id: call.id,
        parameters: call
            .parameters
            .iter()
            .filter_map(|p| ferrum_backend_api::Parameter::from_ffi(&p.as_ref()))
            .collect(),
        inputs,
        outputs: call.requested,
        delivery: Vec::new(),
        allocator: None,
    };
    drop(file);
    let mut stream = match core.infer_stream(request) {
        Ok(stream) => stream,
        Err(e) => return fail(e.into()),
    };
    let task = runtime.spawn(async move {
        let mut n = 0u64;
        while let Some(item) = stream.next().await {
            let item = match item {
                Ok(item) => item,
                Err(e) => {
                    let e = BackendError::from(e);
                    answer(&writer, CallAnswer::Error(ErrorMsg::from(&e)));
                    return;
                }
            };
            if let Some(response) = item.response {
                let path = ShmFile::path(pid, &format!("r{number}.{n}"));
                n += 1;
                let tensors = response
                    .outputs
                    .iter()
                    .map(|o| (o.name.clone(), o.datatype.0, o.shape.clone(), &o.data[..]));
                match wire::layout(tensors, &path) {
                    Ok((file, outputs)) => answer(
                        &writer,
                        CallAnswer::Response {
                            file: file.map(|_| path),
                            outputs,
                            parameters: response
                                .parameters
                                .iter()
                                .filter_map(|p| ParamMsg::of(&p.value.to_ffi(&p.key)))
                                .collect(),
                        },
                    ),
                    Err(e) => {
                        let e = BackendError::internal(format!(
                            "cannot pass a response of the call on: {e}"
                        ));
                        answer(&writer, CallAnswer::Error(ErrorMsg::from(&e)));
                        return;
                    }
                }
            }
            if item.is_final {
                break;
            }
        }
        answer(&writer, CallAnswer::End);
    });
    Some(task.abort_handle())
}

/// Copies a request's inputs into the input region and describes it.
fn request_message(
    request: &RequestBox,
    input: &Region,
    offset: &mut usize,
) -> std::result::Result<RequestMsg, BackendError> {
    let mut inputs = Vec::with_capacity(request.input_count());
    for index in 0..request.input_count() {
        let abi_stable::std_types::ROption::RSome(info) = request.input(index) else {
            continue;
        };
        let len = usize::try_from(info.byte_size).unwrap_or(usize::MAX);
        let start = offset.div_ceil(wire::ALIGN) * wire::ALIGN;
        let end = start
            .checked_add(len)
            .ok_or_else(|| BackendError::invalid_argument("input too large"))?;
        input.ensure(end.max(1)).map_err(|e| {
            BackendError::new(
                ferrum_backend_api::ErrorCode::RESOURCE_EXHAUSTED,
                format!("input '{}' does not fit in shared memory: {e}", info.name),
            )
        })?;
        let base = input
            .at(start as u64, len as u64)
            .ok_or_else(|| BackendError::internal("the input region did not grow"))?;
        let mut written = 0usize;
        for b in 0..info.buffer_count as usize {
            let abi_stable::std_types::ROption::RSome(buffer) = request.input_buffer(index, b)
            else {
                break;
            };
            if buffer.memory.kind != MemoryKind::CPU && buffer.memory.kind != MemoryKind::CPU_PINNED
            {
                return Err(BackendError::unsupported(
                    "an isolated model takes its inputs in CPU memory only",
                ));
            }
            let n = buffer.len.min(len - written);
            // SAFETY: the server's buffer holds `buffer.len` readable bytes while the request
            // lives; the region was grown to hold `len` bytes at `base`.
            unsafe { std::ptr::copy_nonoverlapping(buffer.ptr, base.add(written), n) };
            written += n;
        }
        *offset = end;
        inputs.push(TensorMsg {
            name: info.name.as_str().to_string(),
            datatype: info.datatype.0,
            shape: info.shape.to_vec(),
            offset: start as u64,
            len: written as u64,
        });
    }
    let parameters = (0..request.parameter_count())
        .filter_map(|i| request.parameter(i).into_option())
        .filter_map(|p| ParamMsg::of(&p))
        .collect();
    let requested = (0..request.requested_output_count())
        .filter_map(|i| request.requested_output(i).into_option())
        .map(|s| s.as_str().to_string())
        .collect();
    Ok(RequestMsg {
        id: request.id().as_str().to_string(),
        correlation: wire::Correlation::of(request.correlation_id()),
        flags: request.flags(),
        parameters,
        inputs,
        requested,
        timeout_us: request.timeout_microseconds(),
    })
}

/// Hands one answer from the child to the request's responder, copying its outputs out of
/// the output region into the buffers the server allocates.
fn deliver(responder: &ResponderHandle, output: &Region, flags: u32, answer: Answer) {
    match answer {
        Answer::Flags => responder.send_flags(flags),
        Answer::Error(e) => responder.send_error(e.into(), flags),
        Answer::Response {
            outputs,
            parameters,
        } => {
            let mut response = responder.new_response();
            for tensor in &outputs {
                let Some(source) = output.at(tensor.offset, tensor.len) else {
                    responder.send_error(
                        BackendError::internal(format!(
                            "output '{}' lies outside the shared memory region",
                            tensor.name
                        )),
                        flags | RESPONSE_FINAL,
                    );
                    return;
                };
                let len = tensor.len as usize;
                match response
                    .add_output(
                        RStr::from_str(&tensor.name),
                        DataType(tensor.datatype),
                        RSlice::from_slice(&tensor.shape),
                        len,
                        Memory::CPU,
                    )
                    .into_result()
                {
                    // SAFETY: the server's buffer has `len` writable bytes; the source range
                    // was checked against the region's size.
                    Ok(target) => unsafe {
                        std::ptr::copy_nonoverlapping(source, target.ptr, len.min(target.len))
                    },
                    Err(e) => {
                        responder.send_error(e, flags | RESPONSE_FINAL);
                        return;
                    }
                }
            }
            for p in &parameters {
                response.add_parameter(p.as_ref());
            }
            response.send(flags);
        }
    }
}

/// Resident memory of a process in bytes, from /proc.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
