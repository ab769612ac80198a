//! The response cache, as Triton defines it: `--cache-config local,size=<bytes>` gives the
//! server a cache, and a model opts in with `response_cache { enable: true }`. A request's key
//! covers the model, the version and every input (name, datatype, shape and bytes) and the
//! requested outputs; only successful responses are stored, least recently used first out
//! within the byte budget. Decoupled models, sequence-batched models and ensembles never use
//! it (as in Triton), nor requests whose tensors travel through shared memory or that ask for
//! classification. A full cache evicts; it never fails a request.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::server::{InferRequest, InferResponse, InputData};

/// A cache key: the SHA-256 of everything that decides the response.
pub type Key = [u8; 32];

/// Bytes counted for an entry beyond its outputs' data (names, shapes, bookkeeping).
const ENTRY_OVERHEAD: usize = 256;

/// The server's response cache.
pub struct ResponseCache {
    /// Most bytes the entries may hold.
    budget: usize,
    /// The entries and their use order.
    state: Mutex<Lru>,
}

/// Entries with their last use, and the bytes they hold.
#[derive(Default)]
struct Lru {
    /// Entries by key.
    entries: HashMap<Key, Entry>,
    /// Keys by last use (oldest first).
    order: BTreeMap<u64, Key>,
    /// The use counter.
    tick: u64,
    /// Bytes held.
    used: usize,
}

/// One cached response.
struct Entry {
    /// The response.
    response: InferResponse,
    /// Bytes it counts for.
    size: usize,
    /// Its last use.
    tick: u64,
}

static CACHE: OnceLock<ResponseCache> = OnceLock::new();

/// Gives this process its response cache (once, before models load).
pub fn configure(cache: ResponseCache) -> Result<()> {
    CACHE
        .set(cache)
        .map_err(|_| Error::invalid("the response cache is configured already"))
}

/// The process's response cache, if it has one.
pub fn global() -> Option<&'static ResponseCache> {
    CACHE.get()
}

impl ResponseCache {
    /// A local cache of at most `budget` bytes.
    pub fn local(budget: usize) -> Self {
        ResponseCache {
            budget,
            state: Mutex::new(Lru::default()),
        }
    }

