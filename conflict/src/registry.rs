//! The registry of resolvers a leader knows, and the fingerprints regions compare.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::limits::{self, MAX_RESOLVER_NAME_BYTES};
use crate::resolver::{Lww, MultiValue, Resolver, ResolverId};

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum RegistryError {
    /// A resolver with this name is already registered; two resolvers under one name would make
    /// the table→resolver map ambiguous.
    #[error("a resolver named {0:?} is already registered; give the new one a different name")]
    Duplicate(String),
    /// A table names a resolver nobody registered.
    #[error(
        "table {table:?} uses resolver {resolver:?}, which is not registered; register it when building the leader or fix regions.toml"
    )]
    Unknown {
        /// The table.
        table: String,
        /// The resolver name it asks for.
        resolver: String,
    },
    /// The resolver's name is not 1 to [`MAX_RESOLVER_NAME_BYTES`] characters of `[a-z0-9_-]`.
    #[error(
        "resolver name {0:?} is invalid; use 1 to {MAX_RESOLVER_NAME_BYTES} characters from a-z, 0-9, '_' and '-'"
    )]
    InvalidName(String),
    /// A table name breaks [`limits::check_table_name`].
    #[error(transparent)]
    InvalidTable(#[from] limits::LimitError),
}

/// Resolvers by name. A leader builds one at start-up (the built-ins plus the application's
/// own) and looks up each table's resolver in it.
#[derive(Clone, Default)]
pub struct Registry {
    resolvers: BTreeMap<String, Arc<dyn Resolver>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.resolvers.values().map(|r| ResolverId::of(r.as_ref())))
            .finish()
    }
}

impl Registry {
    /// An empty registry, for tests that want full control.
    pub fn new() -> Self {
        Registry::default()
    }

    /// A registry holding the built-in resolvers, `lww` and `multi-value`: what every leader
    /// starts from.
    pub fn with_builtins() -> Self {
        let mut r = Registry::new();
        for builtin in [Arc::new(Lww) as Arc<dyn Resolver>, Arc::new(MultiValue)] {
            // Invariant: the built-ins have distinct, valid names.
            r.register(builtin).expect("built-in resolvers register");
        }
        r
    }

    /// Adds a resolver under its [`Resolver::name`]. Refuses a name already taken (never
    /// replaces silently) and an invalid name.
    pub fn register(&mut self, resolver: Arc<dyn Resolver>) -> Result<(), RegistryError> {
        let name = resolver.name().to_owned();
        if !limits::is_identifier(&name, MAX_RESOLVER_NAME_BYTES) {
            return Err(RegistryError::InvalidName(name));
        }
        if self.resolvers.contains_key(&name) {
            return Err(RegistryError::Duplicate(name));
        }
        self.resolvers.insert(name, resolver);
        Ok(())
    }

    /// The resolver registered under `name`, shared (resolvers hold no per-call state).
    pub fn get(&self, name: &str) -> Option<Arc<dyn Resolver>> {
        self.resolvers.get(name).cloned()
    }

    /// Registered names in ascending order, for error messages and status pages.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.resolvers.keys().map(String::as_str)
    }

    /// Resolves a table→resolver-name map (from `regions.toml`) to resolver ids and a digest,
    /// for the hello a region sends its peers. Fails on an invalid table name or a resolver
    /// name that is not registered.
    pub fn fingerprint(
        &self,
        tables: &BTreeMap<String, String>,
    ) -> Result<Fingerprints, RegistryError> {
        let mut ids = BTreeMap::new();
        for (table, resolver) in tables {
            limits::check_table_name(table)?;
            let r = self.get(resolver).ok_or_else(|| RegistryError::Unknown {
                table: table.clone(),
                resolver: resolver.clone(),
            })?;
            ids.insert(table.clone(), ResolverId::of(r.as_ref()));
        }
        Ok(Fingerprints::new(ids))
    }
}

/// The resolver of every table, and a digest of the whole map.
///
/// Peers exchange these on connect. Equal digests mean they agree on everything; otherwise
/// [`Fingerprints::diff`] says which tables differ, and those tables must not be replicated
/// between the two (a mismatched resolver silently diverges the data).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Fingerprints {
    /// Table → resolver id.
    pub tables: BTreeMap<String, ResolverId>,
    /// SHA-256 over the canonical encoding of `tables`.
    pub digest: [u8; 32],
}

/// One table on which two regions disagree.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TableMismatch {
    /// The table.
    pub table: String,
    /// Our resolver for it, if we have the table.
    pub ours: Option<ResolverId>,
    /// The peer's resolver for it, if it has the table.
    pub theirs: Option<ResolverId>,
}

impl fmt::Display for TableMismatch {
    /// E.g. `table "carts": we use lww@1, the peer uses multi-value@1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |id: &Option<ResolverId>| match id {
            Some(id) => format!("uses {id}"),
            None => "does not have it".to_owned(),
        };
        write!(
            f,
            "table {:?}: this region {}, the peer {}",
            self.table,
            side(&self.ours),
            side(&self.theirs)
        )
    }
}

impl Fingerprints {
    /// Fingerprints of a table→resolver-id map; computes the digest here so the two always
    /// agree.
    pub fn new(tables: BTreeMap<String, ResolverId>) -> Self {
        let digest = Self::digest_of(&tables);
        Fingerprints { tables, digest }
    }

    fn digest_of(tables: &BTreeMap<String, ResolverId>) -> [u8; 32] {
        // Domain-separated so the digest cannot collide with another structure's.
        // Invariant: serialising plain data into a Vec cannot fail.
        let bytes = postcard::to_stdvec(&("meridian/resolver-fingerprints/v1", tables))
            .expect("fingerprints serialise");
        Sha256::digest(bytes).into()
    }

