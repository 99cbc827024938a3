//! The client side of RFC 6455, as small as a load generator can afford: the upgrade request and the check of the
//! server's answer (status 101, Upgrade, Connection, Sec-WebSocket-Accept), an incremental decoder for every server
//! frame form (7/16/64-bit lengths, fragmented messages, ping/pong/close) that reassembles fragments into a reused
//! buffer, and an encoder for masked client frames that writes straight into the connection's output buffer.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha1::{Digest, Sha1};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The longest header a server frame can have (no mask key): 2 + 8 bytes.
pub const MAX_SERVER_HEADER: usize = 10;

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A fresh Sec-WebSocket-Key: 16 random bytes, base64 (always 24 characters).
pub fn make_key(rng: &mut crate::rng::Rng) -> [u8; 24] {
    let mut raw = [0u8; 16];
    rng.fill(&mut raw);
    let mut key = [0u8; 24];
    B64.encode_slice(raw, &mut key)
        .expect("16 bytes encode to 24");
    key
}

/// The Sec-WebSocket-Accept a correct server answers for `key`.
pub fn accept_for(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    B64.encode(h.finalize())
}

/// Appends the upgrade request for `path` (with query) to `out`; `deflate` offers permessage-deflate (RFC 7692).
pub fn write_request(out: &mut Vec<u8>, host: &str, path: &str, key: &[u8], deflate: bool) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\nSec-WebSocket-Version: 13\r\n");
    if deflate {
        out.extend_from_slice(b"Sec-WebSocket-Extensions: permessage-deflate\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not an HTTP/1.x status line.
    NotHttp,
    /// A status other than 101.
    Status(u16),
    MissingUpgrade,
    MissingConnection,
    BadAccept,
    /// No end of the response head within the limit.
    TooLarge,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last = hay.len() - needle.len();
    let mut i = 0;
    while i <= last {
        if hay[i] == first && &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Checks the server's upgrade response at the start of `buf`. `Ok(None)`: incomplete, read more.
/// `Ok(Some(n))`: valid, the head is `n` bytes long and anything after it is already frame data.
pub fn parse_response(
    buf: &[u8],
    key: &[u8],
    max_head: usize,
) -> Result<Option<usize>, HandshakeError> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > max_head {
            return Err(HandshakeError::TooLarge);
        }
        // A complete status line that is not 101 is already a definite answer.
        if let Some(eol) = find(buf, b"\r\n") {
            check_status(&buf[..eol])?;
        }
        return Ok(None);
    };
    let head = &buf[..end];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    check_status(lines.next().unwrap_or(b""))?;
    let (mut upgrade, mut connection, mut accept) = (false, false, false);
    let expected = accept_for(key);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = value.eq_ignore_ascii_case(b"websocket");
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection = value
                .split(|&b| b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case(b"sec-websocket-accept") {
            accept = value == expected.as_bytes();
            if !accept {
                return Err(HandshakeError::BadAccept);
            }
        }
    }
    if !upgrade {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !connection {
        return Err(HandshakeError::MissingConnection);
    }
    if !accept {
        return Err(HandshakeError::BadAccept);
    }
    Ok(Some(end + 4))
}

fn check_status(line: &[u8]) -> Result<(), HandshakeError> {
    if !(line.starts_with(b"HTTP/1.1 ") || line.starts_with(b"HTTP/1.0 ")) || line.len() < 12 {
        return Err(HandshakeError::NotHttp);
    }
    let code = &line[9..12];
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(HandshakeError::NotHttp);
    }
    let code = code.iter().fold(0u16, |a, &d| a * 10 + (d - b'0') as u16);
    if code != 101 {
        return Err(HandshakeError::Status(code));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoError {
    ReservedBits,
    /// Servers must not mask (RFC 6455 §5.1).
    MaskedServerFrame,
    BadOpcode(u8),
    ControlTooLong,
    FragmentedControl,
    UnexpectedContinuation,
    /// A new data frame while a fragmented message is still open.
    InterleavedMessage,
    TooLarge,
    /// 64-bit length with the top bit set, or a length not in minimal form.
    BadLength,
    BadClosePayload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    /// RSV1: the message this frame starts is compressed.
    pub compressed: bool,
    pub header_len: usize,
    pub payload_len: u64,
}

/// Parses one frame header at the start of `buf`; `Ok(None)` if more bytes are needed.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, ProtoError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    // RSV1 (permessage-deflate) is judged by the decoder, which knows whether it was negotiated.
    if b0 & 0x30 != 0 {
        return Err(ProtoError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let compressed = b0 & 0x40 != 0;
    let opcode = b0 & 0x0f;
    if compressed && !matches!(opcode, OP_TEXT | OP_BINARY) {
        return Err(ProtoError::ReservedBits);
    }
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(ProtoError::BadOpcode(opcode));
    }
    if b1 & 0x80 != 0 {
        return Err(ProtoError::MaskedServerFrame);
    }
    let (header_len, payload_len) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let n = u16::from_be_bytes([buf[2], buf[3]]) as u64;
            if n < 126 {
                return Err(ProtoError::BadLength);
            }
            (4, n)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if n >> 63 != 0 || n <= 0xffff {
                return Err(ProtoError::BadLength);
            }
            (10, n)
        }
        n => (2, n as u64),
    };
    if opcode >= OP_CLOSE {
        if !fin {
            return Err(ProtoError::FragmentedControl);
        }
        if payload_len > 125 {
            return Err(ProtoError::ControlTooLong);
        }
    }
    Ok(Some(Header {
        fin,
        compressed,
        opcode,
        header_len,
        payload_len,
    }))
}

/// What the decoder hands to its caller, borrowing the input (or the reassembly buffer for fragmented messages).
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// `compressed`: the payload is permessage-deflate data (the caller inflates it).
    Message {
        opcode: u8,
        compressed: bool,
        payload: &'a [u8],
    },
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    Close {
        code: Option<u16>,
        reason: &'a [u8],
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of `buf` fully handled; the rest is an incomplete frame to keep for the next read.
    pub consumed: usize,
    /// A close frame was seen; nothing after it was looked at.
    pub closed: bool,
}

/// Incremental decoder state of one connection: only the open fragmented message (if any) survives between reads.
/// The reassembly buffer keeps its capacity, so steady-state decoding does not allocate.
#[derive(Debug, Default)]
pub struct Decoder {
    frag: Vec<u8>,
    frag_opcode: u8,
    in_frag: bool,
    frag_compressed: bool,
    /// permessage-deflate was offered: RSV1 on a message's first frame is allowed.
    pub deflate: bool,
}

impl Decoder {
    pub fn reset(&mut self) {
        self.in_frag = false;
        self.frag.clear();
        if self.frag.capacity() > 1 << 20 {
            self.frag = Vec::new();
        }
    }

    /// Decodes every complete frame at the start of `buf`, calling `on` for each event.
    pub fn decode<F: FnMut(Event<'_>)>(
        &mut self,
        buf: &[u8],
        max_message: usize,
        mut on: F,
    ) -> Result<Decoded, ProtoError> {
        let mut pos = 0;
        while let Some(h) = parse_header(&buf[pos..])? {
            if h.compressed && !self.deflate {
                return Err(ProtoError::ReservedBits);
            }
            if h.payload_len > max_message as u64 {
                return Err(ProtoError::TooLarge);
            }
            let total = h.header_len + h.payload_len as usize;
            if buf.len() - pos < total {
                break;
            }
            let payload = &buf[pos + h.header_len..pos + total];
            pos += total;
            match h.opcode {
                OP_TEXT | OP_BINARY => {
                    if self.in_frag {
                        return Err(ProtoError::InterleavedMessage);
                    }
                    if h.fin {
                        on(Event::Message {
                            opcode: h.opcode,
                            compressed: h.compressed,
                            payload,
                        });
                    } else {
                        self.in_frag = true;
                        self.frag_opcode = h.opcode;
                        self.frag_compressed = h.compressed;
                        self.frag.clear();
                        self.frag.extend_from_slice(payload);
                    }
                }
                OP_CONTINUATION => {
                    if !self.in_frag {
                        return Err(ProtoError::UnexpectedContinuation);
                    }
                    if h.compressed {
                        return Err(ProtoError::ReservedBits);
                    }
                    if self.frag.len() + payload.len() > max_message {
                        return Err(ProtoError::TooLarge);
                    }
                    self.frag.extend_from_slice(payload);
                    if h.fin {
                        on(Event::Message {
                            opcode: self.frag_opcode,
                            compressed: self.frag_compressed,
                            payload: &self.frag,
                        });
                        self.in_frag = false;
                        self.frag.clear();
                    }
                }
                OP_PING => on(Event::Ping(payload)),
                OP_PONG => on(Event::Pong(payload)),
                _ => {
                    // OP_CLOSE (parse_header rejected everything else).
                    let (code, reason) = match payload.len() {
                        0 => (None, &payload[..0]),
                        1 => return Err(ProtoError::BadClosePayload),
                        _ => (
                            Some(u16::from_be_bytes([payload[0], payload[1]])),
                            &payload[2..],
                        ),
                    };
                    on(Event::Close { code, reason });
                    return Ok(Decoded {
                        consumed: pos,
                        closed: true,
                    });
                }
            }
        }
        Ok(Decoded {
            consumed: pos,
            closed: false,
        })
    }
}

/// Appends a FIN frame header with mask key for a payload of `len` bytes; returns where the payload starts.
/// The caller appends exactly `len` payload bytes and then calls `mask_from`.
pub fn begin_frame(out: &mut Vec<u8>, opcode: u8, len: usize, mask: [u8; 4]) -> usize {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.len()
}

/// Masks `out[start..]` in place with `mask` (the key written by `begin_frame`).
pub fn mask_from(out: &mut [u8], start: usize, mask: [u8; 4]) {
    apply_mask(&mut out[start..], mask);
}

/// XORs `data` with the repeating 4-byte key, eight bytes at a time.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let m32 = u32::from_ne_bytes(mask) as u64;
    let m64 = m32 | (m32 << 32);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ m64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends a complete masked frame carrying `payload`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let start = begin_frame(out, opcode, payload.len(), mask);
    out.extend_from_slice(payload);
    mask_from(out, start, mask);
}

