//! A keep-alive HTTP/1.1 connection (hyper) and the KServe v2 HTTP request bodies.

use crate::cli::TensorFormat;
use crate::inputs::InputTensor;
use crate::shm::ShmLayout;
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection that reconnects when it breaks.
pub struct HttpConn {
    authority: String,
    sender: Option<SendRequest<Full<Bytes>>>,
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
        }
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
