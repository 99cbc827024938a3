//! Events → local connections, through the same encode-once path as a local publish: the frame is built once here
//! and the hub hands the shared frame to every reactor (or, for a socket id, to the one reactor that owns it).

use super::event::{parse_disconnect, Scope};
use super::{Deliver, EventKind, InEvent};
use crate::gateway::frames::{self, user_push};
use crate::gateway::{Answer, ReplayOutcome, Target};
use crate::hub::{Hub, Outbox};
use crate::ids::sid;
use crate::ids::StreamId;
use crate::protocol;

impl Deliver for Hub {
    fn deliver(&self, events: &[InEvent<'_>]) -> usize {
        let mut out = self.outbox();
        events
            .iter()
            .filter(|event| deliver_one(self, &mut out, event))
            .count()
    }

    fn deliver_user(
        &self,
        user: &str,
        device: Option<&str>,
        tenant: Option<&str>,
        data: &str,
        id: Option<StreamId>,
        ack: bool,
    ) {
        push_to_user(&mut self.outbox(), user, device, tenant, data, id, ack);
    }

    fn replay_done(&self, sid: u64, outcome: ReplayOutcome) {
        self.outbox().replay_done(sid, outcome);
    }

    fn to_sid(&self, sid: u64, frame: Vec<u8>) {
        // Gone meanwhile: nobody is left to tell.
        let _ = self.outbox().deliver_sid(sid, std::sync::Arc::new(frame));
    }

    fn snapshot(&self) -> Option<Vec<Answer>> {
        Hub::snapshot(self).ok()
    }
}

/// One event of another node into `out`; false if this node does not handle its kind.
fn deliver_one(hub: &Hub, out: &mut Outbox, event: &InEvent<'_>) -> bool {
    match event.kind {
        // `parse_entry` has checked the channel name and that `data` is JSON.
        // With an offset: a publication with history, read by every node (its own too) in offset order.
        EventKind::Channel if event.offset.is_some() => {
            let offset = event.offset.unwrap_or_default();
            if out.merge(event.target, event.data, Some((offset, event.epoch))) {
                return true;
            }
            let frame = match &hub.gateway.history {
                Some(h) => h.insert(event.target, offset, event.epoch, event.data),
                None => Some(
                    protocol::channel_message_at(event.target, offset, event.epoch, event.data).0,
                ),
            };
            if let Some(frame) = frame {
                out.publish_at(event.target, offset, frame);
            }
            true
        }
        EventKind::Channel => {
            if out.merge(event.target, event.data, None) {
                return true;
            }
            out.publish(
                event.target,
                protocol::channel_message(event.target, event.data),
            );
            true
        }
        EventKind::Broadcast => {
            out.broadcast(protocol::broadcast_message(event.data));
            true
        }
        // Every node delivers to its own connections of the user (possibly none).
        EventKind::User => {
            fn opt(s: &str) -> Option<&str> {
                (!s.is_empty()).then_some(s)
            }
            push_to_user(
                out,
                event.target,
                opt(event.device),
                opt(event.tenant),
                event.data,
                event.nid,
                event.ack,
            );
            true
        }
        // Only the node encoded in the socket id has the connection; the others have nothing to do.
        EventKind::Sid => {
            if sid::node_of(event.sid) == hub.gateway.node_id {
                // A reactor this node does not run: the connection cannot exist (counted nowhere).
                let _ = out.deliver_sid(event.sid, frames::sid_message(event.sid, event.data));
            }
            true
        }
        EventKind::Disconnect => {
            let Some((code, reason)) = parse_disconnect(event.data) else {
                return true; // checked by parse_entry
            };
            match event.scope {
                Scope::User => {
                    out.disconnect_async(Target::User(event.target.into()), code, &reason)
                }
                Scope::Sid if sid::node_of(event.sid) == hub.gateway.node_id => {
                    out.disconnect_async(Target::Sid(event.sid), code, &reason)
                }
                Scope::Sid => {}
            }
            true
        }
    }
}

/// A user push (raw JSON `data`; `id`: its id in the user's stream, if stored) into `out`.
fn push_to_user(
    out: &mut Outbox,
    user: &str,
    device: Option<&str>,
    tenant: Option<&str>,
    data: &str,
    id: Option<StreamId>,
    ack: bool,
) {
    // Without an id (not stored) there is nothing to ack: sent once.
    let ack = ack && id.is_some();
    let frame = user_push(user, data, id, false, ack);
    out.deliver_user(user, device, tenant, frame, id, ack);
}