/// Appends a masked close frame with a status code.
pub fn encode_close(out: &mut Vec<u8>, code: u16, mask: [u8; 4]) {
    encode_frame(out, OP_CLOSE, &code.to_be_bytes(), mask);
}

#[cfg(test)]
pub mod fixtures {
    //! Server-side (unmasked) frame builders and a client-frame reader, for tests.
    use super::*;

    pub fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![if fin { 0x80 } else { 0 } | opcode];
        let n = payload.len();
        if n < 126 {
            v.push(n as u8);
        } else if n <= 0xffff {
            v.push(126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    /// Reads one masked client frame: (fin, opcode, unmasked payload, bytes used).
    pub fn read_client_frame(buf: &[u8]) -> (bool, u8, Vec<u8>, usize) {
        assert!(buf[1] & 0x80 != 0, "client frames must be masked");
        let (hl, n) = match buf[1] & 0x7f {
            126 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
            127 => (
                10,
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            ),
            n => (2, n as usize),
        };
        let mask: [u8; 4] = buf[hl..hl + 4].try_into().unwrap();
        let mut p = buf[hl + 4..hl + 4 + n].to_vec();
        apply_mask(&mut p, mask);
        (buf[0] & 0x80 != 0, buf[0] & 0x0f, p, hl + 4 + n)
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Owned {
        Msg(u8, Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, Vec<u8>),
    }

    fn decode_all(d: &mut Decoder, buf: &[u8]) -> (Result<Decoded, ProtoError>, Vec<Owned>) {
        let mut evs = Vec::new();
        let r = d.decode(buf, 1 << 24, |e| {
            evs.push(match e {
                Event::Message {
                    opcode, payload, ..
                } => Owned::Msg(opcode, payload.to_vec()),
                Event::Ping(p) => Owned::Ping(p.to_vec()),
                Event::Pong(p) => Owned::Pong(p.to_vec()),
                Event::Close { code, reason } => Owned::Close(code, reason.to_vec()),
            })
        });
        (r, evs)
    }

    #[test]
    fn rfc_example_accept() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn keys_are_random_and_well_formed() {
        let mut r = crate::rng::Rng::from_os();
        let a = make_key(&mut r);
        let b = make_key(&mut r);
        assert_ne!(a, b);
        assert_eq!(B64.decode(a).unwrap().len(), 16);
    }

    #[test]
    fn request_has_required_headers() {
        let mut out = Vec::new();
        write_request(
            &mut out,
            "127.0.0.1:8080",
            "/ws?channels=bench",
            b"dGhlIHNhbXBsZSBub25jZQ==",
            false,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("GET /ws?channels=bench HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(s.contains("Upgrade: websocket\r\n"));
        assert!(s.contains("Connection: Upgrade\r\n"));
        assert!(s.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(s.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(s.ends_with("\r\n\r\n"));
    }

    const KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn response_accepted_with_trailing_frame_bytes() {
        let mut resp = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n".to_vec();
        let head = resp.len();
        resp.extend_from_slice(&server_frame(true, OP_TEXT, b"hi"));
        assert_eq!(parse_response(&resp, KEY, 8192), Ok(Some(head)));
        // Every strict prefix of the head is "need more".
        for cut in 0..head {
            assert_eq!(
                parse_response(&resp[..cut], KEY, 8192),
                Ok(None),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn response_errors() {
        let bad_accept = b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: xxxx\r\n\r\n";
        assert_eq!(
            parse_response(bad_accept, KEY, 8192),
            Err(HandshakeError::BadAccept)
        );
        let no_accept = b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(
            parse_response(no_accept, KEY, 8192),
            Err(HandshakeError::BadAccept)
        );
        let no_upgrade =
            b"HTTP/1.1 101 OK\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(
            parse_response(no_upgrade, KEY, 8192),
            Err(HandshakeError::MissingUpgrade)
        );
        let no_conn =
            b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(
            parse_response(no_conn, KEY, 8192),
            Err(HandshakeError::MissingConnection)
        );
        // A refusal is recognised from the status line alone, before the head is complete.
        assert_eq!(
            parse_response(b"HTTP/1.1 503 Service Unavailable\r\n", KEY, 8192),
            Err(HandshakeError::Status(503))
        );
        assert_eq!(
            parse_response(b"SSH-2.0-OpenSSH\r\n", KEY, 8192),
            Err(HandshakeError::NotHttp)
        );
        assert_eq!(
            parse_response(&[b'a'; 9000], KEY, 8192),
            Err(HandshakeError::TooLarge)
        );
    }

    #[test]
    fn all_length_forms() {
        for n in [0usize, 1, 125, 126, 127, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let f = server_frame(true, OP_BINARY, &payload);
            let expected_hl = if n < 126 {
                2
            } else if n <= 65535 {
                4
            } else {
                10
            };
            assert_eq!(f.len(), expected_hl + n);
            let mut d = Decoder::default();
            let (r, evs) = decode_all(&mut d, &f);
            assert_eq!(
                r,
                Ok(Decoded {
                    consumed: f.len(),
                    closed: false
                })
            );
            assert_eq!(evs, vec![Owned::Msg(OP_BINARY, payload.clone())]);
            // Incomplete at every cut point: nothing consumed, no event.
            for cut in [0, 1, expected_hl - 1, expected_hl, f.len() - 1] {
                if cut >= f.len() {
                    continue;
                }
                let (r, evs) = decode_all(&mut d, &f[..cut]);
                assert_eq!(
                    r,
                    Ok(Decoded {
                        consumed: 0,
                        closed: false
                    }),
                    "n {n} cut {cut}"
                );
                assert!(evs.is_empty());
            }
        }
    }

    #[test]
    fn several_frames_in_one_buffer_and_partial_tail() {
        let mut buf = server_frame(true, OP_TEXT, b"one");
        buf.extend(server_frame(true, OP_TEXT, b"two"));
        let full = buf.len();
        buf.extend(&server_frame(true, OP_TEXT, b"three")[..3]);
        let mut d = Decoder::default();
        let (r, evs) = decode_all(&mut d, &buf);
        assert_eq!(r.unwrap().consumed, full);
        assert_eq!(
            evs,
            vec![
                Owned::Msg(OP_TEXT, b"one".to_vec()),
                Owned::Msg(OP_TEXT, b"two".to_vec())
            ]
        );
    }

    #[test]
    fn fragmented_message_with_interleaved_ping() {
        let mut buf = server_frame(false, OP_TEXT, b"{\"seq\":");
        buf.extend(server_frame(true, OP_PING, b"p"));
        buf.extend(server_frame(false, OP_CONTINUATION, b"12"));
        buf.extend(server_frame(true, OP_CONTINUATION, b"}"));
        let mut d = Decoder::default();
        let (r, evs) = decode_all(&mut d, &buf);
        assert_eq!(r.unwrap().consumed, buf.len());
        assert_eq!(
            evs,
            vec![
                Owned::Ping(b"p".to_vec()),
                Owned::Msg(OP_TEXT, b"{\"seq\":12}".to_vec())
            ]
        );
        // Fed one byte at a time through a carry buffer, the result is the same.
        let mut d = Decoder::default();
        let mut carry = Vec::new();
        let mut all = Vec::new();
        for &b in &buf {
            carry.push(b);
            let (r, evs) = decode_all(&mut d, &carry);
            carry.drain(..r.unwrap().consumed);
            all.extend(evs);
        }
        assert_eq!(
            all,
            vec![
                Owned::Ping(b"p".to_vec()),
                Owned::Msg(OP_TEXT, b"{\"seq\":12}".to_vec())
            ]
        );
    }

    #[test]
    fn close_stops_decoding() {
        let mut buf = server_frame(true, OP_CLOSE, &[0x03, 0xe9, b'b', b'y', b'e']);
        buf.extend(server_frame(true, OP_TEXT, b"after"));
        let mut d = Decoder::default();
        let (r, evs) = decode_all(&mut d, &buf);
        assert_eq!(
            r,
            Ok(Decoded {
                consumed: 7,
                closed: true
            })
        );
        assert_eq!(evs, vec![Owned::Close(Some(1001), b"bye".to_vec())]);
        let (r, evs) = decode_all(&mut d, &server_frame(true, OP_CLOSE, b""));
        assert!(r.unwrap().closed);
        assert_eq!(evs, vec![Owned::Close(None, vec![])]);
        let (r, _) = decode_all(&mut d, &server_frame(true, OP_CLOSE, b"x"));
        assert_eq!(r, Err(ProtoError::BadClosePayload));
    }

    #[test]
    fn protocol_errors() {
        let mut d = Decoder::default();
        assert_eq!(
            decode_all(&mut d, &[0xC1, 0x00]).0,
            Err(ProtoError::ReservedBits)
        );
        assert_eq!(
            decode_all(&mut d, &[0x83, 0x00]).0,
            Err(ProtoError::BadOpcode(3))
        );
        assert_eq!(
            decode_all(&mut d, &[0x81, 0x80, 0, 0, 0, 0]).0,
            Err(ProtoError::MaskedServerFrame)
        );
        assert_eq!(
            decode_all(&mut d, &server_frame(false, OP_PING, b"")).0,
            Err(ProtoError::FragmentedControl)
        );
        assert_eq!(
            decode_all(&mut d, &server_frame(true, OP_PING, &[0; 126])).0,
            Err(ProtoError::ControlTooLong)
        );
        assert_eq!(
            decode_all(&mut d, &server_frame(true, OP_CONTINUATION, b"x")).0,
            Err(ProtoError::UnexpectedContinuation)
        );
        assert_eq!(
            decode_all(&mut d, &[0x81, 126, 0, 5]).0,
            Err(ProtoError::BadLength)
        );
        assert_eq!(
            decode_all(&mut d, &[0x81, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]).0,
            Err(ProtoError::BadLength)
        );
        let mut two = server_frame(false, OP_TEXT, b"a");
        two.extend(server_frame(true, OP_TEXT, b"b"));
        let mut d = Decoder::default();
        assert_eq!(
            decode_all(&mut d, &two).0,
            Err(ProtoError::InterleavedMessage)
        );
        let mut d = Decoder::default();
        let r = d.decode(&server_frame(true, OP_TEXT, &[b'a'; 100]), 50, |_| {});
        assert_eq!(r, Err(ProtoError::TooLarge));
        let mut frags = server_frame(false, OP_TEXT, &[b'a'; 40]);
        frags.extend(server_frame(true, OP_CONTINUATION, &[b'a'; 40]));
        let r = Decoder::default().decode(&frags, 50, |_| {});
        assert_eq!(r, Err(ProtoError::TooLarge));
    }

    #[test]
    fn encoder_masks_and_uses_all_length_forms() {
        let mut rng = crate::rng::Rng::new(3);
        for n in [0usize, 5, 125, 126, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
            let mut out = vec![0xEE]; // existing bytes are kept
            let mask = rng.mask();
            encode_frame(&mut out, OP_TEXT, &payload, mask);
            assert_eq!(out[0], 0xEE);
            let (fin, op, p, used) = read_client_frame(&out[1..]);
            assert!(fin);
            assert_eq!(op, OP_TEXT);
            assert_eq!(used, out.len() - 1);
            assert_eq!(p, payload);
            if n >= 16 {
                assert_ne!(
                    &out[out.len() - 8..],
                    &payload[n - 8..],
                    "payload must be masked on the wire"
                );
            }
        }
        let mut out = Vec::new();
        encode_close(&mut out, 1000, [1, 2, 3, 4]);
        let (_, op, p, _) = read_client_frame(&out);
        assert_eq!((op, p), (OP_CLOSE, vec![0x03, 0xe8]));
    }

    #[test]
    fn mask_matches_bytewise_reference() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mask = [0x12, 0x34, 0x56, 0x78];
            let mut fast = data.clone();
            apply_mask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow);
        }
    }
}
