//! permessage-deflate payloads (RFC 7692 §7.2): raw DEFLATE, each message ended by a sync flush whose
//! `00 00 ff ff` tail is left off the wire and put back before inflating.
//!
//! [`Deflater`] compresses a complete server frame once, without context, so the result can be shared by every
//! connection that negotiated the extension. [`Inflater`] decompresses client messages with an output bound: a
//! small frame that inflates past `ws.max_message_size` is refused (1009) before more memory is taken.
//! The crate is flate2 on its zlib-rs backend (chosen by measurement, bench/RESULTS.md "permessage-deflate").

use super::close_code::{INVALID_PAYLOAD, MESSAGE_TOO_BIG};
use super::decode::Violation;
use super::encode::{self, MAX_HEADER};
use super::{OP_BINARY, OP_TEXT};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What a sync flush ends with; stripped from sent messages, appended to received ones.
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];
/// The RSV1 bit of a frame's first byte: "this message is compressed".
pub const RSV1: u8 = 0x40;
/// Compression level of shared frames: the cost is paid once per publish while the bytes saved are paid per
/// subscriber, so the default level (6) beats the fastest one (1) for a gateway (figures in bench/RESULTS.md).
const LEVEL: u32 = 6;

const TOO_BIG: Violation = Violation {
    code: MESSAGE_TOO_BIG,
    reason: "message too big after inflating",
};
const CORRUPT: Violation = Violation {
    code: INVALID_PAYLOAD,
    reason: "invalid compressed data",
};

/// A reusable compressor for one-shot, context-free messages.
pub struct Deflater {
    c: Compress,
    scratch: Vec<u8>,
}

impl Default for Deflater {
    fn default() -> Self {
        Deflater {
            c: Compress::new(Compression::new(LEVEL), false),
            scratch: Vec::new(),
        }
    }
}

impl Deflater {
    /// The compressed form of `frame`, a complete unmasked FIN server frame (text or binary), as a new frame with
    /// RSV1 set; None for any other frame (control, fragment, already compressed), when its payload is shorter than
    /// `threshold`, or when compressing would not make it smaller.
    pub fn compress_frame(&mut self, frame: &[u8], threshold: usize) -> Option<Vec<u8>> {
        let (opcode, payload) = split_frame(frame)?;
        let whole_data_frame = frame[0] & 0xF0 == 0x80 && matches!(opcode, OP_TEXT | OP_BINARY);
        if !whole_data_frame || payload.len() < threshold.max(1) {
            return None;
        }
        self.c.reset();
        self.scratch.clear();
        // The flush is complete once all input is taken and the output was not filled up.
        loop {
            self.scratch.reserve(payload.len() / 2 + 64);
            let taken = self.c.total_in() as usize;
            self.c
                .compress_vec(&payload[taken..], &mut self.scratch, FlushCompress::Sync)
                .ok()?;
            if self.c.total_in() as usize == payload.len()
                && self.scratch.len() < self.scratch.capacity()
            {
                break;
            }
        }
        let body = self.scratch.strip_suffix(&TAIL)?;
        if body.len() >= payload.len() {
            return None;
        }
        let mut header = [0u8; MAX_HEADER];
        let n = encode::write_header(&mut header, opcode, body.len());
        header[0] |= RSV1;
        let mut out = Vec::with_capacity(n + body.len());
        out.extend_from_slice(&header[..n]);
        out.extend_from_slice(body);
        Some(out)
    }
}

/// Opcode and payload of a complete server frame (no mask), or None if `frame` is not one.
pub fn split_frame(frame: &[u8]) -> Option<(u8, &[u8])> {
    let b1 = *frame.get(1)?;
    let start = match b1 & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    Some((frame[0] & 0x0F, frame.get(start..)?))
}

/// A decompressor for one connection's messages (context kept across messages), or shared by connections that
/// compress each message on its own (reset before each).
pub struct Inflater {
    d: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        // Raw DEFLATE with the largest window: accepts whatever window the client used.
        Inflater {
            d: Decompress::new(false),
        }
    }
}

