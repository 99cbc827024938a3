//! `GET /api/history?channel=NAME[&since=OFFSET][&limit=N]`: a channel's kept publications after `since`, for
//! backends that rebuild state or audit what clients were sent.

use super::http::Response;
use super::Context;
use crate::protocol::{query_param as param, valid_channel};
use std::fmt::Write as _;

/// Publications per page by default and at most.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// `{"ok":true,"channel":..,"offset":TOP,"epoch":..,"complete":BOOL,"publications":[{"offset":N,"data":..}]}`;
/// `complete` is false when publications after `since` are gone (count, age or memory bound).
pub(super) fn history(query: &str, ctx: &Context) -> Response {
    let channel = match param(query, "channel") {
        Some(Ok(c)) if valid_channel(&c) => c,
        Some(_) => {
            return Response::error(
                400,
                "invalid channel name (1..=255 bytes, no control characters)",
            )
        }
        None => return Response::error(400, "the \"channel\" parameter is required"),
    };
    let since = match param(query, "since") {
        None => 0,
        Some(Ok(v)) => match v.parse::<u64>() {
            Ok(n) => n,
            Err(_) => {
                return Response::error(400, "\"since\" must be an offset (a non-negative integer)")
            }
        },
        Some(Err(())) => {
            return Response::error(400, "\"since\" must be an offset (a non-negative integer)")
        }
    };
    let limit = match param(query, "limit") {
        None => PAGE,
        Some(Ok(v)) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Response::error(400, "\"limit\" must be 1..=1000"),
        },
        Some(Err(())) => return Response::error(400, "\"limit\" must be 1..=1000"),
    };
    let history = ctx.hub.gateway.history.as_ref();
    let page = match (history, &ctx.cluster) {
        (Some(h), _) if h.namespace(&channel).is_none() => None,
        // Cluster mode: Redis has the whole history (a node's memory only what it read since it started).
        (Some(_), Some(cluster)) => {
            match cluster.read(|r| r.history_page(&channel, since, limit)) {
                Ok(page) => Some(page),
                Err(e) => {
                    return Response::error(503, &format!("channel history unavailable: {e}"))
                }
            }
        }
        (Some(h), None) => h.page(&channel, since, limit),
        (None, _) => None,
    };
    let Some(page) = page else {
        return Response::error(
            404,
            "channel has no history (no [[channels.namespace]] with history_size > 0 matches it)",
        );
    };
    let mut body =
        String::with_capacity(128 + page.items.iter().map(|(_, d)| d.len() + 24).sum::<usize>());
    body.push_str("{\"ok\":true,\"channel\":");
    body.push_str(&serde_json::to_string(&channel).expect("a str serializes"));
    // The epoch may come from Redis: escaped like any string from outside.
    let epoch = serde_json::to_string(&*page.position.epoch).expect("a str serializes");
    let _ = write!(
        body,
        ",\"offset\":{},\"epoch\":{epoch},\"complete\":{},\"publications\":[",
        page.position.offset, page.complete
    );
    for (i, (offset, data)) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(body, "{{\"offset\":{offset},\"data\":");
        // Stored data was valid JSON when it was published (the API parsed it), so it is UTF-8.
        body.push_str(std::str::from_utf8(data).unwrap_or("null"));
        body.push('}');
    }
    body.push_str("]}");
    Response::json(200, body)
}
