//! The agent's disk spool: batches the server has not acknowledged wait here, one
//! file each, and are replayed oldest-first. Writes are atomic (temp file, fsync,
//! rename), so a crash leaves either the whole batch or nothing. The spool is bounded;
//! past the limit the oldest batches are dropped and counted.

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::model::Batch;

/// Batches kept in `rejected/` for inspection; older ones are deleted.
pub const KEEP_REJECTED: usize = 100;

/// Where batches refused for naming another host than the token's wait (under the spool
/// directory): the agent's next start sends them again under its configured host.
pub const WRONG_HOST: &str = "rejected/wrong-host";

/// Batches kept in [`WRONG_HOST`]: a day of them at the default 10 s ship interval
/// (about 80 MB); older ones are deleted.
pub const KEEP_WRONG_HOST: usize = 8_640;

/// A bounded on-disk queue of batches.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// (sequence number, size in bytes), oldest first.
    files: VecDeque<(u64, u64)>,
    bytes: u64,
    next_seq: u64,
    /// Batches dropped because the spool was full.
    pub dropped_total: u64,
    /// Spool files that could not be read back (torn or damaged), set aside.
    pub corrupt_total: u64,
    /// Dropping for want of room since the last delivery: logged once per episode.
    overflowing: bool,
    /// The head file that could not be read, and how many times in a row.
    read_failures: Option<(u64, u32)>,
    /// The spool's `lock` file, held locked while the spool is open: a second agent
    /// started on the same directory would replay this one's batches as its own.
    _lock: fs::File,
}

/// The file in a spool directory that its agent holds locked.
pub const LOCK_FILE: &str = "lock";

/// A spooled batch that cannot be read back (e.g. a damaged file).
#[derive(Debug, thiserror::Error)]
#[error("spool file {path} is unreadable ({reason}); moved to {quarantine}")]
pub struct CorruptEntry {
    pub path: String,
    pub reason: String,
    pub quarantine: String,
}

/// Why the oldest spooled batch cannot be sent now.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Not a batch: set aside in `rejected/`.
    #[error(transparent)]
    Corrupt(CorruptEntry),
    /// Not readable right now; it stays at the head and is tried again.
    #[error("spool file {path} cannot be read ({reason}; attempt {tries} of {READ_TRIES}): trying again later")]
    Unreadable {
        path: String,
        reason: String,
        tries: u32,
    },
}

/// Reads of the oldest spool file that may fail in a row before it is set aside.
pub const READ_TRIES: u32 = 5;

/// The sequence number in a spool file's name (`00000000000000000042.json`).
fn seq_of(name: &str) -> Option<u64> {
    name.strip_suffix(".json")?.parse().ok()
}

