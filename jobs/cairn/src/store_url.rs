//! Telling object-store URLs from local paths, by the rules of
//! [`cairn_core::repo::Store::open`]: anything with `://` is `scheme://rest` (the scheme
//! case-insensitive; `file`, `s3`, `s3a`, `gs`, `az`, `azure`, `memory`, anything else
//! an error there), anything without is a local path.

/// Whether `s` is a store URL (`s3://…`, `file://…`, …) rather than a local path.
pub(crate) fn is_store_url(s: &str) -> bool {
    scheme(s).is_some()
}

/// Whether the store `url` names keeps object metadata (mode, owner, mtime on restore): the
/// cloud stores and `memory://` do, a local disk (`file://`) does not.
pub(crate) fn keeps_object_metadata(url: &str) -> bool {
    matches!(scheme(url).as_deref(), Some("s3" | "s3a" | "gs" | "az" | "azure" | "memory"))
}

/// The scheme of a store URL, lower-cased as `Store::open` reads it.
fn scheme(s: &str) -> Option<String> {
    s.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths() {
        for url in ["s3://b/p", "S3://b", "gs://b", "az://c/p", "file:///tmp/x", "memory://t"] {
            assert!(is_store_url(url), "{url}");
        }
        for path in ["/tmp/x", "rel/dir", "-", "c:/x", "./a:b"] {
            assert!(!is_store_url(path), "{path}");
        }
    }

    #[test]
    fn metadata_where_the_store_keeps_it() {
        for url in ["s3://b/p", "s3a://b", "GS://b", "az://c", "azure://c", "memory://t"] {
            assert!(keeps_object_metadata(url), "{url}");
        }
        for url in ["file:///tmp/x", "/tmp/x", "http://h/x"] {
            assert!(!keeps_object_metadata(url), "{url}");
        }
    }
}
