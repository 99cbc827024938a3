//! Where a client puts its token in the upgrade request, in order of precedence:
//! 1. `Authorization: Bearer <JWT>` (non-browser clients);
//! 2. `Sec-WebSocket-Protocol: wsgate, bearer.<JWT>` (browsers: `new WebSocket(url, ["wsgate", "bearer." + jwt])`);
//!    the server answers with `Sec-WebSocket-Protocol: wsgate`;
//! 3. `?token=<JWT>` in the query string (percent-decoded; URLs end up in logs, so prefer the others).

use crate::frame::handshake::Request;
use crate::msgpack;
use crate::protocol::percent_decode;
use std::borrow::Cow;

/// The subprotocol a client offers to say "I speak wsgate"; echoed back when offered.
pub const SUBPROTOCOL: &str = "wsgate";
/// Prefix of the subprotocol entry that carries the token.
pub const PROTOCOL_TOKEN_PREFIX: &str = "bearer.";
/// Longest token accepted, bytes.
pub const MAX_TOKEN_LEN: usize = 8192;

/// The subprotocol to answer with: `wsgate.msgpack` (the binary protocol, src/msgpack.rs), `wsgate` or
/// `wsgate.json` if the client offered one, in that order, else the `bearer.` entry that carried the token (a
/// browser fails the connection when none of its offered protocols is echoed).
pub fn reply_protocol<'a>(req: &Request<'a>) -> Option<&'a str> {
    let offered = || {
        req.protocols
            .into_iter()
            .flat_map(|p| p.split(','))
            .map(str::trim)
    };
    for known in [msgpack::SUBPROTOCOL, SUBPROTOCOL, msgpack::JSON_SUBPROTOCOL] {
        if offered().any(|p| p == known) {
            return Some(known);
        }
    }
    offered().find(|p| p.starts_with(PROTOCOL_TOKEN_PREFIX))
}

/// Finds the token in a request. `Ok(None)` = no token anywhere.
pub fn find<'a>(req: &Request<'a>) -> Result<Option<Cow<'a, str>>, &'static str> {
    if let Some(value) = req.authorization {
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err("unsupported Authorization scheme (use Bearer)");
        }
        return checked(Cow::Borrowed(rest.trim()));
    }
    if let Some(list) = req.protocols {
        if let Some(t) = list
            .split(',')
            .map(str::trim)
            .find_map(|p| p.strip_prefix(PROTOCOL_TOKEN_PREFIX))
        {
            return checked(Cow::Borrowed(t));
        }
    }
    for pair in req.query.split('&') {
        if let Some(raw) = pair.strip_prefix("token=") {
            let decoded =
                percent_decode(raw).ok_or("token parameter is not valid percent-encoding")?;
            return checked(Cow::Owned(decoded));
        }
    }
    Ok(None)
}

fn checked(token: Cow<'_, str>) -> Result<Option<Cow<'_, str>>, &'static str> {
    if token.is_empty() {
        Err("empty token")
    } else if token.len() > MAX_TOKEN_LEN {
        Err("token too long")
    } else {
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::handshake::parse_request;

    fn req(head: &str) -> Vec<u8> {
        format!("GET /ws{head}\r\n\r\n").into_bytes()
    }

    #[test]
    fn header_then_protocol_then_query() {
        let b = req("?token=q HTTP/1.1\r\nAuthorization: Bearer h\r\nSec-WebSocket-Protocol: wsgate, bearer.p");
        let r = parse_request(&b, 8192).unwrap().unwrap();
        assert_eq!(find(&r).unwrap().unwrap(), "h");
        assert_eq!(reply_protocol(&r), Some("wsgate"));

        let b = req("?token=q HTTP/1.1\r\nSec-WebSocket-Protocol: bearer.p");
        let r = parse_request(&b, 8192).unwrap().unwrap();
        assert_eq!(find(&r).unwrap().unwrap(), "p");
        assert_eq!(reply_protocol(&r), Some("bearer.p"));

        let b = req("?a=1&token=q%2Ex HTTP/1.1");
        let r = parse_request(&b, 8192).unwrap().unwrap();
        assert_eq!(find(&r).unwrap().unwrap(), "q.x");
        assert_eq!(reply_protocol(&r), None);

        let b = req(" HTTP/1.1");
        let r = parse_request(&b, 8192).unwrap().unwrap();
        assert!(find(&r).unwrap().is_none());

        let b = req(" HTTP/1.1\r\nAuthorization: Basic abc");
        let r = parse_request(&b, 8192).unwrap().unwrap();
        assert!(find(&r).is_err());
        let b = req(" HTTP/1.1\r\nAuthorization: Bearer ");
        let r = parse_request(&b, 8192).unwrap().unwrap();
        assert!(find(&r).is_err());
    }
}
