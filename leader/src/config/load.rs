//! Loading: read the file, parse it twice (spanned document, serde `Raw*` shapes), validate.

use super::*;

impl Config {
    /// Reads, parses and validates the configuration file at `path`.
    ///
    /// Fails with a [`ConfigError`] naming the file, the key and the fix for the first
    /// problem found. Resolvers and certificates are not checked here: see
    /// [`Config::check_resolvers`] and [`Config::check_tls`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = absolute(path);
        let unreadable = |problem: String| ConfigError {
            file: file.clone(),
            location: None,
            key: String::new(),
            kind: ErrorKind::Unreadable,
            problem,
            fix: "check the path given with --config; the repository ships an example, \
                  regions.toml"
                .to_owned(),
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(wide(MAX_CONFIG_BYTES) + 1).read_to_string(&mut text))
            .map_err(|e| unreadable(format!("cannot read the file ({e})")))?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration `text` as if it had been read from `source`, which
    /// errors name and relative paths resolve against (the file need not exist). Everything
    /// [`Config::load`] checks is checked here.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        let file = absolute(source);
        if text.len() > MAX_CONFIG_BYTES {
            let problem = Problem::new(
                KeyPath::root(),
                ErrorKind::Unreadable,
                format!("the file is larger than {MAX_CONFIG_BYTES} bytes"),
                "check that --config names the regions.toml of this deployment".to_owned(),
            );
            return Err(problem.into_error(&file, None, text));
        }
        // A syntax error still leaves a partial document, enough to name the key it is in.
        let (doc, syntax_errors) = DeTable::parse_recoverable(text);
        if let Some(e) = syntax_errors.first() {
            return Err(syntax_problem(e, &doc, text).into_error(&file, Some(&doc), text));
        }
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| serde_problem(&e, &doc).into_error(&file, Some(&doc), text))?;
        validate(raw, file.clone()).map_err(|p| p.into_error(&file, Some(&doc), text))
    }

    /// Checks that every table's resolver is one of `known` (the names registered with the
    /// leader, built-in and custom). Call it once the resolvers are registered: the file
    /// alone cannot know which custom resolvers a program provides.
    pub fn check_resolvers(&self, known: &[&str]) -> Result<(), ConfigError> {
        for (table, resolver) in &self.tables {
            if known.contains(&resolver.as_str()) {
                continue;
            }
            let listed = if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            };
            let fix = format!(
                "{}use one of the resolvers this program registers: {listed} (a custom \
                 resolver must be registered in code, by the name tables use, before the \
                 leader starts)",
                did_you_mean(resolver, known.iter().copied()),
            );
            return Err(self.error(
                KeyPath::of("tables").key(table),
                ErrorKind::UnknownResolver,
                format!("table `{table}` uses resolver `{resolver}`, which is not registered"),
                fix,
            ));
        }
        Ok(())
    }

    /// Checks that the CA certificate and `region`'s certificate and key exist, so a missing
    /// file is reported with the command that creates it rather than as a TLS failure.
    pub fn check_tls(&self, region: &str) -> Result<(), ConfigError> {
        let files = self.tls_files(region)?;
        let missing: Vec<String> = [&files.ca, &files.cert, &files.key]
            .into_iter()
            .filter(|p| !p.is_file())
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(self.error(
            KeyPath::of("tls_dir"),
            ErrorKind::MissingCertificate,
            format!(
                "region `{region}` cannot start without its TLS files: {} missing from {}",
                missing.join(", "),
                self.tls_dir.display(),
            ),
            format!(
                "run `meridian certs init --config {}` to create the cluster CA and a \
                 certificate for every region, or set tls_dir to the directory that holds them",
                self.source.display(),
            ),
        ))
    }

    /// The paths of `region`'s TLS files: `ca.pem`, `<region>.pem` and `<region>.key` in
    /// [`Config::tls_dir`]. Fails if the region is not configured.
    pub fn tls_files(&self, region: &str) -> Result<TlsFiles, ConfigError> {
        let region = &self.region(region)?.name;
        Ok(TlsFiles {
            ca: self.tls_dir.join("ca.pem"),
            cert: self.tls_dir.join(format!("{region}.pem")),
            key: self.tls_dir.join(format!("{region}.key")),
        })
    }

    /// The region called `name`; the error lists the configured ones, so a typo in
    /// `--region` is easy to correct.
    pub fn region(&self, name: &str) -> Result<&RegionConfig, ConfigError> {
        if let Some(region) = self.regions.iter().find(|r| r.name == name) {
            return Ok(region);
        }
        let names = self.region_names();
        Err(self.error(
            KeyPath::of("region"),
            ErrorKind::UnknownRegion,
            format!("there is no region `{name}` in this file"),
            format!(
                "{}use one of the configured regions: {}, or add a [[region]] named `{name}`",
                did_you_mean(name, names.iter().copied()),
                names.join(", "),
            ),
        ))
    }

    /// The configured region names, in file order.
    pub fn region_names(&self) -> Vec<&str> {
        self.regions.iter().map(|r| r.name.as_str()).collect()
    }

    /// The resolver `table` uses, or `None` if the table is not configured (and so does not
    /// exist).
    pub fn resolver_for(&self, table: &str) -> Option<&str> {
        self.tables.get(table).map(String::as_str)
    }

    /// The simulated conditions for packets from `from` to `to`, if any. The spec returned
    /// may be written the other way round (a symmetric link covers both directions), so use
    /// its figures, not its `from`/`to`.
    pub fn link(&self, from: &str, to: &str) -> Option<&LinkSpec> {
        self.simulation.links.iter().find(|l| {
            (l.from == from && l.to == to) || (l.symmetric && l.from == to && l.to == from)
        })
    }

    pub(super) fn error(
        &self,
        key: KeyPath,
        kind: ErrorKind,
        problem: String,
        fix: String,
    ) -> ConfigError {
        ConfigError {
            file: self.source.clone(),
            location: None,
            key: key.to_string(),
            kind,
            problem,
            fix,
        }
    }
}

/// `path` made absolute without touching the file system (the file may not exist yet) and
/// with `.` components removed. If the working directory is unknown, `path` as given.
pub(super) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path)
        .map(|p| p.components().collect())
        .unwrap_or_else(|_| path.to_path_buf())
}

// The shapes serde reads, before validation turns strings into addresses and paths. They are
// private so the public model only ever holds validated values.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) cluster: String,
    #[serde(default = "default_tls_dir")]
    pub(super) tls_dir: String,
    #[serde(default)]
    pub(super) limits: Limits,
    #[serde(default)]
    pub(super) timeouts: Timeouts,
    #[serde(default, rename = "region")]
    pub(super) regions: Vec<RawRegion>,
    #[serde(default)]
    pub(super) tables: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) durability: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) read: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) simulation: RawSimulation,
    #[serde(default)]
    pub(super) resp: RawResp,
    #[serde(default)]
    pub(super) anti_entropy: AntiEntropy,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResp {
    pub(super) databases: Option<Vec<String>>,
    pub(super) max_connections: Option<usize>,
}

pub(super) fn default_tls_dir() -> String {
    "certs".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegion {
    pub(super) name: String,
    pub(super) peer_addr: String,
    pub(super) api_addr: String,
    pub(super) data_dir: Option<String>,
    pub(super) resp_addr: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSimulation {
    #[serde(default)]
    pub(super) link: Vec<LinkSpec>,
}
