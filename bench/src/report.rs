//! Turns the merged measurements into figures: a human summary (stdout) and one JSON object (the last stdout line).

use serde_json::{json, Value};

use crate::config::{Config, Scenario};
use crate::hist::{
    fmt_percentiles, fmt_us, import_into, new_hist, percentiles, HistData, Percentiles,
};
use crate::publisher::PubResult;
use crate::result::WorkerResult;
use crate::sys::Sockstat;

/// Observations the coordinator made around the workers.
#[derive(Debug, Default, Clone)]
pub struct Context {
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    pub rss_before: Option<u64>,
    pub rss_up: Option<u64>,
    pub sock_before: Option<Sockstat>,
    pub sock_up: Option<Sockstat>,
    /// Server CPU ms over the load phase and that phase's length.
    pub server_cpu_ms: Option<u64>,
    pub load_s: f64,
    /// Server CPU ms from the first connection attempt until all were up, and that phase's length.
    pub server_cpu_connect_ms: Option<u64>,
    pub connect_s: f64,
    pub generator_cpu_ms: u64,
    pub total_s: f64,
    pub aborted: Option<String>,
    /// Machine-wide CPU over the load phase, and the generator's own share of it (parent + workers).
    pub machine_load: Option<crate::sys::CpuTimes>,
    pub generator_load_ms: u64,
    pub tcp_before: Option<crate::sys::TcpCounters>,
    pub tcp_after: Option<crate::sys::TcpCounters>,
}

fn pct(d: &HistData) -> Percentiles {
    let mut h = new_hist();
    import_into(&mut h, d);
    percentiles(&h)
}

fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs).round()
    } else {
        0.0
    }
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Current UTC time as "YYYY-MM-DD HH:MM:SSZ".
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    fmt_utc(secs as i64)
}

