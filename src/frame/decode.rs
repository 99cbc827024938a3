//! Incremental decoder for client-to-server frames.
//!
//! Contract (the reactor relies on it):
//! - The caller owns the bytes. `buf` passed to [`Decoder::next`] always starts at the first byte of the frame that
//!   is currently being decoded (the caller drops consumed bytes from the front between calls, possibly moving the
//!   remainder to another buffer; positions are relative to the frame start, so that is fine).
//! - `next` unmasks payload bytes in place. It remembers how much of the current frame it has already unmasked (and
//!   UTF-8 validated), so calling it again on the same, longer buffer never unmasks a byte twice. Text payloads are
//!   validated as soon as bytes arrive, even in a partial frame, so invalid UTF-8 fails fast.
//! - Protocol rules enforced (each violation is `Err(Violation)` with the close code to send):
//!   unmasked client frame → 1002; RSV bits set → 1002 (except RSV1 on the first frame of a data message once
//!   [`Decoder::allow_compression`] was called: permessage-deflate, RFC 7692 §6); unknown opcode (3–7, 0xB–0xF) → 1002; control frame with
//!   payload > 125 or FIN=0 → 1002; continuation without a message in progress → 1002; new text/binary frame while a
//!   fragmented message is in progress → 1002; close payload of length 1, or an invalid close code (< 1000,
//!   1004–1006, 1015, 1016–2999, ≥ 5000; 3000–4999 are valid) → 1002; close reason not UTF-8 → 1007; text message
//!   not UTF-8 (checked incrementally across fragments) → 1007; message (sum of fragments) or single frame length
//!   greater than `max_message` → 1009 (reported as soon as the header shows it, before the payload arrives).
//!   A compressed message is checked for UTF-8 (and inflated) by the caller, after its last frame.
//! - No allocation. `Decoder` is small (it lives in every connection).

//! - After an `Err`, the connection is to be closed; the decoder must not be used again (it would not panic, but
//!   its state is unspecified).

use super::close_code::{INVALID_PAYLOAD, MESSAGE_TOO_BIG, PROTOCOL_ERROR};
use super::utf8::Utf8Validator;
use super::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};

/// A decoded, complete frame. Payload slices borrow the caller's buffer and are already unmasked.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A data frame: part or all of a text or binary message.
    /// `opcode` is the message's opcode (OP_TEXT or OP_BINARY) also for continuation frames;
    /// `first` is true for the frame that starts the message, `fin` for the frame that ends it.
    /// For text, the bytes seen so far are valid UTF-8 and, when `fin`, the whole message is — unless
    /// `compressed` (RSV1 on the message's first frame): then the payload is DEFLATE data, not yet checked.
    Data {
        opcode: u8,
        first: bool,
        fin: bool,
        compressed: bool,
        payload: &'a [u8],
    },
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// `code` is None for an empty close payload; `reason` is valid UTF-8.
    Close {
        code: Option<u16>,
        reason: &'a [u8],
    },
}

/// A protocol violation: close the connection with this code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

const fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

const RESERVED_BITS: Violation = violation(PROTOCOL_ERROR, "reserved bits set");
const MISPLACED_RSV1: Violation = violation(
    PROTOCOL_ERROR,
    "RSV1 set on a control or continuation frame",
);
const UNKNOWN_OPCODE: Violation = violation(PROTOCOL_ERROR, "unknown opcode");
const FRAGMENTED_CONTROL: Violation = violation(PROTOCOL_ERROR, "fragmented control frame");
const CONTROL_TOO_LONG: Violation =
    violation(PROTOCOL_ERROR, "control frame payload over 125 bytes");
const STRAY_CONTINUATION: Violation =
    violation(PROTOCOL_ERROR, "continuation frame without a message");
const INTERLEAVED_MESSAGE: Violation =
    violation(PROTOCOL_ERROR, "new message inside a fragmented message");
const UNMASKED: Violation = violation(PROTOCOL_ERROR, "client frame not masked");
const LENGTH_TOP_BIT: Violation =
    violation(PROTOCOL_ERROR, "64-bit payload length has its top bit set");
const CLOSE_LEN_ONE: Violation = violation(PROTOCOL_ERROR, "close payload of 1 byte");
const BAD_CLOSE_CODE: Violation = violation(PROTOCOL_ERROR, "invalid close code");
const CLOSE_REASON_UTF8: Violation = violation(INVALID_PAYLOAD, "close reason is not valid UTF-8");
const TEXT_UTF8: Violation = violation(INVALID_PAYLOAD, "text message is not valid UTF-8");
const TOO_BIG: Violation = violation(MESSAGE_TOO_BIG, "message too big");

/// `Decoder::state` bit: a fragmented message is in progress.
const IN_MESSAGE: u8 = 1;
/// `Decoder::state` bit: the message in progress is text.
const MESSAGE_TEXT: u8 = 2;
/// `Decoder::state` bit: the message in progress is compressed (its first frame had RSV1).
const MESSAGE_COMPRESSED: u8 = 4;

/// Per-connection decoder state.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Payload bytes of the current (partial) frame already unmasked and, for text, fed to `utf8`.
    done: usize,
    /// Payload bytes of the fragmented message in progress, summed over its completed frames.
    msg_len: usize,
    /// Validator for the text message in progress (untouched by control and binary frames).
    utf8: Utf8Validator,
    /// `IN_MESSAGE` | `MESSAGE_TEXT` | `MESSAGE_COMPRESSED`.
    state: u8,
    /// permessage-deflate was negotiated: RSV1 may mark a message as compressed.
    compression: bool,
}

/// True for close codes a peer may send (RFC 6455 §7.4, IANA registry): 1000–1003, 1007–1014, 3000–4999.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Payload length and end of the (extended) length field, if those bytes are present. `None` = need more bytes.
fn payload_len(buf: &[u8]) -> Option<(u64, usize)> {
    let b1 = *buf.get(1)?;
    match b1 & 0x7F {
        126 => {
            let b = buf.get(2..4)?;
            Some((u64::from(u16::from_be_bytes([b[0], b[1]])), 4))
        }
        127 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(buf.get(2..10)?);
            Some((u64::from_be_bytes(n), 10))
        }
        n => Some((u64::from(n), 2)),
    }
}

