//! The anti-entropy hash tree of one region's key states (docs/design.md, "Anti-entropy").
//!
//! # Shape
//! A fixed tree of [`LEVELS`] + 1 levels with fan-out [`FANOUT`]: level 0 is the root,
//! level [`LEAF_LEVEL`] holds [`LEAVES`] (65,536) leaves. A key lives in the leaf its
//! [`leaf_of`] names (a hash of table and key, so the shape does not depend on the data and
//! is the same at every region: two trees are compared node by node). Every node's hash is
//! the XOR of the [`key_hash`]es of the keys below it, so a key that changes updates one node
//! per level in O(1) ([`HashTree::update`]): XOR out its old hash, XOR in the new one.
//!
//! # What is hashed
//! Only a key's *live* siblings (values, not tombstones), with their dots and stamps. A key
//! that holds nothing live — deleted, or dropped whole by tombstone collection — hashes to
//! nothing, so two regions that collect a tombstone at different moments, or that hold a
//! tombstone the other already collected, agree. Contexts are not hashed for the same
//! reason (collection drops a key's context with the key): a difference in contexts alone
//! changes nothing a reader sees.
//!
//! XOR is a weak combiner against an adversary (one can craft keys that cancel), but peers
//! are authenticated regions of one cluster and a key's hash is a SHA-256 prefix, so against
//! the faults anti-entropy looks for (lost keys, wrong bytes, a copied directory) a
//! difference goes unseen with probability 2^-128.

use conflict::KeyState;
use sha2::{Digest, Sha256};

/// Children per node.
pub const FANOUT: u32 = 16;
/// Levels below the root; the leaves are level `LEVELS`.
pub const LEVELS: u8 = 4;
/// The level of the leaves.
pub const LEAF_LEVEL: u8 = LEVELS;
/// How many leaves the tree has: `FANOUT ^ LEVELS`.
pub const LEAVES: u32 = FANOUT.pow(LEVELS as u32);

/// A node's hash: the XOR of the key hashes below it (all zero for none).
pub type NodeHash = [u8; 16];

/// The leaf a key belongs to: the top 16 bits of FNV-1a (64-bit, with a finaliser) over the
/// length-prefixed table and the key. Fixed by the protocol (every region must bucket alike) and cheap,
/// because listing a leaf's keys scans the key table.
pub fn leaf_of(table: &str, key: &[u8]) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let len = (table.len() as u32).to_le_bytes();
    for b in len.iter().chain(table.as_bytes()).chain(key) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    // FNV's top bits mix the last bytes poorly (similar keys would share leaves): finish
    // with MurmurHash3's 64-bit finaliser.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 48) as u32 % LEAVES
}

/// A key's hash in the tree: the first 16 bytes of SHA-256 over table, key and the key's
/// live siblings (dot, stamp, value); `None` when it holds nothing live.
pub fn key_hash(table: &str, key: &[u8], state: &KeyState) -> Option<NodeHash> {
    let mut live = state
        .siblings
        .iter()
        .filter_map(|s| s.value.as_bytes().map(|v| (s, v)))
        .peekable();
    live.peek()?;
    let mut h = Sha256::new();
    h.update((table.len() as u64).to_le_bytes());
    h.update(table.as_bytes());
    h.update((key.len() as u64).to_le_bytes());
    h.update(key);
    for (s, v) in live {
        h.update(s.dot.replica.as_u128().to_le_bytes());
        h.update(s.dot.seq.0.to_le_bytes());
        h.update(s.hlc.as_u64().to_le_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    }
    let full: [u8; 32] = h.finalize().into();
    let mut out = [0; 16];
    out.copy_from_slice(&full[..16]);
    Some(out)
}

/// The number of nodes at `level`.
pub fn width(level: u8) -> u32 {
    FANOUT.pow(u32::from(level.min(LEVELS)))
}

/// The children (at `level + 1`) of node `index` of `level`.
pub fn children(index: u32) -> std::ops::Range<u32> {
    index * FANOUT..(index + 1) * FANOUT
}

/// The hash tree: every level's node hashes, kept up to date key by key. About 1.1 MiB.
#[derive(Clone, PartialEq, Eq)]
pub struct HashTree {
    /// `levels[l]` holds the [`width`]`(l)` nodes of level `l`.
    levels: Vec<Vec<NodeHash>>,
}

impl std::fmt::Debug for HashTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashTree")
            .field("root", &self.root())
            .finish()
    }
}

impl Default for HashTree {
    fn default() -> Self {
        Self::new()
    }
}

impl HashTree {
    /// The tree of no keys.
    pub fn new() -> Self {
        let levels = (0..=LEVELS)
            .map(|l| vec![[0; 16]; width(l) as usize])
            .collect();
        Self { levels }
    }

