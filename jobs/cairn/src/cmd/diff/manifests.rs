//! `cairn diff` on manifest snapshots, or a manifest snapshot and `live`: objects added,
//! removed and changed, with the fields that changed.

use anyhow::Result;
use cairn_core::exit::{Exit, ExitError};
use cairn_core::repo::{Repository, SnapshotEntry, SnapshotId};
use cairn_job::config::{Need, RepoArgs};
use cairn_kube::ObjectPath;
use cairn_kube::collect::{CollectOptions, Filters};
use cairn_kube::compare::{CompareOptions, ObjectChange, ObjectDiff, compare, compare_with_live};
use cairn_kube::stored::{is_manifest_snapshot, load_changed_pair};

use super::DiffArgs;
use crate::cmd::Render;

/// Object changes from a snapshot to another or to the live cluster, in path order.
pub(super) struct ObjectDiffs {
    from: SnapshotId,
    /// `snapshot 1a2b3c4d` or `the live cluster`.
    against: String,
    diffs: Vec<ObjectDiff>,
}

/// Which objects a comparison covers.
type Keep = dyn Fn(&ObjectPath) -> bool + Sync;

/// The object diff, or `None` when the snapshots are not manifest snapshots (or name paths
/// in them): the file diff applies.
pub(super) async fn diff(args: &DiffArgs, repo: &RepoArgs) -> Result<Option<ObjectDiffs>> {
    let (a, b) = (args.a.as_str(), args.b.as_str());
    if a.contains(':') || (b != "live" && b.contains(':')) {
        return Ok(None);
    }
    // Open with what was given: two plain snapshots compare by their trees, which the write
    // key opens; only manifest objects (file contents) need the identity.
    let repo = repo.open(Need::Write).await?;
    repo.load_index().await?;
    let sa = args.select.find(&repo, a).await?;
    if is_manifest_snapshot(&sa.snapshot) && !repo.can_read_data() {
        return Err(cairn_core::Error::Denied(format!(
            "snapshot {} holds manifests, which are file contents: comparing them needs \
             --identity (or CAIRN_PASSPHRASE); a write key cannot decrypt them",
            sa.id.short()
        ))
        .into());
    }
    if !is_manifest_snapshot(&sa.snapshot) {
        if b == "live" {
            return Err(ExitError(
                Exit::Usage,
                format!(
                    "snapshot {} is not a manifest snapshot: `live` compares manifests",
                    sa.id.short()
                ),
            )
            .into());
        }
        return Ok(None);
    }
    let keep = in_namespaces(args.namespaces.clone());
    let opts = CompareOptions { with_status: args.status, all: args.all };
    let (diffs, against) = if b == "live" {
        (against_live(&repo, &sa, args, &keep, opts).await?, "the live cluster".to_string())
    } else {
        let sb = args.select.find(&repo, b).await?;
        if !is_manifest_snapshot(&sb.snapshot) {
            return Ok(None);
        }
        let (x, y) = load_changed_pair(&repo, &sa.snapshot, &sb.snapshot, &keep).await?;
        (compare(&x, &y, opts), format!("snapshot {}", sb.id.short()))
    };
    Ok(Some(ObjectDiffs { from: sa.id, against, diffs }))
}

/// Objects in one of `ns` (the Namespace objects themselves included); all when empty.
fn in_namespaces(ns: Vec<String>) -> impl Fn(&ObjectPath) -> bool + Sync {
    move |p: &ObjectPath| {
        ns.is_empty()
            || match &p.namespace {
                Some(n) => ns.contains(n),
                None => p.group.is_empty() && p.resource == "namespaces" && ns.contains(&p.name),
            }
    }
}

/// Compare `snap` with the cluster of the kubeconfig, as its export would have seen it:
/// the export's filters, narrowed by --namespace.
async fn against_live(
    repo: &Repository,
    snap: &SnapshotEntry,
    args: &DiffArgs,
    keep: &Keep,
    opts: CompareOptions,
) -> Result<Vec<ObjectDiff>> {
    let mut filters: Filters = snap
        .snapshot
        .meta
        .pointer("/manifests/filters")
        .and_then(|f| serde_json::from_value(f.clone()).ok())
        .unwrap_or_default();
    if !args.namespaces.is_empty() {
        filters.namespaces = args.namespaces.clone();
    }
    let client = args.kube.client().await?;
    let collect_opts = CollectOptions { concurrency: 8, page_size: 500 };
    let (diffs, collected) =
        compare_with_live(repo, &snap.snapshot, keep, &client, &filters, &collect_opts, opts)
            .await?;
    for d in collected.denied.iter().chain(&collected.skipped) {
        eprintln!("cairn: live side incomplete: {d}");
    }
    Ok(diffs)
}

impl Render for ObjectDiffs {
    fn json(&self) -> impl serde::Serialize {
        &self.diffs
    }

    fn print_text(&self) {
        let count = |c| self.diffs.iter().filter(|d| d.change == c).count();
        for d in &self.diffs {
            let sign = match d.change {
                ObjectChange::Added => "+",
                ObjectChange::Removed => "-",
                ObjectChange::Changed => "~",
            };
            println!("{sign} {}", d.object);
            for f in &d.fields {
                println!("    {}", f.line());
            }
        }
        println!(
            "snapshot {} → {}: {} changed, {} removed, {} added",
            self.from.short(),
            self.against,
            count(ObjectChange::Changed),
            count(ObjectChange::Removed),
            count(ObjectChange::Added)
        );
    }
}
