//! Token buckets, one per caller: each holds up to `burst` requests and refills at `rate`
//! per second. The login form's per-address limit and ingest's per-agent-token limit are
//! both made of these. And counts of what each caller holds open ([`InFlight`]): the
//! server loop's connections per client address, ingest's uploads per agent token. In
//! memory, per server process.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Buckets kept at most; past it, full ones (callers at rest) are forgotten first.
const MAX_ENTRIES: usize = 10_000;

/// Request buckets keyed by caller.
#[derive(Debug)]
pub struct Buckets<K> {
    rate: f64,
    burst: f64,
    map: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq> Buckets<K> {
    /// Buckets of `burst` requests, refilled at `rate` per second.
    pub fn new(rate: f64, burst: f64) -> Buckets<K> {
        Buckets {
            rate,
            burst,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request from `key`'s bucket: `None` when it had one, otherwise the
    /// seconds until it will (for `Retry-After`, at least 1).
    pub fn take(&self, key: K) -> Option<u64> {
        self.take_n(key, 1.0)
    }

    /// Take `n` (samples, say) from `key`'s bucket, all or none: `None` when it had
    /// them, otherwise the seconds until it will (at least 1).
    pub fn take_n(&self, key: K, n: f64) -> Option<u64> {
        let now = Instant::now();
        let (rate, burst) = (self.rate, self.burst);
        let mut m = self.map.lock().expect("bucket lock");
        if m.len() > MAX_ENTRIES {
            m.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = m.entry(key).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= n {
            *tokens -= n;
            None
        } else {
            Some(((n - *tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_its_burst_through_then_its_rate() {
        let b = Buckets::new(2.0, 3.0);
        assert_eq!((b.take("a"), b.take("a"), b.take("a")), (None, None, None));
        // Empty: the next one waits about half a second, told as 1 s.
        assert_eq!(b.take("a"), Some(1));
        // Another caller has its own bucket.
        assert_eq!(b.take("b"), None);
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert_eq!(b.take("a"), None);
        assert_eq!(b.take("a"), Some(1));
    }

    #[test]
    fn a_batch_takes_its_samples_all_or_none() {
        let b = Buckets::new(100.0, 1000.0);
        assert_eq!(b.take_n("a", 800.0), None);
        // 200 left: 500 more wait for 300 to refill (3 s), and take nothing meanwhile.
        assert_eq!(b.take_n("a", 500.0), Some(3));
        assert_eq!(b.take_n("a", 150.0), None);
    }

    #[test]
    fn a_slow_rate_says_how_long_to_wait() {
        let b = Buckets::new(0.1, 1.0);
        assert_eq!(b.take(1), None);
        let wait = b.take(1).unwrap();
        assert!((9..=10).contains(&wait), "{wait}");
    }
}

/// What each caller holds open at once (connections, uploads), up to a cap per caller.
#[derive(Debug)]
pub struct InFlight<K: Hash + Eq + Clone> {
    map: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> Default for InFlight<K> {
    fn default() -> Self {
        InFlight {
            map: Mutex::new(HashMap::new()),
        }
    }
}

/// One thing `key` holds open; given back when dropped.
#[derive(Debug)]
pub struct Held<K: Hash + Eq + Clone> {
    table: Arc<InFlight<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> InFlight<K> {
    /// Count one more for `key`, unless it already holds `max`.
    pub fn take(self: &Arc<Self>, key: K, max: usize) -> Option<Held<K>> {
        let mut m = self.map.lock().expect("in-flight table");
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Held {
            table: self.clone(),
            key,
        })
    }

    /// What `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        self.map
            .lock()
            .expect("in-flight table")
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

impl<K: Hash + Eq + Clone> Drop for Held<K> {
    fn drop(&mut self) {
        let mut m = self.table.map.lock().expect("in-flight table");
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod in_flight_tests {
    use super::*;

    #[test]
    fn a_caller_holds_up_to_its_cap_and_gets_it_back_on_drop() {
        let t: Arc<InFlight<u8>> = Arc::default();
        let a = t.take(1, 2).unwrap();
        let b = t.take(1, 2).unwrap();
        assert!(t.take(1, 2).is_none(), "a third is refused");
        assert!(t.take(2, 2).is_some(), "another caller is not");
        drop(a);
        assert_eq!(t.held(&1), 1);
        let _c = t.take(1, 2).unwrap();
        drop(b);
        assert_eq!(t.held(&1), 1);
        assert_eq!(t.held(&2), 0, "forgotten when nothing is held");
    }
}
