//! Channels with history: subscribing returns the channel's position (offset and epoch), and a client that
//! resubscribes with where it stopped (`recover`) gets the publications it missed, then the live ones, with no gap
//! and no duplicate.
//!
//! The history (src/history/) is written before a publication is queued to the reactors, so when a reactor reads
//! it for a recovering connection, every publication that may still wait in its command queue is already in the
//! replay. The connection gets a floor (the channel's offset at the read): live publications at or below it are
//! skipped for that connection, the first one above it ends the floor. Recovery is synchronous (an in-memory read),
//! so no live message has to be held back meanwhile.

use super::handler::{Client, Gateway};
use crate::history::{Position, Recovery};
use crate::pool::SharedFrame;
use crate::protocol;
use crate::reactor::{Core, Key};
use serde_json::value::RawValue;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;

/// A connection that recovered (or subscribed) at `offset`: live publications up to it are not delivered to it.
pub(super) struct Floor {
    key: u32,
    sid: u64,
    offset: u64,
}

/// Where one history channel of a subscribe request stands after it.
pub(super) struct Subscribed {
    channel: String,
    position: Position,
    /// None when the request did not ask to recover this channel.
    recovered: Option<bool>,
}

/// A `recover` request: channel → where the client stopped.
pub(super) type RecoverRequest = Vec<(String, Position)>;

/// The request's `recover` object as positions (see [`protocol::parse_recover`]).
pub(super) fn parse_recover(raw: &RawValue, channels: &[String]) -> Result<RecoverRequest, String> {
    protocol::parse_recover(raw, channels).map(positions)
}

/// The connect URL's `recover=` as positions (see [`protocol::query_recover`]).
pub(super) fn parse_recover_query(
    query: &str,
    channels: &[String],
) -> Result<RecoverRequest, &'static str> {
    protocol::query_recover(query, channels).map(positions)
}

fn positions(entries: Vec<protocol::RecoverEntry>) -> RecoverRequest {
    entries
        .into_iter()
        .map(|(channel, offset, epoch)| {
            let epoch = Arc::from(epoch);
            (channel, Position { offset, epoch })
        })
        .collect()
}

impl Gateway {
    /// Checks a recover request before anything is subscribed: each channel must have recovery enabled and must
    /// not be subscribed already (its live messages would repeat in the replay).
    pub(super) fn check_recover(
        &self,
        core: &Core<Client>,
        key: Key,
        recover: &RecoverRequest,
    ) -> Result<(), String> {
        for (channel, _) in recover {
            let enabled = self
                .local
                .shared
                .history
                .as_ref()
                .and_then(|h| h.namespace(channel))
                .is_some_and(|n| n.recover);
            if !enabled {
                return Err(format!(
                    "channel {channel:?} has no recovery (no [[channels.namespace]] with history and recover = true matches it)"
                ));
            }
            if core.is_subscribed(key, channel) {
                return Err(format!(
                    "already subscribed to {channel:?}: unsubscribe before recovering"
                ));
            }
        }
        Ok(())
    }

    /// After `channel` was subscribed: its position (and replay, when the request asked to recover it), and the
    /// connection's floor there. None for a channel without history.
    pub(super) fn position_after_subscribe(
        &mut self,
        core: &Core<Client>,
        key: Key,
        channel: &str,
        since: Option<&Position>,
        replay: &mut Vec<SharedFrame>,
    ) -> Option<Subscribed> {
        let history = self.local.shared.history.clone()?;
        // One budget for all channels of a request (and the connect URL), so a recovery never makes a slow consumer.
        let queued: usize = replay.iter().map(|f| f.len()).sum();
        let budget = self.policy.max_replay_bytes.saturating_sub(queued);
        let (position, recovered) = match since {
            Some(since) => {
                let Recovery {
                    position,
                    recovered,
                    frames,
                } = history.recover(channel, since, budget)?;
                self.local.tally.channel_recoveries_total += 1;
                if !recovered {
                    self.local.tally.channel_recoveries_failed_total += 1;
                }
                self.local.tally.channel_recovered_messages_total += frames.len() as u64;
                replay.extend(frames);
                (position, Some(recovered))
            }
            None => (history.position(channel)?, None),
        };
        self.set_floor(core, key, channel, position.offset);
        Some(Subscribed {
            channel: channel.to_string(),
            position,
            recovered,
        })
    }

