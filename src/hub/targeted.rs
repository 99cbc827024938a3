//! Targeted publishes, disconnects and queries: the API's and the bridge's way to the gateway state of the
//! reactors. Each is a command on the reactor's queue; queries collect one answer per reactor.

use super::{Hub, Outbox};
use crate::gateway::command::{
    Answer, Command as GatewayCommand, ConnInfo, Member, Query, ReplayOutcome, Target,
};
use crate::ids::{sid, StreamId};
use crate::pool::SharedFrame;
use crate::reactor::Command;
use crossbeam_channel::Sender;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the API waits for the reactors to answer a query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a sid cannot be on this node.
pub fn sid_home(hub: &Hub, sid: u64) -> Result<usize, &'static str> {
    if sid::node_of(sid) != hub.gateway.node_id {
        return Err("socket id belongs to another node");
    }
    let reactor = sid::reactor_of(sid);
    if reactor >= hub.reactors.len() {
        return Err("no such connection");
    }
    Ok(reactor)
}

/// Targeted publishes: the API's and the bridge's way to the connections of a user or one socket id.
impl Outbox<'_> {
    fn send_to(&mut self, i: usize, cmd: GatewayCommand) -> bool {
        self.push(i, Command::App(cmd))
    }

    /// Delivers `frame` to every connection of `user` on every reactor (an API publish: counted); with its id in
    /// the standalone replay store, and whether each connection must ack it.
    pub fn publish_user(
        &mut self,
        user: &str,
        device: Option<&str>,
        tenant: Option<&str>,
        frame: SharedFrame,
        id: Option<StreamId>,
        ack: bool,
    ) {
        self.deliver_user(user, device, tenant, frame, id, ack);
        self.count_user_publish();
    }

    pub fn count_user_publish(&mut self) {
        self.hub
            .gateway
            .api
            .user_publishes_total
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Delivers `frame` (with its id in the notify stream or the replay store) to every connection of `user` on
    /// every reactor; `ack`: each connection must ack the id, or gets the push again.
    pub fn deliver_user(
        &mut self,
        user: &str,
        device: Option<&str>,
        tenant: Option<&str>,
        frame: SharedFrame,
        id: Option<StreamId>,
        ack: bool,
    ) {
        self.count_publish();
        let user: Arc<str> = Arc::from(user);
        let device: Option<Arc<str>> = device.map(Arc::from);
        let tenant: Option<Arc<str>> = tenant.map(Arc::from);
        for i in 0..self.hub.reactors.len() {
            self.send_to(
                i,
                GatewayCommand::PublishUser {
                    user: user.clone(),
                    device: device.clone(),
                    tenant: tenant.clone(),
                    frame: frame.clone(),
                    id,
                    ack,
                },
            );
        }
    }

    /// Delivers `frame` to one connection, through the one reactor that owns it (an API publish: counted).
    pub fn publish_sid(&mut self, sid: u64, frame: SharedFrame) -> Result<(), &'static str> {
        self.deliver_sid(sid, frame)?;
        self.hub
            .gateway
            .api
            .sid_publishes_total
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Delivers `frame` to connection `sid` of this node.
    pub fn deliver_sid(&mut self, sid: u64, frame: SharedFrame) -> Result<(), &'static str> {
        let reactor = sid_home(self.hub, sid)?;
        self.count_publish();
        self.send_to(reactor, GatewayCommand::PublishSid { sid, frame });
        Ok(())
    }

    /// Hands a connection's replay result to its reactor.
    pub fn replay_done(&mut self, sid: u64, outcome: ReplayOutcome) {
        if let Ok(reactor) = sid_home(self.hub, sid) {
            self.send_to(reactor, GatewayCommand::ReplayDone { sid, outcome });
        }
    }

    /// Closes the target's connections on this node without waiting for the reactors (a disconnect from another
    /// node).
    pub fn disconnect_async(&mut self, target: Target, code: u16, reason: &str) {
        let only = match &target {
            Target::Sid(sid) => match sid_home(self.hub, *sid) {
                Ok(r) => Some(r),
                Err(_) => return,
            },
            Target::User(_) => None,
        };
        let reason: Arc<str> = Arc::from(reason);
        // Nobody reads the answers: the reactors' sends to a dropped receiver fail quietly.
        let (reply, _) = crossbeam_channel::bounded(self.hub.reactors.len().max(1));
        for i in 0..self.hub.reactors.len() {
            if only.is_none_or(|o| o == i) {
                self.send_to(
                    i,
                    GatewayCommand::Disconnect {
                        target: target.clone(),
                        code,
                        reason: reason.clone(),
                        reply: reply.clone(),
                    },
                );
            }
        }
    }
}

