//! API routes. Every error is a JSON body `{"ok":false,"error":"..."}` with a meaningful status.

use super::http::{Request, Response};
use super::metrics;
use crate::config::Config;
use crate::hub::Hub;
use crate::protocol;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::atomic::Ordering;

/// Routes and the methods they take (for 404 vs 405).
const ROUTES: &[(&str, &str)] = &[
    ("/api/publish", "POST"),
    ("/api/broadcast", "POST"),
    ("/api/stats", "GET"),
    ("/healthz", "GET"),
    ("/metrics", "GET"),
    ("/api/reload-tls", "POST"),
];

pub fn handle(req: &Request<'_>, hub: &Hub, config: &Config) -> Response {
    let response = route(req, hub, config);
    if response.status >= 400 {
        hub.api.errors_total.fetch_add(1, Ordering::Relaxed);
    }
    response
}

fn route(req: &Request<'_>, hub: &Hub, config: &Config) -> Response {
    let Some(&(_, method)) = ROUTES.iter().find(|(p, _)| *p == req.path) else {
        return Response::error(404, "no such route");
    };
    if req.method != method {
        let mut r = Response::error(405, "method not allowed");
        r.allow = Some(method);
        return r;
    }
    // /healthz stays open so load balancers need no key.
    if req.path != "/healthz" && !authorized(req, config) {
        return Response::error(401, "missing or wrong API key (Authorization: apikey KEY)");
    }
    match req.path {
        "/api/publish" => publish(req.body, hub),
        "/api/broadcast" => broadcast(req.body, hub),
        "/api/stats" => Response::json(200, metrics::stats_json(hub)),
        "/healthz" => Response::json(200, "{\"ok\":true}"),
        "/api/reload-tls" => reload_tls(hub),
        "/metrics" => {
            let mut r = Response::json(200, metrics::prometheus(hub));
            r.content_type = "text/plain; version=0.0.4";
            r
        }
        _ => Response::error(404, "no such route"),
    }
}

fn authorized(req: &Request<'_>, config: &Config) -> bool {
    let key = config.api.api_key.as_bytes();
    if key.is_empty() {
        return true;
    }
    let Some(value) = req.authorization else {
        return false;
    };
    let Some(given) = value.strip_prefix(b"apikey ") else {
        return false;
    };
    constant_time_eq(given.trim_ascii(), key)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channels: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| Response::error(400, &format!("invalid JSON body: {e}")))
}

fn publish(body: &[u8], hub: &Hub) -> Response {
    let req: PublishBody = match parse_body(body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(data) = req.data else {
        return Response::error(400, "\"data\" is required (any JSON value but null)");
    };
    let names: Vec<Cow<str>> = match (req.channel, req.channels) {
        (Some(c), None) => vec![c],
        (None, Some(list)) if !list.is_empty() => list,
        (None, _) => {
            return Response::error(
                400,
                "\"channel\" (a name) or \"channels\" (a list) is required",
            )
        }
        (Some(_), Some(_)) => {
            return Response::error(400, "give either \"channel\" or \"channels\", not both")
        }
    };
    if let Some(bad) = names.iter().find(|n| !protocol::valid_channel(n)) {
        let msg = format!(
            "invalid channel name {:?} (1..=255 bytes, no control characters)",
            bad
        );
        return Response::error(400, &msg);
    }
    for name in &names {
        hub.publish(name, protocol::channel_message(name, data.get()));
    }
    hub.api
        .publishes_total
        .fetch_add(names.len() as u64, Ordering::Relaxed);
    Response::json(200, format!("{{\"ok\":true,\"channels\":{}}}", names.len()))
}

#[derive(Deserialize)]
struct BroadcastBody<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

fn broadcast(body: &[u8], hub: &Hub) -> Response {
    let req: BroadcastBody = match parse_body(body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(data) = req.data else {
        return Response::error(400, "\"data\" is required (any JSON value but null)");
    };
    hub.broadcast(protocol::broadcast_message(data.get()));
    hub.api.broadcasts_total.fetch_add(1, Ordering::Relaxed);
    Response::json(200, "{\"ok\":true}")
}

/// `POST /api/reload-tls`: re-reads tls.cert and tls.key (like SIGHUP). 400 without TLS, 500 if the new files
/// are unusable (the old certificate stays in use).
fn reload_tls(hub: &Hub) -> Response {
    if hub.tls.is_none() {
        return Response::error(400, "TLS is not configured (set tls.cert and tls.key)");
    }
    match crate::server::reload_tls(hub.tls.as_deref()) {
        Ok(()) => Response::json(200, "{\"ok\":true}"),
        Err(e) => Response::error(
            500,
            &format!("TLS reload failed, old certificate kept: {e}"),
        ),
    }
}
