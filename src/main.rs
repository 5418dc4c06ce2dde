//! The `rackwatch` command: server, agent, demo and administration in one binary.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rand::Rng;
use tokio::sync::watch;

use rackwatch::app;
use rackwatch::collect::agent;
use rackwatch::collect::simulator::SimulatedHost;
use rackwatch::config::{Config, Secret};
use rackwatch::store::auth::Role as UserRole;
use rackwatch::store::{Database, Role};

#[derive(Parser)]
#[command(
    name = "rackwatch",
    version,
    about = "Monitoring and capacity planning for GPU fleets"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Configuration file (TOML; see config/default.toml). RACKWATCH_* variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State directory (managed Postgres, agent spool); overrides `data_dir`.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server: ingest, dashboard, API and periodic jobs.
    Serve {
        /// Address to listen on (overrides server.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Run the collector agent on this host.
    Agent {
        /// Server base URL (overrides agent.server).
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Agent token (overrides agent.token).
        #[arg(long, value_name = "TOKEN")]
        token: Option<String>,
    },
    /// Everything on one machine: managed Postgres, server, a local agent and a
    /// simulated fleet. Prints the dashboard URL and a login.
    Demo {
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Password of the `admin` user; a random one is printed when omitted.
        #[arg(long, value_name = "PW")]
        admin_password: Option<String>,
        /// Do not run the agent for this machine (simulated fleet only).
        #[arg(long)]
        no_local_agent: bool,
    },
    /// Apply database migrations and create partitions, then exit.
    Migrate {
        /// database.url is a Citus coordinator with workers: also shard the big tables by
        /// host and make the inventory reference tables (database.distributed = true
        /// does this at every start). Existing rows move to the workers.
        #[arg(long)]
        citus: bool,
    },
    /// Write a consistent backup of the database (a pg_dump custom-format archive).
    Backup {
        /// Archive to write (replaced only once the new one is complete).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Restore a backup into an empty database (database.url, or the managed cluster).
    Restore {
        /// Archive made by `rackwatch backup`.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Replace the contents of a database that is not empty.
        #[arg(long)]
        force: bool,
    },
    /// Manage dashboard users.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage tokens: agents', a pool scheduler's (its queue) and remote write's.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Hosts: list the fleet and what needs a look; take a decommissioned or renamed host out.
    #[command(subcommand)]
    Host(HostCmd),
    /// Alerts: silences, rule checks, a test mail.
    #[command(subcommand)]
    Alerts(AlertsCmd),
    /// Forecasting engine: evaluate on a benchmark data set.
    #[command(subcommand)]
    Forecast(ForecastCmd),
    /// Anomaly detector: evaluate on a labelled benchmark data set.
    #[command(subcommand)]
    Anomaly(AnomalyCmd),
    /// Reports: the weekly energy-efficiency report and its facility inputs.
    #[command(subcommand)]
    Report(ReportCmd),
    /// Capacity: the pools' plans, and the recommender's benchmark.
    #[command(subcommand)]
    Capacity(CapacityCmd),
    /// Print every route of the server and who may call it (the authorization table).
    Routes {
        /// Print the role × route matrix as Markdown (as in docs/security.md).
        #[arg(long)]
        markdown: bool,
    },
}

#[derive(Subcommand)]
enum CapacityCmd {
    /// Every pool's latest recommendation (the capacity job's), for people or scripts
    /// that resize partitions or order hardware; the table ends with the racks' power
    /// budgets and when each runs out.
    Plan {
        /// table, csv (one row per pool and hour of the week's schedule and the plan
        /// ahead) or json.
        #[arg(long, default_value = "table")]
        format: String,
        /// Only this pool.
        #[arg(long, value_name = "POOL")]
        pool: Option<String>,
    },
    /// Decide every task of a capacity benchmark task file; writes the scorer's CSV.
    Eval {
        /// Directory with `5min/<series>.csv.gz` and `imputed.csv`.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Task file (series_id, track, decision_ts, start_ts, H).
        #[arg(long, value_name = "FILE")]
        tasks: PathBuf,
        /// Predictions CSV to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ReportCmd {
    /// Write the energy-efficiency report of one ISO week (accounts new hours first).
    Energy {
        /// ISO week in energy.time_zone, e.g. 2026-W47. Default: last week, or the running week
        /// when it already holds as many days of data (a new install), as on the dashboard.
        #[arg(long, value_name = "YYYY-Www")]
        week: Option<String>,
        /// Only this site.
        #[arg(long, value_name = "SITE")]
        site: Option<String>,
        /// csv, parquet or html. Default: from the --out file's extension (html for "-").
        #[arg(long)]
        format: Option<String>,
        /// File to write; "-" writes to standard output.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Also mail the report to energy.report.recipients.
        #[arg(long)]
        mail: bool,
    },
    /// Import hourly grid carbon intensity of a site from a CSV file with the columns
    /// `hour` (RFC 3339 start of the hour) and `g_co2_per_kwh`.
    ImportCarbon {
        /// The site whose grid the intensities are for.
        #[arg(long, value_name = "SITE")]
        site: String,
        /// The CSV file.
        file: PathBuf,
    },
    /// Record a facility meter reading: energy the site drew over an interval.
    FacilityReading {
        /// The site whose meter it is.
        #[arg(long, value_name = "SITE")]
        site: String,
        /// RFC 3339 start of the interval.
        #[arg(long)]
        start: String,
        /// RFC 3339 end of the interval.
        #[arg(long)]
        end: String,
        /// The energy drawn over the interval, kWh (a negative value is refused by name).
        #[arg(long, allow_negative_numbers = true)]
        energy_kwh: f64,
    },
}

#[derive(Subcommand)]
enum ForecastCmd {
    /// Forecast every task of a rolling-origin task file; writes the scorer's CSV.
    Eval {
        /// Directory with `hourly/<series>.csv`.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Task file, CSV with the columns series_id, track, cutoff and H (hours ahead).
        #[arg(long, value_name = "FILE")]
        tasks: PathBuf,
        /// Predictions CSV to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum AnomalyCmd {
    /// Train on each series' normal part and score its test part causally; writes
    /// score files (score, alert) in the scorer's format.
    Eval {
        /// smd, asd or nab.
        #[arg(long)]
        dataset: String,
        /// Directory laid out like the data set (train/, test/, …; .csv or .csv.gz).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Output directory for score files.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum AlertsCmd {
    /// Send one test mail through the configured SMTP server.
    TestEmail {
        /// The address to send it to.
        to: String,
    },
    /// Send one test notification to a channel of `alerting.channels` (webhook, Slack
    /// or PagerDuty; PagerDuty gets a trigger and its resolve).
    TestNotify {
        /// A channel's name in alerting.channels (am, not webhook:am).
        channel: String,
    },
    /// Validate a rules file and print what it contains.
    CheckRules {
        /// The rules file (TOML, like config/alerts.toml).
        file: PathBuf,
    },
    /// Current alerts (pending and firing).
    List {
        /// table, or json: the objects `GET /api/v1/alerts` answers.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Mute notifications of matching alerts for a while (maintenance).
    Silence {
        /// Label matcher, repeatable: host=gpu-17, rack=r12, rule=gpu-xid, gpu=3 …
        #[arg(long = "match", value_name = "LABEL=VALUE", required = true)]
        matchers: Vec<String>,
        /// When it starts, for a maintenance window ahead (RFC 3339, at most 90 days
        /// ahead): 2026-12-06T22:00:00Z. Now when left out.
        #[arg(long, value_name = "TIME")]
        start: Option<String>,
        /// How long from its start: 30m, 2h, 1d (at most 90d).
        #[arg(long, default_value = "2h", allow_hyphen_values = true)]
        duration: String,
        /// Why: shown on the alerts page, in `alerts silences` and in the audit trail.
        #[arg(long, default_value = "")]
        comment: String,
        /// Who set it; by default the account running the command, as the audit trail
        /// names it (cli:USER).
        #[arg(long)]
        author: Option<String>,
    },
    /// Active and future silences.
    Silences,
    /// End a silence now (or cancel one scheduled ahead).
    Expire {
        /// The silence's id, as `alerts silences` lists it.
        id: i64,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a user or reset their password (and role, with --role).
    Add {
        /// The user's login name.
        name: String,
        /// viewer, operator or admin. A new user is a viewer without it; an existing user
        /// keeps their role. The only admin cannot be made anything else.
        #[arg(long)]
        role: Option<String>,
        /// Password; when omitted, asked for twice without echo on a terminal, else read as
        /// one line from stdin.
        #[arg(long)]
        password: Option<String>,
    },
    /// Change an existing user's role; their password stays. The only admin cannot be
    /// made anything else.
    Role {
        /// The user's login name.
        name: String,
        /// viewer, operator or admin.
        role: String,
    },
    /// List the dashboard's users and their roles.
    List,
    /// Delete a user; their sessions end at once. The last admin cannot be deleted.
    Remove {
        /// The user's login name.
        name: String,
    },
}

#[derive(Subcommand)]
enum HostCmd {
    /// Take a host out of the fleet: off the fleet, rack and inventory pages and the
    /// absent rule, its agent tokens revoked, its history kept. An agent reporting for it
    /// again (with a new token) brings it back.
    Remove {
        /// The host's name, as `host list` shows it.
        name: String,
    },
    /// List the hosts in the fleet: place, pool, GPUs, when each was last heard from, and
    /// what needs a look (not reporting, clock behind, two agents).
    List,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Mint a token for one host's agent (--host), for a pool's scheduler to report its
    /// queue (--pool), or for Prometheus remote write scoped to a site (--write-site) or
    /// to hosts (--write-hosts); the token is the last line printed.
    #[command(group(clap::ArgGroup::new("scope").required(true).args(["host", "pool", "write_site", "write_hosts"])))]
    Create {
        /// An agent token for this host.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// A scheduler token that may only report this pool's queue.
        #[arg(long, value_name = "POOL")]
        pool: Option<String>,
        /// A remote-write token (POST /api/v1/write) for the hosts of this site.
        #[arg(long, value_name = "SITE")]
        write_site: Option<String>,
        /// A remote-write token for these hosts (comma-separated).
        #[arg(long, value_name = "NAME,…", value_delimiter = ',')]
        write_hosts: Option<Vec<String>>,
        /// A note shown next to the token in listings.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List the live tokens (never their secrets); --all adds the revoked ones.
    List {
        /// Revoked tokens too.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token by id.
    Revoke {
        /// The token's id, as `token list` shows it.
        id: i64,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.cmd,
        Cmd::Serve { .. } | Cmd::Agent { .. } | Cmd::Demo { .. }
    ) {
        // A command whose output goes into `head` ends quietly when the reader closes the
        // pipe, as Unix tools do (Rust ignores SIGPIPE, and printing to a closed pipe
        // panics). The long-running commands keep ignoring it: they treat a closed socket
        // as an error and go on.
        // SAFETY: no other thread runs yet; SIG_DFL is a valid disposition for SIGPIPE.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    rackwatch::alloc::tune();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(std::env::var("RACKWATCH_LOG").ok().as_deref()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn load_config(c: &Common) -> anyhow::Result<Config> {
    let mut cfg = Config::load(c.config.as_deref())?;
    if let Some(d) = &c.data_dir {
        cfg.data_dir = d.clone();
    }
    Ok(cfg)
}

/// A watch channel that turns true on SIGINT or SIGTERM.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

/// The log filter `RACKWATCH_LOG` asks for (default `info,sqlx=warn`). `warning` is read
/// as `warn`; a filter that does not parse, and a bare word that is not a level (it would
/// be read as a module name, hiding everything else), are said on stderr.
fn log_filter(env: Option<&str>) -> tracing_subscriber::EnvFilter {
    const DEFAULT: &str = "info,sqlx=warn";
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let Some(raw) = env.map(str::trim).filter(|s| !s.is_empty()) else {
        return DEFAULT.into();
    };
    let directives: Vec<String> = raw
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .map(|d| {
            let d = d.trim();
            match d.rsplit_once('=') {
                Some((t, l)) if l.eq_ignore_ascii_case("warning") => format!("{t}=warn"),
                None if d.eq_ignore_ascii_case("warning") => "warn".into(),
                _ => d.to_string(),
            }
        })
        .collect();
    for d in &directives {
        let bare = !d.contains('=') && !d.contains('[');
        if bare && !LEVELS.contains(&d.to_ascii_lowercase().as_str()) {
            eprintln!(
                "RACKWATCH_LOG: {d:?} is read as a module name (all its logs, nothing else's); a level is one of {}",
                LEVELS.join(", ")
            );
        }
    }
    match tracing_subscriber::EnvFilter::try_new(directives.join(",")) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("RACKWATCH_LOG={raw:?} is not a log filter ({e}); logging at {DEFAULT}");
            DEFAULT.into()
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::Routes { markdown } = cli.cmd {
        if markdown {
            print!("{}", rackwatch::web::access::markdown());
        } else {
            print!("{}", rackwatch::web::access::table());
        }
        return Ok(());
    }
    let mut cfg = load_config(&cli.common)?;
    match cli.cmd {
        Cmd::Routes { .. } => Ok(()),
        Cmd::Serve { listen } => {
            if let Some(l) = listen {
                cfg.server.listen = l.to_string();
            }
            serve(cfg).await
        }
        Cmd::Agent { server, token } => {
            if let Some(s) = server {
                cfg.agent.server = s;
            }
            if let Some(t) = token {
                cfg.agent.token = Secret::new(t);
            }
            run_agent(cfg).await
        }
        Cmd::Demo {
            listen,
            admin_password,
            no_local_agent,
        } => {
            if let Some(l) = listen {
                cfg.server.listen = l.to_string();
            }
            demo(cfg, admin_password, !no_local_agent).await
        }
        Cmd::Backup { out } => {
            // As the database is, whatever its schema: a backup is what one makes before
            // an upgrade, with either binary.
            let db = Database::open_bare(&cfg, Role::Existing).await?;
            db.store.check_schema(true).await?;
            let done =
                rackwatch::store::backup::backup(&cfg.database.managed_bin_dir, &db.url, &out)
                    .await;
            let audited = match &done {
                Ok(d) => {
                    let details = serde_json::json!({ "bytes": d.bytes, "seconds": d.seconds });
                    audit(&db, "backup.made", &out.display().to_string(), details).await
                }
                Err(_) => Ok(()),
            };
            db.close().await;
            let done = done?;
            audited.context("writing the audit row of the backup")?;
            println!(
                "backup written to {} ({:.1} MB in {:.1} s)",
                out.display(),
                done.bytes as f64 / 1e6,
                done.seconds
            );
            Ok(())
        }
        Cmd::Restore { file, force } => {
            // Checked before a database is reached (or a managed one set up for it).
            if !file.is_file() {
                anyhow::bail!("{} is not a file", file.display());
            }
            let db = Database::open_bare(&cfg, Role::OneShot).await?;
            let done = rackwatch::store::backup::restore(
                &cfg.database.managed_bin_dir,
                &db.store,
                &db.url,
                &file,
                force,
            )
            .await;
            let audited = match &done {
                Ok(d) => {
                    let details = serde_json::json!({
                        "bytes": d.bytes, "seconds": d.seconds, "forced": force
                    });
                    audit(&db, "backup.restored", &file.display().to_string(), details).await
                }
                Err(_) => Ok(()),
            };
            db.close().await;
            let done = done?;
            audited.context("writing the audit row of the restore")?;
            println!(
                "restored {} ({:.1} MB in {:.1} s)",
                file.display(),
                done.bytes as f64 / 1e6,
                done.seconds
            );
            Ok(())
        }
        Cmd::Migrate { citus } => {
            if citus {
                anyhow::ensure!(
                    !cfg.database.url.is_empty(),
                    "--citus needs database.url (RACKWATCH_DATABASE__URL) pointing at the Citus coordinator"
                );
            }
            let db = Database::open(&cfg, Role::OneShot).await?;
            if citus {
                let d = rackwatch::store::citus::distribute(&db.store.pool).await?;
                println!(
                    "distributed by host_id over {} workers: {} tables now, {} already",
                    d.workers,
                    d.converted.len(),
                    d.already
                );
            }
            println!("database is up to date");
            db.close().await;
            Ok(())
        }
        Cmd::User(UserCmd::Add {
            name,
            role,
            password,
        }) => {
            let asked: Option<UserRole> = role
                .map(|r| r.parse())
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let password = match password {
                Some(p) => p,
                None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                    let first = read_hidden(&format!("Password for {name}: "))?;
                    let again = read_hidden("The same again: ")?;
                    if first != again {
                        anyhow::bail!("the two passwords differ; nothing was saved");
                    }
                    first
                }
                None => {
                    let mut line = String::new();
                    let n = std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .context("reading the password from stdin")?;
                    if n == 0 {
                        anyhow::bail!(
                            "no password: pass --password, or write it on stdin (one line)"
                        );
                    }
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            let db = Database::open(&cfg, Role::Existing).await?;
            let r = async {
                let before = db.store.password_row(&name).await?.map(|r| r.1);
                // Resetting a password keeps the role unless --role says otherwise.
                let role = match (asked, before.as_deref()) {
                    (Some(r), _) => r,
                    (None, Some(old)) => old.parse().map_err(anyhow::Error::msg)?,
                    (None, None) => UserRole::Viewer,
                };
                db.store.upsert_user(&name, role, &password).await?;
                db.store
                    .audit_user_saved(&cli_actor(), None, &name, before, role)
                    .await?;
                anyhow::Ok(role)
            }
            .await;
            db.close().await;
            let role = r?;
            println!("user {name} ({}) saved", role.as_str());
            Ok(())
        }
        Cmd::User(UserCmd::Role { name, role }) => {
            let role: UserRole = role.parse().map_err(anyhow::Error::msg)?;
            let db = Database::open(&cfg, Role::Existing).await?;
            let r = async {
                let old = db.store.change_role(&name, role).await?;
                if let Some(old) = &old {
                    db.store
                        .audit_role_changed(&cli_actor(), None, &name, old, role.as_str())
                        .await?;
                }
                anyhow::Ok(old)
            }
            .await;
            db.close().await;
            match r? {
                Some(old) if old == role.as_str() => {
                    println!("user {name} is {old} already; nothing changed")
                }
                Some(old) => println!("user {name} now {} (was {old}); password unchanged, their sessions have ended", role.as_str()),
                None => anyhow::bail!("no user named {name:?} (rackwatch user list shows them; rackwatch user add creates one)"),
            }
            Ok(())
        }
        Cmd::User(UserCmd::List) => {
            let db = Database::open(&cfg, Role::Existing).await?;
            let users = db.store.list_users().await;
            db.close().await;
            println!("{:<32} {:<9} created", "name", "role");
            for u in users? {
                println!(
                    "{:<32} {:<9} {}",
                    u.name,
                    u.role,
                    u.created_at.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
            Ok(())
        }
        Cmd::User(UserCmd::Remove { name }) => {
            use rackwatch::store::auth::UserRemoval;
            let db = Database::open(&cfg, Role::Existing).await?;
            let r = async {
                let outcome = db.store.delete_user_named(&name).await?;
                if let UserRemoval::Removed { role } = &outcome {
                    audit(
                        &db,
                        "user.deleted",
                        &name,
                        serde_json::json!({"role": role}),
                    )
                    .await?;
                }
                anyhow::Ok(outcome)
            }
            .await;
            db.close().await;
            match r? {
                UserRemoval::Removed { role } => {
                    println!("user {name} ({role}) deleted; their sessions have ended");
                    Ok(())
                }
                UserRemoval::LastAdmin => anyhow::bail!(
                    "{name} is the only admin: make another user admin first \
                     (rackwatch user add NAME --role admin)"
                ),
                UserRemoval::NoSuchUser => {
                    anyhow::bail!("no user named {name:?} (rackwatch user list shows them)")
                }
            }
        }
        Cmd::Alerts(a) => alerts_cmd(&cfg, a).await,
        Cmd::Forecast(ForecastCmd::Eval { data, tasks, out }) => {
            let summary =
                tokio::task::spawn_blocking(move || rackwatch_forecast::eval(&data, &tasks, &out))
                    .await??;
            println!("{summary}");
            Ok(())
        }
        Cmd::Anomaly(AnomalyCmd::Eval { dataset, data, out }) => {
            let summary =
                tokio::task::spawn_blocking(move || rackwatch_anomaly::eval(&dataset, &data, &out))
                    .await??;
            println!("{summary}");
            Ok(())
        }
        Cmd::Capacity(CapacityCmd::Eval { data, tasks, out }) => {
            let summary =
                tokio::task::spawn_blocking(move || rackwatch_capacity::eval(&data, &tasks, &out))
                    .await??;
            println!("{summary}");
            Ok(())
        }
        Cmd::Capacity(CapacityCmd::Plan { format, pool }) => {
            let db = Database::open(&cfg, Role::Existing).await?;
            let horizon = cfg.capacity.horizon_days;
            let r =
                capacity_plan(&db, &format.to_ascii_lowercase(), pool.as_deref(), horizon).await;
            db.close().await;
            r
        }
        Cmd::Token(t) => {
            let db = Database::open(&cfg, Role::Existing).await?;
            let r = token_cmd(&db, t).await;
            db.close().await;
            r
        }
        Cmd::Host(HostCmd::List) => {
            let db = Database::open(&cfg, Role::Existing).await?;
            let hosts = db.store.hosts_latest().await;
            db.close().await;
            print!("{}", host_table(&hosts?, chrono::Utc::now()));
            Ok(())
        }
        Cmd::Host(HostCmd::Remove { name }) => {
            let db = Database::open(&cfg, Role::Existing).await?;
            let r = remove_host(&db, &name).await;
            db.close().await;
            r
        }
        Cmd::Report(r) => {
            let db = Database::open(&cfg, Role::Existing).await?;
            let res = report_cmd(&cfg, &db, r).await;
            db.close().await;
            res
        }
    }
}

async fn report_cmd(cfg: &Config, db: &Database, r: ReportCmd) -> anyhow::Result<()> {
    use rackwatch::report::{energy, export, inputs, mail, IsoWeek};
    let now = chrono::Utc::now();
    match r {
        ReportCmd::Energy {
            week,
            site,
            format,
            out,
            mail: send_mail,
        } => {
            let format = export::Format::for_output(format.as_deref(), &out)?;
            if send_mail && cfg.energy.report.recipients.is_empty() {
                anyhow::bail!(
                    "--mail: energy.report.recipients is empty, nobody to mail (nothing was written)"
                );
            }
            // A missing directory is said before the week is built, and in words.
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.is_dir() {
                    anyhow::bail!(
                        "--out {}: the directory {} does not exist",
                        out.display(),
                        dir.display()
                    );
                }
            }
            let named: Option<IsoWeek> = week
                .map(|w| w.parse())
                .transpose()
                .map_err(anyhow::Error::msg)?;
            if let Some(week) = named {
                let starts = week.start(cfg.energy.tz());
                if starts > now {
                    anyhow::bail!(
                        "week {week} has not started yet (it starts {} in {}); the latest week is {}",
                        starts
                            .with_timezone(&cfg.energy.tz())
                            .format("%Y-%m-%d %H:%M"),
                        cfg.energy.time_zone,
                        IsoWeek::containing(now, cfg.energy.tz())
                    );
                }
            }
            rackwatch::analytics::energy::run(&db.store, &cfg.energy, now).await?;
            // Unnamed, the week the dashboard shows: last week, or the running one on a
            // new install.
            let week = match named {
                Some(w) => w,
                None => energy::default_week(&db.store, &cfg.energy, site.as_deref(), now).await?,
            };
            let report = energy::build(&db.store, &cfg.energy, week, site.as_deref(), now).await?;
            let bytes = export::render(&report, format)?;
            if out.as_os_str() == "-" {
                use std::io::Write;
                std::io::stdout().write_all(&bytes)?;
            } else {
                std::fs::write(&out, &bytes)
                    .with_context(|| format!("writing {}", out.display()))?;
            }
            let t = report.total();
            if report.no_data() {
                eprintln!(
                    "warning: no data in {week}: no host reported in that week, or its energy \
                     accounting is past retention.energy_hourly_days"
                );
            }
            eprintln!(
                "{week}: IT {:.1} kWh, facility {:.1} kWh, {:.1} kg CO2e{}, idle GPU {:.1} kWh; {}{}",
                t.it_energy_kwh,
                t.facility_energy_kwh,
                t.carbon_kg,
                t.cost
                    .filter(|_| !t.currency.is_empty())
                    .map(|c| format!(", {c:.2} {}", t.currency))
                    .unwrap_or_default(),
                t.idle_gpu_energy_kwh,
                rackwatch::model::format::count(report.rows.len(), "line"),
                if report.partial() { " (partial week)" } else { "" }
            );
            if send_mail {
                let capacity = mail::capacity_lines(&db.store, cfg, now).await?;
                // A one-off send: nothing scrapes this process's metrics.
                let telemetry = rackwatch::model::telemetry::Telemetry::new();
                let to = &cfg.energy.report.recipients;
                let sent = mail::send(cfg, &report, to, &capacity, &telemetry).await?;
                if let Some(e) = sent.nobody(cfg) {
                    return Err(e);
                }
                eprintln!("mailed to {}", sent.to.join(", "));
                if !sent.missed.is_empty() {
                    anyhow::bail!("not delivered to {}", sent.missed.join("; "));
                }
            }
            Ok(())
        }
        ReportCmd::ImportCarbon { site, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let (good, bad) = inputs::parse_carbon_csv(&text);
            let n = inputs::store_carbon(&db.store, &site, &good).await?;
            println!(
                "{} of carbon intensity stored for site {site}",
                rackwatch::model::format::count(n as usize, "hour")
            );
            warn_unknown_site(&db.store, &site).await?;
            if !bad.is_empty() {
                for (line, why) in &bad {
                    eprintln!("{}:{line}: {why}", file.display());
                }
                anyhow::bail!(
                    "{} of {} rejected",
                    rackwatch::model::format::count(bad.len(), "line"),
                    file.display()
                );
            }
            Ok(())
        }
        ReportCmd::FacilityReading {
            site,
            start,
            end,
            energy_kwh,
        } => {
            let t = |arg: &str, s: &str| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "{arg} {s:?} is not an RFC 3339 time ({e}), like 2026-11-16T00:00:00Z"
                        )
                    })
            };
            let reading = inputs::FacilityReading {
                site: site.clone(),
                start: t("--start", &start)?,
                end: t("--end", &end)?,
                energy_kwh,
            };
            let (_, bad) = inputs::store_readings(&db.store, &[reading], now).await?;
            if let Some((_, why)) = bad.first() {
                anyhow::bail!("reading rejected: {why}");
            }
            println!("reading stored");
            warn_unknown_site(&db.store, &site).await?;
            Ok(())
        }
    }
}

/// `rackwatch host list`: one line per host, with what needs a look.
fn host_table(
    hosts: &[rackwatch::store::queries::HostLatest],
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    use rackwatch::model::format::age;
    use rackwatch::web::page;
    let dash = |s: &str| page::place_label(s, "-");
    let mut out = format!(
        "{:<32} {:<20} {:<16} {:>4}  {:<12} note\n",
        "host", "site/rack", "pool", "gpus", "last heard"
    );
    for h in hosts {
        let mut notes = Vec::new();
        if !page::host_reports(h, now) {
            notes.push("not reporting".to_string());
        }
        let late = page::late_note(h, now);
        if !late.is_empty() {
            notes.push(late);
        }
        if page::two_agents_seen(h, now).is_some() {
            notes.push("two agents report as this host".into());
        }
        out.push_str(&format!(
            "{:<32} {:<20} {:<16} {:>4}  {:<12} {}\n",
            h.name,
            format!("{}/{}", dash(&h.site), dash(&h.rack)),
            dash(&h.pool),
            h.gpu_count,
            age(h.last_heard, now),
            notes.join("; ")
        ));
    }
    out
}

/// Facility inputs for a site no host reports are kept but used by no report: say so.
async fn warn_unknown_site(store: &rackwatch::store::Store, site: &str) -> anyhow::Result<()> {
    if !rackwatch::report::inputs::sites_without_hosts(store, &[site.to_string()])
        .await?
        .is_empty()
    {
        eprintln!(
            "warning: no host in the fleet reports site {site:?}: no report uses its inputs \
             until hosts report it (check the spelling)"
        );
    }
    Ok(())
}

async fn capacity_plan(
    db: &Database,
    format: &str,
    pool: Option<&str>,
    horizon_days: u32,
) -> anyhow::Result<()> {
    let recs = db.store.recommendations(pool).await?;
    if let (Some(p), true) = (pool, recs.is_empty()) {
        anyhow::bail!("no recommendation for pool {p:?}: no such pool, or the capacity job has not run since it appeared");
    }
    if recs.is_empty() {
        eprintln!("no pool has a recommendation yet: the capacity job runs hourly on the server's job leader, for hosts with a pool");
    }
    let now = chrono::Utc::now();
    // Racks with a power budget, for the planner who buys hardware: whether the racks the
    // new hosts go into have the power.
    let racks = if pool.is_none() {
        db.store.exhaustions(Some("rack")).await?
    } else {
        Vec::new()
    };
    let outlook = |e: &rackwatch::analytics::capacity::ExhaustionRow| {
        rackwatch::analytics::capacity::budget_outlook(e.exhausted_at, now, horizon_days)
    };
    match format {
        "table" => {
            println!(
                "{:<20} {:>9} {:>8} {:>9} {:>11} {:>11}  action",
                "pool", "installed", "demand", "next hour", "week", "plan ahead"
            );
            for r in &recs {
                let dash = |g: Option<i32>| g.map_or("-".into(), |g| g.to_string());
                let week = match (r.week_schedule.iter().min(), r.week_schedule.iter().max()) {
                    (Some(low), Some(peak)) if low == peak => peak.to_string(),
                    (Some(low), Some(peak)) => format!("{low}-{peak}"),
                    _ => "-".into(),
                };
                let act = r.actions_now(now).join("; ");
                println!(
                    "{:<20} {:>9} {:>8} {:>9} {:>11} {:>11}  {}",
                    r.pool,
                    r.installed_gpus,
                    r.demand_now.map_or("-".into(), |d| format!("{d:.1}")),
                    dash(r.next_hour),
                    week,
                    dash(r.lead_plan.iter().max().copied()),
                    act
                );
            }
            if !racks.is_empty() {
                println!();
                println!(
                    "{:<20} {:>10} {:>10}  power",
                    "rack", "peak kW", "budget kW"
                );
                for e in &racks {
                    println!(
                        "{:<20} {:>10.1} {:>10.1}  the budget {}",
                        e.key,
                        e.level_now / 1000.0,
                        e.capacity / 1000.0,
                        outlook(e)
                    );
                }
            }
        }
        "csv" => {
            println!("pool,plan,hour,gpus,installed_gpus");
            for r in &recs {
                for (plan, start, values) in [
                    ("week", r.decided_at, &r.week_schedule),
                    ("ahead", r.lead_start, &r.lead_plan),
                ] {
                    for (i, g) in values.iter().enumerate() {
                        let t = start + chrono::Duration::hours(i as i64);
                        println!(
                            "{},{plan},{},{g},{}",
                            csv_field(&r.pool),
                            t.format("%Y-%m-%dT%H:%M:%SZ"),
                            r.installed_gpus
                        );
                    }
                }
            }
        }
        "json" => {
            let pools: Vec<serde_json::Value> = recs
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "recommendation": r,
                        "actions": r.actions_now(now),
                    })
                })
                .collect();
            let racks: Vec<serde_json::Value> = racks
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "rack": e.key,
                        "daily_peak_kw": e.level_now / 1000.0,
                        "budget_kw": e.capacity / 1000.0,
                        "exhausted_at": e.exhausted_at,
                        "growth_per_day": e.growth_per_day,
                        "computed_at": e.computed_at,
                        "outlook": format!("the budget {}", outlook(e)),
                    })
                })
                .collect();
            let v = serde_json::json!({"pools": pools, "racks": racks});
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        other => anyhow::bail!("--format {other:?}: use table, csv or json"),
    }
    Ok(())
}

