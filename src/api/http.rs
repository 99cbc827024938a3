//! Minimal HTTP/1.1 request parsing (httparse) and response writing for the API.

/// Largest request head the API accepts.
const MAX_HEAD: usize = 16 * 1024;

pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Raw query string (used by routes that take parameters).
    pub query: &'a str,
    pub body: &'a [u8],
    pub authorization: Option<&'a [u8]>,
    /// The body is MessagePack (`Content-Type: application/msgpack`), not JSON.
    pub msgpack: bool,
    pub keep_alive: bool,
    /// Head plus body length.
    pub total_len: usize,
}

pub enum Parsed<'a> {
    Partial,
    Request(Request<'a>),
    /// Answer with this status and message, then close (the stream cannot be resynchronised).
    Error(u16, &'static str),
}

pub fn parse(buf: &[u8], max_body: usize) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Parsed::Error(431, "request head too large")
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Error(431, "too many headers"),
        Err(_) => return Parsed::Error(400, "malformed HTTP request"),
    };
    if head_len > MAX_HEAD {
        return Parsed::Error(431, "request head too large");
    }
    let http11 = req.version == Some(1);
    let mut keep_alive = http11;
    let mut content_length: Option<usize> = None;
    let mut authorization = None;
    let mut msgpack = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            // One value only: a repeated header (or a list, which content_length rejects) is refused even when
            // the values agree, as RFC 9110 §8.6 allows; anything else would let two parsers disagree on where
            // the body ends.
            if content_length.is_some() {
                return Parsed::Error(400, "more than one Content-Length");
            }
            match self::content_length(h.value) {
                Some(v) => content_length = Some(v),
                None => {
                    return Parsed::Error(
                        400,
                        "invalid Content-Length (one decimal number expected)",
                    )
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Error(411, "chunked bodies are not supported; send Content-Length");
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("content-type") {
            // Parameters (`; charset=...`) do not matter for either format.
            let media = h.value.split(|&b| b == b';').next().unwrap_or_default();
            msgpack = media
                .trim_ascii()
                .eq_ignore_ascii_case(crate::msgpack::MEDIA_TYPE.as_bytes());
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > max_body {
        return Parsed::Error(413, "request body too large");
    }
    if buf.len() < head_len + body_len {
        return Parsed::Partial;
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Parsed::Request(Request {
        method: req.method.unwrap_or(""),
        path,
        query,
        body: &buf[head_len..head_len + body_len],
        authorization,
        msgpack,
        keep_alive,
        total_len: head_len + body_len,
    })
}

/// RFC 9110 §8.6: `Content-Length = 1*DIGIT` (optional whitespace around it). No sign, no list; a number too
/// large for usize saturates, so it is refused as too large rather than wrapping.
fn content_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0usize, |n, &d| {
        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    }))
}

/// A response before serialisation.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub allow: Option<&'static str>,
    /// Further header lines, each ending in CRLF (a Basic challenge, cache control).
    pub extra_headers: &'static str,
}

impl Response {
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type: "application/json",
            body: body.into(),
            allow: None,
            extra_headers: "",
        }
    }

    pub fn error(status: u16, message: &str) -> Self {
        let body = format!(
            "{{\"ok\":false,\"error\":{}}}",
            serde_json::to_string(message).expect("str")
        );
        Response::json(status, body)
    }

    pub fn to_bytes(&self, close: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 160);
        self.write_to(&mut out, close);
        out
    }

    /// Appends the whole response (head and body) to `out`: a connection's output buffer, without a copy between.
    pub fn write_to(&self, out: &mut Vec<u8>, close: bool) {
        use std::io::Write;
        out.reserve(self.body.len() + 160);
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            let _ = write!(out, "Allow: {allow}\r\n");
        }
        out.extend_from_slice(self.extra_headers.as_bytes());
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
    }
}

pub fn error_response(status: u16, message: &str) -> Vec<u8> {
    Response::error(status, message).to_bytes(true)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}