    /// Reads Triton's `--cache-config` value: `local,size=<bytes>`.
    pub fn from_config(spec: &str) -> Result<Self> {
        let mut parts = spec.split(',').map(str::trim);
        let kind = parts.next().unwrap_or_default();
        if kind != "local" {
            return Err(Error::invalid(format!(
                "--cache-config '{spec}': the cache kind is '{kind}'; this server has 'local' \
                 (local,size=<bytes>)"
            )));
        }
        let mut size = None;
        for part in parts {
            match part.split_once('=') {
                Some(("size", value)) => {
                    size = Some(value.trim().parse::<usize>().map_err(|_| {
                        Error::invalid(format!(
                            "--cache-config '{spec}': size '{value}' is not a number of bytes"
                        ))
                    })?);
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "--cache-config '{spec}': unknown setting '{part}' (local takes size=<bytes>)"
                    )));
                }
            }
        }
        let size = size.ok_or_else(|| {
            Error::invalid(format!(
                "--cache-config '{spec}': give the size: local,size=<bytes>"
            ))
        })?;
        Ok(ResponseCache::local(size))
    }

    /// The most bytes the cache holds.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The key of a request to a model version; none when the request cannot be cached
    /// (tensors in shared memory, classification or shared-memory outputs).
    pub fn key(request: &InferRequest, version: i64) -> Option<Key> {
        if !request.delivery.is_empty() {
            return None;
        }
        let mut hash = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        field(request.model_name.as_bytes());
        field(&version.to_le_bytes());
        let mut inputs: Vec<_> = request.inputs.iter().collect();
        inputs.sort_by(|a, b| a.name.cmp(&b.name));
        for input in inputs {
            let InputData::Owned(data) = &input.data else {
                return None;
            };
            field(input.name.as_bytes());
            field(&input.datatype.0.to_le_bytes());
            let shape: Vec<u8> = input.shape.iter().flat_map(|d| d.to_le_bytes()).collect();
            field(&shape);
            field(data);
        }
        let mut outputs: Vec<&String> = request.outputs.iter().collect();
        outputs.sort();
        for output in outputs {
            field(output.as_bytes());
        }
        Some(hash.finalize().into())
    }

    /// The cached response for a key (marked as just used).
    pub fn get(&self, key: &Key) -> Option<InferResponse> {
        let mut lru = self.state.lock();
        lru.tick += 1;
        let tick = lru.tick;
        let old = {
            let entry = lru.entries.get_mut(key)?;
            std::mem::replace(&mut entry.tick, tick)
        };
        lru.order.remove(&old);
        lru.order.insert(tick, *key);
        lru.entries.get(key).map(|e| e.response.clone())
    }

    /// Stores a successful response, evicting the least recently used entries to make room;
    /// one larger than the whole budget is not stored.
    pub fn put(&self, key: Key, response: &InferResponse) {
        let size = ENTRY_OVERHEAD
            + response
                .outputs
                .iter()
                .map(|o| o.name.len() + o.data.len() + 8 * o.shape.len())
                .sum::<usize>();
        if size > self.budget || response.outputs.iter().any(|o| o.shm.is_some()) {
            return;
        }
        let mut lru = self.state.lock();
        if let Some(old) = lru.entries.remove(&key) {
            lru.order.remove(&old.tick);
            lru.used -= old.size;
        }
        while lru.used + size > self.budget {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some(gone) = lru.entries.remove(&oldest) {
                lru.used -= gone.size;
            }
        }
        lru.tick += 1;
        let tick = lru.tick;
        lru.order.insert(tick, key);
        lru.used += size;
        lru.entries.insert(
            key,
            Entry {
                response: response.clone(),
                size,
                tick,
            },
        );
    }

    /// (entries, bytes held).
    pub fn usage(&self) -> (usize, usize) {
        let lru = self.state.lock();
        (lru.entries.len(), lru.used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::OutputData;
    use bytes::Bytes;
    use ferrum_backend_api::DataType;

    fn response(bytes: usize) -> InferResponse {
        InferResponse {
            model_name: "m".into(),
            model_version: 1,
            id: String::new(),
            parameters: Vec::new(),
            outputs: vec![OutputData {
                name: "O".into(),
                datatype: DataType::UINT8,
                shape: vec![bytes as i64],
                data: Bytes::from(vec![1u8; bytes]),
                shm: None,
            }],
        }
    }

    #[test]
    fn parses_triton_s_local_config() {
        assert_eq!(
            ResponseCache::from_config("local,size=1048576")
                .unwrap()
                .budget(),
            1 << 20
        );
        for bad in [
            "redis,host=x",
            "local",
            "local,size=big",
            "local,size=1,ttl=3",
        ] {
            assert!(ResponseCache::from_config(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn evicts_the_least_recently_used_within_the_budget() {
        let cache = ResponseCache::local(3 * (ENTRY_OVERHEAD + 1000 + 9));
        for k in 0..3u8 {
            cache.put([k; 32], &response(1000));
        }
        assert_eq!(cache.usage().0, 3);
        // Using 0 makes 1 the oldest; a fourth entry evicts it.
        assert!(cache.get(&[0; 32]).is_some());
        cache.put([3; 32], &response(1000));
        assert!(cache.get(&[1; 32]).is_none());
        assert!(cache.get(&[0; 32]).is_some() && cache.get(&[3; 32]).is_some());
        // Too big for the whole budget: not stored, nothing evicted.
        cache.put([9; 32], &response(10_000));
        assert!(cache.get(&[9; 32]).is_none());
        assert_eq!(cache.usage().0, 3);
    }
}
