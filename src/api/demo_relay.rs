//! The relay thread of `debug.demo_relay` (see src/gateway/demo_relay.rs): publishes what demo clients sent to
//! their `demo:` channel, the way `POST /api/publish` publishes (history, merge windows, the other nodes).

use crate::cluster::ClusterHandle;
use crate::gateway::demo_relay::DemoPublish;
use crate::hub::Hub;
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
            for p in rx {
                publish(&hub, cluster.as_ref(), &p.channel, &p.data);
            }
        })?;
    Ok(())
}

fn publish(hub: &Hub, cluster: Option<&ClusterHandle>, channel: &str, data: &str) {
    let history = hub.gateway.history.as_deref();
    if let Some((h, ns)) = history.and_then(|h| Some((h, h.namespace(channel)?))) {
        if let Some(cluster) = cluster {
            if let Err(e) = cluster.read(|r| r.publish_history(channel, ns, data)) {
                log::warn!("demo relay: {channel:?} not published: {e}");
            }
        } else if !hub.merge(channel, data, None) {
            let (frame, offset) = h.publish(channel, ns, data);
            hub.publish_at(channel, offset, frame);
        }
        return;
    }
    if !hub.merge(channel, data, None) {
        hub.publish(channel, protocol::channel_message(channel, data));
    }
    if let Some(cluster) = cluster {
        cluster.publish(channel, data);
    }
}
