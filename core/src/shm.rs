//! Registered system shared-memory regions (Triton's shared memory extension): clients put
//! inputs into a POSIX shared-memory object and ask for outputs to be written into one,
//! instead of sending the bytes over the socket.
//!
//! A region stays mapped while any request uses it: unregistering removes its name at once,
//! and the mapping goes away when the last in-flight request that read or writes it is done.

use std::collections::BTreeMap;
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};
use parking_lot::Mutex;

use ferrum_backend_api::{ParamValue, Parameter};

use crate::error::{Error, ErrorKind, Result};
use crate::server::{InputData, OutputDelivery, ShmTarget};

/// Why CUDA shared memory registration is refused.
pub const CUDA_SHM_UNSUPPORTED: &str =
    "CUDA shared memory is not supported: this server has no GPU support; use system shared memory";

/// One registered region.
pub struct Region {
    /// The name clients refer to it by.
    pub name: String,
    /// The shared-memory key (`/name` as given to shm_open).
    pub key: String,
    /// Where the region starts inside the shared-memory object.
    pub offset: usize,
    /// The region's size.
    pub byte_size: usize,
    /// The mapping of the object from its start to the region's end.
    map: MmapRaw,
}

/// Bytes of a region lent to a request without copying; keeps the region mapped. The client
/// may change them at any time, so they are only ever read through raw pointers (never as a
/// Rust slice, which promises the bytes do not change).
#[derive(Clone)]
pub struct SharedBytes {
    /// The region.
    region: Arc<Region>,
    /// Start inside the region.
    start: usize,
    /// Length.
    len: usize,
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SharedBytes({}, {}+{})",
            self.region.name, self.start, self.len
        )
    }
}

impl SharedBytes {
    /// The first byte.
    pub fn as_ptr(&self) -> *const u8 {
        // SAFETY: `start` was bounds-checked against the region when this was made, and the
        // mapping lives as long as `region`.
        unsafe {
            self.region
                .map
                .as_ptr()
                .add(self.region.offset + self.start)
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy of the bytes as they are now.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len];
        // SAFETY: `len` bytes are mapped at `as_ptr()` (checked when made); a raw copy never
        // forms a reference to memory another process may write.
        unsafe { std::ptr::copy_nonoverlapping(self.as_ptr(), out.as_mut_ptr(), self.len) };
        out
    }
}

impl Region {
    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.byte_size => Ok(()),
            _ => Err(Error::invalid(format!(
                "shared memory region '{}' is {} bytes; offset {offset} + {len} bytes runs past its end",
                self.name, self.byte_size
            ))),
        }
    }

    /// `len` bytes at `offset` inside the region, without copying.
    pub fn read(self: &Arc<Self>, offset: usize, len: usize) -> Result<SharedBytes> {
        self.check(offset, len)?;
        Ok(SharedBytes {
            region: Arc::clone(self),
            start: offset,
            len,
        })
    }

    /// Where `len` bytes at `offset` inside the region start, for writing an output in place.
    pub fn writable_ptr(&self, offset: usize, len: usize) -> Result<*mut u8> {
        self.check(offset, len)?;
        // SAFETY: bounds checked above; the mapping is writable and lives as long as `self`.
        Ok(unsafe { self.map.as_mut_ptr().add(self.offset + offset) })
    }

    /// Copies `data` into the region at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        // SAFETY: bounds checked above; the mapping is writable and outlives this call.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.as_mut_ptr().add(self.offset + offset),
                data.len(),
            );
        }
        Ok(())
    }
}

/// The registered regions by name.
#[derive(Default)]
pub struct SharedMemory {
    /// Regions by name.
    regions: Mutex<BTreeMap<String, Arc<Region>>>,
}

/// The path of a POSIX shared-memory key on Linux.
fn key_path(key: &str) -> Result<std::path::PathBuf> {
    let name = key.strip_prefix('/').unwrap_or(key);
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::invalid(format!(
            "'{key}' is not a valid shared memory key"
        )));
    }
    Ok(std::path::Path::new("/dev/shm").join(name))
}

