//! A keep-alive HTTP/1.1 connection (hyper) and the KServe v2 HTTP request bodies.

use crate::cli::TensorFormat;
use crate::inputs::InputTensor;
use crate::measure::{Marks, SharedMarks};
use crate::shm::ShmLayout;
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection that reconnects when it breaks.
pub struct HttpConn {
    authority: String,
    sender: Option<SendRequest<Full<Bytes>>>,
    marks: Arc<SharedMarks>,
}

/// A TCP stream that marks the time of each write that moved bytes (the last one of a request
/// is when it was out) and of the first read that brought bytes after a write (when the
/// response began to arrive). An HTTP/1.1 client has one request in flight, so these are
/// that request's marks.
struct MarkedStream {
    inner: TcpStream,
    marks: Arc<SharedMarks>,
    awaiting_answer: bool,
}

impl MarkedStream {
    fn wrote(&mut self, result: &Poll<io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.marks.mark_sent();
            self.awaiting_answer = true;
        }
    }
}

impl AsyncRead for MarkedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.awaiting_answer
            && matches!(result, Poll::Ready(Ok(())))
            && buf.filled().len() > before
        {
            this.awaiting_answer = false;
            this.marks.mark_answered();
        }
        result
    }
}

impl AsyncWrite for MarkedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A prepared HTTP request: method, path, body and the binary-header length.
#[derive(Clone, Debug)]
pub struct HttpRequest {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Body bytes.
    pub body: Bytes,
    /// `Inference-Header-Content-Length` when the body carries binary tensors.
    pub header_len: Option<usize>,
}

impl HttpConn {
    /// A connection to host:port (connects lazily).
    pub fn new(authority: &str) -> Self {
        Self {
            authority: authority.to_string(),
            sender: None,
            marks: Arc::new(SharedMarks::new()),
        }
    }

    /// The marks of the latest request: its last byte written, its response's first byte read.
    pub fn marks(&self) -> Option<Marks> {
        self.marks.get()
    }

    /// Opens the connection now if it is not open.
    pub async fn ensure_connected(&mut self) -> Result<()> {
        self.connect().await.map(|_| ())
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        let ready = match &self.sender {
            Some(s) => !s.is_closed(),
            None => false,
        };
        if !ready {
            let stream = TcpStream::connect(&self.authority)
                .await
                .with_context(|| format!("cannot connect to {}", self.authority))?;
            stream.set_nodelay(true).context("set TCP_NODELAY")?;
            let stream = MarkedStream {
                inner: stream,
                marks: self.marks.clone(),
                awaiting_answer: false,
            };
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("HTTP handshake")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| anyhow!("no HTTP connection"))
    }

    /// Sends a request and returns the status and the whole response body.
    pub async fn send(&mut self, req: &HttpRequest) -> Result<(StatusCode, Bytes)> {
        let authority = self.authority.clone();
        let sender = self.connect().await?;
        sender.ready().await.context("HTTP connection not ready")?;
        let mut builder = Request::builder()
            .method(req.method.clone())
            .uri(req.path.as_str())
            .header(header::HOST, authority);
        if let Some(n) = req.header_len {
            builder = builder
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header("Inference-Header-Content-Length", n);
        } else if !req.body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(req.body.clone()))
            .context("build HTTP request")?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .context("HTTP request failed")?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .context("read HTTP body")?
                .to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        }
        .await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    /// GETs a path and parses the JSON answer; non-2xx statuses become errors.
    pub async fn get_json(&mut self, path: &str) -> Result<Value> {
        let req = HttpRequest {
            method: Method::GET,
            path: path.to_string(),
            body: Bytes::new(),
            header_len: None,
        };
        let (status, body) = self.send(&req).await?;
        check(status, &body, path)?;
        serde_json::from_slice(&body).with_context(|| format!("GET {path}: response is not JSON"))
    }

    /// POSTs a JSON body; non-2xx statuses become errors.
    pub async fn post_json(&mut self, path: &str, body: &Value) -> Result<()> {
        let req = HttpRequest {
            method: Method::POST,
            path: path.to_string(),
            body: Bytes::from(body.to_string()),
            header_len: None,
        };
        let (status, body) = self.send(&req).await?;
        check(status, &body, path)
    }
}

/// Turns a non-2xx status into an error carrying the server's message.
pub fn check(status: StatusCode, body: &[u8], what: &str) -> Result<()> {
    if status.is_success() {
        return Ok(());
    }
    let msg = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    bail!("{what}: HTTP {status}: {msg}")
}

/// The model's URL path prefix (`/v2/models/m[/versions/v]`).
pub fn model_path(model: &str, version: &str) -> String {
    if version.is_empty() {
        format!("/v2/models/{model}")
    } else {
        format!("/v2/models/{model}/versions/{version}")
    }
}

