//! The client protocol: small JSON text frames from clients (subscribe, unsubscribe, ping) and the server's
//! messages. A published message is one byte string for all its subscribers, so it is encoded once.

use crate::frame::{encode, OP_TEXT};
use crate::pool::SharedFrame;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;

/// Longest channel name in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// A client request. Unknown fields are ignored so clients can be newer than the server.
#[derive(Deserialize)]
pub struct ClientRequest<'a> {
    #[serde(borrow)]
    pub op: std::borrow::Cow<'a, str>,
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    #[serde(default, borrow)]
    pub id: Option<&'a RawValue>,
    /// `refresh`: the new token.
    #[serde(default, borrow)]
    pub token: Option<std::borrow::Cow<'a, str>>,
    /// `msg`: the JSON value for the backend.
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
    /// `msg`: the channel the message is about (a channel the connection is subscribed to), `X-Guid` upstream.
    #[serde(default, borrow)]
    pub channel: Option<std::borrow::Cow<'a, str>>,
    /// `msg`: a trace id to carry upstream (`X-Trace-ID`); one is made when absent.
    #[serde(default, borrow)]
    pub trace: Option<std::borrow::Cow<'a, str>>,
    /// `subscribe`: where the client stopped per channel, `{"doc:42":{"offset":17,"epoch":"x7Kq"}}`.
    #[serde(default, borrow)]
    pub recover: Option<&'a RawValue>,
}

/// A valid channel name: 1..=255 bytes of UTF-8 with no control characters.
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_CHANNEL_LEN && !name.chars().any(char::is_control)
}

/// Builds the complete WebSocket text frame `{"channel":NAME,"data":DATA}` in one allocation; `data` is raw
/// JSON that is copied verbatim.
pub fn channel_message(channel: &str, data: &str) -> SharedFrame {
    let mut escaped = String::new();
    message_frame(&[
        b"{\"channel\":\"",
        string_content(channel, &mut escaped),
        b"\",\"data\":",
        data.as_bytes(),
        b"}",
    ])
}

/// `s` as the content of a JSON string (between its quotes). A channel name rarely needs escaping (a quote, a
/// backslash or a control character): then it is `s` itself, without the copy and allocation of an escaped one
/// (`escaped` holds that one otherwise).
fn string_content<'a>(s: &'a str, escaped: &'a mut String) -> &'a [u8] {
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        return s.as_bytes();
    }
    *escaped = serde_json::to_string(s).expect("a str serializes");
    &escaped.as_bytes()[1..escaped.len() - 1]
}

/// A publication on a channel with history: `{"channel":NAME,"offset":N,"epoch":"E","data":DATA}`, one frame for
/// every subscriber and for later replays. Returns the frame and where DATA starts in it.
pub fn channel_message_at(
    channel: &str,
    offset: u64,
    epoch: &str,
    data: &str,
) -> (SharedFrame, usize) {
    let mut escaped = String::new();
    let mut digits = [0u8; 20];
    let offset = format_u64(&mut digits, offset);
    let frame = message_frame(&[
        b"{\"channel\":\"",
        string_content(channel, &mut escaped),
        b"\",\"offset\":",
        offset,
        b",\"epoch\":\"",
        epoch.as_bytes(),
        b"\",\"data\":",
        data.as_bytes(),
        b"}",
    ]);
    let data_at = frame.len() - 1 - data.len();
    (frame, data_at)
}

/// `n` in decimal, written at the end of `buf`.
fn format_u64(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Publications of one merge window: `{"channel":NAME,"batch":[{"data":D1},...]}`, or with history
/// `{"channel":NAME,"epoch":"E","batch":[{"offset":N1,"data":D1},...]}` (`offsets` then has one per item).
pub fn batch_message(
    channel: &str,
    epoch: Option<&str>,
    offsets: &[u64],
    data: &[&str],
) -> SharedFrame {
    let name = serde_json::to_string(channel).expect("a str serializes");
    let mut json =
        String::with_capacity(name.len() + 32 + data.iter().map(|d| d.len() + 32).sum::<usize>());
    json.push_str("{\"channel\":");
    json.push_str(&name);
    if let Some(e) = epoch {
        json.push_str(",\"epoch\":\"");
        json.push_str(e);
        json.push('"');
    }
    json.push_str(",\"batch\":[");
    for (i, d) in data.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push('{');
        if let Some(o) = offsets.get(i) {
            let mut digits = [0u8; 20];
            json.push_str("\"offset\":");
            json.push_str(std::str::from_utf8(format_u64(&mut digits, *o)).expect("digits"));
            json.push(',');
        }
        json.push_str("\"data\":");
        json.push_str(d);
        json.push('}');
    }
    json.push_str("]}");
    message_frame(&[json.as_bytes()])
}

/// `{"broadcast":true,"data":DATA}`.
pub fn broadcast_message(data: &str) -> SharedFrame {
    message_frame(&[b"{\"broadcast\":true,\"data\":", data.as_bytes(), b"}"])
}

