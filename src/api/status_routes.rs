//! The operator's view on the API listener: `GET /status` (one static HTML page embedded in the binary, no external
//! assets, no build step), `GET /api/stats/stream` (the last minutes, a point a second, that its charts draw) and
//! `GET /api/channels/top` (the busiest channels).
//! Both sit behind `api.api_key` when it is set; a browser sends the key as the Basic-auth password.

use super::http::{Request, Response};
use super::Context;
use crate::reactor::{ChannelLoad, BUSIEST};
use serde_json::json;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::PoisonError;

const STATUS_PAGE: &str = include_str!("status.html");
const CHALLENGE: &str =
    "WWW-Authenticate: Basic realm=\"wsgate\", charset=\"UTF-8\"\r\nCache-Control: no-store\r\n";

/// Answers the routes of this file; None for any other path.
pub fn route(req: &Request<'_>, ctx: &Context) -> Option<Response> {
    if !["/status", "/api/stats/stream", "/api/channels/top"].contains(&req.path) {
        return None;
    }
    if req.method != "GET" {
        let mut r = Response::error(405, "method not allowed");
        r.allow = Some("GET");
        return Some(r);
    }
    if !super::routes::authorized(req, &ctx.config) {
        let mut r = Response::error(
            401,
            "missing or wrong API key (Authorization: apikey KEY, or the key as the Basic-auth password)",
        );
        r.extra_headers = CHALLENGE;
        return Some(r);
    }
    Some(match req.path {
        "/status" => {
            let mut r = Response::json(200, STATUS_PAGE);
            r.content_type = "text/html; charset=utf-8";
            r.extra_headers = "Cache-Control: no-store\r\n";
            r
        }
        "/api/channels/top" => Response::json(200, busiest_json(ctx)),
        _ => match since(req.query) {
            Ok(since) => {
                let history = ctx.history.lock().unwrap_or_else(PoisonError::into_inner);
                Response::json(200, history.json(since))
            }
            Err(message) => Response::error(400, message),
        },
    })
}

/// The `since` query parameter: a sequence number from an earlier answer; absent = everything kept.
fn since(query: &str) -> Result<u64, &'static str> {
    let mut since = 0;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("since", value)) => {
                since = value
                    .parse()
                    .map_err(|_| "\"since\" must be a sequence number (0..2^64)")?
            }
            _ => return Err("unknown query parameter (only \"since\" is taken)"),
        }
    }
    Ok(since)
}

/// The busiest channels over all reactors (subscribers and deliveries summed by name), most subscribers first,
/// as of each reactor's last refresh; asks every reactor to refresh within a second for the next call.
fn busiest_json(ctx: &Context) -> String {
    let mut by_name: HashMap<String, ChannelLoad> = HashMap::new();
    for r in &ctx.hub.reactors {
        for c in r.busiest.snapshot() {
            let e = by_name.entry(c.name.clone()).or_insert(ChannelLoad {
                subscribers: 0,
                deliveries: 0,
                ..c
            });
            e.subscribers += c.subscribers;
            e.deliveries = e.deliveries.wrapping_add(c.deliveries);
        }
        r.busiest.want();
    }
    let mut list: Vec<ChannelLoad> = by_name.into_values().collect();
    list.sort_by(|a, b| {
        (b.subscribers, b.deliveries, &a.name).cmp(&(a.subscribers, a.deliveries, &b.name))
    });
    list.truncate(BUSIEST);
    let channels: Vec<serde_json::Value> = list
        .iter()
        .map(|c| json!({"channel": c.name, "subscribers": c.subscribers, "deliveries_total": c.deliveries}))
        .collect();
    json!({"ok": true, "channels": channels}).to_string()
}

/// The `"server"` object of /api/stats: what is running and how it is set up.
pub fn summary_json(ctx: &Context) -> serde_json::Value {
    let c = &ctx.config;
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "node_id": ctx.hub.gateway.node_id,
        "reactors": ctx.hub.reactors.len(),
        "listen": c.server.listen,
        "tls": !c.tls.cert.is_empty(),
        "plain_listen": c.tls.plain_listen,
        "max_connections": c.server.max_connections,
        "max_outbound_bytes": c.ws.max_outbound_bytes,
        "max_message_size": c.ws.max_message_size,
        "ping_interval": c.ws.ping_interval,
        "api_key_set": !c.api.api_key.is_empty(),
        "cluster": ctx.cluster.is_some(),
    })
}

/// Series an alert needs beside the counters: the connection limit (capacity alerts) and the build.
pub fn write_prometheus(ctx: &Context, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP wsgate_connections_limit Connections this node holds at most (server.max_connections, lowered to \
         what RLIMIT_NOFILE allows).\n# TYPE wsgate_connections_limit gauge\nwsgate_connections_limit {}",
        ctx.config.server.max_connections
    );
    let _ = writeln!(
        out,
        "# HELP wsgate_build_info The running version (always 1).\n# TYPE wsgate_build_info gauge\n\
         wsgate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
}

#[cfg(test)]
mod tests {
    use super::since;

    #[test]
    fn since_takes_a_number_or_nothing_and_refuses_the_rest() {
        assert_eq!(since(""), Ok(0));
        assert_eq!(since("since=42"), Ok(42));
        assert!(since("since=-1").is_err());
        assert!(since("since=").is_err());
        assert!(since("after=3").is_err());
    }
}
