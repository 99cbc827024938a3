//! The relay thread of `debug.demo_relay` (see src/gateway/demo_relay.rs): publishes what demo clients sent to
//! their `demo:` channel, the way `POST /api/publish` publishes (history, merge windows, the other nodes).

use crate::cluster::ClusterHandle;
use crate::gateway::demo_relay::DemoPublish;
use crate::hub::{Hub, Outbox};
use crate::protocol;
use crossbeam_channel::Receiver;
use std::sync::Arc;

/// Starts the relay thread; it ends when the last sink holding the queue is dropped.
pub fn spawn(
    hub: Arc<Hub>,
    cluster: Option<ClusterHandle>,
    rx: Receiver<DemoPublish>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("demo-relay".into())
        .spawn(move || {
            // What queued up meanwhile goes out as one batch: one wake-up per reactor (the outbox flushes on drop).
            while let Ok(first) = rx.recv() {
                let mut out = hub.outbox();
                for p in std::iter::once(first).chain(rx.try_iter()) {
                    publish(&hub, &mut out, cluster.as_ref(), &p.channel, &p.data);
                }
            }
        })?;
    Ok(())
}

fn publish(
    hub: &Hub,
    out: &mut Outbox<'_>,
    cluster: Option<&ClusterHandle>,
    channel: &str,
    data: &str,
) {
    let history = hub.gateway.history.as_deref();
    if let Some((h, ns)) = history.and_then(|h| Some((h, h.namespace(channel)?))) {
        if let Some(cluster) = cluster {
            if let Err(e) = cluster.read(|r| r.publish_history(channel, ns, data)) {
                log::warn!("demo relay: {channel:?} not published: {e}");
            }
        } else if !out.merge(channel, data, None) {
            let (frame, offset) = h.publish(channel, ns, data);
            out.publish_at(channel, offset, frame);
        }
        return;
    }
    if !out.merge(channel, data, None) {
        out.publish(channel, protocol::channel_message(channel, data));
    }
    if let Some(cluster) = cluster {
        cluster.publish(channel, data);
    }
}