pub fn fmt_utc(secs: i64) -> String {
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

fn series(name: &str, p: &Percentiles) -> Value {
    json!({"name": name, "p50": p.p50, "p90": p.p90, "p99": p.p99, "p999": p.p999, "max": p.max, "count": p.count})
}

/// Builds the summary text and the JSON figures.
pub fn build(
    cfg: &Config,
    r: &WorkerResult,
    pubr: Option<&PubResult>,
    ctx: &Context,
) -> (String, Value) {
    let mut out = String::new();
    let mut res = serde_json::Map::new();
    let mut chart = Vec::new();
    let mut headline = Vec::<String>::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(
        &mut out,
        format!(
            "== wsgate-bench {} == {} conns over {} procs, {} source address(es); RLIMIT_NOFILE soft {} hard {}",
            cfg.scenario.name(),
            cfg.conns,
            cfg.procs,
            cfg.source_ips,
            ctx.nofile_soft,
            ctx.nofile_hard
        ),
    );
    res.insert(
        "rlimit_nofile".into(),
        json!({"soft": ctx.nofile_soft, "hard": ctx.nofile_hard}),
    );
    if let Some(a) = &ctx.aborted {
        line(&mut out, format!("ABORTED: {a}"));
        res.insert("aborted".into(), json!(a));
    }

    // Connections.
    let hs = pct(&r.handshake_us);
    let span = r.last_connected_ns.saturating_sub(r.first_attempt_ns) as f64 / 1e9;
    let hs_rate = per_s(r.connected, span);
    let peak = r.connect_per_sec.iter().copied().max().unwrap_or(0);
    line(
        &mut out,
        format!(
            "connections: {} of {} up in {:.2}s, {} handshakes/s (peak second {}), failures: {}",
            r.connected,
            r.attempted,
            span,
            si(hs_rate),
            peak,
            r.failures.describe()
        ),
    );
    line(
        &mut out,
        format!("handshake latency: {}", fmt_percentiles(&hs)),
    );
    res.insert("attempted".into(), json!(r.attempted));
    res.insert("connected".into(), json!(r.connected));
    res.insert("failures".into(), json!(r.failures));
    res.insert("failed".into(), json!(r.failures.total()));
    res.insert(
        "connect_span_s".into(),
        json!((span * 1000.0).round() / 1000.0),
    );
    res.insert("handshakes_per_s".into(), json!(hs_rate));
    res.insert("handshakes_peak_second".into(), json!(peak));
    res.insert(
        "handshakes_per_second_series".into(),
        json!(r.connect_per_sec),
    );
    res.insert("handshake_us".into(), json!(hs));
    if cfg.scenario == Scenario::Connect {
        chart.push(series(&format!("{}: handshake", cfg.label), &hs));
        headline.push(format!(
            "{}/{} up, {} handshakes/s (peak {}/s), failures {}; handshake p50 {} p99 {}",
            r.connected,
            r.attempted,
            si(hs_rate),
            peak,
            r.failures.total(),
            fmt_us(hs.p50),
            fmt_us(hs.p99)
        ));
    }

    // Server memory.
    if let (Some(b), Some(u)) = (ctx.rss_before, ctx.rss_up) {
        // Signed: a server that returns memory freed by an earlier run can shrink while connections arrive.
        let per = if r.connected > 0 {
            (u as i64 - b as i64) / r.connected as i64
        } else {
            0
        };
        line(
            &mut out,
            format!(
                "server RSS: {} before, {} with all up: {} bytes per connection",
                mib(b),
                mib(u),
                per
            ),
        );
        res.insert("server_rss_before".into(), json!(b));
        res.insert("server_rss_up".into(), json!(u));
        res.insert("server_rss_bytes_per_conn".into(), json!(per));
        if cfg.scenario == Scenario::Connect {
            headline.push(format!("server RSS {per} B/conn"));
        }
    }
    if let (Some(b), Some(u)) = (ctx.sock_before, ctx.sock_up) {
        let page = crate::sys::page_size();
        let delta = (u.tcp_mem_pages as i64 - b.tcp_mem_pages as i64) * page as i64;
        let per = if r.connected > 0 {
            delta / r.connected as i64
        } else {
            0
        };
        line(
            &mut out,
            format!(
                "kernel TCP memory (both ends, loopback): {} -> {} pages: {} bytes per connection; sockets in use {} -> {}",
                b.tcp_mem_pages, u.tcp_mem_pages, per, b.tcp_inuse, u.tcp_inuse
            ),
        );
        res.insert("sockstat_before".into(), json!(b));
        res.insert("sockstat_up".into(), json!(u));
        res.insert("kernel_tcp_mem_bytes_per_conn".into(), json!(per));
    }

    // Deliveries.
    if cfg.scenario.subscribes() {
        let p = pubr.cloned().unwrap_or_default();
        let lat = pct(&r.latency_us);
        let dspan = r.last_delivery_rt.saturating_sub(p.first_rt_us) as f64 / 1e6;
        let drate = per_s(r.deliveries, dspan);
        line(
            &mut out,
            format!(
                "published: {} ({} ok, {} failed{}), {} publishes/s, API response {}",
                p.published,
                p.ok,
                p.failed,
                if p.failed_by_status.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", p.failed_by_status)
                },
                si(p.publishes_per_s),
                fmt_percentiles(&p.response_us)
            ),
        );
        line(
            &mut out,
            format!(
                "deliveries: {} of {} expected in {:.2}s (first publish to last delivery): {} deliveries/s",
                r.deliveries, r.seq.expected, dspan, si(drate)
            ),
        );
        line(
            &mut out,
            format!("end-to-end latency: {}", fmt_percentiles(&lat)),
        );
        let lost_label = if cfg.scenario == Scenario::Churn {
            "lost while connected"
        } else {
            "lost"
        };
        line(
            &mut out,
            format!(
                "{lost_label}: {} ({} before a lifetime's first delivery, {} after its last), duplicated: {}, out of order: {}, excused (failed publishes): {}, early: {}",
                r.seq.lost, r.seq.lost_head, r.seq.lost_tail, r.seq.duplicates, r.seq.out_of_order, r.seq.excused, r.seq.early
            ),
        );
        let per_read = if r.reads > 0 {
            r.deliveries as f64 / r.reads as f64
        } else {
            0.0
        };
        line(
            &mut out,
            format!(
                "reads: {} returning data, {:.2} deliveries and {:.0} bytes per read (how much the gateway batched its writes)",
                r.reads,
                per_read,
                if r.reads > 0 { r.bytes_in as f64 / r.reads as f64 } else { 0.0 }
            ),
        );
        res.insert("reads".into(), json!(r.reads));
        res.insert(
            "deliveries_per_read".into(),
            json!((per_read * 100.0).round() / 100.0),
        );
        res.insert("publish".into(), json!(p));
        res.insert("deliveries".into(), json!(r.deliveries));
        res.insert("expected".into(), json!(r.seq.expected));
        res.insert(
            "delivery_span_s".into(),
            json!((dspan * 1000.0).round() / 1000.0),
        );
        res.insert("deliveries_per_s".into(), json!(drate));
        res.insert("latency_us".into(), json!(lat));
        res.insert("seq".into(), json!(r.seq));
        res.insert("lost".into(), json!(r.seq.lost));
        res.insert("duplicated".into(), json!(r.seq.duplicates));
        res.insert("out_of_order".into(), json!(r.seq.out_of_order));
        chart.push(series(&format!("{}: delivery", cfg.label), &lat));
        headline.push(format!(
            "{} deliveries/s; latency p50 {} p99 {} p99.9 {} max {}; {lost_label} {}, dup {}, ooo {}",
            si(drate),
            fmt_us(lat.p50),
            fmt_us(lat.p99),
            fmt_us(lat.p999),
            fmt_us(lat.max),
            r.seq.lost,
            r.seq.duplicates,
            r.seq.out_of_order
        ));
        if cfg.scenario == Scenario::Churn {
            line(
                &mut out,
                format!(
                    "churn: {} departures ({} skipped), {} reconnects, reconnect failures: {}, {} lifetimes",
                    r.churn_closes,
                    r.churn_skipped,
                    r.reconnects,
                    r.reconnect_failures.describe(),
                    r.seq.lifetimes
                ),
            );
            res.insert("churn_closes".into(), json!(r.churn_closes));
            res.insert("churn_skipped".into(), json!(r.churn_skipped));
            res.insert("reconnects".into(), json!(r.reconnects));
            res.insert("reconnect_failures".into(), json!(r.reconnect_failures));
            res.insert("lifetimes".into(), json!(r.seq.lifetimes));
            res.insert("lost_while_connected".into(), json!(r.seq.lost));
            headline.push(format!("{} reconnects", r.reconnects));
        }
        if cfg.scenario == Scenario::Users {
            // Every delivery went to the one user it was addressed to: "lost" and "duplicated" above are per user.
            line(
                &mut out,
                format!(
                    "users: {} addressed round robin ({} of them connected), {} pushes each on average; pushes at the wrong user: {}",
                    cfg.conns,
                    r.connected,
                    si(p.published as f64 / cfg.conns as f64),
                    r.misdelivered
                ),
            );
            res.insert("users".into(), json!(cfg.conns));
            res.insert("misdelivered".into(), json!(r.misdelivered));
            headline.push(format!(
                "{} pushes/s, {} at the wrong user",
                si(p.publishes_per_s),
                r.misdelivered
            ));
        }
        if cfg.scenario == Scenario::Acks {
            let ack = pct(&r.ack_rtt_us);
            let up_rate = per_s(r.acks_sent, dspan);
            line(
                &mut out,
                format!(
                    "receipts: {} sent, {} pongs ({} unmatched): {} upstream frames/s; receipt round trip: {}",
                    r.acks_sent,
                    r.pongs,
                    r.pongs_unmatched,
                    si(up_rate),
                    fmt_percentiles(&ack)
                ),
            );
            res.insert("acks_sent".into(), json!(r.acks_sent));
            res.insert("pongs".into(), json!(r.pongs));
            res.insert("pongs_unmatched".into(), json!(r.pongs_unmatched));
            res.insert("upstream_per_s".into(), json!(up_rate));
            res.insert("receipt_rtt_us".into(), json!(ack));
            chart.push(series(&format!("{}: receipt RTT", cfg.label), &ack));
            headline.push(format!(
                "{} upstream/s; receipt RTT p50 {} p99 {}",
                si(up_rate),
                fmt_us(ack.p50),
                fmt_us(ack.p99)
            ));
        }
    }

    if cfg.scenario == Scenario::Echo {
        let rtt = pct(&r.rtt_us);
        let rate = per_s(r.echo_in_window, cfg.duration_s);
        line(
            &mut out,
            format!(
                "echo: {} sent, {} received ({} malformed): {} messages/s, {} MiB/s each way",
                r.echo_sent,
                r.echo_recv,
                r.echo_bad,
                si(rate),
                (rate * cfg.size as f64 / (1 << 20) as f64 * 10.0).round() / 10.0
            ),
        );
        line(&mut out, format!("round trip: {}", fmt_percentiles(&rtt)));
        res.insert("echo_sent".into(), json!(r.echo_sent));
        res.insert("echo_received".into(), json!(r.echo_recv));
        res.insert("echo_malformed".into(), json!(r.echo_bad));
        res.insert("messages_per_s".into(), json!(rate));
        res.insert("rtt_us".into(), json!(rtt));
        chart.push(series(&format!("{}: RTT", cfg.label), &rtt));
        headline.push(format!(
            "{} msgs/s; RTT p50 {} p99 {} p99.9 {} max {}",
            si(rate),
            fmt_us(rtt.p50),
            fmt_us(rtt.p99),
            fmt_us(rtt.p999),
            fmt_us(rtt.max)
        ));
    }

    // Health of the connections during the run.
    let closes: Vec<String> = r
        .server_closes
        .iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect();
    line(
        &mut out,
        format!(
            "server closes: {}; dropped without close: {}; protocol errors: {}; error replies: {}; other messages: {}; server pings: {}; close timeouts: {}",
            if closes.is_empty() { "none".into() } else { closes.join(" ") },
            r.dropped,
            r.protocol_errors,
            r.server_errors,
            r.other_msgs,
            r.server_pings,
            r.close_timeouts
        ),
    );
    res.insert("server_closes".into(), json!(r.server_closes));
    res.insert("dropped".into(), json!(r.dropped));
    res.insert("protocol_errors".into(), json!(r.protocol_errors));
    res.insert("inflate_errors".into(), json!(r.inflate_errors));
    res.insert("inflated".into(), json!(r.inflated));
    res.insert("server_error_replies".into(), json!(r.server_errors));
    res.insert("server_pings".into(), json!(r.server_pings));
    res.insert("other_messages".into(), json!(r.other_msgs));
    res.insert("close_timeouts".into(), json!(r.close_timeouts));
    res.insert("bytes_in".into(), json!(r.bytes_in));
    res.insert("bytes_out".into(), json!(r.bytes_out));

    if let (Some(b), Some(a)) = (ctx.tcp_before, ctx.tcp_after) {
        let retrans = a.retrans_segs.saturating_sub(b.retrans_segs);
        let probes = a.loss_probes.saturating_sub(b.loss_probes);
        let overflows = a.listen_overflows.saturating_sub(b.listen_overflows);
        let drops = a.listen_drops.saturating_sub(b.listen_drops);
        line(
            &mut out,
            format!("kernel TCP during the run (whole machine): {retrans} segments retransmitted ({probes} of them tail-loss probes), {overflows} accept-queue overflows, {drops} listen drops"),
        );
        res.insert("tcp_loss_probes".into(), json!(probes));
        res.insert("tcp_retransmits".into(), json!(retrans));
        res.insert("listen_overflows".into(), json!(overflows));
        res.insert("listen_drops".into(), json!(drops));
    }

    // Who used the CPU.
    let gen_pct = if ctx.total_s > 0.0 {
        ctx.generator_cpu_ms as f64 / 10.0 / ctx.total_s
    } else {
        0.0
    };
    let mut cpu = format!(
        "CPU: generator {:.1}s over {:.1}s ({:.0}% of one core)",
        ctx.generator_cpu_ms as f64 / 1000.0,
        ctx.total_s,
        gen_pct
    );
    res.insert("generator_cpu_ms".into(), json!(ctx.generator_cpu_ms));
    res.insert(
        "total_s".into(),
        json!((ctx.total_s * 100.0).round() / 100.0),
    );
    if let Some(ms) = ctx.server_cpu_connect_ms {
        let p = if ctx.connect_s > 0.0 {
            ms as f64 / 10.0 / ctx.connect_s
        } else {
            0.0
        };
        cpu.push_str(&format!(
            "; server {:.1}s over the {:.1}s connection phase ({:.0}% of one core)",
            ms as f64 / 1000.0,
            ctx.connect_s,
            p
        ));
        res.insert("server_cpu_connect_ms".into(), json!(ms));
        res.insert(
            "connect_s".into(),
            json!((ctx.connect_s * 100.0).round() / 100.0),
        );
    }
    if let (Some(ms), false) = (ctx.server_cpu_ms, cfg.scenario == Scenario::Connect) {
        let p = if ctx.load_s > 0.0 {
            ms as f64 / 10.0 / ctx.load_s
        } else {
            0.0
        };
        cpu.push_str(&format!(
            "; server {:.1}s over the {:.1}s load phase ({:.0}% of one core)",
            ms as f64 / 1000.0,
            ctx.load_s,
            p
        ));
        res.insert("server_cpu_ms".into(), json!(ms));
        res.insert("load_s".into(), json!((ctx.load_s * 100.0).round() / 100.0));
    }
    line(&mut out, cpu);
    if let (Some(m), true) = (
        ctx.machine_load,
        ctx.load_s > 0.0 && cfg.scenario != Scenario::Connect,
    ) {
        let pct = |ms: u64| (ms as f64 / 10.0 / ctx.load_s).round();
        let server = ctx.server_cpu_ms.unwrap_or(0);
        let other = m
            .busy_ms
            .saturating_sub(server + ctx.generator_load_ms + m.irq_ms);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        line(
            &mut out,
            format!(
                "machine over the load phase ({} cores, % of one core): busy {}%, idle {}%; server {}%, generator {}%, interrupts {}%, other processes {}%",
                cores,
                pct(m.busy_ms),
                pct(m.idle_ms),
                pct(server),
                pct(ctx.generator_load_ms),
                pct(m.irq_ms),
                pct(other)
            ),
        );
        if pct(other) >= 20.0 {
            line(
                &mut out,
                format!("WARNING: other processes used {}% of a core during the load phase: figures are disturbed", pct(other)),
            );
        }
        res.insert(
            "machine_load_pct".into(),
            json!({"busy": pct(m.busy_ms), "idle": pct(m.idle_ms), "server": pct(server),
                   "generator": pct(ctx.generator_load_ms), "interrupts": pct(m.irq_ms), "other": pct(other)}),
        );
    }

    res.insert("headline".into(), json!(headline.join("; ")));
    res.insert("latency_series".into(), json!(chart));
    let command = redacted_command(std::env::args());
    let doc = json!({
        "tool": "wsgate-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "scenario": cfg.scenario.name(),
        "label": cfg.label,
        "date": utc_now(),
        "command": command,
        "params": cfg.params_json(),
        "results": Value::Object(res),
    });
    (out, doc)
}

