//! The HTTP/1.1 upgrade handshake (RFC 6455 §4.2), parsed with httparse.

use super::deflate_offer::Agreed;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};
use std::io::Write as _;

/// Most request headers accepted; a request with more is answered 400.
pub const MAX_HEADERS: usize = 64;

/// The GUID appended to the key before hashing (RFC 6455 §1.3).
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The parts of an upgrade request the gateway uses. Borrowed from the read buffer.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Path without the query string, not decoded.
    pub path: &'a str,
    /// Raw query string after '?', "" if none.
    pub query: &'a str,
    /// Length of the request head in bytes (through the blank line).
    pub head_len: usize,
    pub upgrade_websocket: bool,
    /// `Connection` header token list contains "upgrade" (any case, any header occurrence).
    pub connection_upgrade: bool,
    pub version: Option<&'a str>,
    pub key: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub protocols: Option<&'a str>,
    /// Every `Sec-WebSocket-Extensions` value, in order (the header is a list and may repeat).
    pub extensions: Extensions<'a>,
    pub authorization: Option<&'a str>,
    pub host: Option<&'a str>,
    /// `X-Client-Version` (passed to upstream events).
    pub client_version: Option<&'a str>,
    /// True if the request is HTTP/1.1 (httparse version 1).
    pub http11: bool,
    /// `Content-Length`: the bytes of body that follow the head (0 when absent).
    pub content_length: usize,
    /// `Last-Event-ID` (an EventSource reconnecting after the last event it saw).
    pub last_event_id: Option<&'a str>,
}

/// Up to [`MAX_EXTENSION_HEADERS`] `Sec-WebSocket-Extensions` header values (more → 400).
#[derive(Debug, Default, Clone)]
pub struct Extensions<'a> {
    values: [&'a str; MAX_EXTENSION_HEADERS],
    len: usize,
}

/// Browsers send one `Sec-WebSocket-Extensions` header; a few allow for proxies that split lists.
pub const MAX_EXTENSION_HEADERS: usize = 4;

impl<'a> Extensions<'a> {
    pub fn as_slice(&self) -> &[&'a str] {
        &self.values[..self.len]
    }
}

