//! The response cache, as Triton defines it: `--cache-config local,size=<bytes>` (an LRU in
//! this process) or `--cache-config redis,host=<host>,port=<port>` (entries in a Redis server,
//! shared by every server pointing at it) gives the server a cache, and a model opts in with
//! `response_cache { enable: true }`. A request's key covers the model, the version and every
//! input (name, datatype, shape and bytes) and the requested outputs; only successful
//! responses are stored. Decoupled models, sequence-batched models and ensembles never use it
//! (as in Triton), nor requests whose tensors travel through shared memory or that ask for
//! classification. A cache that is full, slow or unreachable degrades to no cache; it never
//! fails a request.

mod codec;
pub mod redis;

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::server::{InferRequest, InferResponse, InputData};
pub use redis::{RedisCache, RedisSettings};

/// A cache key: the SHA-256 of everything that decides the response.
pub type Key = [u8; 32];

/// Bytes counted for an entry beyond its outputs' data (names, shapes, bookkeeping).
const ENTRY_OVERHEAD: usize = 256;

/// The server's response cache: local or Redis.
pub enum ResponseCache {
    /// An LRU in this process's memory.
    Local(LocalCache),
    /// Entries in a Redis server.
    Redis(RedisCache),
}

/// A least-recently-used cache in this process, within a byte budget.
pub struct LocalCache {
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
        ResponseCache::Local(LocalCache::new(budget))
    }

    /// Reads Triton's `--cache-config` values. Each is `<cache>,<key>=<value>[,...]`, and
    /// like tritonserver the option may be repeated to give one setting at a time:
    /// `local,size=<bytes>` or `redis,host=<host>,port=<port>[,password=..,db=..,ttl=..]`.
    pub fn from_configs<S: AsRef<str>>(specs: &[S]) -> Result<Self> {
        let mut kind: Option<&str> = None;
        let mut settings: Vec<(&str, &str)> = Vec::new();
        for spec in specs {
            let spec = spec.as_ref();
            let mut parts = spec.split(',').map(str::trim);
            let this = parts.next().unwrap_or_default();
            if this != "local" && this != "redis" {
                return Err(Error::invalid(format!(
                    "--cache-config '{spec}': the cache kind is '{this}'; this server has                      'local' (local,size=<bytes>) and 'redis' (redis,host=<host>,port=<port>)"
                )));
            }
            if let Some(other) = kind
                && other != this
            {
                return Err(Error::invalid(format!(
                    "--cache-config: one cache at a time, not both '{other}' and '{this}'"
                )));
            }
            kind = Some(this);
            for part in parts.filter(|p| !p.is_empty()) {
                let (key, value) = part.split_once('=').ok_or_else(|| {
                    Error::invalid(format!(
                        "--cache-config '{spec}': '{part}' is not <key>=<value>"
                    ))
                })?;
                settings.push((key.trim(), value.trim()));
            }
        }
        match kind {
            Some("redis") => Ok(ResponseCache::Redis(RedisCache::new(RedisSettings::parse(
                settings,
            )?))),
            _ => {
                let mut size = None;
                for (key, value) in settings {
                    if key != "size" {
                        return Err(Error::invalid(format!(
                            "--cache-config local,{key}={value}: unknown setting '{key}' (local \
                             takes size=<bytes>)"
                        )));
                    }
                    size = Some(value.parse::<usize>().map_err(|_| {
                        Error::invalid(format!(
                            "--cache-config local,size={value}: '{value}' is not a number of bytes"
                        ))
                    })?);
                }
                let size = size.ok_or_else(|| {
                    Error::invalid("--cache-config local: give the size: local,size=<bytes>")
                })?;
                Ok(ResponseCache::local(size))
            }
        }
    }

    /// One line that says which cache this is, for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            ResponseCache::Local(local) => format!("local, {} bytes", local.budget),
            ResponseCache::Redis(redis) => {
                let s = redis.settings();
                let ttl = s
                    .ttl
                    .map_or("no expiry".to_string(), |t| format!("ttl {t} s"));
                format!("redis at {}:{} db {}, {ttl}", s.host, s.port, s.db)
            }
        }
    }

    /// The cached response for a key; none on a miss or when the cache cannot answer.
    pub async fn get(&self, key: &Key) -> Option<InferResponse> {
        match self {
            ResponseCache::Local(local) => local.get(key),
            ResponseCache::Redis(redis) => {
                let value = redis.get(key).await?;
                match codec::decode(&value) {
                    Ok(response) => Some(response),
                    Err(reason) => {
                        tracing::warn!("response cache: a Redis entry is unreadable ({reason})");
                        None
                    }
                }
            }
        }
    }

    /// Stores a successful response (a failure to store is not an error); one whose outputs
    /// were written into shared memory is never stored.
    pub async fn put(&self, key: Key, response: &InferResponse) {
        if response.outputs.iter().any(|o| o.shm.is_some()) {
            return;
        }
        match self {
            ResponseCache::Local(local) => local.put(key, response),
            ResponseCache::Redis(redis) => redis.set(&key, &codec::encode(response)).await,
        }
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
}

impl LocalCache {
    /// A cache of at most `budget` bytes.
    pub fn new(budget: usize) -> Self {
        LocalCache {
            budget,
            state: Mutex::new(Lru::default()),
        }
    }

    /// The most bytes the cache holds.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The cached response for a key (marked as just used).
    fn get(&self, key: &Key) -> Option<InferResponse> {
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
    fn put(&self, key: Key, response: &InferResponse) {
        let size = ENTRY_OVERHEAD
            + response
                .outputs
                .iter()
                .map(|o| o.name.len() + o.data.len() + 8 * o.shape.len())
                .sum::<usize>();
        if size > self.budget {
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
        let ResponseCache::Local(local) =
            ResponseCache::from_configs(&["local,size=1048576"]).unwrap()
        else {
            panic!("not local")
        };
        assert_eq!(local.budget(), 1 << 20);
        // Triton's Redis form gives one setting per option.
        let ResponseCache::Redis(redis) = ResponseCache::from_configs(&[
            "redis,host=127.0.0.1",
            "redis,port=6379",
            "redis,ttl=5",
        ])
        .unwrap() else {
            panic!("not redis")
        };
        assert_eq!(redis.settings().port, 6379);
        assert_eq!(redis.settings().ttl, Some(5));
        for bad in [
            "redis,host=x",
            "local",
            "local,size=big",
            "local,size=1,ttl=3",
            "memcached,host=x",
        ] {
            assert!(ResponseCache::from_configs(&[bad]).is_err(), "{bad}");
        }
        assert!(ResponseCache::from_configs(&["local,size=1", "redis,host=h,port=1"]).is_err());
    }

    #[test]
    fn evicts_the_least_recently_used_within_the_budget() {
        let cache = LocalCache::new(3 * (ENTRY_OVERHEAD + 1000 + 9));
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
