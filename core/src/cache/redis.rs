//! The Redis response cache: entries live in a Redis server shared by every Ferrum that points
//! at it, stored with `SET key value [EX ttl]` and read with `GET`, over a small pool of
//! connections speaking RESP. Redis being slow, full or gone never fails a request: a lookup
//! that cannot be answered in time is a miss, an insertion that cannot be made is skipped, and
//! after a failure the cache stays out of the way for a moment before it tries again.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::Key;
use crate::error::{Error, Result};

/// How long the cache stays out of the way after Redis failed.
const BACKOFF: Duration = Duration::from_secs(1);
/// The biggest bulk reply read back (a larger one is refused as a miss).
const MAX_VALUE: usize = 512 << 20;
/// Prefix of every key this server writes.
const KEY_PREFIX: &str = "ferrum:response:";

/// Where the Redis server is and how to talk to it (`--cache-config redis,<key>=<value>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// ACL user name (with `password`).
    pub user: Option<String>,
    /// Password, when the server asks for one.
    pub password: Option<String>,
    /// Database number.
    pub db: u32,
    /// Longest wait for a connection to be made.
    pub connect_timeout: Duration,
    /// Longest wait for one command's answer.
    pub socket_timeout: Duration,
    /// Connections kept open.
    pub pool_size: usize,
    /// Longest wait for a free connection of the pool.
    pub wait_timeout: Duration,
    /// Seconds an entry lives; none keeps entries until Redis evicts them.
    pub ttl: Option<u64>,
}

impl RedisSettings {
    /// Reads the settings of `redis,<key>=<value>` options (host and port are required).
    pub fn parse<'a>(settings: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut host = None;
        let mut port = None;
        let mut out = RedisSettings {
            host: String::new(),
            port: 0,
            user: None,
            password: None,
            db: 0,
            connect_timeout: Duration::from_millis(1000),
            socket_timeout: Duration::from_millis(1000),
            pool_size: 4,
            wait_timeout: Duration::from_millis(100),
            ttl: None,
        };
        let number = |key: &str, value: &str| {
            value.parse::<u64>().map_err(|_| {
                Error::invalid(format!(
                    "--cache-config redis,{key}={value}: '{value}' is not a whole number"
                ))
            })
        };
        // 0 means "wait forever" in Triton's Redis cache; here it is a long but bounded wait.
        let millis = |key: &str, value: &str| -> Result<Duration> {
            Ok(match number(key, value)? {
                0 => Duration::from_secs(3600),
                ms => Duration::from_millis(ms),
            })
        };
        for (key, value) in settings {
            match key {
                "host" => host = Some(value.to_string()),
                "port" => {
                    port = Some(u16::try_from(number(key, value)?).map_err(|_| {
                        Error::invalid(format!("--cache-config redis,port={value}: not a port"))
                    })?)
                }
                "user" => out.user = Some(value.to_string()),
                "password" => out.password = Some(value.to_string()),
                "db" => {
                    out.db = u32::try_from(number(key, value)?).map_err(|_| {
                        Error::invalid(format!("--cache-config redis,db={value}: too large"))
                    })?
                }
                "connect_timeout" => out.connect_timeout = millis(key, value)?,
                "socket_timeout" => out.socket_timeout = millis(key, value)?,
                "wait_timeout" => out.wait_timeout = millis(key, value)?,
                "pool_size" => {
                    out.pool_size = (number(key, value)? as usize).clamp(1, 1024);
                }
                "ttl" => {
                    out.ttl = match number(key, value)? {
                        0 => None,
                        seconds => Some(seconds),
                    }
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "--cache-config redis,{key}={value}: unknown setting '{key}' (redis takes \
                         host, port, user, password, db, connect_timeout, socket_timeout, \
                         pool_size, wait_timeout, ttl)"
                    )));
                }
            }
        }
        out.host = host.ok_or_else(|| {
            Error::invalid("--cache-config redis: give the host: --cache-config redis,host=<host>")
        })?;
        out.port = port.ok_or_else(|| {
            Error::invalid("--cache-config redis: give the port: --cache-config redis,port=<port>")
        })?;
        Ok(out)
    }
}

