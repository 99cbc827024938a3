//! /api/stats (JSON) and /metrics (Prometheus text) from the reactors' published counters.

use super::Context;
use crate::gateway::stats::{self, GatewayTally};
use crate::hub::Hub;
use crate::reactor::Tally;
use serde_json::json;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// (metric name, help, is_counter, field accessor)
type Field = (&'static str, &'static str, bool, fn(&Tally) -> u64);

const FIELDS: &[Field] = &[
    ("connections", "Open WebSocket connections.", false, |t| {
        t.connections
    }),
    (
        "channels",
        "Channels with at least one local subscriber.",
        false,
        |t| t.channels,
    ),
    (
        "read_buffers_lent",
        "Read buffers lent to connections with a partial frame.",
        false,
        |t| t.read_buffers_lent,
    ),
    (
        "buffered_bytes",
        "Bytes of input buffers lent to connections (partial frames, fragmented messages, request heads).",
        false,
        |t| t.buffered_bytes,
    ),
    (
        "handshakes_total",
        "Completed WebSocket upgrades.",
        true,
        |t| t.handshakes_total,
    ),
    (
        "handshake_failures_total",
        "Refused or timed-out upgrades.",
        true,
        |t| t.handshake_failures_total,
    ),
    ("closed_total", "Closed TCP connections.", true, |t| {
        t.closed_total
    }),
    (
        "messages_in_total",
        "Messages received from clients.",
        true,
        |t| t.messages_in_total,
    ),
    (
        "messages_out_total",
        "Frames queued to clients.",
        true,
        |t| t.messages_out_total,
    ),
    ("bytes_in_total", "Bytes read from clients.", true, |t| {
        t.bytes_in_total
    }),
    ("bytes_out_total", "Bytes written to clients.", true, |t| {
        t.bytes_out_total
    }),
    (
        "slow_consumer_closes_total",
        "Connections closed because their outbound queue was full.",
        true,
        |t| t.slow_consumer_closes_total,
    ),
    (
        "memory_budget_closes_total",
        "Connections closed with 1008 because buffered input exceeded server.max_buffered_bytes.",
        true,
        |t| t.memory_budget_closes_total,
    ),
    (
        "message_timeouts_total",
        "Connections closed with 1008 for a message not completed within ws.message_timeout.",
        true,
        |t| t.message_timeouts_total,
    ),
    (
        "protocol_errors_total",
        "Protocol violations and malformed requests from clients.",
        true,
        |t| t.protocol_errors_total,
    ),
    (
        "idle_timeouts_total",
        "Connections closed for silence.",
        true,
        |t| t.idle_timeouts_total,
    ),
    (
        "refused_total",
        "Connections refused over server.max_connections.",
        true,
        |t| t.refused_total,
    ),
    (
        "publishes_total",
        "Publish commands processed by the reactor.",
        true,
        |t| t.publishes_total,
    ),
    (
        "tls_handshakes_total",
        "Completed TLS handshakes.",
        true,
        |t| t.tls_handshakes_total,
    ),
    (
        "tls_failures_total",
        "TLS connections closed for a TLS failure (bad records, plaintext, unknown SNI, handshake timeout).",
        true,
        |t| t.tls_failures_total,
    ),
    (
        "tls_sessions",
        "TLS connections held, handshaking or open (the rest of wsgate_connections is plaintext).",
        false,
        |t| t.tls_sessions,
    ),
    (
        "deflate_bytes_in_total",
        "Payload bytes of shared frames compressed for permessage-deflate (before compression).",
        true,
        |t| t.deflate_bytes_in_total,
    ),
    (
        "deflate_bytes_out_total",
        "Payload bytes those frames compressed to (once per publish and reactor, not per subscriber).",
        true,
        |t| t.deflate_bytes_out_total,
    ),
    (
        "inflate_bytes_in_total",
        "Compressed payload bytes of client messages inflated.",
        true,
        |t| t.inflate_bytes_in_total,
    ),
    (
        "inflate_bytes_out_total",
        "Bytes those client messages inflated to.",
        true,
        |t| t.inflate_bytes_out_total,
    ),
    (
        "zerocopy_sends_total",
        "Zero-copy sends of large frames (ws.zerocopy_threshold).",
        true,
        |t| t.zerocopy_sends_total,
    ),
    (
        "zerocopy_pinned_bytes",
        "Bytes of frames sent zero-copy that the kernel may still read (released at its notification).",
        false,
        |t| t.zerocopy_pinned_bytes,
    ),
    (
        "zerocopy_parked",
        "Closed connections whose slot and socket wait for the kernel's zero-copy notifications.",
        false,
        |t| t.zerocopy_parked,
    ),
];

