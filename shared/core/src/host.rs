//! Who is running: the host name recorded in snapshots and lock holders.

/// `$HOSTNAME` (a pod's name), else `/etc/hostname`, else `unknown`.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}
