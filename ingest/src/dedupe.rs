use std::collections::{HashSet, VecDeque};

/// The most recent event ids of one partition, oldest evicted first.
#[derive(Debug, Default)]
pub(crate) struct DedupeWindow {
    capacity: usize,
    set: HashSet<u128>,
    order: VecDeque<u128>,
}

impl DedupeWindow {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            set: HashSet::with_capacity(capacity.min(1 << 20)),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn contains(&self, id: u128) -> bool {
        self.set.contains(&id)
    }

    pub(crate) fn insert(&mut self, id: u128) {
        if self.capacity == 0 || !self.set.insert(id) {
            return;
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

/// A UUID string as a number; `None` if it is not one (validation has already rejected those).
pub(crate) fn uuid_key(s: &str) -> Option<u128> {
    let mut v: u128 = 0;
    let mut digits = 0;
    for c in s.bytes() {
        if c == b'-' {
            continue;
        }
        v = (v << 4) | (c as char).to_digit(16)? as u128;
        digits += 1;
    }
    (digits == 32).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest() {
        let mut w = DedupeWindow::new(2);
        w.insert(1);
        w.insert(2);
        w.insert(2);
        assert_eq!(w.len(), 2);
        w.insert(3);
        assert!(!w.contains(1) && w.contains(2) && w.contains(3));
    }

    #[test]
    fn uuid_keys() {
        let a = uuid_key("0b7f3c1e-8a8e-4f5e-9a51-3f0c2b0d9e11").unwrap();
        let b = uuid_key("0B7F3C1E-8A8E-4F5E-9A51-3F0C2B0D9E11").unwrap();
        assert_eq!(a, b);
        assert_eq!(uuid_key("nope"), None);
    }
}
