//! gRPC (tonic) inference: unary ModelInfer and streaming ModelStreamInfer.

use crate::inputs::InputTensor;
use crate::measure::{Marks, SharedMarks};
use crate::proto::inference as pb;
use crate::shm::ShmLayout;
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::uri::PathAndQuery;
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use pb::infer_parameter::ParameterChoice;
use prost::Message;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// A gRPC client over its own HTTP/2 connection.
pub type Client = GrpcInferenceServiceClient<Channel>;

const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
const MODEL_STREAM_INFER: &str = "/inference.GRPCInferenceService/ModelStreamInfer";
const SERVER_READY: &str = "/inference.GRPCInferenceService/ServerReady";

async fn channel(authority: &str) -> Result<Channel> {
    Channel::from_shared(format!("http://{authority}"))
        .with_context(|| format!("bad gRPC address '{authority}'"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to gRPC server at {authority}"))
}

/// Connects a client to host:port (one HTTP/2 connection).
pub async fn connect(authority: &str) -> Result<Client> {
    Ok(GrpcInferenceServiceClient::new(channel(authority).await?)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// Protobuf codec that marks when a request message is encoded (the request is out, as far
/// as the caller can tell: h2 writes it to the socket after this) and when a response message
/// begins to decode (it has arrived whole).
struct MarkingCodec<T, U> {
    marks: Arc<SharedMarks>,
    types: PhantomData<fn(T) -> U>,
}

impl<T, U> MarkingCodec<T, U> {
    fn new(marks: &Arc<SharedMarks>) -> Self {
        Self {
            marks: marks.clone(),
            types: PhantomData,
        }
    }
}

/// Encoder half of [`MarkingCodec`].
struct MarkingEncoder<T> {
    marks: Arc<SharedMarks>,
    types: PhantomData<fn(T)>,
}

/// Decoder half of [`MarkingCodec`].
struct MarkingDecoder<U> {
    marks: Arc<SharedMarks>,
    types: PhantomData<fn() -> U>,
}

impl<T, U> Codec for MarkingCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = MarkingEncoder<T>;
    type Decoder = MarkingDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        MarkingEncoder {
            marks: self.marks.clone(),
            types: PhantomData,
        }
    }

    fn decoder(&mut self) -> Self::Decoder {
        MarkingDecoder {
            marks: self.marks.clone(),
            types: PhantomData,
        }
    }
}

impl<T: Message> Encoder for MarkingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the request: {e}")))?;
        self.marks.mark_sent();
        Ok(())
    }
}

impl<U: Message + Default> Decoder for MarkingDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.marks.mark_answered();
        U::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode the response: {e}")))
    }
}

/// A gRPC client over its own HTTP/2 connection that marks its calls for the client split.
// Marks: the request message encoded, the response message about to decode.
pub struct MarkedClient {
    grpc: tonic::client::Grpc<Channel>,
    marks: Arc<SharedMarks>,
}

impl MarkedClient {
    /// Connects to host:port (one HTTP/2 connection).
    pub async fn connect(authority: &str) -> Result<Self> {
        Ok(Self {
            grpc: tonic::client::Grpc::new(channel(authority).await?)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
            marks: Arc::new(SharedMarks::new()),
        })
    }

    /// The marks of the latest call (or stream message).
    pub fn marks(&self) -> Option<Marks> {
        self.marks.get()
    }

    async fn unary<T, U>(&mut self, path: &'static str, req: T) -> Result<U, Status>
    where
        T: Message + Send + Sync + 'static,
        U: Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
        let codec = MarkingCodec::<T, U>::new(&self.marks);
        let response = self
            .grpc
            .unary(
                tonic::Request::new(req),
                PathAndQuery::from_static(path),
                codec,
            )
            .await?;
        Ok(response.into_inner())
    }

    /// Unary ModelInfer.
    pub async fn model_infer(&mut self, req: pb::ModelInferRequest) -> Result<()> {
        self.unary::<_, pb::ModelInferResponse>(MODEL_INFER, req)
            .await
            .map_err(|s| anyhow!("ModelInfer: {}", s.message()))?;
        Ok(())
    }

    /// ServerReady; an error when the server says it is not ready.
    pub async fn server_ready(&mut self) -> Result<()> {
        let r: pb::ServerReadyResponse = self
            .unary(SERVER_READY, pb::ServerReadyRequest {})
            .await
            .map_err(|s| anyhow!("ServerReady: {}", s.message()))?;
        if !r.ready {
            bail!("server not ready");
        }
        Ok(())
    }
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
    marks: Arc<SharedMarks>,
}

impl StreamSession {
    /// Opens a stream on a client; its messages are marked like the client's calls.
    pub async fn open(client: &mut MarkedClient) -> Result<Self> {
        let (tx, rx) = mpsc::channel(4);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        client
            .grpc
            .ready()
            .await
            .context("cannot open ModelStreamInfer stream: connection not ready")?;
        let codec =
            MarkingCodec::<pb::ModelInferRequest, pb::ModelStreamInferResponse>::new(&client.marks);
        let rx = client
            .grpc
            .streaming(
                tonic::Request::new(stream),
                PathAndQuery::from_static(MODEL_STREAM_INFER),
                codec,
            )
            .await
            .map_err(|s| anyhow!("cannot open ModelStreamInfer stream: {}", s.message()))?
            .into_inner();
        Ok(Self {
            tx,
            rx,
            marks: client.marks.clone(),
        })
    }

    /// The marks of the latest request on the stream.
    pub fn marks(&self) -> Option<Marks> {
        self.marks.get()
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
