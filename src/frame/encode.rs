//! Server-to-client frames (never masked).

/// Longest server frame header: 2 bytes + 8 bytes extended length.
pub const MAX_HEADER: usize = 10;

/// Longest close reason: a control payload is at most 125 bytes, 2 of which are the code.
pub const MAX_CLOSE_REASON: usize = 123;

/// Writes a FIN frame header for `opcode` and `payload_len` into `out`, returns its length (2, 4 or 10).
pub fn write_header(out: &mut [u8; MAX_HEADER], opcode: u8, payload_len: usize) -> usize {
    out[0] = 0x80 | (opcode & 0x0F);
    match header_len(payload_len) {
        2 => {
            out[1] = payload_len as u8;
            2
        }
        4 => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        }
    }
}

/// Header length for a payload of `payload_len` bytes.
pub fn header_len(payload_len: usize) -> usize {
    if payload_len < 126 {
        2
    } else if payload_len <= usize::from(u16::MAX) {
        4
    } else {
        10
    }
}

/// Appends a complete FIN frame (header + payload) to `out`.
pub fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let mut header = [0u8; MAX_HEADER];
    let n = write_header(&mut header, opcode, payload.len());
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
}

/// A complete close frame with `code` and `reason` (reason truncated at a char boundary to fit 123 bytes).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut payload = [0u8; 2 + MAX_CLOSE_REASON];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason);
    let mut out = Vec::with_capacity(2 + 2 + reason.len());
    push_frame(&mut out, super::OP_CLOSE, &payload[..2 + reason.len()]);
    out
}

/// Length of the complete server frame at the start of `buf`, if there is one.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let len7 = *buf.get(1)? & 0x7F;
    let (header, len): (usize, usize) = match len7 {
        126 => (
            4,
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
        ),
        n => (2, n as usize),
    };
    let total = header.checked_add(len)?;
    (buf.len() >= total).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT};

    /// Minimal parser for server frames: (fin, opcode, payload); asserts the frame is unmasked and minimal.
    fn parse(frame: &[u8]) -> (bool, u8, &[u8]) {
        let fin = frame[0] & 0x80 != 0;
        assert_eq!(frame[0] & 0x70, 0, "no RSV bits");
        assert_eq!(frame[1] & 0x80, 0, "server frames are never masked");
        let (len, h) = match frame[1] & 0x7F {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert_eq!(header_len(len), h, "minimal length encoding");
        assert_eq!(frame.len(), h + len);
        (fin, frame[0] & 0x0F, &frame[h..])
    }

    #[test]
    fn header_lengths_at_boundaries() {
        for (len, want) in [
            (0, 2),
            (1, 2),
            (125, 2),
            (126, 4),
            (127, 4),
            (65535, 4),
            (65536, 10),
            (1 << 20, 10),
        ] {
            assert_eq!(header_len(len), want, "len {len}");
            let mut h = [0u8; MAX_HEADER];
            assert_eq!(write_header(&mut h, OP_BINARY, len), want);
        }
    }

    #[test]
    fn header_bytes() {
        let mut h = [0u8; MAX_HEADER];
        assert_eq!(write_header(&mut h, OP_TEXT, 5), 2);
        assert_eq!(&h[..2], &[0x81, 5]);
        assert_eq!(write_header(&mut h, OP_BINARY, 126), 4);
        assert_eq!(&h[..4], &[0x82, 126, 0, 126]);
        assert_eq!(write_header(&mut h, OP_BINARY, 65535), 4);
        assert_eq!(&h[..4], &[0x82, 126, 0xFF, 0xFF]);
        assert_eq!(write_header(&mut h, OP_TEXT, 65536), 10);
        assert_eq!(h, [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(write_header(&mut h, OP_PING, 0), 2);
        assert_eq!(&h[..2], &[0x89, 0]);
    }

    #[test]
    fn push_frame_round_trips() {
        for len in [0usize, 1, 125, 126, 200, 65535, 65536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut out = vec![0xAA]; // appends, keeps what is there
            push_frame(&mut out, OP_BINARY, &payload);
            assert_eq!(out[0], 0xAA);
            let (fin, op, p) = parse(&out[1..]);
            assert!(fin);
            assert_eq!(op, OP_BINARY);
            assert_eq!(p, &payload[..]);
        }
    }

    #[test]
    fn close_frame_layout() {
        let f = close_frame(1000, "bye");
        assert_eq!(f, [0x88, 5, 0x03, 0xE8, b'b', b'y', b'e']);
        let f = close_frame(1009, "");
        assert_eq!(f, [0x88, 2, 0x03, 0xF1]);
    }

    #[test]
    fn close_reason_truncated_at_char_boundary() {
        // ASCII: exactly 123 bytes kept.
        let long = "x".repeat(300);
        let f = close_frame(1008, &long);
        let (_, op, p) = parse(&f);
        assert_eq!(op, OP_CLOSE);
        assert_eq!(p.len(), 125);
        // Multi-byte chars straddling byte 123 are dropped whole, at every alignment.
        for pad in 0..4 {
            let s = format!("{}{}", "a".repeat(pad), "😀".repeat(40));
            let f = close_frame(1001, &s);
            let (_, _, p) = parse(&f);
            assert!(p.len() <= 125);
            assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1001);
            let reason = std::str::from_utf8(&p[2..]).expect("valid UTF-8 after truncation");
            assert!(s.starts_with(reason));
            assert!(reason.len() > 119, "keeps as much as fits");
        }
    }
}