/// A response cache kept in a Redis server.
pub struct RedisCache {
    /// Connection settings.
    settings: RedisSettings,
    /// Idle open connections.
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection the pool may have.
    permits: Semaphore,
    /// Until when the cache is skipped after a failure.
    down_until: Mutex<Option<Instant>>,
}

/// One open connection.
struct Connection {
    /// The buffered stream.
    stream: BufReader<TcpStream>,
}

/// A RESP reply.
#[derive(Debug)]
enum Reply {
    /// `+OK` and friends.
    Simple(String),
    /// An integer.
    Integer,
    /// A bulk string; none for nil.
    Bulk(Option<Vec<u8>>),
}

/// An I/O or protocol failure talking to Redis.
type Failure = String;

impl RedisCache {
    /// A cache for the Redis server the settings name (no connection is made yet).
    pub fn new(settings: RedisSettings) -> Self {
        let permits = Semaphore::new(settings.pool_size);
        RedisCache {
            settings,
            idle: Mutex::new(Vec::new()),
            permits,
            down_until: Mutex::new(None),
        }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Checks that the server answers (used at start-up for a log line, never fatal).
    pub async fn ping(&self) -> std::result::Result<(), Failure> {
        self.run(&[b"PING"]).await.map(|_| ())
    }

    /// The stored value for a key; none on a miss or when Redis cannot answer.
    pub async fn get(&self, key: &Key) -> Option<Vec<u8>> {
        let name = redis_key(key);
        match self.run(&[b"GET", name.as_bytes()]).await {
            Ok(Reply::Bulk(value)) => value,
            Ok(other) => {
                tracing::warn!("response cache: Redis answered GET with {other:?}");
                None
            }
            Err(_) => None,
        }
    }

    /// Stores a value under a key (with the configured expiry); failures are logged and skipped.
    pub async fn set(&self, key: &Key, value: &[u8]) {
        let name = redis_key(key);
        let ttl = self.settings.ttl.map(|t| t.to_string());
        let mut args: Vec<&[u8]> = vec![b"SET", name.as_bytes(), value];
        if let Some(ttl) = &ttl {
            args.push(b"EX");
            args.push(ttl.as_bytes());
        }
        if let Ok(reply) = self.run(&args).await
            && !matches!(&reply, Reply::Simple(s) if s == "OK")
        {
            tracing::warn!("response cache: Redis answered SET with {reply:?}");
        }
    }

    /// Runs one command on a pooled connection; a failure drops the connection and backs off.
    async fn run(&self, args: &[&[u8]]) -> std::result::Result<Reply, Failure> {
        if let Some(until) = *self.down_until.lock()
            && Instant::now() < until
        {
            return Err("Redis is backing off after a failure".into());
        }
        let Ok(Ok(_permit)) =
            tokio::time::timeout(self.settings.wait_timeout, self.permits.acquire()).await
        else {
            return Err("no free Redis connection within wait_timeout".into());
        };
        let pooled = self.idle.lock().pop();
        let outcome = async {
            let mut connection = match pooled {
                Some(c) => c,
                None => self.connect().await?,
            };
            let reply = self.command(&mut connection, args).await?;
            Ok::<_, Failure>((connection, reply))
        }
        .await;
        match outcome {
            Ok((connection, reply)) => {
                self.idle.lock().push(connection);
                let mut down = self.down_until.lock();
                if down.take().is_some() {
                    tracing::info!(
                        "response cache: Redis at {}:{} answers again",
                        self.settings.host,
                        self.settings.port
                    );
                }
                Ok(reply)
            }
            Err(reason) => {
                let mut down = self.down_until.lock();
                if down.is_none() {
                    tracing::warn!(
                        "response cache: Redis at {}:{} failed ({reason}); requests run without \
                         the cache until it answers again",
                        self.settings.host,
                        self.settings.port
                    );
                }
                *down = Some(Instant::now() + BACKOFF);
                // Other idle connections are probably dead too.
                self.idle.lock().clear();
                Err(reason)
            }
        }
    }

    /// Opens a connection, authenticating and selecting the database when configured.
    async fn connect(&self) -> std::result::Result<Connection, Failure> {
        let address = (self.settings.host.as_str(), self.settings.port);
        let stream =
            tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(address))
                .await
                .map_err(|_| "connecting timed out".to_string())?
                .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut connection = Connection {
            stream: BufReader::new(stream),
        };
        if let Some(password) = &self.settings.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &self.settings.user {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            self.expect_ok(&mut connection, &args, "AUTH").await?;
        }
        if self.settings.db != 0 {
            let db = self.settings.db.to_string();
            self.expect_ok(&mut connection, &[b"SELECT", db.as_bytes()], "SELECT")
                .await?;
        }
        Ok(connection)
    }

