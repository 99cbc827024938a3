//! API routes of client connections: user- and socket-targeted publishes (through `POST /api/publish`), the
//! per-tenant publish rate, `POST /api/disconnect`, `GET /api/presence` and `GET /api/user/{id}`.

use super::http::{Request, Response};
use super::Context;
use crate::cluster::event::Scope;
use crate::cluster::ClusterHandle;
use crate::config::Config;
use crate::gateway::frames::{self, code};
use crate::gateway::Target;
use crate::hub::{Hub, Outbox};
use crate::ids::sid;
use crate::protocol::{percent_decode, valid_channel};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Longest user, device or tenant name in API requests, bytes.
const MAX_NAME: usize = 255;
/// Presence page size: default and maximum.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Answers the connection routes; None for any other path.
pub fn route(
    req: &Request<'_>,
    ctx: &Context,
    config: &Config,
    out: &mut Outbox,
) -> Option<Response> {
    let method = match req.path {
        "/api/disconnect" => "POST",
        "/api/presence" => "GET",
        p if p.starts_with("/api/user/") => "GET",
        _ => return None,
    };
    if req.method != method {
        let mut r = Response::error(405, "method not allowed");
        r.allow = Some(method);
        return Some(r);
    }
    if !super::routes::authorized(req, config) {
        return Some(Response::error(
            401,
            "missing or wrong API key (Authorization: apikey KEY)",
        ));
    }
    // These routes wait for the reactors' answers: the hand-overs queued so far are woken first, not after the wait.
    out.flush();
    Some(match req.path {
        "/api/disconnect" => disconnect(req.body, ctx),
        _ => match parse_lookup(req) {
            Ok(lookup) => look_up(&lookup, &ctx.hub, ctx.cluster.as_ref()),
            Err(response) => response,
        },
    })
}

/// A presence or user lookup, parsed.
pub enum Lookup {
    Presence {
        channel: String,
        after: u64,
        limit: usize,
    },
    User(String),
}

fn parse_lookup(req: &Request<'_>) -> Result<Lookup, Response> {
    match req.path.strip_prefix("/api/user/") {
        Some(raw) => match percent_decode(raw).filter(|u| !u.is_empty() && u.len() <= MAX_NAME) {
            Some(id) => Ok(Lookup::User(id)),
            None => Err(Response::error(
                400,
                "user id must be 1..=255 bytes, percent-encoded",
            )),
        },
        None => parse_presence(req.query),
    }
}

/// Answers `lookup`: cluster-wide from Redis when `cluster` is given and Redis answers, else from this node.
pub fn look_up(lookup: &Lookup, hub: &Hub, cluster: Option<&ClusterHandle>) -> Response {
    match lookup {
        Lookup::Presence {
            channel,
            after,
            limit,
        } => presence(channel, *after, *limit, hub, cluster),
        Lookup::User(id) => user(id, hub, cluster),
    }
}

/// The connection-targeting fields of a publish body.
pub struct Targets<'a> {
    pub user: Option<Cow<'a, str>>,
    pub sid: Option<&'a RawValue>,
    pub device: Option<Cow<'a, str>>,
    pub tenant: Option<Cow<'a, str>>,
    /// `channel` or `channels` given too.
    pub has_channels: bool,
    /// `"ack": true`: delivery confirmation (user pushes only).
    pub ack: bool,
}

/// The per-tenant publish rate (`limits.publish_rate`): Some(429) when over it.
pub fn rate_limited(ctx: &Context, tenant: Option<&str>) -> Option<Response> {
    let tenant = tenant.unwrap_or("");
    if ctx.hub.gateway.allow_publish(tenant) {
        return None;
    }
    Some(Response::error(
        429,
        &format!("publish rate limit exceeded for tenant {tenant:?} (limits.publish_rate)"),
    ))
}

