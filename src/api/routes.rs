//! API routes. Every error is a JSON body `{"ok":false,"error":"..."}` with a meaningful status.

use super::borrowed;
use super::http::{Request, Response};
use super::metrics;
use super::Context;
use crate::config::Config;
use crate::hub::Outbox;
use crate::protocol;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Routes and the methods they take (for 404 vs 405).
const ROUTES: &[(&str, &str)] = &[
    ("/api/publish", "POST"),
    ("/api/broadcast", "POST"),
    ("/api/batch", "POST"),
    ("/api/stats", "GET"),
    ("/healthz", "GET"),
    ("/metrics", "GET"),
    ("/api/reload-tls", "POST"),
    ("/api/history", "GET"),
];

/// Whether answering `req` waits (for the reactors' answers, Redis or files): such a request is answered by a
/// worker thread (src/api/worker.rs), never on a reactor. Refusals that need no waiting (405, 401) are not.
pub fn waits(req: &Request<'_>, ctx: &Context) -> bool {
    let wanted = match req.path {
        "/api/disconnect" | "/api/reload-tls" => "POST",
        "/api/presence" => "GET",
        p if p.starts_with("/api/user/") => "GET",
        // Cluster mode: Redis keeps the history, and gives a publication to a channel with history its offset.
        "/api/history" if ctx.cluster.is_some() => "GET",
        "/api/publish" | "/api/batch"
            if ctx.cluster.is_some() && ctx.hub.gateway.history.is_some() =>
        {
            "POST"
        }
        _ => return false,
    };
    req.method == wanted && authorized(req, &ctx.config)
}

/// Answers one request; its hand-overs to the reactors go into `out` (the caller flushes it).
pub fn handle(req: &Request<'_>, ctx: &Context, out: &mut Outbox) -> Response {
    let converted;
    let req = if req.msgpack {
        // A MessagePack body is taken as the JSON it converts to: every route reads one format.
        converted = match crate::msgpack::to_json(req.body) {
            Ok(json) => json,
            Err(e) => {
                ctx.stats.errors_total.fetch_add(1, Ordering::Relaxed);
                return Response::error(400, e);
            }
        };
        &Request {
            body: &converted,
            msgpack: false,
            ..*req
        }
    } else {
        req
    };
    let response = route(req, ctx, &ctx.config, out);
    if response.status >= 400 {
        ctx.stats.errors_total.fetch_add(1, Ordering::Relaxed);
    }
    response
}

fn route(req: &Request<'_>, ctx: &Context, config: &Config, out: &mut Outbox) -> Response {
    // The status page and its live stream (src/api/status_routes.rs).
    if let Some(response) = super::status_routes::route(req, ctx) {
        return response;
    }
    // Disconnect, presence and user lookups (src/api/connection_routes.rs).
    if let Some(response) = super::connection_routes::route(req, ctx, config, out) {
        return response;
    }
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
        "/api/publish" => publish(req.body, ctx, out),
        "/api/broadcast" => broadcast(req.body, ctx, out),
        "/api/batch" => super::batch_routes::batch(req.body, ctx, out),
        "/api/stats" => Response::json(200, metrics::stats_json(ctx)),
        "/healthz" => Response::json(200, "{\"ok\":true}"),
        "/api/reload-tls" => reload_tls(ctx),
        "/api/history" => super::history_routes::history(req.query, ctx),
        "/metrics" => {
            let mut text = metrics::prometheus(ctx);
            super::latency::write_prometheus(ctx, &mut text);
            super::status_routes::write_prometheus(ctx, &mut text);
            let mut r = Response::json(200, text);
            r.content_type = "text/plain; version=0.0.4";
            r
        }
        _ => Response::error(404, "no such route"),
    }
}

pub(super) fn authorized(req: &Request<'_>, config: &Config) -> bool {
    let key = config.api.api_key.as_bytes();
    if key.is_empty() {
        return true;
    }
    let Some(value) = req.authorization else {
        return false;
    };
    if let Some(given) = value.strip_prefix(b"apikey ") {
        return constant_time_eq(given.trim_ascii(), key);
    }
    // A browser (the status page) sends the key as the password of HTTP Basic authentication; any user name.
    let Some(encoded) = value.strip_prefix(b"Basic ") else {
        return false;
    };
    use base64::Engine;
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim_ascii()) else {
        return false;
    };
    match decoded.iter().position(|&b| b == b':') {
        Some(colon) => constant_time_eq(&decoded[colon + 1..], key),
        None => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
pub(super) struct PublishBody<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed::str")]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed::strs")]
    channels: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    // Targets and tenant of identity and sessions (src/api/connection_routes.rs).
    #[serde(borrow, default, deserialize_with = "borrowed::str")]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sid: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "borrowed::str")]
    device: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed::str")]
    tenant: Option<Cow<'a, str>>,
    /// User pushes: delivery confirmation (each connection acks the id, or gets the push again).
    #[serde(default)]
    ack: bool,
}

fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| Response::error(400, &format!("invalid JSON body: {e}")))
}

/// The checks every delivery request shares, in order: `data` present (400), then the tenant's publish rate (429).
fn admit<'a>(
    data: Option<&'a RawValue>,
    tenant: Option<&str>,
    ctx: &Context,
) -> Result<&'a RawValue, Response> {
    let Some(data) = data else {
        return Err(Response::error(
            400,
            "\"data\" is required (any JSON value but null)",
        ));
    };
    if let Some(r) = super::connection_routes::rate_limited(ctx, tenant) {
        return Err(r);
    }
    Ok(data)
}