/// A CSV field, quoted when it holds a comma, quote or line break, and kept from reading
/// as a spreadsheet formula.
fn csv_field(s: &str) -> String {
    let s = rackwatch::model::format::spreadsheet_text(s);
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Ask on the terminal for a line that is not echoed (a password).
fn read_hidden(prompt: &str) -> anyhow::Result<String> {
    use std::io::Write;
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    // SAFETY: termios is plain data; tcgetattr fills it for fd 0 (a terminal, checked by
    // the caller), and the same settings are put back below.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let have = unsafe { libc::tcgetattr(0, &mut saved) } == 0;
    if have {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: fd 0 with settings derived from its own.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line);
    if have {
        // SAFETY: the settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
    }
    if read.context("reading the password")? == 0 {
        anyhow::bail!("no password given");
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Who runs a command-line change, for the audit trail: `cli:` and the Unix user.
fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(login_of_this_process)
        .unwrap_or_else(|| "unknown".into());
    format!("cli:{user}")
}

/// The account name of this process's user from `/etc/passwd` (cron jobs, `sudo -u` and
/// containers often set no `USER`), or `uid:N` when it has no entry.
fn login_of_this_process() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    });
    Some(name.unwrap_or_else(|| format!("uid:{uid}")))
}

/// Record a command-line change in the audit trail.
async fn audit(
    db: &Database,
    action: &str,
    target: &str,
    details: serde_json::Value,
) -> anyhow::Result<()> {
    let actor = cli_actor();
    db.store
        .audit(rackwatch::store::audit::Entry::ok(&actor, action, target).details(details))
        .await?;
    Ok(())
}

