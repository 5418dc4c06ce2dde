//! XIDs from the kernel log: `NVRM: Xid (PCI:0000:3b:00): 79, pid=…, …` lines.
//!
//! NVML's event API does not deliver every XID (79, 119 and 120 among them), so the agent
//! also reads the kernel log: `/dev/kmsg` by default, or any text file the kernel log is
//! written to (`/var/log/kern.log`, `journalctl -k -f > file`). The parser accepts the
//! line shapes of several driver generations and of kmsg, dmesg, syslog and journal.
//!
//! Both sources report into one [`XidLedger`], which pairs an occurrence seen by one
//! source with the same occurrence seen by the other (same GPU, same code, within
//! [`XidLedger::WINDOW`]), so each XID is stored once. Occurrences of the same code on
//! the same GPU within one collection round collapse into one event with a count.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{Collected, Source};
use crate::model::xid;
use crate::model::HardwareEvent;

/// A PCI address as NVRM prints it (`0000:3b:00`): domain, bus, device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddr {
    pub domain: u32,
    pub bus: u32,
    pub device: u32,
}

impl PciAddr {
    /// Parse `0000:3b:00`, `PCI:0000:3b:00`, NVML's `00000000:3B:00.0`, `3b:00.0`.
    pub fn parse(s: &str) -> Option<PciAddr> {
        let s = s.trim();
        let s = s.strip_prefix("PCI:").unwrap_or(s);
        let s = s.split('.').next()?;
        let parts: Vec<&str> = s.split(':').collect();
        let hex = |p: &str| u32::from_str_radix(p, 16).ok();
        match parts.as_slice() {
            [d, b, v] => Some(PciAddr {
                domain: hex(d)?,
                bus: hex(b)?,
                device: hex(v)?,
            }),
            [b, v] => Some(PciAddr {
                domain: 0,
                bus: hex(b)?,
                device: hex(v)?,
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for PciAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}",
            self.domain, self.bus, self.device
        )
    }
}

/// One XID line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelXid {
    pub pci: Option<PciAddr>,
    pub code: u32,
    pub pid: Option<String>,
    pub process: Option<String>,
    /// The driver's text after the code (and pid/name), e.g. "GPU has fallen off the bus."
    pub detail: String,
    /// kmsg's timestamp (µs since boot), when the line came from `/dev/kmsg`.
    pub kmsg_usec: Option<u64>,
}

/// Parse one kernel-log line; `None` if it is not an NVRM XID line.
pub fn parse_line(line: &str) -> Option<KernelXid> {
    let line = line.trim_end_matches(['\n', '\r']);
    let kmsg_usec = kmsg_timestamp(line);
    let at = line.find("NVRM: Xid")?;
    let rest = &line[at + "NVRM: Xid".len()..];
    let rest = rest.trim_start();
    // "(PCI:0000:3b:00): 79, …" or "(0000:03:00): 14, …"
    let rest = rest.strip_prefix('(')?;
    let close = rest.find(')')?;
    let pci = PciAddr::parse(&rest[..close]);
    let rest = rest[close + 1..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let code: u32 = digits.parse().ok()?;
    let mut rest = rest[digits.len()..].trim_start();
    rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    let mut pid = None;
    let mut process = None;
    // Optional "pid=1234," / "pid='<unknown>'," then "name=python," (names may hold
    // spaces: up to the next ", ").
    for (key, slot) in [("pid=", &mut pid), ("name=", &mut process)] {
        if let Some(r) = rest.strip_prefix(key) {
            let end = r.find(", ").unwrap_or(r.len());
            let v = r[..end].trim().trim_matches('\'').trim_end_matches(',');
            *slot = Some(v.to_string());
            rest = r[end..].trim_start_matches(", ").trim_start_matches(',');
            rest = rest.trim_start();
        }
    }
    Some(KernelXid {
        pci,
        code,
        pid,
        process,
        detail: rest.trim().to_string(),
        kmsg_usec,
    })
}

/// `/dev/kmsg` records start `prio,seq,usec,flags;` — the µs since boot.
fn kmsg_timestamp(line: &str) -> Option<u64> {
    let semi = line.find(';')?;
    let head = &line[..semi];
    let mut it = head.split(',');
    let prio = it.next()?;
    let _seq = it.next()?;
    let usec = it.next()?;
    if prio.is_empty() || !prio.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    usec.parse().ok()
}

/// Who saw an XID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XidOrigin {
    Nvml,
    KernelLog,
}