pub(super) fn publish(body: &[u8], ctx: &Context, out: &mut Outbox) -> Response {
    match parse_body(body) {
        Ok(req) => publish_parsed(req, ctx, out),
        Err(resp) => resp,
    }
}

/// A publish body, parsed (by [`publish`], or as one command of a batch).
pub(super) fn publish_parsed(req: PublishBody, ctx: &Context, out: &mut Outbox) -> Response {
    let data = match admit(req.data, req.tenant.as_deref(), ctx) {
        Ok(d) => d,
        Err(resp) => return resp,
    };
    let targets = super::connection_routes::Targets {
        user: req.user,
        sid: req.sid,
        device: req.device,
        tenant: req.tenant,
        has_channels: req.channel.is_some() || req.channels.is_some(),
        ack: req.ack,
    };
    if let Some(r) = super::connection_routes::publish(ctx, &targets, data, out) {
        return r;
    }
    let (one, list);
    let names: &[Cow<str>] = match (req.channel, req.channels) {
        (Some(c), None) => {
            one = [c];
            &one
        }
        (None, Some(l)) if !l.is_empty() => {
            list = l;
            &list
        }
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
    let mut not_federated = 0;
    let history = ctx.hub.gateway.history.as_deref();
    for name in names {
        // Channels with history: offset and epoch in the frame, kept for replays (src/history/).
        if let Some((h, ns)) = history.and_then(|h| Some((h, h.namespace(name)?))) {
            // Cluster mode: Redis gives the offset and every node (this one too) delivers from the bus.
            if let Some(cluster) = &ctx.cluster {
                if let Err(e) = cluster.read(|r| r.publish_history(name, ns, data.get())) {
                    let msg = format!("channel history unavailable, {name:?} not published: {e}");
                    return Response::error(503, &msg);
                }
                continue;
            }
            if !out.merge(name, data.get(), None) {
                let (frame, offset) = h.publish(name, ns, data.get());
                out.publish_at(name, offset, frame);
            }
            continue;
        }
        if !out.merge(name, data.get(), None) {
            out.publish(name, protocol::channel_message(name, data.get()));
        }
        // Other nodes: queued without blocking; a full outbox drops and counts (wsgate_cluster_events_dropped_total).
        if let Some(cluster) = &ctx.cluster {
            if !cluster.publish(name, data.get()) {
                not_federated += 1;
            }
        }
    }
    ctx.stats
        .publishes_total
        .fetch_add(names.len() as u64, Ordering::Relaxed);
    // Room for the closing brace and "federated" too: one allocation.
    let mut ok = String::with_capacity(48);
    let _ = write!(ok, "{{\"ok\":true,\"channels\":{}", names.len());
    Response::json(200, with_federation(ok, ctx, not_federated))
}

/// Closes a success body, telling in cluster mode whether the event(s) were queued for the other nodes:
/// `"federated":true`, or `"federated":false` with how many were not (the outbox is full: this node delivered
/// them, the other nodes will not) and a warning. `open` is the body without its closing brace.
pub(super) fn with_federation(mut open: String, ctx: &Context, not_federated: usize) -> String {
    if ctx.cluster.is_some() {
        if not_federated == 0 {
            open.push_str(",\"federated\":true");
        } else {
            open.push_str(&format!(
                ",\"federated\":false,\"not_federated\":{not_federated},\"warning\":\"cluster outbox full \
                 (cluster.outbox_limit, cluster.outbox_max_bytes): delivered on this node only; retry later for the \
                 other nodes\""
            ));
        }
    }
    open.push('}');
    open
}

#[derive(Deserialize)]
pub(super) struct BroadcastBody<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "borrowed::str")]
    tenant: Option<Cow<'a, str>>,
}

pub(super) fn broadcast(body: &[u8], ctx: &Context, out: &mut Outbox) -> Response {
    match parse_body(body) {
        Ok(req) => broadcast_parsed(req, ctx, out),
        Err(resp) => resp,
    }
}

/// A broadcast body, parsed (by [`broadcast`], or as one command of a batch).
pub(super) fn broadcast_parsed(req: BroadcastBody, ctx: &Context, out: &mut Outbox) -> Response {
    let data = match admit(req.data, req.tenant.as_deref(), ctx) {
        Ok(d) => d,
        Err(resp) => return resp,
    };
    out.broadcast(protocol::broadcast_message(data.get()));
    let federated = ctx.cluster.as_ref().is_none_or(|c| c.broadcast(data.get()));
    ctx.stats.broadcasts_total.fetch_add(1, Ordering::Relaxed);
    let body = with_federation("{\"ok\":true".into(), ctx, usize::from(!federated));
    Response::json(200, body)
}

/// `POST /api/reload-tls`: re-reads tls.cert and tls.key (like SIGHUP). 400 without TLS, 500 if the new files
/// are unusable (the old certificate stays in use).
fn reload_tls(ctx: &Context) -> Response {
    if ctx.tls.is_none() {
        return Response::error(400, "TLS is not configured (set tls.cert and tls.key)");
    }
    match crate::tls::reload(ctx.tls.as_deref()) {
        Ok(()) => Response::json(200, "{\"ok\":true}"),
        Err(e) => Response::error(
            500,
            &format!("TLS reload failed, old certificate kept: {e}"),
        ),
    }
}
