//! Server-to-client frames (never masked).

/// Longest server frame header: 2 bytes + 8 bytes extended length.
pub const MAX_HEADER: usize = 10;

/// Writes a FIN frame header for `opcode` and `payload_len` into `out`, returns its length (2, 4 or 10).
pub fn write_header(out: &mut [u8; MAX_HEADER], opcode: u8, payload_len: usize) -> usize {
    let _ = (out, opcode, payload_len);
    todo!()
}

/// Header length for a payload of `payload_len` bytes.
pub fn header_len(payload_len: usize) -> usize {
    let _ = payload_len;
    todo!()
}

/// Appends a complete FIN frame (header + payload) to `out`.
pub fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let _ = (out, opcode, payload);
    todo!()
}

/// A complete close frame with `code` and `reason` (reason truncated at a char boundary to fit 123 bytes).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let _ = (code, reason);
    todo!()
}
