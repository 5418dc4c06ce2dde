//! Models kept resident on the device between scoring runs, by [`ModelKey`].
//!
//! One buffer holds them back to back (each: weights, bias, residual scales). A run places
//! each host's model: a key seen before with the same version, shape and sampled values is
//! used where it is; a new key, a new version or a changed model is (re)uploaded, in place when
//! its size is unchanged; a model without a key goes to a scratch area after the resident
//! ones, for this run only. The cache is only a cache: the caller passes every model with every
//! run, so when the buffer must grow beyond twice what the run's own models need, the cache
//! forgets everything and places the run's models afresh (stale hosts do not pile up).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::backend::{ModelKey, StreamModel};

/// Hashes a host key with the splitmix64 finalizer: a run places every host of the fleet, and
/// the standard SipHash cost about 0.1 ms of a 1,250-host run.
#[derive(Default)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// A cheap fingerprint of a model: its shape, clip and moving-average weight, and eight
/// sampled values. It catches a model that changed without a new version in almost every
/// case; the version is the contract.
pub(super) fn fingerprint(m: &StreamModel<'_>) -> u64 {
    let w = m.weights.weights;
    let b = m.weights.bias;
    let s = m.inv_scale;
    let pick = |v: &[f32], k: usize| -> u32 {
        if v.is_empty() {
            0
        } else {
            v[(v.len() - 1) * k / 3].to_bits()
        }
    };
    let parts = [
        w.len() as u64,
        b.len() as u64,
        m.clip.to_bits() as u64,
        m.alpha.to_bits() as u64,
        pick(w, 0) as u64,
        pick(w, 1) as u64,
        pick(w, 2) as u64,
        pick(w, 3) as u64,
        pick(b, 0) as u64,
        pick(b, 3) as u64,
        pick(s, 0) as u64,
        pick(s, 3) as u64,
    ];
    // FNV-1a over the words.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        h = (h ^ p).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    version: u64,
    fp: u64,
    /// Floats from the buffer's start, and length in floats.
    off: u64,
    len: u64,
    /// The last run that placed it.
    run: u64,
}

/// One host's model this run: where it is (floats), and whether this run uploads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Place {
    pub(super) off: u64,
    pub(super) upload: bool,
}

/// What a run must do to the buffer before its uploads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Placed {
    /// Floats the run needs in the buffer (resident models and this run's scratch).
    pub(super) need: u64,
    /// Floats of resident models to keep when the buffer grows (0: nothing to keep).
    pub(super) keep: u64,
}

/// The resident models' placement; the device buffer lives beside it.
#[derive(Default)]
pub(super) struct ModelCache {
    map: KeyMap<Entry>,
    /// Runs placed so far.
    run: u64,
    /// Floats used by resident models.
    used: u64,
    pub(super) buf: Option<wgpu::Buffer>,
    /// Buffer size in bytes.
    pub(super) size: u64,
}

impl ModelCache {
    /// Place the models of one run: `(key, floats, fingerprint)` per host, in order.
    pub(super) fn place(
        &mut self,
        models: &[(Option<ModelKey>, u64, u64)],
    ) -> (Vec<Place>, Placed) {
        let run: u64 = models.iter().map(|m| m.1).sum();
        let fresh: u64 = models
            .iter()
            .map(
                |&(key, len, _)| match key.and_then(|k| self.map.get(&k.host)) {
                    Some(e) if e.len == len => 0,
                    _ => len,
                },
            )
            .sum();
        // Forget everything when the buffer must grow and would then hold more than the run's
        // own models (hosts that are gone, models of old sizes).
        if self.used + fresh > self.size / 4 && self.used + fresh > run {
            self.clear();
        }
        let keep = self.used;
        self.run += 1;
        let run = self.run;
        let mut places = Vec::with_capacity(models.len());
        let mut scratch_at = 0u64;
        let mut late_scratch = Vec::new();
        let scratch = Place {
            off: 0,
            upload: true,
        };
        for (i, &(key, len, fp)) in models.iter().enumerate() {
            let Some(key) = key else {
                late_scratch.push(i);
                places.push(scratch);
                continue;
            };
            let place = match self.map.get_mut(&key.host) {
                // The same host twice in one run: where the first is, if it is the same model;
                // scratch for another.
                Some(e) if e.run == run => {
                    if e.version != key.version || e.fp != fp || e.len != len {
                        late_scratch.push(i);
                        scratch
                    } else {
                        Place {
                            off: e.off,
                            upload: false,
                        }
                    }
                }
                Some(e) if e.len == len => {
                    let upload = e.version != key.version || e.fp != fp;
                    e.version = key.version;
                    e.fp = fp;
                    e.run = run;
                    Place { off: e.off, upload }
                }
                _ => {
                    let off = self.used;
                    self.used += len;
                    self.map.insert(
                        key.host,
                        Entry {
                            version: key.version,
                            fp,
                            off,
                            len,
                            run,
                        },
                    );
                    Place { off, upload: true }
                }
            };
            places.push(place);
        }
        for i in late_scratch {
            places[i].off = self.used + scratch_at;
            scratch_at += models[i].1;
        }
        let need = self.used + scratch_at;
        (places, Placed { need, keep })
    }

