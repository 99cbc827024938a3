//! The demo relay (`debug.demo_relay`): clients may not publish to channels, so the demo page (clients/js/demo/)
//! would have nobody to talk to without a backend. With the relay on, an `op: msg` naming a channel under
//! [`DEMO_PREFIX`] (one the connection subscribes to) is also published to that channel as
//! `{"from":"<sid>","data":<the client's data>}`; every other message goes to the upstream sink as usual.
//!
//! The sink runs on reactor threads and must not block: it only queues (bounded); the API layer's relay thread
//! (src/api/demo_relay.rs) publishes like `POST /api/publish` does. A full queue refuses the message (4013).

use crate::upstream::{Event, Refused, Sink};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::Arc;

/// Channels the relay republishes client messages to.
pub const DEMO_PREFIX: &str = "demo:";
/// Messages waiting for the relay thread; beyond it the client's message is refused.
const QUEUE: usize = 4096;

/// One message for the relay thread: the channel and the JSON to publish.
pub struct DemoPublish {
    pub channel: String,
    pub data: String,
}

pub struct DemoRelaySink {
    inner: Arc<dyn Sink>,
    tx: Sender<DemoPublish>,
}

impl DemoRelaySink {
    /// Wraps `inner`; the receiver is for the relay thread.
    pub fn wrap(inner: Arc<dyn Sink>) -> (Arc<dyn Sink>, Receiver<DemoPublish>) {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        (Arc::new(DemoRelaySink { inner, tx }), rx)
    }
}

impl Sink for DemoRelaySink {
    fn deliver(&self, event: &Event<'_>) -> Result<(), Refused> {
        if let Event::Message {
            origin,
            data,
            channel: Some(channel),
            ..
        } = event
        {
            if channel.starts_with(DEMO_PREFIX) {
                let publish = DemoPublish {
                    channel: channel.to_string(),
                    data: format!("{{\"from\":\"{}\",\"data\":{data}}}", origin.sid),
                };
                match self.tx.try_send(publish) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => return Err(Refused("demo relay queue full")),
                    Err(TrySendError::Disconnected(_)) => {
                        return Err(Refused("demo relay stopped"))
                    }
                }
            }
        }
        self.inner.deliver(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{LogSink, Origin};

    fn message<'a>(channel: Option<&'a str>, data: &'a str) -> Event<'a> {
        let origin = Origin {
            sid: 42,
            user: None,
            device: None,
            tenant: None,
            client_version: None,
        };
        Event::Message {
            origin,
            data,
            channel,
            trace: None,
        }
    }

    #[test]
    fn relays_only_demo_channels_and_refuses_when_full() {
        let (sink, rx) = DemoRelaySink::wrap(Arc::new(LogSink));
        sink.deliver(&message(Some("demo:list"), "{\"a\":1}"))
            .unwrap();
        sink.deliver(&message(Some("doc:1"), "1")).unwrap();
        sink.deliver(&message(None, "2")).unwrap();
        let got = rx.try_recv().unwrap();
        assert_eq!(got.channel, "demo:list");
        assert_eq!(got.data, "{\"from\":\"42\",\"data\":{\"a\":1}}");
        assert!(rx.try_recv().is_err(), "only demo: channels are relayed");
        for _ in 0..QUEUE {
            sink.deliver(&message(Some("demo:x"), "0")).unwrap();
        }
        let full = sink.deliver(&message(Some("demo:x"), "0"));
        assert_eq!(full, Err(Refused("demo relay queue full")));
    }
}
