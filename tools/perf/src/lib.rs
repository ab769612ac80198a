//! ferrum-perf: a native load generator for KServe v2 (Triton-compatible) servers,
//! doing the job of Triton's perf_analyzer over HTTP (JSON or binary tensors) and gRPC, or
//! in-process: the ferrum core runs inside this process and requests call it directly.

pub mod cli;
pub mod client;
pub mod inputs;
pub mod load;
pub mod measure;
pub mod model;
pub mod proto;
pub mod report;
pub mod shm;
pub mod stats;

use anyhow::{Context, Result, bail};
use cli::{Args, MeasurementMode, Protocol, SharedMemory, Sweep};
use client::control::Control;
use client::inprocess::CoreHandle;
use load::{Load, Plan};
use measure::{PointResult, Recorder, Window, WindowSummary, is_stable};
use model::ModelInfo;
use shm::ShmLayout;
use std::time::{Duration, Instant};

/// Runs the whole sweep and writes the requested output files; returns the points.
pub async fn run(args: &Args) -> Result<Vec<PointResult>> {
    let sweep = args.sweep()?;
    let protocol = args.effective_protocol();
    let authority = args.authority();
    if args.max_trials == 0 {
        bail!("--max-trials must be positive");
    }
    if args.measurement_mode == MeasurementMode::TimeWindows && args.measurement_interval == 0 {
        bail!("--measurement-interval must be positive");
    }
    if args.measurement_mode == MeasurementMode::CountWindows && args.measurement_request_count == 0
    {
        bail!("--measurement-request-count must be positive");
    }
    args.check_service_kind()?;
    let mut control = match protocol {
        Protocol::InProcess => {
            let repository = args
                .model_repository
                .as_deref()
                .context("-i in-process needs --model-repository DIR")?;
            Control::InProcess(
                CoreHandle::start(repository, args.backend_directory.as_deref()).await?,
            )
        }
        _ => Control::connect(protocol, &authority).await?,
    };
    let result = run_with(args, &sweep, &authority, &mut control).await;
    if let Control::InProcess(core) = &control {
        core.shutdown().await;
    }
    let points = result?;
    write_outputs(args, &points)?;
    Ok(points)
}

async fn run_with(
    args: &Args,
    sweep: &Sweep,
    authority: &str,
    control: &mut Control,
) -> Result<Vec<PointResult>> {
    let protocol = args.effective_protocol();
    let mut shm = None;
    let (plan, model) = if args.health {
        let plan = match (protocol, &*control) {
            (Protocol::Http, _) => Plan::http_health(),
            (Protocol::Grpc, _) => Plan::GrpcHealth,
            (Protocol::InProcess, Control::InProcess(core)) => Plan::InProcessHealth(core.clone()),
            (Protocol::InProcess, _) => bail!("in-process health needs an in-process core"),
        };
        (plan, None)
    } else {
        let name = args
            .model
            .as_deref()
            .context("a model is needed: give -m MODEL (or --health)")?;
        let info = control.model_info(name, &args.model_version).await?;
        info.check_batch(args.batch_size)?;
        let sets = inputs::build_inputs(&info, args.batch_size, &args.shapes()?, &args.input_data)?;
        if args.shared_memory == SharedMemory::System {
            if sets.len() > 1 {
                eprintln!("warning: shared memory uses only the first --input-data entry");
            }
            let mut layout = ShmLayout::create(
                &info,
                &sets[0],
                args.batch_size,
                args.output_shared_memory_size,
            )?;
            layout.register(control).await?;
            shm = Some(layout);
        }
        (
            build_plan(args, &info, &sets, shm.as_ref(), control)?,
            Some(info),
        )
    };
    let result = sweep_points(args, sweep, &plan, authority, control, model.as_ref()).await;
    if let Some(mut layout) = shm
        && let Err(e) = layout.cleanup(control).await
    {
        eprintln!("warning: shared memory cleanup: {e:#}");
    }
    result
}

fn build_plan(
    args: &Args,
    info: &ModelInfo,
    sets: &[Vec<inputs::InputTensor>],
    shm: Option<&ShmLayout>,
    control: &Control,
) -> Result<Plan> {
    let outputs: Vec<String> = info.outputs.iter().map(|o| o.name.clone()).collect();
    Ok(match args.effective_protocol() {
        Protocol::InProcess => {
            let Control::InProcess(core) = control else {
                bail!("in-process requests need an in-process core");
            };
            let reqs = sets
                .iter()
                .map(|set| {
                    client::inprocess::infer_request(&info.name, &info.version, set, &outputs)
                })
                .collect::<Result<Vec<_>>>()?;
            Plan::InProcess(core.clone(), reqs)
        }
        Protocol::Http => Plan::Http(
            sets.iter()
                .map(|set| {
                    client::http::infer_request(
                        &info.name,
                        &info.version,
                        set,
                        &outputs,
                        args.input_tensor_format,
                        args.output_tensor_format,
                        shm,
                    )
                })
                .collect(),
        ),
        Protocol::Grpc => {
            let reqs = sets
                .iter()
                .map(|set| {
                    client::grpc::infer_request(&info.name, &info.version, set, &outputs, shm)
                })
                .collect();
            if args.streaming {
                Plan::GrpcStream(reqs)
            } else {
                Plan::Grpc(reqs)
            }
        }
    })
}