/// Why a request is refused; maps to an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    BadRequest(&'static str),
    NotFound,
    MethodNotAllowed,
    Forbidden(&'static str),
    /// Wrong or missing Sec-WebSocket-Version: 426 with `Sec-WebSocket-Version: 13`.
    UpgradeRequired,
    HeadTooLarge,
    /// Missing or invalid token: 401 with `WWW-Authenticate: Bearer` and body `{"code":4001,"error":"..."}`.
    Unauthorized(&'static str),
    /// Too many connections (per user or per source address): 429 with body `{"code":4029,"error":"..."}`.
    TooManyRequests(&'static str),
    /// The server cannot open connections now (503); another server can.
    Unavailable(&'static str),
    /// The request body is over the limit (413).
    PayloadTooLarge,
    /// The request (head or body) did not arrive in time (408).
    RequestTimeout,
}

/// True if the comma-separated token list `value` contains `token` (ASCII case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Stores a single-valued header; a second occurrence is a bad request (two keys, two hosts or two sets of
/// credentials are ambiguous, and picking one silently could bypass a check).
fn set_once<'a>(
    slot: &mut Option<&'a str>,
    value: &'a [u8],
    dup: &'static str,
) -> Result<(), Reject> {
    if slot.is_some() {
        return Err(Reject::BadRequest(dup));
    }
    let value = std::str::from_utf8(value)
        .map_err(|_| Reject::BadRequest("header value is not valid UTF-8"))?;
    *slot = Some(value.trim_ascii());
    Ok(())
}

/// Parses a request head. `Ok(None)` = incomplete (need more bytes); if the buffer already holds `max_head` bytes
/// without a complete head, `Err(Reject::HeadTooLarge)`. Malformed HTTP → `Err(BadRequest)`.
///
/// A complete head longer than `max_head` is also `HeadTooLarge` (the limit must not depend on how reads happened
/// to be split). Duplicate `Host`, `Origin`, `Authorization`, `Sec-WebSocket-Key` or `Sec-WebSocket-Version`
/// headers are `BadRequest`; for `Sec-WebSocket-Protocol` the first occurrence is used.
pub fn parse_request(buf: &[u8], max_head: usize) -> Result<Option<Request<'_>>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_head {
                Err(Reject::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::BadRequest("too many headers")),
        Err(_) => return Err(Reject::BadRequest("malformed HTTP request")),
    };
    if head_len > max_head {
        return Err(Reject::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(Reject::BadRequest("malformed HTTP request"));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method,
        path,
        query,
        head_len,
        upgrade_websocket: false,
        connection_upgrade: false,
        version: None,
        key: None,
        origin: None,
        protocols: None,
        extensions: Extensions::default(),
        authorization: None,
        host: None,
        client_version: None,
        http11: version == 1,
        content_length: 0,
        last_event_id: None,
    };
    let mut content_length = None;
    for h in parsed.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            req.upgrade_websocket |= has_token(h.value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            req.connection_upgrade |= has_token(h.value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            set_once(
                &mut req.version,
                h.value,
                "duplicate Sec-WebSocket-Version header",
            )?;
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            set_once(&mut req.key, h.value, "duplicate Sec-WebSocket-Key header")?;
        } else if name.eq_ignore_ascii_case("origin") {
            set_once(&mut req.origin, h.value, "duplicate Origin header")?;
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            // May legitimately repeat (it is a list); the first occurrence is used.
            if req.protocols.is_none() {
                let value = std::str::from_utf8(h.value)
                    .map_err(|_| Reject::BadRequest("header value is not valid UTF-8"))?;
                req.protocols = Some(value.trim_ascii());
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            let ext = &mut req.extensions;
            if ext.len == MAX_EXTENSION_HEADERS {
                return Err(Reject::BadRequest(
                    "too many Sec-WebSocket-Extensions headers",
                ));
            }
            ext.values[ext.len] = std::str::from_utf8(h.value)
                .map_err(|_| Reject::BadRequest("header value is not valid UTF-8"))?;
            ext.len += 1;
        } else if name.eq_ignore_ascii_case("authorization") {
            set_once(
                &mut req.authorization,
                h.value,
                "duplicate Authorization header",
            )?;
        } else if name.eq_ignore_ascii_case("host") {
            set_once(&mut req.host, h.value, "duplicate Host header")?;
        } else if name.eq_ignore_ascii_case("x-client-version") {
            set_once(
                &mut req.client_version,
                h.value,
                "duplicate X-Client-Version header",
            )?;
        } else if name.eq_ignore_ascii_case("last-event-id") {
            set_once(
                &mut req.last_event_id,
                h.value,
                "duplicate Last-Event-ID header",
            )?;
        } else if name.eq_ignore_ascii_case("content-length") {
            set_once(
                &mut content_length,
                h.value,
                "duplicate Content-Length header",
            )?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // A body of unknown length cannot be bounded before it is read (and a length next to it is ambiguous).
            return Err(Reject::BadRequest(
                "Transfer-Encoding is not accepted: send the body with Content-Length",
            ));
        }
    }
    if let Some(len) = content_length {
        // Digits only: `+5` or `0x10` would parse differently in other HTTP stacks (request smuggling).
        if len.is_empty() || len.len() > 19 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Reject::BadRequest("invalid Content-Length"));
        }
        req.content_length = len
            .parse()
            .map_err(|_| Reject::BadRequest("invalid Content-Length"))?;
    }
    Ok(Some(req))
}

