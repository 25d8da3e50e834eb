//! Named limits: every key, value, sibling set and name has a bound, and each bound's doc says
//! the policy (who enforces it, and what happens past it).
//!
//! The rule behind all of them: limits are enforced where data *enters* the system (a client's
//! write at its origin region), never on replicated data. A write another region accepted is
//! always applied, because refusing it would make regions diverge; so a replicated write is
//! only checked for well-formedness ([`crate::Write::validate`]).

/// Most siblings a key may have after a *local* write.
///
/// Policy: the leader refuses a client write that would leave the key with more siblings than
/// this ([`crate::KeyState::prepare_write`] returns
/// [`crate::WriteRefused::TooManySiblings`]) and tells the client to resolve: read the key and
/// write back with the context it read, which supersedes every sibling. A blind write never
/// trips it (it supersedes everything). Replicated writes are always applied, so a key can
/// transiently hold up to this many siblings per concurrently writing region.
pub const MAX_SIBLINGS: usize = 64;

/// Longest key, in bytes.
///
/// Policy: checked on client writes and reads ([`check_key`]); long enough for composite keys,
/// short enough that keys in the conflict log and in indexes stay cheap.
pub const MAX_KEY_BYTES: usize = 1024;

/// Largest value, in bytes (1 MiB).
///
/// Policy: checked on client writes ([`check_value`]) and on every write's well-formedness
/// ([`crate::Write::validate`]), so one replicated frame and one stored sibling stay bounded.
/// Larger objects belong in blob storage with a reference in Meridian.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Longest table name, in bytes.
///
/// Policy: checked when the table→resolver map is fingerprinted
/// ([`crate::Registry::fingerprint`]) and on client requests ([`check_table_name`]); table names
/// appear in every conflict record and every peer hello.
pub const MAX_TABLE_NAME_BYTES: usize = 64;

/// Longest resolver name, in bytes.
///
/// Policy: checked when a resolver is registered ([`crate::Registry::register`]); names are
/// short identifiers such as `lww` that travel in every peer hello.
pub const MAX_RESOLVER_NAME_BYTES: usize = 64;

/// Most entries a decoded version vector may have.
///
/// Policy: checked before reading entries when decoding a vector from a client token, a peer
/// frame or storage ([`crate::VersionVector::from_bytes`]), so garbage cannot make a region
/// allocate without bound. Each entry is one replica id ever used in the cluster; a region
/// rebuilt from an empty disk gets a new one, so this leaves room for many rebuilds of a
/// handful of regions.
pub const MAX_VV_ENTRIES: usize = 1024;

/// A limit a client's request broke, with what to do about it.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum LimitError {
    /// The key is empty or too long.
    #[error("key is {len} bytes; keys must be 1 to {max} bytes")]
    Key {
        /// The key's length.
        len: usize,
        /// [`MAX_KEY_BYTES`].
        max: usize,
    },
    /// The value is too large.
    #[error(
        "value is {len} bytes, more than the limit of {max}; store large objects elsewhere and write a reference"
    )]
    Value {
        /// The value's length.
        len: usize,
        /// [`MAX_VALUE_BYTES`].
        max: usize,
    },
    /// The table name is empty, too long or uses characters other than `[a-z0-9_-]`.
    #[error("table name {name:?} is invalid; use 1 to {max} characters from a-z, 0-9, '_' and '-'")]
    TableName {
        /// The refused name (truncated to the limit for display).
        name: String,
        /// [`MAX_TABLE_NAME_BYTES`].
        max: usize,
    },
}

/// Checks a key against [`MAX_KEY_BYTES`] (and that it is not empty).
pub fn check_key(key: &[u8]) -> Result<(), LimitError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(LimitError::Key {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

/// Checks a value against [`MAX_VALUE_BYTES`], at the origin, before the write is stamped.
pub fn check_value(value: &[u8]) -> Result<(), LimitError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(LimitError::Value {
            len: value.len(),
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// Checks a table name: 1 to [`MAX_TABLE_NAME_BYTES`] characters from `[a-z0-9_-]`, so names
/// are safe in URLs, metrics labels and logs.
pub fn check_table_name(name: &str) -> Result<(), LimitError> {
    if is_identifier(name, MAX_TABLE_NAME_BYTES) {
        Ok(())
    } else {
        Err(LimitError::TableName {
            name: name.chars().take(MAX_TABLE_NAME_BYTES).collect(),
            max: MAX_TABLE_NAME_BYTES,
        })
    }
}

/// Whether `name` is 1 to `max` characters from `[a-z0-9_-]`; shared by table and resolver
/// names.
pub(crate) fn is_identifier(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_and_names() {
        assert!(check_key(b"k").is_ok());
        assert!(check_key(b"").is_err());
        assert!(check_key(&[0; MAX_KEY_BYTES]).is_ok());
        assert!(check_key(&[0; MAX_KEY_BYTES + 1]).is_err());
        assert!(check_value(&[]).is_ok());
        assert!(check_value(&vec![0; MAX_VALUE_BYTES + 1]).is_err());
        assert!(check_table_name("users_v2").is_ok());
        assert!(check_table_name("Users").is_err());
        assert!(check_table_name("").is_err());
        assert!(check_table_name(&"a".repeat(MAX_TABLE_NAME_BYTES + 1)).is_err());
        let e = check_value(&vec![0; MAX_VALUE_BYTES + 1]).unwrap_err();
        assert!(e.to_string().contains("store large objects elsewhere"));
    }
}
