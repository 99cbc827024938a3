//! A hashed timer wheel with one-second ticks and links stored inside the connections (no allocation, O(1)
//! schedule and cancel, no syscall per connection). Expiry is lazy: an entry fires at its deadline, and the
//! reactor decides from the connection's state whether anything is due (a ping, a close) and reschedules.

use slab::Slab;

const SLOTS: usize = 64;
const NIL: u32 = u32::MAX;
const UNLINKED: u16 = u16::MAX;

/// The wheel's links inside a connection.
#[derive(Debug, Clone, Copy)]
pub struct TimerLink {
    prev: u32,
    next: u32,
    slot: u16,
    /// Second (reactor clock) at which the entry fires.
    pub deadline: u32,
}

impl Default for TimerLink {
    fn default() -> Self {
        TimerLink {
            prev: NIL,
            next: NIL,
            slot: UNLINKED,
            deadline: 0,
        }
    }
}

pub trait Timed {
    fn link(&mut self) -> &mut TimerLink;
}

pub struct TimerWheel {
    heads: [u32; SLOTS],
    /// Next second to process.
    cursor: u32,
}

impl TimerWheel {
    pub fn new(now: u32) -> Self {
        TimerWheel {
            heads: [NIL; SLOTS],
            cursor: now,
        }
    }

    /// (Re)schedules `key` to fire at `deadline` (a past deadline fires on the next expiry).
    pub fn schedule<T: Timed>(&mut self, items: &mut Slab<T>, key: usize, deadline: u32) {
        self.cancel(items, key);
        let slot = (deadline.max(self.cursor) as usize) % SLOTS;
        let head = self.heads[slot];
        {
            let link = items[key].link();
            link.deadline = deadline;
            link.slot = slot as u16;
            link.prev = NIL;
            link.next = head;
        }
        if head != NIL {
            items[head as usize].link().prev = key as u32;
        }
        self.heads[slot] = key as u32;
    }

    pub fn cancel<T: Timed>(&mut self, items: &mut Slab<T>, key: usize) {
        let TimerLink {
            prev, next, slot, ..
        } = *items[key].link();
        if slot == UNLINKED {
            return;
        }
        if prev == NIL {
            self.heads[slot as usize] = next;
        } else {
            items[prev as usize].link().next = next;
        }
        if next != NIL {
            items[next as usize].link().prev = prev;
        }
        let link = items[key].link();
        link.prev = NIL;
        link.next = NIL;
        link.slot = UNLINKED;
    }

    /// Unlinks every entry whose deadline is ≤ `now` into `due`; later entries stay.
    pub fn expire<T: Timed>(&mut self, items: &mut Slab<T>, now: u32, due: &mut Vec<usize>) {
        // After a long stall one pass over the wheel covers everything.
        let end = now.min(self.cursor.saturating_add(SLOTS as u32 - 1));
        while self.cursor <= end {
            let slot = self.cursor as usize % SLOTS;
            let mut key = self.heads[slot];
            while key != NIL {
                let link = *items[key as usize].link();
                if link.deadline <= now {
                    self.cancel(items, key as usize);
                    due.push(key as usize);
                }
                key = link.next;
            }
            self.cursor += 1;
        }
        self.cursor = self.cursor.max(now + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Item(TimerLink);
    impl Timed for Item {
        fn link(&mut self) -> &mut TimerLink {
            &mut self.0
        }
    }

    #[test]
    fn fires_at_deadline_and_not_before_even_a_round_later() {
        let mut items: Slab<Item> = Slab::new();
        let a = items.insert(Item::default());
        let b = items.insert(Item::default());
        let c = items.insert(Item::default());
        let mut w = TimerWheel::new(10);
        w.schedule(&mut items, a, 12);
        w.schedule(&mut items, b, 12 + SLOTS as u32); // same slot, next round
        w.schedule(&mut items, c, 15);
        w.cancel(&mut items, c);
        let mut due = Vec::new();
        w.expire(&mut items, 11, &mut due);
        assert!(due.is_empty());
        w.expire(&mut items, 20, &mut due);
        assert_eq!(due, vec![a]);
        due.clear();
        w.expire(&mut items, 12 + SLOTS as u32, &mut due);
        assert_eq!(due, vec![b]);
    }

    #[test]
    fn reschedule_moves_the_entry() {
        let mut items: Slab<Item> = Slab::new();
        let a = items.insert(Item::default());
        let mut w = TimerWheel::new(0);
        w.schedule(&mut items, a, 3);
        w.schedule(&mut items, a, 30);
        let mut due = Vec::new();
        w.expire(&mut items, 10, &mut due);
        assert!(due.is_empty());
        w.expire(&mut items, 30, &mut due);
        assert_eq!(due, vec![a]);
    }
}