/// The command line for the record, with the values of --api-key and --jwt-secret replaced.
pub fn redacted_command(args: impl Iterator<Item = String>) -> String {
    const SECRETS: [&str; 2] = ["--api-key", "--jwt-secret"];
    let mut out = Vec::new();
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("***".to_string());
            hide_next = false;
        } else if SECRETS.contains(&a.as_str()) {
            out.push(a);
            hide_next = true;
        } else if let Some(flag) = SECRETS.iter().find(|f| a.starts_with(&format!("{f}="))) {
            out.push(format!("{flag}=***"));
        } else {
            out.push(a);
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_is_redacted() {
        let args = [
            "b",
            "fanout",
            "--api-key",
            "s3cret",
            "--api-key=x",
            "--conns",
            "5",
            "--jwt-secret",
            "k",
            "--jwt-secret=k",
        ]
        .map(String::from);
        assert_eq!(
            redacted_command(args.into_iter()),
            "b fanout --api-key *** --api-key=*** --conns 5 --jwt-secret *** --jwt-secret=***"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(fmt_utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(fmt_utc(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(fmt_utc(1_700_000_000), "2023-11-14 22:13:20Z");
    }

    #[test]
    fn rates() {
        assert_eq!(per_s(100, 2.0), 50.0);
        assert_eq!(per_s(100, 0.0), 0.0);
        assert_eq!(si(1_500_000.0), "1.50M");
        assert_eq!(si(25_000.0), "25.0k");
        assert_eq!(si(999.0), "999");
    }
}
