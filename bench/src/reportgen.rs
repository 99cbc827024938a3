//! `wsgate-bench report`: turns the JSON result lines of a suite run into a dated section appended to RESULTS.md
//! (earlier sections are kept) and a hand-written SVG bar chart of the latency percentiles per scenario.

use std::fmt::Write as _;

use serde_json::Value;

use crate::config::ReportArgs;
use crate::hist::fmt_us;
use crate::report::utc_now;

const HEADER: &str = "# wsgate benchmark results

Recorded by `bench/run.sh` with the bundled load generator `wsgate-bench` (bench/README.md explains the scenarios
and every figure). Gateway and generator share one machine, so absolute numbers are a floor, not a ceiling; compare
runs on the same machine. Each run appends a dated section; earlier sections are kept. The latency chart of the most
recent run is [latency.svg](latency.svg).
";

/// A short description of the machine: CPU model, cores, memory, kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| (kb as f64 / 1024.0 / 1024.0).round() as u64)
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores, {mem_gib} GiB, {cpu}, Linux {}",
        kernel.trim()
    )
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn params_text(p: &Value) -> String {
    match p {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    }
}

pub fn run(a: &ReportArgs) -> Result<(), String> {
    let text = std::fs::read_to_string(&a.results).map_err(|e| format!("{}: {e}", a.results))?;
    let docs: Vec<Value> = text
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v.get("tool").and_then(Value::as_str) == Some("wsgate-bench"))
        .collect();
    if docs.is_empty() {
        return Err(format!("{}: no wsgate-bench result lines", a.results));
    }
    let date = utc_now();
    let machine = machine();
    let md = markdown_section(&docs, &date, &a.commit, &machine, &a.note, &a.gateway);
    let mut existing = std::fs::read_to_string(&a.md).unwrap_or_default();
    if !existing.starts_with("# ") {
        existing = format!("{HEADER}{existing}");
    }
    if !existing.ends_with('\n') {
        existing.push('\n');
    }
    existing.push('\n');
    existing.push_str(&md);
    std::fs::write(&a.md, existing).map_err(|e| format!("{}: {e}", a.md))?;
    let svg = svg_chart(
        &docs,
        &format!("wsgate latency percentiles — {date} — commit {}", a.commit),
    );
    std::fs::write(&a.svg, svg).map_err(|e| format!("{}: {e}", a.svg))?;
    println!(
        "appended {} scenario(s) to {} and wrote {}",
        docs.len(),
        a.md,
        a.svg
    );
    Ok(())
}

pub fn markdown_section(
    docs: &[Value],
    date: &str,
    commit: &str,
    machine: &str,
    note: &str,
    gateway: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## {date} — commit {commit}{}",
        if note.is_empty() {
            String::new()
        } else {
            format!(" — {note}")
        }
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "Machine: {machine}. Chart: [latency.svg](latency.svg).");
    if !gateway.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "Gateway: `{gateway}`");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| scenario | parameters | figures | date | commit | machine | command |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    for d in docs {
        let kind = d.get("scenario").and_then(Value::as_str).unwrap_or("?");
        let scenario = match d.get("label").and_then(Value::as_str) {
            Some(l) if l != kind => format!("{l} ({kind})"),
            _ => kind.to_string(),
        };
        let params = params_text(d.get("params").unwrap_or(&Value::Null));
        let r = d.get("results").cloned().unwrap_or(Value::Null);
        let mut figures = r
            .get("headline")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(a) = r.get("aborted").and_then(Value::as_str) {
            figures = format!("ABORTED ({a}); {figures}");
        }
        if let (Some(g), Some(t)) = (
            r.get("generator_cpu_ms").and_then(Value::as_u64),
            r.get("total_s").and_then(Value::as_f64),
        ) {
            let _ = write!(
                figures,
                "; generator CPU {:.1}s in {t:.1}s",
                g as f64 / 1000.0
            );
        }
        if let (Some(sc), Some(l)) = (
            r.get("server_cpu_ms").and_then(Value::as_u64),
            r.get("load_s").and_then(Value::as_f64),
        ) {
            let _ = write!(
                figures,
                "; server CPU {:.1}s in {l:.1}s load",
                sc as f64 / 1000.0
            );
        }
        if let Some(m) = r.get("machine_load_pct") {
            let get = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            let _ = write!(
                figures,
                "; machine (% of a core): server {} generator {} interrupts {} idle {} other {}",
                get("server"),
                get("generator"),
                get("interrupts"),
                get("idle"),
                get("other")
            );
            if get("other") >= 20.0 {
                figures = format!(
                    "**DISTURBED** (other processes used {}% of a core); {figures}",
                    get("other")
                );
            }
        }
        let run_date = d.get("date").and_then(Value::as_str).unwrap_or(date);
        let command = d.get("command").and_then(Value::as_str).unwrap_or("");
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | `{}` |",
            cell(&scenario),
            cell(&params),
            cell(&figures),
            cell(run_date),
            cell(commit),
            cell(machine),
            cell(command)
        );
    }
    s
}