    /// Runs a command that must answer `+OK`.
    async fn expect_ok(
        &self,
        connection: &mut Connection,
        args: &[&[u8]],
        what: &str,
    ) -> std::result::Result<(), Failure> {
        match self.command(connection, args).await? {
            Reply::Simple(s) if s == "OK" => Ok(()),
            other => Err(format!("{what} was answered with {other:?}")),
        }
    }

    /// Sends one command and reads its reply within the socket timeout.
    async fn command(
        &self,
        connection: &mut Connection,
        args: &[&[u8]],
    ) -> std::result::Result<Reply, Failure> {
        let mut out = Vec::with_capacity(32 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        let exchange = async {
            connection
                .stream
                .get_mut()
                .write_all(&out)
                .await
                .map_err(|e| format!("cannot send: {e}"))?;
            read_reply(&mut connection.stream).await
        };
        tokio::time::timeout(self.settings.socket_timeout, exchange)
            .await
            .map_err(|_| "no answer within socket_timeout".to_string())?
    }
}

/// The Redis key of a cache key.
fn redis_key(key: &Key) -> String {
    let mut name = String::with_capacity(KEY_PREFIX.len() + 64);
    name.push_str(KEY_PREFIX);
    for b in key {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// Reads one reply (errors from Redis come back as failures).
async fn read_reply(stream: &mut BufReader<TcpStream>) -> std::result::Result<Reply, Failure> {
    let mut line = Vec::new();
    stream
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("cannot read: {e}"))?;
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err("the connection closed".into());
    }
    let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    match line[0] {
        b'+' => Ok(Reply::Simple(text)),
        b'-' => Err(format!("Redis error: {text}")),
        b':' => Ok(Reply::Integer),
        b'$' => {
            let len: i64 = text
                .parse()
                .map_err(|_| format!("bad bulk length '{text}'"))?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            let len = len as usize;
            if len > MAX_VALUE {
                return Err(format!(
                    "a {len}-byte value is larger than this cache reads"
                ));
            }
            let mut value = vec![0u8; len + 2];
            stream
                .read_exact(&mut value)
                .await
                .map_err(|e| format!("cannot read: {e}"))?;
            value.truncate(len);
            Ok(Reply::Bulk(Some(value)))
        }
        other => Err(format!("unexpected reply type '{}'", other as char)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_triton_s_settings() {
        let s = RedisSettings::parse([
            ("host", "cache.local"),
            ("port", "6380"),
            ("password", "pw"),
            ("db", "2"),
            ("socket_timeout", "0"),
            ("ttl", "60"),
        ])
        .unwrap();
        assert_eq!((s.host.as_str(), s.port, s.db), ("cache.local", 6380, 2));
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert_eq!(s.ttl, Some(60));
        assert_eq!(s.socket_timeout, Duration::from_secs(3600));
        for bad in [
            vec![("host", "h")],
            vec![("port", "1")],
            vec![("host", "h"), ("port", "70000")],
            vec![("host", "h"), ("port", "1"), ("colour", "blue")],
            vec![("host", "h"), ("port", "1"), ("ttl", "soon")],
        ] {
            assert!(RedisSettings::parse(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_prefixed_hex() {
        let k = redis_key(&[0xab; 32]);
        assert!(k.starts_with(KEY_PREFIX));
        assert_eq!(k.len(), KEY_PREFIX.len() + 64);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_miss_then_backs_off() {
        // A port nobody listens on: bind, learn the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let port = port.to_string();
        let cache = RedisCache::new(
            RedisSettings::parse([("host", "127.0.0.1"), ("port", &*port)]).unwrap(),
        );
        assert!(cache.get(&[1; 32]).await.is_none());
        cache.set(&[1; 32], b"x").await;
        assert!(cache.down_until.lock().is_some());
        assert!(cache.ping().await.is_err());
    }
}
