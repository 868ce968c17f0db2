//! Trees: directory listings as JSON, split into blobs of at most [`MAX_NODES_PER_BLOB`]
//! entries so that a directory of millions of files never sits in memory whole. A directory
//! node lists the ids of its listing blobs in order; unchanged directories produce the same
//! blobs and dedup.

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ids::BlobId;
use crate::{Error, Result};

pub const MAX_NODES_PER_BLOB: usize = 4096;
pub const TREE_VERSION: u32 = 1;
/// A file with at most this many extents keeps them in its node (`content`); a longer list
/// goes into extent-list blobs (`extent_lists`), so a tree blob stays small however large
/// the file (a 2 GiB database in 4 KiB pages has 512k extents).
pub const MAX_INLINE_EXTENTS: usize = 1024;
/// Extents per extent-list blob (all full but the last): about 150 KiB of JSON.
pub const MAX_EXTENTS_PER_LIST: usize = 4096;

/// A file name: bytes, as Unix has them. Serialized as a string when it is UTF-8, else as
/// `{"b64": "..."}`, so that non-UTF-8 names round-trip.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(pub Vec<u8>);

impl Name {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("b64", &B64.encode(&self.0))?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Bytes { b64: String },
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => Ok(Name(t.into_bytes())),
            Raw::Bytes { b64 } => B64.decode(b64).map(Name).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Chardev,
    Blockdev,
    Socket,
}

/// A run of file content: a chunk (`id`) or, when `id` is absent, a hole of `len` zero bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<BlobId>,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: Name,
    pub value: String,
}

impl Xattr {
    pub fn new(name: Vec<u8>, value: &[u8]) -> Self {
        Xattr { name: Name(name), value: B64.encode(value) }
    }
    pub fn value_bytes(&self) -> Result<Vec<u8>> {
        B64.decode(&self.value).map_err(|e| Error::Integrity(format!("xattr value: {e}")))
    }
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: Name,
    pub kind: NodeKind,
    /// Permission bits and set-id/sticky bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// Logical size in bytes (files), else 0.
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Name>,
    /// Device number for character and block devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<u64>,
    /// Files sharing an inode share a group number. Every member carries the full content
    /// (dedup makes that free); a restore writes one member and links the others to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_group: Option<u64>,
    /// Inode and change time, recorded for `--use-inode` incremental checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime_ns: Option<i128>,
    /// Files cut into fixed pages of this many bytes (databases, volume images) rather than
    /// content-defined chunks. Readers need not know it; writers reuse a node only when
    /// they would cut it the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<u32>,
    /// File content, when it has at most [`MAX_INLINE_EXTENTS`] extents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Extent>,
    /// File content, when longer: extent-list blobs (tree kind), in file order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extent_lists: Vec<BlobId>,
    /// Directory listing blobs, in name order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtree: Vec<BlobId>,
}

impl Node {
    pub fn new(name: Name, kind: NodeKind) -> Node {
        Node {
            name,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            size: 0,
            xattrs: Vec::new(),
            target: None,
            rdev: None,
            link_group: None,
            inode: None,
            ctime_ns: None,
            pages: None,
            content: Vec::new(),
            extent_lists: Vec::new(),
            subtree: Vec::new(),
        }
    }

    /// Same stored content (same extents, inline or listed): equal bytes, chunked alike.
    pub fn same_content(&self, other: &Node) -> bool {
        self.content == other.content && self.extent_lists == other.extent_lists
    }

    /// Does this file keep (part of) its extents in extent-list blobs?
    pub fn has_extent_lists(&self) -> bool {
        !self.extent_lists.is_empty()
    }
}

/// One extent-list blob: a stretch of a file's extents (FORMAT.md §9.10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentList {
    pub version: u32,
    pub extents: Vec<Extent>,
}

impl ExtentList {
    pub fn encode(extents: &[Extent]) -> Vec<u8> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            version: u32,
            extents: &'a [Extent],
        }
        serde_json::to_vec(&Borrowed { version: TREE_VERSION, extents }).expect("extents to JSON")
    }

    pub fn decode(bytes: &[u8]) -> Result<Vec<Extent>> {
        let l: ExtentList = serde_json::from_slice(bytes)
            .map_err(|e| Error::Integrity(format!("extent list blob: {e}")))?;
        if l.version != TREE_VERSION {
            return Err(Error::Integrity(format!(
                "extent list version {} is not supported",
                l.version
            )));
        }
        if l.extents.len() > MAX_EXTENTS_PER_LIST {
            return Err(Error::Integrity(format!(
                "extent list blob holds {} extents, more than {MAX_EXTENTS_PER_LIST}",
                l.extents.len()
            )));
        }
        Ok(l.extents)
    }
}

/// One listing blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeBlob {
    pub version: u32,
    pub nodes: Vec<Node>,
}