impl XidOrigin {
    fn label(self) -> &'static str {
        match self {
            XidOrigin::Nvml => "NVML event",
            XidOrigin::KernelLog => "kernel log",
        }
    }
}

struct Seen {
    at: Instant,
    origin: XidOrigin,
    pci: Option<PciAddr>,
    index: Option<u8>,
    code: u32,
    paired: bool,
}

/// XID occurrences reported recently by either source, and the GPU index of each PCI
/// address (filled by the NVML source). Shared by the NVML and kernel-log sources.
#[derive(Default)]
pub struct XidLedger {
    pci_index: HashMap<PciAddr, u8>,
    recent: VecDeque<Seen>,
}

impl XidLedger {
    /// How far apart the two sources may see the same occurrence. Covers an agent
    /// interval plus the kernel's and NVML's own delays.
    pub const WINDOW: Duration = Duration::from_secs(30);

    pub fn shared() -> Arc<Mutex<XidLedger>> {
        Arc::new(Mutex::new(XidLedger::default()))
    }

    /// NVML tells which GPU index sits at a PCI address.
    pub fn set_gpu(&mut self, pci: PciAddr, index: u8) {
        self.pci_index.insert(pci, index);
    }

    pub fn index_of(&self, pci: PciAddr) -> Option<u8> {
        self.pci_index.get(&pci).copied()
    }

    /// Record one occurrence; `false` if it is an occurrence the other source already
    /// reported (same GPU and code, unpaired, within the window), which is then paired.
    pub fn admit(
        &mut self,
        origin: XidOrigin,
        pci: Option<PciAddr>,
        index: Option<u8>,
        code: u32,
        now: Instant,
    ) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) > Self::WINDOW)
        {
            self.recent.pop_front();
        }
        let same_gpu = |s: &Seen| match (s.pci, pci) {
            (Some(a), Some(b)) => a == b,
            _ => s.index.is_some() && s.index == index,
        };
        if let Some(s) = self
            .recent
            .iter_mut()
            .find(|s| !s.paired && s.origin != origin && s.code == code && same_gpu(s))
        {
            s.paired = true;
            return false;
        }
        self.recent.push_back(Seen {
            at: now,
            origin,
            pci,
            index,
            code,
            paired: false,
        });
        true
    }
}

/// One XID occurrence on its way to becoming an event.
#[derive(Debug, Clone)]
pub struct XidOccurrence {
    pub ts: DateTime<Utc>,
    pub index: Option<u8>,
    pub pci: Option<PciAddr>,
    pub code: u32,
    pub detail: String,
}

