//! MessagePack, the binary form of the client protocol (subprotocol `wsgate.msgpack`): the same requests and server
//! messages as the JSON protocol (src/protocol.rs), each a MessagePack map in a binary frame. The gateway builds
//! its frames as JSON; a connection that chose MessagePack gets them transcoded — a channel publication once per
//! publish (the reactor shares the result like any frame), a reply once for its one connection.

use crate::frame::deflate::split_frame;
use crate::frame::{encode, OP_BINARY, OP_TEXT};

/// The subprotocol that selects MessagePack.
pub const SUBPROTOCOL: &str = "wsgate.msgpack";
/// The subprotocol that names the JSON protocol explicitly (`wsgate` means the same).
pub const JSON_SUBPROTOCOL: &str = "wsgate.json";
/// Deepest nesting of arrays and maps accepted from a client or the API.
const MAX_DEPTH: usize = 64;
/// The API's media type for a MessagePack request body.
pub const MEDIA_TYPE: &str = "application/msgpack";

/// JSON text → the same value as MessagePack (maps keep their keys as strings; their order is not kept).
pub fn from_json(json: &[u8]) -> Option<Vec<u8>> {
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    rmp_serde::to_vec(&value).ok()
}

/// MessagePack → JSON text. Only what JSON can express is taken: maps with string keys, no binary or extension
/// values, no NaN or infinity.
pub fn to_json(bytes: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    // Deep nesting recurses: bounded well below what a reactor thread's stack holds (serde_json stops at 128).
    de.set_max_depth(MAX_DEPTH);
    let value: serde_json::Value = serde::Deserialize::deserialize(&mut de)
        .map_err(|_| "not a MessagePack value JSON can express")?;
    if de.position() != bytes.len() as u64 {
        return Err("bytes after the MessagePack value");
    }
    serde_json::to_vec(&value).map_err(|_| "not a MessagePack value JSON can express")
}

/// A complete text frame of the JSON protocol as the binary MessagePack frame a `wsgate.msgpack` connection gets;
/// None for any other frame (control frames, binary frames), which stay as they are.
pub fn transcode_frame(frame: &[u8]) -> Option<Vec<u8>> {
    let (opcode, payload) = split_frame(frame)?;
    if opcode != OP_TEXT || frame[0] & 0x70 != 0 {
        return None;
    }
    let packed = from_json(payload)?;
    let mut out = Vec::with_capacity(packed.len() + encode::MAX_HEADER);
    encode::push_frame(&mut out, OP_BINARY, &packed);
    Some(out)
}

/// Transcodes every text frame in `frames` (complete server frames back to back), in place.
pub fn transcode_frames(frames: &mut Vec<u8>) {
    let mut out = Vec::with_capacity(frames.len());
    let mut rest = &frames[..];
    while let Some(len) = crate::frame::encode::frame_len(rest) {
        let frame = &rest[..len];
        match transcode_frame(frame) {
            Some(t) => out.extend_from_slice(&t),
            None => out.extend_from_slice(frame),
        }
        rest = &rest[len..];
    }
    out.extend_from_slice(rest);
    *frames = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_msgpack() {
        let v = json!({"channel":"news","data":{"n":-3,"big":18446744073709551615u64,"f":1.5,"s":"é","l":[true,null]}});
        let packed = from_json(v.to_string().as_bytes()).unwrap();
        assert!(packed.len() < v.to_string().len());
        let back: serde_json::Value = serde_json::from_slice(&to_json(&packed).unwrap()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn floats_keep_every_bit() {
        // Found by fuzzing: without serde_json's exact float parsing a double could come back one unit off.
        let v = [0xCB, 0x3F, 0xF8, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00];
        let json = to_json(&v).unwrap();
        assert_eq!(from_json(&json).unwrap(), v);
    }

    #[test]
    fn hostile_msgpack_is_refused() {
        for bad in [
            &[0xC1][..],                         // never used
            &[0x81, 0x01, 0x02][..],             // map with an integer key
            &[0xC4, 0x01, 0x00][..],             // binary
            &[0xDD, 0xFF, 0xFF, 0xFF, 0xFF][..], // array of 4 billion elements, none there
            &[0x92, 0x01][..],                   // truncated
            &[0x01, 0x02][..],                   // trailing bytes
        ] {
            assert!(to_json(bad).is_err(), "{bad:?}");
        }
        let deep = [0x91u8; 100_000];
        assert!(to_json(&deep).is_err());
    }

    #[test]
    fn only_text_frames_are_transcoded() {
        let mut text = Vec::new();
        encode::push_frame(&mut text, OP_TEXT, br#"{"type":"pong","id":1}"#);
        let t = transcode_frame(&text).unwrap();
        assert_eq!(t[0], 0x80 | OP_BINARY);
        let back: serde_json::Value = serde_json::from_slice(&to_json(&t[2..]).unwrap()).unwrap();
        assert_eq!(back, json!({"type":"pong","id":1}));
        let close = encode::close_frame(1000, "bye");
        assert_eq!(transcode_frame(&close), None);
        let mut both = text.clone();
        both.extend_from_slice(&close);
        transcode_frames(&mut both);
        assert_eq!(both, [t, close].concat());
    }
}