impl TreeBlob {
    pub fn encode(nodes: &[Node]) -> Vec<u8> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            version: u32,
            nodes: &'a [Node],
        }
        serde_json::to_vec(&Borrowed { version: TREE_VERSION, nodes }).expect("tree to JSON")
    }

    pub fn decode(bytes: &[u8]) -> Result<TreeBlob> {
        let t: TreeBlob = serde_json::from_slice(bytes)
            .map_err(|e| Error::Integrity(format!("tree blob: {e}")))?;
        if t.version != TREE_VERSION {
            return Err(Error::Integrity(format!("tree version {} is not supported", t.version)));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_names_round_trip() {
        let mut n = Node::new(Name(vec![b'a', 0xff, b'b']), NodeKind::File);
        n.content =
            vec![Extent { id: Some(BlobId([3; 32])), len: 10 }, Extent { id: None, len: 4096 }];
        let mut d = Node::new(Name("ünï".into()), NodeKind::Dir);
        d.subtree = vec![BlobId([1; 32])];
        let bytes = TreeBlob::encode(&[n.clone(), d.clone()]);
        let back = TreeBlob::decode(&bytes).unwrap();
        assert_eq!(back.nodes, vec![n, d]);
        assert!(TreeBlob::decode(b"{\"version\":9,\"nodes\":[]}").is_err());
    }

    #[test]
    fn extent_lists_round_trip_and_are_bounded() {
        let extents: Vec<Extent> = (0..MAX_EXTENTS_PER_LIST)
            .map(|i| Extent { id: (i % 7 != 0).then_some(BlobId([i as u8; 32])), len: 4096 })
            .collect();
        assert_eq!(ExtentList::decode(&ExtentList::encode(&extents)).unwrap(), extents);
        let one_more = [extents.clone(), vec![Extent { id: None, len: 1 }]].concat();
        let err = ExtentList::decode(&ExtentList::encode(&one_more)).unwrap_err();
        assert!(err.to_string().contains("more than 4096"), "{err}");
        assert!(ExtentList::decode(b"{\"version\":2,\"extents\":[]}").is_err());
        // A listing blob is not an extent list.
        assert!(ExtentList::decode(&TreeBlob::encode(&[])).is_err());
    }

    #[test]
    fn page_files_serialize_their_new_members_in_canonical_order() {
        let mut n = Node::new(Name(b"db".to_vec()), NodeKind::File);
        n.pages = Some(4096);
        n.extent_lists = vec![BlobId([7; 32])];
        let text = String::from_utf8(TreeBlob::encode(&[n])).unwrap();
        let (pages, lists) =
            (text.find("\"pages\"").unwrap(), text.find("\"extent_lists\"").unwrap());
        assert!(pages < lists && !text.contains("\"content\""), "{text}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn node() -> impl Strategy<Value = Node> {
            (
                proptest::collection::vec(any::<u8>(), 1..24),
                prop_oneof![Just(NodeKind::File), Just(NodeKind::Dir), Just(NodeKind::Symlink)],
                (any::<u32>(), any::<u32>(), any::<u32>(), any::<i64>(), any::<u64>()),
                proptest::option::of(any::<u64>()),
                proptest::collection::vec(
                    (proptest::option::of(any::<[u8; 32]>()), any::<u64>()),
                    0..4,
                ),
                proptest::collection::vec(
                    (proptest::collection::vec(any::<u8>(), 1..8), any::<Vec<u8>>()),
                    0..2,
                ),
            )
                .prop_map(
                    |(name, kind, (mode, uid, gid, mtime, size), link, content, xattrs)| {
                        let mut n = Node::new(Name(name), kind);
                        (n.mode, n.uid, n.gid, n.mtime_ns, n.size) =
                            (mode, uid, gid, i128::from(mtime), size);
                        n.link_group = link;
                        n.content = content
                            .into_iter()
                            .map(|(id, len)| Extent { id: id.map(BlobId), len })
                            .collect();
                        n.xattrs = xattrs.into_iter().map(|(k, v)| Xattr::new(k, &v)).collect();
                        n
                    },
                )
        }

        proptest! {
            /// What a writer encodes, a reader decodes to the same nodes: any name bytes,
            /// holes, xattrs, the full ranges of the numbers.
            #[test]
            fn tree_blobs_round_trip(nodes in proptest::collection::vec(node(), 0..12)) {
                let back = TreeBlob::decode(&TreeBlob::encode(&nodes)).unwrap();
                prop_assert_eq!(back.nodes, nodes);
            }
        }
    }
}

#[cfg(test)]
mod vectors {
    use super::*;
    use crate::repo::BlobKind;
    use crate::repo::crypto::WriteKey;
    use crate::repo::ids::RepoId;

    /// FORMAT.md Appendix A: the extent-list blob of a file of one 4 KiB page of data (the
    /// data blob id("hello") stands in for its id) and an 8 KiB hole, with its tree id.
    #[test]
    fn extent_list_vector() {
        let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
        let key = WriteKey::from_secret(RepoId([0xab; 32]), secret);
        let data = key.id_for(BlobKind::Data, b"hello");
        let list = ExtentList::encode(&[
            Extent { id: Some(data), len: 4096 },
            Extent { id: None, len: 8192 },
        ]);
        assert_eq!(
            String::from_utf8(list.clone()).unwrap(),
            format!(
                r#"{{"version":1,"extents":[{{"id":"{}","len":4096}},{{"len":8192}}]}}"#,
                data.to_hex()
            )
        );
        assert_eq!(
            data.to_hex(),
            "3532e5340d4079e53f83c5ad661dae866a2f8e045e9a6d76f87b6db03ad9310d"
        );
        assert_eq!(
            key.id_for(BlobKind::Tree, &list).to_hex(),
            "a73931f5484945e9aef0867ebde3f88fa4d5e60ef07e424f62f918a7041c278e"
        );
    }
}