struct Series {
    name: String,
    values: [u64; 5],
    count: u64,
}

const PCT_NAMES: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];
const PCT_KEYS: [&str; 5] = ["p50", "p90", "p99", "p999", "max"];
const COLORS: [&str; 5] = ["#4C78A8", "#72B7B2", "#F58518", "#E45756", "#9D755D"];

fn collect_series(docs: &[Value]) -> Vec<Series> {
    let mut out = Vec::new();
    for d in docs {
        let Some(list) = d
            .pointer("/results/latency_series")
            .and_then(Value::as_array)
        else {
            continue;
        };
        for s in list {
            let count = s.get("count").and_then(Value::as_u64).unwrap_or(0);
            if count == 0 {
                continue;
            }
            let mut values = [0u64; 5];
            for (v, k) in values.iter_mut().zip(PCT_KEYS) {
                *v = s.get(k).and_then(Value::as_u64).unwrap_or(0).max(1);
            }
            out.push(Series {
                name: s
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string(),
                values,
                count,
            });
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Grouped bars (p50, p90, p99, p99.9, max) per scenario on a logarithmic microsecond axis.
pub fn svg_chart(docs: &[Value], title: &str) -> String {
    let series = collect_series(docs);
    let (w, h) = (980.0f64, 480.0f64);
    let (ml, mr, mt, mb) = (80.0, 20.0, 70.0, 90.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Arial, sans-serif">"#
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="26" font-size="16" text-anchor="middle" font-weight="bold">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    if series.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="14" text-anchor="middle">no latency samples</text>"#,
            w / 2.0,
            h / 2.0
        );
        s.push_str("</svg>\n");
        return s;
    }
    let min = series
        .iter()
        .flat_map(|x| x.values)
        .min()
        .unwrap_or(1)
        .max(1) as f64;
    let max = series
        .iter()
        .flat_map(|x| x.values)
        .max()
        .unwrap_or(10)
        .max(2) as f64;
    let lo = min.log10().floor();
    let mut hi = max.log10().ceil();
    if hi <= lo {
        hi = lo + 1.0;
    }
    let y_of = |v: f64| mt + ph - (v.max(1.0).log10() - lo) / (hi - lo) * ph;
    // Legend.
    for (k, name) in PCT_NAMES.iter().enumerate() {
        let x = ml + k as f64 * 90.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="40" width="14" height="14" fill="{}"/>"#,
            COLORS[k]
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="52" font-size="13">{name}</text>"#,
            x + 19.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="52" font-size="12" text-anchor="end" fill="#555">log scale</text>"##,
        w - mr
    );
    // Decade grid.
    let mut dec = lo;
    while dec <= hi + 1e-9 {
        let v = 10f64.powf(dec);
        let y = y_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#dddddd"/>"##,
            w - mr
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"#,
            ml - 6.0,
            y + 4.0,
            fmt_us(v.round() as u64)
        );
        dec += 1.0;
    }
    let _ = writeln!(
        s,
        r##"<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{}" stroke="#333"/>"##,
        mt + ph
    );
    let _ = writeln!(
        s,
        r##"<line x1="{ml}" y1="{}" x2="{}" y2="{}" stroke="#333"/>"##,
        mt + ph,
        w - mr,
        mt + ph
    );
    // Bars.
    let gw = pw / series.len() as f64;
    let bw = (gw * 0.8 / 5.0).min(40.0);
    for (g, se) in series.iter().enumerate() {
        let gx = ml + g as f64 * gw + (gw - bw * 5.0) / 2.0;
        for (k, &v) in se.values.iter().enumerate() {
            let x = gx + k as f64 * bw;
            let y = y_of(v as f64);
            let bh = (mt + ph - y).max(1.0);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{} {}: {}</title></rect>"#,
                bw - 2.0,
                COLORS[k],
                esc(&se.name),
                PCT_NAMES[k],
                fmt_us(v)
            );
            let tx = x + bw / 2.0;
            let ty = y - 4.0;
            let _ = writeln!(
                s,
                r#"<text x="{tx:.1}" y="{ty:.1}" font-size="10" text-anchor="start" transform="rotate(-90 {tx:.1} {ty:.1})" dominant-baseline="middle">{}</text>"#,
                fmt_us(v)
            );
        }
        let cx = ml + g as f64 * gw + gw / 2.0;
        // "label: metric" on two lines, so that neighbouring groups' names never run into each other.
        let (label, metric) = se.name.split_once(": ").unwrap_or((se.name.as_str(), ""));
        let _ = writeln!(
            s,
            r#"<text x="{cx:.1}" y="{}" font-size="13" text-anchor="middle" font-weight="bold">{}</text>"#,
            mt + ph + 18.0,
            esc(label)
        );
        let _ = writeln!(
            s,
            r#"<text x="{cx:.1}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
            mt + ph + 34.0,
            esc(metric)
        );
        let _ = writeln!(
            s,
            r##"<text x="{cx:.1}" y="{}" font-size="11" text-anchor="middle" fill="#555">n={}</text>"##,
            mt + ph + 50.0,
            se.count
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        serde_json::json!({
            "tool": "wsgate-bench", "scenario": "fanout", "date": "2025-01-01 00:00:00Z",
            "command": "wsgate-bench fanout --conns 10",
            "params": {"conns": 10, "url": "ws://127.0.0.1:1/ws"},
            "results": {"headline": "1k deliveries/s | x", "generator_cpu_ms": 1500, "total_s": 3.0,
                "machine_load_pct": {"server": 90.0, "generator": 50.0, "interrupts": 30.0, "idle": 0.0, "other": 30.0},
                "latency_series": [{"name": "fanout: delivery", "p50": 100, "p90": 200, "p99": 900, "p999": 1500, "max": 20000, "count": 10}]}
        })
    }

    #[test]
    fn markdown_row_is_escaped_and_complete() {
        let md = markdown_section(
            &[doc()],
            "2025-01-02 00:00:00Z",
            "abc123",
            "2 cores",
            "suite",
            "wsgate --x",
        );
        assert!(md.contains("Gateway: `wsgate --x`"));
        assert!(md.starts_with("## 2025-01-02 00:00:00Z — commit abc123 — suite"));
        assert!(
            md.contains("| scenario | parameters | figures | date | commit | machine | command |")
        );
        assert!(md.contains("conns=10, url=ws://127.0.0.1:1/ws"));
        assert!(md.contains("1k deliveries/s \\| x; generator CPU 1.5s in 3.0s"));
        assert!(md.contains("`wsgate-bench fanout --conns 10`"));
        assert!(md.contains("**DISTURBED** (other processes used 30% of a core); 1k deliveries/s"));
        assert!(md.contains(
            "machine (% of a core): server 90 generator 50 interrupts 30 idle 0 other 30"
        ));
    }

    #[test]
    fn svg_has_bars_and_labels() {
        let svg = svg_chart(&[doc()], "t <1>");
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect x=").count(), 5 + 5); // legend + bars
        assert!(svg.contains(">fanout<") && svg.contains(">delivery<"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("20.0ms"));
        let empty = svg_chart(&[], "t");
        assert!(empty.contains("no latency samples"));
    }
}
