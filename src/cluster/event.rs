//! One bus event: what a node appends to the bus stream and what the others read back. Routing information is in
//! separate stream fields, so a node routes an event without decoding its payload.
//!
//! Fields of one stream entry (all values are strings; see docs/CLUSTER.md):
//! `origin` (instance id of the writing process), `node` (its node id), `seq` (per-origin sequence number, 1, 2,
//! ...), `kind`, `target`, `data` (raw JSON), `trace`, `ts` (ms since the Unix epoch at the origin); only when they
//! apply: `device`, `tenant` (filters of a user push), `nid` (the id of a user push in `stream:notify:{uid}`),
//! `scope` (`user` or `sid`: what a disconnect's `target` is).

use crate::ids::StreamId;
use redis::Value;
use serde_json::value::RawValue;

pub const F_ORIGIN: &str = "origin";
pub const F_NODE: &str = "node";
pub const F_SEQ: &str = "seq";
pub const F_KIND: &str = "kind";
pub const F_TARGET: &str = "target";
pub const F_DATA: &str = "data";
pub const F_TRACE: &str = "trace";
pub const F_TS: &str = "ts";
pub const F_DEVICE: &str = "device";
pub const F_TENANT: &str = "tenant";
pub const F_NID: &str = "nid";
pub const F_SCOPE: &str = "scope";
pub const F_ACK: &str = "ack";
/// Channel publications with history (src/cluster/history.rs): the offset Redis gave and the channel's epoch.
pub const F_OFFSET: &str = "offset";
pub const F_EPOCH: &str = "epoch";

/// Longest user, device or tenant name (as in the API and tokens).
pub const MAX_NAME_LEN: usize = 255;
/// Longest `target` accepted from the bus (channel names are at most 255 bytes; user and socket ids are short).
pub const MAX_TARGET_LEN: usize = 1024;

/// What an event addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `target` is a channel name; delivered as `{"channel":target,"data":data}`.
    Channel,
    /// Every connection; `target` is empty.
    Broadcast,
    /// Every connection of user `target` (optionally only its `device` / `tenant`); delivered as
    /// `{"user":target,"data":data,"id":nid}`.
    User,
    /// The connection with socket id `target` (decimal); only the node encoded in the id delivers it.
    Sid,
    /// Close the connections of user `target` (`scope` = `user`) or the one with socket id `target` (`scope` =
    /// `sid`); `data` is `{"code":N,"reason":"..."}`.
    Disconnect,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Channel => "channel",
            EventKind::Broadcast => "broadcast",
            EventKind::User => "user",
            EventKind::Sid => "sid",
            EventKind::Disconnect => "disconnect",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        Some(match s {
            "channel" => EventKind::Channel,
            "broadcast" => EventKind::Broadcast,
            "user" => EventKind::User,
            "sid" => EventKind::Sid,
            "disconnect" => EventKind::Disconnect,
            _ => return None,
        })
    }
}

/// An event leaving this node, as handed to the bridge outbox.
#[derive(Debug, Clone)]
pub struct OutEvent {
    pub kind: EventKind,
    pub target: String,
    /// Raw JSON (already validated by whoever accepted it); empty for kinds without a payload.
    pub data: String,
    /// Trace id to carry along; the writer makes one (`{origin}-{seq}`) when empty.
    pub trace: String,
    /// Milliseconds since the Unix epoch when the event was accepted.
    pub ts_ms: u64,
    /// User pushes: only connections with this device / tenant ("" = any).
    pub device: String,
    pub tenant: String,
    /// Disconnects: what `target` is.
    pub scope: Scope,
    /// User pushes: the backend asked for delivery confirmation (`"ack": true`).
    pub ack: bool,
}

/// What the target of a disconnect is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    Sid,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Sid => "sid",
        }
    }
}

impl OutEvent {
    pub fn new(kind: EventKind, target: &str, data: &str) -> OutEvent {
        OutEvent {
            kind,
            target: target.to_string(),
            data: data.to_string(),
            trace: String::new(),
            ts_ms: now_ms(),
            device: String::new(),
            tenant: String::new(),
            scope: Scope::User,
            ack: false,
        }
    }

