//! A reactor's channel index: channel → its local subscribers, so a publish touches only subscribers.
//! Each subscription remembers its position in the channel's list, which makes unsubscribe O(1) (swap-remove).

use super::busiest::ChannelLoad;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

pub type ChannelId = u32;

/// One subscription as the connection records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub channel: ChannelId,
    /// Index of the connection in the channel's subscriber list.
    pub pos: u32,
}

/// A connection's subscriptions. Most connections follow one channel, which is kept inline (no heap allocation).
#[derive(Debug, Default)]
pub enum SubList {
    #[default]
    Empty,
    One(Subscription),
    Many(Vec<Subscription>),
}

impl SubList {
    pub fn as_slice(&self) -> &[Subscription] {
        match self {
            SubList::Empty => &[],
            SubList::One(s) => std::slice::from_ref(s),
            SubList::Many(v) => v,
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [Subscription] {
        match self {
            SubList::Empty => &mut [],
            SubList::One(s) => std::slice::from_mut(s),
            SubList::Many(v) => v,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn push(&mut self, sub: Subscription) {
        *self = match std::mem::take(self) {
            SubList::Empty => SubList::One(sub),
            SubList::One(first) => SubList::Many(vec![first, sub]),
            SubList::Many(mut v) => {
                v.push(sub);
                SubList::Many(v)
            }
        };
    }

    /// Removes the subscription to `channel`, if any.
    pub fn remove(&mut self, channel: ChannelId) -> Option<Subscription> {
        let i = self.as_slice().iter().position(|s| s.channel == channel)?;
        match self {
            SubList::One(s) => {
                let s = *s;
                *self = SubList::Empty;
                Some(s)
            }
            SubList::Many(v) => {
                let s = v.swap_remove(i);
                if v.len() == 1 {
                    *self = SubList::One(v[0]);
                }
                Some(s)
            }
            SubList::Empty => None,
        }
    }
}

struct Channel {
    name: Box<str>,
    subscribers: Vec<u32>,
    /// Frames queued to its subscribers so far (for the busiest-channels list).
    deliveries: u64,
}

#[derive(Default)]
pub struct ChannelIndex {
    by_name: HashMap<Box<str>, ChannelId>,
    channels: slab::Slab<Channel>,
}

impl ChannelIndex {
    pub fn lookup(&self, name: &str) -> Option<ChannelId> {
        self.by_name.get(name).copied()
    }

    /// Subscribers of a channel (connection keys).
    pub fn subscribers(&self, id: ChannelId) -> &[u32] {
        &self.channels[id as usize].subscribers
    }

    /// Counts `n` frames queued to the subscribers of `id`.
    pub fn count_deliveries(&mut self, id: ChannelId, n: usize) {
        let c = &mut self.channels[id as usize];
        c.deliveries = c.deliveries.wrapping_add(n as u64);
    }

    /// The `n` channels with the most subscribers and the `n` with the most deliveries (any; each listed once), by
    /// subscribers then deliveries, most first. O(channels · log n).
    pub fn busiest(&self, n: usize) -> Vec<ChannelLoad> {
        fn top(
            channels: &slab::Slab<Channel>,
            n: usize,
            key: impl Fn(&Channel) -> u64,
        ) -> Vec<usize> {
            let mut heap = BinaryHeap::with_capacity(n + 1);
            for (id, c) in channels.iter() {
                heap.push(Reverse((key(c), id)));
                if heap.len() > n {
                    heap.pop();
                }
            }
            heap.into_iter().map(|Reverse((_, id))| id).collect()
        }
        let mut ids = top(&self.channels, n, |c| c.subscribers.len() as u64);
        for id in top(&self.channels, n, |c| c.deliveries) {
            if self.channels[id].deliveries > 0 && !ids.contains(&id) {
                ids.push(id);
            }
        }
        let mut list: Vec<ChannelLoad> = ids
            .into_iter()
            .map(|id| {
                let c = &self.channels[id];
                ChannelLoad {
                    name: c.name.to_string(),
                    subscribers: c.subscribers.len() as u64,
                    deliveries: c.deliveries,
                }
            })
            .collect();
        list.sort_by(|a, b| {
            (b.subscribers, b.deliveries, &a.name).cmp(&(a.subscribers, a.deliveries, &b.name))
        });
        list
    }

    pub fn name(&self, id: ChannelId) -> &str {
        &self.channels[id as usize].name
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Adds connection `conn` to the channel named `name`, creating it if needed.
    pub fn add(&mut self, name: &str, conn: u32) -> Subscription {
        let id = match self.by_name.get(name) {
            Some(&id) => id,
            None => {
                let id = self.channels.insert(Channel {
                    name: name.into(),
                    subscribers: Vec::new(),
                    deliveries: 0,
                }) as ChannelId;
                self.by_name.insert(name.into(), id);
                id
            }
        };
        let subs = &mut self.channels[id as usize].subscribers;
        subs.push(conn);
        Subscription {
            channel: id,
            pos: (subs.len() - 1) as u32,
        }
    }

    /// Removes a subscription. Returns the connection that moved into its position (whose own record of `pos`
    /// the caller must update), if any. An emptied channel is dropped.
    pub fn remove(&mut self, sub: Subscription) -> Option<u32> {
        let channel = &mut self.channels[sub.channel as usize];
        channel.subscribers.swap_remove(sub.pos as usize);
        let moved = channel.subscribers.get(sub.pos as usize).copied();
        if channel.subscribers.is_empty() {
            let channel = self.channels.remove(sub.channel as usize);
            self.by_name.remove(&channel.name);
        } else if channel.subscribers.capacity() > 64
            && channel.subscribers.len() < channel.subscribers.capacity() / 4
        {
            channel.subscribers.shrink_to(channel.subscribers.len() * 2);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_remove_reports_the_moved_subscriber() {
        let mut idx = ChannelIndex::default();
        let a = idx.add("doc", 10);
        let _b = idx.add("doc", 11);
        let c = idx.add("doc", 12);
        assert_eq!(idx.subscribers(a.channel), &[10, 11, 12]);
        assert_eq!(idx.remove(a), Some(12));
        assert_eq!(idx.subscribers(c.channel), &[12, 11]);
        let c = Subscription {
            channel: c.channel,
            pos: 0,
        };
        assert_eq!(
            idx.remove(Subscription {
                channel: c.channel,
                pos: 1
            }),
            None
        );
        assert_eq!(idx.remove(c), None);
        assert!(idx.lookup("doc").is_none());
        assert_eq!(idx.len(), 0);
    }

    #[test]
    fn busiest_lists_most_subscribed_and_most_delivered_once_each() {
        let mut idx = ChannelIndex::default();
        for conn in 0..5 {
            idx.add("big", conn);
        }
        for conn in 0..3 {
            idx.add("mid", conn);
        }
        let hot = idx.add("hot", 9).channel;
        idx.add("quiet", 9);
        idx.count_deliveries(hot, 1000);
        let names = |l: Vec<ChannelLoad>| l.into_iter().map(|c| c.name).collect::<Vec<_>>();
        // Top 1 by subscribers is "big", top 1 by deliveries "hot"; "mid" and "quiet" are left out.
        assert_eq!(names(idx.busiest(1)), ["big", "hot"]);
        assert_eq!(names(idx.busiest(2)), ["big", "mid", "hot"]);
        let all = idx.busiest(10);
        assert_eq!(all.len(), 4);
        assert_eq!(all[2].deliveries, 1000);
        assert_eq!(all[0].subscribers, 5);
    }

    #[test]
    fn sublist_keeps_one_inline_and_removes_any() {
        assert!(std::mem::size_of::<SubList>() <= 24);
        let sub = |c| Subscription { channel: c, pos: 0 };
        let mut l = SubList::default();
        l.push(sub(1));
        assert!(matches!(l, SubList::One(_)));
        l.push(sub(2));
        l.push(sub(3));
        assert_eq!(l.remove(2), Some(sub(2)));
        assert_eq!(l.remove(9), None);
        assert_eq!(l.remove(1), Some(sub(1)));
        assert!(matches!(l, SubList::One(_)));
        assert_eq!(l.remove(3), Some(sub(3)));
        assert_eq!(l.len(), 0);
    }
}