/// A user- or socket-targeted publish; None when the body targets channels (handled by the caller).
pub fn publish(
    ctx: &Context,
    t: &Targets<'_>,
    data: &RawValue,
    out: &mut Outbox,
) -> Option<Response> {
    if t.ack && t.user.is_none() {
        return Some(Response::error(400, "\"ack\" needs \"user\""));
    }
    if t.user.is_none() && t.sid.is_none() {
        if t.device.is_some() {
            return Some(Response::error(400, "\"device\" needs \"user\""));
        }
        return None;
    }
    let targets = [t.user.is_some(), t.sid.is_some(), t.has_channels];
    if targets.iter().filter(|&&x| x).count() > 1 {
        return Some(Response::error(
            400,
            "give exactly one of \"channel\", \"channels\", \"user\" or \"sid\"",
        ));
    }
    for (field, value) in [("device", &t.device), ("tenant", &t.tenant)] {
        if value
            .as_deref()
            .is_some_and(|v| v.is_empty() || v.len() > MAX_NAME)
        {
            return Some(Response::error(
                400,
                &format!("\"{field}\" must be 1..=255 bytes"),
            ));
        }
    }
    if let Some(user) = &t.user {
        if user.is_empty() || user.len() > MAX_NAME {
            return Some(Response::error(400, "\"user\" must be 1..=255 bytes"));
        }
        let (device, tenant) = (t.device.as_deref(), t.tenant.as_deref());
        let mut not_federated = 0;
        match &ctx.cluster {
            // Cluster mode: the bridge stores it for replay first, then every node (this one included) delivers
            // it with its id. If the outbox is full, this node's connections still get it (without an id).
            Some(cluster) => {
                if !cluster.user(user, device, tenant, data.get(), t.ack) {
                    not_federated = 1;
                    let frame = frames::user_message(user, data.get());
                    out.deliver_user(user, device, tenant, frame, None, false);
                }
                out.count_user_publish();
            }
            // Standalone: stored in the replay store first (its id goes into the frame), then delivered.
            None => {
                let log = ctx.hub.gateway.user_log.as_ref();
                if t.ack && log.is_none() {
                    return Some(Response::error(
                        400,
                        "\"ack\" needs message ids: delivery.offline_maxlen must be above 0",
                    ));
                }
                let id = log.map(|l| l.append(user, device, tenant, data.get(), t.ack));
                let frame = frames::user_push(user, data.get(), id, false, t.ack);
                out.publish_user(user, device, tenant, frame, id, t.ack)
            }
        }
        let ok = json!({"ok": true, "user": user}).to_string();
        let open = ok.strip_suffix('}').unwrap_or(&ok).to_string();
        return Some(Response::json(
            200,
            super::routes::with_federation(open, ctx, not_federated),
        ));
    }
    if t.device.is_some() {
        return Some(Response::error(400, "\"device\" needs \"user\""));
    }
    let Some(sid) = t.sid.and_then(parse_sid) else {
        return Some(Response::error(
            400,
            "\"sid\" must be a socket id (decimal string or integer)",
        ));
    };
    let ok = || Response::json(200, format!("{{\"ok\":true,\"sid\":\"{sid}\"}}"));
    // Cluster mode: another node's socket id goes over the bus to that node.
    if let Some(cluster) = ctx
        .cluster
        .as_ref()
        .filter(|_| sid::node_of(sid) != ctx.hub.gateway.node_id)
    {
        if !cluster.sid(sid, data.get()) {
            return Some(Response::error(
                503,
                "cluster outbox full (cluster.outbox_limit); retry later",
            ));
        }
        ctx.hub
            .gateway
            .api
            .sid_publishes_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Some(ok());
    }
    Some(
        match out.publish_sid(sid, frames::sid_message(sid, data.get())) {
            Ok(()) => ok(),
            Err(why) => Response::error(404, why),
        },
    )
}

fn parse_sid(raw: &RawValue) -> Option<u64> {
    let text = raw.get();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(s) => sid::parse(s),
        None => sid::parse(text),
    }
}