async fn remove_host(db: &Database, name: &str) -> anyhow::Result<()> {
    let heard = db.store.host_last_heard(name).await?;
    let Some(tokens) = db.store.remove_host(name, &cli_actor()).await? else {
        anyhow::bail!("no host {name:?} in the fleet (never reported, or already taken out)");
    };
    let target = rackwatch::store::Store::removed_host_target(name, tokens);
    audit(db, "host.removed", &target, serde_json::json!({})).await?;
    println!(
        "{target} taken out of the fleet; an agent reporting for it with a new token (or a client certificate) brings it back"
    );
    // Its token is revoked, but a server that looked it up in the last minute still
    // stores its batches (without bringing the host back) until it looks again.
    let ago = heard.map(|t| (chrono::Utc::now() - t).num_seconds());
    if let Some(s) = ago.filter(|s| *s < 120) {
        eprintln!(
            "warning: {name} reported {s} s ago: its agent is still running; stop it (its \
             token is revoked: its batches are refused within a minute and the host stays out)"
        );
    }
    Ok(())
}

async fn token_cmd(db: &Database, t: TokenCmd) -> anyhow::Result<()> {
    match t {
        TokenCmd::Create {
            host,
            pool,
            write_site,
            write_hosts,
            note,
        } => {
            use rackwatch::store::auth::WriteScope;
            rackwatch::model::validate::token_note(&note)
                .map_err(|e| anyhow::anyhow!("--note: {e}"))?;
            let scope = match (write_site, write_hosts) {
                (Some(site), _) => Some(WriteScope::Site(site)),
                (None, Some(hosts)) => Some(WriteScope::Hosts(hosts)),
                (None, None) => None,
            };
            if let Some(scope) = scope {
                use rackwatch::model::validate;
                match &scope {
                    WriteScope::Site(site) => {
                        validate::validate_host(&rackwatch::model::HostInfo {
                            name: "x".into(),
                            site: site.clone(),
                            ..Default::default()
                        })
                        .map_err(|e| anyhow::anyhow!("--write-site: {e}"))?
                    }
                    WriteScope::Hosts(hosts) if hosts.is_empty() => {
                        anyhow::bail!("--write-hosts: name at least one host (A,B,…)")
                    }
                    WriteScope::Hosts(hosts) => {
                        for (i, name) in hosts.iter().enumerate() {
                            validate::host_name(name).map_err(|e| {
                                anyhow::anyhow!("--write-hosts: host {} of the list: {e}", i + 1)
                            })?;
                        }
                    }
                }
                let token = db.store.create_write_token(&scope, &note).await?;
                let target = format!("write:{}", scope.label());
                let id = db.store.token_id(&token).await?;
                audit(
                    db,
                    "token.created",
                    &target,
                    serde_json::json!({ "note": note, "token_id": id }),
                )
                .await?;
                eprintln!("remote-write token for {} (shown once; Prometheus sends it as remote_write.authorization.credentials to POST /api/v1/write):", scope.label());
                println!("{token}");
                return Ok(());
            }
            if let Some(pool) = pool {
                rackwatch::model::validate::pool_name(&pool).map_err(anyhow::Error::msg)?;
                let token = db.store.create_pool_token(&pool, &note).await?;
                let id = db.store.token_id(&token).await?;
                audit(
                    db,
                    "token.created",
                    &format!("pool:{pool}"),
                    serde_json::json!({ "note": note, "token_id": id }),
                )
                .await?;
                eprintln!("scheduler token for pool {pool} (shown once; send it as Authorization: Bearer to POST /api/v1/pools/{pool}/demand):");
                println!("{token}");
                let pools = db.store.pool_names().await?;
                if !pools.contains(&pool) {
                    eprintln!(
                        "note: no host belongs to pool {pool:?} yet: its reports are refused (404) until an agent reports a host in it (pools now: {})",
                        if pools.is_empty() { "none".to_string() } else { pools.join(", ") }
                    );
                }
                return Ok(());
            }
            let host = host.unwrap_or_default();
            rackwatch::model::validate::host_name(&host).map_err(anyhow::Error::msg)?;
            let token = db.store.create_agent_token(&host, &note).await?;
            let id = db.store.token_id(&token).await?;
            audit(
                db,
                "token.created",
                &host,
                serde_json::json!({ "note": note, "token_id": id }),
            )
            .await?;
            eprintln!("agent token for host {host} (shown once; put it in a file only the agent can read and name the file in agent.token_file, or set agent.token):");
            println!("{token}");
        }
        TokenCmd::List { all } => {
            let tokens: Vec<_> = db
                .store
                .list_tokens()
                .await?
                .into_iter()
                .filter(|t| all || t.revoked_at.is_none())
                .collect();
            // Notes longer than 60 characters are cut (notes made before the 200-character
            // limit can be thousands); the columns are as wide as their longest value.
            let note = |n: &str| match rackwatch::model::format::longer_than(n, 60) {
                Some(head) => format!("{head}…"),
                None => n.to_string(),
            };
            let w = |f: &dyn Fn(&rackwatch::store::auth::TokenInfo) -> usize, min: usize| {
                tokens.iter().map(f).max().unwrap_or(0).max(min)
            };
            let (kw, hw, nw) = (
                w(&|t| t.kind.chars().count(), 4),
                w(&|t| t.host_name.chars().count(), 8),
                w(&|t| note(&t.note).chars().count(), 4),
            );
            let fmt = |d: Option<chrono::DateTime<chrono::Utc>>| {
                d.map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
                    .unwrap_or("-".into())
            };
            print!(
                "{:>5}  {:<kw$}  {:<hw$}  {:<nw$}  {:<20}  {:<20}",
                "id", "kind", "bound to", "note", "created", "last used"
            );
            println!("{}", if all { "  revoked" } else { "" });
            for t in &tokens {
                print!(
                    "{:>5}  {:<kw$}  {:<hw$}  {:<nw$}  {:<20}  {:<20}",
                    t.id,
                    t.kind,
                    t.host_name,
                    note(&t.note),
                    fmt(Some(t.created_at)),
                    fmt(t.last_used_at)
                );
                println!(
                    "{}",
                    if all {
                        format!("  {}", fmt(t.revoked_at))
                    } else {
                        String::new()
                    }
                );
            }
            println!(
                "{}{}",
                rackwatch::model::format::count(tokens.len(), "token"),
                if all {
                    ""
                } else {
                    " (live; --all adds the revoked)"
                }
            );
        }
        TokenCmd::Revoke { id } => {
            if let Some(t) = db.store.revoke_token(id).await? {
                audit(
                    db,
                    "token.revoked",
                    &format!("token {id}"),
                    rackwatch::store::Store::revoked_details(&t),
                )
                .await?;
                println!("token {id} ({}, {}) revoked", t.kind, t.host_name);
            } else {
                anyhow::bail!("no active token with id {id}");
            }
        }
    }
    Ok(())
}

