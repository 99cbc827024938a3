//! Cheap recognition of the gateway's JSON text frames by byte scanning (no JSON parser on the hot path), and
//! writers for the few payloads the generator sends. The published `data` object is built by us with `seq` and `ts`
//! first and the padding last, so a delivery is recognised within its first few dozen bytes whatever its size.

/// What a server text frame is, as far as the generator cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    Delivery { seq: u64, ts: u64 },
    Pong { id: u64 },
    Error,
    Other,
}

/// Position of `needle` in `hay` at or after `from`.
pub fn find_from(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let n = needle.len();
    if n == 0 || hay.len() < n || from > hay.len() - n {
        return None;
    }
    let first = needle[0];
    let mut i = from;
    let last = hay.len() - n;
    while i <= last {
        match hay[i..=last].iter().position(|&b| b == first) {
            None => return None,
            Some(off) => {
                i += off;
                // A byte loop: needles are a few bytes, a memcmp call costs more than the comparison.
                if hay[i + 1..i + n]
                    .iter()
                    .zip(&needle[1..])
                    .all(|(a, b)| a == b)
                {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// Parses the unsigned decimal at `pos` (after optional spaces); None if there is none or it overflows.
pub fn parse_u64_at(hay: &[u8], mut pos: usize) -> Option<(u64, usize)> {
    while pos < hay.len() && hay[pos] == b' ' {
        pos += 1;
    }
    let start = pos;
    let mut v: u64 = 0;
    while pos < hay.len() && hay[pos].is_ascii_digit() {
        v = v.checked_mul(10)?.checked_add((hay[pos] - b'0') as u64)?;
        pos += 1;
    }
    if pos == start {
        None
    } else {
        Some((v, pos))
    }
}

fn field_u64(hay: &[u8], key: &[u8], from: usize) -> Option<(u64, usize)> {
    let p = find_from(hay, key, from)?;
    parse_u64_at(hay, p + key.len())
}

/// Classifies a server text frame. Deliveries carry `"seq":N` then `"ts":MICROS` (our publish format).
pub fn classify(payload: &[u8]) -> Incoming {
    if let Some((seq, after)) = field_u64(payload, b"\"seq\":", 0) {
        if let Some((ts, _)) = field_u64(payload, b"\"ts\":", after) {
            return Incoming::Delivery { seq, ts };
        }
    }
    // Replies are short: only look at their beginning for the type.
    let head = &payload[..payload.len().min(64)];
    if find_from(head, b"\"type\":\"pong\"", 0).is_some() {
        if let Some((id, _)) = field_u64(payload, b"\"id\":", 0) {
            return Incoming::Pong { id };
        }
    }
    if find_from(head, b"\"type\":\"error\"", 0).is_some() {
        return Incoming::Error;
    }
    Incoming::Other
}

/// Appends the decimal digits of `v`.
pub fn push_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `v` as exactly 20 zero-padded digits (fixed width, so an echo payload's length never varies).
pub fn push_u64_fixed20(out: &mut Vec<u8>, v: u64) {
    let mut buf = [b'0'; 20];
    let mut v = v;
    let mut i = 20;
    while v > 0 {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&buf);
}

fn digits(v: u64) -> usize {
    let mut n = 1;
    let mut v = v / 10;
    while v > 0 {
        n += 1;
        v /= 10;
    }
    n
}

/// Length of the published `data` object without padding: `{"seq":S,"ts":T,"pad":""}`.
pub fn data_overhead(seq: u64, ts: u64) -> usize {
    br#"{"seq":,"ts":,"pad":""}"#.len() + digits(seq) + digits(ts)
}

/// Appends the published `data` object, padded so that it is `size` bytes long when `size` allows it: with 'x'
/// (compresses ~50×) or, `text`, with varied words and numbers that compress about as well as real JSON does.
pub fn push_data(out: &mut Vec<u8>, seq: u64, ts: u64, size: usize, text: bool) {
    out.extend_from_slice(b"{\"seq\":");
    push_u64(out, seq);
    out.extend_from_slice(b",\"ts\":");
    push_u64(out, ts);
    out.extend_from_slice(b",\"pad\":\"");
    let pad = size.saturating_sub(data_overhead(seq, ts));
    if text {
        push_text(out, pad, seq);
    } else {
        out.resize(out.len() + pad, b'x');
    }
    out.extend_from_slice(b"\"}");
}

/// `len` bytes of comment-like text (no quote or backslash), different for every `seed`.
fn push_text(out: &mut Vec<u8>, len: usize, seed: u64) {
    const WORDS: [&str; 16] = [
        "user", "comment", "document", "edited", "the", "section", "review", "approved", "draft",
        "team", "updated", "title", "cursor", "moved", "to", "line",
    ];
    let end = out.len() + len;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < end {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % 16) as usize].as_bytes());
        out.push(b' ');
        if x & 0x300 == 0 {
            push_u64(out, (x >> 20) % 100_000);
            out.push(b' ');
        }
    }
    out.truncate(end);
}

/// Appends the upstream receipt `{"op":"ping","id":SEQ}`.
pub fn push_receipt(out: &mut Vec<u8>, seq: u64) {
    out.extend_from_slice(b"{\"op\":\"ping\",\"id\":");
    push_u64(out, seq);
    out.push(b'}');
}

pub fn receipt_len(seq: u64) -> usize {
    br#"{"op":"ping","id":}"#.len() + digits(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_server_frames() {
        let d = br#"{"channel":"bench","data":{"seq":42,"ts":1700000000123456,"pad":"xxxx"}}"#;
        assert_eq!(
            classify(d),
            Incoming::Delivery {
                seq: 42,
                ts: 1_700_000_000_123_456
            }
        );
        let b = br#"{"broadcast":true,"data":{"seq":7,"ts":5,"pad":""}}"#;
        assert_eq!(classify(b), Incoming::Delivery { seq: 7, ts: 5 });
        assert_eq!(
            classify(br#"{"type":"pong","id":9}"#),
            Incoming::Pong { id: 9 }
        );
        assert_eq!(
            classify(br#"{"type":"error","error":"bad"}"#),
            Incoming::Error
        );
        assert_eq!(
            classify(br#"{"type":"reply","id":1,"ok":true}"#),
            Incoming::Other
        );
        assert_eq!(classify(br#"{"type":"pong","id":"abc"}"#), Incoming::Other);
        assert_eq!(classify(br#"{"seq":1}"#), Incoming::Other);
        assert_eq!(classify(b""), Incoming::Other);
    }

    #[test]
    fn data_object_has_requested_size_and_parses() {
        for size in [0usize, 10, 40, 100, 1024, 4096] {
            let mut out = Vec::new();
            push_data(&mut out, 123456, 1_700_000_000_000_000, size, size % 2 == 0);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["seq"], 123456);
            assert_eq!(v["ts"], 1_700_000_000_000_000u64);
            assert_eq!(
                out.len(),
                size.max(data_overhead(123456, 1_700_000_000_000_000))
            );
        }
    }

    #[test]
    fn numbers() {
        let mut out = Vec::new();
        push_u64(&mut out, 0);
        out.push(b' ');
        push_u64(&mut out, u64::MAX);
        assert_eq!(out, b"0 18446744073709551615");
        let mut f = Vec::new();
        push_u64_fixed20(&mut f, 1234);
        assert_eq!(f, b"00000000000000001234");
        assert_eq!(parse_u64_at(&f, 0), Some((1234, 20)));
        assert_eq!(parse_u64_at(b"99999999999999999999", 0), None);
        assert_eq!(parse_u64_at(b" 5,", 0), Some((5, 2)));
        assert_eq!(parse_u64_at(b"x", 0), None);
        let mut r = Vec::new();
        push_receipt(&mut r, 77);
        assert_eq!(r, br#"{"op":"ping","id":77}"#);
        assert_eq!(receipt_len(77), r.len());
        assert_eq!(find_from(b"abcabc", b"bc", 2), Some(4));
        assert_eq!(find_from(b"abc", b"abcd", 0), None);
    }
}