    /// Whether `digest` matches `tables`; check this on fingerprints received from a peer.
    pub fn is_consistent(&self) -> bool {
        Self::digest_of(&self.tables) == self.digest
    }

    /// Every table on which `self` and `other` disagree (different resolver or version, or a
    /// table only one side has), in table order. Empty when they agree.
    pub fn diff(&self, other: &Fingerprints) -> Vec<TableMismatch> {
        let names: BTreeSet<&String> = self.tables.keys().chain(other.tables.keys()).collect();
        names
            .into_iter()
            .filter_map(|table| {
                let ours = self.tables.get(table);
                let theirs = other.tables.get(table);
                (ours != theirs).then(|| TableMismatch {
                    table: table.clone(),
                    ours: ours.cloned(),
                    theirs: theirs.cloned(),
                })
            })
            .collect()
    }

    /// The tables both sides have with the same resolver: the ones that may be replicated.
    pub fn agreed_tables<'a>(&'a self, other: &'a Fingerprints) -> impl Iterator<Item = &'a str> {
        self.tables
            .iter()
            .filter(|(t, id)| other.tables.get(*t) == Some(id))
            .map(|(t, _)| t.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::examples::Counter;

    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(t, r)| (t.to_string(), r.to_string()))
            .collect()
    }

    #[test]
    fn builtins_and_duplicates() {
        let mut reg = Registry::with_builtins();
        assert_eq!(reg.names().collect::<Vec<_>>(), vec!["lww", "multi-value"]);
        assert_eq!(
            reg.register(Arc::new(Lww)),
            Err(RegistryError::Duplicate("lww".into()))
        );
        reg.register(Arc::new(Counter)).unwrap();
        assert_eq!(reg.get("counter").unwrap().name(), "counter");
        assert!(reg.get("nope").is_none());
        assert_eq!(
            format!("{reg:?}"),
            "[ResolverId { name: \"counter\", version: 2 }, ResolverId { name: \"lww\", version: 1 }, ResolverId { name: \"multi-value\", version: 1 }]"
        );
        assert!(Registry::new().names().next().is_none());
    }

    #[test]
    fn invalid_names_are_refused() {
        struct Bad;
        impl Resolver for Bad {
            fn name(&self) -> &str {
                "Bad Name"
            }
            fn version(&self) -> u32 {
                1
            }
            fn is_semilattice(&self) -> bool {
                false
            }
            fn resolve(&self, _: &[crate::Sibling]) -> crate::Resolved {
                crate::Resolved::Absent
            }
        }
        assert_eq!(
            Registry::new().register(Arc::new(Bad)),
            Err(RegistryError::InvalidName("Bad Name".into()))
        );
        let err = Registry::with_builtins()
            .fingerprint(&map(&[("Not Valid", "lww")]))
            .unwrap_err();
        assert!(matches!(err, RegistryError::InvalidTable(_)));
    }

    #[test]
    fn fingerprints_compare_and_explain() {
        let mut reg = Registry::with_builtins();
        reg.register(Arc::new(Counter)).unwrap();
        let ours = reg
            .fingerprint(&map(&[
                ("carts", "multi-value"),
                ("users", "lww"),
                ("hits", "counter"),
            ]))
            .unwrap();
        let same = reg
            .fingerprint(&map(&[
                ("hits", "counter"),
                ("users", "lww"),
                ("carts", "multi-value"),
            ]))
            .unwrap();
        assert_eq!(ours, same);
        assert!(ours.diff(&same).is_empty());
        assert!(ours.is_consistent());

        let theirs = reg
            .fingerprint(&map(&[
                ("carts", "lww"),
                ("users", "lww"),
                ("extra", "lww"),
            ]))
            .unwrap();
        assert_ne!(ours.digest, theirs.digest);
        let diff = ours.diff(&theirs);
        assert_eq!(
            diff,
            vec![
                TableMismatch {
                    table: "carts".into(),
                    ours: Some(ResolverId::new("multi-value", 1)),
                    theirs: Some(ResolverId::new("lww", 1)),
                },
                TableMismatch {
                    table: "extra".into(),
                    ours: None,
                    theirs: Some(ResolverId::new("lww", 1)),
                },
                TableMismatch {
                    table: "hits".into(),
                    ours: Some(ResolverId::new("counter", 2)),
                    theirs: None,
                },
            ]
        );
        assert_eq!(
            diff[0].to_string(),
            "table \"carts\": this region uses multi-value@1, the peer uses lww@1"
        );
        assert_eq!(
            ours.agreed_tables(&theirs).collect::<Vec<_>>(),
            vec!["users"]
        );

        // A version bump alone is a mismatch.
        let mut bumped = ours.tables.clone();
        bumped.insert("users".into(), ResolverId::new("lww", 2));
        let bumped = Fingerprints::new(bumped);
        assert_eq!(ours.diff(&bumped).len(), 1);

        let mut forged = ours.clone();
        forged.digest[0] ^= 1;
        assert!(!forged.is_consistent());
    }

    #[test]
    fn unknown_resolver_names_the_table() {
        let err = Registry::with_builtins()
            .fingerprint(&map(&[("hits", "counter")]))
            .unwrap_err();
        assert_eq!(
            err,
            RegistryError::Unknown {
                table: "hits".into(),
                resolver: "counter".into()
            }
        );
        assert!(err.to_string().contains("register it"));
    }
}
