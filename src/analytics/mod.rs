//! The analytics layer: jobs that turn rollups into forecasts, anomaly scores and energy
//! accounting, and those into capacity recommendations. The models live in workspace
//! crates.

/// SQL: an `energy_hourly` row (alias `e`) as mean power, W: its energy over the minutes
/// it reported, held to the hour's highest minute (the first minute after a gap carries
/// the gap's counter energy); a row without covered minutes (imported) over the hour.
/// Racks' hourly power and a pool's host peak are summed from it.
macro_rules! hour_mean_watts {
    () => {
        "CASE WHEN e.covered_minutes > 0
              THEN least((e.measured_j + e.estimated_j + e.modeled_j) / (60.0 * e.covered_minutes),
                         coalesce(e.power_max_w, 'Infinity'))
              ELSE (e.measured_j + e.estimated_j + e.modeled_j) / 3600.0 END"
    };
}

pub mod anomaly;
pub mod capacity;
pub mod energy;
pub mod forecast;

/// Run `work` on every item on all cores (blocking threads), results in the items' order.
pub(crate) async fn on_all_cores<T, R, F>(items: Vec<T>, work: F) -> anyhow::Result<Vec<R>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> R + Send + Sync + 'static,
{
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, items.len().max(1));
    let work = std::sync::Arc::new(work);
    let mut chunks: Vec<Vec<(usize, T)>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        chunks[i % workers].push((i, item));
    }
    let mut set = tokio::task::JoinSet::new();
    for chunk in chunks {
        let work = work.clone();
        set.spawn_blocking(move || {
            chunk
                .into_iter()
                .map(|(i, item)| (i, work(item)))
                .collect::<Vec<_>>()
        });
    }
    let mut out = Vec::new();
    while let Some(done) = set.join_next().await {
        out.extend(done?);
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, r)| r).collect())
}
