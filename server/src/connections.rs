//! Hard edges of the network side: how many connections a port holds at once, and how long a
//! client may take to send a request's headers. Both frontends accept through
//! [`ConnectionLimit`]: over the limit, the accept loop stops taking connections until one
//! closes, so new clients wait in the kernel's listen queue (their own connect and request
//! timeouts apply) rather than being refused. The HTTP port is served by [`serve_http`], which
//! gives HTTP/1 connections a header read timeout (a client that trickles its headers, or a
//! keep-alive connection left idle, is closed when it runs out). A port with TLS
//! ([`ServerTls`]) runs each connection's handshake in that connection's own task, so a slow
//! or silent client never holds up the accept loop.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::server::TlsStream;

use crate::tls::ServerTls;

/// How many connections a port serves at once; `None` is no limit.
#[derive(Clone, Debug, Default)]
pub struct ConnectionLimit(Option<Arc<Semaphore>>);

impl ConnectionLimit {
    /// At most `max` connections at once; 0 means no limit.
    pub fn new(max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        ConnectionLimit((max > 0).then(|| Arc::new(Semaphore::new(max))))
    }

    /// Waits for room for one more connection; the connection holds the permit until it ends.
    async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let semaphore = self.0.as_ref()?;
        // The semaphore is never closed, so acquiring only fails if it were.
        Arc::clone(semaphore).acquire_owned().await.ok()
    }
}

/// Accepts the next TCP connection; transient errors (a peer that gave up during the
/// handshake) are skipped, others (out of file descriptors) are logged and retried after a
/// pause, so the accept loop never spins or stops.
async fn accept(listener: &TcpListener, what: &str) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                tracing::error!("{what}: cannot accept a connection: {e}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Errors that concern one connection only, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A connection's byte stream: plain TCP, or TLS over TCP once the handshake is done.
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// The stream as `dyn` reader and writer, whichever it is.
    fn as_pin(self: Pin<&mut Self>) -> Pin<&mut (dyn AsyncReadWrite + Send)> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp),
            Transport::Tls(tls) => Pin::new(tls.as_mut()),
        }
    }

    /// The TCP connection under it.
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => tls.get_ref().0,
        }
    }
}

/// A byte stream both ways (what [`Transport`] hands out).
trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin {}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncReadWrite for T {}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.as_pin().poll_read(cx, buf)
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.as_pin().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.as_pin().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(tcp) => tcp.is_write_vectored(),
            Transport::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.as_pin().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.as_pin().poll_shutdown(cx)
    }
}

/// Turns an accepted TCP connection into the port's transport: with TLS, after a successful
/// handshake; a failed one (a client that does not speak TLS, or without an accepted
/// client certificate) is logged at debug level and the connection dropped.
async fn secure(stream: TcpStream, tls: Option<&ServerTls>) -> Option<Transport> {
    let Some(tls) = tls else {
        return Some(Transport::Plain(stream));
    };
    let peer = stream.peer_addr().ok();
    match tls.accept(stream).await {
        Ok(stream) => Some(Transport::Tls(Box::new(stream))),
        Err(e) => {
            tracing::debug!(
                "{}: TLS handshake with {peer:?} failed: {e}",
                tls.files().protocol
            );
            None
        }
    }
}

/// A connection that counts against its port's [`ConnectionLimit`] until it is dropped.
pub struct LimitedStream {
    /// The connection.
    inner: Transport,
    /// Its place under the limit.
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for LimitedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.tcp().connect_info()
    }
}

/// A listener's connections as a stream (what tonic serves), admitted under a limit.
/// Dropping it closes the listening socket.
pub struct LimitedIncoming {
    /// The admitted connections (with TLS, those whose handshake succeeded), from
    /// [`admit_connections`]'s task.
    admitted: mpsc::Receiver<LimitedStream>,
}

impl LimitedIncoming {
    /// The connections of `listener`, at most as many at once as `limit` allows; with `tls`,
    /// each after its TLS handshake (run concurrently, off the accept loop). Call it inside
    /// the runtime.
    pub fn new(listener: TcpListener, limit: ConnectionLimit, tls: Option<Arc<ServerTls>>) -> Self {
        LimitedIncoming {
            admitted: admit_connections(listener, limit, tls, "gRPC"),
        }
    }
}

/// Accepts connections under `limit`; with TLS, each one's handshake runs in its own task.
/// The connections ready to serve come out of the returned channel. Stops (and lets go of
/// the listener) once the receiver is dropped.
fn admit_connections(
    listener: TcpListener,
    limit: ConnectionLimit,
    tls: Option<Arc<ServerTls>>,
    what: &'static str,
) -> mpsc::Receiver<LimitedStream> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                permit = limit.admit() => permit,
                () = tx.closed() => break,
            };
            let stream = tokio::select! {
                stream = accept(&listener, what) => stream,
                () = tx.closed() => break,
            };
            let Some(tls) = &tls else {
                let plain = LimitedStream {
                    inner: Transport::Plain(stream),
                    _permit: permit,
                };
                if tx.send(plain).await.is_err() {
                    break;
                }
                continue;
            };
            let tx = tx.clone();
            let tls = Arc::clone(tls);
            tokio::spawn(async move {
                let secured = tokio::select! {
                    secured = secure(stream, Some(&tls)) => secured,
                    () = tx.closed() => None,
                };
                if let Some(inner) = secured {
                    let _ = tx
                        .send(LimitedStream {
                            inner,
                            _permit: permit,
                        })
                        .await;
                }
            });
        }
    });
    rx
}

impl tokio_stream::Stream for LimitedIncoming {
    type Item = io::Result<LimitedStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .admitted
            .poll_recv(cx)
            .map(|next| next.map(Ok))
    }
}

/// How the HTTP port treats its clients.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Most connections at once.
    pub limit: ConnectionLimit,
    /// How long an HTTP/1 client may take to send a request's headers (and how long a
    /// keep-alive connection may sit idle); `None` waits forever.
    pub header_timeout: Option<Duration>,
    /// TLS for every connection; `None` serves plain HTTP.
    pub tls: Option<Arc<ServerTls>>,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets every
/// connection finish the request it is on (idle ones close at once) and returns once all
/// have closed.
pub async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    settings: HttpSettings,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    builder.http2().timer(TokioTimer::new());
    // Told to every connection when shutdown begins.
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each connection holds a receiver; all gone means all connections closed.
    let (open_tx, open_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = settings.limit.admit() => permit,
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            stream = accept(&listener, "HTTP") => stream,
            () = &mut shutdown => break,
        };
        let builder = builder.clone();
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop_rx.clone();
        let open = open_rx.clone();
        let tls = settings.tls.clone();
        tokio::spawn(async move {
            // A handshake still going on when shutdown begins is given up (a plain
            // connection is ready at once, so it is always served).
            let transport = tokio::select! {
                biased;
                transport = secure(stream, tls.as_deref()) => transport,
                _ = stop.wait_for(|s| *s) => None,
            };
            let Some(transport) = transport else {
                return;
            };
            let connection = builder.serve_connection(TokioIo::new(transport), service);
            tokio::pin!(connection);
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!("HTTP connection closed: {e}");
                        }
                        break;
                    }
                    changed = stop.wait_for(|s| *s), if !stopping => {
                        stopping = true;
                        if changed.is_ok() {
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            drop(permit);
            drop(open);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_rx);
    open_tx.closed().await;
}