impl Decoder {
    /// From now on RSV1 on the first frame of a message means "compressed" (permessage-deflate negotiated).
    pub fn allow_compression(&mut self) {
        self.compression = true;
    }

    /// Decodes the next complete frame at the start of `buf`.
    /// Returns `Ok(Some((frame, consumed)))` where `consumed` is the frame's total length (header + payload);
    /// `Ok(None)` when more bytes are needed (after unmasking/validating what is there).
    pub fn next<'a>(
        &mut self,
        buf: &'a mut [u8],
        max_message: usize,
    ) -> Result<Option<(Frame<'a>, usize)>, Violation> {
        // Every check is made as soon as the bytes it needs are present, so hostile input fails early.
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 || (rsv1 && !self.compression) {
            return Err(RESERVED_BITS);
        }
        let opcode = b0 & 0x0F;
        let control = opcode & 0x08 != 0;
        if rsv1 && (control || opcode == OP_CONTINUATION) {
            return Err(MISPLACED_RSV1);
        }
        match opcode {
            OP_CONTINUATION if !self.in_message() => return Err(STRAY_CONTINUATION),
            OP_TEXT | OP_BINARY if self.in_message() => return Err(INTERLEAVED_MESSAGE),
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
            OP_CLOSE | OP_PING | OP_PONG if !fin => return Err(FRAGMENTED_CONTROL),
            OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(UNKNOWN_OPCODE),
        }

        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        if b1 & 0x80 == 0 {
            return Err(UNMASKED);
        }
        let len7 = b1 & 0x7F;
        if control && len7 > 125 {
            return Err(CONTROL_TOO_LONG);
        }
        if opcode == OP_CLOSE && len7 == 1 {
            return Err(CLOSE_LEN_ONE);
        }

        let Some((len, len_end)) = payload_len(buf) else {
            return Ok(None);
        };
        if len >> 63 != 0 {
            return Err(LENGTH_TOP_BIT);
        }
        // Control frames do not count towards the message they may interrupt (and are ≤ 125 bytes anyway).
        if !control && (self.msg_len as u64).saturating_add(len) > max_message as u64 {
            return Err(TOO_BIG);
        }
        // Fits: it is at most `max_message` (data) or 125 (control).
        let Ok(len) = usize::try_from(len) else {
            return Err(TOO_BIG);
        };

        let header_len = len_end + 4;
        let Some(mask) = buf.get(len_end..header_len) else {
            return Ok(None);
        };
        let mask = [mask[0], mask[1], mask[2], mask[3]];

        let text =
            opcode == OP_TEXT || (opcode == OP_CONTINUATION && self.state & MESSAGE_TEXT != 0);
        let compressed =
            rsv1 || (opcode == OP_CONTINUATION && self.state & MESSAGE_COMPRESSED != 0);
        let available = (buf.len() - header_len).min(len);
        if self.done < available {
            let fresh = &mut buf[header_len + self.done..header_len + available];
            unmask(fresh, mask, self.done);
            if text && !compressed && self.utf8.feed(fresh).is_err() {
                return Err(TEXT_UTF8);
            }
            self.done = available;
        }
        if available < len {
            return Ok(None);
        }

        // The frame is complete.
        self.done = 0;
        let consumed = header_len + len;
        let buf: &'a [u8] = buf;
        let payload = &buf[header_len..consumed];
        let frame = match opcode {
            OP_PING => Frame::Ping(payload),
            OP_PONG => Frame::Pong(payload),
            OP_CLOSE => close_frame(payload)?,
            _ => {
                let first = opcode != OP_CONTINUATION;
                let message_opcode = if text { OP_TEXT } else { OP_BINARY };
                if fin {
                    if text && !compressed && self.utf8.finish().is_err() {
                        return Err(TEXT_UTF8);
                    }
                    self.state = 0;
                    self.msg_len = 0;
                } else {
                    self.state = IN_MESSAGE
                        | if text { MESSAGE_TEXT } else { 0 }
                        | if compressed { MESSAGE_COMPRESSED } else { 0 };
                    // Cannot overflow: checked against `max_message` above.
                    self.msg_len += len;
                }
                Frame::Data {
                    opcode: message_opcode,
                    first,
                    fin,
                    compressed,
                    payload,
                }
            }
        };
        Ok(Some((frame, consumed)))
    }

    /// How many bytes the frame at the start of `buf` needs in total, if its header is complete
    /// (lets the caller size a read buffer for a large frame). None if the header is incomplete.
    ///
    /// The header includes the masking key when the mask bit is set. Nothing is validated here (that is `next`'s
    /// job); an absurd 64-bit length saturates at `u64::MAX`.
    pub fn frame_len(buf: &[u8]) -> Option<u64> {
        let (len, len_end) = payload_len(buf)?;
        let masked = buf[1] & 0x80 != 0;
        let header_len = len_end + if masked { 4 } else { 0 };
        if buf.len() < header_len {
            return None;
        }
        Some(len.saturating_add(header_len as u64))
    }

    /// True while a fragmented message is in progress.
    pub fn in_message(&self) -> bool {
        self.state & IN_MESSAGE != 0
    }
}

/// Parses a complete close payload (its length is already known not to be 1).
fn close_frame(payload: &[u8]) -> Result<Frame<'_>, Violation> {
    let [hi, lo, reason @ ..] = payload else {
        return Ok(Frame::Close {
            code: None,
            reason: &[],
        });
    };
    let code = u16::from_be_bytes([*hi, *lo]);
    if !valid_close_code(code) {
        return Err(BAD_CLOSE_CODE);
    }
    if std::str::from_utf8(reason).is_err() {
        return Err(CLOSE_REASON_UTF8);
    }
    Ok(Frame::Close {
        code: Some(code),
        reason,
    })
}

