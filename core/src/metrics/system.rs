//! Host gauges: CPU utilization and memory from /proc, and GPU gauges through NVML when the
//! NVIDIA driver is installed (loaded at run time; without it there are simply no GPU series).

use std::time::Duration;

use nvml_wrapper::Nvml;
use prometheus::{Gauge, GaugeVec, Opts, Registry};

/// Registers the host gauges and starts sampling them every `interval`.
pub fn register(registry: &Registry, interval: Duration) -> prometheus::Result<()> {
    let cpu = Gauge::new("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]")?;
    let mem_total = Gauge::new(
        "nv_cpu_memory_total_bytes",
        "CPU total memory (RAM), in bytes",
    )?;
    let mem_used = Gauge::new(
        "nv_cpu_memory_used_bytes",
        "CPU used memory (RAM), in bytes",
    )?;
    for g in [&cpu, &mem_total, &mem_used] {
        registry.register(Box::new(g.clone()))?;
    }
    let gpus = match Nvml::init() {
        Ok(nvml) => {
            let gauges = GpuGauges::new()?;
            gauges.register(registry)?;
            tracing::info!("collecting GPU metrics through NVML");
            Some((nvml, gauges))
        }
        Err(e) => {
            tracing::info!("no GPU metrics: NVML is not available ({e})");
            None
        }
    };
    let mut last = read_cpu_times();
    sample_memory(&mem_total, &mem_used);
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(());
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
        loop {
            tick.tick().await;
            let now = read_cpu_times();
            if let (Some((idle0, total0)), Some((idle1, total1))) = (last, now) {
                let total = total1.saturating_sub(total0);
                if total > 0 {
                    cpu.set(1.0 - idle1.saturating_sub(idle0) as f64 / total as f64);
                }
            }
            last = now;
            sample_memory(&mem_total, &mem_used);
            if let Some((nvml, gauges)) = &gpus {
                gauges.sample(nvml);
            }
        }
    });
    Ok(())
}

/// (idle, total) jiffies of all CPUs, from /proc/stat.
fn read_cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((idle, fields.iter().sum()))
}

fn sample_memory(total: &Gauge, used: &Gauge) {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return;
    };
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb * 1024.0)
    };
    if let (Some(t), Some(a)) = (field("MemTotal:"), field("MemAvailable:")) {
        total.set(t);
        used.set(t - a);
    }
}

/// Per-GPU gauges, labelled by `gpu_uuid` as Triton labels them.
struct GpuGauges {
    /// GPU utilization [0.0 - 1.0].
    utilization: GaugeVec,
    /// Total memory.
    memory_total: GaugeVec,
    /// Used memory.
    memory_used: GaugeVec,
    /// Power draw in watts.
    power_usage: GaugeVec,
    /// Power limit in watts.
    power_limit: GaugeVec,
    /// Energy since the driver loaded, in joules.
    energy: GaugeVec,
}

impl GpuGauges {
    fn new() -> prometheus::Result<Self> {
        let vec = |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), &["gpu_uuid"]);
        Ok(GpuGauges {
            utilization: vec("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)")?,
            memory_total: vec("nv_gpu_memory_total_bytes", "GPU total memory, in bytes")?,
            memory_used: vec("nv_gpu_memory_used_bytes", "GPU used memory, in bytes")?,
            power_usage: vec("nv_gpu_power_usage", "GPU power usage in watts")?,
            power_limit: vec("nv_gpu_power_limit", "GPU power management limit in watts")?,
            energy: vec(
                "nv_energy_consumption",
                "GPU energy consumption in joules since the Triton Server started",
            )?,
        })
    }

    fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        for g in [
            &self.utilization,
            &self.memory_total,
            &self.memory_used,
            &self.power_usage,
            &self.power_limit,
            &self.energy,
        ] {
            registry.register(Box::new(g.clone()))?;
        }
        Ok(())
    }

    fn sample(&self, nvml: &Nvml) {
        let Ok(count) = nvml.device_count() else {
            return;
        };
        for index in 0..count {
            let Ok(device) = nvml.device_by_index(index) else {
                continue;
            };
            let Ok(uuid) = device.uuid() else { continue };
            let labels = [uuid.as_str()];
            if let Ok(u) = device.utilization_rates() {
                self.utilization
                    .with_label_values(&labels)
                    .set(f64::from(u.gpu) / 100.0);
            }
            if let Ok(m) = device.memory_info() {
                self.memory_total
                    .with_label_values(&labels)
                    .set(m.total as f64);
                self.memory_used
                    .with_label_values(&labels)
                    .set(m.used as f64);
            }
            if let Ok(p) = device.power_usage() {
                self.power_usage
                    .with_label_values(&labels)
                    .set(f64::from(p) / 1000.0);
            }
            if let Ok(p) = device.enforced_power_limit() {
                self.power_limit
                    .with_label_values(&labels)
                    .set(f64::from(p) / 1000.0);
            }
            if let Ok(e) = device.total_energy_consumption() {
                self.energy
                    .with_label_values(&labels)
                    .set(e as f64 / 1000.0);
            }
        }
    }
}
