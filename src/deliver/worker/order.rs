//! Per-key order on one process's lane: the events waiting for each ordering key, the first of
//! each (its *head*) the only one scheduled. State exists only for keys with an event pending,
//! so a million keys seen over time cost nothing once their events are delivered; the maps give
//! their memory back as they empty. (With a shared store, Redis keeps this state instead: see
//! the `redis` backend.)

use std::collections::{HashMap, VecDeque};

use uuid::Uuid;

/// The waiting events of each key of a lane.
#[derive(Debug, Default)]
pub(super) struct KeyQueues {
    /// Per key, its pending events in arrival order; the front is the head (scheduled or in
    /// flight), the rest wait for it.
    waiting: HashMap<[u8; 16], VecDeque<Uuid>>,
    /// The key of every event in `waiting`.
    of: HashMap<Uuid, [u8; 16]>,
}

/// Below this many entries a map is never shrunk (reallocating small maps is not worth it).
const SHRINK_FROM: usize = 1024;

impl KeyQueues {
    /// Takes in event `id` of `key`: `true` if it is its key's head now (schedule it), `false`
    /// if it waits behind another (or is known already: never scheduled twice). Ids arrive in
    /// arrival order, except after a restart (then in id order, which is receipt order).
    pub(super) fn admit(&mut self, id: Uuid, key: [u8; 16]) -> bool {
        if self.of.contains_key(&id) {
            return false;
        }
        self.of.insert(id, key);
        let queue = self.waiting.entry(key).or_default();
        queue.push_back(id);
        queue.len() == 1
    }

    /// Event `id` left its lane (delivered, dead-lettered, gone): returns the next event of its
    /// key if `id` was the head and another waits (schedule it now).
    pub(super) fn release(&mut self, id: Uuid) -> Option<Uuid> {
        let key = self.of.remove(&id)?;
        let queue = self.waiting.get_mut(&key)?;
        let was_head = queue.front() == Some(&id);
        if let Some(at) = queue.iter().position(|x| *x == id) {
            queue.remove(at);
        }
        let next = if queue.is_empty() {
            self.waiting.remove(&key);
            None
        } else if was_head {
            queue.front().copied()
        } else {
            None
        };
        self.shrink();
        next
    }

    /// Whether `id` is known and waits behind another event of its key.
    #[cfg(test)]
    pub(super) fn waits(&self, id: Uuid) -> bool {
        self.of
            .get(&id)
            .and_then(|k| self.waiting.get(k))
            .is_some_and(|q| q.front() != Some(&id))
    }

    /// Keys with an event pending.
    pub(super) fn keys(&self) -> usize {
        self.waiting.len()
    }

    /// Gives memory back once the maps are mostly empty (after a burst of distinct keys).
    fn shrink(&mut self) {
        if self.of.capacity() > SHRINK_FROM && self.of.len() < self.of.capacity() / 4 {
            self.of.shrink_to(self.of.len() * 2);
        }
        if self.waiting.capacity() > SHRINK_FROM && self.waiting.len() < self.waiting.capacity() / 4
        {
            self.waiting.shrink_to(self.waiting.len() * 2);
        }
    }

    /// The maps' capacity, in entries (for the memory test).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.of.capacity() + self.waiting.capacity()
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
        assert!(!q.admit(e[0], a), "never scheduled twice");
        assert!(q.waits(e[1]) && q.waits(e[3]) && !q.waits(e[2]));
        assert_eq!(
            q.release(e[0]),
            Some(e[1]),
            "the head leaves: the next goes"
        );
        assert_eq!(q.release(e[3]), None, "a waiting one leaving frees nothing");
        assert_eq!(q.release(e[1]), None, "the last of its key");
        assert_eq!(q.release(e[2]), None);
        assert_eq!(q.release(e[4]), None, "unknown: nothing");
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
            assert!(q.admit(id, i.to_le_bytes()));
            pending.push_back(id);
            // 1,000 pending at a time: the rest delivered.
            if pending.len() > 1000 {
                let done = pending.pop_front().unwrap();
                assert_eq!(q.release(done), None);
            }
            peak = peak.max(q.capacity());
        }
        assert!(
            peak < 20_000,
            "the maps grew to {peak} entries for 1,000 pending"
        );
        while let Some(done) = pending.pop_front() {
            q.release(done);
        }
        assert_eq!(q.keys(), 0);
        assert!(q.capacity() <= 2 * SHRINK_FROM + 64, "{}", q.capacity());
    }
}