/// Builds an inference request body for one data set.
pub fn infer_request(
    model: &str,
    version: &str,
    inputs: &[InputTensor],
    outputs: &[String],
    input_format: TensorFormat,
    output_format: TensorFormat,
    shm: Option<&ShmLayout>,
) -> HttpRequest {
    let mut binary = Vec::new();
    let json_inputs: Vec<Value> = inputs
        .iter()
        .map(|t| {
            let mut entry = json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape });
            if let Some(region) = shm.and_then(|s| s.input(&t.name)) {
                entry["parameters"] = json!({
                    "shared_memory_region": region.name,
                    "shared_memory_byte_size": region.size,
                    "shared_memory_offset": 0,
                });
            } else if input_format == TensorFormat::Binary {
                let raw = t.raw();
                entry["parameters"] = json!({ "binary_data_size": raw.len() });
                binary.extend_from_slice(&raw);
            } else {
                entry["data"] = t.json_data();
            }
            entry
        })
        .collect();
    let json_outputs: Vec<Value> = outputs
        .iter()
        .map(|name| {
            let params = match shm.and_then(|s| s.output(name)) {
                Some(region) => json!({
                    "shared_memory_region": region.name,
                    "shared_memory_byte_size": region.size,
                }),
                None => json!({ "binary_data": output_format == TensorFormat::Binary }),
            };
            json!({ "name": name, "parameters": params })
        })
        .collect();
    let mut doc = Map::new();
    doc.insert("inputs".into(), Value::Array(json_inputs));
    doc.insert("outputs".into(), Value::Array(json_outputs));
    let header = Value::Object(doc).to_string().into_bytes();
    let path = format!("{}/infer", model_path(model, version));
    if binary.is_empty() {
        return HttpRequest {
            method: Method::POST,
            path,
            body: Bytes::from(header),
            header_len: None,
        };
    }
    let header_len = header.len();
    let mut body = header;
    body.extend_from_slice(&binary);
    HttpRequest {
        method: Method::POST,
        path,
        body: Bytes::from(body),
        header_len: Some(header_len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::Values;

    /// A one-connection HTTP server that answers each request `delay` after reading it.
    fn slow_server(delay: std::time::Duration, requests: usize) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            for _ in 0..requests {
                let mut head = Vec::new();
                let mut byte = [0u8];
                while !head.ends_with(b"\r\n\r\n") {
                    s.read_exact(&mut byte).unwrap();
                    head.push(byte[0]);
                }
                std::thread::sleep(delay);
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .unwrap();
            }
        });
        authority
    }

    #[tokio::test]
    async fn marks_split_at_the_socket() {
        let delay = std::time::Duration::from_millis(30);
        let mut conn = HttpConn::new(&slow_server(delay, 2));
        assert_eq!(conn.marks(), None);
        let req = HttpRequest {
            method: Method::GET,
            path: "/v2/health/ready".into(),
            body: Bytes::new(),
            header_len: None,
        };
        for _ in 0..2 {
            let start = std::time::Instant::now();
            let (status, body) = conn.send(&req).await.unwrap();
            let end = std::time::Instant::now();
            assert_eq!((status, body.as_ref()), (StatusCode::OK, &b"ok"[..]));
            let m = conn.marks().unwrap();
            // Sent after the call began, answered after the server's delay, before the end.
            assert!(start <= m.sent && m.answered <= end, "{m:?}");
            assert!(m.answered - m.sent >= delay, "{m:?}");
            assert!(m.sent - start < delay && end - m.answered < delay, "{m:?}");
        }
    }

    #[test]
    fn binary_body_layout() {
        let t = InputTensor {
            name: "A".into(),
            datatype: "INT32".into(),
            shape: vec![1, 2],
            values: Values::Int(vec![1, 2]),
        };
        let req = infer_request(
            "m",
            "",
            std::slice::from_ref(&t),
            &["O".into()],
            TensorFormat::Binary,
            TensorFormat::Binary,
            None,
        );
        let n = req.header_len.unwrap();
        let head: Value = serde_json::from_slice(&req.body[..n]).unwrap();
        assert_eq!(head["inputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(&req.body[n..], &[1, 0, 0, 0, 2, 0, 0, 0]);
        let req = infer_request(
            "m",
            "2",
            &[t],
            &[],
            TensorFormat::Json,
            TensorFormat::Json,
            None,
        );
        assert!(req.header_len.is_none());
        assert_eq!(req.path, "/v2/models/m/versions/2/infer");
        let doc: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(doc["inputs"][0]["data"], json!([1, 2]));
    }
}
