//! Incoming events → local connections, through the same encode-once path as a local publish: the frame is built
//! once here and the hub hands the shared frame to every reactor.

use super::{Deliver, EventKind, InEvent};
use crate::hub::Hub;
use crate::protocol;

impl Deliver for Hub {
    fn deliver(&self, event: &InEvent<'_>) -> bool {
        match event.kind {
            // `parse_entry` has checked the channel name and that `data` is JSON.
            EventKind::Channel => {
                self.publish(
                    event.target,
                    protocol::channel_message(event.target, event.data),
                );
                true
            }
            EventKind::Broadcast => {
                self.broadcast(protocol::broadcast_message(event.data));
                true
            }
            // Reserved for the auth integration (user and socket targets, remote disconnects).
            EventKind::User | EventKind::Sid | EventKind::Disconnect => false,
        }
    }
}
