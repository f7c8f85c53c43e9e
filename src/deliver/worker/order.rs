//! Per-key order on one process's lane: the events waiting for each ordering key, the first of
//! each (its *head*) the only one scheduled. State exists only for keys with an event pending,
//! so a million keys seen over time cost nothing once their events are delivered, and the map
//! gives its memory back as it empties. A key with one event pending (the usual case) costs one
//! map entry and no allocation of its own (`benches/order_keys.rs` measures it). With a shared
//! store, Redis keeps this state instead: see the `redis` backend.

use std::collections::{HashMap, VecDeque};

use uuid::Uuid;

/// The events of one key, in arrival order; the first is the head (scheduled or in flight).
#[derive(Debug)]
enum Waiting {
    /// The head alone.
    One(Uuid),
    /// The head and the events behind it.
    Many(VecDeque<Uuid>),
}

impl Waiting {
    fn head(&self) -> Option<Uuid> {
        match self {
            Waiting::One(id) => Some(*id),
            Waiting::Many(q) => q.front().copied(),
        }
    }
}

/// The waiting events of each key of a lane.
#[derive(Debug, Default)]
pub(super) struct KeyQueues {
    waiting: HashMap<[u8; 16], Waiting>,
}

/// Below this many entries the map is never shrunk (reallocating a small map is not worth it).
const SHRINK_FROM: usize = 1024;

impl KeyQueues {
    /// Takes in event `id` of `key`: `true` if it is its key's head now (schedule it), `false`
    /// if it waits behind another. Ids arrive in arrival order, except after a restart (then in
    /// id order, which is receipt order). An id is taken in once (the same id twice in a row is
    /// ignored).
    pub(super) fn admit(&mut self, id: Uuid, key: [u8; 16]) -> bool {
        match self.waiting.get_mut(&key) {
            None => {
                self.waiting.insert(key, Waiting::One(id));
                true
            }
            Some(Waiting::One(head)) => {
                if *head != id {
                    let head = *head;
                    self.waiting
                        .insert(key, Waiting::Many(VecDeque::from([head, id])));
                }
                false
            }
            Some(Waiting::Many(q)) => {
                if q.back() != Some(&id) {
                    q.push_back(id);
                }
                false
            }
        }
    }

    /// Event `id` (of `key`, if known) left its lane (delivered, dead-lettered, gone): returns
    /// the next event of its key if `id` was the head and another waits (schedule it now).
    /// Without the key (an event that could not be read), every key's head is looked at.
    pub(super) fn release(&mut self, id: Uuid, key: Option<[u8; 16]>) -> Option<Uuid> {
        let key = match key {
            Some(k) => k,
            None => *self
                .waiting
                .iter()
                .find(|(_, w)| w.head() == Some(id))
                .map(|(k, _)| k)?,
        };
        let waiting = self.waiting.get_mut(&key)?;
        let next = match waiting {
            Waiting::One(head) if *head == id => {
                self.waiting.remove(&key);
                None
            }
            Waiting::One(_) => None,
            Waiting::Many(q) => {
                let was_head = q.front() == Some(&id);
                if let Some(at) = q.iter().position(|x| *x == id) {
                    q.remove(at);
                }
                let next = if was_head { q.front().copied() } else { None };
                match q.len() {
                    0 => {
                        self.waiting.remove(&key);
                    }
                    1 => {
                        let only = q[0];
                        *waiting = Waiting::One(only);
                    }
                    _ => {}
                }
                next
            }
        };
        self.shrink();
        next
    }

    /// Whether `id` is known and waits behind another event of its key.
    #[cfg(test)]
    pub(super) fn waits(&self, id: Uuid, key: [u8; 16]) -> bool {
        match self.waiting.get(&key) {
            Some(Waiting::Many(q)) => q.front() != Some(&id) && q.contains(&id),
            _ => false,
        }
    }

    /// Keys with an event pending.
    pub(super) fn keys(&self) -> usize {
        self.waiting.len()
    }

    /// Gives memory back once the map is mostly empty (after a burst of distinct keys).
    fn shrink(&mut self) {
        let w = &mut self.waiting;
        if w.capacity() > SHRINK_FROM && w.len() < w.capacity() / 4 {
            w.shrink_to(w.len() * 2);
        }
    }

    /// The map's capacity, in entries (for the memory test).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.waiting.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::now_v7()).collect()
    }

    #[test]
    fn one_head_per_key_and_the_next_when_it_leaves() {
        let mut q = KeyQueues::default();
        let e = ids(5);
        let (a, b) = ([1; 16], [2; 16]);
        assert!(q.admit(e[0], a), "first of a: head");
        assert!(!q.admit(e[1], a), "second of a waits");
        assert!(q.admit(e[2], b), "another key is not held back");
        assert!(!q.admit(e[3], a));
        assert!(!q.admit(e[3], a), "taken in once");
        assert!(q.waits(e[1], a) && q.waits(e[3], a) && !q.waits(e[2], b));
        assert_eq!(
            q.release(e[0], Some(a)),
            Some(e[1]),
            "the head leaves: the next goes"
        );
        assert_eq!(
            q.release(e[3], Some(a)),
            None,
            "a waiting one leaving frees nothing"
        );
        assert_eq!(
            q.release(e[1], None),
            None,
            "found by its id: the last of its key"
        );
        assert_eq!(q.release(e[2], Some(b)), None);
        assert_eq!(q.release(e[4], None), None, "unknown: nothing");
        assert_eq!(q.keys(), 0);
    }

    /// A million distinct keys through the lane: the state follows what is pending, and is
    /// given back once it is delivered.
    #[test]
    fn a_million_keys_leave_no_state_behind() {
        let mut q = KeyQueues::default();
        let mut pending = std::collections::VecDeque::new();
        let mut peak = 0;
        for i in 0..1_000_000u128 {
            let id = Uuid::from_u128(i + 1);
            let key = i.to_le_bytes();
            assert!(q.admit(id, key));
            pending.push_back((id, key));
            // 1,000 pending at a time: the rest delivered.
            if pending.len() > 1000 {
                let (done, key) = pending.pop_front().unwrap();
                assert_eq!(q.release(done, Some(key)), None);
            }
            peak = peak.max(q.capacity());
        }
        assert!(
            peak < 10_000,
            "the map grew to {peak} entries for 1,000 pending"
        );
        while let Some((done, key)) = pending.pop_front() {
            q.release(done, Some(key));
        }
        assert_eq!(q.keys(), 0);
        assert!(q.capacity() <= 2 * SHRINK_FROM + 64, "{}", q.capacity());
    }
}
