//! Client → backend traffic: messages clients send with `{"op":"msg"}`, and connect / disconnect events, handed
//! to a pluggable sink. Standalone, the sink logs them (counted in the reactors' metrics); the cluster feature adds
//! a sink that appends them to a Redis stream.
//!
//! A sink is called on reactor threads and must not block: it either takes the event (queueing it for another
//! thread) or refuses it, and a refused client message is answered with an error — never dropped silently.

/// Who an event is about.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Socket id.
    pub sid: u64,
    /// `sub` of the token; None with `auth.mode = "none"`.
    pub user: Option<&'a str>,
    pub device: Option<&'a str>,
    pub tenant: Option<&'a str>,
    /// `?v=` or `X-Client-Version` at the upgrade.
    pub client_version: Option<&'a str>,
}

#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    Connect(Origin<'a>),
    Disconnect(Origin<'a>),
    /// `data` is the client's JSON value, verbatim; `channel` the channel it is about and `trace` the client's
    /// trace id, when given.
    Message {
        origin: Origin<'a>,
        data: &'a str,
        channel: Option<&'a str>,
        trace: Option<&'a str>,
    },
}

/// Why a sink did not take an event (sent to the client in the error reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub &'static str);

pub trait Sink: Send + Sync {
    fn deliver(&self, event: &Event<'_>) -> Result<(), Refused>;
}

/// The standalone sink: logs every event at debug level (counts are in the metrics).
#[derive(Debug, Default)]
pub struct LogSink;

impl Sink for LogSink {
    fn deliver(&self, event: &Event<'_>) -> Result<(), Refused> {
        if log::log_enabled!(log::Level::Debug) {
            match event {
                Event::Connect(o) => {
                    log::debug!("upstream connect sid={} user={:?}", o.sid, o.user)
                }
                Event::Disconnect(o) => {
                    log::debug!("upstream disconnect sid={} user={:?}", o.sid, o.user)
                }
                Event::Message { origin, data, .. } => log::debug!(
                    "upstream message sid={} user={:?} data={}",
                    origin.sid,
                    origin.user,
                    data
                ),
            }
        }
        Ok(())
    }
}