/// Checks the WebSocket upgrade rules on a parsed request (method GET → else 405; HTTP/1.1; Upgrade: websocket and
/// Connection: upgrade → else 400; Sec-WebSocket-Version 13 → else 426; Sec-WebSocket-Key present and decoding to
/// exactly 16 bytes → else 400). Returns the key.
pub fn check_upgrade<'a>(req: &Request<'a>) -> Result<&'a str, Reject> {
    if req.method != "GET" {
        return Err(Reject::MethodNotAllowed);
    }
    if !req.http11 {
        return Err(Reject::BadRequest("HTTP/1.1 required"));
    }
    if !req.upgrade_websocket {
        return Err(Reject::BadRequest("missing Upgrade: websocket"));
    }
    if !req.connection_upgrade {
        return Err(Reject::BadRequest("missing Connection: upgrade"));
    }
    if req.version != Some("13") {
        return Err(Reject::UpgradeRequired);
    }
    let Some(key) = req.key else {
        return Err(Reject::BadRequest("missing Sec-WebSocket-Key"));
    };
    // 16 bytes encode to exactly 24 base64 characters; checking the length first also bounds the decode buffer.
    let mut decoded = [0u8; 18];
    if key.len() != 24 || BASE64.decode_slice(key, &mut decoded) != Ok(16) {
        return Err(Reject::BadRequest("invalid Sec-WebSocket-Key"));
    }
    Ok(key)
}

/// Sec-WebSocket-Accept for a key: base64(sha1(key + GUID)), 28 ASCII bytes.
pub fn accept_value(key: &str) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    // 20 bytes always encode to exactly 28 characters, so this cannot fail.
    let written = BASE64.encode_slice(digest, &mut out).unwrap_or(0);
    debug_assert_eq!(written, 28);
    out
}

/// Appends the 101 Switching Protocols response; `protocol` echoes a chosen Sec-WebSocket-Protocol, `deflate`
/// answers an accepted permessage-deflate offer.
/// A protocol containing CR or LF is left out rather than allowed to inject headers.
pub fn write_switching(
    out: &mut Vec<u8>,
    key: &str,
    protocol: Option<&str>,
    deflate: Option<Agreed>,
) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&accept_value(key));
    out.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        if !p.is_empty() && !p.bytes().any(|b| b == b'\r' || b == b'\n') {
            out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
            out.extend_from_slice(p.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(d) = deflate {
        d.write_header(out);
    }
    out.extend_from_slice(b"\r\n");
}

/// Status code for a rejection (400, 401, 403, 404, 405, 408, 413, 426, 429, 431, 503).
pub fn status(reject: Reject) -> u16 {
    match reject {
        Reject::BadRequest(_) => 400,
        Reject::Forbidden(_) => 403,
        Reject::NotFound => 404,
        Reject::MethodNotAllowed => 405,
        Reject::UpgradeRequired => 426,
        Reject::HeadTooLarge => 431,
        Reject::Unauthorized(_) => 401,
        Reject::TooManyRequests(_) => 429,
        Reject::Unavailable(_) => 503,
        Reject::PayloadTooLarge => 413,
        Reject::RequestTimeout => 408,
    }
}

/// Appends a complete HTTP response with `Connection: close`: `headers` are whole header lines (each ending in
/// CRLF, built by the caller from constants), `body` follows with its `Content-Length`.
pub fn write_response(out: &mut Vec<u8>, status: u16, headers: &str, body: &[u8]) {
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        reason_phrase(status),
        body.len()
    );
    out.extend_from_slice(body);
}

/// Reason phrase for the status line.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// The message placed in the JSON body.
fn message(reject: Reject) -> &'static str {
    match reject {
        Reject::BadRequest(m)
        | Reject::Forbidden(m)
        | Reject::Unauthorized(m)
        | Reject::TooManyRequests(m)
        | Reject::Unavailable(m) => m,
        Reject::NotFound => "not found",
        Reject::MethodNotAllowed => "method not allowed",
        Reject::UpgradeRequired => "unsupported Sec-WebSocket-Version, 13 required",
        Reject::HeadTooLarge => "request head too large",
        Reject::PayloadTooLarge => "request body too large",
        Reject::RequestTimeout => "request not complete in time",
    }
}

/// Appends `s` as the contents of a JSON string (quotes, backslashes and control characters escaped).
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
}

