//! Commands from the API and the cluster bridge, run on the reactor that owns the connections: targeted pushes
//! (to a user's connections, to one socket id), disconnects, read-only queries, and the end of a replay.

use super::cluster_link::Since;
use super::command::{
    Answer, Command, ConnInfo, ConnSnapshot, Member, Query, ReplayOutcome, Target,
};
use super::frames;
use super::handler::{Client, Gateway};
use super::REPLAY_BUFFER_MAX;
use crate::frame::close_code::TRY_AGAIN_LATER;
use crate::ids::StreamId;
use crate::pool::OutFrame;
use crate::reactor::{Core, Key};
use std::rc::Rc;

impl Gateway {
    pub(super) fn deliver(&mut self, core: &mut Core<Client>, cmd: Command) {
        match cmd {
            Command::SessionOp { sid, op } => self.session_op(core, sid, &op),
            Command::Poll { sid, ops, waiter } => self.poll(core, sid, &ops, waiter),
            Command::PollAnswer {
                key,
                token,
                response,
            } => super::long_poll::held_answer(core, key, token, &response),
            Command::PublishUser {
                user,
                device,
                tenant,
                frame,
                id,
                ack,
            } => {
                let mut keys = std::mem::take(&mut self.local.scratch);
                keys.clear();
                keys.extend_from_slice(self.local.registry.user_keys(&user));
                let shared = frame.clone();
                let frame: OutFrame = Rc::new(frame);
                for &k in &keys {
                    let k = k as Key;
                    if !core.is_open(k) {
                        continue;
                    }
                    let s = core.app_mut(k).state.as_deref_mut();
                    let device_ok = device
                        .as_deref()
                        .is_none_or(|d| s.as_ref().and_then(|s| s.device.as_deref()) == Some(d));
                    let tenant_ok = tenant
                        .as_deref()
                        .is_none_or(|t| s.as_ref().and_then(|s| s.tenant()) == Some(t));
                    if !device_ok || !tenant_ok {
                        continue;
                    }
                    if let (Some(id), Some(floor)) = (id, s.as_ref().and_then(|s| s.replay_floor)) {
                        if id <= floor {
                            self.local.tally.replay_duplicates_dropped_total += 1;
                            continue;
                        }
                    }
                    self.local.tally.user_deliveries_total += 1;
                    // Replay in flight: hold the live message back until the replayed ones are out.
                    if let Some(buf) = s.and_then(|s| s.replay.as_deref_mut()) {
                        if buf.live.len() < REPLAY_BUFFER_MAX {
                            buf.live.push((id, shared.clone(), ack));
                        } else {
                            self.local.tally.replay_overflow_closes_total += 1;
                            core.close(k, TRY_AGAIN_LATER, "replay overflow; reconnect with since");
                        }
                        continue;
                    }
                    self.send_push(core, k, &frame, id.filter(|_| ack));
                }
                self.local.scratch = keys;
            }
            Command::ReplayDone { sid, outcome } => self.finish_replay(core, sid, outcome),
            Command::PublishSid { sid, frame } => {
                match self.local.registry.by_sid(sid).map(|k| k as Key) {
                    Some(k) if core.is_open(k) => {
                        self.local.tally.sid_deliveries_total += 1;
                        core.queue(k, Rc::new(frame));
                    }
                    _ => self.local.tally.sid_misses_total += 1,
                }
            }
            Command::Disconnect {
                target,
                code,
                reason,
                reply,
            } => {
                let keys: Vec<u32> = match &target {
                    Target::User(u) => self.local.registry.user_keys(u).to_vec(),
                    Target::Sid(sid) => self.local.registry.by_sid(*sid).into_iter().collect(),
                };
                let mut closed = 0;
                for k in keys.into_iter().map(|k| k as Key) {
                    if core.is_open(k) {
                        core.close(k, code, &reason);
                        closed += 1;
                    }
                }
                self.local.tally.api_disconnects_total += closed as u64;
                let _ = reply.send(Answer::Disconnected(closed));
            }
            Command::Query { query, reply } => {
                let answer = self.answer(core, query);
                let _ = reply.send(answer);
            }
        }
    }

