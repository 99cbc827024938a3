//! The reactor state machine: one reactor running the gateway, driven by hand (`wsgate::gateway::scripted`) with
//! arbitrary interleavings of client bytes (upgrades, valid, broken and fragmented frames, protocol requests, raw
//! bytes), clients that stop reading or close mid-frame, short writes (small send buffers), injected readiness
//! (spurious wake-ups, errors), clock jumps (timers, grace periods, message timeouts) and publishes.
//!
//! Checked: nothing panics (a panic aborts a release build: the whole node), and once every client has left,
//! the reactor holds no connection, no read buffer and no channel.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = wsgate::gateway::scripted::run(data) {
        panic!("{e}");
    }
});
