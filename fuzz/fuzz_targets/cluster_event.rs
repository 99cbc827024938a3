//! Cluster bus entries as the bridge reader meets them: raw RESP bytes from Redis (`redis::parse_redis_value`),
//! an XREAD reply flattened by `cluster::collect_entries`, entry ids as stream ids, and each entry's fields through
//! `cluster::event::parse_entry`. A broken or hostile Redis (or another node writing garbage) must cost a skipped
//! entry, never the bridge thread.
//!
//! Checked: an accepted event satisfies what delivery relies on without re-checking (dispatch.rs): a valid
//! channel name, JSON data (the delivered `{"channel":..,"data":..}` frame is JSON), bounded names, a socket id
//! that matches `target`, a parseable disconnect payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::cluster::event::{self, parse_entry, Scope, MAX_NAME_LEN, MAX_TARGET_LEN};
use wsgate::cluster::{collect_entries, EventKind};
use wsgate::ids::{sid, StreamId};
use wsgate::protocol;

fn delivered_json(frame: &[u8]) {
    let start = match frame[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    serde_json::from_slice::<&serde_json::value::RawValue>(&frame[start..])
        .expect("delivered frame is JSON");
}

fuzz_target!(|data: &[u8]| {
    let Ok(reply) = redis::parse_redis_value(data) else {
        return;
    };
    let mut entries = Vec::new();
    if collect_entries(&reply, &mut entries).is_err() {
        return;
    }
    for (id, fields) in entries {
        // The reader skips entries whose id is not `ms-seq`.
        let Some(id) = event::str_of(id).filter(|id| StreamId::parse(id).is_some()) else {
            continue;
        };
        let Ok(ev) = parse_entry(id, fields) else {
            continue;
        };
        assert!(!ev.origin.is_empty());
        assert!(ev.target.len() <= MAX_TARGET_LEN);
        let is_json = serde_json::from_str::<&serde_json::value::RawValue>(ev.data).is_ok();
        match ev.kind {
            EventKind::Channel => {
                assert!(protocol::valid_channel(ev.target) && is_json);
                delivered_json(&protocol::channel_message(ev.target, ev.data));
            }
            EventKind::Broadcast => {
                assert!(is_json);
                delivered_json(&protocol::broadcast_message(ev.data));
            }
            EventKind::User => {
                assert!(!ev.target.is_empty() && ev.target.len() <= MAX_NAME_LEN && is_json);
                assert!(ev.device.len() <= MAX_NAME_LEN && ev.tenant.len() <= MAX_NAME_LEN);
            }
            EventKind::Sid => assert!(sid::parse(ev.target) == Some(ev.sid) && is_json),
            EventKind::Disconnect => {
                let (code, reason) = event::parse_disconnect(ev.data).expect("checked");
                assert!(code == 1000 || (3000..=4999).contains(&code));
                assert!(reason.len() <= 123);
                if ev.scope == Scope::Sid {
                    assert_eq!(sid::parse(ev.target), Some(ev.sid));
                }
            }
        }
    }
});
