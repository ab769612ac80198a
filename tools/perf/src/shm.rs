//! System shared memory: POSIX shm objects (files under /dev/shm) for inputs and outputs.

use crate::client::control::Control;
use crate::inputs::InputTensor;
use crate::model::{ModelInfo, element_size};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// One shared memory region holding one tensor.
#[derive(Clone, Debug)]
pub struct Region {
    /// Tensor the region holds.
    pub tensor: String,
    /// Name the region is registered under.
    pub name: String,
    /// POSIX shm key ("/name").
    pub key: String,
    /// The shm object's file.
    pub path: PathBuf,
    /// Bytes in the region.
    pub size: usize,
}

/// The regions of a run: one per input (filled with its data) and one per output.
#[derive(Debug, Default)]
pub struct ShmLayout {
    /// Input regions.
    pub inputs: Vec<Region>,
    /// Output regions.
    pub outputs: Vec<Region>,
    registered: Vec<String>,
}

impl ShmLayout {
    /// Creates and fills the shm objects (not yet registered).
    pub fn create(
        model: &ModelInfo,
        inputs: &[InputTensor],
        batch: u32,
        default_output_size: usize,
    ) -> Result<Self> {
        let prefix = format!("ferrum_perf_{}", std::process::id());
        let mut layout = Self::default();
        for (i, t) in inputs.iter().enumerate() {
            let raw = t.raw();
            let region = new_region(&prefix, "in", i, &t.name, raw.len().max(1))?;
            std::fs::write(&region.path, pad(raw, region.size))
                .with_context(|| format!("cannot write shm object {}", region.path.display()))?;
            layout.inputs.push(region);
        }
        for (i, o) in model.outputs.iter().enumerate() {
            let dims: &[i64] = if model.max_batch_size > 0 {
                o.shape.get(1..).unwrap_or(&[])
            } else {
                &o.shape
            };
            let known = dims.iter().all(|d| *d >= 0);
            let size = match element_size(&o.datatype) {
                Some(es) if known => {
                    let n: usize = dims
                        .iter()
                        .map(|d| usize::try_from(*d).unwrap_or(0))
                        .product();
                    let b = if model.max_batch_size > 0 {
                        batch as usize
                    } else {
                        1
                    };
                    (n * es * b).max(1)
                }
                _ => default_output_size.max(1),
            };
            let region = new_region(&prefix, "out", i, &o.name, size)?;
            std::fs::write(&region.path, vec![0u8; size])
                .with_context(|| format!("cannot create shm object {}", region.path.display()))?;
            layout.outputs.push(region);
        }
        Ok(layout)
    }

    /// The region of an input.
    pub fn input(&self, tensor: &str) -> Option<&Region> {
        self.inputs.iter().find(|r| r.tensor == tensor)
    }

    /// The region of an output.
    pub fn output(&self, tensor: &str) -> Option<&Region> {
        self.outputs.iter().find(|r| r.tensor == tensor)
    }

    /// Registers every region with the server.
    pub async fn register(&mut self, control: &mut Control) -> Result<()> {
        let regions: Vec<Region> = self.inputs.iter().chain(&self.outputs).cloned().collect();
        for r in regions {
            control.shm_register(&r.name, &r.key, r.size).await?;
            self.registered.push(r.name);
        }
        Ok(())
    }

    /// Unregisters the registered regions and unlinks the shm objects.
    pub async fn cleanup(&mut self, control: &mut Control) -> Result<()> {
        let mut first_err = None;
        for name in std::mem::take(&mut self.registered) {
            if let Err(e) = control.shm_unregister(&name).await {
                first_err.get_or_insert(e);
            }
        }
        self.unlink();
        first_err.map_or(Ok(()), Err)
    }

    fn unlink(&mut self) {
        for r in self.inputs.iter().chain(&self.outputs) {
            let _ = std::fs::remove_file(&r.path);
        }
    }
}

impl Drop for ShmLayout {
    fn drop(&mut self) {
        self.unlink();
    }
}

fn new_region(prefix: &str, kind: &str, i: usize, tensor: &str, size: usize) -> Result<Region> {
    let name = format!("{prefix}_{kind}{i}");
    let path = PathBuf::from("/dev/shm").join(&name);
    Ok(Region {
        tensor: tensor.to_string(),
        key: format!("/{name}"),
        name,
        path,
        size,
    })
}

fn pad(mut raw: Vec<u8>, size: usize) -> Vec<u8> {
    raw.resize(size, 0);
    raw
}
