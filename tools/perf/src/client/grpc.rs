//! gRPC (tonic) inference: unary ModelInfer and streaming ModelStreamInfer.

use crate::inputs::InputTensor;
use crate::proto::inference as pb;
use crate::shm::ShmLayout;
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use pb::infer_parameter::ParameterChoice;
use std::collections::HashMap;
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;

/// A gRPC client over its own HTTP/2 connection.
pub type Client = GrpcInferenceServiceClient<Channel>;

/// Connects a client to host:port (one HTTP/2 connection).
pub async fn connect(authority: &str) -> Result<Client> {
    let channel = Channel::from_shared(format!("http://{authority}"))
        .with_context(|| format!("bad gRPC address '{authority}'"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to gRPC server at {authority}"))?;
    Ok(GrpcInferenceServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

fn string_param(s: &str) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(ParameterChoice::StringParam(s.to_string())),
    }
}

fn int_param(n: usize) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(ParameterChoice::Int64Param(
            i64::try_from(n).unwrap_or(i64::MAX),
        )),
    }
}

/// Builds a ModelInferRequest for one data set (raw contents, or shared memory regions).
pub fn infer_request(
    model: &str,
    version: &str,
    inputs: &[InputTensor],
    outputs: &[String],
    shm: Option<&ShmLayout>,
) -> pb::ModelInferRequest {
    let mut raw = Vec::new();
    let tensors = inputs
        .iter()
        .map(|t| {
            let mut parameters = HashMap::new();
            if let Some(region) = shm.and_then(|s| s.input(&t.name)) {
                parameters.insert(
                    "shared_memory_region".to_string(),
                    string_param(&region.name),
                );
                parameters.insert(
                    "shared_memory_byte_size".to_string(),
                    int_param(region.size),
                );
                parameters.insert("shared_memory_offset".to_string(), int_param(0));
            } else {
                raw.push(Bytes::from(t.raw()));
            }
            pb::model_infer_request::InferInputTensor {
                name: t.name.clone(),
                datatype: t.datatype.clone(),
                shape: t.shape.clone(),
                parameters,
                contents: None,
            }
        })
        .collect();
    let outputs = outputs
        .iter()
        .map(|name| {
            let mut parameters = HashMap::new();
            if let Some(region) = shm.and_then(|s| s.output(name)) {
                parameters.insert(
                    "shared_memory_region".to_string(),
                    string_param(&region.name),
                );
                parameters.insert(
                    "shared_memory_byte_size".to_string(),
                    int_param(region.size),
                );
            }
            pb::model_infer_request::InferRequestedOutputTensor {
                name: name.clone(),
                parameters,
            }
        })
        .collect();
    pb::ModelInferRequest {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id: String::new(),
        parameters: HashMap::new(),
        inputs: tensors,
        outputs,
        raw_input_contents: raw,
    }
}

/// One bidirectional ModelStreamInfer stream with one request in flight at a time.
pub struct StreamSession {
    tx: mpsc::Sender<pb::ModelInferRequest>,
    rx: Streaming<pb::ModelStreamInferResponse>,
}

impl StreamSession {
    /// Opens a stream on a client.
    pub async fn open(client: &mut Client) -> Result<Self> {
        let (tx, rx) = mpsc::channel(4);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let rx = client
            .model_stream_infer(stream)
            .await
            .context("cannot open ModelStreamInfer stream")?
            .into_inner();
        Ok(Self { tx, rx })
    }

    /// Sends a request and waits for its response.
    pub async fn infer(&mut self, req: pb::ModelInferRequest) -> Result<()> {
        self.tx
            .send(req)
            .await
            .map_err(|_| anyhow!("stream closed by the server"))?;
        let msg = self
            .rx
            .message()
            .await
            .map_err(|s| anyhow!("stream error: {}", s.message()))?
            .ok_or_else(|| anyhow!("stream ended before a response"))?;
        if !msg.error_message.is_empty() {
            bail!("{}", msg.error_message);
        }
        Ok(())
    }
}
