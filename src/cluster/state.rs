//! Session state in Redis: not written yet (next step). Until then the state changes of the reactors are drained
//! and discarded here, so their queue never fills.
use super::link::StateEvent;
use super::{Deliver, Shared};
use crossbeam_channel::Receiver;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn run(
    shared: Arc<Shared>,
    _deliver: Arc<dyn Deliver>,
    rx: Receiver<StateEvent>,
    _lost: Arc<AtomicBool>,
) {
    while !shared.stop.load(Ordering::Relaxed) {
        let _ = rx.recv_timeout(Duration::from_millis(100));
    }
}