    /// Forget every resident model (after a failed run, whose uploads may not have landed).
    pub(super) fn clear(&mut self) {
        self.map.clear();
        self.used = 0;
    }

    /// Resident models.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(host: u64, version: u64) -> Option<ModelKey> {
        Some(ModelKey { host, version })
    }

    #[test]
    fn resident_models_are_placed_once_and_replaced_by_a_new_version() {
        let mut c = ModelCache::default();
        let run = [(key(1, 1), 10, 7), (key(2, 1), 10, 8), (None, 5, 9)];
        let (p, placed) = c.place(&run);
        assert_eq!(
            p,
            vec![
                Place {
                    off: 0,
                    upload: true
                },
                Place {
                    off: 10,
                    upload: true
                },
                Place {
                    off: 20,
                    upload: true
                },
            ]
        );
        assert_eq!(placed, Placed { need: 25, keep: 0 });
        c.size = 25 * 4;
        // The same models again: nothing to upload but the keyless one.
        let (p, placed) = c.place(&run);
        assert!(!p[0].upload && !p[1].upload && p[2].upload);
        assert_eq!(placed, Placed { need: 25, keep: 20 });
        // Host 2 retrained (same size): uploaded in place; a changed fingerprint too.
        let (p, _) = c.place(&[(key(1, 1), 10, 70), (key(2, 2), 10, 8)]);
        assert_eq!(
            p[0],
            Place {
                off: 0,
                upload: true
            }
        );
        assert_eq!(
            p[1],
            Place {
                off: 10,
                upload: true
            }
        );
        // A new size gets a new slot (the buffer has room: nothing is forgotten).
        c.size = 1000;
        let (p, placed) = c.place(&[(key(1, 1), 12, 70)]);
        assert_eq!(
            p[0],
            Place {
                off: 20,
                upload: true
            }
        );
        assert_eq!(placed.need, 32);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_cache_that_would_outgrow_the_run_starts_afresh() {
        let mut c = ModelCache::default();
        let first: Vec<_> = (0..10).map(|h| (key(h, 1), 10, h)).collect();
        c.place(&first);
        c.size = 100 * 4;
        // Ten other hosts: the buffer would hold 200 floats for a run that needs 100.
        let other: Vec<_> = (10..20).map(|h| (key(h, 1), 10, h)).collect();
        let (p, placed) = c.place(&other);
        assert_eq!(placed, Placed { need: 100, keep: 0 });
        assert_eq!(
            p[0],
            Place {
                off: 0,
                upload: true
            }
        );
        assert_eq!(c.len(), 10);
        // A duplicate host with another model in one run goes to scratch.
        let (p, _) = c.place(&[(key(10, 1), 10, 10), (key(10, 2), 10, 11)]);
        assert_eq!(
            p[0],
            Place {
                off: 0,
                upload: false
            }
        );
        assert_eq!(
            p[1],
            Place {
                off: 100,
                upload: true
            }
        );
    }
}
