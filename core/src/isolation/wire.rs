//! What the server and an isolated instance process say to each other: small framed messages
//! over a Unix socket, and tensor bytes in two shared memory files (inputs written by the
//! server, outputs written by the child), so tensors never pass through the socket.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ferrum_backend_api::{
    BackendError, CorrelationKind, CorrelationRef, ErrorCode, ParamKind, ParamRef,
};
use serde::{Deserialize, Serialize};

/// The child's end of the socket, as its file descriptor.
pub const SOCKET_FD: RawFd = 3;
/// The input region's file descriptor in the child.
pub const INPUT_FD: RawFd = 4;
/// The output region's file descriptor in the child.
pub const OUTPUT_FD: RawFd = 5;

/// Address space reserved for each region in each process (only what is used costs memory).
const RESERVED: usize = 16 << 30;
/// Largest message accepted on the socket (tensors travel in the regions, not here).
const MAX_MESSAGE: usize = 64 << 20;
/// Offsets in a region are aligned to this many bytes.
pub const ALIGN: usize = 64;

/// A shared memory file mapped at the same size in both processes. The file only grows (it
/// is sealed against shrinking), so a range checked against its size stays readable.
pub struct Region {
    /// The memfd.
    fd: OwnedFd,
    /// Start of the reserved mapping.
    base: *mut u8,
    /// The file's size as last seen.
    known: std::sync::atomic::AtomicUsize,
}

// SAFETY: the mapping is plain shared memory; who writes where is the protocol's business.
unsafe impl Send for Region {}
// SAFETY: as above; the only interior state is an atomic.
unsafe impl Sync for Region {}

impl Region {
    /// A new, empty region (server side).
    pub fn create(name: &str) -> std::io::Result<Region> {
        let cname = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
        // SAFETY: a valid C string and flags.
        let fd = unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Self::map(fd)
    }