/// Disconnects and queries: the API's and the bridge's side of the gateway state.
impl Hub {
    /// Every open gateway connection of this node, per reactor with the sequence number of its last state event.
    pub fn snapshot(&self) -> Result<Vec<Answer>, &'static str> {
        self.ask(None, |reply| GatewayCommand::Query {
            query: Query::Snapshot,
            reply,
        })
    }

    /// Asks the reactors (all, or the one owning a sid) and collects their answers within [`QUERY_TIMEOUT`].
    fn ask(
        &self,
        only: Option<usize>,
        make: impl Fn(Sender<Answer>) -> GatewayCommand,
    ) -> Result<Vec<Answer>, &'static str> {
        let (tx, rx) = crossbeam_channel::bounded(self.reactors.len().max(1));
        let mut asked = 0;
        let mut out = self.outbox();
        for i in 0..self.reactors.len() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            if out.send_to(i, make(tx.clone())) {
                asked += 1;
            }
        }
        // The reactors are woken before this thread waits for their answers.
        drop(out);
        drop(tx);
        let deadline = Instant::now() + QUERY_TIMEOUT;
        let mut answers = Vec::with_capacity(asked);
        while answers.len() < asked {
            match rx.recv_deadline(deadline) {
                Ok(a) => answers.push(a),
                // Disconnected: a reactor stopped (shutdown) without answering; use what arrived.
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    return Err("a reactor did not answer in time")
                }
            }
        }
        Ok(answers)
    }

    /// Closes the target's connections; returns how many were closed.
    pub fn disconnect(
        &self,
        target: Target,
        code: u16,
        reason: &str,
    ) -> Result<usize, &'static str> {
        self.gateway
            .api
            .disconnect_requests_total
            .fetch_add(1, Ordering::Relaxed);
        let only = match &target {
            Target::Sid(sid) => match sid_home(self, *sid) {
                Ok(r) => Some(r),
                Err(_) => return Ok(0),
            },
            Target::User(_) => None,
        };
        let reason: Arc<str> = Arc::from(reason);
        let answers = self.ask(only, |reply| GatewayCommand::Disconnect {
            target: target.clone(),
            code,
            reason: reason.clone(),
            reply,
        })?;
        Ok(answers
            .into_iter()
            .map(|a| match a {
                Answer::Disconnected(n) => n,
                _ => 0,
            })
            .sum())
    }

    /// Subscribers of `channel` with a socket id above `after`, lowest first, at most `limit`; also the total
    /// number of subscribers and whether more follow.
    pub fn presence(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<(usize, Vec<Member>, bool), &'static str> {
        let channel: Arc<str> = Arc::from(channel);
        // One more than asked tells whether there is a next page.
        let answers = self.ask(None, |reply| GatewayCommand::Query {
            query: Query::Presence {
                channel: channel.clone(),
                after,
                limit: limit + 1,
            },
            reply,
        })?;
        let mut total = 0;
        let mut members = Vec::new();
        for a in answers {
            if let Answer::Presence {
                total: t,
                members: m,
            } = a
            {
                total += t;
                members.extend(m);
            }
        }
        members.sort_unstable_by_key(|m| m.sid);
        let more = members.len() > limit;
        members.truncate(limit);
        Ok((total, members, more))
    }

    /// The connections of `user` on this node, by socket id.
    pub fn user_connections(&self, user: &str) -> Result<Vec<ConnInfo>, &'static str> {
        let user: Arc<str> = Arc::from(user);
        let answers = self.ask(None, |reply| GatewayCommand::Query {
            query: Query::User(user.clone()),
            reply,
        })?;
        let mut all: Vec<ConnInfo> = answers
            .into_iter()
            .flat_map(|a| match a {
                Answer::Connections(c) => c,
                _ => Vec::new(),
            })
            .collect();
        all.sort_unstable_by_key(|c| c.sid);
        Ok(all)
    }
}