/// Collapse occurrences of the same (GPU, code) into one event with a count, stamped
/// with the first occurrence's time.
pub fn collapse(occ: Vec<XidOccurrence>, origin: XidOrigin) -> Vec<HardwareEvent> {
    let mut order: Vec<(Option<u8>, Option<PciAddr>, u32)> = Vec::new();
    let mut groups: HashMap<(Option<u8>, Option<PciAddr>, u32), Vec<XidOccurrence>> =
        HashMap::new();
    for o in occ {
        let k = (
            o.index,
            if o.index.is_some() { None } else { o.pci },
            o.code,
        );
        if !groups.contains_key(&k) {
            order.push(k);
        }
        groups.entry(k).or_default().push(o);
    }
    order
        .into_iter()
        .map(|k| {
            let g = &groups[&k];
            let first = &g[0];
            let meaning = xid::lookup(first.code)
                .map(|x| x.meaning.to_string())
                .unwrap_or_else(|| format!("XID {}", first.code));
            let mut message = format!("XID {}: {meaning}", first.code);
            if let Some(p) = first.pci {
                message.push_str(&format!(" (PCI {p})"));
            }
            if !first.detail.is_empty() {
                message.push_str(&format!(" — {}", first.detail));
            }
            if g.len() > 1 {
                message.push_str(&format!(" [{}× in a burst]", g.len()));
            }
            message.push_str(&format!(" [{}]", origin.label()));
            if message.chars().count() > 900 {
                message = message.chars().take(900).collect();
            }
            HardwareEvent {
                ts: g.iter().map(|o| o.ts).min().unwrap_or(first.ts),
                index: first.index,
                kind: "xid".into(),
                code: Some(i64::from(first.code)),
                message,
                count: Some(g.len() as u32),
            }
        })
        .collect()
}

enum Reader {
    /// `/dev/kmsg`, non-blocking: one record per read.
    Kmsg(File),
    /// A text file, tailed from where it ended when the agent started; followed to the
    /// new file of its name when it is rotated (renamed and created anew).
    Text {
        path: std::path::PathBuf,
        file: File,
        pos: u64,
        partial: String,
    },
}

/// The file now at `path`, when it is another one than `file` (the log was rotated).
fn rotated(path: &std::path::Path, file: &File) -> Option<File> {
    use std::os::unix::fs::MetadataExt;
    let now = std::fs::metadata(path).ok()?;
    let open = file.metadata().ok()?;
    if (now.dev(), now.ino()) == (open.dev(), open.ino()) {
        return None;
    }
    File::open(path).ok()
}

/// The kernel log as a source of XID events.
pub struct KernelLogSource {
    reader: Reader,
    ledger: Arc<Mutex<XidLedger>>,
    /// Wall-clock time of boot, for kmsg timestamps.
    boot: DateTime<Utc>,
    /// kmsg records older than this are from before the agent started; skipped.
    since_usec: u64,
    failed: bool,
}