pub fn stats_json(ctx: &Context) -> String {
    let per: Vec<Tally> = ctx.hub.totals();
    let reactors: Vec<serde_json::Value> = per
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut m = serde_json::Map::new();
            m.insert("reactor".into(), json!(i));
            for (name, _, _, get) in FIELDS {
                m.insert((*name).into(), json!(get(t)));
            }
            if let Some(api) = ctx.per_reactor.get(i) {
                let r = Ordering::Relaxed;
                m.insert("api_connections".into(), json!(api.connections.load(r)));
                m.insert(
                    "api_requests_total".into(),
                    json!(api.requests_total.load(r)),
                );
            }
            serde_json::Value::Object(m)
        })
        .collect();
    let mut totals = serde_json::Map::new();
    for (name, _, _, get) in FIELDS {
        totals.insert((*name).into(), json!(per.iter().map(get).sum::<u64>()));
    }
    let r = Ordering::Relaxed;
    json!({
        "ok": true,
        "uptime_seconds": ctx.hub.started.elapsed().as_secs(),
        "totals": totals,
        "reactors": reactors,
        "api": {
            "requests_total": ctx.stats.requests_total.load(r),
            "errors_total": ctx.stats.errors_total.load(r),
            "publishes_total": ctx.stats.publishes_total.load(r),
            "broadcasts_total": ctx.stats.broadcasts_total.load(r),
            "batches_total": ctx.stats.batches_total.load(r),
            "batch_commands_total": ctx.stats.batch_commands_total.load(r),
            "batch_failed_commands_total": ctx.stats.batch_failed_commands_total.load(r),
        },
        "handoff": handoff_json(&ctx.hub),
        "sessions": gateway_json(&ctx.hub),
        "cluster": ctx.cluster.as_ref().map(|c| c.stats_json()),
        "latency": super::latency::stats_json(ctx),
        "server": super::status_routes::summary_json(ctx),
        "history": history_usage(&ctx.hub).map(|(bytes, publications, channels)| json!({
            "bytes": bytes, "publications": publications, "channels": channels,
        })),
    })
    .to_string()
}

pub fn prometheus(ctx: &Context) -> String {
    let per = ctx.hub.totals();
    let mut out = String::with_capacity(4096);
    for (name, help, counter, get) in FIELDS {
        let kind = if *counter { "counter" } else { "gauge" };
        let _ = writeln!(
            out,
            "# HELP wsgate_{name} {help}\n# TYPE wsgate_{name} {kind}"
        );
        for (i, t) in per.iter().enumerate() {
            let _ = writeln!(out, "wsgate_{name}{{reactor=\"{i}\"}} {}", get(t));
        }
    }
    let r = Ordering::Relaxed;
    let api: [(&str, &str, u64); 7] = [
        (
            "api_requests_total",
            "HTTP API requests.",
            ctx.stats.requests_total.load(r),
        ),
        (
            "api_errors_total",
            "HTTP API requests answered with an error.",
            ctx.stats.errors_total.load(r),
        ),
        (
            "api_publishes_total",
            "Channel publishes accepted by the API.",
            ctx.stats.publishes_total.load(r),
        ),
        (
            "api_broadcasts_total",
            "Broadcasts accepted by the API.",
            ctx.stats.broadcasts_total.load(r),
        ),
        (
            "api_batches_total",
            "POST /api/batch requests with a valid array of commands.",
            ctx.stats.batches_total.load(r),
        ),
        (
            "api_batch_commands_total",
            "Commands in those batches.",
            ctx.stats.batch_commands_total.load(r),
        ),
        (
            "api_batch_failed_commands_total",
            "Batch commands answered with an error (the others of their batch were done).",
            ctx.stats.batch_failed_commands_total.load(r),
        ),
    ];
    for (name, help, v) in api {
        let _ = writeln!(
            out,
            "# HELP wsgate_{name} {help}\n# TYPE wsgate_{name} counter\nwsgate_{name} {v}"
        );
    }
    gateway_prometheus(&ctx.hub, &mut out);
    handoff_prometheus(&ctx.hub, &mut out);
    if let Some((bytes, publications, channels)) = history_usage(&ctx.hub) {
        for (name, help, v) in [
            (
                "history_bytes",
                "Bytes of channel history held in memory (channels.history_max_bytes bounds it).",
                bytes,
            ),
            (
                "history_publications",
                "Channel publications held in memory for recovery.",
                publications,
            ),
            (
                "history_channels",
                "Channels with a history in memory.",
                channels,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP wsgate_{name} {help}\n# TYPE wsgate_{name} gauge\nwsgate_{name} {v}"
            );
        }
    }
    if let Some(cluster) = &ctx.cluster {
        cluster.write_prometheus(&mut out);
    }
    let _ = writeln!(
        out,
        "# HELP wsgate_uptime_seconds Seconds since start.\n# TYPE wsgate_uptime_seconds gauge"
    );
    let _ = writeln!(
        out,
        "wsgate_uptime_seconds {}",
        ctx.hub.started.elapsed().as_secs()
    );
    out
}
/// Per reactor: batches of commands handed to it by other threads, and eventfd writes that woke it.
fn handoffs_per_reactor(hub: &Hub) -> Vec<(u64, u64)> {
    hub.reactors
        .iter()
        .map(|h| (h.batches_total.load(Ordering::Relaxed), h.waker.wakeups()))
        .collect()
}

