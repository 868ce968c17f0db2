//! Where `cairn restore` writes: a directory, objects in a store, or a tar stream.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_core::exit::usage;
use cairn_core::fs::export::{ExportReport, Selection, export_objects, export_tar};
use cairn_core::fs::{RestoreOptions, RestoreReport};
use cairn_core::repo::{Node, Repository, Store};

use super::RestoreArgs;
use crate::store_url::{is_store_url, keeps_object_metadata};

/// A restore's destination, opened.
pub(crate) enum Sink {
    /// Files in a local directory: the node's root lands directly in it.
    Dir { path: PathBuf, opts: RestoreOptions },
    /// One object per file below a store prefix, the path its key.
    Objects { store: Store, metadata: bool, selection: Selection },
    /// A tar stream, to stdout or a file.
    Tar { out: Box<dyn Write + Send>, selection: Selection },
}

/// What a sink reports.
pub(crate) enum Written {
    Dir(RestoreReport),
    Exported(ExportReport),
}

impl Sink {
    /// The sink --target and --format name: `-` is a tar stream on stdout, a store URL
    /// objects, anything else a directory (or, with `--format tar`, the tar file).
    pub(crate) fn open(args: &RestoreArgs) -> Result<Sink> {
        let target = args.target.as_str();
        let format = match args.format.as_str() {
            "auto" if target == "-" => "tar",
            "auto" if is_store_url(target) => "objects",
            "auto" => "dir",
            f @ ("dir" | "objects" | "tar") => f,
            other => return Err(usage(format!("--format {other:?}: auto, dir, objects or tar"))),
        };
        if format == "dir" {
            if !args.include.is_empty() || !args.exclude.is_empty() {
                return Err(usage("--include/--exclude apply to tar and object-store targets"));
            }
            let mut opts = RestoreOptions::default();
            if args.no_owner {
                opts.owner = false;
            }
            return Ok(Sink::Dir { path: PathBuf::from(target), opts });
        }
        let selection = Selection::new(&args.include, &args.exclude)?;
        if format == "tar" {
            let out: Box<dyn Write + Send> = if target == "-" {
                Box::new(BufWriter::new(std::io::stdout()))
            } else {
                Box::new(BufWriter::new(
                    std::fs::File::create(target).with_context(|| format!("creating {target}"))?,
                ))
            };
            return Ok(Sink::Tar { out, selection });
        }
        let store = Store::open_or_create(target)?;
        Ok(Sink::Objects { store, metadata: keeps_object_metadata(target), selection })
    }

    /// Write `node` (a file or a whole tree) of `repo` here.
    pub(crate) async fn write(self, repo: Arc<Repository>, node: Node) -> Result<Written> {
        Ok(match self {
            Sink::Dir { path, opts } => {
                Written::Dir(cairn_core::fs::restore(repo, node, &path, opts).await?)
            }
            Sink::Objects { store, metadata, selection } => Written::Exported(
                export_objects(repo, node, selection, store.object_store().clone(), metadata)
                    .await?,
            ),
            Sink::Tar { out, selection } => {
                Written::Exported(export_tar(repo, node, selection, out).await?)
            }
        })
    }
}