    /// The bridge has read connection `sid`'s missed messages: they go out first, then a `{"type":"replay"}`
    /// frame, then the live messages held back meanwhile — without those the replay already contained (id at or
    /// below the last replayed one, or the `since` floor).
    pub(super) fn finish_replay(
        &mut self,
        core: &mut Core<Client>,
        sid: u64,
        outcome: ReplayOutcome,
    ) {
        let Some(k) = self.local.registry.by_sid(sid).map(|k| k as Key) else {
            return; // closed meanwhile
        };
        if !core.is_open(k) {
            return;
        }
        let Some(s) = core.app_mut(k).state.as_deref_mut() else {
            return;
        };
        let Some(buf) = s.replay.as_deref_mut() else {
            return;
        };
        let floor = outcome.last.max(outcome.floor).max(s.replay_floor);
        s.replay_floor = floor;
        buf.replayed += outcome.frames.len();
        buf.last = outcome.last.or(buf.last);
        self.local.tally.replayed_messages_total += outcome.frames.len() as u64;
        for f in outcome.frames {
            core.queue(k, Rc::new(f));
        }
        if !core.is_open(k) {
            return; // closed as a slow consumer while queueing
        }
        // More to come: ask for the next chunk (live messages stay held back meanwhile).
        if outcome.more && outcome.error.is_none() {
            if let Some(since) = floor {
                if self.request_replay(core, k, Since::After(since)) {
                    return;
                }
            }
        }
        let Some(buf) = core
            .app_mut(k)
            .state
            .as_deref_mut()
            .and_then(|s| s.replay.take())
        else {
            return;
        };
        let error = match (&outcome.error, outcome.more) {
            (Some(e), _) => Some(e.as_str()),
            (None, true) => Some("replay queue full; live messages follow"),
            (None, false) => None,
        };
        core.send(k, frames::replay_done(buf.replayed, buf.last, error));
        for (id, f, ack) in buf.live {
            if let (Some(id), Some(floor)) = (id, floor) {
                if id <= floor {
                    self.local.tally.replay_duplicates_dropped_total += 1;
                    continue;
                }
            }
            self.send_push(core, k, &Rc::new(f), id.filter(|_| ack));
        }
    }

    /// Queues a live user push on an open connection; with `ack_id`, it then waits for the client's ack (or the
    /// connection is closed when it already has too many waiting).
    fn send_push(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        frame: &OutFrame,
        ack_id: Option<StreamId>,
    ) {
        let Some(id) = ack_id else {
            return core.queue(key, frame.clone());
        };
        if !self.room_for_ack(core, key, frame.len()) {
            return;
        }
        core.queue(key, frame.clone());
        if core.is_open(key) {
            self.await_ack(core, key, id, frame);
        }
    }

    fn answer(&self, core: &Core<Client>, query: Query) -> Answer {
        let channels = |k: Key| core.channels_of(k).map(str::to_string).collect();
        match query {
            Query::Snapshot => {
                let sessions = core
                    .open_connections()
                    .filter(|(_, c)| c.sid != 0)
                    .map(|(k, c)| {
                        let s = c.state.as_deref();
                        ConnSnapshot {
                            sid: c.sid,
                            user: s.and_then(|s| s.user()).map(str::to_string),
                            device: s.and_then(|s| s.device.as_deref()).map(str::to_string),
                            tenant: s.and_then(|s| s.tenant()).map(str::to_string),
                            channels: channels(k),
                        }
                    })
                    .collect();
                Answer::Snapshot {
                    reactor: self.local.reactor,
                    seq: self.local.state_seq,
                    sessions,
                }
            }
            Query::Presence {
                channel,
                after,
                limit,
            } => {
                let mut total = 0;
                let mut page: Vec<(u64, Key)> = Vec::new();
                for k in core.subscribers(&channel) {
                    total += 1;
                    let sid = core.app(k).sid;
                    if sid > after {
                        page.push((sid, k));
                    }
                }
                page.sort_unstable();
                page.truncate(limit);
                let members = page
                    .into_iter()
                    .map(|(sid, k)| Member {
                        sid,
                        user: core
                            .app(k)
                            .state
                            .as_deref()
                            .and_then(|s| s.user())
                            .map(str::to_string),
                    })
                    .collect();
                Answer::Presence { total, members }
            }
            Query::User(user) => {
                let list = self
                    .local
                    .registry
                    .user_keys(&user)
                    .iter()
                    .map(|&k| k as Key)
                    .filter(|&k| core.is_open(k))
                    .map(|k| {
                        let c = core.app(k);
                        let s = c.state.as_deref();
                        ConnInfo {
                            sid: c.sid,
                            reactor: self.local.reactor,
                            device: s.and_then(|s| s.device.as_deref()).map(str::to_string),
                            tenant: s.and_then(|s| s.tenant()).map(str::to_string),
                            exp: s.map_or(0, |s| s.exp),
                            channels: channels(k),
                            allowed: s
                                .and_then(|s| s.profile.as_deref())
                                .map(|p| p.grant.describe())
                                .unwrap_or_default(),
                        }
                    })
                    .collect();
                Answer::Connections(list)
            }
        }
    }
}