    /// A push to every connection of `user` (of one device / tenant when given).
    pub fn user(user: &str, device: Option<&str>, tenant: Option<&str>, data: &str) -> OutEvent {
        let mut ev = OutEvent::new(EventKind::User, user, data);
        ev.device = device.unwrap_or("").to_string();
        ev.tenant = tenant.unwrap_or("").to_string();
        ev
    }

    /// Closes the connections of a user or one connection, with a close code and reason.
    pub fn disconnect(scope: Scope, target: &str, code: u16, reason: &str) -> OutEvent {
        let data = serde_json::json!({"code": code, "reason": reason}).to_string();
        let mut ev = OutEvent::new(EventKind::Disconnect, target, &data);
        ev.scope = scope;
        ev
    }

    /// Bytes this event holds in the outbox (payload plus a fixed overhead), for the `outbox_max_bytes` bound.
    pub fn cost(&self) -> usize {
        self.target.len()
            + self.data.len()
            + self.trace.len()
            + self.device.len()
            + self.tenant.len()
            + 160
    }
}

/// The close code and reason of a disconnect event's `data`; None unless `{"code":1000 or 3000..=4999,
/// "reason":"<at most 123 bytes>"}`.
pub fn parse_disconnect(data: &str) -> Option<(u16, String)> {
    #[derive(serde::Deserialize)]
    struct Params {
        code: u16,
        #[serde(default)]
        reason: String,
    }
    let p: Params = serde_json::from_str(data).ok()?;
    let code_ok = p.code == 1000 || (3000..=4999).contains(&p.code);
    (code_ok && p.reason.len() <= 123).then_some((p.code, p.reason))
}

/// An event read from the bus, borrowing from the Redis reply. Only produced by [`parse_entry`], so the fields
/// are checked: UTF-8 everywhere, and for `channel`/`broadcast` a valid channel name and valid JSON data.
#[derive(Debug)]
pub struct InEvent<'a> {
    pub id: &'a str,
    pub origin: &'a str,
    pub node: Option<u16>,
    pub seq: Option<u64>,
    pub kind: EventKind,
    pub target: &'a str,
    pub data: &'a str,
    pub trace: &'a str,
    pub ts_ms: Option<u64>,
    /// User pushes: device / tenant filters ("" = none) and the id in the user's notify stream ("" = not stored).
    pub device: &'a str,
    pub tenant: &'a str,
    pub nid: Option<StreamId>,
    /// Disconnects: what `target` is.
    pub scope: Scope,
    /// Sid and sid-scoped disconnects: the socket id in `target`.
    pub sid: u64,
    /// User pushes: each connection must ack `nid` (field `ack` = `1`).
    pub ack: bool,
    /// Channel publications with history: offset and epoch (1..=32 alphanumerics); None / "" without.
    pub offset: Option<u64>,
    pub epoch: &'a str,
}

/// Why an entry was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Well formed, but of a kind this version does not know.
    UnknownKind,
    /// Broken: missing fields, bad UTF-8, bad channel name, payload that is not JSON...
    Malformed(&'static str),
}

/// The bytes of a string reply (bulk or simple), if it is one.
pub fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

pub fn str_of(v: &Value) -> Option<&str> {
    bytes_of(v).and_then(|b| std::str::from_utf8(b).ok())
}