#[derive(Deserialize)]
struct DisconnectBody<'a> {
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sid: Option<&'a RawValue>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

fn disconnect(body: &[u8], ctx: &Context) -> Response {
    let req: DisconnectBody = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return Response::error(400, &format!("invalid JSON body: {e}")),
    };
    let target = match (&req.user, req.sid) {
        (Some(u), None) if !u.is_empty() && u.len() <= MAX_NAME => Target::User(u.as_ref().into()),
        (None, Some(raw)) => match parse_sid(raw) {
            Some(sid) => Target::Sid(sid),
            None => {
                return Response::error(
                    400,
                    "\"sid\" must be a socket id (decimal string or integer)",
                )
            }
        },
        (Some(_), None) => return Response::error(400, "\"user\" must be 1..=255 bytes"),
        _ => return Response::error(400, "give exactly one of \"user\" or \"sid\""),
    };
    let code = req.code.unwrap_or(code::DISCONNECTED);
    if code != 1000 && !(3000..=4999).contains(&code) {
        return Response::error(400, "\"code\" must be 1000 or 3000..=4999");
    }
    let reason = req.reason.as_deref().unwrap_or("disconnected");
    if reason.len() > 123 {
        return Response::error(400, "\"reason\" must be at most 123 bytes");
    }
    // Cluster mode: a user's connections may be on every node, another node's socket id only there. The other
    // nodes close theirs without this request waiting for them: `disconnected` counts this node's.
    let forward = ctx.cluster.as_ref().and_then(|c| match &target {
        Target::User(u) => Some((c, Scope::User, u.to_string())),
        Target::Sid(s) if sid::node_of(*s) != ctx.hub.gateway.node_id => {
            Some((c, Scope::Sid, s.to_string()))
        }
        Target::Sid(_) => None,
    });
    let forwarded = match forward {
        Some((cluster, scope, t)) => {
            if !cluster.disconnect(scope, &t, code, reason) {
                return Response::error(
                    503,
                    "cluster outbox full (cluster.outbox_limit); retry later",
                );
            }
            true
        }
        None => false,
    };
    match ctx.hub.disconnect(target, code, reason) {
        Ok(n) if forwarded => Response::json(
            200,
            format!("{{\"ok\":true,\"disconnected\":{n},\"forwarded\":true}}"),
        ),
        Ok(n) => Response::json(200, format!("{{\"ok\":true,\"disconnected\":{n}}}")),
        Err(why) => Response::error(503, why),
    }
}

use crate::protocol::query_param as param;

fn parse_presence(query: &str) -> Result<Lookup, Response> {
    let channel = match param(query, "channel") {
        Some(Ok(c)) if valid_channel(&c) => c,
        Some(Ok(_)) | Some(Err(())) => {
            return Err(Response::error(
                400,
                "invalid channel name (1..=255 bytes, no control characters)",
            ))
        }
        None => {
            return Err(Response::error(
                400,
                "the \"channel\" parameter is required",
            ))
        }
    };
    let limit = match param(query, "limit") {
        None => PAGE,
        Some(Ok(v)) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(Response::error(400, "\"limit\" must be 1..=1000")),
        },
        Some(Err(())) => return Err(Response::error(400, "\"limit\" must be 1..=1000")),
    };
    let after = match param(query, "cursor") {
        None => 0,
        Some(Ok(v)) if v.is_empty() => 0,
        Some(Ok(v)) => match sid::parse(&v) {
            Some(s) => s,
            None => return Err(Response::error(400, "\"cursor\" must be a socket id")),
        },
        Some(Err(())) => return Err(Response::error(400, "\"cursor\" must be a socket id")),
    };
    Ok(Lookup::Presence {
        channel,
        after,
        limit,
    })
}