/// The boot time kept in `path` for boot `id` when it is within 2 s of `computed` (now
/// less the time since boot); else `computed`, kept there for the next start. Past 2 s
/// the clock was stepped (NTP after a start with a wrong clock): the new time is right.
fn stable_boot(path: &std::path::Path, id: &str, computed: DateTime<Utc>) -> DateTime<Utc> {
    let kept = std::fs::read_to_string(path).ok().and_then(|text| {
        let (kept_id, t) = text.trim().split_once(' ')?;
        let t = DateTime::parse_from_rfc3339(t).ok()?.with_timezone(&Utc);
        (kept_id == id && (t - computed).abs() <= chrono::Duration::seconds(2)).then_some(t)
    });
    if let Some(t) = kept {
        return t;
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let text = format!(
        "{id} {}\n",
        computed.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    if let Err(e) = std::fs::write(path, text) {
        tracing::debug!(path = %path.display(), "keeping the boot time: {e}");
    }
    computed
}

/// µs since boot (CLOCK_MONOTONIC, the kmsg clock).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

impl KernelLogSource {
    /// Open `spec`: empty = `/dev/kmsg`, `off` = none, anything else a text file.
    /// `Ok(None)` when it is off, or when `/dev/kmsg` cannot be read (logged once: the
    /// default on a machine without root). A file named in the config that cannot be
    /// read is an error, as a configured NVML library that does not load is: a typo
    /// there would leave the agent without kernel-log XIDs unnoticed.
    pub fn open(
        spec: &str,
        ledger: Arc<Mutex<XidLedger>>,
    ) -> Result<Option<KernelLogSource>, String> {
        let now_usec = monotonic_usec();
        let boot = Utc::now() - chrono::Duration::microseconds(now_usec as i64);
        let reader = match spec {
            "off" => return Ok(None),
            "" | "/dev/kmsg" => {
                use std::os::unix::fs::OpenOptionsExt;
                match std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open("/dev/kmsg")
                {
                    Ok(f) => Reader::Kmsg(f),
                    Err(e) => {
                        tracing::info!(
                            "cannot read /dev/kmsg ({e}); XIDs come from NVML only \
                             (set agent.kernel_log to a kernel log file, or run as root)"
                        );
                        return Ok(None);
                    }
                }
            }
            path => match File::open(path) {
                Ok(mut f) => {
                    let pos = f.seek(SeekFrom::End(0)).unwrap_or(0);
                    Reader::Text {
                        path: path.into(),
                        file: f,
                        pos,
                        partial: String::new(),
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "agent.kernel_log = {path}: cannot read it: {e} (name a readable kernel log file, leave it empty for /dev/kmsg, or set off)"
                    ));
                }
            },
        };
        // Records from the last minutes before the start are read too: an XID around
        // an agent restart is not lost (the server stores a replay once).
        let since_usec = now_usec.saturating_sub(10 * 60 * 1_000_000);
        Ok(Some(KernelLogSource {
            reader,
            ledger,
            boot,
            since_usec,
            failed: false,
        }))
    }

    /// Keep the boot time kmsg timestamps are converted with in `path`, per boot (the
    /// kernel's `boot_id`): a restarted agent then gives the XIDs it reads again (the
    /// last 10 minutes) the times it gave them before, and the server stores them once.
    /// Computed again each start, the boot time moves by microseconds, and each replayed
    /// XID was stored a second time.
    pub fn keep_boot_time(mut self, path: &std::path::Path) -> Self {
        if let Ok(id) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
            self.boot = stable_boot(path, id.trim(), self.boot);
        }
        self
    }

    /// New complete lines since the last call.
    fn read_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        match &mut self.reader {
            Reader::Kmsg(f) => {
                let mut buf = vec![0u8; 8192];
                for _ in 0..10_000 {
                    match f.read(&mut buf) {
                        Ok(0) => break,
                        // One record per read; continuation lines (" SUBSYSTEM=…")
                        // follow the message after a newline.
                        Ok(n) => lines.push(
                            String::from_utf8_lossy(&buf[..n])
                                .lines()
                                .next()
                                .unwrap_or("")
                                .to_string(),
                        ),
                        // A record was overwritten before we read it: go on.
                        Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            if !self.failed {
                                tracing::warn!("reading /dev/kmsg: {e}");
                                self.failed = true;
                            }
                            break;
                        }
                    }
                }
            }
            Reader::Text {
                path,
                file,
                pos,
                partial,
            } => {
                // The rest of the file, then, if the name now holds another file (rotated:
                // renamed, and a new one created), that one from its start.
                for _ in 0..2 {
                    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                    if len < *pos {
                        // Truncated in place: start over.
                        *pos = 0;
                        partial.clear();
                    }
                    // At most 16 MiB a round; the old file is left for the new one only
                    // once it is read to its end.
                    const CAP: u64 = 16 << 20;
                    let mut at_end = false;
                    if file.seek(SeekFrom::Start(*pos)).is_ok() {
                        let mut bytes = Vec::new();
                        if let Ok(n) = file.take(CAP).read_to_end(&mut bytes) {
                            at_end = (n as u64) < CAP;
                            *pos += n as u64;
                            partial.push_str(&String::from_utf8_lossy(&bytes));
                            while let Some(nl) = partial.find('\n') {
                                lines.push(partial[..nl].to_string());
                                partial.drain(..=nl);
                            }
                        }
                    }
                    if !at_end {
                        break;
                    }
                    match rotated(path, file) {
                        Some(new) => {
                            *file = new;
                            *pos = 0;
                            partial.clear();
                        }
                        None => break,
                    }
                }
            }
        }
        lines
    }
}