/// XORs `payload` with `mask`, where `payload[0]` is byte number `offset` of the frame payload.
/// Word-at-a-time for speed.
pub fn unmask(payload: &mut [u8], mask: [u8; 4], offset: usize) {
    // Rotate the key so that `m[0]` applies to `payload[0]`; from then on byte i uses m[i % 4], and every 8-byte
    // chunk starts at a multiple of 4, so one u64 pattern fits all chunks. Safe fixed-size chunks compile to plain
    // (unaligned) word loads and stores, which LLVM also vectorises; no `unsafe` needed.
    let r = offset % 4;
    let m = [
        mask[r],
        mask[(r + 1) % 4],
        mask[(r + 2) % 4],
        mask[(r + 3) % 4],
    ];
    let word = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        if let Ok(chunk) = <&mut [u8; 8]>::try_from(chunk) {
            *chunk = (u64::from_ne_bytes(*chunk) ^ word).to_ne_bytes();
        }
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::close_code;

    const MAX: usize = 1 << 20;
    const FIN: u8 = 0x80;

    /// An owned copy of a frame, so tests can keep it after the buffer moves on.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Data {
            opcode: u8,
            first: bool,
            fin: bool,
            payload: Vec<u8>,
        },
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close {
            code: Option<u16>,
            reason: Vec<u8>,
        },
    }

    fn own(f: Frame<'_>) -> Owned {
        match f {
            Frame::Data {
                opcode,
                first,
                fin,
                payload,
                ..
            } => Owned::Data {
                opcode,
                first,
                fin,
                payload: payload.to_vec(),
            },
            Frame::Ping(p) => Owned::Ping(p.to_vec()),
            Frame::Pong(p) => Owned::Pong(p.to_vec()),
            Frame::Close { code, reason } => Owned::Close {
                code,
                reason: reason.to_vec(),
            },
        }
    }

    fn data(opcode: u8, first: bool, fin: bool, payload: &[u8]) -> Owned {
        Owned::Data {
            opcode,
            first,
            fin,
            payload: payload.to_vec(),
        }
    }

    /// Length encodings a client may choose.
    #[derive(Clone, Copy)]
    enum Len {
        Minimal,
        Bits16,
        Bits64,
    }

    /// A client frame: `b0` is FIN | RSV | opcode; masked with `mask` unless None.
    fn raw(b0: u8, payload: &[u8], mask: Option<[u8; 4]>, enc: Len) -> Vec<u8> {
        let mut out = vec![b0];
        let m = if mask.is_some() { 0x80 } else { 0 };
        let n = payload.len();
        match enc {
            Len::Minimal if n < 126 => out.push(m | n as u8),
            Len::Minimal if n <= 0xFFFF => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            Len::Bits16 => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            Len::Minimal | Len::Bits64 => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if let Some(k) = mask {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    fn client(b0: u8, payload: &[u8]) -> Vec<u8> {
        raw(b0, payload, Some([0x37, 0xFA, 0x21, 0x3D]), Len::Minimal)
    }

    fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        p
    }

    /// Feeds `wire` in chunks of the given sizes (cycled), decoding as a reactor would: append, decode until None,
    /// drop consumed bytes from the front.
    fn decode_chunked(
        wire: &[u8],
        sizes: &[usize],
        max: usize,
    ) -> (Vec<Owned>, Result<(), Violation>, usize) {
        let mut dec = Decoder::default();
        let mut rbuf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < wire.len() {
            let n = sizes[i % sizes.len()].max(1).min(wire.len() - pos);
            i += 1;
            rbuf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            loop {
                match dec.next(&mut rbuf, max) {
                    Ok(Some((f, consumed))) => {
                        out.push(own(f));
                        assert!(consumed <= rbuf.len());
                        rbuf.drain(..consumed);
                    }
                    Ok(None) => break,
                    Err(v) => return (out, Err(v), pos),
                }
            }
        }
        assert!(rbuf.is_empty() || dec.next(&mut rbuf, max) == Ok(None));
        (out, Ok(()), pos)
    }

    fn decode_all(wire: &[u8], max: usize) -> (Vec<Owned>, Result<(), Violation>) {
        let (f, r, _) = decode_chunked(wire, &[usize::MAX], max);
        (f, r)
    }

    /// Decodes `wire` expecting a violation with `code`; also checks byte-by-byte feeding reports the same.
    fn expect_violation(wire: &[u8], max: usize, code: u16) -> Violation {
        let (_, r) = decode_all(wire, max);
        let v = r.expect_err("expected a violation");
        assert_eq!(v.code, code, "{v:?}");
        let (_, r2, _) = decode_chunked(wire, &[1], max);
        assert_eq!(r2, Err(v));
        v
    }

    fn one(wire: &[u8]) -> Owned {
        let (frames, r) = decode_all(wire, MAX);
        r.expect("valid");
        assert_eq!(frames.len(), 1);
        frames.into_iter().next().unwrap()
    }

    #[test]
    fn decoder_is_small() {
        assert!(
            std::mem::size_of::<Decoder>() <= 24,
            "{}",
            std::mem::size_of::<Decoder>()
        );
    }

    #[test]
    fn single_frames() {
        assert_eq!(
            one(&client(FIN | OP_TEXT, b"Hello")),
            data(OP_TEXT, true, true, b"Hello")
        );
        assert_eq!(
            one(&client(FIN | OP_BINARY, &[0, 1, 255])),
            data(OP_BINARY, true, true, &[0, 1, 255])
        );
        assert_eq!(
            one(&client(FIN | OP_TEXT, b"")),
            data(OP_TEXT, true, true, b"")
        );
        assert_eq!(
            one(&client(FIN | OP_PING, b"p")),
            Owned::Ping(b"p".to_vec())
        );
        assert_eq!(one(&client(FIN | OP_PONG, b"")), Owned::Pong(vec![]));
        assert_eq!(
            one(&client(FIN | OP_CLOSE, b"")),
            Owned::Close {
                code: None,
                reason: vec![]
            }
        );
        assert_eq!(
            one(&client(FIN | OP_CLOSE, &close_payload(1000, b"bye"))),
            Owned::Close {
                code: Some(1000),
                reason: b"bye".to_vec()
            }
        );
        assert_eq!(
            one(&client(FIN | OP_PING, &[7; 125])),
            Owned::Ping(vec![7; 125])
        );
    }

    #[test]
    fn rfc_example_frames() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let mut wire = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut dec = Decoder::default();
        let (f, n) = dec.next(&mut wire, MAX).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Data {
                opcode: OP_TEXT,
                first: true,
                fin: true,
                compressed: false,
                payload: b"Hello"
            }
        );
        assert_eq!(n, 11);
    }

    #[test]
    fn consumed_and_trailing_bytes() {
        let mut wire = client(FIN | OP_TEXT, b"abc");
        let len = wire.len();
        wire.extend_from_slice(&client(FIN | OP_PING, b"x")[..3]); // part of the next frame
        let mut dec = Decoder::default();
        let (f, n) = dec.next(&mut wire, MAX).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Data {
                opcode: OP_TEXT,
                first: true,
                fin: true,
                compressed: false,
                payload: b"abc"
            }
        );
        assert_eq!(n, len);
        assert_eq!(dec.next(&mut wire[n..], MAX), Ok(None));
    }

    #[test]
    fn extended_lengths() {
        for (len, enc, header) in [
            (126usize, Len::Minimal, 8),
            (200, Len::Minimal, 8),
            (65535, Len::Minimal, 8),
            (65536, Len::Minimal, 14),
            (70_000, Len::Minimal, 14),
            (5, Len::Bits16, 8), // non-minimal encodings are accepted
            (5, Len::Bits64, 14),
            (300, Len::Bits64, 14),
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let wire = raw(FIN | OP_BINARY, &payload, Some([1, 2, 3, 4]), enc);
            assert_eq!(wire.len(), header + len);
            assert_eq!(Decoder::frame_len(&wire), Some(wire.len() as u64));
            let (frames, r) = decode_all(&wire, MAX);
            r.unwrap();
            assert_eq!(frames, vec![data(OP_BINARY, true, true, &payload)]);
            // In pieces of various sizes.
            let (frames, r, _) = decode_chunked(&wire, &[1, 7, 1000, 3], MAX);
            r.unwrap();
            assert_eq!(frames, vec![data(OP_BINARY, true, true, &payload)]);
        }
    }

    #[test]
    fn frame_by_frame_byte_by_byte() {
        let frames: Vec<Vec<u8>> = vec![
            client(FIN | OP_TEXT, "héllo wörld 😀".as_bytes()),
            client(FIN | OP_BINARY, &[9; 300]),
            client(FIN | OP_PING, b"ping"),
            client(FIN | OP_CLOSE, &close_payload(4000, "ok ✓".as_bytes())),
            raw(
                FIN | OP_TEXT,
                &[b'a'; 66_000],
                Some([0xFF, 0, 0x80, 1]),
                Len::Minimal,
            ),
        ];
        for wire in &frames {
            let want = one(wire);
            // Grow one buffer a byte at a time; already unmasked bytes stay in place between calls.
            let mut dec = Decoder::default();
            let mut buf = Vec::with_capacity(wire.len());
            for (i, &b) in wire.iter().enumerate() {
                buf.push(b);
                let got = dec.next(&mut buf, MAX).unwrap();
                if i + 1 < wire.len() {
                    assert!(got.is_none(), "complete too early at {i}");
                    // frame_len is known once the header is.
                    let fl = Decoder::frame_len(&buf);
                    assert!(fl.is_none() || fl == Some(wire.len() as u64));
                } else {
                    let (f, n) = got.expect("complete");
                    assert_eq!(own(f), want);
                    assert_eq!(n, wire.len());
                }
            }
        }
    }

    #[test]
    fn never_unmasks_twice_across_moves() {
        // The caller may move the partial frame to another buffer between calls.
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 13) as u8).collect();
        let wire = raw(
            FIN | OP_BINARY,
            &payload,
            Some([0xA5, 0x5A, 0x0F, 0xF0]),
            Len::Minimal,
        );
        for step in [1usize, 3, 5, 8, 13, 64, 999] {
            let mut dec = Decoder::default();
            let mut buf: Vec<u8> = Vec::new();
            let mut pos = 0;
            let mut result = None;
            while pos < wire.len() {
                let n = step.min(wire.len() - pos);
                let mut moved = buf.clone(); // "another buffer"
                moved.extend_from_slice(&wire[pos..pos + n]);
                pos += n;
                // Repeated calls without new bytes change nothing (until the frame is complete and consumed).
                for _ in 0..2 {
                    if let Some((f, _)) = dec.next(&mut moved, MAX).unwrap() {
                        result = Some(own(f));
                        break;
                    }
                }
                buf = moved;
            }
            assert_eq!(
                result,
                Some(data(OP_BINARY, true, true, &payload)),
                "step {step}"
            );
        }
    }

    #[test]
    fn fragmentation_with_interleaved_control_frames() {
        let mut wire = Vec::new();
        wire.extend(client(OP_TEXT, b"Hel"));
        wire.extend(client(FIN | OP_PING, b"x"));
        wire.extend(client(OP_CONTINUATION, b""));
        wire.extend(client(OP_CONTINUATION, b"lo"));
        wire.extend(client(FIN | OP_PONG, b"y"));
        wire.extend(client(FIN | OP_CLOSE, &close_payload(1001, b""))); // close may interleave too
        wire.extend(client(FIN | OP_CONTINUATION, b"!"));
        wire.extend(client(OP_BINARY, &[1]));
        wire.extend(client(FIN | OP_CONTINUATION, &[2]));
        wire.extend(client(FIN | OP_TEXT, b"next"));
        let want = vec![
            data(OP_TEXT, true, false, b"Hel"),
            Owned::Ping(b"x".to_vec()),
            data(OP_TEXT, false, false, b""),
            data(OP_TEXT, false, false, b"lo"),
            Owned::Pong(b"y".to_vec()),
            Owned::Close {
                code: Some(1001),
                reason: vec![],
            },
            data(OP_TEXT, false, true, b"!"),
            data(OP_BINARY, true, false, &[1]),
            data(OP_BINARY, false, true, &[2]),
            data(OP_TEXT, true, true, b"next"),
        ];
        for sizes in [&[usize::MAX][..], &[1], &[2, 5], &[3, 1, 4, 1, 5, 9, 2, 6]] {
            let (frames, r, _) = decode_chunked(&wire, sizes, MAX);
            r.unwrap();
            assert_eq!(frames, want, "{sizes:?}");
        }
    }

    #[test]
    fn in_message_tracks_fragments() {
        let mut dec = Decoder::default();
        assert!(!dec.in_message());
        let mut f = client(OP_BINARY, b"a");
        dec.next(&mut f, MAX).unwrap().unwrap();
        assert!(dec.in_message());
        let mut f = client(FIN | OP_PING, b"");
        dec.next(&mut f, MAX).unwrap().unwrap();
        assert!(dec.in_message());
        // A partial continuation does not end it.
        let mut f = client(FIN | OP_CONTINUATION, b"bc");
        let n = f.len();
        assert_eq!(dec.next(&mut f[..n - 1], MAX), Ok(None));
        assert!(dec.in_message());
        dec.next(&mut f, MAX).unwrap().unwrap();
        assert!(!dec.in_message());
    }

    #[test]
    fn utf8_split_across_fragments_at_every_position() {
        let text = "a€😀ßz\u{10FFFF}";
        let b = text.as_bytes();
        for i in 0..=b.len() {
            for j in i..=b.len() {
                let mut wire = client(OP_TEXT, &b[..i]);
                wire.extend(client(FIN | OP_PING, b"")); // a control frame in between must not disturb
                wire.extend(client(OP_CONTINUATION, &b[i..j]));
                wire.extend(client(FIN | OP_CONTINUATION, &b[j..]));
                let (frames, r, _) = decode_chunked(&wire, &[1, 2, 3], MAX);
                r.unwrap_or_else(|v| panic!("split {i}/{j}: {v:?}"));
                let mut joined = Vec::new();
                for f in frames {
                    if let Owned::Data { payload, .. } = f {
                        joined.extend(payload);
                    }
                }
                assert_eq!(joined, b);
            }
        }
        // The 4-byte char split 1|3, 2|2, 3|1.
        let e = "😀".as_bytes();
        for k in 1..4 {
            let mut wire = client(OP_TEXT, &e[..k]);
            wire.extend(client(FIN | OP_CONTINUATION, &e[k..]));
            let (frames, r) = decode_all(&wire, MAX);
            r.unwrap();
            assert_eq!(
                frames,
                vec![
                    data(OP_TEXT, true, false, &e[..k]),
                    data(OP_TEXT, false, true, &e[k..])
                ]
            );
        }
    }

    #[test]
    fn invalid_utf8_split_across_fragments_fails_in_the_right_frame() {
        // F4 90 (> U+10FFFF): the second byte is the impossible one.
        for (bytes, bad_at) in [
            (&[0xF4u8, 0x90, 0x80, 0x80][..], 1),
            (&[0xED, 0xA0, 0x80], 1),
            (&[0xE2, 0x82, 0x41], 2),
        ] {
            for split in 1..bytes.len() {
                let first = client(OP_TEXT, &bytes[..split]);
                let mut wire = first.clone();
                wire.extend(client(FIN | OP_CONTINUATION, &bytes[split..]));
                let (frames, r) = decode_all(&wire, MAX);
                assert_eq!(r.unwrap_err().code, close_code::INVALID_PAYLOAD);
                // The first fragment is accepted only if it does not contain the bad byte.
                assert_eq!(
                    frames.len(),
                    usize::from(split <= bad_at),
                    "{bytes:x?} split {split}"
                );
            }
        }
    }

    #[test]
    fn incomplete_utf8_at_message_end_is_1007() {
        expect_violation(
            &client(FIN | OP_TEXT, &[b'a', 0xE2, 0x82]),
            MAX,
            close_code::INVALID_PAYLOAD,
        );
        let mut wire = client(OP_TEXT, &[0xF0, 0x9F]);
        wire.extend(client(FIN | OP_CONTINUATION, &[0x98]));
        expect_violation(&wire, MAX, close_code::INVALID_PAYLOAD);
        // Binary is never checked.
        assert_eq!(
            one(&client(FIN | OP_BINARY, &[0xFF, 0xE2])),
            data(OP_BINARY, true, true, &[0xFF, 0xE2])
        );
    }

    #[test]
    fn invalid_utf8_fails_fast_inside_partial_frame() {
        let mut payload = vec![b'a'; 1000];
        payload[10] = 0xFF;
        let wire = client(FIN | OP_TEXT, &payload);
        let header = wire.len() - payload.len();
        let mut dec = Decoder::default();
        // Up to the bad byte: fine, needs more.
        let mut part = wire[..header + 10].to_vec();
        assert_eq!(dec.next(&mut part, MAX), Ok(None));
        // With the bad byte, long before the frame is complete.
        let mut part = wire[..header + 11].to_vec();
        assert_eq!(
            dec.next(&mut part, MAX).unwrap_err().code,
            close_code::INVALID_PAYLOAD
        );

        // Surrogate in a continuation frame, partial.
        let mut dec = Decoder::default();
        let mut f = client(OP_TEXT, b"ok");
        dec.next(&mut f, MAX).unwrap().unwrap();
        let mut cont = client(FIN | OP_CONTINUATION, &[b'x', 0xED, 0xA0, 0x80, b'y', b'z']);
        let h = cont.len() - 6;
        assert_eq!(dec.next(&mut cont[..h + 2], MAX), Ok(None));
        assert_eq!(
            dec.next(&mut cont[..h + 3], MAX).unwrap_err().code,
            close_code::INVALID_PAYLOAD
        );
    }

    /// (opcode, first, fin, compressed, payload) of a decoded data frame.
    type DataFrame = (u8, bool, bool, bool, Vec<u8>);

    /// Decodes `wires` in order with one decoder that allows compression: each frame, or the first violation.
    fn decode_compressed(wires: &[Vec<u8>]) -> Result<Vec<DataFrame>, Violation> {
        let mut dec = Decoder::default();
        dec.allow_compression();
        let mut out = Vec::new();
        for w in wires {
            let mut w = w.clone();
            match dec.next(&mut w, MAX)?.expect("complete frame") {
                (
                    Frame::Data {
                        opcode,
                        first,
                        fin,
                        compressed,
                        payload,
                    },
                    _,
                ) => out.push((opcode, first, fin, compressed, payload.to_vec())),
                (other, _) => out.push((0, false, false, false, format!("{other:?}").into_bytes())),
            }
        }
        Ok(out)
    }

    #[test]
    fn rsv1_marks_compressed_messages_once_negotiated() {
        const RSV1: u8 = 0x40;
        // Not negotiated: RSV1 is a reserved bit like the others.
        expect_violation(
            &client(FIN | RSV1 | OP_TEXT, b"x"),
            MAX,
            close_code::PROTOCOL_ERROR,
        );
        // Negotiated: a compressed single frame; its bytes are not UTF-8 checked (they are DEFLATE data).
        let got = decode_compressed(&[client(FIN | RSV1 | OP_TEXT, &[0xF2, 0x48, 0xFF])]).unwrap();
        assert_eq!(
            got,
            vec![(OP_TEXT, true, true, true, vec![0xF2, 0x48, 0xFF])]
        );
        // Fragmented: RSV1 on the first frame only; continuations inherit "compressed", a ping in between does not.
        let got = decode_compressed(&[
            client(RSV1 | OP_TEXT, &[0xF2]),
            client(FIN | OP_PING, b"p"),
            client(FIN | OP_CONTINUATION, &[0xFF]),
            client(FIN | OP_TEXT, b"plain"),
        ])
        .unwrap();
        assert_eq!(got[0], (OP_TEXT, true, false, true, vec![0xF2]));
        assert_eq!(got[2], (OP_TEXT, false, true, true, vec![0xFF]));
        assert_eq!(got[3], (OP_TEXT, true, true, false, b"plain".to_vec()));
        // Misplaced RSV1: on a continuation, on a control frame; RSV2/RSV3 stay reserved.
        for wires in [
            vec![
                client(OP_TEXT, b"a"),
                client(FIN | RSV1 | OP_CONTINUATION, b"b"),
            ],
            vec![client(FIN | RSV1 | OP_PING, b"")],
            vec![client(FIN | RSV1 | OP_CLOSE, &[0x03, 0xE8])],
            vec![client(FIN | 0x20 | OP_TEXT, b"x")],
            vec![client(FIN | RSV1 | 0x10 | OP_BINARY, b"x")],
        ] {
            let v = decode_compressed(&wires).unwrap_err();
            assert_eq!(v.code, close_code::PROTOCOL_ERROR, "{v:?}");
        }
        // An uncompressed text message is still UTF-8 checked.
        let v = decode_compressed(&[client(FIN | OP_TEXT, &[0xFF])]).unwrap_err();
        assert_eq!(v.code, close_code::INVALID_PAYLOAD);
    }

    #[test]
    fn protocol_violations() {
        use close_code::PROTOCOL_ERROR as PE;
        // Unmasked.
        expect_violation(&raw(FIN | OP_TEXT, b"hi", None, Len::Minimal), MAX, PE);
        expect_violation(&raw(FIN | OP_PING, b"", None, Len::Minimal), MAX, PE);
        // RSV bits.
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            expect_violation(&client(FIN | rsv | OP_TEXT, b"x"), MAX, PE);
            expect_violation(&client(FIN | rsv | OP_PING, b""), MAX, PE);
        }
        // Unknown opcodes.
        for op in (3..=7).chain(0xB..=0xF) {
            expect_violation(&client(FIN | op, b""), MAX, PE);
            expect_violation(&client(op, b"abc"), MAX, PE);
        }
        // Control frames: FIN=0, > 125 bytes (via 16- and 64-bit lengths too).
        for op in [OP_PING, OP_PONG, OP_CLOSE] {
            expect_violation(&client(op, b""), MAX, PE);
            expect_violation(
                &client(FIN | op, &close_payload(1000, &[b'a'; 124])),
                MAX,
                PE,
            );
            expect_violation(&raw(FIN | op, &[0; 10], Some([1; 4]), Len::Bits16), MAX, PE);
            expect_violation(&raw(FIN | op, &[0; 10], Some([1; 4]), Len::Bits64), MAX, PE);
        }
        // Continuation without a message.
        expect_violation(&client(FIN | OP_CONTINUATION, b"x"), MAX, PE);
        expect_violation(&client(OP_CONTINUATION, b"x"), MAX, PE);
        let mut wire = client(FIN | OP_TEXT, b"done");
        wire.extend(client(FIN | OP_CONTINUATION, b"x"));
        expect_violation(&wire, MAX, PE);
        // New data frame inside a fragmented message.
        for op in [OP_TEXT, OP_BINARY] {
            for first in [OP_TEXT, OP_BINARY] {
                let mut wire = client(first, b"a");
                wire.extend(client(FIN | OP_PING, b""));
                wire.extend(client(FIN | op, b"b"));
                expect_violation(&wire, MAX, PE);
            }
        }
        // Close payload of one byte.
        let v = expect_violation(&client(FIN | OP_CLOSE, &[3]), MAX, PE);
        assert_eq!(v, CLOSE_LEN_ONE);
        // 64-bit length with the top bit set.
        let mut wire = vec![FIN | OP_BINARY, 0x80 | 127];
        wire.extend_from_slice(&(1u64 << 63).to_be_bytes());
        wire.extend_from_slice(&[0; 4]);
        assert_eq!(expect_violation(&wire, usize::MAX, PE), LENGTH_TOP_BIT);
        wire[2] = 0xFF;
        assert_eq!(expect_violation(&wire, usize::MAX, PE), LENGTH_TOP_BIT);
    }

    #[test]
    fn violations_reported_from_partial_headers() {
        // Each of these is detectable before the header is complete.
        let cases: &[(&[u8], Violation)] = &[
            (&[FIN | 0x40 | OP_TEXT], RESERVED_BITS),
            (&[FIN | 0x3], UNKNOWN_OPCODE),
            (&[OP_PING], FRAGMENTED_CONTROL),
            (&[FIN | OP_CONTINUATION], STRAY_CONTINUATION),
            (&[FIN | OP_TEXT, 0x05], UNMASKED),
            (&[FIN | OP_PING, 0x80 | 126], CONTROL_TOO_LONG),
            (&[FIN | OP_CLOSE, 0x80 | 1], CLOSE_LEN_ONE),
            (
                &[FIN | OP_BINARY, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0],
                LENGTH_TOP_BIT,
            ),
            (&[FIN | OP_BINARY, 0x80 | 126, 0xFF, 0xFF], TOO_BIG),
        ];
        for (bytes, want) in cases {
            let mut b = bytes.to_vec();
            assert_eq!(
                Decoder::default().next(&mut b, 1000),
                Err(*want),
                "{bytes:x?}"
            );
        }
        // Not enough to tell: wait.
        for bytes in [
            &[][..],
            &[FIN | OP_TEXT],
            &[FIN | OP_TEXT, 0x80 | 126, 0x01],
            &[FIN | OP_TEXT, 0x85, 1, 2, 3],
        ] {
            let mut b = bytes.to_vec();
            assert_eq!(
                Decoder::default().next(&mut b, 1000),
                Ok(None),
                "{bytes:x?}"
            );
        }
    }

    #[test]
    fn close_codes_table() {
        let valid = |c: u16| matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999);
        for code in (0..=u16::MAX)
            .step_by(1)
            .filter(|c| *c < 5100 || *c % 997 == 0)
        {
            assert_eq!(valid_close_code(code), valid(code), "{code}");
        }
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            assert_eq!(
                one(&client(FIN | OP_CLOSE, &close_payload(code, b"r"))),
                Owned::Close {
                    code: Some(code),
                    reason: b"r".to_vec()
                }
            );
        }
        for code in [
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let v = expect_violation(
                &client(FIN | OP_CLOSE, &close_payload(code, b"")),
                MAX,
                close_code::PROTOCOL_ERROR,
            );
            assert_eq!(v, BAD_CLOSE_CODE);
        }
    }

    #[test]
    fn close_reason_must_be_utf8() {
        let v = expect_violation(
            &client(FIN | OP_CLOSE, &close_payload(1000, &[0xFF])),
            MAX,
            close_code::INVALID_PAYLOAD,
        );
        assert_eq!(v, CLOSE_REASON_UTF8);
        expect_violation(
            &client(FIN | OP_CLOSE, &close_payload(1000, &[b'a', 0xE2, 0x82])),
            MAX,
            close_code::INVALID_PAYLOAD,
        );
        let reason = "✓".repeat(41); // 123 bytes
        assert_eq!(
            one(&client(
                FIN | OP_CLOSE,
                &close_payload(1000, reason.as_bytes())
            )),
            Owned::Close {
                code: Some(1000),
                reason: reason.into_bytes()
            }
        );
    }

    #[test]
    fn message_too_big() {
        use close_code::MESSAGE_TOO_BIG as BIG;
        // Exactly the limit is fine, one more is not.
        assert_eq!(one_max(&client(FIN | OP_BINARY, &[0; 100]), 100), Ok(1));
        expect_violation(&client(FIN | OP_BINARY, &[0; 101]), 100, BIG);
        expect_violation(&client(FIN | OP_TEXT, b"x"), 0, BIG);
        // Reported from the header alone, for 7-, 16- and 64-bit lengths.
        for (len, header) in [(101usize, 2), (1000, 4), (70_000, 10)] {
            let wire = raw(FIN | OP_BINARY, &vec![0; len], Some([0; 4]), Len::Minimal);
            let mut head = wire[..header].to_vec();
            assert_eq!(
                Decoder::default().next(&mut head, 100),
                Err(TOO_BIG),
                "{len}"
            );
        }
        let mut huge = vec![FIN | OP_BINARY, 0x80 | 127];
        huge.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        assert_eq!(Decoder::default().next(&mut huge, 1 << 40), Err(TOO_BIG));
        // With no practical limit, a huge length just waits for bytes (and unmasks what is there).
        let mut dec = Decoder::default();
        assert_eq!(dec.next(&mut huge, usize::MAX), Ok(None));
        huge.extend_from_slice(&[1, 2, 3, 4, 1, 2]);
        assert_eq!(dec.next(&mut huge, usize::MAX), Ok(None));
        assert_eq!(&huge[14..], &[0, 0]);
        // Sum of fragments, reported at the header of the fragment that exceeds it; control frames don't count.
        let mut wire = client(OP_TEXT, &[b'a'; 60]);
        wire.extend(client(FIN | OP_PING, &[0; 50]));
        wire.extend(client(OP_CONTINUATION, &[b'b'; 40]));
        assert_eq!(one_max(&wire, 100), Ok(3));
        let mut over = wire.clone();
        let next = client(FIN | OP_CONTINUATION, &[b'c'; 1]);
        over.extend_from_slice(&next[..2]); // header only
        let (frames, r) = decode_all(&over, 100);
        assert_eq!(frames.len(), 3);
        assert_eq!(r, Err(TOO_BIG));
        // An empty final fragment still fits; the counter resets after the message.
        let mut ok = wire.clone();
        ok.extend(client(FIN | OP_CONTINUATION, b""));
        ok.extend(client(FIN | OP_TEXT, &[b'z'; 100]));
        assert_eq!(one_max(&ok, 100), Ok(5));
    }

    /// Number of frames decoded from `wire` with limit `max`.
    fn one_max(wire: &[u8], max: usize) -> Result<usize, Violation> {
        let (frames, r) = decode_all(wire, max);
        r.map(|_| frames.len())
    }

    #[test]
    fn frame_len_cases() {
        assert_eq!(Decoder::frame_len(&[]), None);
        assert_eq!(Decoder::frame_len(&[0x81]), None);
        assert_eq!(Decoder::frame_len(&[0x81, 0x85, 1, 2, 3]), None); // mask key incomplete
        assert_eq!(Decoder::frame_len(&[0x81, 0x85, 1, 2, 3, 4]), Some(11));
        assert_eq!(Decoder::frame_len(&[0x81, 0x05]), Some(7)); // unmasked: no key
        assert_eq!(Decoder::frame_len(&[0x82, 0xFE, 0x01]), None);
        assert_eq!(
            Decoder::frame_len(&[0x82, 0xFE, 0x01, 0x00, 0, 0, 0, 0]),
            Some(8 + 256)
        );
        let mut b = vec![0x82, 0xFF];
        b.extend_from_slice(&(1u64 << 32).to_be_bytes());
        assert_eq!(Decoder::frame_len(&b), None);
        b.extend_from_slice(&[0; 4]);
        assert_eq!(Decoder::frame_len(&b), Some((1u64 << 32) + 14));
        b[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(Decoder::frame_len(&b), Some(u64::MAX));
    }

    fn naive_unmask(p: &mut [u8], mask: [u8; 4], offset: usize) {
        for (i, b) in p.iter_mut().enumerate() {
            *b ^= mask[(offset % 4 + i) % 4];
        }
    }

    #[test]
    fn unmask_matches_naive_loop() {
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mask = [0x12, 0x9A, 0xF0, 0x0F];
        // Different alignments of the slice start, lengths and payload offsets.
        for start in 0..9 {
            for len in 0..(data.len() - start).min(80) {
                for offset in [0, 1, 2, 3, 4, 5, 7, 8, 1001, usize::MAX - 3] {
                    let mut a = data[start..start + len].to_vec();
                    let mut b = a.clone();
                    unmask(&mut a, mask, offset);
                    naive_unmask(&mut b, mask, offset);
                    assert_eq!(a, b, "start {start} len {len} offset {offset}");
                }
            }
        }
        // Big buffers, aligned and unaligned sub-slices.
        let mut big: Vec<u8> = (0..100_003u32).map(|i| (i * 31) as u8).collect();
        let mut naive = big.clone();
        for (s, e, off) in [
            (0usize, 100_003usize, 0usize),
            (3, 99_000, 3),
            (1, 50_001, 6),
            (7, 7, 1),
        ] {
            unmask(&mut big[s..e], mask, off);
            naive_unmask(&mut naive[s..e], mask, off);
            assert_eq!(big, naive);
        }
        // Unmasking twice restores; unmasking in pieces equals unmasking at once.
        let orig = data.clone();
        let mut whole = data.clone();
        unmask(&mut whole, mask, 0);
        let mut pieces = data.clone();
        let mut pos = 0;
        for step in [1usize, 2, 3, 5, 8, 13, 21, 34, 55, 89, 300] {
            let end = (pos + step).min(pieces.len());
            unmask(&mut pieces[pos..end], mask, pos);
            pos = end;
        }
        assert_eq!(pieces, whole);
        unmask(&mut whole, mask, 0);
        assert_eq!(whole, orig);
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// A random stream of valid client frames (fragmented messages with interleaved control frames) and the frames
    /// it should decode to.
    fn random_stream(rng: &mut Rng) -> (Vec<u8>, Vec<Owned>) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        let texts = [
            "",
            "a",
            "héllo",
            "😀€ß",
            "plain ascii text that is a bit longer than a word",
        ];
        for _ in 0..rng.below(6) + 1 {
            let text = rng.below(2) == 0;
            let msg: Vec<u8> = if text {
                (0..rng.below(4))
                    .flat_map(|_| texts[rng.below(texts.len() as u64) as usize].bytes())
                    .collect()
            } else {
                (0..rng.below(300)).map(|_| rng.next() as u8).collect()
            };
            let op = if text { OP_TEXT } else { OP_BINARY };
            // Split at random byte positions (possibly inside UTF-8 sequences).
            let mut cuts: Vec<usize> = (0..rng.below(4))
                .map(|_| rng.below(msg.len() as u64 + 1) as usize)
                .collect();
            cuts.sort_unstable();
            cuts.push(msg.len());
            let mut prev = 0;
            for (k, &c) in cuts.iter().enumerate() {
                let fin = k + 1 == cuts.len();
                let b0 = if fin { FIN } else { 0 } | if k == 0 { op } else { OP_CONTINUATION };
                let mask = [
                    rng.next() as u8,
                    rng.next() as u8,
                    rng.next() as u8,
                    rng.next() as u8,
                ];
                let enc = [Len::Minimal, Len::Bits16, Len::Bits64][rng.below(3) as usize];
                wire.extend(raw(b0, &msg[prev..c], Some(mask), enc));
                want.push(data(op, k == 0, fin, &msg[prev..c]));
                prev = c;
                if rng.below(3) == 0 {
                    let p: Vec<u8> = (0..rng.below(126)).map(|_| rng.next() as u8).collect();
                    wire.extend(raw(FIN | OP_PING, &p, Some(mask), Len::Minimal));
                    want.push(Owned::Ping(p));
                }
            }
        }
        (wire, want)
    }

    #[test]
    fn random_valid_streams_any_chunking() {
        let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
        for _ in 0..2_000 {
            let (wire, want) = random_stream(&mut rng);
            let sizes: Vec<usize> = (0..4).map(|_| rng.below(40) as usize + 1).collect();
            let (frames, r, _) = decode_chunked(&wire, &sizes, MAX);
            r.unwrap();
            assert_eq!(frames, want);
        }
    }

    #[test]
    fn fuzz_never_panics() {
        let mut rng = Rng(0x0123_4567_89AB_CDEF);
        for round in 0..20_000 {
            let wire: Vec<u8> = if round % 2 == 0 {
                // Pure noise, biased towards header-like first bytes.
                (0..rng.below(200)).map(|_| rng.next() as u8).collect()
            } else {
                // A valid stream with a few bytes flipped.
                let (mut w, _) = random_stream(&mut rng);
                for _ in 0..rng.below(4) + 1 {
                    let i = rng.below(w.len() as u64) as usize;
                    w[i] ^= 1 << rng.below(8);
                }
                w
            };
            let max = [0usize, 1, 125, 1000, usize::MAX][rng.below(5) as usize];
            let sizes: Vec<usize> = (0..3).map(|_| rng.below(20) as usize + 1).collect();
            let (_, r, _) = decode_chunked(&wire, &sizes, max);
            if let Err(v) = r {
                assert!([
                    close_code::PROTOCOL_ERROR,
                    close_code::INVALID_PAYLOAD,
                    close_code::MESSAGE_TOO_BIG
                ]
                .contains(&v.code));
            }
            let _ = Decoder::frame_len(&wire);
        }
    }
}
