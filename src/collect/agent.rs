//! The agent pipeline: a collector thread samples every interval and hands batches to
//! the async shipper; hardware events take the fast lane (shipped at once).

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use chrono::{DurationRound, Utc};
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
    mut sources: Vec<Box<dyn Source>>,
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
        .spawn(move || collect_loop(identity, &mut sources, timing, &tx, &stop_rx))
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
        tokio::select! {
            b = rx.recv() => match b {
                Some(b) => shipper.ship(b).await,
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(500)), if shipper.pending() && !stopping => {
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

fn collect_loop(
    identity: HostInfo,
    sources: &mut [Box<dyn Source>],
    timing: Timing,
    tx: &mpsc::Sender<Batch>,
    stop: &std_mpsc::Receiver<()>,
) {
    let fresh = || Batch {
        host: identity.clone(),
        ..Default::default()
    };
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
        let mut c = Collected::default();
        for s in sources.iter_mut() {
            let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                s.collect(now, &mut c);
            }));
            if let Err(panic) = round {
                // Hand over what earlier rounds collected, then end as the panic did.
                if !pending.is_empty() {
                    let _ = tx.blocking_send(pending);
                }
                std::panic::resume_unwind(panic);
            }
        }
        let urgent = !c.events.is_empty();
        pending.host_samples.extend(c.host_samples);
        pending.gpu_samples.extend(c.gpu_samples);
        pending.events.extend(c.events);
        if !c.gpus.is_empty() {
            pending.gpus = c.gpus;
        }
        next_tick += timing.interval;
        if next_tick < Instant::now() {
            // Fell behind (suspended, overloaded): skip missed ticks rather than burst.
            next_tick = Instant::now() + timing.interval;
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
    if !pending.is_empty() {
        let _ = tx.blocking_send(pending);
    }
}