    /// Builds the tree of `keys` from scratch.
    pub fn build<'a>(
        keys: impl IntoIterator<Item = (&'a (String, Vec<u8>), &'a KeyState)>,
    ) -> Self {
        let mut tree = Self::new();
        for ((table, key), state) in keys {
            tree.update(table, key, None, Some(state));
        }
        tree
    }

    /// Accounts a key whose state went from `before` to `after` (`None`: absent).
    pub fn update(
        &mut self,
        table: &str,
        key: &[u8],
        before: Option<&KeyState>,
        after: Option<&KeyState>,
    ) {
        let old = before.and_then(|s| key_hash(table, key, s));
        let new = after.and_then(|s| key_hash(table, key, s));
        self.replace(table, key, old, new);
    }

    /// Accounts a key whose [`key_hash`] went from `old` to `new`.
    pub fn replace(
        &mut self,
        table: &str,
        key: &[u8],
        old: Option<NodeHash>,
        new: Option<NodeHash>,
    ) {
        if old == new {
            return;
        }
        let mut delta = old.unwrap_or_default();
        xor(&mut delta, &new.unwrap_or_default());
        let leaf = leaf_of(table, key);
        for (l, nodes) in self.levels.iter_mut().enumerate() {
            let shift = 4 * (u32::from(LEVELS) - l as u32);
            xor(&mut nodes[(leaf >> shift) as usize], &delta);
        }
    }

    /// The hash of node `index` at `level`; `None` if there is no such node.
    pub fn node(&self, level: u8, index: u32) -> Option<NodeHash> {
        self.levels
            .get(usize::from(level))?
            .get(index as usize)
            .copied()
    }

    /// The root's hash: equal roots mean equal live states, up to hash collisions.
    pub fn root(&self) -> NodeHash {
        self.levels[0][0]
    }
}

fn xor(into: &mut NodeHash, other: &NodeHash) {
    for (a, b) in into.iter_mut().zip(other) {
        *a ^= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conflict::{Dot, Hlc, ReplicaId, Seq, Sibling, Value, VersionVector};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn state(seq: u64, value: Option<u8>) -> KeyState {
        let dot = Dot {
            replica: ReplicaId::from_u128(1),
            seq: Seq(seq),
        };
        let mut context = VersionVector::new();
        context.add_dot(&dot);
        let value = value.map_or(Value::Tombstone, |v| Value::Bytes(vec![v]));
        KeyState {
            context,
            siblings: vec![Sibling {
                dot,
                hlc: Hlc::from_u64(seq),
                value,
            }],
        }
    }

    #[test]
    fn the_shape_is_fixed() {
        assert_eq!(LEAVES, 65_536);
        assert_eq!(width(0), 1);
        assert_eq!(width(LEAF_LEVEL), LEAVES);
        assert_eq!(children(3), 48..64);
        // The bucketing is part of the protocol: it must never change.
        assert_eq!(leaf_of("default", b"k"), leaf_of("default", b"k"));
        assert_ne!(leaf_of("default", b"k1"), leaf_of("default", b"k2"));
    }

    #[test]
    fn similar_keys_spread_over_the_leaves() {
        let leaves: std::collections::BTreeSet<u32> = (0..10_000)
            .map(|i| leaf_of("default", format!("key-{i:08}").as_bytes()))
            .collect();
        // 10,000 keys thrown at random into 65,536 leaves land in about 9,290 of them.
        assert!(leaves.len() > 9_000, "{} leaves", leaves.len());
    }

    #[test]
    fn tombstones_and_absent_keys_hash_alike() {
        assert_eq!(key_hash("t", b"k", &state(1, None)), None);
        assert_eq!(key_hash("t", b"k", &KeyState::new()), None);
        assert!(key_hash("t", b"k", &state(1, Some(1))).is_some());
        let mut tree = HashTree::new();
        tree.update("t", b"k", None, Some(&state(1, None)));
        assert_eq!(tree, HashTree::new());
    }

    #[test]
    fn a_key_changed_and_changed_back_leaves_the_tree_as_it_was() {
        let mut tree = HashTree::new();
        tree.update("t", b"k", None, Some(&state(1, Some(1))));
        let one = tree.clone();
        tree.update(
            "t",
            b"k",
            Some(&state(1, Some(1))),
            Some(&state(2, Some(2))),
        );
        assert_ne!(tree.root(), one.root());
        tree.update(
            "t",
            b"k",
            Some(&state(2, Some(2))),
            Some(&state(1, Some(1))),
        );
        assert_eq!(tree, one);
        tree.update("t", b"k", Some(&state(1, Some(1))), None);
        assert_eq!(tree, HashTree::new());
    }

    proptest! {
        /// Incremental updates in any order equal the tree rebuilt from the final states.
        #[test]
        fn incremental_equals_rebuilt(ops in prop::collection::vec((0u8..20, 0u64..5, prop::option::of(0u8..3)), 0..60)) {
            let mut keys: BTreeMap<(String, Vec<u8>), KeyState> = BTreeMap::new();
            let mut tree = HashTree::new();
            for (k, seq, v) in ops {
                let slot = ("t".to_owned(), vec![k]);
                let after = (seq > 0).then(|| state(seq, v));
                let before = keys.get(&slot).cloned();
                tree.update(&slot.0, &slot.1, before.as_ref(), after.as_ref());
                match after {
                    Some(s) => keys.insert(slot, s),
                    None => keys.remove(&slot),
                };
            }
            let rebuilt = HashTree::build(&keys);
            prop_assert_eq!(&tree, &rebuilt);
            for l in 0..=LEVELS {
                for i in 0..width(l).min(64) {
                    prop_assert_eq!(tree.node(l, i), rebuilt.node(l, i));
                }
            }
        }

        /// A parent's hash is the XOR of its children's.
        #[test]
        fn parents_are_the_xor_of_their_children(keys in prop::collection::vec(any::<[u8; 4]>(), 0..50)) {
            let map: BTreeMap<(String, Vec<u8>), KeyState> = keys
                .iter()
                .map(|k| (("t".to_owned(), k.to_vec()), state(1, Some(k[0]))))
                .collect();
            let tree = HashTree::build(&map);
            for l in 0..LEVELS {
                for i in 0..width(l).min(256) {
                    let mut x = [0; 16];
                    for c in children(i) {
                        xor(&mut x, &tree.node(l + 1, c).unwrap());
                    }
                    prop_assert_eq!(Some(x), tree.node(l, i));
                }
            }
        }
    }
}
