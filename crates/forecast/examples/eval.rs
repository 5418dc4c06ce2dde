//! Runs the forecast benchmark until the CLI (`rackwatch forecast eval`) is wired:
//! `cargo run --release -p rackwatch-forecast --example eval -- DATA_DIR TASKS OUT.csv`
//!
//! Tuning knobs for experiments (defaults = the library's `Config::default()`):
//! `FC_WINDOW`, `FC_BDAYS`, `FC_LAMBDA`, `FC_PAIRS`, `FC_INFL`.
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 3 {
        anyhow::bail!("usage: eval DATA_DIR TASKS.csv OUT.csv");
    }
    let mut cfg = rackwatch_forecast::Config::default();
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    if let Some(v) = env("FC_WINDOW") {
        cfg.window = v as usize;
    }
    if let Some(v) = env("FC_BDAYS") {
        cfg.backtest_days = v as usize;
    }
    if let Some(v) = env("FC_LAMBDA") {
        cfg.lambda = v;
    }
    if let Some(v) = env("FC_PAIRS") {
        cfg.pairs_per_target = v as usize;
    }
    if let Some(v) = env("FC_STRIDE") {
        cfg.long_block_stride = v as usize;
    }
    if let Some(v) = env("FC_GROWTH") {
        cfg.interval_growth = v;
    }
    if let Some(v) = env("FC_DECAY") {
        cfg.selection_decay = v;
    }
    if let Some(v) = env("FC_COMBINE") {
        cfg.combine = v != 0.0;
    }
    if let Some(v) = env("FC_INFL") {
        cfg.interval_inflation = v;
    }
    let summary = rackwatch_forecast::eval_with(
        std::path::Path::new(&args[0]),
        std::path::Path::new(&args[1]),
        std::path::Path::new(&args[2]),
        &cfg,
    )?;
    println!("{summary}");
    println!(
        "fits={} total_fit_ms={:.1}",
        summary.fits, summary.total_fit_ms
    );
    Ok(())
}
