//! Host-level parallelism for batched calls: one work queue, `threads` workers of a persistent
//! pool.
//!
//! Spawning and joining 16 scoped threads costs 0.2–0.5 ms, which was most of a once-a-minute
//! scoring run of 1,250 hosts at 16 threads (5.0 ms measured on the H200 machine's host, 1.7 ms
//! here with 2 threads). The pool's workers are started once and parked between calls; a
//! call wakes as many as it asks for. A call made while the pool is busy (from another thread,
//! or nested inside a pool task) falls back to scoped threads, so the pool never deadlocks.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

/// Most pool workers ever started (calls asking for more use scoped threads for the rest).
const MAX_WORKERS: usize = 255;

/// `f(i, item)` for every item, on up to `threads` threads (the caller and pool workers)
/// pulling from one queue (hosts differ in size, so static splits would leave threads idle).
/// Results keep the input order. With one thread or one item everything runs on the caller.
/// A panic in `f` is re-raised on the caller after every worker has stopped.
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
    let outs: Vec<Mutex<Option<U>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        let item = relock(&slots[i]).take().expect("each slot is taken once");
        let u = f(i, item);
        *relock(&outs[i]) = Some(u);
    };
    run_on(threads, &work);
    outs.into_iter()
        .map(|u| {
            u.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every item mapped")
        })
        .collect()
}

/// Run `work` on the caller and `threads − 1` other threads; return when all have returned.
fn run_on(threads: usize, work: &(dyn Fn() + Sync)) {
    let pool = pool();
    if pool
        .busy
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        // Released on return and on a re-raised panic alike.
        struct Release(&'static AtomicBool);
        impl Drop for Release {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _release = Release(&pool.busy);
        pool.run(threads - 1, work);
    } else {
        std::thread::scope(|s| {
            let hs: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
            work();
            for h in hs {
                if let Err(p) = h.join() {
                    std::panic::resume_unwind(p);
                }
            }
        });
    }
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The work of the running call, its lifetime erased (see [`Pool::run`] for why that is sound).
#[derive(Clone, Copy)]
struct Task(&'static (dyn Fn() + Sync));

struct State {
    task: Option<Task>,
    /// Workers the running call may still take.
    seats: usize,
    /// Workers inside the task now.
    active: usize,
    /// Started workers.
    workers: usize,
    /// Bumped by every call, so a worker joins each call at most once.
    epoch: u64,
    panic: Option<Box<dyn Any + Send>>,
}

struct Pool {
    busy: AtomicBool,
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        busy: AtomicBool::new(false),
        state: Mutex::new(State {
            task: None,
            seats: 0,
            active: 0,
            workers: 0,
            epoch: 0,
            panic: None,
        }),
        wake: Condvar::new(),
        done: Condvar::new(),
    })
}

impl Pool {
    /// Run `work` on the caller and up to `helpers` workers. The caller holds `busy`.
    fn run(&'static self, helpers: usize, work: &(dyn Fn() + Sync)) {
        // SAFETY: the erased reference is published in `state.task` below and withdrawn
        // (under the same lock) before this function returns; workers only call it after
        // taking a seat under that lock, and this function waits until no worker is inside
        // (`active == 0`). So no worker uses `work` after it goes out of scope.
        let task = Task(unsafe {
            std::mem::transmute::<&(dyn Fn() + Sync), &'static (dyn Fn() + Sync)>(work)
        });
        let helpers = helpers.min(MAX_WORKERS);
        {
            let mut st = relock(&self.state);
            while st.workers < helpers {
                st.workers += 1;
                let spawned = std::thread::Builder::new()
                    .name("anomaly-pool".into())
                    .spawn(move || self.worker());
                if spawned.is_err() {
                    st.workers -= 1;
                    break;
                }
            }
            st.task = Some(task);
            st.seats = helpers;
            st.epoch += 1;
        }
        self.wake.notify_all();
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let mut st = relock(&self.state);
        st.task = None;
        st.seats = 0;
        while st.active > 0 {
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let theirs = st.panic.take();
        drop(st);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if let Some(p) = theirs {
            std::panic::resume_unwind(p);
        }
    }

    fn worker(&'static self) {
        let mut seen = 0u64;
        let mut st = relock(&self.state);
        loop {
            if st.epoch != seen && st.seats > 0 {
                if let Some(task) = st.task {
                    seen = st.epoch;
                    st.seats -= 1;
                    st.active += 1;
                    drop(st);
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task.0));
                    st = relock(&self.state);
                    if let Err(p) = r {
                        st.panic.get_or_insert(p);
                    }
                    st.active -= 1;
                    if st.active == 0 {
                        self.done.notify_all();
                    }
                    continue;
                }
            }
            st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
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

    #[test]
    fn nested_and_concurrent_calls_finish() {
        // A call inside a pool task finds the pool busy and uses scoped threads.
        let out = par_map(3, (0..6).collect::<Vec<usize>>(), |_, x| {
            par_map(3, (0..10).collect::<Vec<usize>>(), |_, y| x * y)
                .into_iter()
                .sum::<usize>()
        });
        assert_eq!(out, (0..6).map(|x| 45 * x).collect::<Vec<_>>());
        std::thread::scope(|s| {
            for k in 0..4 {
                s.spawn(move || {
                    for _ in 0..50 {
                        let v = par_map(4, (0..64).collect::<Vec<usize>>(), |_, x| x + k);
                        assert_eq!(v[63], 63 + k);
                    }
                });
            }
        });
    }

    #[test]
    fn a_panic_reaches_the_caller_and_the_pool_keeps_working() {
        let r = std::panic::catch_unwind(|| {
            par_map(4, (0..32).collect::<Vec<usize>>(), |_, x| {
                assert!(x != 17, "item 17");
                x
            })
        });
        assert!(r.is_err());
        let v = par_map(4, (0..32).collect::<Vec<usize>>(), |_, x| x);
        assert_eq!(v.len(), 32);
    }
}
