//! `POST /api/batch`: many publishes and broadcasts in one request, each answered on its own, in order. A backend
//! pushing thousands of messages pays one HTTP request and, per reactor, one wake-up for all of them.

use super::http::Response;
use super::routes::{self, BroadcastBody, PublishBody};
use super::Context;
use crate::hub::Outbox;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::atomic::Ordering;

/// Most commands in one batch (the body is bounded by `api.max_body` too).
pub const MAX_BATCH_COMMANDS: usize = 10_000;

/// One element of the array: exactly one of its fields, holding the body of the single route (`B`: that body
/// parsed, or kept raw to be parsed on its own).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchCommand<P, B> {
    #[serde(default = "none")]
    publish: Option<P>,
    #[serde(default = "none")]
    broadcast: Option<B>,
}

fn none<T>() -> Option<T> {
    None
}

/// Every command well-formed: the whole array parsed in one pass.
type Parsed<'a> = Vec<BatchCommand<PublishBody<'a>, BroadcastBody<'a>>>;
/// Each command kept raw, to answer a malformed one in its slot.
type Raw<'a> = Vec<&'a RawValue>;

pub fn batch(body: &[u8], ctx: &Context, out: &mut Outbox) -> Response {
    // The common case, every command well-formed, is parsed in one pass; otherwise each command is parsed on its
    // own, so a malformed one gets its own error.
    if let Ok(commands) = serde_json::from_slice::<Parsed>(body) {
        return answer(commands, ctx, out, |c, ctx, out| {
            match (c.publish, c.broadcast) {
                (Some(p), None) => routes::publish_parsed(p, ctx, out),
                (None, Some(b)) => routes::broadcast_parsed(b, ctx, out),
                _ => one_of(),
            }
        });
    }
    let commands: Raw = match serde_json::from_slice(body) {
        Ok(c) => c,
        Err(e) => {
            return Response::error(
                400,
                &format!("the body must be a JSON array of commands: {e}"),
            )
        }
    };
    answer(commands, ctx, out, run)
}

fn one_of() -> Response {
    Response::error(
        400,
        "a command has exactly one of \"publish\" or \"broadcast\"",
    )
}

/// Runs the commands in order and gathers their answers: 400 for the whole batch if it has too few or too many.
fn answer<C>(
    commands: Vec<C>,
    ctx: &Context,
    out: &mut Outbox,
    run: impl Fn(C, &Context, &mut Outbox) -> Response,
) -> Response {
    if commands.is_empty() || commands.len() > MAX_BATCH_COMMANDS {
        return Response::error(
            400,
            &format!("a batch holds 1..={MAX_BATCH_COMMANDS} commands"),
        );
    }
    ctx.stats.batches_total.fetch_add(1, Ordering::Relaxed);
    ctx.stats
        .batch_commands_total
        .fetch_add(commands.len() as u64, Ordering::Relaxed);
    let mut results = Vec::with_capacity(commands.len() * 48 + 32);
    results.extend_from_slice(b"{\"ok\":true,\"results\":[");
    let mut failed = 0;
    for (i, command) in commands.into_iter().enumerate() {
        let response = run(command, ctx, out);
        if response.status >= 400 {
            failed += 1;
        }
        if i > 0 {
            results.push(b',');
        }
        // {"status":S, ...the single route's body...}
        results.extend_from_slice(format!("{{\"status\":{}", response.status).as_bytes());
        match response.body.strip_prefix(b"{") {
            Some(rest) if rest != b"}" => {
                results.push(b',');
                results.extend_from_slice(rest);
            }
            _ => results.push(b'}'),
        }
    }
    ctx.stats
        .batch_failed_commands_total
        .fetch_add(failed, Ordering::Relaxed);
    results.extend_from_slice(format!("],\"failed\":{failed}}}").as_bytes());
    Response::json(200, results)
}

/// One command, answered as its single route would answer it.
fn run(raw: &RawValue, ctx: &Context, out: &mut Outbox) -> Response {
    let command: BatchCommand<&RawValue, &RawValue> = match serde_json::from_str(raw.get()) {
        Ok(c) => c,
        Err(e) => {
            return Response::error(
                400,
                &format!("a command is {{\"publish\":{{...}}}} or {{\"broadcast\":{{...}}}}: {e}"),
            )
        }
    };
    match (command.publish, command.broadcast) {
        (Some(body), None) => routes::publish(body.get().as_bytes(), ctx, out),
        (None, Some(body)) => routes::broadcast(body.get().as_bytes(), ctx, out),
        _ => one_of(),
    }
}
