//! Control-plane calls over either protocol: model metadata/config, statistics, shm regions.

use super::grpc::{self, Client};
use super::http::{HttpConn, model_path};
use super::inprocess::CoreHandle;
use crate::cli::Protocol;
use crate::model::ModelInfo;
use crate::proto::inference as pb;
use crate::stats::ServerStats;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

/// A control connection to the server.
pub enum Control {
    /// Over HTTP.
    Http(HttpConn),
    /// Over gRPC.
    Grpc(Client),
    /// Straight to an in-process core.
    InProcess(CoreHandle),
}

fn status_err(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!("{what}: {}", s.message())
}

impl Control {
    /// Connects with the given protocol.
    pub async fn connect(protocol: Protocol, authority: &str) -> Result<Self> {
        Ok(match protocol {
            Protocol::Http => Self::Http(HttpConn::new(authority)),
            Protocol::Grpc => Self::Grpc(grpc::connect(authority).await?),
            Protocol::InProcess => {
                bail!("the in-process service kind has no address: use Control::InProcess")
            }
        })
    }

    /// Reads a model's metadata and config.
    pub async fn model_info(&mut self, model: &str, version: &str) -> Result<ModelInfo> {
        match self {
            Self::Http(c) => {
                let path = model_path(model, version);
                let meta = c
                    .get_json(&path)
                    .await
                    .with_context(|| format!("cannot read metadata of model '{model}'"))?;
                let config = c
                    .get_json(&format!("{path}/config"))
                    .await
                    .with_context(|| format!("cannot read config of model '{model}'"))?;
                ModelInfo::from_json(&meta, &config, version)
            }
            Self::Grpc(c) => {
                let meta = c
                    .model_metadata(pb::ModelMetadataRequest {
                        name: model.into(),
                        version: version.into(),
                    })
                    .await
                    .map_err(|s| {
                        status_err(&format!("cannot read metadata of model '{model}'"), s)
                    })?
                    .into_inner();
                let config = c
                    .model_config(pb::ModelConfigRequest {
                        name: model.into(),
                        version: version.into(),
                    })
                    .await
                    .map_err(|s| status_err(&format!("cannot read config of model '{model}'"), s))?
                    .into_inner();
                Ok(ModelInfo::from_proto(
                    &meta,
                    config.config.as_ref(),
                    version,
                ))
            }
            Self::InProcess(core) => core.model_info(model, version),
        }
    }

    /// Reads a model's cumulative inference statistics.
    pub async fn stats(&mut self, model: &str, version: &str) -> Result<ServerStats> {
        match self {
            Self::Http(c) => {
                let v = c
                    .get_json(&format!("{}/stats", model_path(model, version)))
                    .await?;
                Ok(ServerStats::from_json(&v))
            }
            Self::Grpc(c) => {
                let r = c
                    .model_statistics(pb::ModelStatisticsRequest {
                        name: model.into(),
                        version: version.into(),
                    })
                    .await
                    .map_err(|s| status_err("cannot read model statistics", s))?
                    .into_inner();
                Ok(ServerStats::from_proto(&r))
            }
            Self::InProcess(core) => core.stats(model, version),
        }
    }

    /// Registers a system shared memory region.
    pub async fn shm_register(&mut self, name: &str, key: &str, byte_size: usize) -> Result<()> {
        match self {
            Self::Http(c) => {
                c.post_json(
                    &format!("/v2/systemsharedmemory/region/{name}/register"),
                    &json!({ "key": key, "offset": 0, "byte_size": byte_size }),
                )
                .await
            }
            Self::Grpc(c) => {
                c.system_shared_memory_register(pb::SystemSharedMemoryRegisterRequest {
                    name: name.into(),
                    key: key.into(),
                    offset: 0,
                    byte_size: byte_size as u64,
                })
                .await
                .map_err(|s| status_err(&format!("cannot register region '{name}'"), s))?;
                Ok(())
            }
            Self::InProcess(_) => bail!("shared memory is not supported with -i in-process"),
        }
    }

    /// Unregisters a system shared memory region.
    pub async fn shm_unregister(&mut self, name: &str) -> Result<()> {
        match self {
            Self::Http(c) => {
                c.post_json(
                    &format!("/v2/systemsharedmemory/region/{name}/unregister"),
                    &json!({}),
                )
                .await
            }
            Self::Grpc(c) => {
                c.system_shared_memory_unregister(pb::SystemSharedMemoryUnregisterRequest {
                    name: name.into(),
                })
                .await
                .map_err(|s| status_err(&format!("cannot unregister region '{name}'"), s))?;
                Ok(())
            }
            Self::InProcess(_) => bail!("shared memory is not supported with -i in-process"),
        }
    }
}
