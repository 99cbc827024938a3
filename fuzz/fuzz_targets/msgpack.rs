//! MessagePack from clients and the API (`msgpack::to_json`), and the transcoding of server frames
//! (`msgpack::transcode_frames`) on the same bytes.
//!
//! Checked: whatever `to_json` accepts is valid JSON that converts back to MessagePack and again to the same JSON;
//! transcoding arbitrary bytes never fails.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::msgpack;

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = msgpack::to_json(data) {
        serde_json::from_slice::<serde_json::Value>(&json).expect("valid JSON");
        let packed = msgpack::from_json(&json).expect("JSON from MessagePack converts back");
        assert_eq!(msgpack::to_json(&packed).expect("round trip"), json);
    }
    let mut frames = data.to_vec();
    msgpack::transcode_frames(&mut frames);
});