impl Inflater {
    /// Inflates one complete message (the payloads of its frames joined) into `out`, which is cleared first and
    /// never grows past `max + 1` bytes. `fresh` = the message was compressed without context (the state is reset
    /// first). Errors: 1009 past `max`, 1007 for data that is not valid DEFLATE.
    pub fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max: usize,
        fresh: bool,
    ) -> Result<(), Violation> {
        if fresh {
            self.d.reset(false);
        }
        out.clear();
        for chunk in [input, &TAIL[..]] {
            let mut pos = 0;
            loop {
                if out.len() == out.capacity() {
                    if out.len() > max {
                        return Err(TOO_BIG);
                    }
                    let room = (max + 1 - out.len()).min(out.len().max(4096));
                    out.reserve_exact(room);
                }
                let (before, written) = (self.d.total_in(), out.len());
                let status = self
                    .d
                    .decompress_vec(&chunk[pos..], out, FlushDecompress::Sync)
                    .map_err(|_| CORRUPT)?;
                let taken = (self.d.total_in() - before) as usize;
                pos += taken;
                if taken == 0 && written == out.len() && out.len() < out.capacity() {
                    break; // nothing more to do with this chunk (never loops without progress)
                }
                if out.len() > max {
                    return Err(TOO_BIG);
                }
                if status == Status::StreamEnd {
                    // A final block (BFINAL, allowed by §7.2.3.5): the next message starts a new stream.
                    self.d.reset(false);
                    return Ok(());
                }
                if pos == chunk.len() && out.len() < out.capacity() {
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{OP_BINARY, OP_TEXT};

    fn plain(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        encode::push_frame(&mut f, opcode, payload);
        f
    }

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::from("[");
        while s.len() < n {
            s.push_str("{\"user\":\"alice\",\"text\":\"hello world\"},");
        }
        s.push(']');
        s.into_bytes()
    }

    #[test]
    fn round_trip_shared_frame() {
        let mut d = Deflater::default();
        let mut i = Inflater::default();
        let mut out = Vec::new();
        for len in [200, 1024, 70_000] {
            let payload = json(len);
            let f = d.compress_frame(&plain(OP_TEXT, &payload), 128).unwrap();
            assert_eq!(f[0], 0x80 | RSV1 | OP_TEXT);
            let (op, body) = split_frame(&f).unwrap();
            assert_eq!(op, OP_TEXT);
            assert!(
                body.len() < payload.len() / 3,
                "{} of {}",
                body.len(),
                payload.len()
            );
            assert_eq!(encode::header_len(body.len()) + body.len(), f.len());
            i.inflate(body, &mut out, 1 << 20, true).unwrap();
            assert_eq!(out, payload);
        }
    }

    #[test]
    fn small_or_incompressible_frames_stay_plain() {
        let mut d = Deflater::default();
        assert_eq!(d.compress_frame(&plain(OP_TEXT, &json(100)), 128), None);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..2000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        assert_eq!(d.compress_frame(&plain(OP_BINARY, &noise), 128), None);
        assert!(d.compress_frame(&plain(OP_BINARY, &json(300)), 0).is_some());
        // Only whole data frames: not a close or ping, not a fragment, not a frame already compressed.
        let big = json(300);
        assert_eq!(
            d.compress_frame(&plain(crate::frame::OP_PING, &big[..120]), 0),
            None
        );
        assert_eq!(
            d.compress_frame(&encode::close_frame(1000, "bye bye bye bye"), 0),
            None
        );
        let mut fragment = plain(OP_TEXT, &big);
        fragment[0] &= 0x7F;
        assert_eq!(d.compress_frame(&fragment, 0), None);
        let packed = d.compress_frame(&plain(OP_TEXT, &big), 0).unwrap();
        assert_eq!(d.compress_frame(&packed, 0), None);
    }

    /// Client side: one compressor kept across messages (context takeover).
    fn client_stream(msgs: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut c = Compress::new(Compression::default(), false);
        msgs.iter()
            .map(|m| {
                let mut out = Vec::with_capacity(m.len() + 64);
                c.compress_vec(m, &mut out, FlushCompress::Sync).unwrap();
                out.truncate(out.len() - 4);
                out
            })
            .collect()
    }

    #[test]
    fn context_takeover_across_messages() {
        let a = json(500);
        let wire = client_stream(&[&a, &a, &a]);
        assert!(
            wire[1].len() < 20,
            "second message refers back to the first"
        );
        let mut i = Inflater::default();
        let mut out = Vec::new();
        for w in &wire {
            i.inflate(w, &mut out, 1 << 20, false).unwrap();
            assert_eq!(out, a);
        }
        // Without the context the second message cannot be decoded.
        let mut fresh = Inflater::default();
        assert!(fresh.inflate(&wire[1], &mut out, 1 << 20, true).is_err());
    }

    #[test]
    fn zip_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 4 << 20];
        let wire = client_stream(&[&zeros]);
        assert!(wire[0].len() < 8 << 10);
        let mut i = Inflater::default();
        let mut out = Vec::new();
        assert_eq!(
            i.inflate(&wire[0], &mut out, 1 << 20, true)
                .unwrap_err()
                .code,
            MESSAGE_TOO_BIG
        );
        assert!(out.capacity() <= (1 << 20) + 1, "{}", out.capacity());
        // Exactly at the limit is fine.
        let wire = client_stream(&[&zeros[..1 << 20]]);
        i.inflate(&wire[0], &mut out, 1 << 20, true).unwrap();
        assert_eq!(out.len(), 1 << 20);
    }

    #[test]
    fn garbage_is_1007() {
        let mut i = Inflater::default();
        let mut out = Vec::new();
        let e = i
            .inflate(&[0xFF, 0xFF, 0xFF, 0x00], &mut out, 1024, true)
            .unwrap_err();
        assert_eq!(e.code, INVALID_PAYLOAD);
    }

    #[test]
    fn final_block_then_next_message() {
        // A message ended with BFINAL (one-shot compressors do that) and no tail, then a normal one.
        let mut c = Compress::new(Compression::default(), false);
        let mut first = Vec::with_capacity(128);
        c.compress_vec(b"hello", &mut first, FlushCompress::Finish)
            .unwrap();
        let second = client_stream(&[b"world"]);
        let mut i = Inflater::default();
        let mut out = Vec::new();
        i.inflate(&first, &mut out, 1024, false).unwrap();
        assert_eq!(out, b"hello");
        i.inflate(&second[0], &mut out, 1024, false).unwrap();
        assert_eq!(out, b"world");
    }
}
