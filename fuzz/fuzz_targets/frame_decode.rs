//! The WebSocket frame decoder (`frame::decode::Decoder::next`) on hostile client bytes, fed the way the reactor
//! feeds it: bytes arrive in arbitrary chunks, the caller decodes until `Ok(None)` and drops consumed bytes from the
//! front (so partially unmasked, partially validated frames are handed back longer).
//!
//! Input: `[max_lo, max_hi, n, c_1 .. c_n, stream...]`: `max_message` from the first two bytes, `n % 8` chunk sizes
//! (cycled), then the client byte stream.
//!
//! Checked on every run (beyond "never panics"):
//! - `consumed` is > 0, ≤ the bytes present, and equals `Decoder::frame_len` of the header;
//! - a data frame and a whole message never exceed `max_message`; control payloads are ≤ 125 bytes;
//! - fragmentation is consistent (first/continuation/fin, one opcode per message), and `in_message` agrees;
//! - a finished text message is valid UTF-8; a close frame has a valid code and a UTF-8 reason;
//! - violations carry 1002, 1007 or 1009;
//! - the chunking does not matter: the same frames and the same outcome as decoding the stream in one piece.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::frame::decode::{valid_close_code, Decoder, Frame, Violation};
use wsgate::frame::{OP_BINARY, OP_TEXT};

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Data {
        opcode: u8,
        first: bool,
        fin: bool,
        payload: Vec<u8>,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, Vec<u8>),
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Event>,
    /// The violation that ended the stream, if any.
    violation: Option<Violation>,
    /// Bytes of an incomplete frame left in the buffer at the end.
    leftover: usize,
}

/// The message in progress, for the fragmentation and size checks.
#[derive(Default)]
struct Message {
    opcode: Option<u8>,
    bytes: Vec<u8>,
}

fn check_frame(frame: &Frame<'_>, msg: &mut Message, max: usize) -> Event {
    match *frame {
        Frame::Data {
            opcode,
            first,
            fin,
            payload,
            ..
        } => {
            assert!(
                opcode == OP_TEXT || opcode == OP_BINARY,
                "data opcode {opcode}"
            );
            assert!(
                payload.len() <= max,
                "frame of {} > max {max}",
                payload.len()
            );
            assert_eq!(first, msg.opcode.is_none(), "first flag out of step");
            if let Some(op) = msg.opcode {
                assert_eq!(op, opcode, "opcode changed inside a message");
            }
            msg.opcode = Some(opcode);
            msg.bytes.extend_from_slice(payload);
            assert!(
                msg.bytes.len() <= max,
                "message of {} > max {max}",
                msg.bytes.len()
            );
            if fin {
                if opcode == OP_TEXT {
                    assert!(
                        std::str::from_utf8(&msg.bytes).is_ok(),
                        "text message not UTF-8"
                    );
                }
                *msg = Message::default();
            }
            Event::Data {
                opcode,
                first,
                fin,
                payload: payload.to_vec(),
            }
        }
        Frame::Ping(p) => {
            assert!(p.len() <= 125);
            Event::Ping(p.to_vec())
        }
        Frame::Pong(p) => {
            assert!(p.len() <= 125);
            Event::Pong(p.to_vec())
        }
        Frame::Close { code, reason } => {
            assert!(reason.len() <= 123);
            assert!(code.is_some() || reason.is_empty());
            if let Some(c) = code {
                assert!(valid_close_code(c), "close code {c}");
            }
            assert!(
                std::str::from_utf8(reason).is_ok(),
                "close reason not UTF-8"
            );
            Event::Close(code, reason.to_vec())
        }
    }
}

/// Decodes `stream` arriving in chunks of `chunks` bytes (cycled), like the reactor does.
fn run(stream: &[u8], chunks: &[usize], max: usize) -> Outcome {
    let mut dec = Decoder::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut msg = Message::default();
    let mut events = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let n = chunks[i % chunks.len()].min(stream.len() - pos);
        i += 1;
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        loop {
            let header_says = Decoder::frame_len(&buf);
            let present = buf.len();
            match dec.next(&mut buf, max) {
                Err(v) => {
                    assert!(
                        matches!(v.code, 1002 | 1007 | 1009),
                        "violation code {}",
                        v.code
                    );
                    // What is left after a violation depends on how much had arrived: not compared.
                    return Outcome {
                        events,
                        violation: Some(v),
                        leftover: 0,
                    };
                }
                Ok(None) => break,
                Ok(Some((frame, consumed))) => {
                    assert!(
                        consumed > 0 && consumed <= present,
                        "consumed {consumed} of {present}"
                    );
                    assert_eq!(header_says, Some(consumed as u64), "frame_len disagrees");
                    events.push(check_frame(&frame, &mut msg, max));
                    buf.drain(..consumed);
                }
            }
            assert_eq!(
                dec.in_message(),
                msg.opcode.is_some(),
                "in_message out of step"
            );
        }
    }
    Outcome {
        events,
        violation: None,
        leftover: buf.len(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [lo, hi, n, rest @ ..] = data else {
        return;
    };
    let n = usize::from(*n % 8).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    // Mostly small limits so 1009 is easy to reach; the top bit picks the largest limit the config allows.
    let max = if hi & 0x80 != 0 {
        wsgate::config::MAX_MESSAGE_SIZE_LIMIT
    } else {
        1 + usize::from(u16::from_le_bytes([*lo, *hi & 0x7F]))
    };
    let mut chunks: Vec<usize> = sizes
        .iter()
        .map(|&b| {
            if b < 0x80 {
                usize::from(b) + 1
            } else {
                usize::from(b - 0x7F) * 97
            }
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(1);
    }
    let chunked = run(stream, &chunks, max);
    let whole = run(stream, &[stream.len().max(1)], max);
    assert_eq!(chunked, whole, "the chunking changed the outcome");
});
