//! `POST /api/batch`: many publishes and broadcasts in one request, each answered on its own, in order. A backend
//! pushing thousands of messages pays one HTTP request and, per reactor, one wake-up for all of them.

use super::http::Response;
use super::routes::{self, BroadcastBody, PublishBody};
use super::Context;
use crate::hub::Outbox;
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::io::Write;
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
    if let Ok(commands) = parse_presized(body) {
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

/// Bytes of body per command, at least, in a batch sized in advance: a publish of a short `data` takes about 100.
const BYTES_PER_COMMAND: usize = 96;

/// The whole array in one pass, into a vector sized for the body at once: grown command by command, it would copy
/// every command parsed so far again at each doubling.
fn parse_presized(body: &[u8]) -> serde_json::Result<Parsed<'_>> {
    let capacity = (body.len() / BYTES_PER_COMMAND).min(MAX_BATCH_COMMANDS + 1);
    let mut de = serde_json::Deserializer::from_slice(body);
    let commands = de.deserialize_seq(Presized(capacity))?;
    de.end()?;
    Ok(commands)
}

struct Presized(usize);

impl<'de> Visitor<'de> for Presized {
    type Value = Parsed<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of commands")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut commands = Vec::with_capacity(self.0);
        while let Some(command) = seq.next_element()? {
            commands.push(command);
        }
        Ok(commands)
    }
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
        let _ = write!(results, "{{\"status\":{}", response.status);
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
    let _ = write!(results, "],\"failed\":{failed}}}");
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
