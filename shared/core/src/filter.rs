//! Glob filters, compiled once: backup excludes, restore selections, namespace filters.
//! Every glob set in cairn is built here, so a bad pattern reads the same everywhere.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::{Error, Result};

/// Compile `patterns`; `what` names them in the error (`exclude`, `namespace pattern`).
pub fn glob_set(what: &str, patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| Error::Invalid(format!("{what} {p:?}: {e}")))?);
    }
    b.build().map_err(|e| Error::Invalid(format!("{what}: {e}")))
}

/// `None` for no patterns (nothing to filter), else the compiled set.
pub fn optional_glob_set(what: &str, patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() { Ok(None) } else { glob_set(what, patterns).map(Some) }
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '[', '{'])
}

/// Which namespaces a job covers: included by any pattern (all when none is given) and
/// excluded by none. The manifest export and the PVC backup select with this one type.
#[derive(Debug, Clone)]
pub struct NamespaceFilter {
    include: Option<GlobSet>,
    exclude: GlobSet,
    /// The include patterns when every one is a plain name.
    literal: Option<Vec<String>>,
}

impl NamespaceFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        Ok(NamespaceFilter {
            include: optional_glob_set("namespace pattern", include)?,
            exclude: glob_set("namespace pattern", exclude)?,
            literal: (!include.is_empty() && !include.iter().any(|p| is_glob(p)))
                .then(|| include.to_vec()),
        })
    }

    /// True when namespaces were named: cluster-scoped objects are then left out by
    /// default.
    pub fn active(&self) -> bool {
        self.include.is_some()
    }

    pub fn matches(&self, ns: &str) -> bool {
        self.include.as_ref().is_none_or(|g| g.is_match(ns)) && !self.exclude.is_match(ns)
    }

    /// The namespaces to list one by one (every include a plain name, less the excluded),
    /// or `None` for one cluster-wide list filtered by [`NamespaceFilter::matches`].
    pub fn literal(&self) -> Option<Vec<String>> {
        self.literal.as_ref().map(|v| v.iter().filter(|n| self.matches(n)).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_listed_one_by_one_less_the_excluded() {
        let f = NamespaceFilter::new(&["prod".into(), "stage".into()], &["stage".into()]).unwrap();
        assert_eq!(f.literal(), Some(vec!["prod".to_string()]));
        assert!(f.matches("prod") && !f.matches("stage") && !f.matches("dev"));
        assert!(f.active());
        let g = NamespaceFilter::new(&["team-*".into()], &[]).unwrap();
        assert_eq!(g.literal(), None);
        assert!(g.matches("team-a") && !g.matches("prod"));
        let all = NamespaceFilter::new(&[], &["kube-*".into()]).unwrap();
        assert!(all.matches("x") && !all.matches("kube-system") && !all.active());
    }

    #[test]
    fn a_bad_pattern_names_itself() {
        let e = glob_set("exclude", &["a/[".into()]).unwrap_err();
        assert!(matches!(&e, Error::Invalid(m) if m.contains("exclude \"a/[\"")), "{e}");
        assert!(optional_glob_set("x", &[]).unwrap().is_none());
    }
}
