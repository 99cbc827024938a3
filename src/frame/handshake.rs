//! The HTTP/1.1 upgrade handshake (RFC 6455 §4.2), parsed with httparse.

/// The parts of an upgrade request the gateway uses. Borrowed from the read buffer.
#[derive(Debug)]
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
    pub authorization: Option<&'a str>,
    pub host: Option<&'a str>,
    /// True if the request is HTTP/1.1 (httparse version 1).
    pub http11: bool,
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
}

/// Parses a request head. `Ok(None)` = incomplete (need more bytes); if the buffer already holds `max_head` bytes
/// without a complete head, `Err(Reject::HeadTooLarge)`. Malformed HTTP → `Err(BadRequest)`.
pub fn parse_request(buf: &[u8], max_head: usize) -> Result<Option<Request<'_>>, Reject> {
    let _ = (buf, max_head);
    todo!()
}

/// Checks the WebSocket upgrade rules on a parsed request (method GET → else 405; HTTP/1.1; Upgrade: websocket and
/// Connection: upgrade → else 400; Sec-WebSocket-Version 13 → else 426; Sec-WebSocket-Key present and decoding to
/// exactly 16 bytes → else 400). Returns the key.
pub fn check_upgrade<'a>(req: &Request<'a>) -> Result<&'a str, Reject> {
    let _ = req;
    todo!()
}

/// Sec-WebSocket-Accept for a key: base64(sha1(key + GUID)), 28 ASCII bytes.
pub fn accept_value(key: &str) -> [u8; 28] {
    let _ = key;
    todo!()
}

/// Appends the 101 Switching Protocols response; `protocol` echoes a chosen Sec-WebSocket-Protocol.
pub fn write_switching(out: &mut Vec<u8>, key: &str, protocol: Option<&str>) {
    let _ = (out, key, protocol);
    todo!()
}

/// Appends a complete HTTP error response with `Connection: close`, a JSON body `{"error":"..."}` and the headers
/// each status needs (405: `Allow: GET`; 426: `Sec-WebSocket-Version: 13` and `Upgrade: websocket`).
pub fn write_reject(out: &mut Vec<u8>, reject: Reject) {
    let _ = (out, reject);
    todo!()
}

/// Status code for a rejection (400, 403, 404, 405, 426, 431).
pub fn status(reject: Reject) -> u16 {
    let _ = reject;
    todo!()
}
