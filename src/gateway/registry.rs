//! One reactor's session registry: socket id → connection and user → connections, for the connections this
//! reactor owns. Nothing here is shared: a user-targeted publish goes to every reactor and each looks in its own
//! registry, a socket-id-targeted one only to the reactor encoded in the id.

use std::collections::HashMap;
use std::rc::Rc;

#[derive(Default)]
pub struct Registry {
    by_sid: HashMap<u64, u32>,
    by_user: HashMap<Rc<str>, UserConns>,
}

/// A user's connections on one reactor; most users have one, kept inline.
enum UserConns {
    One(u32),
    Many(Vec<u32>),
}

impl UserConns {
    fn as_slice(&self) -> &[u32] {
        match self {
            UserConns::One(k) => std::slice::from_ref(k),
            UserConns::Many(v) => v,
        }
    }
}

impl Registry {
    pub fn insert(&mut self, sid: u64, key: u32, user: Option<&Rc<str>>) {
        self.by_sid.insert(sid, key);
        if let Some(user) = user {
            match self.by_user.get_mut(&**user) {
                None => {
                    self.by_user.insert(user.clone(), UserConns::One(key));
                }
                Some(slot) => match slot {
                    UserConns::One(first) => *slot = UserConns::Many(vec![*first, key]),
                    UserConns::Many(v) => v.push(key),
                },
            }
        }
    }

    pub fn remove(&mut self, sid: u64, key: u32, user: Option<&str>) {
        if self.by_sid.get(&sid) == Some(&key) {
            self.by_sid.remove(&sid);
        }
        let Some(conns) = user.and_then(|u| self.by_user.get_mut(u)) else {
            return;
        };
        let emptied = match conns {
            UserConns::One(k) => *k == key,
            UserConns::Many(v) => {
                v.retain(|&k| k != key);
                if let [last] = v[..] {
                    *conns = UserConns::One(last);
                }
                false
            }
        };
        if emptied {
            if let Some(user) = user {
                self.by_user.remove(user);
            }
        }
    }

    pub fn by_sid(&self, sid: u64) -> Option<u32> {
        self.by_sid.get(&sid).copied()
    }

    /// The connections of `user` on this reactor.
    pub fn user_keys(&self, user: &str) -> &[u32] {
        self.by_user.get(user).map_or(&[], UserConns::as_slice)
    }

    pub fn connections(&self) -> usize {
        self.by_sid.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_lookup_remove() {
        let mut r = Registry::default();
        let u: Rc<str> = Rc::from("u1");
        r.insert(10, 1, Some(&u));
        r.insert(11, 2, Some(&u));
        r.insert(12, 3, None);
        r.insert(13, 4, Some(&u));
        assert_eq!(r.by_sid(11), Some(2));
        assert_eq!(r.user_keys("u1"), &[1, 2, 4]);
        r.remove(10, 1, Some("u1"));
        r.remove(13, 4, Some("u1"));
        assert_eq!(r.user_keys("u1"), &[2]);
        r.remove(11, 2, Some("u1"));
        assert!(r.user_keys("u1").is_empty());
        assert_eq!(r.by_sid(10), None);
        assert_eq!(r.connections(), 1);
    }
}