/// The `"handoff"` object of `/api/stats`: publishes handed to the reactors, batches, wake-ups, and wake-ups per
/// publish (null before the first publish).
fn handoff_json(hub: &Hub) -> serde_json::Value {
    let per = handoffs_per_reactor(hub);
    let publishes = hub.handoff.publishes_total.load(Ordering::Relaxed);
    let wakeups: u64 = per.iter().map(|p| p.1).sum();
    json!({
        "publishes_total": publishes,
        "batches_total": per.iter().map(|p| p.0).sum::<u64>(),
        "wakeups_total": wakeups,
        "wakeups_per_publish": (publishes > 0).then(|| wakeups as f64 / publishes as f64),
    })
}

fn handoff_prometheus(hub: &Hub, out: &mut String) {
    let per = handoffs_per_reactor(hub);
    let series = [
        (
            "handoff_batches_total",
            "Batches of commands (publishes, targeted pushes, queries) other threads handed to the reactor.",
            per.iter().map(|p| p.0).collect::<Vec<_>>(),
        ),
        (
            "wakeups_total",
            "Times another thread woke the reactor from sleep (eventfd writes).",
            per.iter().map(|p| p.1).collect(),
        ),
    ];
    for (name, help, values) in series {
        let _ = writeln!(
            out,
            "# HELP wsgate_{name} {help}\n# TYPE wsgate_{name} counter"
        );
        for (i, v) in values.iter().enumerate() {
            let _ = writeln!(out, "wsgate_{name}{{reactor=\"{i}\"}} {v}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP wsgate_handoff_publishes_total Publishes (channel, broadcast, user, socket id) handed to the reactors, \
         once each whatever the number of reactors.\n# TYPE wsgate_handoff_publishes_total counter\n\
         wsgate_handoff_publishes_total {}",
        hub.handoff.publishes_total.load(Ordering::Relaxed)
    );
}

/// Channel history held in memory: (bytes, publications, channels); None without history namespaces.
fn history_usage(hub: &Hub) -> Option<(usize, usize, usize)> {
    hub.gateway.history.as_ref().map(|h| h.usage())
}

fn gateway_per_reactor(hub: &Hub) -> Vec<GatewayTally> {
    hub.reactors.iter().map(|r| r.gateway.load()).collect()
}

/// The `"sessions"` object of `/api/stats`: totals over reactors plus the API counters.
fn gateway_json(hub: &Hub) -> serde_json::Value {
    let per = gateway_per_reactor(hub);
    let mut m = serde_json::Map::new();
    for (name, _, get) in stats::FIELDS {
        m.insert((*name).into(), per.iter().map(get).sum::<u64>().into());
    }
    for (name, _, v) in hub.gateway.api.fields() {
        m.insert(name.into(), v.into());
    }
    if let Some(log) = &hub.gateway.user_log {
        let (messages, bytes, evicted) = log.usage();
        m.insert("replay_store_messages".into(), messages.into());
        m.insert("replay_store_bytes".into(), bytes.into());
        m.insert("replay_store_evicted_total".into(), evicted.into());
    }
    m.insert(
        "auth_mode".into(),
        match hub.gateway.verifier {
            Some(_) => "jwt",
            None => "none",
        }
        .into(),
    );
    serde_json::Value::Object(m)
}

/// Appends the gateway series to the Prometheus text.
fn gateway_prometheus(hub: &Hub, out: &mut String) {
    let per = gateway_per_reactor(hub);
    for (name, help, get) in stats::FIELDS {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(
            out,
            "# HELP wsgate_{name} {help}\n# TYPE wsgate_{name} {kind}"
        );
        for (i, t) in per.iter().enumerate() {
            let _ = writeln!(out, "wsgate_{name}{{reactor=\"{i}\"}} {}", get(t));
        }
    }
    for (name, help, v) in hub.gateway.api.fields() {
        let _ = writeln!(
            out,
            "# HELP wsgate_{name} {help}\n# TYPE wsgate_{name} counter\nwsgate_{name} {v}"
        );
    }
    if let Some(log) = &hub.gateway.user_log {
        let (messages, bytes, evicted) = log.usage();
        let series: [(&str, &str, &str, u64); 3] = [
            ("replay_store_messages", "gauge", "User pushes kept in memory for replay (standalone).", messages as u64),
            ("replay_store_bytes", "gauge", "Bytes the standalone replay store holds (delivery.offline_max_bytes).", bytes as u64),
            ("replay_store_evicted_total", "counter", "User pushes dropped from the replay store before their age, over delivery.offline_max_bytes.", evicted),
        ];
        for (name, kind, help, v) in series {
            let _ = writeln!(
                out,
                "# HELP wsgate_{name} {help}\n# TYPE wsgate_{name} {kind}\nwsgate_{name} {v}"
            );
        }
    }
}