    fn set_floor(&mut self, core: &Core<Client>, key: Key, channel: &str, offset: u64) {
        let sid = core.app(key).sid;
        let floors = self.local.floors.entry(Box::from(channel)).or_default();
        // Connections gone or no longer subscribed leave here, so a list never outgrows the channel's subscribers.
        floors.retain(|f| f.key as Key != key && holds(core, f, channel));
        floors.push(Floor {
            key: key as u32,
            sid,
            offset,
        });
    }

    /// The connection left `channel`: its floor there goes.
    pub(super) fn drop_floor(&mut self, key: Key, channel: &str) {
        let Some(floors) = self.local.floors.get_mut(channel) else {
            return;
        };
        floors.retain(|f| f.key as Key != key);
        if floors.is_empty() {
            self.local.floors.remove(channel);
        }
    }

    /// The connection is closing: its floors go.
    pub(super) fn drop_floors(&mut self, core: &Core<Client>, key: Key) {
        if self.local.floors.is_empty() {
            return;
        }
        for channel in core.channels_of(key) {
            self.drop_floor(key, channel);
        }
    }

    /// A publication with an offset: every local subscriber gets it except connections whose floor is at or
    /// above it (they got it in their replay).
    pub(super) fn publication(
        &mut self,
        core: &mut Core<Client>,
        channel: &str,
        offset: u64,
        frame: SharedFrame,
    ) -> usize {
        let Some(floors) = self.local.floors.get_mut(channel) else {
            return core.fan_out(channel, frame, &[]);
        };
        let mut except = Vec::new();
        floors.retain(|f| {
            let live = holds(core, f, channel);
            if live && offset <= f.offset {
                except.push(f.key as Key);
            }
            live && offset < f.offset
        });
        if floors.is_empty() {
            self.local.floors.remove(channel);
        }
        self.local.tally.channel_recovery_skips_total += except.len() as u64;
        core.fan_out(channel, frame, &except)
    }

    /// Queues a replay after the reply that announced it.
    pub(super) fn queue_replay(core: &mut Core<Client>, key: Key, replay: Vec<SharedFrame>) {
        for frame in replay {
            core.queue(key, Rc::new(frame));
        }
    }
}

/// The floor's connection is still the one that set it and still subscribed to the channel.
fn holds(core: &Core<Client>, f: &Floor, channel: &str) -> bool {
    let key = f.key as Key;
    core.is_open(key) && core.app(key).sid == f.sid && core.is_subscribed(key, channel)
}

/// The reply to a subscribe that touched history channels: `{"type":"reply","id":ID,"ok":true,...}` with
/// `"recovered"` (all asked channels recovered) when the request asked to recover, `"offset"` and `"epoch"` when
/// one history channel was subscribed, and `"positions"` per history channel always.
pub(super) fn subscribe_reply(id: Option<&RawValue>, subscribed: &[Subscribed]) -> Vec<u8> {
    let mut json = String::with_capacity(96);
    json.push_str("{\"type\":\"reply\"");
    protocol::push_id(&mut json, id);
    json.push_str(",\"ok\":true");
    push_positions(&mut json, subscribed);
    json.push('}');
    protocol::text_frame(&json)
}

/// The frame a connect-time subscription with history gets after the welcome:
/// `{"type":"subscribed","recovered":..,"positions":{...}}`.
pub(super) fn subscribed_frame(subscribed: &[Subscribed]) -> Vec<u8> {
    let mut json = String::from("{\"type\":\"subscribed\"");
    push_positions(&mut json, subscribed);
    json.push('}');
    protocol::text_frame(&json)
}

fn push_positions(json: &mut String, subscribed: &[Subscribed]) {
    let asked: Vec<bool> = subscribed.iter().filter_map(|s| s.recovered).collect();
    if !asked.is_empty() {
        let _ = write!(json, ",\"recovered\":{}", asked.iter().all(|r| *r));
    }
    let epoch = |p: &Position| serde_json::to_string(&*p.epoch).expect("a str serializes");
    if let [one] = subscribed {
        let _ = write!(
            json,
            ",\"offset\":{},\"epoch\":{}",
            one.position.offset,
            epoch(&one.position)
        );
    }
    json.push_str(",\"positions\":{");
    for (i, s) in subscribed.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&serde_json::to_string(&s.channel).expect("a str serializes"));
        let _ = write!(
            json,
            ":{{\"offset\":{},\"epoch\":{}",
            s.position.offset,
            epoch(&s.position)
        );
        if let Some(r) = s.recovered {
            let _ = write!(json, ",\"recovered\":{r}");
        }
        json.push('}');
    }
    json.push('}');
}
