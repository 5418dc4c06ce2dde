//! The agent pipeline: a collector thread samples every interval and hands batches to
//! the async shipper; hardware events take the fast lane (shipped at once).

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, Utc};
use tokio::sync::{mpsc, watch};

use super::shipper::Shipper;
use super::{Collected, Source};
use crate::model::{Batch, HostInfo};

/// Timing of one agent.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub interval: Duration,
    pub ship_interval: Duration,
}

/// Run an agent until `shutdown` turns true; then flush what was collected (deliver
/// or spool) and return the shipper. On shutdown the collector stops at once, and a
/// request in flight gets [`SHUTDOWN_GRACE`](super::shipper::SHUTDOWN_GRACE) to finish
/// before its batch is spooled. A collector that panics is an error (the caller exits
/// non-zero, so a supervisor restarts the agent); what it had handed over is delivered
/// or spooled first.
pub async fn run(
    identity: HostInfo,
    sources: Vec<Box<dyn Source>>,
    mut shipper: Shipper,
    timing: Timing,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Shipper> {
    let (tx, mut rx) = mpsc::channel::<Batch>(64);
    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    let names: Vec<&str> = sources.iter().map(|s| s.name()).collect();
    tracing::info!(host = %identity.name, sources = ?names, interval_s = timing.interval.as_secs_f64(), "agent started");
    let collector = std::thread::Builder::new()
        .name(format!("collect-{}", identity.name))
        .spawn(move || collect_loop(identity, sources, timing, &tx, &stop_rx))
        .expect("spawning the collector thread");
    // The collector stops sampling the moment shutdown is asked for, even while the
    // loop below waits on the server.
    let mut stop_signal = shutdown.clone();
    let stopper = tokio::spawn(async move {
        let _ = stop_signal.wait_for(|s| *s).await;
        let _ = stop_tx.send(());
    });
    shipper.stop_on(shutdown.clone());
    loop {
        let stopping = *shutdown.borrow();
        // New batches first; a spool being replayed goes on at once between them (a
        // replay runs in slices), and is retried every 500 ms while it has to wait.
        let replay_in = if shipper.replay_now() {
            Duration::ZERO
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            biased;
            b = rx.recv() => match b {
                Some(b) => shipper.ship(b).await,
                None => break,
            },
            _ = tokio::time::sleep(replay_in), if shipper.pending() && !stopping => {
                shipper.drain().await;
            }
        }
    }
    stopper.abort();
    match tokio::task::spawn_blocking(move || collector.join()).await {
        Ok(Ok(())) => Ok(shipper),
        Ok(Err(panic)) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            anyhow::bail!(
                "the collector stopped with a panic ({why}); what it collected before is delivered or in the spool ({} batches)",
                shipper.spool.len()
            )
        }
        Err(e) => anyhow::bail!("waiting for the collector: {e}"),
    }
}

/// A source on its own thread: the collector asks it for a round and waits for its
/// answer only until the round's deadline, so one source that hangs (an NVML call stuck
/// in the driver, `statvfs` on a dead NFS mount) stalls itself, not the others.
struct Worker {
    name: &'static str,
    ask: Option<std_mpsc::Sender<DateTime<Utc>>>,
    answers: std_mpsc::Receiver<std::thread::Result<Collected>>,
    /// When the round it is working on was asked for (None: idle).
    busy_since: Option<Instant>,
    /// Whether it has missed a round's deadline and not answered since (logged once).
    stalled: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn spawn(host: &str, mut source: Box<dyn Source>) -> Worker {
        let name = source.name();
        let (ask, asked) = std_mpsc::channel::<DateTime<Utc>>();
        let (answer, answers) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{host}"))
            .spawn(move || {
                for now in asked {
                    let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let mut c = Collected::default();
                        source.collect(now, &mut c);
                        c
                    }));
                    let panicked = round.is_err();
                    if answer.send(round).is_err() || panicked {
                        return;
                    }
                }
            })
            .expect("spawning a source thread");
        Worker {
            name,
            ask: Some(ask),
            answers,
            busy_since: None,
            stalled: false,
            thread: Some(thread),
        }
    }

    /// Ask for a round stamped `now`, unless the last one is still running; whether it
    /// was asked.
    fn ask(&mut self, now: DateTime<Utc>) -> bool {
        if self.busy_since.is_some() {
            return false;
        }
        let Some(ask) = &self.ask else { return false };
        if ask.send(now).is_ok() {
            self.busy_since = Some(Instant::now());
            true
        } else {
            self.ask = None;
            false
        }
    }

    /// Its answer, if it comes before `deadline`. A panic in the source is handed back
    /// to be resumed. A source is asked again only once it has answered (its late round
    /// is kept: its samples carry their own times); one busy for `stall` or longer is
    /// logged, once.
    fn answer(
        &mut self,
        deadline: Instant,
        stall: Duration,
    ) -> Option<std::thread::Result<Collected>> {
        let since = self.busy_since?;
        match self
            .answers
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(round) => {
                if self.stalled {
                    tracing::info!(
                        source = self.name,
                        took_s = since.elapsed().as_secs_f64(),
                        "source answers again; its late round is kept"
                    );
                    self.stalled = false;
                }
                self.busy_since = None;
                Some(round)
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                if !self.stalled && since.elapsed() >= stall {
                    tracing::warn!(
                        source = self.name,
                        waited_s = since.elapsed().as_secs_f64(),
                        "source has not answered its round; the others go on without it until it does"
                    );
                    self.stalled = true;
                }
                None
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                tracing::error!(
                    source = self.name,
                    "source thread ended; it is no longer collected"
                );
                self.busy_since = None;
                self.ask = None;
                None
            }
        }
    }
}