/// One shared text frame whose payload is `parts` concatenated (header written once, one allocation).
pub(crate) fn message_frame(parts: &[&[u8]]) -> SharedFrame {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut header = [0u8; encode::MAX_HEADER];
    let h = encode::write_header(&mut header, OP_TEXT, len);
    let mut frame = Vec::with_capacity(h + len);
    frame.extend_from_slice(&header[..h]);
    for p in parts {
        frame.extend_from_slice(p);
    }
    Arc::new(frame)
}

/// `{"type":"reply","id":ID,"ok":true}` or with `"ok":false,"error":"..."`, as a complete frame.
pub fn reply(id: Option<&RawValue>, error: Option<&str>) -> Vec<u8> {
    let mut json = String::with_capacity(64);
    json.push_str("{\"type\":\"reply\"");
    push_id(&mut json, id);
    match error {
        None => json.push_str(",\"ok\":true}"),
        Some(e) => {
            json.push_str(",\"ok\":false,\"error\":");
            json.push_str(&serde_json::to_string(e).expect("a str serializes"));
            json.push('}');
        }
    }
    text_frame(&json)
}

/// `{"type":"pong","id":ID}` answering `{"op":"ping"}`.
pub fn pong(id: Option<&RawValue>) -> Vec<u8> {
    let mut json = String::from("{\"type\":\"pong\"");
    push_id(&mut json, id);
    json.push('}');
    text_frame(&json)
}

/// `{"type":"error","error":"..."}` for a client frame that could not be understood.
pub fn error(message: &str) -> Vec<u8> {
    let json = format!(
        "{{\"type\":\"error\",\"error\":{}}}",
        serde_json::to_string(message).expect("str")
    );
    text_frame(&json)
}

/// Appends `,"id":ID` (the request id, verbatim) when there is one.
pub(crate) fn push_id(json: &mut String, id: Option<&RawValue>) {
    if let Some(id) = id {
        json.push_str(",\"id\":");
        json.push_str(id.get());
    }
}

/// A complete text frame carrying `json`.
pub(crate) fn text_frame(json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 4);
    encode::push_frame(&mut out, OP_TEXT, json.as_bytes());
    out
}

/// Channels named in a connect query string (`channels=a,b`): split on ',' then percent-decoded ('+' is a space),
/// so `%2C` is a comma inside a name. Other parameters are ignored.
pub fn query_channels(query: &str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "channels" {
            continue;
        }
        for raw in value.split(',').filter(|s| !s.is_empty()) {
            let name =
                percent_decode(raw).ok_or("channel name is not valid percent-encoded UTF-8")?;
            if !valid_channel(&name) {
                return Err("invalid channel name (1..=255 bytes, no control characters)");
            }
            out.push(name);
        }
    }
    Ok(out)
}

/// The percent-decoded value of query parameter `name` (the first occurrence): None when absent, Err for a bad
/// escape.
pub fn query_param(query: &str, name: &str) -> Option<Result<String, ()>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v).ok_or(()))
    })
}

/// Longest epoch a client may send in `recover` (the server's are 8 characters).
pub const MAX_EPOCH_LEN: usize = 32;

/// One entry of a `recover` request: channel, the last offset the client has, its epoch.
pub type RecoverEntry = (String, u64, String);

/// Parses `"recover":{"doc:42":{"offset":17,"epoch":"x7Kq"}}` against the request's `channels`. Every entry must
/// name one of them; offsets are non-negative integers, epochs strings of at most 32 characters.
pub fn parse_recover(raw: &RawValue, channels: &[String]) -> Result<Vec<RecoverEntry>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        offset: serde_json::Value,
        epoch: serde_json::Value,
    }
    let map: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_str(raw.get()).map_err(|_| {
            "\"recover\" must be an object {\"<channel>\":{\"offset\":N,\"epoch\":\"E\"}}"
                .to_string()
        })?;
    let mut out = Vec::with_capacity(map.len());
    for (channel, value) in map {
        if !channels.contains(&channel) {
            return Err(format!(
                "recover names {channel:?}, which this request does not subscribe to"
            ));
        }
        let entry: Entry = serde_json::from_value(value)
            .map_err(|_| format!("recover {channel:?} must be {{\"offset\":N,\"epoch\":\"E\"}}"))?;
        let Some(offset) = entry.offset.as_u64() else {
            return Err(format!(
                "recover {channel:?}: offset must be a non-negative integer"
            ));
        };
        let epoch = match entry.epoch.as_str() {
            Some(e) if e.len() <= MAX_EPOCH_LEN => e,
            _ => {
                return Err(format!(
                    "recover {channel:?}: epoch must be a string of at most 32 characters"
                ))
            }
        };
        out.push((channel, offset, epoch.to_string()));
    }
    Ok(out)
}

