//! Host-level parallelism for batched calls: one work queue, `threads` scoped workers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// `f(i, item)` for every item, on up to `threads` scoped threads pulling from one queue
/// (hosts differ in size, so static splits would leave threads idle). Results keep the
/// input order. With one thread or one item nothing is spawned.
pub fn par_map<T: Send, U: Send>(
    threads: usize,
    items: Vec<T>,
    f: impl Fn(usize, T) -> U + Sync,
) -> Vec<U> {
    let n = items.len();
    let threads = threads.max(1).min(n);
    if threads <= 1 {
        return items
            .into_iter()
            .enumerate()
            .map(|(i, t)| f(i, t))
            .collect();
    }
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let next = AtomicUsize::new(0);
    let parts: Vec<Vec<(usize, U)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let item = slots[i]
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .take()
                            .expect("each slot is taken once");
                        done.push((i, f(i, item)));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut out: Vec<Option<U>> = (0..n).map(|_| None).collect();
    for (i, u) in parts.into_iter().flatten() {
        out[i] = Some(u);
    }
    out.into_iter()
        .map(|u| u.expect("every item mapped"))
        .collect()
}

/// Default host threads: the machine's parallelism.
pub fn available_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_maps_every_item() {
        for threads in [1, 2, 7] {
            let v: Vec<usize> = (0..100).collect();
            let out = par_map(threads, v, |i, x| (i, x * 2));
            assert_eq!(out.len(), 100);
            for (k, (i, y)) in out.into_iter().enumerate() {
                assert_eq!((i, y), (k, 2 * k));
            }
        }
        assert!(par_map(4, Vec::<u8>::new(), |_, x| x).is_empty());
    }
}