fn collect_loop(
    identity: HostInfo,
    sources: Vec<Box<dyn Source>>,
    timing: Timing,
    tx: &mpsc::Sender<Batch>,
    stop: &std_mpsc::Receiver<()>,
) {
    let fresh = || Batch {
        host: identity.clone(),
        ..Default::default()
    };
    let mut workers: Vec<Worker> = sources
        .into_iter()
        .map(|s| Worker::spawn(&identity.name, s))
        .collect();
    let mut pending = fresh();
    let mut next_tick = Instant::now();
    let mut next_ship = Instant::now() + timing.ship_interval;
    loop {
        match stop.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = Utc::now()
            .duration_trunc(chrono::Duration::milliseconds(1))
            .unwrap_or_else(|_| Utc::now());
        // Sources are asked one after another, in their order (the kernel log names GPUs
        // by what NVML found before it), and a round waits for them at most one interval
        // in all. A source still on an earlier round is only looked at.
        let deadline = Instant::now() + timing.interval;
        let mut urgent = false;
        for w in workers.iter_mut() {
            // One asked after a hung one used the round up still gets a quarter interval.
            let wait_until = if w.ask(now) {
                deadline.max(Instant::now() + timing.interval / 4)
            } else {
                Instant::now()
            };
            match w.answer(wait_until, timing.interval) {
                Some(Ok(c)) => {
                    urgent |= !c.events.is_empty();
                    pending.host_samples.extend(c.host_samples);
                    pending.gpu_samples.extend(c.gpu_samples);
                    pending.events.extend(c.events);
                    if !c.gpus.is_empty() {
                        pending.gpus = c.gpus;
                    }
                }
                Some(Err(panic)) => {
                    // Hand over what earlier rounds collected, then end as the panic did.
                    if !pending.is_empty() {
                        let _ = tx.blocking_send(pending);
                    }
                    std::panic::resume_unwind(panic);
                }
                None => {}
            }
        }
        next_tick += timing.interval;
        let now = Instant::now();
        if next_tick + timing.interval < now {
            // Fell behind by whole ticks (suspended, overloaded): skip them rather than
            // burst. A round that only ran long (a source that just stalled took its
            // interval) is followed by the next one at once, so the others lose no sample.
            next_tick = now + timing.interval;
        }
        if urgent || Instant::now() >= next_ship {
            if tx
                .blocking_send(std::mem::replace(&mut pending, fresh()))
                .is_err()
            {
                return;
            }
            next_ship = Instant::now() + timing.ship_interval;
        }
    }
    // Stopping: a round still running gets up to one interval (2 s at most) to finish
    // and is kept; then the idle sources end on their threads (NVML shuts down there),
    // and a source stuck longer is left behind (its thread ends with the process).
    let deadline = Instant::now() + timing.interval.min(Duration::from_secs(2));
    for w in workers.iter_mut() {
        let until = if w.stalled { Instant::now() } else { deadline };
        if let Some(Ok(c)) = w.answer(until, timing.interval) {
            pending.host_samples.extend(c.host_samples);
            pending.gpu_samples.extend(c.gpu_samples);
            pending.events.extend(c.events);
        }
        w.ask = None;
    }
    for w in workers.iter_mut().filter(|w| w.busy_since.is_none()) {
        if let Some(t) = w.thread.take() {
            let _ = t.join();
        }
    }
    if !pending.is_empty() {
        let _ = tx.blocking_send(pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GpuSample, HostSample};
    use std::sync::{Arc, Mutex};

    /// A host sample every round.
    struct Ticker;
    impl Source for Ticker {
        fn name(&self) -> &'static str {
            "ticker"
        }
        fn collect(&mut self, now: DateTime<Utc>, out: &mut Collected) {
            out.host_samples.push(HostSample {
                ts: now,
                ..Default::default()
            });
        }
    }

    /// A GPU sample every round; its second round hangs until the test lets it go (a
    /// driver call stuck in the kernel).
    struct Stuck {
        rounds: u32,
        release: Arc<Mutex<Option<std_mpsc::Receiver<()>>>>,
    }
    impl Source for Stuck {
        fn name(&self) -> &'static str {
            "stuck"
        }
        fn collect(&mut self, now: DateTime<Utc>, out: &mut Collected) {
            self.rounds += 1;
            if self.rounds == 2 {
                if let Some(r) = self.release.lock().unwrap().take() {
                    let _ = r.recv();
                }
            }
            out.gpu_samples.push(GpuSample {
                ts: now,
                ..Default::default()
            });
        }
    }

    #[test]
    fn a_hung_source_stalls_itself_not_the_others_and_its_late_round_is_kept() {
        let (release_tx, release_rx) = std_mpsc::channel();
        let sources: Vec<Box<dyn Source>> = vec![
            Box::new(Stuck {
                rounds: 0,
                release: Arc::new(Mutex::new(Some(release_rx))),
            }),
            Box::new(Ticker),
        ];
        let (tx, mut rx) = mpsc::channel::<Batch>(1024);
        let (stop_tx, stop_rx) = std_mpsc::channel();
        let timing = Timing {
            interval: Duration::from_millis(50),
            ship_interval: Duration::from_millis(50),
        };
        let collector = std::thread::spawn(move || {
            collect_loop(HostInfo::default(), sources, timing, &tx, &stop_rx)
        });
        let drain = |rx: &mut mpsc::Receiver<Batch>| {
            let mut b = Batch::default();
            while let Ok(x) = rx.try_recv() {
                b.host_samples.extend(x.host_samples);
                b.gpu_samples.extend(x.gpu_samples);
            }
            b
        };
        // A second of the stuck source hanging: the ticker goes on about once per
        // interval, the stuck source answered its first round only.
        std::thread::sleep(Duration::from_millis(1000));
        let during = drain(&mut rx);
        assert!(
            during.host_samples.len() >= 10,
            "{} ticker rounds in a second",
            during.host_samples.len()
        );
        assert_eq!(during.gpu_samples.len(), 1);
        // Let it go: its hung round arrives, stamped when it was asked for, and rounds
        // resume.
        release_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stop_tx.send(()).unwrap();
        collector.join().unwrap();
        let after = drain(&mut rx);
        assert!(after.gpu_samples.len() >= 3, "{}", after.gpu_samples.len());
        let hung_round = after.gpu_samples[0].ts;
        assert!(
            hung_round < during.host_samples[3].ts,
            "the late round keeps its own time: {hung_round} vs {}",
            during.host_samples[3].ts
        );
        // Every sample is stamped with a distinct round (no round asked twice).
        let mut ts: Vec<_> = after.gpu_samples.iter().map(|s| s.ts).collect();
        ts.dedup();
        assert_eq!(ts.len(), after.gpu_samples.len());
    }

    /// A panic in a source ends the collector as a panic, after handing over what it had.
    #[test]
    fn a_panicking_source_ends_the_collector_after_handing_over() {
        struct Bad(u32);
        impl Source for Bad {
            fn name(&self) -> &'static str {
                "bad"
            }
            fn collect(&mut self, now: DateTime<Utc>, out: &mut Collected) {
                self.0 += 1;
                assert!(self.0 < 3, "source broke");
                out.host_samples.push(HostSample {
                    ts: now,
                    ..Default::default()
                });
            }
        }
        let (tx, mut rx) = mpsc::channel::<Batch>(64);
        let (_stop_tx, stop_rx) = std_mpsc::channel();
        let timing = Timing {
            interval: Duration::from_millis(20),
            ship_interval: Duration::from_secs(60),
        };
        let r = std::thread::spawn(move || {
            collect_loop(
                HostInfo::default(),
                vec![Box::new(Bad(0))],
                timing,
                &tx,
                &stop_rx,
            )
        })
        .join();
        assert!(r.is_err(), "the panic reaches the collector");
        assert_eq!(rx.try_recv().unwrap().host_samples.len(), 2);
    }
}