/// Parses the connect URL's `recover=CHANNEL:OFFSET:EPOCH[,...]` (each part percent-decoded; the channel may hold
/// colons, offset and epoch are the last two fields).
pub fn query_recover(query: &str, channels: &[String]) -> Result<Vec<RecoverEntry>, &'static str> {
    const BAD: &str =
        "invalid recover (CHANNEL:OFFSET:EPOCH, comma-separated, for channels in channels=)";
    let mut out = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "recover" {
            continue;
        }
        for raw in value.split(',').filter(|s| !s.is_empty()) {
            let item = percent_decode(raw).ok_or(BAD)?;
            let mut parts = item.rsplitn(3, ':');
            let (Some(epoch), Some(offset), Some(channel)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(BAD);
            };
            let offset: u64 = offset.parse().map_err(|_| BAD)?;
            if epoch.len() > MAX_EPOCH_LEN || !channels.iter().any(|c| c == channel) {
                return Err(BAD);
            }
            out.push((channel.to_string(), offset, epoch.to_string()));
        }
    }
    Ok(out)
}

/// Longest client version string (`?v=` / `X-Client-Version`).
pub const MAX_CLIENT_VERSION: usize = 64;

/// A client version: 1..=64 printable ASCII characters.
pub fn valid_client_version(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_CLIENT_VERSION && v.bytes().all(|b| b.is_ascii_graphic())
}

/// Decodes `%XX` and '+'; None for a bad escape or invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // Exactly two hex digits: `u8::from_str_radix` alone would also take a sign (`%+2` = 0x02).
                let hi = hex_digit(*bytes.get(i + 1)?)?;
                let lo = hex_digit(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The value of one ASCII hex digit.
fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_channels_split_then_decode() {
        assert_eq!(
            query_channels("channels=a%2Cb,c&x=1").unwrap(),
            vec!["a,b", "c"]
        );
        assert_eq!(query_channels("x=1").unwrap(), Vec::<String>::new());
        assert!(query_channels("channels=%ZZ").is_err());
        assert!(query_channels("channels=a%01").is_err());
        let long = "a".repeat(256);
        assert!(query_channels(&format!("channels={long}")).is_err());
    }

    #[test]
    fn percent_escapes_are_exactly_two_hex_digits() {
        assert_eq!(
            percent_decode("a%2Cb+c%e2%82%ac").as_deref(),
            Some("a,b c\u{20ac}")
        );
        // Found by fuzz/client_protocol: `from_str_radix` accepted a sign, so `%+2` decoded to 0x02.
        assert_eq!(percent_decode("%+2"), None);
        assert_eq!(percent_decode("%-2"), None);
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%\u{e9}"), None);
        assert_eq!(query_param("token=a%+2Eb", "token"), Some(Err(())));
    }

    #[test]
    fn channel_names_are_escaped_only_when_they_need_it() {
        for name in [
            "news",
            "doc:42/ü",
            "a\"b",
            "back\\slash",
            "tab\there",
            "\u{1}",
            "",
        ] {
            let f = channel_message(name, "{\"x\":1}");
            let expected = format!(
                "{{\"channel\":{},\"data\":{{\"x\":1}}}}",
                serde_json::to_string(name).unwrap()
            );
            assert_eq!(std::str::from_utf8(&f[2..]).unwrap(), expected, "{name:?}");
            let parsed: serde_json::Value = serde_json::from_slice(&f[2..]).unwrap();
            assert_eq!(parsed["channel"], name);
        }
    }

    #[test]
    fn history_and_batch_frames() {
        let (f, data_at) = channel_message_at("doc:\"1", 17, "x7Kq", "[1]");
        assert_eq!(
            &f[2..],
            br#"{"channel":"doc:\"1","offset":17,"epoch":"x7Kq","data":[1]}"#
        );
        assert_eq!(&f[data_at..f.len() - 1], b"[1]");
        let f = batch_message("c", Some("E"), &[4, 5], &["1", "{}"]);
        assert_eq!(
            &f[2..],
            br#"{"channel":"c","epoch":"E","batch":[{"offset":4,"data":1},{"offset":5,"data":{}}]}"#
        );
        let f = batch_message("c", None, &[], &["1", "2"]);
        assert_eq!(
            &f[2..],
            br#"{"channel":"c","batch":[{"data":1},{"data":2}]}"#
        );
        let mut digits = [0u8; 20];
        assert_eq!(format_u64(&mut digits, u64::MAX), b"18446744073709551615");
        assert_eq!(format_u64(&mut digits, 0), b"0");
    }

    #[test]
    fn reply_and_pong_carry_the_id_verbatim() {
        let req: ClientRequest = serde_json::from_str(r#"{"op":"ping","id":"x-1"}"#).unwrap();
        let f = pong(req.id);
        assert_eq!(&f[2..], br#"{"type":"pong","id":"x-1"}"#);
        let f = reply(None, Some("no \"such\" op"));
        assert_eq!(
            &f[2..],
            br#"{"type":"reply","ok":false,"error":"no \"such\" op"}"#
        );
    }
}
