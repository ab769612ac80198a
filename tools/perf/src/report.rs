//! Output: the stdout table, CSV, JSON and the SVG latency-throughput plot.

use crate::measure::PointResult;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

fn mode_title(points: &[PointResult]) -> &'static str {
    match points.first().map(|p| p.mode.as_str()) {
        Some("request_rate") => "Request Rate",
        _ => "Concurrency",
    }
}

fn server_cols(p: &PointResult) -> [String; 4] {
    match &p.server {
        Some(s) => [
            s.queue_us,
            s.compute_input_us,
            s.compute_infer_us,
            s.compute_output_us,
        ]
        .map(|v| format!("{v:.0}")),
        None => std::array::from_fn(|_| "n/a".to_string()),
    }
}

/// The human-readable table of the sweep.
pub fn table(points: &[PointResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>7} {:>6}",
        mode_title(points),
        "infer/s",
        "p50 us",
        "p90 us",
        "p95 us",
        "p99 us",
        "avg us",
        "queue",
        "c_input",
        "c_infer",
        "c_output",
        "errors",
        "stable"
    );
    for p in points {
        let s = server_cols(p);
        let _ = writeln!(
            out,
            "{:>12} {:>12.1} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>8} {:>9} {:>9} {:>9} {:>7} {:>6}",
            fmt_value(p),
            p.throughput,
            p.p50_us,
            p.p90_us,
            p.p95_us,
            p.p99_us,
            p.avg_us,
            s[0],
            s[1],
            s[2],
            s[3],
            p.errors,
            if p.stable { "yes" } else { "no" }
        );
        if let Some((pct, v)) = p.custom_percentile {
            let _ = writeln!(out, "{:>12} p{pct} latency: {v:.0} us", "");
        }
        if let (Some(sr), Some(wait)) = (p.client_send_recv_us, p.client_wait_us) {
            let _ = writeln!(
                out,
                "{:>12} avg client time: {:.0} us (send/recv {sr:.0} us + response wait {wait:.0} us)",
                "",
                sr + wait
            );
        }
    }
    out
}

fn fmt_value(p: &PointResult) -> String {
    if p.value.fract() == 0.0 {
        format!("{}", p.value as u64)
    } else {
        format!("{:.2}", p.value)
    }
}

/// perf_analyzer-like CSV: one header row, one row per sweep point.
pub fn csv(points: &[PointResult]) -> String {
    let mut out = format!(
        "{},Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,Errors,Client Send/Recv,Client Response Wait\n",
        mode_title(points)
    );
    for p in points {
        let s = server_cols(p);
        let network = p.server.as_ref().map_or("n/a".to_string(), |s| {
            let server = s.queue_us + s.compute_input_us + s.compute_infer_us + s.compute_output_us;
            format!("{:.0}", (p.avg_us - server).max(0.0))
        });
        let client = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0}"));
        let _ = writeln!(
            out,
            "{},{:.2},n/a,{network},{},{},{},{},n/a,{:.0},{:.0},{:.0},{:.0},{:.0},{},{},{}",
            fmt_value(p),
            p.throughput,
            s[0],
            s[1],
            s[2],
            s[3],
            p.p50_us,
            p.p90_us,
            p.p95_us,
            p.p99_us,
            p.avg_us,
            p.errors,
            client(p.client_send_recv_us),
            client(p.client_wait_us)
        );
    }
    out
}

/// JSON document: `{"results": [...]}`.
pub fn json(points: &[PointResult]) -> Result<String> {
    serde_json::to_string_pretty(&serde_json::json!({ "results": points }))
        .context("serialize results")
}

