//! Progress counters for long work, and a reporter that logs them periodically: bytes,
//! files, rate and (when a total is known) ETA.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Progress {
    pub what: &'static str,
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    /// Expected total bytes, when known (the parent snapshot's size, say); 0 if unknown.
    pub total_bytes: AtomicU64,
    pub errors: AtomicU64,
    started: Instant,
    stop: AtomicBool,
}

impl Progress {
    pub fn new(what: &'static str) -> Arc<Progress> {
        Arc::new(Progress {
            what,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            started: Instant::now(),
            stop: AtomicBool::new(false),
        })
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn add_file(&self, bytes: u64) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_bytes(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One line: `1.2 GiB, 3400 files, 310 MiB/s, ETA 12s`.
    pub fn line(&self) -> String {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let files = self.files.load(Ordering::Relaxed);
        let secs = self.elapsed().as_secs_f64().max(0.001);
        let rate = bytes as f64 / secs;
        let total = self.total_bytes.load(Ordering::Relaxed);
        let eta = if total > bytes && rate > 0.0 {
            format!(", ETA {}s", ((total - bytes) as f64 / rate).round())
        } else {
            String::new()
        };
        format!("{}, {files} files, {}/s{eta}", human_bytes(bytes), human_bytes(rate as u64))
    }

    /// Log a line every `every` until [`Progress::finish`].
    pub fn spawn_reporter(self: &Arc<Self>, every: Duration) -> std::thread::JoinHandle<()> {
        let p = self.clone();
        std::thread::spawn(move || {
            let mut next = Instant::now() + every;
            while !p.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if Instant::now() >= next {
                    tracing::info!(target: "cairn::progress", "{}: {}", p.what, p.line());
                    next += every;
                }
            }
        })
    }

    pub fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}