/// `30s`, `15m`, `2h`, `1d`, in hours.
fn parse_duration_hours(s: &str) -> anyhow::Result<f64> {
    let t = s.trim();
    // Whole or decimal numbers: 90m, 1.5h.
    let (num, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    // Digits and a point only, so any length parses (a huge one is refused by its range).
    let n: f64 = num.parse().map_err(|_| {
        anyhow::anyhow!("duration {s:?}: use a number and a unit, like 30m, 2h or 1d")
    })?;
    Ok(match unit {
        "s" => n / 3600.0,
        "m" => n / 60.0,
        "h" => n,
        "d" => n * 24.0,
        "" => anyhow::bail!("duration {s:?}: give its unit, like {n}m, {n}h or {n}d"),
        u if u.chars().any(|c| c.is_ascii_digit()) => {
            anyhow::bail!("duration {s:?}: use one number and one unit (90m rather than 1h30m)")
        }
        _ => anyhow::bail!("duration {s:?}: unit must be s, m, h or d"),
    })
}

async fn alerts_cmd(cfg: &Config, a: AlertsCmd) -> anyhow::Result<()> {
    match a {
        AlertsCmd::TestEmail { to } => {
            rackwatch::alert::notify::send_test(cfg, &to).await?;
            println!(
                "test mail to {to} accepted by {}:{}",
                cfg.alerting.smtp.host, cfg.alerting.smtp.port
            );
            Ok(())
        }
        AlertsCmd::TestNotify { channel } => {
            let kind = rackwatch::alert::notify::send_test_channel(cfg, &channel).await?;
            println!("test notification accepted by channel {channel} ({kind})");
            Ok(())
        }
        AlertsCmd::CheckRules { file } => {
            // What `serve` reads at start besides the keys: the rules file the config names
            // (when it is another file) and the HTTPS certificate and key.
            let named = std::path::Path::new(&cfg.alerting.rules_file);
            if !cfg.alerting.rules_file.is_empty() && named != file.as_path() {
                rackwatch::alert::rules::RuleSet::load_checked(named, &cfg.alerting.channels)
                    .map_err(|e| anyhow::anyhow!("alerting.rules_file: {e}"))?;
            }
            if cfg.server.tls.enabled() {
                rackwatch::web::tls::load(&cfg.server.tls)
                    .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?;
            }
            let set =
                rackwatch::alert::rules::RuleSet::load_checked(&file, &cfg.alerting.channels)?;
            for r in &set.rules {
                println!(
                    "rule {:<24} {:<9} severity={}",
                    r.name,
                    r.kind.name(),
                    r.severity
                );
            }
            println!("{} rules, {} routes: OK", set.rules.len(), set.routes.len());
            if set.routes.is_empty() && !set.rules.is_empty() {
                eprintln!(
                    "warning: no [[route]]: alerts show on the dashboard and the API, and are sent to nobody"
                );
            } else if set.rules.is_empty() {
                eprintln!("warning: no [[rule]]: nothing will alert");
            } else {
                for r in set.unroutable() {
                    eprintln!(
                        "warning: rule {:?} (severity={}) matches no [[route]]: its alerts are sent to nobody; add a route without `match` as a default",
                        r.name, r.severity
                    );
                }
            }
            Ok(())
        }
        other => {
            let db = Database::open(cfg, Role::Existing).await?;
            let r = alerts_db_cmd(&db, cfg, other).await;
            db.close().await;
            r
        }
    }
}

async fn alerts_db_cmd(db: &Database, cfg: &Config, a: AlertsCmd) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    match a {
        AlertsCmd::List { format } => {
            let format = format.to_ascii_lowercase();
            if !matches!(format.as_str(), "table" | "json") {
                anyhow::bail!("--format {format:?}: use table or json");
            }
            let rows = db.store.current_alerts_silenced(now).await?;
            if format == "json" {
                let entries: Vec<_> = rows
                    .into_iter()
                    .map(|(alert, silenced)| rackwatch::web::alerts::AlertEntry { alert, silenced })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&entries)?);
                return Ok(());
            }
            for (a, silenced) in &rows {
                // Who handles it, as the alerts page says: acknowledged, silenced.
                let mut handled = Vec::new();
                if let Some(by) = &a.acknowledged_by {
                    handled.push(format!("acknowledged by {by}"));
                }
                if *silenced {
                    handled.push("silenced".to_string());
                }
                if a.flaps >= rackwatch::alert::eval::FLAP_LIMIT {
                    handled.push("flapping, not mailed".to_string());
                }
                println!(
                    "{:<8} {:<9} since {}  {}  [{}]{}",
                    a.state,
                    a.severity,
                    a.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    a.summary,
                    a.fingerprint,
                    if handled.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", handled.join(", "))
                    }
                );
            }
            println!("{}", rackwatch::model::format::count(rows.len(), "alert"));
        }
        AlertsCmd::Silence {
            matchers,
            start,
            duration,
            comment,
            author,
        } => {
            let author = author.unwrap_or_else(cli_actor);
            let m =
                rackwatch::alert::silence::parse_matchers(&matchers).map_err(anyhow::Error::msg)?;
            let rules_file = rules_file_or_example(cfg);
            if m.contains_key("rule") && rules_file.is_empty() {
                eprintln!(
                    "warning: no alerting.rules_file (pass the server's --config): the rule name is not checked"
                );
            } else if m.contains_key("rule") && cfg.alerting.rules_file.is_empty() {
                eprintln!(
                    "note: the rule name is checked against {rules_file} (the demo's rules); pass the server's --config for its own"
                );
            }
            rackwatch::alert::silence::check_rule(&m, &rules_file)
                .map_err(|e| anyhow::anyhow!("--match {e}"))?;
            rackwatch::alert::silence::check_comment(&comment)
                .map_err(|e| anyhow::anyhow!("--comment: {e}"))?;
            let asked = match &start {
                Some(t) => Some(
                    chrono::DateTime::parse_from_rfc3339(t)
                        .map_err(|e| {
                            anyhow::anyhow!("--start {t}: {e} (like 2026-12-06T22:00:00Z)")
                        })?
                        .with_timezone(&chrono::Utc),
                ),
                None => None,
            };
            let from = rackwatch::alert::silence::silence_start(now, asked)
                .map_err(|e| anyhow::anyhow!("--start: {e}"))?;
            let until =
                rackwatch::alert::silence::silence_end(from, parse_duration_hours(&duration)?)
                    .map_err(|e| anyhow::anyhow!("--duration {duration}: {e}"))?;
            let id = db
                .store
                .create_silence(&m, from, until, &author, &comment)
                .await?
                .id;
            audit(
                db,
                "silence.created",
                &format!("silence {id}"),
                serde_json::json!({
                    "matchers": matchers.join(", "), "from": from.to_rfc3339(),
                    "until": until.to_rfc3339(), "comment": comment, "author": author,
                }),
            )
            .await?;
            println!(
                "silence {id} from {} until {}",
                from.format("%Y-%m-%d %H:%M:%S UTC"),
                until.format("%Y-%m-%d %H:%M:%S UTC")
            );
            // Kept (a host being installed may be silenced ahead), but a typo mutes nothing.
            for note in rackwatch::alert::silence::unknown_targets(&db.store, &m).await? {
                eprintln!("note: {note}");
            }
        }
        AlertsCmd::Silences => {
            let silences = db.store.active_silences(now).await?;
            println!(
                "{:>4}  {:<20}  {:<20}  matchers, author, comment",
                "id", "from", "until"
            );
            for s in &silences {
                let m: Vec<String> = s
                    .matchers
                    .0
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let comment = if s.comment.is_empty() {
                    String::new()
                } else {
                    format!(": {}", s.comment)
                };
                println!(
                    "{:>4}  {:<20}  {:<20}  {}  by {}{comment}",
                    s.id,
                    s.starts_at.format("%Y-%m-%d %H:%M:%S"),
                    s.ends_at.format("%Y-%m-%d %H:%M:%S"),
                    m.join(","),
                    s.author,
                );
            }
            println!(
                "{} (times in UTC)",
                rackwatch::model::format::count(silences.len(), "active or scheduled silence")
            );
        }
        AlertsCmd::Expire { id } => {
            let Some((_, cancelled)) = db.store.expire_silence(id).await? else {
                anyhow::bail!("no active or scheduled silence with id {id}");
            };
            let (action, done) = if cancelled {
                ("silence.cancelled", "cancelled (it had not started)")
            } else {
                ("silence.expired", "ended")
            };
            audit(db, action, &format!("silence {id}"), serde_json::json!({})).await?;
            println!("silence {id} {done}");
        }
        AlertsCmd::TestEmail { .. }
        | AlertsCmd::TestNotify { .. }
        | AlertsCmd::CheckRules { .. } => {
            unreachable!("handled without a database")
        }
    }
    Ok(())
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    // The rules file is read again by the alerting task; a bad one is said here, before
    // the database starts (a managed cluster's initdb takes a while).
    if !cfg.alerting.rules_file.is_empty() {
        rackwatch::alert::rules::RuleSet::load_checked(
            std::path::Path::new(&cfg.alerting.rules_file),
            &cfg.alerting.channels,
        )
        .map_err(|e| anyhow::anyhow!("alerting.rules_file: {e}"))?;
    }
    let db = Database::open(&cfg, Role::Owner).await?;
    db.watch_managed();
    let cfg = Arc::new(cfg);
    let bg = app::start_background(cfg.clone(), db.store.clone(), shutdown.clone())?;
    let server =
        app::start_server_with(cfg.clone(), db.store.clone(), bg.shared.clone(), shutdown).await?;
    tracing::info!(url = %server.url(), "serving");
    let r = server.task.await;
    let _ = bg.jobs.await;
    let _ = bg.alerts.await;
    db.close().await;
    r??;
    Ok(())
}