fn presence(
    channel: &str,
    after: u64,
    limit: usize,
    hub: &Hub,
    cluster: Option<&ClusterHandle>,
) -> Response {
    // Cluster mode: every node's members, from Redis; when Redis cannot be read, this node's (and say so).
    let mut cluster_error = None;
    if let Some(cluster) = cluster {
        match cluster.read(|r| r.presence(channel, after, limit)) {
            Ok((total, members, more)) => {
                let members: Vec<(u64, Option<String>)> =
                    members.into_iter().map(|m| (m.sid, m.user)).collect();
                return presence_page(channel, total, &members, more, "cluster", None);
            }
            Err(e) => cluster_error = Some(e),
        }
    }
    match hub.presence(channel, after, limit) {
        Ok((total, members, more)) => {
            let members: Vec<(u64, Option<String>)> =
                members.into_iter().map(|m| (m.sid, m.user)).collect();
            presence_page(
                channel,
                total,
                &members,
                more,
                "node",
                cluster_error.as_deref(),
            )
        }
        Err(why) => Response::error(503, why),
    }
}

/// `{"ok":true,"channel":..,"total":..,"members":[..],"next_cursor":..,"scope":"cluster"|"node"}`, plus
/// `"cluster_error"` when a cluster node answers from itself alone because Redis could not be read.
fn presence_page(
    channel: &str,
    total: usize,
    members: &[(u64, Option<String>)],
    more: bool,
    scope: &str,
    cluster_error: Option<&str>,
) -> Response {
    let next = match (more, members.last()) {
        (true, Some((sid, _))) => json!(sid.to_string()),
        _ => serde_json::Value::Null,
    };
    let list: Vec<_> = members
        .iter()
        .map(|(sid, user)| json!({"sid": sid.to_string(), "user": user}))
        .collect();
    let mut body = json!({"ok": true, "channel": channel, "total": total, "members": list,
        "next_cursor": next, "scope": scope});
    if let Some(e) = cluster_error {
        body["cluster_error"] = json!(e);
    }
    Response::json(200, body.to_string())
}

fn user(id: &str, hub: &Hub, cluster: Option<&ClusterHandle>) -> Response {
    let list = match hub.user_connections(id) {
        Ok(list) => list,
        Err(why) => return Response::error(503, why),
    };
    let node = hub.gateway.node_id;
    let cluster_mode = cluster.is_some();
    let mut connections: Vec<(u64, serde_json::Value)> = list
        .iter()
        .map(|c| {
            let mut v = json!({
                "sid": c.sid.to_string(),
                "reactor": c.reactor,
                "device": c.device,
                "tenant": c.tenant,
                "connected_at_ms": sid::unix_ms_of(c.sid),
                "exp": c.exp,
                "channels": c.channels,
                "allowed_channels": c.allowed,
            });
            if cluster_mode {
                v["node"] = json!(node);
            }
            (c.sid, v)
        })
        .collect();
    let mut body = json!({"ok": true, "user": id});
    match cluster {
        None => body["scope"] = json!("node"),
        // Cluster mode: this node's connections in full, the other nodes' as the state in Redis has them.
        Some(cluster) => match cluster.read(|r| r.user(id)) {
            Ok(remote) => {
                body["scope"] = json!("cluster");
                for c in remote {
                    if connections.iter().any(|(s, _)| *s == c.sid) {
                        continue;
                    }
                    let v = json!({
                        "sid": c.sid.to_string(),
                        "node": c.node,
                        "device": c.device,
                        "tenant": c.tenant,
                        "connected_at_ms": sid::unix_ms_of(c.sid),
                        "channels": c.channels,
                        "last_seen_ms": c.last_seen_ms,
                    });
                    connections.push((c.sid, v));
                }
                connections.sort_by_key(|(s, _)| *s);
            }
            Err(e) => {
                body["scope"] = json!("node");
                body["cluster_error"] = json!(e);
            }
        },
    }
    body["connections"] =
        serde_json::Value::Array(connections.into_iter().map(|(_, v)| v).collect());
    Response::json(200, body.to_string())
}