impl SharedMemory {
    /// Registers a region of the shared-memory object `key`.
    pub fn register(&self, name: &str, key: &str, offset: usize, byte_size: usize) -> Result<()> {
        if name.is_empty() {
            return Err(Error::invalid("a shared memory region needs a name"));
        }
        let mut regions = self.regions.lock();
        if regions.contains_key(name) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("shared memory region '{name}' is already registered"),
            ));
        }
        let path = key_path(key)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::invalid(format!("cannot open shared memory key '{key}': {e}")))?;
        let size = file
            .metadata()
            .map_err(|e| Error::invalid(format!("cannot read shared memory key '{key}': {e}")))?
            .len();
        let end = offset
            .checked_add(byte_size)
            .filter(|&end| end as u64 <= size && end > 0)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "shared memory key '{key}' holds {size} bytes; offset {offset} + byte_size {byte_size} does not fit"
                ))
            })?;
        let map = MmapOptions::new()
            .len(end)
            .map_raw(&file)
            .map_err(|e| Error::internal(format!("cannot map shared memory key '{key}': {e}")))?;
        regions.insert(
            name.to_string(),
            Arc::new(Region {
                name: name.to_string(),
                key: key.to_string(),
                offset,
                byte_size,
                map,
            }),
        );
        Ok(())
    }

    /// Unregisters one region, or all of them.
    pub fn unregister(&self, name: Option<&str>) -> Result<()> {
        let mut regions = self.regions.lock();
        match name {
            None => regions.clear(),
            Some(name) => {
                regions.remove(name).ok_or_else(|| {
                    Error::not_found(format!("shared memory region '{name}' is not registered"))
                })?;
            }
        }
        Ok(())
    }

    /// The registered regions (or the one named).
    pub fn status(&self, name: Option<&str>) -> Result<Vec<Arc<Region>>> {
        let regions = self.regions.lock();
        match name {
            None => Ok(regions.values().cloned().collect()),
            Some(name) => regions.get(name).cloned().map(|r| vec![r]).ok_or_else(|| {
                Error::not_found(format!("shared memory region '{name}' is not registered"))
            }),
        }
    }

    /// An input's bytes from shared memory, when its parameters name a region.
    pub fn input_bytes(&self, tensor: &str, params: &[Parameter]) -> Result<Option<InputData>> {
        let Some(target) = self.shm_target(tensor, params)? else {
            return Ok(None);
        };
        target
            .region
            .read(target.offset, target.byte_size)
            .map(|b| Some(InputData::Shared(b)))
    }

    /// How a requested output is to be delivered, from its parameters.
    pub fn output_delivery(&self, name: &str, params: &[Parameter]) -> Result<OutputDelivery> {
        let classification = int_param(params, "classification", name)?;
        if classification == Some(0) {
            return Err(Error::invalid(format!(
                "output '{name}': classification must ask for at least one class"
            )));
        }
        Ok(OutputDelivery {
            name: name.to_string(),
            classification,
            shm: self.shm_target(name, params)?,
        })
    }

    fn shm_target(&self, tensor: &str, params: &[Parameter]) -> Result<Option<ShmTarget>> {
        let region = match params
            .iter()
            .find(|p| p.key.as_str() == "shared_memory_region")
        {
            None => return Ok(None),
            Some(Parameter {
                value: ParamValue::Str(name),
                ..
            }) => self.get(name.as_str())?,
            Some(_) => {
                return Err(Error::invalid(format!(
                    "'{tensor}': shared_memory_region must be a string"
                )));
            }
        };
        let byte_size = int_param(params, "shared_memory_byte_size", tensor)?.ok_or_else(|| {
            Error::invalid(format!(
                "'{tensor}' names a shared memory region but no shared_memory_byte_size"
            ))
        })?;
        let offset = int_param(params, "shared_memory_offset", tensor)?.unwrap_or(0);
        Ok(Some(ShmTarget {
            region,
            offset,
            byte_size,
        }))
    }

    /// The region with this name.
    pub fn get(&self, name: &str) -> Result<Arc<Region>> {
        self.regions.lock().get(name).cloned().ok_or_else(|| {
            Error::invalid(format!("shared memory region '{name}' is not registered"))
        })
    }
}

/// A non-negative integer parameter.
fn int_param(params: &[Parameter], key: &str, owner: &str) -> Result<Option<usize>> {
    match params
        .iter()
        .find(|p| p.key.as_str() == key)
        .map(|p| &p.value)
    {
        None => Ok(None),
        Some(ParamValue::Int(v)) => usize::try_from(*v)
            .map(Some)
            .map_err(|_| Error::invalid(format!("'{owner}': {key} must not be negative"))),
        Some(_) => Err(Error::invalid(format!(
            "'{owner}': {key} must be an integer"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_read_write_and_bounds() {
        let key = format!("/ferrum-test-{}", std::process::id());
        let path = key_path(&key).unwrap();
        std::fs::write(&path, vec![0u8; 64]).unwrap();
        let shm = SharedMemory::default();
        shm.register("r", &key, 16, 32).unwrap();
        assert!(shm.register("r", &key, 0, 8).is_err(), "duplicate name");
        assert!(
            shm.register("big", &key, 60, 8).is_err(),
            "past the end of the object"
        );
        let region = shm.get("r").unwrap();
        region.write(4, &[1, 2, 3]).unwrap();
        assert_eq!(region.read(4, 3).unwrap().to_vec(), vec![1, 2, 3]);
        assert!(region.read(30, 4).is_err());
        assert!(region.write(usize::MAX, &[1]).is_err());
        let held = region.read(0, 8).unwrap();
        shm.unregister(Some("r")).unwrap();
        assert_eq!(held.len(), 8, "bytes stay readable after unregister");
        assert!(shm.get("r").is_err());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn keys_stay_in_dev_shm() {
        assert!(key_path("/../etc/passwd").is_err());
        assert!(key_path("a/b").is_err());
        assert!(key_path("/").is_err());
        assert_eq!(key_path("/x").unwrap(), std::path::Path::new("/dev/shm/x"));
    }
}