async fn run_agent(cfg: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let token = app::agent_token(&cfg)?;
    let identity = app::local_identity(&cfg);
    rackwatch::model::validate::validate_host(&identity)
        .map_err(|e| anyhow::anyhow!("agent.{e}"))?;
    if cfg.agent.host.name.is_empty() {
        tracing::warn!(
            host = %identity.name,
            "agent.host.name is not set: reporting as this machine's hostname; the token must be for that host"
        );
    }
    let sources = app::local_sources(&cfg)?;
    let spool = std::path::absolute(cfg.spool_dir()).unwrap_or_else(|_| cfg.spool_dir());
    let mut shipper = app::shipper(&cfg, &cfg.agent.server, &token, &spool)?
        .with_token_source(app::agent_token_source(&cfg));
    // Batches refused last time for naming another host than the token's go again, under
    // the name configured now (refused again, they wait for the next start).
    match shipper.spool.requeue_wrong_host(&identity) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            batches = n,
            host = %identity.name,
            "sending again the batches refused for naming another host than the token's"
        ),
        Err(e) => tracing::warn!(
            "cannot send again the batches in {}: {e}",
            rackwatch::collect::spool::WRONG_HOST
        ),
    }
    tracing::info!(spool = %spool.display(), "undelivered batches wait in the spool");
    let shipper = agent::run(identity, sources, shipper, app::timing(&cfg), shutdown).await?;
    if shipper.pending() {
        tracing::info!(
            batches = shipper.spool.len(),
            "undelivered batches stay in the spool for the next start"
        );
    }
    Ok(())
}