/// A self-contained SVG plot of p50 and p99 latency (ms) against throughput (infer/s).
pub fn svg(points: &[PointResult]) -> String {
    let (w, h, ml, mr, mt, mb) = (720.0, 450.0, 70.0, 20.0, 40.0, 50.0);
    let max_x = points
        .iter()
        .map(|p| p.throughput)
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.1;
    let max_y = points
        .iter()
        .map(|p| p.p99_us.max(p.p50_us))
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        / 1000.0
        * 1.1;
    let x = |v: f64| ml + v / max_x * (w - ml - mr);
    let y = |v: f64| h - mb - v / max_y * (h - mt - mb);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Latency vs throughput</text>"#,
        w / 2.0
    );
    // Axes, ticks and grid.
    let _ = writeln!(
        s,
        r#"<line x1="{ml}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{ml}" y1="{mt}" x2="{ml}" y2="{}" stroke="black"/>"#,
        h - mb,
        w - mr,
        h - mb,
        h - mb
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let (xv, yv) = (max_x * f, max_y * f);
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="middle">{xv:.0}</text><text x="{}" y="{:.1}" text-anchor="end">{yv:.2}</text><line x1="{ml}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#ddd"/>"##,
            x(xv),
            h - mb + 16.0,
            ml - 6.0,
            y(yv) + 4.0,
            y(yv),
            w - mr,
            y(yv)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">Throughput (infer/s)</text>"#,
        (ml + w - mr) / 2.0,
        h - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">Latency (ms)</text>"#,
        (mt + h - mb) / 2.0,
        (mt + h - mb) / 2.0
    );
    for (class, color, get) in [
        (
            "p50",
            "#1f77b4",
            (|p: &PointResult| p.p50_us) as fn(&PointResult) -> f64,
        ),
        ("p99", "#d62728", |p: &PointResult| p.p99_us),
    ] {
        let line: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.throughput), y(get(p) / 1000.0)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline class="{class}-line" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            line.join(" ")
        );
        for p in points {
            let _ = writeln!(
                s,
                r#"<circle class="{class}" cx="{:.1}" cy="{:.1}" r="4" fill="{color}"><title>{} {}: {:.1} infer/s, {class} {:.0} us</title></circle>"#,
                x(p.throughput),
                y(get(p) / 1000.0),
                mode_title(points),
                fmt_value(p),
                p.throughput,
                get(p)
            );
        }
    }
    let lx = w - mr - 90.0;
    let _ = writeln!(
        s,
        r##"<rect x="{lx}" y="{mt}" width="12" height="3" fill="#1f77b4"/><text x="{}" y="{}">p50</text><rect x="{lx}" y="{}" width="12" height="3" fill="#d62728"/><text x="{}" y="{}">p99</text>"##,
        lx + 18.0,
        mt + 5.0,
        mt + 16.0,
        lx + 18.0,
        mt + 21.0
    );
    s.push_str("</svg>\n");
    s
}

/// Writes a text file with a clear error.
pub fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::{Record, Window};
    use std::time::Duration;

    fn point(wait_ns: Option<u64>) -> PointResult {
        let records: Vec<Record> = (0..4)
            .map(|_| Record {
                latency_ns: 100_000,
                wait_ns,
                ok: true,
            })
            .collect();
        let w = Window::new(&records, Duration::from_secs(1));
        PointResult::from_window("concurrency", 2.0, 1, &w, None)
    }

    #[test]
    fn client_breakdown_in_table_csv_and_json() {
        let p = point(Some(30_000));
        let text = table(std::slice::from_ref(&p));
        assert!(
            text.contains("avg client time: 100 us (send/recv 70 us + response wait 30 us)"),
            "{text}"
        );
        let doc = csv(std::slice::from_ref(&p));
        let rows: Vec<Vec<&str>> = doc.lines().map(|l| l.split(',').collect()).collect();
        assert_eq!(rows[0].len(), rows[1].len());
        // The perf_analyzer columns keep their places; the breakdown comes last.
        assert_eq!(rows[0][14], "Errors");
        assert_eq!(rows[0][15..], ["Client Send/Recv", "Client Response Wait"]);
        assert_eq!(rows[1][15..], ["70", "30"]);
        let v: serde_json::Value = serde_json::from_str(&json(&[p]).unwrap()).unwrap();
        assert_eq!(v["results"][0]["client_send_recv_us"], 70.0);
        assert_eq!(v["results"][0]["client_wait_us"], 30.0);

        let unsplit = point(None);
        assert!(!table(std::slice::from_ref(&unsplit)).contains("avg client time"));
        assert!(csv(std::slice::from_ref(&unsplit)).ends_with(",n/a,n/a\n"));
    }
}
