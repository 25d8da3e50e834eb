//! The shipped `regions.toml` and how a valid configuration is read: defaults, paths resolved
//! against the file's directory, accessors.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use leader::config::{Config, Limits, Timeouts};

/// The workspace root, where the shipped `regions.toml` lives.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn shipped() -> PathBuf {
    root().join("regions.toml")
}

#[test]
fn the_shipped_regions_toml_loads() {
    let config = Config::load(&shipped()).unwrap();
    let root = root();

    assert_eq!(config.cluster, "meridian-local");
    assert_eq!(config.region_names(), ["us-east", "eu-west", "ap-south"]);
    let ports: BTreeSet<u16> = config
        .regions
        .iter()
        .flat_map(|r| [r.peer_addr.port(), r.api_addr.port()])
        .collect();
    assert_eq!(
        ports.len(),
        6,
        "every peer and API port is distinct: {ports:?}"
    );
    for r in &config.regions {
        assert!(
            r.peer_addr.ip().is_loopback() && r.api_is_loopback(),
            "{r:?}"
        );
        assert_eq!(r.data_dir, root.join("data").join(&r.name));
    }
    assert_eq!(config.tls_dir, root.join("certs"));
    assert_eq!(config.source, root.join("regions.toml"));

    // The file spells out the defaults, so it doubles as their documentation.
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.timeouts, Timeouts::default());

    assert_eq!(config.resolver_for("default"), Some("lww"));
    assert_eq!(config.resolver_for("carts"), Some("multi-value"));
    assert_eq!(config.resolver_for("counters"), Some("counter"));
    assert_eq!(config.resolver_for("nope"), None);
    // `counter` is the example custom resolver the `meridian` binary registers.
    config
        .check_resolvers(&["lww", "multi-value", "counter", "union-set"])
        .unwrap();

    let latency = |a, b| config.link(a, b).map(|l| l.latency_ms);
    assert_eq!(latency("us-east", "eu-west"), Some(38));
    assert_eq!(latency("eu-west", "us-east"), Some(38));
    assert_eq!(latency("eu-west", "ap-south"), Some(75));
    assert_eq!(latency("ap-south", "us-east"), Some(110));
    assert!(
        config
            .simulation
            .links
            .iter()
            .all(|l| l.loss == 0.0 && l.jitter_ms > 0)
    );
}

#[test]
fn relative_paths_resolve_against_the_config_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("deploy");
    std::fs::create_dir(&nested).unwrap();
    let file = nested.join("regions.toml");
    std::fs::write(
        &file,
        r#"cluster = "paths"
tls_dir = "./tls/../certs"
[[region]]
name = "a"
peer_addr = "127.0.0.1:7101"
api_addr = "127.0.0.1:8101"
[[region]]
name = "b"
peer_addr = "127.0.0.1:7102"
api_addr = "127.0.0.1:8102"
data_dir = "../shared/b"
[[region]]
name = "c"
peer_addr = "127.0.0.1:7103"
api_addr = "127.0.0.1:8103"
data_dir = "/srv/meridian/c"
[tables]
default = "lww"
"#,
    )
    .unwrap();

    // Loaded from another working directory's point of view: only the file's location counts.
    let config = Config::load(&file).unwrap();
    assert!(config.source.is_absolute());
    assert_eq!(config.source, file);
    assert_eq!(config.tls_dir, nested.join("tls/../certs"));
    assert_eq!(
        config.regions[0].data_dir,
        nested.join("data/a"),
        "default data_dir"
    );
    assert_eq!(config.regions[1].data_dir, nested.join("../shared/b"));
    assert_eq!(config.regions[2].data_dir, Path::new("/srv/meridian/c"));

    let tls = config.tls_files("b").unwrap();
    assert_eq!(tls.ca, nested.join("tls/../certs/ca.pem"));
    assert_eq!(tls.cert, nested.join("tls/../certs/b.pem"));
    assert_eq!(tls.key, nested.join("tls/../certs/b.key"));
}

#[test]
fn a_relative_source_is_made_absolute() {
    let text = std::fs::read_to_string(shipped()).unwrap();
    let config = Config::parse(&text, Path::new("conf/regions.toml")).unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(config.source, cwd.join("conf/regions.toml"));
    assert_eq!(config.regions[0].data_dir, cwd.join("conf/data/us-east"));
}

#[test]
fn sections_are_optional_and_defaults_apply() {
    let config = Config::parse(
        "cluster = \"min\"\n[[region]]\nname = \"solo\"\npeer_addr = \"[::1]:7101\"\n\
         api_addr = \"0.0.0.0:0\"\n[tables]\ndefault = \"lww\"\n",
        Path::new("/x/regions.toml"),
    )
    .unwrap();
    assert_eq!(config.tls_dir, Path::new("/x/certs"));
    assert_eq!(config.limits, Limits::default());
    assert!(config.simulation.links.is_empty());
    assert_eq!(config.link("solo", "solo"), None);
    assert!(!config.regions[0].api_is_loopback());

    let t = Timeouts::default();
    assert_eq!(t.heartbeat_interval(), Duration::from_millis(500));
    assert_eq!(t.relay_delay(), Duration::from_secs(2));
    assert_eq!(t.max_clock_offset(), Duration::from_millis(500));
    assert_eq!(t.idle_timeout(), Duration::from_secs(10));
    assert_eq!(t.keep_alive(), Duration::from_secs(2));
    assert_eq!(t.reconnect_min(), Duration::from_millis(100));
    assert_eq!(t.reconnect_max(), Duration::from_secs(1));
    assert_eq!(t.dial_timeout(), Duration::from_secs(2));
    assert_eq!(t.write_timeout(), Duration::from_secs(5));
    assert_eq!(t.session_wait(), Duration::from_secs(1));
}

#[test]
fn partial_sections_keep_the_other_defaults() {
    let config = Config::parse(
        "cluster = \"x\"\n[limits]\nmax_siblings = 8\n[timeouts]\nrelay_delay_ms = 750\n\
         [[region]]\nname = \"a\"\npeer_addr = \"127.0.0.1:1\"\napi_addr = \"127.0.0.1:2\"\n\
         [tables]\ndefault = \"multi-value\"\n",
        Path::new("/x/regions.toml"),
    )
    .unwrap();
    assert_eq!(
        config.limits,
        Limits {
            max_siblings: 8,
            ..Limits::default()
        }
    );
    assert_eq!(
        config.timeouts,
        Timeouts {
            relay_delay_ms: 750,
            ..Timeouts::default()
        }
    );
}