fn random_password() -> String {
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// `alerting.rules_file`, else the shipped example rules when run from the repository
/// (what the demo loads).
fn rules_file_or_example(cfg: &Config) -> String {
    if cfg.alerting.rules_file.is_empty() && std::path::Path::new("config/alerts.toml").is_file() {
        "config/alerts.toml".into()
    } else {
        cfg.alerting.rules_file.clone()
    }
}

async fn demo(
    cfg: Config,
    admin_password: Option<String>,
    local_agent: bool,
) -> anyhow::Result<()> {
    cfg.validate_demo().map_err(anyhow::Error::msg)?;
    let shutdown = shutdown_signal();
    let mut cfg = cfg;
    // The demo shows alerting with the shipped example rules (mails wait in the outbox
    // until alerting.smtp is configured).
    cfg.alerting.rules_file = rules_file_or_example(&cfg);
    // The simulated history is shorter than the week-ahead plan needs: plan as far ahead
    // as the history reaches.
    if cfg.simulator.history_days > 1 && cfg.capacity.lead_days >= cfg.simulator.history_days {
        cfg.capacity.lead_days = cfg.simulator.history_days - 1;
        tracing::info!(
            lead_days = cfg.capacity.lead_days,
            "demo: the capacity plan ahead uses a shorter lead than its 7-day default (simulator.history_days of history)"
        );
    }
    let db = Database::open(&cfg, Role::Owner).await?;
    db.watch_managed();
    // On a database of its own (managed) the demo may do as it likes; on one named by
    // database.url it refuses a real fleet's: it would add simulated hosts among the real
    // ones and reset the admin password.
    if !cfg.database.url.is_empty() {
        let local = app::local_identity(&cfg).name;
        let real: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM hosts WHERE NOT (labels ? 'simulated') AND name <> $1 ORDER BY name LIMIT 3",
        )
        .bind(&local)
        .fetch_all(&db.store.pool)
        .await?;
        if !real.is_empty() {
            anyhow::bail!(
                "database.url names a database with real hosts ({}…): the demo would add simulated hosts among them and reset the admin password; run it on a database of its own (leave database.url empty for the managed one)",
                real.join(", ")
            );
        }
    }
    let password = admin_password.unwrap_or_else(random_password);
    db.store
        .upsert_user("admin", UserRole::Admin, &password)
        .await?;
    db.store.revoke_tokens_with_note("demo").await?;
    let cfg = Arc::new(cfg);
    let mut fleet = SimulatedHost::fleet(cfg.simulator.hosts, cfg.simulator.gpus_per_host);
    // The fan fault and the lost GPU start a few minutes in: the history written now, and
    // the anomaly models trained on it, know the fleet healthy.
    let faults_at =
        chrono::Utc::now() + chrono::Duration::seconds(i64::from(cfg.simulator.faults_after_secs));
    for h in &mut fleet {
        h.start_faults_at(faults_at);
    }
    let t0 = std::time::Instant::now();
    // Ctrl-C while the history is written stops the demo there (and its Postgres), not
    // after it.
    let mut stop = shutdown.clone();
    let filled = tokio::select! {
        r = app::backfill_history(&cfg, &db.store, &mut fleet, chrono::Utc::now()) => r?,
        _ = stop.wait_for(|s| *s) => {
            println!(
                "Stopped while writing the simulated history. It is not completed at the next start: for the whole history, start again with a new --data-dir (or delete {}).",
                cfg.data_dir.display()
            );
            db.close().await;
            return Ok(());
        }
    };
    if filled.samples > 0 {
        tracing::info!(
            samples = filled.samples,
            rollup_rows = filled.rollup_rows,
            days = cfg.simulator.history_days,
            secs = format!("{:.1}", t0.elapsed().as_secs_f64()),
            "simulated fleet history back-filled"
        );
    }
    // The server stops after the agents have flushed; it has its own stop signal.
    let (server_stop_tx, server_stop) = watch::channel(false);
    let shared = app::Shared::default();
    let server =
        app::start_server_with(cfg.clone(), db.store.clone(), shared.clone(), server_stop).await?;
    let base = server.url();

    // The simulated agents ship their last `backfill_minutes` before alerting starts, so
    // no host looks silent in between.
    let mut agents = app::start_simulator(&cfg, &db.store, &base, fleet, shutdown.clone()).await?;
    let bg = app::start_background_with(cfg.clone(), db.store.clone(), shared, shutdown.clone())?;
    if local_agent {
        let identity = app::local_identity(&cfg);
        let token = db.store.create_agent_token(&identity.name, "demo").await?;
        let shipper = app::shipper(&cfg, &base, &token, &cfg.spool_dir().join("local"))?;
        let sources = app::local_sources(&cfg)?;
        agents.push(tokio::spawn(agent::run(
            identity,
            sources,
            shipper,
            app::timing(&cfg),
            shutdown.clone(),
        )));
    }
    let url = if cfg.server.public_url.is_empty() {
        base.clone()
    } else {
        cfg.public_url()
    };
    println!();
    println!(
        "Rackwatch demo is running ({} simulated hosts{}).",
        cfg.simulator.hosts,
        if local_agent { " + this machine" } else { "" }
    );
    println!("  Dashboard:  {url}/");
    println!("  Log in as:  admin / {password}");
    println!("  Data:       {}", cfg.data_dir.display());
    println!("Press Ctrl-C to stop.");
    println!();

    let mut sd = shutdown.clone();
    while !*sd.borrow() {
        if sd.changed().await.is_err() {
            break;
        }
    }
    for a in agents {
        if let Ok(Err(e)) = a.await {
            tracing::error!("an agent stopped: {e:#}");
        }
    }
    let _ = server_stop_tx.send(true);
    let _ = server.task.await;
    let _ = bg.jobs.await;
    let _ = bg.alerts.await;
    db.close().await;
    Ok(())
}