/// Parses the field list of one entry (`[f1, v1, f2, v2, ...]`, or a map in RESP3). Unknown fields are ignored so
/// newer nodes can add some.
pub fn parse_entry<'a>(id: &'a str, fields: &'a Value) -> Result<InEvent<'a>, Rejected> {
    let mut origin = None;
    let mut node = None;
    let mut seq = None;
    let mut kind = None;
    let mut target = "";
    let mut data = "";
    let mut trace = "";
    let mut ts_ms = None;
    let mut device = "";
    let mut tenant = "";
    let mut nid = "";
    let mut scope = "";
    let mut ack = false;
    let mut offset = "";
    let mut epoch = "";
    let mut visit = |k: &'a Value, v: &'a Value| -> Result<(), Rejected> {
        let k = bytes_of(k).ok_or(Rejected::Malformed("field name is not a string"))?;
        let v = str_of(v).ok_or(Rejected::Malformed("field value is not a UTF-8 string"))?;
        match k {
            b"origin" => origin = Some(v),
            b"node" => node = v.parse::<u16>().ok(),
            b"seq" => seq = v.parse::<u64>().ok(),
            b"kind" => kind = Some(v),
            b"target" => target = v,
            b"data" => data = v,
            b"trace" => trace = v,
            b"ts" => ts_ms = v.parse::<u64>().ok(),
            b"device" => device = v,
            b"tenant" => tenant = v,
            b"nid" => nid = v,
            b"scope" => scope = v,
            b"ack" => ack = v == "1",
            b"offset" => offset = v,
            b"epoch" => epoch = v,
            _ => {}
        }
        Ok(())
    };
    match fields {
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(Rejected::Malformed("odd number of field items"));
            }
            for pair in items.chunks_exact(2) {
                visit(&pair[0], &pair[1])?;
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                visit(k, v)?;
            }
        }
        _ => return Err(Rejected::Malformed("entry fields are not a list")),
    }
    let origin = origin
        .filter(|o| !o.is_empty())
        .ok_or(Rejected::Malformed("no origin"))?;
    let kind = kind.ok_or(Rejected::Malformed("no kind"))?;
    let kind = EventKind::parse(kind).ok_or(Rejected::UnknownKind)?;
    if target.len() > MAX_TARGET_LEN {
        return Err(Rejected::Malformed("target too long"));
    }
    let json = |data: &str| serde_json::from_str::<&RawValue>(data).is_ok();
    let sid_of = |target: &str| {
        crate::ids::sid::parse(target).ok_or(Rejected::Malformed("target is not a socket id"))
    };
    let mut sid = 0;
    let mut parsed_scope = Scope::User;
    let mut parsed_nid = None;
    let mut parsed_offset = None;
    match kind {
        EventKind::Channel | EventKind::Broadcast => {
            if kind == EventKind::Channel && !crate::protocol::valid_channel(target) {
                return Err(Rejected::Malformed("invalid channel name"));
            }
            if !json(data) {
                return Err(Rejected::Malformed("data is not JSON"));
            }
            if !offset.is_empty() {
                let valid_epoch = !epoch.is_empty()
                    && epoch.len() <= 32
                    && epoch.bytes().all(|b| b.is_ascii_alphanumeric());
                parsed_offset = offset.parse::<u64>().ok().filter(|o| *o > 0 && valid_epoch);
                if parsed_offset.is_none() {
                    return Err(Rejected::Malformed(
                        "offset or epoch of a channel publication",
                    ));
                }
            }
        }
        EventKind::User => {
            if target.is_empty() || target.len() > MAX_NAME_LEN {
                return Err(Rejected::Malformed("user id must be 1..=255 bytes"));
            }
            if device.len() > MAX_NAME_LEN || tenant.len() > MAX_NAME_LEN {
                return Err(Rejected::Malformed("device or tenant too long"));
            }
            if !nid.is_empty() {
                parsed_nid = Some(
                    StreamId::parse(nid).ok_or(Rejected::Malformed("nid is not a stream id"))?,
                );
            }
            if !json(data) {
                return Err(Rejected::Malformed("data is not JSON"));
            }
        }
        EventKind::Sid => {
            sid = sid_of(target)?;
            if !json(data) {
                return Err(Rejected::Malformed("data is not JSON"));
            }
        }
        EventKind::Disconnect => {
            parsed_scope = match scope {
                "user" => Scope::User,
                "sid" => Scope::Sid,
                _ => return Err(Rejected::Malformed("disconnect scope is not user or sid")),
            };
            match parsed_scope {
                Scope::Sid => sid = sid_of(target)?,
                Scope::User if target.is_empty() || target.len() > MAX_NAME_LEN => {
                    return Err(Rejected::Malformed("user id must be 1..=255 bytes"))
                }
                Scope::User => {}
            }
            if parse_disconnect(data).is_none() {
                return Err(Rejected::Malformed("disconnect data is not {code, reason}"));
            }
        }
    }
    Ok(InEvent {
        id,
        origin,
        node,
        seq,
        kind,
        target,
        data,
        trace,
        ts_ms,
        device,
        tenant,
        nid: parsed_nid,
        scope: parsed_scope,
        sid,
        ack: ack && kind == EventKind::User,
        offset: parsed_offset,
        epoch: if parsed_offset.is_some() { epoch } else { "" },
    })
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    fn fields(pairs: &[(&str, &[u8])]) -> Value {
        Value::Array(
            pairs
                .iter()
                .flat_map(|(k, v)| [bulk(k.as_bytes()), bulk(v)])
                .collect(),
        )
    }

    #[test]
    fn parses_a_channel_event() {
        let f = fields(&[
            ("origin", b"abc"),
            ("node", b"3"),
            ("seq", b"7"),
            ("kind", b"channel"),
            ("target", b"doc:1"),
            ("data", br#"{"a":1}"#),
            ("trace", b"t"),
            ("ts", b"1700000000000"),
            ("future", b"ignored"),
        ]);
        let e = parse_entry("1-0", &f).unwrap();
        assert_eq!(e.kind, EventKind::Channel);
        assert_eq!((e.origin, e.node, e.seq), ("abc", Some(3), Some(7)));
        assert_eq!((e.target, e.data), ("doc:1", r#"{"a":1}"#));
        assert_eq!(e.ts_ms, Some(1_700_000_000_000));
    }

    #[test]
    fn parses_offset_and_epoch_of_a_channel_publication() {
        let base = [
            ("origin", b"abc".as_slice()),
            ("kind", b"channel"),
            ("target", b"doc:1"),
            ("data", b"1"),
        ];
        let with = |extra: &[(&str, &[u8])]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            fields(&all)
        };
        let f = with(&[("offset", b"17"), ("epoch", b"x7Kq")]);
        let e = parse_entry("1-0", &f).unwrap();
        assert_eq!((e.offset, e.epoch), (Some(17), "x7Kq"));
        let f = with(&[]);
        assert_eq!(parse_entry("1-0", &f).unwrap().offset, None);
        for bad in [
            [("offset", b"x".as_slice()), ("epoch", b"e".as_slice())],
            [("offset", b"0"), ("epoch", b"e")],
            [("offset", b"3"), ("epoch", b"")],
            [("offset", b"3"), ("epoch", b"\"e\"")],
        ] {
            let f = with(&bad);
            assert!(parse_entry("1-0", &f).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejects_broken_entries_without_panicking() {
        let base: &[(&str, &[u8])] = &[("origin", b"o"), ("kind", b"channel"), ("target", b"c")];
        let with = |extra: &[(&str, &[u8])]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            fields(&v)
        };
        let bad = [
            with(&[("data", b"{not json")]),
            with(&[("data", b"\xff\xfe")]),
            with(&[("data", b"")]),
            fields(&[("kind", b"channel"), ("target", b"c"), ("data", b"1")]),
            fields(&[("origin", b"o"), ("kind", b"channel"), ("data", b"1")]),
            fields(&[("origin", b"o"), ("kind", b"user"), ("data", b"1")]),
            Value::Array(vec![bulk(b"origin")]),
            Value::Int(3),
            Value::Array(vec![Value::Int(1), bulk(b"x")]),
        ];
        for f in &bad {
            assert!(
                matches!(parse_entry("1-0", f), Err(Rejected::Malformed(_))),
                "{f:?}"
            );
        }
        let unknown = fields(&[("origin", b"o"), ("kind", b"teleport"), ("data", b"1")]);
        assert_eq!(
            parse_entry("1-0", &unknown).unwrap_err(),
            Rejected::UnknownKind
        );
        let long = vec![b'a'; 2000];
        let f = fields(&[
            ("origin", b"o"),
            ("kind", b"channel"),
            ("target", &long),
            ("data", b"1"),
        ]);
        assert!(parse_entry("1-0", &f).is_err());
    }
}
