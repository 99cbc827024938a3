//! The reactor state machine under random scripts (`wsgate::gateway::scripted`): the same driver as the fuzz
//! target `reactor` (fuzz/), run here from a seeded generator so every test run explores new interleavings of
//! client bytes, readiness, short writes, clock jumps and publishes. `WSGATE_SCRIPT_SEED` replays a run;
//! `WSGATE_SCRIPTS` sets how many scripts run (default 2000).

use wsgate::gateway::scripted;

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A script in the byte language of `scripted::run`, shaped like traffic rather than noise: a few clients connect
/// and upgrade, then requests, frames, publishes, reads and clock jumps follow in proportions that reach the
/// interesting states (open connections, full queues, timeouts) often, with every byte after the op still random.
fn script(state: &mut u64) -> Vec<u8> {
    let mut rnd = || xorshift(state);
    let mut s = Vec::new();
    for _ in 0..1 + rnd() % 5 {
        s.extend_from_slice(&[0, 0]);
        s.extend_from_slice(&[1, rnd() as u8, rnd() as u8]);
    }
    // (op, weight): requests, frames, publishes, reads, steps, clock, small buffers, injected events, raw bytes,
    // closes, new clients.
    const WEIGHTS: [(u8, u64); 11] = [
        (4, 26),
        (2, 12),
        (10, 18),
        (5, 6),
        (11, 6),
        (9, 6),
        (8, 8),
        (7, 5),
        (3, 3),
        (6, 3),
        (0, 6),
    ];
    let total: u64 = WEIGHTS.iter().map(|w| w.1).sum();
    for _ in 0..rnd() % 120 {
        let mut r = rnd() % total;
        let op = WEIGHTS
            .iter()
            .find(|w| {
                if r < w.1 {
                    true
                } else {
                    r -= w.1;
                    false
                }
            })
            .map_or(11, |w| w.0);
        s.push(op);
        for _ in 0..8 {
            s.push(rnd() as u8);
        }
        if op == 0 {
            s.extend_from_slice(&[1, rnd() as u8, rnd() as u8]);
        }
    }
    s
}

#[test]
fn random_scripts_never_break_the_reactor_and_leave_nothing_behind() {
    let seed: u64 = std::env::var("WSGATE_SCRIPT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let count: usize = std::env::var("WSGATE_SCRIPTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    println!("reactor scripts: WSGATE_SCRIPT_SEED={seed} WSGATE_SCRIPTS={count}");
    let mut state = seed;
    let mut reached = [0u64; 6];
    for n in 0..count {
        let script = script(&mut state);
        let len = script.len();
        match scripted::run(&script) {
            Ok(t) => {
                for (i, v) in [
                    t.handshakes_total,
                    t.messages_in_total,
                    t.protocol_errors_total,
                    t.slow_consumer_closes_total,
                    t.message_timeouts_total,
                    t.handshake_failures_total,
                ]
                .into_iter()
                .enumerate()
                {
                    reached[i] += v;
                }
            }
            Err(e) => {
                panic!(
                    "WSGATE_SCRIPT_SEED={seed}: script {n} ({len} bytes): {e}\nscript: {script:?}"
                )
            }
        }
    }
    let names = [
        "handshakes",
        "messages in",
        "protocol errors",
        "slow consumers",
        "message timeouts",
        "refused upgrades",
    ];
    let summary: Vec<String> = names
        .iter()
        .zip(reached)
        .map(|(n, v)| format!("{n} {v}"))
        .collect();
    println!("reached: {}", summary.join(", "));
    // The generator must keep reaching the states that matter, or the test explores nothing.
    for (name, v) in names.iter().zip(reached) {
        assert!(
            v > 0,
            "WSGATE_SCRIPT_SEED={seed}: no script reached {name} ({summary:?})"
        );
    }
}

/// The remote abort of the old core, as a script: an echo client that does not read sends many messages, then a
/// message in two fragments whose echo overflows its queue (the close runs while the fragment buffer is in use).
#[test]
fn fragmented_echo_over_a_full_queue_as_a_script() {
    let mut script = vec![
        0, 0, // connect
        1, 0, 0, // upgrade to /echo
        8, 0, // small send buffer on its server side
    ];
    for _ in 0..40 {
        // a 2000-byte text frame, masked (payload shorter: the rest of the script pads it)
        script.extend_from_slice(&[2, 0, 0x82, 1, 30, 1]);
        script.extend(std::iter::repeat_n(b'x', 512));
    }
    script.extend_from_slice(&[4, 0, 2, 1, 0]); // a ping request in two fragments, a ping frame between
    script.extend_from_slice(&[11, 0, 3]);
    scripted::run(&script).unwrap();
}