    /// The region behind a descriptor handed down by the server (child side).
    ///
    /// # Safety
    /// `fd` must be an open memfd this process may own.
    pub unsafe fn inherit(fd: RawFd) -> std::io::Result<Region> {
        // SAFETY: the caller hands over ownership of an open descriptor.
        Self::map(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn map(fd: OwnedFd) -> std::io::Result<Region> {
        // SAFETY: a fresh shared mapping of a file we hold open; pages past the end of the
        // file are never touched (every access is checked against the file's size).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RESERVED,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let region = Region {
            fd,
            base: base.cast(),
            known: Default::default(),
        };
        region.refresh()?;
        Ok(region)
    }

    /// The descriptor, for handing down to a child.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads the file's size again.
    fn refresh(&self) -> std::io::Result<usize> {
        // SAFETY: fstat into a zeroed struct on a descriptor we own.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(self.fd.as_raw_fd(), &mut stat) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let size = usize::try_from(stat.st_size).unwrap_or(0).min(RESERVED);
        self.known.store(size, std::sync::atomic::Ordering::Relaxed);
        Ok(size)
    }

    /// Makes the file at least `len` bytes long (it grows by doubling, never shrinks).
    pub fn ensure(&self, len: usize) -> std::io::Result<()> {
        if len <= self.known.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        if len > RESERVED {
            return Err(std::io::Error::other(format!(
                "{len} bytes of tensors exceed the isolated process's limit of {RESERVED} bytes"
            )));
        }
        let current = self.refresh()?;
        if len <= current {
            return Ok(());
        }
        let size = len.next_power_of_two().clamp(1 << 20, RESERVED);
        // SAFETY: ftruncate on a descriptor we own; growing only (the file is sealed).
        if unsafe { libc::ftruncate(self.fd.as_raw_fd(), size as libc::off_t) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.refresh().map(|_| ())
    }

    /// Whether `offset..offset + len` lies inside the file.
    fn covers(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        let end = usize::try_from(end).unwrap_or(usize::MAX);
        end <= self.known.load(std::sync::atomic::Ordering::Relaxed)
            || self.refresh().is_ok_and(|size| end <= size)
    }

    /// The address of `offset`, when `offset..offset + len` lies inside the file.
    pub fn at(&self, offset: u64, len: u64) -> Option<*mut u8> {
        // SAFETY: inside the reserved mapping, as `covers` checked.
        self.covers(offset, len)
            .then(|| unsafe { self.base.add(offset as usize) })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map` mapped; nothing borrows it past the region's life.
        unsafe { libc::munmap(self.base.cast(), RESERVED) };
    }
}

/// Writes one framed message.
pub fn send(stream: &mut impl Write, message: &impl Serialize) -> std::io::Result<()> {
    let body = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame)
}

/// Reads one framed message; `Ok(None)` when the other side closed the socket.
pub fn receive<T: for<'de> Deserialize<'de>>(
    stream: &mut impl Read,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(std::io::Error::other(format!(
            "message of {len} bytes is over the limit"
        )));
    }
    buffer.resize(len, 0);
    stream.read_exact(buffer)?;
    serde_json::from_slice(buffer)
        .map(Some)
        .map_err(std::io::Error::other)
}

/// A file under /dev/shm holding one host call's inputs (written by the child) or one of its
/// responses' outputs (written by the server). The reader unlinks it as soon as it mapped it;
/// the server removes what a crashed child left behind (all its files carry its pid).
pub struct ShmFile {
    /// The mapping (kept until every tensor in it is let go); none for no bytes at all.
    map: Option<memmap2::MmapMut>,
}

impl ShmFile {
    /// A file of no bytes (for calls whose tensors are all empty).
    pub fn empty() -> ShmFile {
        ShmFile { map: None }
    }

    /// The path of the file `name` of child `pid`.
    pub fn path(pid: u32, name: &str) -> String {
        format!("/dev/shm/ferrum-iso-{pid}-{name}")
    }

    /// Creates a file of `len` bytes to write into.
    pub fn create(path: &str, len: usize) -> std::io::Result<ShmFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.set_len(len.max(1) as u64)?;
        // SAFETY: a fresh private file of ours, mapped at its length.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }?;
        Ok(ShmFile { map: Some(map) })
    }

    /// Maps a file the other side wrote, and unlinks it.
    pub fn open(path: &str) -> std::io::Result<ShmFile> {
        if !path.starts_with("/dev/shm/ferrum-iso-") || path.contains("..") {
            return Err(std::io::Error::other(format!(
                "'{path}' is not a call file"
            )));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let _ = std::fs::remove_file(path);
        // SAFETY: the writer finished with the file before naming it in a message, and only
        // reads happen from now on; its length is what the mapping checks ranges against.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }?;
        Ok(ShmFile { map: Some(map) })
    }

    /// The bytes at `offset..offset + len`, when they lie inside the file.
    pub fn range(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        match &self.map {
            Some(map) => map.get(start..end),
            None => (end == 0).then_some(&[][..]),
        }
    }

    /// The whole file, for writing.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.map.as_deref_mut().unwrap_or_default()
    }
}

/// Removes the call files a child left behind.
pub fn remove_leftovers(pid: u32) {
    let prefix = format!("ferrum-iso-{pid}-");
    if let Ok(entries) = std::fs::read_dir("/dev/shm") {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Lays tensors out one after another (aligned) and says where each one went.
pub fn layout<'a>(
    tensors: impl Iterator<Item = (String, u32, Vec<i64>, &'a [u8])> + Clone,
    path: &str,
) -> std::io::Result<(Option<ShmFile>, Vec<TensorMsg>)> {
    let mut total = 0usize;
    for (.., bytes) in tensors.clone() {
        total = total.div_ceil(ALIGN) * ALIGN + bytes.len();
    }
    let mut file = if total > 0 {
        Some(ShmFile::create(path, total)?)
    } else {
        None
    };
    let mut offset = 0usize;
    let mut placed = Vec::new();
    for (name, datatype, shape, bytes) in tensors {
        offset = offset.div_ceil(ALIGN) * ALIGN;
        if let Some(file) = file.as_mut() {
            file.bytes_mut()[offset..offset + bytes.len()].copy_from_slice(bytes);
        }
        placed.push(TensorMsg {
            name,
            datatype,
            shape,
            offset: offset as u64,
            len: bytes.len() as u64,
        });
        offset += bytes.len();
    }
    Ok((file, placed))
}

/// The server's messages to the child.
#[derive(Serialize, Deserialize)]
pub enum ToChild {
    /// Load the backend, the model and one instance.
    Setup(Box<Setup>),
    /// Run a batch of requests.
    Execute {
        /// Numbers the batches.
        batch: u64,
        /// The requests.
        requests: Vec<RequestMsg>,
    },
    /// The client cancelled a request of the running batch.
    Cancel {
        /// The batch.
        batch: u64,
        /// The request's index in it.
        request: u32,
    },
    /// A response (or the end) of an inference the child started on another model.
    CallAnswer {
        /// The call.
        call: u64,
        /// What came.
        answer: CallAnswer,
    },
}

/// One answer to a host call.
#[derive(Serialize, Deserialize)]
pub enum CallAnswer {
    /// A response: its outputs lie in `file`.
    Response {
        /// The file holding the outputs (none when they are all empty).
        file: Option<String>,
        /// Outputs.
        outputs: Vec<TensorMsg>,
        /// Parameters.
        parameters: Vec<ParamMsg>,
    },
    /// The inference failed; nothing follows.
    Error(ErrorMsg),
    /// No more responses.
    End,
}

/// An inference the child's backend starts on another model of the server.
#[derive(Serialize, Deserialize)]
pub struct CallMsg {
    /// Numbers the child's calls.
    pub call: u64,
    /// The model.
    pub model: String,
    /// Its version (-1: the server's choice).
    pub version: i64,
    /// The request id.
    pub id: String,
    /// Parameters.
    pub parameters: Vec<ParamMsg>,
    /// Inputs, in `file`.
    pub inputs: Vec<TensorMsg>,
    /// The file holding the inputs (none when they are all empty).
    pub file: Option<String>,
    /// Outputs asked for (none: all).
    pub requested: Vec<String>,
}

/// What the child loads.
#[derive(Clone, Serialize, Deserialize)]
pub struct Setup {
    /// The backend's name.
    pub backend: String,
    /// The library file to open.
    pub library: String,
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
    /// Its index among the model's instances.
    pub index: u32,
    /// Its kind.
    pub kind: u32,
    /// Its device.
    pub device_id: i32,
}

/// One request of a batch.
#[derive(Serialize, Deserialize)]
pub struct RequestMsg {
    /// The client's id.
    pub id: String,
    /// The sequence correlation id.
    pub correlation: Correlation,
    /// Sequence flags.
    pub flags: u32,
    /// Parameters.
    pub parameters: Vec<ParamMsg>,
    /// Inputs, their bytes in the input region.
    pub inputs: Vec<TensorMsg>,
    /// Outputs asked for by name.
    pub requested: Vec<String>,
    /// The timeout parameter in microseconds (0: none).
    pub timeout_us: u64,
}

/// A sequence correlation id.
#[derive(Serialize, Deserialize)]
pub enum Correlation {
    /// Not in a sequence.
    None,
    /// A numeric id.
    Number(u64),
    /// A string id.
    Text(String),
}

impl Correlation {
    /// From the boundary's form.
    pub fn of(c: CorrelationRef<'_>) -> Self {
        match c.kind {
            CorrelationKind::U64 => Correlation::Number(c.number),
            CorrelationKind::STRING => Correlation::Text(c.text.as_str().to_string()),
            _ => Correlation::None,
        }
    }

    /// To the boundary's form.
    pub fn as_ref(&self) -> CorrelationRef<'_> {
        let (kind, number, text) = match self {
            Correlation::None => (CorrelationKind::NONE, 0, ""),
            Correlation::Number(n) => (CorrelationKind::U64, *n, ""),
            Correlation::Text(t) => (CorrelationKind::STRING, 0, t.as_str()),
        };
        CorrelationRef {
            kind,
            number,
            text: abi_stable::std_types::RStr::from_str(text),
        }
    }
}

/// A request or response parameter.
#[derive(Serialize, Deserialize)]
pub struct ParamMsg {
    /// Key.
    pub key: String,
    /// Value.
    pub value: ParamValueMsg,
}

/// A parameter's value.
#[derive(Serialize, Deserialize)]
pub enum ParamValueMsg {
    /// Boolean.
    Bool(bool),
    /// Integer.
    Int(i64),
    /// Floating point.
    Double(f64),
    /// String.
    Text(String),
}

impl ParamMsg {
    /// From the boundary's form (unknown kinds are left out).
    pub fn of(p: &ParamRef<'_>) -> Option<Self> {
        let value = match p.kind {
            ParamKind::BOOL => ParamValueMsg::Bool(p.boolean),
            ParamKind::INT => ParamValueMsg::Int(p.int),
            ParamKind::DOUBLE => ParamValueMsg::Double(p.double),
            ParamKind::STRING => ParamValueMsg::Text(p.text.as_str().to_string()),
            _ => return None,
        };
        Some(ParamMsg {
            key: p.key.as_str().to_string(),
            value,
        })
    }

    /// To the boundary's form.
    pub fn as_ref(&self) -> ParamRef<'_> {
        let mut p = ParamRef {
            key: abi_stable::std_types::RStr::from_str(&self.key),
            kind: ParamKind::BOOL,
            boolean: false,
            int: 0,
            double: 0.0,
            text: abi_stable::std_types::RStr::from_str(""),
        };
        match &self.value {
            ParamValueMsg::Bool(b) => p.boolean = *b,
            ParamValueMsg::Int(i) => {
                p.kind = ParamKind::INT;
                p.int = *i;
            }
            ParamValueMsg::Double(d) => {
                p.kind = ParamKind::DOUBLE;
                p.double = *d;
            }
            ParamValueMsg::Text(t) => {
                p.kind = ParamKind::STRING;
                p.text = abi_stable::std_types::RStr::from_str(t);
            }
        }
        p
    }
}

/// A tensor whose bytes lie in a region.
#[derive(Serialize, Deserialize)]
pub struct TensorMsg {
    /// Name.
    pub name: String,
    /// Element type.
    pub datatype: u32,
    /// Shape.
    pub shape: Vec<i64>,
    /// Where its bytes start in the region.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
}

/// An error as it crosses the socket.
#[derive(Serialize, Deserialize)]
pub struct ErrorMsg {
    /// The boundary's error code.
    pub code: u32,
    /// The message.
    pub message: String,
}

impl From<&BackendError> for ErrorMsg {
    fn from(e: &BackendError) -> Self {
        ErrorMsg {
            code: e.code.0,
            message: e.message.to_string(),
        }
    }
}

impl From<ErrorMsg> for BackendError {
    fn from(e: ErrorMsg) -> Self {
        BackendError::new(ErrorCode(e.code), e.message)
    }
}

/// What one response message carries.
#[derive(Serialize, Deserialize)]
pub enum Answer {
    /// A response with outputs (in the output region) and parameters.
    Response {
        /// Outputs.
        outputs: Vec<TensorMsg>,
        /// Parameters.
        parameters: Vec<ParamMsg>,
    },
    /// An error.
    Error(ErrorMsg),
    /// Flags alone.
    Flags,
}

/// The child's messages to the server.
#[derive(Serialize, Deserialize)]
pub enum FromChild {
    /// The instance is ready.
    Ready,
    /// Setting up failed.
    Failed(ErrorMsg),
    /// A response (or error, or flags) for one request of a batch.
    Response {
        /// The batch.
        batch: u64,
        /// The request's index in it.
        request: u32,
        /// Response flags.
        flags: u32,
        /// What it carries.
        answer: Answer,
    },
    /// The backend starts an inference on another model.
    Call(Box<CallMsg>),
    /// The backend cancelled one of its calls.
    CancelCall {
        /// The call.
        call: u64,
    },
    /// The backend's `execute` returned.
    Executed {
        /// The batch.
        batch: u64,
        /// Its error, if it failed.
        error: Option<ErrorMsg>,
    },
}
