//! Start or stop a local Citus cluster (a coordinator and workers) with Rackwatch's
//! managed-Postgres code. `scripts/citus` runs this; the clusters keep running after it
//! exits.
//!
//! ```text
//! citus_cluster start --root DIR [--workers 2] [--port 9700] [--db rackwatch] [--set NAME=VALUE]…
//! citus_cluster stop  --root DIR [--workers 2] [--port 9700]
//! ```
//!
//! `start` prints `RACKWATCH_DATABASE__URL=…` (the coordinator's database) as its last line.

use rackwatch::store::citus::{LocalCluster, LocalClusterOptions};

fn usage() -> ! {
    eprintln!(
        "usage: citus_cluster start|stop --root DIR [--workers N] [--port P] [--db NAME] [--set NAME=VALUE]..."
    );
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_else(|| usage());
    let (mut root, mut workers, mut port, mut db, mut settings) =
        (None, 2usize, 9700u16, "rackwatch".to_string(), Vec::new());
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--root" => root = Some(std::path::PathBuf::from(v())),
            "--workers" => workers = v().parse()?,
            "--port" => port = v().parse()?,
            "--db" => db = v(),
            "--set" => settings.push(v()),
            _ => usage(),
        }
    }
    let root = root.unwrap_or_else(|| usage());
    let mut opts = LocalClusterOptions::new(root, workers, port);
    opts.settings = settings;
    match cmd.as_str() {
        "start" => {
            opts.own_adopted = false;
            let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&opts)).await??;
            let nodes = cluster.nodes();
            cluster.detach();
            nodes.create_database(&db).await?;
            for n in nodes.all() {
                println!("node {} port {}", n.socket_dir.display(), n.port);
            }
            println!("RACKWATCH_DATABASE__URL={}", nodes.url_for(&db));
        }
        "stop" => {
            opts.own_adopted = true;
            let mut cluster =
                tokio::task::spawn_blocking(move || LocalCluster::start(&opts)).await??;
            tokio::task::spawn_blocking(move || cluster.stop()).await??;
            println!("stopped");
        }
        _ => usage(),
    }
    Ok(())
}