impl Spool {
    /// Open (or create) a spool directory, check that batches can be written there (an
    /// outage is the wrong time to find out), and index what is already there.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Spool> {
        if dir.exists() && !dir.is_dir() {
            return Err(std::io::Error::other("it is a file, not a directory"));
        }
        fs::create_dir_all(dir)?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ResourceBusy,
                    "another agent is using it (it holds the spool's lock file): each agent needs a spool directory of its own (agent.spool_dir)",
                ))
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot lock its lock file: {e}"),
                ))
            }
        }
        let probe = dir.join("write-check.tmp");
        fs::write(&probe, b"")
            .and_then(|()| fs::remove_file(&probe))
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot write in it: {e}")))?;
        let mut files = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // An interrupted write: the batch was still in memory and never acknowledged as spooled.
                let _ = fs::remove_file(e.path());
                continue;
            }
            if let Some(seq) = seq_of(&name) {
                files.push((seq, e.metadata()?.len()));
            }
        }
        files.sort_unstable();
        let bytes = files.iter().map(|f| f.1).sum();
        // Numbers go on from the highest in use, rejected batches included: a batch set
        // aside there keeps its name, and the newest are the ones kept.
        let rejected = [dir.join("rejected"), dir.join(WRONG_HOST)]
            .iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| seq_of(&e.file_name().to_string_lossy()))
            .max();
        let next_seq = files.last().map(|f| f.0).max(rejected).map_or(1, |s| s + 1);
        Ok(Spool {
            dir: dir.to_owned(),
            max_bytes,
            files: files.into(),
            bytes,
            next_seq,
            dropped_total: 0,
            corrupt_total: 0,
            overflowing: false,
            read_failures: None,
            _lock: lock,
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.files.len()
    }
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
    /// Bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Append a batch durably and return its sequence number. Drops the oldest
    /// batches when over the size limit.
    pub fn push(&mut self, batch: &Batch) -> std::io::Result<u64> {
        self.push_json(serde_json::to_vec(batch).map_err(std::io::Error::other)?)
    }

    /// [`Spool::push`] of a batch already encoded.
    fn push_json(&mut self, data: Vec<u8>) -> std::io::Result<u64> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = self.path(seq);
        let tmp = path.with_extension("json.tmp");
        let write = |tmp: &Path| -> std::io::Result<()> {
            let mut f = fs::File::create(tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            fs::rename(tmp, &path)
        };
        // A full disk: the oldest batches make room for the newest, as past `max_bytes`
        // (up to three, then the batch is given up). A partial file never stays behind.
        let mut room_made = 0;
        loop {
            match write(&tmp) {
                Ok(()) => break,
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    let full = matches!(
                        e.kind(),
                        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                    );
                    if !full || room_made == 3 || self.files.is_empty() {
                        return Err(e);
                    }
                    let (old, size) = self.files.pop_front().expect("non-empty");
                    let _ = fs::remove_file(self.path(old));
                    self.bytes -= size;
                    self.dropped_total += 1;
                    room_made += 1;
                    tracing::warn!(spool = %self.dir.display(), "the disk is full: the oldest spooled batch was dropped to keep the newest (counted in dropped_batches_total)");
                }
            }
        }
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.files.push_back((seq, data.len() as u64));
        self.bytes += data.len() as u64;
        while self.bytes > self.max_bytes && self.files.len() > 1 {
            let (old, size) = self.files.pop_front().expect("non-empty");
            let _ = fs::remove_file(self.path(old));
            self.bytes -= size;
            self.dropped_total += 1;
            if !self.overflowing {
                self.overflowing = true;
                tracing::warn!(spool = %self.dir.display(), "spool over {} bytes: dropping the oldest batches until the server takes some (counted in dropped_batches_total)", self.max_bytes);
            }
        }
        Ok(seq)
    }

    /// The oldest batch, without removing it. A damaged file (not a batch) is moved to
    /// `rejected/` and reported; the next call returns the batch after it. A file that
    /// cannot be read (too many open files, an I/O error) stays where it is: the caller
    /// tries again later, and after [`READ_TRIES`] failures in a row it is set aside too,
    /// so one bad sector does not hold up every batch behind it.
    pub fn oldest(&mut self) -> Option<Result<(u64, Batch), SpoolError>> {
        let &(seq, _) = self.files.front()?;
        let path = self.path(seq);
        let parsed = match fs::read(&path) {
            Ok(d) => serde_json::from_slice::<Batch>(&d).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Deleted by hand: nothing to send.
                if let Some((_, size)) = self.files.pop_front() {
                    self.bytes -= size;
                }
                return self.oldest();
            }
            Err(e) => {
                let tries = match self.read_failures {
                    Some((s, n)) if s == seq => n + 1,
                    _ => 1,
                };
                self.read_failures = Some((seq, tries));
                if tries < READ_TRIES {
                    return Some(Err(SpoolError::Unreadable {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                        tries,
                    }));
                }
                Err(format!("{e}, {tries} times in a row"))
            }
        };
        self.read_failures = None;
        match parsed {
            Ok(b) => Some(Ok((seq, b))),
            Err(reason) => {
                self.corrupt_total += 1;
                let q = self.quarantine(seq);
                Some(Err(SpoolError::Corrupt(CorruptEntry {
                    path: path.display().to_string(),
                    reason,
                    quarantine: q,
                })))
            }
        }
    }

    /// Forget a delivered batch.
    pub fn remove(&mut self, seq: u64) {
        if let Some(pos) = self.files.iter().position(|f| f.0 == seq) {
            let (_, size) = self.files.remove(pos).expect("position is valid");
            self.bytes -= size;
            let _ = fs::remove_file(self.path(seq));
            // The server takes batches again: the next overflow is a new episode.
            self.overflowing = false;
        }
    }

    /// Set aside a batch the server refused because it names another host than the
    /// token's (403): it waits in [`WRONG_HOST`] (the newest [`KEEP_WRONG_HOST`]) for
    /// [`Spool::requeue_wrong_host`] at the next start, when the name or the token has
    /// been fixed. Returns where it went.
    pub fn set_aside_wrong_host(&mut self, seq: u64) -> String {
        self.move_out(seq, WRONG_HOST, KEEP_WRONG_HOST)
    }

    /// Put the batches set aside by [`Spool::set_aside_wrong_host`] back at the end of
    /// the queue under `host` (this agent's configuration now: the samples are this
    /// machine's whatever name they were refused under), oldest first and as many as the
    /// spool has room for (the rest wait for the next start, so none pushes out a batch
    /// already waiting). Returns how many; a file that is not a batch stays where it is.
    pub fn requeue_wrong_host(&mut self, host: &crate::model::HostInfo) -> std::io::Result<usize> {
        let dir = self.dir.join(WRONG_HOST);
        let mut names: Vec<(u64, PathBuf)> = match fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| Some((seq_of(&e.file_name().to_string_lossy())?, e.path())))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        names.sort();
        let mut n = 0;
        for (_, path) in names {
            let Ok(mut batch) = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|d| serde_json::from_slice::<Batch>(&d).map_err(|e| e.to_string()))
            else {
                continue;
            };
            batch.host = host.clone();
            let data = serde_json::to_vec(&batch).map_err(std::io::Error::other)?;
            if self.bytes + data.len() as u64 > self.max_bytes {
                break;
            }
            self.push_json(data)?;
            fs::remove_file(&path)?;
            n += 1;
        }
        Ok(n)
    }

    /// Move a batch the server refuses for good into `rejected/` for an operator to
    /// inspect; `rejected/` keeps the newest [`KEEP_REJECTED`] (an agent whose token names
    /// another host would otherwise fill the disk). Returns where it went.
    pub fn quarantine(&mut self, seq: u64) -> String {
        self.move_out(seq, "rejected", KEEP_REJECTED)
    }

    /// Move the spooled batch `seq` into the directory `sub` (under the spool), which
    /// keeps the newest `keep`.
    fn move_out(&mut self, seq: u64, sub: &str, keep: usize) -> String {
        let rej = self.dir.join(sub);
        let _ = fs::create_dir_all(&rej);
        let to = rej.join(format!("{seq:020}.json"));
        let _ = fs::rename(self.path(seq), &to);
        if let Some(pos) = self.files.iter().position(|f| f.0 == seq) {
            let (_, size) = self.files.remove(pos).expect("position is valid");
            self.bytes -= size;
        }
        if let Ok(entries) = fs::read_dir(&rej) {
            // Sequence-numbered names sort oldest first.
            let mut names: Vec<_> = entries
                .filter_map(|e| e.ok())
                .filter(|e| seq_of(&e.file_name().to_string_lossy()).is_some())
                .map(|e| e.path())
                .collect();
            if names.len() > keep {
                names.sort();
                for old in &names[..names.len() - keep] {
                    let _ = fs::remove_file(old);
                }
            }
        }
        to.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostInfo, HostSample};

    fn batch(n: i64) -> Batch {
        Batch {
            host: HostInfo {
                name: "h".into(),
                ..Default::default()
            },
            host_samples: vec![HostSample {
                ts: chrono::DateTime::from_timestamp(1_700_000_000 + n, 0).unwrap(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn fifo_survives_reopen_and_skips_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..3 {
            s.push(&batch(i)).unwrap();
        }
        // A crash mid-write leaves a temp file; a disk error leaves garbage.
        fs::write(dir.path().join("00000000000000000099.json.tmp"), b"{half").unwrap();
        fs::write(s.path(2), b"{not json").unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.len(), 3);
        let (seq, b) = s.oldest().unwrap().unwrap();
        assert_eq!(b, batch(0));
        s.remove(seq);
        let err = s.oldest().unwrap().unwrap_err();
        assert!(err.to_string().contains("rejected"), "{err}");
        assert_eq!(s.corrupt_total, 1);
        let (_, b) = s.oldest().unwrap().unwrap();
        assert_eq!(b, batch(2));
        assert!(!dir.path().join("00000000000000000099.json.tmp").exists());
    }

    #[test]
    fn a_failed_write_leaves_no_partial_file_and_the_spool_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push(&batch(0)).unwrap();
        // The next batch's name is taken by a directory: its rename fails.
        fs::create_dir(s.path(s.next_seq)).unwrap();
        assert!(s.push(&batch(1)).is_err());
        assert_eq!(s.len(), 1);
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // The one after is written as usual.
        s.push(&batch(2)).unwrap();
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn rejected_batches_keep_the_newest_hundred() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..(KEEP_REJECTED as i64 + 20) {
            let seq = s.push(&batch(i)).unwrap();
            s.quarantine(seq);
        }
        let mut kept: Vec<_> = fs::read_dir(dir.path().join("rejected"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        kept.sort();
        assert_eq!(kept.len(), KEEP_REJECTED);
        assert_eq!(kept[0], "00000000000000000021.json");
        assert!(s.is_empty());
    }

    #[test]
    fn numbers_go_on_after_the_rejected_batches_when_the_spool_was_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..3 {
            let seq = s.push(&batch(i)).unwrap();
            s.quarantine(seq);
        }
        drop(s);
        // Reopened empty: a new refusal must not overwrite rejected/…01.json.
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(s.is_empty());
        let seq = s.push(&batch(9)).unwrap();
        assert_eq!(seq, 4);
        s.quarantine(seq);
        let first: Batch = serde_json::from_slice(
            &fs::read(dir.path().join("rejected/00000000000000000001.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(first, batch(0));
        assert_eq!(
            fs::read_dir(dir.path().join("rejected")).unwrap().count(),
            4
        );
    }

    #[test]
    fn a_file_that_cannot_be_read_stays_until_it_failed_several_times() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push(&batch(0)).unwrap();
        s.push(&batch(1)).unwrap();
        // A directory where the file was: reading it fails with an I/O error (not a
        // parse error), as a transient EMFILE or EIO would.
        fs::remove_file(s.path(1)).unwrap();
        fs::create_dir(s.path(1)).unwrap();
        for tries in 1..READ_TRIES {
            match s.oldest().unwrap() {
                Err(SpoolError::Unreadable { tries: t, .. }) => assert_eq!(t, tries),
                other => panic!("{other:?}"),
            }
            assert_eq!(s.len(), 2, "it stays at the head");
        }
        // Readable again before the last try: sent as usual.
        fs::remove_dir(s.path(1)).unwrap();
        fs::write(s.path(1), serde_json::to_vec(&batch(0)).unwrap()).unwrap();
        assert_eq!(s.oldest().unwrap().unwrap().1, batch(0));
        // Failing READ_TRIES times in a row: set aside, and the next batch comes.
        fs::remove_file(s.path(1)).unwrap();
        fs::create_dir(s.path(1)).unwrap();
        for _ in 1..READ_TRIES {
            assert!(matches!(
                s.oldest(),
                Some(Err(SpoolError::Unreadable { .. }))
            ));
        }
        assert!(matches!(s.oldest(), Some(Err(SpoolError::Corrupt(_)))));
        assert_eq!(s.oldest().unwrap().unwrap().1, batch(1));
        // A file deleted by hand is skipped.
        fs::remove_file(s.path(2)).unwrap();
        assert!(s.oldest().is_none());
    }

    #[test]
    fn a_spool_in_use_by_another_agent_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Spool::open(dir.path(), 1 << 20).unwrap();
        first.push(&batch(0)).unwrap();
        let err = Spool::open(dir.path(), 1 << 20).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ResourceBusy);
        assert!(
            err.to_string().contains("another agent is using it"),
            "{err}"
        );
        // Its batch is untouched, and the next agent on the directory finds it.
        assert_eq!(first.len(), 1);
        drop(first);
        let second = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(second.len(), 1);
    }

    #[test]
    fn a_spool_that_cannot_be_written_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("afile");
        fs::write(&file, b"x").unwrap();
        let err = Spool::open(&file, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("a file, not a directory"), "{err}");
        // A directory where no file can be written (the root user ignores modes, so the
        // write check's own name is taken by a directory here).
        let blocked = dir.path().join("blocked");
        fs::create_dir_all(blocked.join("write-check.tmp")).unwrap();
        let err = Spool::open(&blocked, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("cannot write in it"), "{err}");
    }

    #[test]
    fn bounded_by_bytes_dropping_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&batch(0)).unwrap().len() as u64;
        let mut s = Spool::open(dir.path(), one * 3 + one / 2).unwrap();
        for i in 0..5 {
            s.push(&batch(i)).unwrap();
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.dropped_total, 2);
        assert_eq!(s.oldest().unwrap().unwrap().1, batch(2));
    }
}
