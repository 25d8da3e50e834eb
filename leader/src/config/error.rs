//! Every problem with the file: [`ConfigError`], with where it is and what to do.

use super::*;

/// A problem with a configuration file: which file, where, which key, what is wrong and what
/// to do. Displayed as `<file>[:<line>:<column>]: <key>: <problem>. <fix>`, a form editors and
/// terminals recognise as a jump-to location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file (absolute when it could be made so).
    pub file: PathBuf,
    /// Where in the file, when the problem is tied to text that is there. Checks made after
    /// loading ([`Config::check_resolvers`], [`Config::check_tls`], [`Config::region`]) have
    /// no location; their key still says where to look.
    pub location: Option<Location>,
    /// The key path, e.g. `region[1].peer_addr` (array indices count from 0) or
    /// `tables.carts`; empty when the problem is not about one key (unreadable file, syntax).
    pub key: String,
    /// The category, for code that reacts to some problems differently.
    pub kind: ErrorKind,
    /// What is wrong, as one sentence without the final period.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

/// A position in a configuration file, both counted from 1 (columns in characters). `u32`
/// keeps [`ConfigError`] small; files are capped at [`MAX_CONFIG_BYTES`] anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line number, from 1.
    pub line: u32,
    /// Column number, from 1, counted in characters.
    pub column: u32,
}

/// What kind of problem a [`ConfigError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read (missing, unreadable, not UTF-8, too large).
    Unreadable,
    /// The text is not valid TOML.
    Syntax,
    /// A key this format does not have (often a misspelling).
    UnknownKey,
    /// A required key is absent.
    MissingKey,
    /// A value has the wrong type (e.g. a string where a number belongs).
    WrongType,
    /// A value is well typed but not acceptable (bad name, address, range, duplicate).
    Invalid,
    /// A table names a resolver this program has not registered.
    UnknownResolver,
    /// A region name that the file does not configure.
    UnknownRegion,
    /// A TLS file is missing.
    MissingCertificate,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(at) = self.location {
            write!(f, ":{}:{}", at.line, at.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}. {}", self.problem, self.fix)
    }
}

impl std::error::Error for ConfigError {}
