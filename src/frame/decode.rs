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
//!   unmasked client frame → 1002; RSV bits set → 1002; unknown opcode (3–7, 0xB–0xF) → 1002; control frame with
//!   payload > 125 or FIN=0 → 1002; continuation without a message in progress → 1002; new text/binary frame while a
//!   fragmented message is in progress → 1002; close payload of length 1, or an invalid close code (< 1000,
//!   1004–1006, 1015, 1016–2999, ≥ 5000; 3000–4999 are valid) → 1002; close reason not UTF-8 → 1007; text message
//!   not UTF-8 (checked incrementally across fragments) → 1007; message (sum of fragments) or single frame length
//!   greater than `max_message` → 1009 (reported as soon as the header shows it, before the payload arrives).
//! - No allocation. `Decoder` is small (it lives in every connection).

use super::utf8::Utf8Validator;

/// A decoded, complete frame. Payload slices borrow the caller's buffer and are already unmasked.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A data frame: part or all of a text or binary message.
    /// `opcode` is the message's opcode (OP_TEXT or OP_BINARY) also for continuation frames;
    /// `first` is true for the frame that starts the message, `fin` for the frame that ends it.
    /// For text, the bytes seen so far are valid UTF-8 and, when `fin`, the whole message is.
    Data { opcode: u8, first: bool, fin: bool, payload: &'a [u8] },
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// `code` is None for an empty close payload; `reason` is valid UTF-8.
    Close { code: Option<u16>, reason: &'a [u8] },
}

/// A protocol violation: close the connection with this code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

/// Per-connection decoder state.
#[derive(Debug, Default)]
pub struct Decoder {
    // Fields are the implementer's choice; keep it small (≤ 24 bytes is the goal).
    _utf8: Utf8Validator,
}

impl Decoder {
    /// Decodes the next complete frame at the start of `buf`.
    /// Returns `Ok(Some((frame, consumed)))` where `consumed` is the frame's total length (header + payload);
    /// `Ok(None)` when more bytes are needed (after unmasking/validating what is there).
    pub fn next<'a>(&mut self, buf: &'a mut [u8], max_message: usize) -> Result<Option<(Frame<'a>, usize)>, Violation> {
        let _ = (buf, max_message);
        todo!()
    }

    /// How many bytes the frame at the start of `buf` needs in total, if its header is complete
    /// (lets the caller size a read buffer for a large frame). None if the header is incomplete.
    pub fn frame_len(buf: &[u8]) -> Option<u64> {
        let _ = buf;
        todo!()
    }

    /// True while a fragmented message is in progress.
    pub fn in_message(&self) -> bool {
        todo!()
    }
}

/// XORs `payload` with `mask`, where `payload[0]` is byte number `offset` of the frame payload.
/// Word-at-a-time for speed.
pub fn unmask(payload: &mut [u8], mask: [u8; 4], offset: usize) {
    let _ = (payload, mask, offset);
    todo!()
}
