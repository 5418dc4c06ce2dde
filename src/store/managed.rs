//! The embedded default: a Postgres cluster that Rackwatch runs itself.
//!
//! With no `database.url`, Rackwatch runs `initdb` once and `pg_ctl start` in
//! `data_dir/postgres`, listening only on a unix socket in a private directory (no TCP
//! port to collide with or expose), reuses the cluster on the next start and stops it
//! on exit. As root, the cluster runs as an unprivileged user (`postgres` by default),
//! because Postgres refuses to run as root.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What went wrong starting or stopping the managed cluster.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb and pg_ctl {looked}). \
         Install the server (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install postgresql-server`), \
         set database.managed_bin_dir to the directory holding initdb, \
         or set database.url (RACKWATCH_DATABASE__URL) to use an existing server"
    )]
    NoBinaries { looked: String },
    #[error(
        "Rackwatch runs as root and must start Postgres as an unprivileged user, but user {0:?} does not exist. \
         Create it (`useradd --system postgres`) or set database.managed_user"
    )]
    NoUser(String),
    #[error("{step} failed ({status}); its output:\n{output}")]
    Step {
        step: String,
        status: String,
        output: String,
    },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A path that is not safe to use as it is.
    #[error("{0}")]
    Unsafe(String),
}

/// How to run the managed cluster.
#[derive(Debug, Clone)]
pub struct ManagedOptions {
    /// Directory that holds `data/`, the socket directory and the log.
    pub root: PathBuf,
    /// Where initdb/pg_ctl live; empty: search.
    pub bin_dir: String,
    /// User to run as when we are root.
    pub user: String,
    /// Extra `-c name=value` server settings (tests use `fsync=off`).
    pub settings: Vec<String>,
    /// Stop on exit a cluster that was already running when we started (long-running
    /// `serve`/`demo` take ownership of one left by a killed process; one-shot
    /// commands leave it to its owner).
    pub own_adopted: bool,
    /// The server's port: it names the socket file (`.s.PGSQL.<port>`) in the private
    /// socket directory, and is the TCP port when a setting turns `listen_addresses` on.
    /// Clusters that talk to each other (a Citus coordinator and its workers) each get
    /// their own.
    pub port: u16,
    /// Make the cluster a streaming replica of this primary (a libpq conninfo, e.g.
    /// `host=/path/to/socketdir port=5432 user=postgres`) instead of running `initdb`:
    /// `pg_basebackup -R` copies the primary on the first start. Tests and benchmarks of
    /// read replicas and failover use it; production replicas are the operator's.
    pub standby_of: Option<String>,
}

impl Default for ManagedOptions {
    fn default() -> Self {
        ManagedOptions {
            root: PathBuf::from("postgres"),
            bin_dir: String::new(),
            user: "postgres".into(),
            settings: Vec::new(),
            own_adopted: true,
            port: DEFAULT_PORT,
            standby_of: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// A running managed cluster.
#[derive(Debug)]
pub struct ManagedPostgres {
    bin_dir: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    log: PathBuf,
    run_as: Option<RunAs>,
    running: bool,
    /// The server options `pg_ctl start` gets (socket, port, settings).
    server_opts: String,
    /// Set when the owner stops the cluster: its watchers stop starting it again.
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Whether `stop`/drop shuts the cluster down. False for a cluster adopted by a
    /// one-shot command (e.g. `token create` next to a running `demo`).
    owned: bool,
}

/// Socket file names are `.s.PGSQL.<port>` inside our private socket directory, so the
/// port number only names the file and never collides with another server.
pub const DEFAULT_PORT: u16 = 5432;

impl ManagedPostgres {
    /// Find the server binaries: the configured directory, then PATH, then
    /// `/usr/lib/postgresql/<version>/bin` (highest version first).
    pub fn locate_binaries(configured: &str) -> Result<PathBuf, ManagedError> {
        let has = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
        if !configured.is_empty() {
            let d = PathBuf::from(configured);
            return if has(&d) {
                Ok(d)
            } else {
                Err(ManagedError::NoBinaries {
                    looked: format!("in database.managed_bin_dir = {configured}"),
                })
            };
        }
        if let Some(path) = std::env::var_os("PATH") {
            for d in std::env::split_paths(&path) {
                if has(&d) {
                    // A directory of links (/usr/local/bin → /usr/lib/postgresql/15/bin):
                    // the real one also holds pg_basebackup and the other tools.
                    let real = d
                        .join("initdb")
                        .canonicalize()
                        .ok()
                        .and_then(|p| p.parent().map(Path::to_path_buf))
                        .filter(|r| has(r));
                    return Ok(real.unwrap_or(d));
                }
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .filter(|(_, d)| has(d))
            .collect();
        versions.sort();
        versions
            .pop()
            .map(|(_, d)| d)
            .ok_or_else(|| ManagedError::NoBinaries {
                looked: "on PATH and under /usr/lib/postgresql/*/bin".into(),
            })
    }

    /// Initialize (first time) and start the cluster; adopts one already running in
    /// the same directory (e.g. left behind by a killed process). Blocking.
    pub fn start(opts: &ManagedOptions) -> Result<ManagedPostgres, ManagedError> {
        let bin_dir = Self::locate_binaries(&opts.bin_dir)?;
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(lookup_user(&opts.user)?)
        } else {
            None
        };
        // Run as root on a cluster of the configured user that exists where it was asked
        // for (the packaged server's, kept by `rackwatch` under a directory closed to
        // others), the command works on that cluster, instead of keeping a new, empty one
        // elsewhere. Nothing of it is chowned: it is that user's already.
        let adopted = run_as.and_then(|u| own_cluster(&opts.root, u));
        let root = match (&adopted, run_as) {
            (Some(abs), _) => abs.clone(),
            (None, Some(_)) => reachable_root(&opts.root)?,
            (None, None) => opts.root.clone(),
        };
        let io = |what: &str, p: &Path| {
            let what = format!("{what} {}", p.display());
            move |e| ManagedError::Io(what, e)
        };
        std::fs::create_dir_all(&root).map_err(io("cannot create", &root))?;
        let root = root.canonicalize().map_err(io("cannot resolve", &root))?;
        let data = root.join("data");
        let mut socket_dir = root.join("run");
        // Unix socket paths are limited to 107 bytes; fall back to a short private path.
        if socket_dir.as_os_str().len() > 90 {
            socket_dir = PathBuf::from(format!(
                "/tmp/rackwatch-pg-{:016x}",
                fnv1a(root.as_os_str().as_encoded_bytes())
            ));
        }
        // The short path is in /tmp, where anyone may have made it first: a symlink there
        // would have the chmod and chown below (as root) follow it, and a directory of
        // another user would hold Postgres' socket. Only a directory of ours is used.
        match std::fs::symlink_metadata(&socket_dir) {
            Ok(m) if !m.is_dir() => {
                return Err(ManagedError::Unsafe(format!(
                    "{} is not a directory (a symlink or a file): remove it",
                    socket_dir.display()
                )))
            }
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                // SAFETY: geteuid has no preconditions and cannot fail.
                let me = unsafe { libc::geteuid() };
                let ours = m.uid() == me || run_as.as_ref().is_some_and(|u| m.uid() == u.uid);
                if !ours {
                    return Err(ManagedError::Unsafe(format!(
                        "{} belongs to another user (uid {}): remove it",
                        socket_dir.display(),
                        m.uid()
                    )));
                }
            }
            Err(_) => {
                std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
                    .create(&socket_dir)
                    .map_err(io("cannot create", &socket_dir))?
            }
        }
        // Through a handle opened without following a symlink: one swapped in since the
        // check above (by whoever may write beside it) is refused, not followed by root.
        let socket_handle = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
                .open(&socket_dir)
                .map_err(io("cannot open", &socket_dir))?
        };
        socket_handle
            .set_permissions(std::fs::Permissions::from_mode(0o700))
            .map_err(io("cannot set permissions on", &socket_dir))?;
        if let Some(u) = run_as {
            if adopted.is_none() {
                std::os::unix::fs::chown(&root, Some(u.uid), Some(u.gid))
                    .map_err(io("cannot chown", &root))?;
            }
            std::os::unix::fs::fchown(&socket_handle, Some(u.uid), Some(u.gid))
                .map_err(io("cannot chown", &socket_dir))?;
        }
        drop(socket_handle);
        let log = root.join("postgres.log");
        let mut pg = ManagedPostgres {
            bin_dir,
            data,
            socket_dir,
            port: opts.port,
            log,
            run_as,
            running: false,
            server_opts: String::new(),
            stopping: Default::default(),
            owned: true,
        };

        if !pg.data.join("PG_VERSION").is_file() {
            // A half-finished initdb leaves a data dir without PG_VERSION: start over. An
            // empty one goes; one with files is moved aside, not deleted (it may be a base
            // backup an operator is unpacking).
            if pg.data.exists() {
                let empty = std::fs::read_dir(&pg.data)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
                if empty {
                    std::fs::remove_dir(&pg.data).map_err(io("cannot remove empty", &pg.data))?;
                } else {
                    let aside = pg.data.with_extension(format!(
                        "incomplete-{}",
                        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
                    ));
                    tracing::warn!(
                        from = %pg.data.display(),
                        to = %aside.display(),
                        "the managed database directory has no PG_VERSION (an initdb that did not finish?): moved aside, and a new one is made"
                    );
                    std::fs::rename(&pg.data, &aside)
                        .map_err(io("cannot move aside the incomplete", &pg.data))?;
                }
            }
            let data = pg.data.to_string_lossy().into_owned();
            match &opts.standby_of {
                None => pg.run(
                    "initdb",
                    &[
                        "-D",
                        &data,
                        "-U",
                        "postgres",
                        "-A",
                        "trust",
                        "-E",
                        "UTF8",
                        "--locale=C",
                        "--no-instructions",
                    ],
                )?,
                Some(primary) => pg.run(
                    "pg_basebackup",
                    &[
                        "-D", &data, "-d", primary, "-R", "-X", "stream", "-c", "fast",
                    ],
                )?,
            }
        }
        pg.server_opts = format!(
            "-k {} -c listen_addresses='' -p {} -c unix_socket_permissions=0700",
            pg.socket_dir.display(),
            pg.port
        );
        for s in &opts.settings {
            pg.server_opts.push_str(" -c ");
            pg.server_opts.push_str(s);
        }
        if pg.status_running() {
            // A command that shares the server's cluster (the CLI) says nothing on every call;
            // a process that takes the cluster over says so.
            if opts.own_adopted {
                tracing::info!(data = %pg.data.display(), "managed Postgres already running; adopting it");
            } else {
                tracing::debug!(data = %pg.data.display(), "managed Postgres already running; using it");
            }
            pg.owned = opts.own_adopted;
        } else {
            pg.pg_ctl_start().map_err(|e| match e {
                ManagedError::Step {
                    step,
                    status,
                    output,
                } => {
                    let tail = std::fs::read_to_string(&pg.log).unwrap_or_default();
                    let tail: Vec<&str> = tail.lines().rev().take(15).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    ManagedError::Step {
                        step,
                        status,
                        output: format!(
                            "{output}\n--- {} ---\n{}",
                            pg.log.display(),
                            tail.join("\n")
                        ),
                    }
                }
                other => other,
            })?;
        }
        pg.running = true;
        Ok(pg)
    }

    fn pg_ctl_start(&self) -> Result<(), ManagedError> {
        let (data, log) = (
            self.data.to_string_lossy().into_owned(),
            self.log.to_string_lossy().into_owned(),
        );
        self.run(
            "pg_ctl start",
            &[
                "-D",
                &data,
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "-o",
                &self.server_opts,
                "start",
            ],
        )
    }

    /// A handle on the same cluster for a watchdog: it checks and starts the cluster, and
    /// never stops it (only the owner does).
    pub fn watcher(&self) -> ManagedPostgres {
        ManagedPostgres {
            bin_dir: self.bin_dir.clone(),
            data: self.data.clone(),
            socket_dir: self.socket_dir.clone(),
            port: self.port,
            log: self.log.clone(),
            run_as: self.run_as,
            running: false,
            server_opts: self.server_opts.clone(),
            stopping: self.stopping.clone(),
            owned: false,
        }
    }

    /// Start the cluster again if its server stopped (killed, crashed, stopped by hand);
    /// whether it had to.
    pub fn ensure_running(&self) -> Result<bool, ManagedError> {
        use std::sync::atomic::Ordering;
        if self.stopping.load(Ordering::SeqCst) || self.status_running() {
            return Ok(false);
        }
        // The owner may have begun stopping it while the status was read.
        if self.stopping.load(Ordering::SeqCst) {
            return Ok(false);
        }
        self.pg_ctl_start()?;
        Ok(true)
    }

    /// URL of the cluster's `postgres` maintenance database.
    pub fn admin_url(&self) -> String {
        self.url_for("postgres")
    }

    /// URL of a database in this cluster.
    pub fn url_for(&self, db: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/{db}?host={}",
            self.port,
            self.socket_dir.display()
        )
    }

    /// Data directory of the cluster.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Whether this process started the cluster (and so stops it); false for a cluster
    /// another process runs, such as a demo's, that this one only adopted.
    pub fn owns(&self) -> bool {
        self.owned
    }

    /// The private directory holding the server's socket (a libpq `host`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server's port (names the socket file; the TCP port where TCP is on).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Leave the cluster running when this handle is dropped (a launcher script that
    /// exits while the cluster serves others; `pg_ctl stop` or a later owner stops it).
    pub fn detach(mut self) {
        self.owned = false;
    }

    /// Stop the cluster (fast shutdown: running transactions are rolled back, committed
    /// data is safe). Blocking.
    pub fn stop(&mut self) -> Result<(), ManagedError> {
        if !self.running || !self.owned {
            return Ok(());
        }
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let data = self.data.to_string_lossy().into_owned();
        self.run(
            "pg_ctl stop",
            &["-D", &data, "-m", "fast", "-w", "-t", "60", "stop"],
        )?;
        self.running = false;
        Ok(())
    }

    /// Promote a streaming replica to primary (`pg_ctl promote`, waits until it is).
    pub fn promote(&self) -> Result<(), ManagedError> {
        let data = self.data.to_string_lossy().into_owned();
        self.run("pg_ctl promote", &["-D", &data, "-w", "promote"])
    }

    /// A libpq conninfo of this cluster (what a replica's `standby_of` names).
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    /// Stop without waiting for clients (used when the process exits abruptly).
    pub fn stop_immediate(&mut self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if self.running {
            let data = self.data.to_string_lossy().into_owned();
            let _ = self.run(
                "pg_ctl stop",
                &["-D", &data, "-m", "immediate", "-w", "stop"],
            );
            self.running = false;
        }
    }

    fn status_running(&self) -> bool {
        let data = self.data.to_string_lossy().into_owned();
        let mut cmd = self.command("pg_ctl");
        cmd.args(["-D", &data, "status"]);
        cmd.output().map(|o| o.status.success()).unwrap_or(false)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        if let Some(u) = self.run_as {
            cmd.uid(u.uid).gid(u.gid);
            // std drops root's supplementary groups (setgroups) when a uid is set.
        }
        cmd.current_dir(self.data.parent().unwrap_or(Path::new("/")));
        cmd.env("LC_ALL", "C");
        cmd
    }

    fn run(&self, step: &str, args: &[&str]) -> Result<(), ManagedError> {
        let program = step.split_whitespace().next().unwrap_or(step);
        let out = self
            .command(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| {
                ManagedError::Io(
                    format!("cannot run {}", self.bin_dir.join(program).display()),
                    e,
                )
            })?;
        if out.status.success() {
            return Ok(());
        }
        Err(ManagedError::Step {
            step: step.to_string(),
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

impl Drop for ManagedPostgres {
    fn drop(&mut self) {
        if self.running && self.owned {
            if let Err(e) = self.stop() {
                tracing::warn!("stopping managed Postgres: {e}");
            }
        }
    }
}

fn lookup_user(name: &str) -> Result<RunAs, ManagedError> {
    let c = CString::new(name).map_err(|_| ManagedError::NoUser(name.to_string()))?;
    // getpwnam is not thread-safe; it runs once at startup before other threads use it.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(ManagedError::NoUser(name.to_string()));
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(RunAs { uid, gid })
}

/// The unprivileged user must be able to reach the cluster directory. When a parent
/// (e.g. `/root`) is closed to others, keep the cluster under `/var/lib/rackwatch`
/// instead, named after the configured path so the next start finds it again.
/// Where [`ManagedPostgres::start`] keeps the cluster of `abs` when a parent of it is
/// closed to the unprivileged Postgres user.
fn alt_root(abs: &Path) -> PathBuf {
    PathBuf::from("/var/lib/rackwatch").join(format!(
        "pg-{:016x}",
        fnv1a(abs.as_os_str().as_encoded_bytes())
    ))
}

/// Whether a cluster was made under `root` (or where `start` keeps it for `root`), i.e.
/// whether `start` would adopt one rather than run `initdb`.
pub fn cluster_exists(root: &Path) -> bool {
    let abs = absolute(root).unwrap_or_else(|_| root.to_path_buf());
    [abs.clone(), alt_root(&abs)]
        .iter()
        .any(|r| r.join("data").join("PG_VERSION").is_file())
}

/// The absolute path of a cluster initialized at `root` (its `data` directory holds
/// `PG_VERSION`) that belongs to `user`, where nobody else could have put it or could swap
/// it: neither `root` nor `data` is a symlink, and every directory above `root` belongs to
/// root or `user` and is writable by neither its group nor others (or is root's and
/// sticky).
fn own_cluster(root: &Path, user: RunAs) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let abs = absolute(root).ok()?;
    let data = abs.join("data");
    for p in [&abs, &data] {
        let m = std::fs::symlink_metadata(p).ok()?;
        if !m.is_dir() || m.uid() != user.uid {
            return None;
        }
    }
    if !data.join("PG_VERSION").is_file() {
        return None;
    }
    abs.ancestors()
        .skip(1)
        .all(|a| {
            // (A sticky directory of root's, such as /tmp, is fine: nobody else can
            // rename or remove what is in it.)
            std::fs::symlink_metadata(a).is_ok_and(|m| {
                let sticky = m.mode() & 0o1000 != 0 && m.uid() == 0;
                m.is_dir()
                    && (m.uid() == 0 || m.uid() == user.uid)
                    && (m.mode() & 0o022 == 0 || sticky)
            })
        })
        .then_some(abs)
}

/// `root`, relative to the current directory when it is not absolute.
fn absolute(root: &Path) -> std::io::Result<PathBuf> {
    Ok(if root.is_absolute() {
        root.to_path_buf()
    } else {
        std::env::current_dir()?.join(root)
    })
}

fn reachable_root(root: &Path) -> Result<PathBuf, ManagedError> {
    let abs = absolute(root).map_err(|e| ManagedError::Io("cannot read current dir".into(), e))?;
    let mut ok = true;
    for anc in abs.ancestors().skip(1) {
        if let Ok(meta) = std::fs::metadata(anc) {
            if meta.permissions().mode() & 0o001 == 0 {
                ok = false;
                break;
            }
        }
    }
    if ok {
        return Ok(abs);
    }
    let alt = alt_root(&abs);
    tracing::info!(
        wanted = %abs.display(), using = %alt.display(),
        "a parent of the data dir is closed to the unprivileged Postgres user; keeping the cluster elsewhere"
    );
    std::fs::create_dir_all("/var/lib/rackwatch")
        .map_err(|e| ManagedError::Io("cannot create /var/lib/rackwatch".into(), e))?;
    std::fs::set_permissions("/var/lib/rackwatch", std::fs::Permissions::from_mode(0o755))
        .map_err(|e| ManagedError::Io("cannot set permissions on /var/lib/rackwatch".into(), e))?;
    Ok(alt)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_message_names_the_fix() {
        let err = ManagedPostgres::locate_binaries("/nonexistent/pg/bin")
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install postgresql"), "{err}");
        assert!(err.contains("database.url"), "{err}");
        assert!(err.contains("/nonexistent/pg/bin"), "{err}");
    }
}
