//! The key table: every key's state, with the anti-entropy hash tree kept up to date.
//!
//! Every change of a key state goes through [`KeyTable::update`] or [`KeyTable::remove`]
//! (client writes, replicated writes, replays, joins, snapshot installs, collection), which
//! is the one hook that keeps [`KeyTable::tree`] equal to the tree of the states: the table
//! derefs to its map for reading only, so a change that bypassed the hook would not compile.

use std::collections::BTreeMap;
use std::ops::Deref;

use conflict::KeyState;

use crate::hashtree::{HashTree, key_hash};
use crate::msg::SlotKey;

/// Key states in (table, key) order, and their hash tree.
#[derive(Debug, Default)]
pub(super) struct KeyTable {
    map: BTreeMap<SlotKey, KeyState>,
    tree: HashTree,
}

impl Deref for KeyTable {
    type Target = BTreeMap<SlotKey, KeyState>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl KeyTable {
    /// The table of recovered states; builds their tree.
    pub(super) fn new(map: BTreeMap<SlotKey, KeyState>) -> Self {
        let tree = HashTree::build(&map);
        Self { map, tree }
    }

    /// Changes the state of `slot` (the empty state if it has none yet, which stays in the
    /// table as the map's `entry().or_default()` would leave it) and accounts the change.
    pub(super) fn update<R>(&mut self, slot: &SlotKey, f: impl FnOnce(&mut KeyState) -> R) -> R {
        let state = self.map.entry(slot.clone()).or_default();
        let old = key_hash(&slot.0, &slot.1, state);
        let r = f(state);
        let new = key_hash(&slot.0, &slot.1, state);
        self.tree.replace(&slot.0, &slot.1, old, new);
        r
    }

    /// Drops a key whole.
    pub(super) fn remove(&mut self, slot: &SlotKey) -> Option<KeyState> {
        let before = self.map.remove(slot)?;
        self.tree.update(&slot.0, &slot.1, Some(&before), None);
        Some(before)
    }

    /// The hash tree of the states.
    pub(super) fn tree(&self) -> &HashTree {
        &self.tree
    }
}