impl Source for KernelLogSource {
    fn name(&self) -> &'static str {
        "kernel-log"
    }

    fn collect(&mut self, now: DateTime<Utc>, out: &mut Collected) {
        let lines = self.read_lines();
        if lines.is_empty() {
            return;
        }
        let at = Instant::now();
        let mut ledger = match self.ledger.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        let mut occ = Vec::new();
        for line in lines {
            let Some(x) = parse_line(&line) else { continue };
            let ts = match (x.kmsg_usec, &self.reader) {
                (Some(u), Reader::Kmsg(_)) => {
                    if u < self.since_usec {
                        continue;
                    }
                    (self.boot + chrono::Duration::microseconds(u as i64)).min(now)
                }
                _ => now,
            };
            let index = x.pci.and_then(|p| ledger.index_of(p));
            if !ledger.admit(XidOrigin::KernelLog, x.pci, index, x.code, at) {
                continue;
            }
            let mut detail = x.detail.clone();
            if let Some(p) = &x.process {
                detail = format!(
                    "pid={}, name={p}: {detail}",
                    x.pid.as_deref().unwrap_or("?")
                );
            }
            occ.push(XidOccurrence {
                ts: DateTime::from_timestamp_millis(ts.timestamp_millis()).unwrap_or(ts),
                index,
                pci: x.pci,
                code: x.code,
                detail,
            });
        }
        out.events.extend(collapse(occ, XidOrigin::KernelLog));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pci(s: &str) -> Option<PciAddr> {
        PciAddr::parse(s)
    }

    #[test]
    fn parses_lines_from_several_driver_generations_and_log_formats() {
        // R3xx-era drivers: no "PCI:" prefix, no pid.
        let x = parse_line("[ 5120.317412] NVRM: Xid (0000:03:00): 14, Channel 00000001").unwrap();
        assert_eq!((x.pci, x.code), (pci("0000:03:00"), 14));
        assert_eq!(x.detail, "Channel 00000001");
        assert_eq!(x.pid, None);

        // R4xx/R5xx: PCI prefix, pid and process name, free text.
        let x = parse_line(
            "Mar  4 10:12:01 gpu-node-07 kernel: [1034567.123456] NVRM: Xid (PCI:0000:3b:00): 79, pid=2514, name=python3, GPU has fallen off the bus.",
        )
        .unwrap();
        assert_eq!((x.pci, x.code), (pci("0000:3b:00"), 79));
        assert_eq!(x.pid.as_deref(), Some("2514"));
        assert_eq!(x.process.as_deref(), Some("python3"));
        assert_eq!(x.detail, "GPU has fallen off the bus.");

        // R535+: quoted unknown pid, engine details with commas and parentheses.
        let x = parse_line(
            "NVRM: Xid (PCI:0000:b3:00): 13, pid='<unknown>', name=<unknown>, Graphics SM Warp Exception on (GPC 0, TPC 0, SM 0): Out Of Range Address",
        )
        .unwrap();
        assert_eq!((x.pci, x.code), (pci("0000:b3:00"), 13));
        assert_eq!(x.pid.as_deref(), Some("<unknown>"));
        assert!(x
            .detail
            .starts_with("Graphics SM Warp Exception on (GPC 0, TPC 0, SM 0)"));

        // R550 GSP firmware timeout, as /dev/kmsg delivers it.
        let x = parse_line(
            "4,18342,9876543210,-;NVRM: Xid (PCI:0000:65:00): 119, pid='N/A', name=N/A, Timeout after 6s of waiting for RPC response from GPU1 GSP! Expected function 76 (GSP_RM_CONTROL) (0x20802a02 0x8).",
        )
        .unwrap();
        assert_eq!(
            (x.pci, x.code, x.kmsg_usec),
            (pci("0000:65:00"), 119, Some(9_876_543_210))
        );
        assert_eq!(x.pid.as_deref(), Some("N/A"));

        // ECC: double-bit error (R470), row remapping (R510+), journal short-iso.
        let x = parse_line("2024-06-05T12:34:56+0000 host kernel: NVRM: Xid (PCI:0000:18:00): 48, pid=12345, name=train, An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 6, subpartition 0.").unwrap();
        assert_eq!((x.code, x.process.as_deref()), (48, Some("train")));
        let x = parse_line("[Wed Jun  5 12:34:56 2024] NVRM: Xid (PCI:0000:18:00): 63, Row Remapper: New row (0x0000000000a8c2d1) was marked for remapping, reset gpu to activate.").unwrap();
        assert_eq!(x.code, 63);
        assert!(x.detail.starts_with("Row Remapper"));

        // dmesg of R560 with a process name holding spaces.
        let x = parse_line("[  812.000001] NVRM: Xid (PCI:0000:ca:00): 31, pid=777, name=pt_main_thread worker, Ch 00000008, intr 00000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f1c_00000000.").unwrap();
        assert_eq!(x.process.as_deref(), Some("pt_main_thread worker"));
        assert!(x.detail.starts_with("Ch 00000008"));

        // Not XIDs.
        assert!(parse_line(
            "NVRM: GPU at PCI:0000:3b:00: GPU-b850f46d-d5ea-c752-ddf3-c4453e44d3f7"
        )
        .is_none());
        assert!(
            parse_line("nvidia-nvswitch2: SXid (PCI:0000:07:00.0): 12028, Non-fatal, Link 37")
                .is_none()
        );
        assert!(parse_line("NVRM: Xid (PCI:0000:3b:00): , nothing").is_none());
        assert!(parse_line("").is_none());
    }

    #[test]
    fn pci_addresses_from_nvml_and_the_kernel_compare_equal() {
        assert_eq!(pci("00000000:3B:00.0"), pci("PCI:0000:3b:00"));
        assert_eq!(pci("3b:00.0"), pci("0000:3b:00"));
        assert_eq!(pci("0000:3b:00").unwrap().to_string(), "0000:3b:00");
        assert!(pci("nonsense").is_none());
    }

    #[test]
    fn the_ledger_pairs_the_same_occurrence_from_both_sources_once() {
        let mut l = XidLedger::default();
        let t = Instant::now();
        let p = pci("0000:3b:00");
        // NVML sees two 13s; the kernel log sees the same two and a third.
        assert!(l.admit(XidOrigin::Nvml, p, Some(0), 13, t));
        assert!(l.admit(XidOrigin::Nvml, p, Some(0), 13, t));
        assert!(!l.admit(XidOrigin::KernelLog, p, Some(0), 13, t));
        assert!(!l.admit(XidOrigin::KernelLog, p, Some(0), 13, t));
        assert!(l.admit(XidOrigin::KernelLog, p, Some(0), 13, t));
        // Another GPU or code is another occurrence.
        assert!(l.admit(XidOrigin::KernelLog, pci("0000:5e:00"), None, 13, t));
        assert!(l.admit(XidOrigin::KernelLog, p, Some(0), 31, t));
        // Outside the window the same code is new.
        assert!(l.admit(XidOrigin::Nvml, p, Some(0), 79, t));
        assert!(l.admit(
            XidOrigin::KernelLog,
            p,
            Some(0),
            79,
            t + XidLedger::WINDOW + Duration::from_secs(1)
        ));
    }

    #[test]
    fn a_burst_collapses_into_one_event_with_a_count() {
        let ts = Utc::now();
        let o = |index, code| XidOccurrence {
            ts,
            index,
            pci: None,
            code,
            detail: String::new(),
        };
        let ev = collapse(
            vec![
                o(Some(0), 13),
                o(Some(0), 13),
                o(Some(1), 13),
                o(Some(0), 13),
            ],
            XidOrigin::Nvml,
        );
        assert_eq!(ev.len(), 2);
        assert_eq!((ev[0].index, ev[0].count), (Some(0), Some(3)));
        assert_eq!((ev[1].index, ev[1].count), (Some(1), Some(1)));
        assert!(
            ev[0].message.contains("Graphics engine exception"),
            "{}",
            ev[0].message
        );
    }

    #[test]
    fn a_configured_kernel_log_that_cannot_be_read_stops_the_start() {
        let ledger = XidLedger::shared();
        let e = KernelLogSource::open("/nonexistent/kern.log", ledger.clone())
            .err()
            .unwrap();
        assert!(
            e.starts_with("agent.kernel_log = /nonexistent/kern.log: cannot read it:"),
            "{e}"
        );
        assert!(KernelLogSource::open("off", ledger).unwrap().is_none());
    }

    #[test]
    fn a_text_log_is_tailed_from_its_end() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kern.log");
        std::fs::write(
            &path,
            "NVRM: Xid (PCI:0000:3b:00): 79, old line before the start\n",
        )
        .unwrap();
        let ledger = XidLedger::shared();
        let mut src = KernelLogSource::open(path.to_str().unwrap(), ledger)
            .unwrap()
            .unwrap();
        let mut c = Collected::default();
        src.collect(Utc::now(), &mut c);
        assert!(c.events.is_empty());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        write!(f, "[1.0] NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=x, GPU has fallen off the bus.\n[1.1] NVRM: Xid (PCI:0000:3b:00): 1").unwrap();
        src.collect(Utc::now(), &mut c);
        assert_eq!(c.events.len(), 1);
        // The half-written line completes later.
        writeln!(f, "20, pid='N/A', name=N/A, GSP error").unwrap();
        src.collect(Utc::now(), &mut c);
        assert_eq!(c.events.len(), 2);
        assert_eq!(c.events[1].code, Some(120));
        // Rotated as logrotate and rsyslog do: a last line into the old file, which is
        // renamed, and a new file of the name. Both lines are read, and the new file
        // from then on.
        writeln!(
            f,
            "[2.0] NVRM: Xid (PCI:0000:3b:00): 48, pid=1, name=x, DBE"
        )
        .unwrap();
        drop(f);
        std::fs::rename(&path, dir.path().join("kern.log.1")).unwrap();
        std::fs::write(
            &path,
            "[3.0] NVRM: Xid (PCI:0000:3b:00): 31, pid=2, name=y, MMU Fault\n",
        )
        .unwrap();
        src.collect(Utc::now(), &mut c);
        let codes: Vec<_> = c.events.iter().map(|e| e.code).collect();
        assert_eq!(codes[2..], [Some(48), Some(31)]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(f, "[4.0] NVRM: Xid (PCI:0000:3b:00): 13, pid=3, name=z, SM").unwrap();
        src.collect(Utc::now(), &mut c);
        assert_eq!(c.events.last().unwrap().code, Some(13));
    }

    #[test]
    fn the_boot_time_is_kept_per_boot_unless_the_clock_was_stepped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("kmsg-boot");
        let t0 = DateTime::from_timestamp(1_800_000_000, 123_456_000).unwrap();
        let ms = chrono::Duration::milliseconds;
        assert_eq!(stable_boot(&path, "boot-a", t0), t0);
        // Restarted: computed a little differently, the kept time stands.
        assert_eq!(stable_boot(&path, "boot-a", t0 + ms(3)), t0);
        assert_eq!(stable_boot(&path, "boot-a", t0 - ms(1500)), t0);
        // The clock was stepped: the new time, kept from then on.
        assert_eq!(
            stable_boot(&path, "boot-a", t0 + ms(60_000)),
            t0 + ms(60_000)
        );
        assert_eq!(
            stable_boot(&path, "boot-a", t0 + ms(60_001)),
            t0 + ms(60_000)
        );
        // Another boot.
        assert_eq!(stable_boot(&path, "boot-b", t0 + ms(5)), t0 + ms(5));
    }
}