async fn sweep_points(
    args: &Args,
    sweep: &Sweep,
    plan: &Plan,
    authority: &str,
    control: &mut Control,
    model: Option<&ModelInfo>,
) -> Result<Vec<PointResult>> {
    let values: Vec<(String, f64)> = match sweep {
        Sweep::Concurrency(c) => c
            .iter()
            .map(|c| ("concurrency".to_string(), *c as f64))
            .collect(),
        Sweep::RequestRate(r) => r.iter().map(|r| ("request_rate".to_string(), *r)).collect(),
    };
    let mut points = Vec::new();
    for (mode, value) in values {
        eprintln!("measuring {mode} {value}");
        let load = match sweep {
            Sweep::Concurrency(_) => {
                load::start_concurrency(plan, authority, value as usize).await?
            }
            Sweep::RequestRate(_) => {
                load::start_rate(
                    plan,
                    authority,
                    value,
                    args.request_distribution,
                    args.max_threads,
                )
                .await?
            }
        };
        let point = measure_point(args, &load, &mode, value, control, model).await;
        load.stop().await;
        points.push(point?);
    }
    Ok(points)
}

async fn snapshot(control: &mut Control, model: Option<&ModelInfo>) -> Option<stats::ServerStats> {
    let m = model?;
    match control.stats(&m.name, &m.version).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("warning: cannot read server statistics: {e:#}");
            None
        }
    }
}

/// Sleeps until at least `count` requests completed since the last drain of `recorder`
/// (at `start`), looking again when the rate so far says they should be done.
async fn wait_for_count(recorder: &Recorder, count: u64, start: Instant) {
    loop {
        let done = recorder.count() as u64;
        if done >= count {
            return;
        }
        tokio::time::sleep(next_look(done, count, start.elapsed())).await;
    }
}

/// How long to sleep before counting a window's requests again: the time the rest should
/// take at the rate so far (a quarter of the time so far while none completed), within
/// 1–50 ms so that a window overshoots its count by little and the counting costs little.
fn next_look(done: u64, count: u64, elapsed: Duration) -> Duration {
    const SOONEST: Duration = Duration::from_millis(1);
    const LATEST: Duration = Duration::from_millis(50);
    let guess = if done == 0 {
        elapsed / 4
    } else {
        elapsed.mul_f64(count.saturating_sub(done) as f64 / done as f64)
    };
    guess.clamp(SOONEST, LATEST)
}

/// Measures windows until the last three are stable or --max-trials is reached.
async fn measure_point(
    args: &Args,
    load: &Load,
    mode: &str,
    value: f64,
    control: &mut Control,
    model: Option<&ModelInfo>,
) -> Result<PointResult> {
    let interval = Duration::from_millis(args.measurement_interval);
    let stability_percentile = f64::from(args.percentile.unwrap_or(50));
    let mut snaps = vec![snapshot(control, model).await];
    load.recorder.drain();
    let mut start = Instant::now();
    let mut windows = Vec::new();
    let mut stable = false;
    for _ in 0..args.max_trials {
        match args.measurement_mode {
            MeasurementMode::TimeWindows => {
                tokio::time::sleep_until((start + interval).into()).await;
            }
            MeasurementMode::CountWindows => {
                wait_for_count(&load.recorder, args.measurement_request_count, start).await;
            }
        }
        let records = load.recorder.drain();
        let now = Instant::now();
        windows.push(Window::new(&records, now - start));
        start = now;
        snaps.push(snapshot(control, model).await);
        if is_stable(&windows, args.stability_percentage, stability_percentile) {
            stable = true;
            break;
        }
    }
    if !stable {
        eprintln!(
            "warning: {mode} {value}: not stable after {} windows; reporting the last ones",
            windows.len()
        );
    }
    let k = windows.len().min(3);
    let merged = Window::merge(&windows[windows.len() - k..]);
    let mut point =
        PointResult::from_window(mode, value, args.batch_size, &merged, args.percentile);
    point.stable = stable;
    point.windows = windows.len();
    point.window_details = windows
        .iter()
        .map(|w| WindowSummary::new(w, args.batch_size))
        .collect();
    if let (Some(Some(a)), Some(Some(b))) = (snaps.get(snaps.len() - 1 - k), snaps.last()) {
        point.server = Some(a.breakdown(b));
    }
    Ok(point)
}

fn write_outputs(args: &Args, points: &[PointResult]) -> Result<()> {
    if let Some(path) = &args.csv {
        report::write(path, &report::csv(points))?;
    }
    if let Some(path) = &args.json {
        report::write(path, &report::json(points)?)?;
    }
    if let Some(path) = &args.plot {
        report::write(path, &report::svg(points))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_looks() {
        let ms = Duration::from_millis;
        // Half done after 20 ms: the rest should take 20 ms more.
        assert_eq!(next_look(25, 50, ms(20)), ms(20));
        // Nothing done yet: look again after a quarter of the time so far, at least 1 ms.
        assert_eq!(next_look(0, 50, ms(40)), ms(10));
        assert_eq!(next_look(0, 50, Duration::ZERO), ms(1));
        // Slow requests: never more than 50 ms between looks.
        assert_eq!(next_look(1, 50, ms(1000)), ms(50));
        assert_eq!(next_look(60, 50, ms(10)), ms(1));
    }

    #[tokio::test]
    async fn count_window_waits_for_its_requests() {
        let recorder = Recorder::new(2);
        let filler = recorder.clone();
        let start = Instant::now();
        let feed = tokio::spawn(async move {
            for i in 0..10 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                filler.push(
                    i % 2,
                    measure::Record::new(start, Instant::now(), None, true),
                );
            }
        });
        wait_for_count(&recorder, 6, start).await;
        assert!(recorder.count() >= 6);
        feed.await.unwrap();
    }
}
