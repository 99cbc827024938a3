//! The latency histograms as the API shows them: per-reactor histograms merged on read, written to /metrics as
//! Prometheus histograms (seconds, fixed buckets) and to /api/stats as percentiles (microseconds).

use super::Context;
use crate::reactor::{Latency, QUANTILES};
use serde_json::json;
use std::fmt::Write;

/// Prometheus bucket bounds in seconds: 100 µs to 10 s, roughly ×2.5 apart — loopback deliveries land in the
/// first buckets, a congested node's in the middle, a stalled one in the last.
const BUCKETS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// One measured latency: its name (`wsgate_<name>_seconds`, `/api/stats` `latency.<key>`) and what it spans.
pub struct Measured {
    pub key: &'static str,
    pub metric: &'static str,
    pub help: &'static str,
    pub hist: Latency,
}

/// Every histogram, merged over reactors, as of now. Cluster ones only in cluster mode.
pub fn collect(ctx: &Context) -> Vec<Measured> {
    let mut delivery = Latency::default();
    let mut handshake = Latency::default();
    for r in &ctx.hub.reactors {
        r.latency.delivery.merge_into(&mut delivery);
        r.latency.handshake.merge_into(&mut handshake);
    }
    let mut api = Latency::default();
    ctx.stats.request_latency.merge_into(&mut api);
    let mut out = vec![
        Measured {
            key: "delivery",
            metric: "delivery_latency",
            help: "Publish or broadcast accepted (API or cluster bridge) -> its frame written to the sockets of the \
                   local subscribers, one sample per subscriber.",
            hist: delivery,
        },
        Measured {
            key: "handshake",
            metric: "handshake_duration",
            help: "TCP accept -> 101 response sent (TLS handshake included).",
            hist: handshake,
        },
        Measured {
            key: "api_request",
            metric: "api_request_duration",
            help: "HTTP API request: first byte received -> response queued.",
            hist: api,
        },
    ];
    if let Some(cluster) = &ctx.cluster {
        let mut hop = Latency::default();
        cluster.stats().hop_latency.merge_into(&mut hop);
        let mut replay = Latency::default();
        cluster.stats().replay_latency.merge_into(&mut replay);
        out.push(Measured {
            key: "cluster_hop",
            metric: "cluster_hop_latency",
            help: "Event written to the Redis bus by its origin node (stream id time) -> handed to this node's \
                   reactors. Millisecond resolution; needs synchronized clocks across machines.",
            hist: hop,
        });
        out.push(Measured {
            key: "replay",
            metric: "replay_duration",
            help: "Reading a connecting user's missed messages from Redis.",
            hist: replay,
        });
    }
    out
}

/// `{"count","p50","p90","p99","p999","max"}` in microseconds.
pub fn percentiles_json(h: &Latency) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("count".into(), json!(h.count()));
    for (name, q) in QUANTILES {
        m.insert(name.into(), json!(h.quantile_us(q)));
    }
    m.insert("max".into(), json!(h.max_us()));
    serde_json::Value::Object(m)
}

/// The `"latency"` object of /api/stats: percentiles since start, in microseconds.
pub fn stats_json(ctx: &Context) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("unit".into(), json!("us"));
    for h in collect(ctx) {
        m.insert(h.key.into(), percentiles_json(&h.hist));
    }
    serde_json::Value::Object(m)
}

/// Appends every histogram as a Prometheus histogram in seconds.
pub fn write_prometheus(ctx: &Context, out: &mut String) {
    for h in collect(ctx) {
        let name = format!("wsgate_{}_seconds", h.metric);
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} histogram", h.help);
        for bound in BUCKETS_S {
            let count = h.hist.count_at_most((bound * 1e6) as u64);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.hist.count());
        let _ = writeln!(out, "{name}_sum {}", h.hist.sum_us() as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {}", h.hist.count());
    }
}