/// Lets a page of any origin read a response (CORS). The client listener's HTTP routes (the fallback transports)
/// are fetched from the web app's pages, which often live on another origin than the gateway; no cookie is ever
/// read (tokens travel in the query or `Authorization`), and `server.allowed_origins` is enforced by the server
/// itself, so the answers carry nothing another origin may not see.
pub const ANY_ORIGIN: &str = "Access-Control-Allow-Origin: *\r\n";

/// Appends a complete HTTP error response with `Connection: close`, a JSON body `{"error":"..."}` and the headers
/// each status needs (405: `Allow: GET`; 426: `Sec-WebSocket-Version: 13` and `Upgrade: websocket`). It is
/// readable cross-origin ([`ANY_ORIGIN`]): a page on another origin sees why its session was refused (401, 429).
pub fn write_reject(out: &mut Vec<u8>, reject: Reject) {
    let code = status(reject);
    let mut body = Vec::with_capacity(64);
    // Auth refusals carry the code a client also sees in close frames (docs/PROTOCOL.md).
    match reject {
        Reject::Unauthorized(_) => body.extend_from_slice(b"{\"code\":4001,\"error\":\""),
        Reject::TooManyRequests(_) => body.extend_from_slice(b"{\"code\":4029,\"error\":\""),
        _ => body.extend_from_slice(b"{\"error\":\""),
    }
    push_json_str(&mut body, message(reject));
    body.extend_from_slice(b"\"}");
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\
         {ANY_ORIGIN}",
        reason_phrase(code),
        body.len()
    );
    match reject {
        Reject::MethodNotAllowed => out.extend_from_slice(b"Allow: GET\r\n"),
        Reject::UpgradeRequired => {
            out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n")
        }
        Reject::Unauthorized(_) => out.extend_from_slice(b"WWW-Authenticate: Bearer\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8192;

    fn request(extra: &str) -> String {
        format!(
            "GET /ws?token=abc&x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn parse_ok(s: &str) -> Request<'_> {
        parse_request(s.as_bytes(), MAX)
            .expect("parses")
            .expect("complete")
    }

    fn check(s: &str) -> Result<&str, Reject> {
        check_upgrade(&parse_ok(s))
    }

    /// Parses a response; returns (status, headers lower-cased, body).
    fn parse_response(bytes: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(bytes).expect("valid HTTP response") {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("incomplete response"),
        };
        assert_eq!(resp.version, Some(1));
        let hs = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (resp.code.unwrap(), hs, bytes[n..].to_vec())
    }

    fn header<'h>(hs: &'h [(String, String)], name: &str) -> Option<&'h str> {
        hs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn accept_rfc_vector() {
        assert_eq!(
            &accept_value("dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn happy_path() {
        let s = request("Origin: https://app.example\r\nAuthorization: Bearer t\r\nSec-WebSocket-Protocol: a, b\r\n");
        let req = parse_ok(&s);
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/ws");
        assert_eq!(req.query, "token=abc&x=1");
        assert_eq!(req.head_len, s.len());
        assert!(req.upgrade_websocket && req.connection_upgrade && req.http11);
        assert_eq!(req.version, Some("13"));
        assert_eq!(req.key, Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(req.origin, Some("https://app.example"));
        assert_eq!(req.authorization, Some("Bearer t"));
        assert_eq!(req.protocols, Some("a, b"));
        assert_eq!(req.host, Some("example.com"));
        assert_eq!(check_upgrade(&req), Ok("dGhlIHNhbXBsZSBub25jZQ=="));

        let mut out = Vec::new();
        write_switching(&mut out, "dGhlIHNhbXBsZSBub25jZQ==", Some("a"), None);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: a\r\n\r\n"
        );
        let (code, hs, body) = parse_response(&out);
        assert_eq!(code, 101);
        assert_eq!(
            header(&hs, "sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert!(body.is_empty());
    }

    #[test]
    fn extension_headers_are_all_kept_in_order() {
        let s = request(
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n\
             Sec-WebSocket-Extensions: permessage-deflate\r\n",
        );
        let req = parse_ok(&s);
        assert_eq!(
            req.extensions.as_slice(),
            [
                "permessage-deflate; server_max_window_bits=10",
                "permessage-deflate"
            ]
        );
        let agreed = crate::frame::deflate_offer::negotiate(req.extensions.as_slice(), false);
        let mut out = Vec::new();
        write_switching(&mut out, "dGhlIHNhbXBsZSBub25jZQ==", None, agreed);
        let (code, hs, _) = parse_response(&out);
        assert_eq!(code, 101);
        assert_eq!(
            header(&hs, "sec-websocket-extensions"),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10")
        );
        let five = request(&"Sec-WebSocket-Extensions: x\r\n".repeat(MAX_EXTENSION_HEADERS + 1));
        assert!(matches!(
            parse_request(five.as_bytes(), 8192),
            Err(Reject::BadRequest(_))
        ));
    }

    #[test]
    fn switching_without_or_with_bad_protocol() {
        for p in [None, Some(""), Some("x\r\nSet-Cookie: a=b")] {
            let mut out = Vec::new();
            write_switching(&mut out, "dGhlIHNhbXBsZSBub25jZQ==", p, None);
            let (code, hs, _) = parse_response(&out);
            assert_eq!(code, 101);
            assert_eq!(header(&hs, "sec-websocket-protocol"), None);
            assert_eq!(header(&hs, "set-cookie"), None);
        }
    }

    #[test]
    fn body_bytes_after_head_are_not_part_of_it() {
        let s = request("") + "\x01\x05abcd";
        let req = parse_ok(&s);
        assert_eq!(req.head_len, s.len() - 6);
    }

    #[test]
    fn no_query_and_empty_query() {
        let s = request("").replace("/ws?token=abc&x=1", "/ws");
        let req = parse_ok(&s);
        assert_eq!((req.path, req.query), ("/ws", ""));
        let s = request("").replace("/ws?token=abc&x=1", "/ws?");
        let req = parse_ok(&s);
        assert_eq!((req.path, req.query), ("/ws", ""));
    }

    #[test]
    fn header_names_and_values_case_insensitive() {
        let s = "GET / HTTP/1.1\r\nhOsT: h\r\nUPGRADE: WebSocket\r\nconnection: keep-alive, UPGRADE\r\n\
                 sec-websocket-key:   dGhlIHNhbXBsZSBub25jZQ==  \r\nSEC-WEBSOCKET-VERSION: 13\r\n\r\n";
        let req = parse_ok(s);
        assert!(req.upgrade_websocket);
        assert!(req.connection_upgrade);
        assert_eq!(req.host, Some("h"));
        assert_eq!(check_upgrade(&req), Ok("dGhlIHNhbXBsZSBub25jZQ=="));
    }

    #[test]
    fn connection_token_in_any_occurrence() {
        let s = "GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert!(check(s).is_ok());
        // A token is not a substring match.
        let s = request("").replace("Connection: Upgrade", "Connection: upgraded, keep-alive");
        assert!(!parse_ok(&s).connection_upgrade);
        let s = request("").replace("Upgrade: websocket", "Upgrade: websockets");
        assert!(!parse_ok(&s).upgrade_websocket);
    }

    #[test]
    fn partial_head_at_every_split() {
        let s = request("");
        for i in 0..s.len() {
            assert!(
                matches!(parse_request(&s.as_bytes()[..i], MAX), Ok(None)),
                "split {i}"
            );
        }
        assert!(parse_request(s.as_bytes(), MAX).unwrap().is_some());
    }

    #[test]
    fn head_too_large() {
        let s = request("");
        // Incomplete and at the limit.
        let partial = &s.as_bytes()[..s.len() - 2];
        assert_eq!(
            parse_request(partial, partial.len()).unwrap_err(),
            Reject::HeadTooLarge
        );
        assert!(matches!(
            parse_request(partial, partial.len() + 1),
            Ok(None)
        ));
        // Complete but longer than the limit.
        assert_eq!(
            parse_request(s.as_bytes(), s.len() - 1).unwrap_err(),
            Reject::HeadTooLarge
        );
        assert!(parse_request(s.as_bytes(), s.len()).unwrap().is_some());
        // Endless header lines.
        let big = format!("GET / HTTP/1.1\r\nX-Long: {}", "a".repeat(10_000));
        assert_eq!(
            parse_request(big.as_bytes(), MAX).unwrap_err(),
            Reject::HeadTooLarge
        );
        assert_eq!(status(Reject::HeadTooLarge), 431);
    }

    #[test]
    fn too_many_headers_is_400() {
        let many: String = (0..65).map(|i| format!("X-H{i}: v\r\n")).collect();
        let s = request(&many);
        match parse_request(s.as_bytes(), 1 << 20) {
            Err(Reject::BadRequest(_)) => {}
            other => panic!("{other:?}"),
        }
        // 64 in total is fine.
        let few: String = (0..58).map(|i| format!("X-H{i}: v\r\n")).collect();
        let s = request(&few);
        assert!(parse_request(s.as_bytes(), 1 << 20).unwrap().is_some());
    }

    #[test]
    fn malformed_is_400() {
        for s in [
            "GET\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "\x00\x01\x02\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(s.as_bytes(), MAX), Err(Reject::BadRequest(_))),
                "{s:?}"
            );
        }
    }

    #[test]
    fn duplicate_single_headers_are_400() {
        for h in [
            "Host: b\r\n",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            "Sec-WebSocket-Version: 13\r\n",
            "Origin: a\r\nOrigin: b\r\n",
            "Authorization: a\r\nAuthorization: b\r\n",
        ] {
            let s = request(h);
            assert!(
                matches!(parse_request(s.as_bytes(), MAX), Err(Reject::BadRequest(_))),
                "{h:?}"
            );
        }
        // Several protocol headers: the first is used.
        let req_s = request("Sec-WebSocket-Protocol: a\r\nSec-WebSocket-Protocol: b\r\n");
        assert_eq!(parse_ok(&req_s).protocols, Some("a"));
    }

    #[test]
    fn non_utf8_value_of_used_header_is_400_other_headers_ignored() {
        let with = |h: &[u8]| {
            let base = request("");
            let mut s = base.as_bytes()[..base.len() - 2].to_vec();
            s.extend_from_slice(h);
            s.extend_from_slice(b"\r\n");
            s
        };
        let s = with(b"Origin: \xFF\r\n");
        assert!(matches!(parse_request(&s, MAX), Err(Reject::BadRequest(_))));
        let s = with(b"X-Other: \xFF\r\n");
        assert!(parse_request(&s, MAX).unwrap().is_some());
    }

    #[test]
    fn rejections() {
        let cases: Vec<(String, Reject)> = vec![
            (
                request("").replacen("GET", "POST", 1),
                Reject::MethodNotAllowed,
            ),
            (
                request("").replacen("GET", "get", 1),
                Reject::MethodNotAllowed,
            ),
            (
                request("").replace("HTTP/1.1", "HTTP/1.0"),
                Reject::BadRequest("HTTP/1.1 required"),
            ),
            (
                request("").replace("Upgrade: websocket\r\n", ""),
                Reject::BadRequest("missing Upgrade: websocket"),
            ),
            (
                request("").replace("Upgrade: websocket", "Upgrade: h2c"),
                Reject::BadRequest("missing Upgrade: websocket"),
            ),
            (
                request("").replace("Connection: Upgrade", "Connection: keep-alive"),
                Reject::BadRequest("missing Connection: upgrade"),
            ),
            (
                request("").replace("Sec-WebSocket-Version: 13\r\n", ""),
                Reject::UpgradeRequired,
            ),
            (
                request("").replace("Version: 13", "Version: 8"),
                Reject::UpgradeRequired,
            ),
            (
                request("").replace("Version: 13", "Version: 13, 8"),
                Reject::UpgradeRequired,
            ),
            (
                request("").replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                Reject::BadRequest("missing Sec-WebSocket-Key"),
            ),
            // 15 bytes, 17 bytes, not base64, bad padding, non-canonical trailing bits, empty.
            (
                request("").replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25j"),
                Reject::BadRequest("invalid Sec-WebSocket-Key"),
            ),
            (
                request("").replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQAB"),
                Reject::BadRequest("invalid Sec-WebSocket-Key"),
            ),
            (
                request("").replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ=!"),
                Reject::BadRequest("invalid Sec-WebSocket-Key"),
            ),
            (
                request("").replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ=A"),
                Reject::BadRequest("invalid Sec-WebSocket-Key"),
            ),
            (
                request("").replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZR=="),
                Reject::BadRequest("invalid Sec-WebSocket-Key"),
            ),
            (
                request("").replace("dGhlIHNhbXBsZSBub25jZQ==", ""),
                Reject::BadRequest("invalid Sec-WebSocket-Key"),
            ),
            (
                request("").replace("dGhlIHNhbXBsZSBub25jZQ==", &"QUFB".repeat(100)),
                Reject::BadRequest("invalid Sec-WebSocket-Key"),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(check(&s), Err(want), "{s:?}");
        }
    }

    #[test]
    fn reject_responses() {
        let all = [
            (Reject::BadRequest("bad \"key\"\\"), 400),
            (Reject::Forbidden("origin not allowed"), 403),
            (Reject::NotFound, 404),
            (Reject::MethodNotAllowed, 405),
            (Reject::UpgradeRequired, 426),
            (Reject::HeadTooLarge, 431),
        ];
        for (r, code) in all {
            assert_eq!(status(r), code);
            let mut out = b"prefix".to_vec();
            write_reject(&mut out, r);
            assert!(out.starts_with(b"prefix"));
            let (got, hs, body) = parse_response(&out[6..]);
            assert_eq!(got, code);
            assert_eq!(header(&hs, "content-type"), Some("application/json"));
            assert_eq!(header(&hs, "connection"), Some("close"));
            assert_eq!(
                header(&hs, "content-length"),
                Some(body.len().to_string().as_str())
            );
            let body = String::from_utf8(body).unwrap();
            assert!(
                body.starts_with("{\"error\":\"") && body.ends_with("\"}"),
                "{body}"
            );
            assert!(body.len() > 13, "non-empty message: {body}");
            match r {
                Reject::MethodNotAllowed => assert_eq!(header(&hs, "allow"), Some("GET")),
                Reject::UpgradeRequired => {
                    assert_eq!(header(&hs, "sec-websocket-version"), Some("13"));
                    assert_eq!(header(&hs, "upgrade"), Some("websocket"));
                }
                Reject::BadRequest(_) => assert_eq!(body, r#"{"error":"bad \"key\"\\"}"#),
                Reject::Forbidden(_) => assert_eq!(body, r#"{"error":"origin not allowed"}"#),
                _ => {}
            }
        }
    }

    #[test]
    fn json_escapes_control_characters() {
        let mut out = Vec::new();
        push_json_str(&mut out, "a\u{1}\n\"é");
        assert_eq!(out, "a\\u0001\\n\\\"é".as_bytes());
    }

    #[test]
    fn random_heads_never_panic() {
        let base = request("Origin: o\r\n").into_bytes();
        let mut seed = 0x1234_5678_9ABC_DEF1u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5_000 {
            let mut s = base.clone();
            for _ in 0..(next() % 6) {
                let i = (next() % s.len() as u64) as usize;
                s[i] = next() as u8;
            }
            let cut = (next() % (s.len() as u64 + 1)) as usize;
            if let Ok(Some(req)) = parse_request(&s[..cut], 256) {
                if let Ok(key) = check_upgrade(&req) {
                    let mut out = Vec::new();
                    write_switching(&mut out, key, req.protocols, None);
                }
            }
            for r in [Reject::NotFound, Reject::HeadTooLarge] {
                write_reject(&mut Vec::new(), r);
            }
        }
        // Pure noise too.
        for _ in 0..5_000 {
            let n = (next() % 300) as usize;
            let s: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            let _ = parse_request(&s, 200);
        }
    }
}
