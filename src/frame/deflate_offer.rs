//! permessage-deflate negotiation (RFC 7692 §5, §7.1): picks the first valid offer of a
//! `Sec-WebSocket-Extensions` request header and writes the matching response header.
//!
//! Strict: an offer with an unknown parameter, a parameter given twice, a value where none is allowed, a missing
//! or out-of-range window size (8..=15, decimal, no leading zero) or a malformed parameter is declined (RFC 7692
//! §5: "MUST decline"), and the next offer is tried; if none is valid the connection simply runs uncompressed.
//!
//! What the server answers:
//! - always `server_no_context_takeover`: the server compresses every message on its own, which is what lets one
//!   compressed frame per publish be shared by all subscribers;
//! - `client_no_context_takeover` when the client offered it or the server does not keep inflate contexts
//!   (`ws.deflate_client_context = false`; a server may always ask for it, §7.1.1.2), so one inflater per reactor
//!   serves every such connection;
//! - `server_max_window_bits=N` echoed when offered (the shared frame is then sent compressed only to a connection
//!   whose window covers the whole message, see [`Agreed::takes_compressed`]);
//! - `client_max_window_bits` never: the server inflates with the largest window, which accepts any smaller one.

/// The parameters both sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// LZ77 window the client can hold for server messages (8..=15; 15 when the offer did not limit it).
    pub server_window_bits: u8,
    /// The client was asked to compress each message on its own.
    pub client_no_context_takeover: bool,
    /// The offer limited the server window (then the answer must name it).
    server_window_offered: bool,
}

const NAME: &str = "permessage-deflate";

impl Agreed {
    /// Whether a message compressed with the full window, without context, decodes with the client's window: it
    /// does when the window is the full one, or when the message is no longer than the window (no back-reference
    /// can then reach further).
    pub fn takes_compressed(server_window_bits: u8, plain_len: usize) -> bool {
        server_window_bits >= 15 || plain_len <= 1usize << server_window_bits
    }

    /// Appends `Sec-WebSocket-Extensions: ...\r\n` for this agreement.
    pub fn write_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover",
        );
        if self.client_no_context_takeover {
            out.extend_from_slice(b"; client_no_context_takeover");
        }
        if self.server_window_offered {
            out.extend_from_slice(b"; server_max_window_bits=");
            if self.server_window_bits >= 10 {
                out.push(b'1');
            }
            out.push(b'0' + self.server_window_bits % 10);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The agreement for the first valid permessage-deflate offer among `headers` (every `Sec-WebSocket-Extensions`
/// value of the request, in order), or None. `client_context` = the server keeps an inflate context per
/// connection for clients that want context takeover.
pub fn negotiate(headers: &[&str], client_context: bool) -> Option<Agreed> {
    headers
        .iter()
        .flat_map(|h| h.split(','))
        .filter_map(|ext| {
            let mut parts = ext.split(';');
            let name = parts.next()?.trim_ascii();
            if !name.eq_ignore_ascii_case(NAME) {
                return None;
            }
            parse_offer(parts)
        })
        .map(|mut a| {
            a.client_no_context_takeover |= !client_context;
            a
        })
        .next()
}

/// One permessage-deflate offer's parameters, or None to decline it.
fn parse_offer<'a>(params: impl Iterator<Item = &'a str>) -> Option<Agreed> {
    let mut agreed = Agreed {
        server_window_bits: 15,
        client_no_context_takeover: false,
        server_window_offered: false,
    };
    let (mut server_nct, mut client_nct) = (false, false);
    let (mut server_bits, mut client_bits) = (false, false);
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim_ascii(), Some(unquote(v.trim_ascii())?)),
            None => (param.trim_ascii(), None),
        };
        let seen = match name {
            "server_no_context_takeover" if value.is_none() => &mut server_nct,
            "client_no_context_takeover" if value.is_none() => {
                agreed.client_no_context_takeover = true;
                &mut client_nct
            }
            "server_max_window_bits" => {
                agreed.server_window_bits = window_bits(value?)?;
                agreed.server_window_offered = true;
                &mut server_bits
            }
            "client_max_window_bits" => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
                &mut client_bits
            }
            _ => return None,
        };
        if std::mem::replace(seen, true) {
            return None;
        }
    }
    Some(agreed)
}

/// A parameter value as a token: a quoted string is unquoted (escapes are declined: no valid value needs one).
fn unquote(v: &str) -> Option<&str> {
    let v = match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?,
        None => v,
    };
    let token = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    token.then_some(v)
}

/// 8..=15 written as a plain decimal.
fn window_bits(v: &str) -> Option<u8> {
    match v {
        "8" | "9" | "10" | "11" | "12" | "13" | "14" | "15" => v.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(offers: &[&str], client_context: bool) -> Option<String> {
        negotiate(offers, client_context).map(|a| {
            let mut out = Vec::new();
            a.write_header(&mut out);
            String::from_utf8(out).unwrap()
        })
    }

    const BASE: &str = "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover";

    #[test]
    fn browser_offer_is_accepted() {
        let a = negotiate(&["permessage-deflate; client_max_window_bits"], true).unwrap();
        assert_eq!(a.server_window_bits, 15);
        assert!(!a.client_no_context_takeover);
        assert_eq!(
            answer(&["permessage-deflate; client_max_window_bits"], true).unwrap(),
            format!("{BASE}\r\n")
        );
    }

    #[test]
    fn server_asks_for_client_no_context_takeover_unless_it_keeps_contexts() {
        assert_eq!(
            answer(&["permessage-deflate"], false).unwrap(),
            format!("{BASE}; client_no_context_takeover\r\n")
        );
        assert_eq!(
            answer(&["permessage-deflate; client_no_context_takeover"], true).unwrap(),
            format!("{BASE}; client_no_context_takeover\r\n")
        );
    }

    #[test]
    fn all_four_parameters() {
        let offer = "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                     server_max_window_bits=10; client_max_window_bits=9";
        let a = negotiate(&[offer], true).unwrap();
        assert_eq!(a.server_window_bits, 10);
        assert!(a.client_no_context_takeover);
        assert_eq!(
            answer(&[offer], true).unwrap(),
            format!("{BASE}; client_no_context_takeover; server_max_window_bits=10\r\n")
        );
        let quoted =
            negotiate(&["permessage-deflate; server_max_window_bits=\"8\""], true).unwrap();
        assert_eq!(quoted.server_window_bits, 8);
    }

    #[test]
    fn invalid_offers_are_declined_and_the_next_is_tried() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits=\"1\\5\"",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=true",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; mux",
            "permessage-deflate; =",
            "permessage-deflate; server_max_window_bits=\"10",
        ] {
            assert_eq!(negotiate(&[bad], true), None, "{bad}");
            // Declined, then the fallback offer (same header or a later one) is taken.
            let a = negotiate(&[&format!("{bad}, permessage-deflate")], true).unwrap();
            assert_eq!(a.server_window_bits, 15, "{bad}");
            assert!(negotiate(&[bad, "x-other", "permessage-deflate"], true).is_some());
        }
    }

    #[test]
    fn other_extensions_are_ignored() {
        assert_eq!(
            negotiate(&["x-webkit-deflate-frame", "foo; a=1"], true),
            None
        );
        assert_eq!(negotiate(&[], true), None);
        assert_eq!(negotiate(&[""], true), None);
    }

    #[test]
    fn window_rule() {
        assert!(Agreed::takes_compressed(15, 1 << 20));
        assert!(Agreed::takes_compressed(8, 256));
        assert!(!Agreed::takes_compressed(8, 257));
        assert!(Agreed::takes_compressed(10, 1024));
    }
}
