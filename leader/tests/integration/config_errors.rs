//! Every way `regions.toml` can be wrong is reported with the file, the position, the key,
//! what is wrong and what to do. These tests pin the exact messages, because the message is
//! the product here: an operator reads it and fixes the file without opening the source.

use std::path::Path;

use leader::config::{Config, ConfigError, ErrorKind, Location};

/// Where the configurations below claim to come from; errors name it.
const FILE: &str = "/etc/meridian/regions.toml";

/// A small valid configuration; each test breaks one thing in it.
const BASE: &str = r#"cluster = "test"
tls_dir = "certs"

[[region]]
name = "us-east"
peer_addr = "127.0.0.1:7101"
api_addr = "127.0.0.1:8101"

[[region]]
name = "eu-west"
peer_addr = "127.0.0.1:7102"
api_addr = "127.0.0.1:8102"

[tables]
default = "lww"
carts = "multi-value"
counters = "counter"

[[simulation.link]]
from = "us-east"
to = "eu-west"
latency_ms = 38
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(FILE))
}

/// `BASE` with `from` replaced by `to` (which must change it), parsed; the error expected.
fn error_with(from: &str, to: &str) -> ConfigError {
    assert!(BASE.contains(from), "BASE has no {from:?}");
    match parse(&BASE.replacen(from, to, 1)) {
        Ok(_) => panic!("replacing {from:?} with {to:?} should make the configuration invalid"),
        Err(e) => e,
    }
}

#[test]
fn the_base_configuration_is_valid() {
    let config = parse(BASE).unwrap();
    assert_eq!(config.region_names(), ["us-east", "eu-west"]);
}

#[test]
fn unknown_resolver_lists_the_registered_ones() {
    let config = parse(BASE).unwrap();
    let err = config
        .check_resolvers(&["lww", "multi-value", "union-set"])
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnknownResolver);
    assert_eq!(err.key, "tables.counters");
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml: tables.counters: table `counters` uses resolver \
         `counter`, which is not registered. use one of the resolvers this program registers: \
         lww, multi-value, union-set (a custom resolver must be registered in code, by the name \
         tables use, before the leader starts)"
    );
    config
        .check_resolvers(&["lww", "multi-value", "counter"])
        .unwrap();
}

#[test]
fn a_misspelt_resolver_gets_a_suggestion() {
    let config = parse(&BASE.replace("\"multi-value\"", "\"multivalue\"")).unwrap();
    let err = config
        .check_resolvers(&["lww", "multi-value", "counter"])
        .unwrap_err();
    assert_eq!(err.key, "tables.carts");
    assert!(
        err.fix
            .starts_with("did you mean `multi-value`? use one of"),
        "{}",
        err.fix
    );
}

#[test]
fn duplicate_region() {
    let err = error_with("name = \"eu-west\"", "name = \"us-east\"");
    assert_eq!(err.kind, ErrorKind::Invalid);
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:10:8: region[1].name: region `us-east` is already defined \
         by region[0]. give every [[region]] its own name, or remove the duplicate"
    );
}

#[test]
fn address_without_a_port() {
    let err = error_with("\"127.0.0.1:7102\"", "\"127.0.0.1\"");
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:11:13: region[1].peer_addr: `127.0.0.1` is not an IP \
         address with a port (the port is missing). write it as IP:port, e.g. \
         `127.0.0.1:7101`; IPv6 goes in brackets, `[::1]:7101`"
    );
}

#[test]
fn address_with_a_host_name() {
    let err = error_with("\"127.0.0.1:8101\"", "\"localhost:8101\"");
    assert_eq!(err.key, "region[0].api_addr");
    assert_eq!(
        err.problem,
        "`localhost:8101` is not an IP address with a port (host names are not accepted, so \
         every region uses exactly the address written here)"
    );
    assert_eq!(
        err.fix,
        "write it as IP:port, e.g. `127.0.0.1:8101`; IPv6 goes in brackets, `[::1]:7101`"
    );
}

#[test]
fn peer_address_that_cannot_be_dialled() {
    let err = error_with("\"127.0.0.1:7101\"", "\"0.0.0.0:7101\"");
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:6:13: region[0].peer_addr: `0.0.0.0:7101` cannot be \
         dialled: other regions connect to exactly this address. give the IP address and fixed \
         port other regions reach this one at, e.g. `127.0.0.1:7101`"
    );
}

#[test]
fn duplicate_addresses() {
    let err = error_with("\"127.0.0.1:7102\"", "\"127.0.0.1:7101\"");
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:11:13: region[1].peer_addr: peer address 127.0.0.1:7101 is \
         already used by region[0] (`us-east`). give every region its own peer_addr: it is how \
         other regions find it"
    );
    // Two regions on one host cannot share an API port, not even through a wildcard.
    let err = error_with("\"127.0.0.1:8102\"", "\"0.0.0.0:8101\"");
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:12:12: region[1].api_addr: API address 0.0.0.0:8101 is \
         already used by region[0] (`us-east`). regions on one host need distinct API ports"
    );
}

#[test]
fn regions_on_different_hosts_may_share_api_addresses_and_data_paths() {
    let text = BASE
        .replace("127.0.0.1:7101", "10.0.0.1:7100")
        .replace("127.0.0.1:7102", "10.0.1.1:7100")
        .replace("127.0.0.1:8102", "127.0.0.1:8101")
        .replace(
            "api_addr = \"127.0.0.1:8101\"\n",
            "api_addr = \"127.0.0.1:8101\"\ndata_dir = \"/var/lib/meridian\"\n",
        );
    let config = parse(&text).unwrap();
    assert_eq!(config.regions[0].data_dir, config.regions[1].data_dir);
}

#[test]
fn missing_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("regions.toml");
    std::fs::write(&file, BASE).unwrap();
    let config = Config::load(&file).unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("ca.pem"), "").unwrap();
    std::fs::write(certs.join("us-east.pem"), "").unwrap();

    let err = config.check_tls("us-east").unwrap_err();
    assert_eq!(err.kind, ErrorKind::MissingCertificate);
    assert_eq!(
        err.to_string(),
        format!(
            "{file}: tls_dir: region `us-east` cannot start without its TLS files: us-east.key \
             missing from {certs}. run `meridian certs init --config {file}` to create the \
             cluster CA and a certificate for every region, or set tls_dir to the directory \
             that holds them",
            file = file.display(),
            certs = certs.display(),
        )
    );
    let err = config.check_tls("eu-west").unwrap_err();
    assert!(
        err.problem.contains("eu-west.pem, eu-west.key missing"),
        "{}",
        err.problem
    );

    std::fs::write(certs.join("us-east.key"), "").unwrap();
    config.check_tls("us-east").unwrap();
}

#[test]
fn unknown_field_suggests_the_intended_key() {
    let err = error_with(
        "peer_addr = \"127.0.0.1:7102\"",
        "peer_adr = \"127.0.0.1:7102\"",
    );
    assert_eq!(err.kind, ErrorKind::UnknownKey);
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:11:1: region[1].peer_adr: unknown key `peer_adr`. did you \
         mean `peer_addr`? remove it or use one of the keys allowed in region[1]: name, \
         peer_addr, api_addr, data_dir, resp_addr"
    );
}

#[test]
fn unknown_field_at_the_top_level_and_in_sections() {
    let err = error_with(
        "tls_dir = \"certs\"",
        "tls_dir = \"certs\"\nregion_count = 2",
    );
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:3:1: region_count: unknown key `region_count`. remove it or \
         use one of the keys allowed at the top level: cluster, tls_dir, limits, timeouts, \
         region, tables, durability, read, simulation, resp, anti_entropy"
    );
    let err = error_with(
        "tls_dir = \"certs\"",
        "tls_dir = \"certs\"\n[timeouts]\nheartbeat_ms = 9",
    );
    assert_eq!(err.key, "timeouts.heartbeat_ms");
    assert!(
        err.fix
            .starts_with("remove it or use one of the keys allowed in timeouts: ")
    );
}

#[test]
fn wrong_type() {
    let err = error_with("latency_ms = 38", "latency_ms = \"38ms\"");
    assert_eq!(err.kind, ErrorKind::WrongType);
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:22:14: simulation.link[0].latency_ms: found string \
         \"38ms\", expected a whole number >= 0. write a whole number >= 0 here; docs/config.md \
         lists every key with its type"
    );
}

#[test]
fn missing_required_key() {
    let err = error_with("api_addr = \"127.0.0.1:8102\"\n", "");
    assert_eq!(err.kind, ErrorKind::MissingKey);
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:9:1: region[1].api_addr: required key `api_addr` is \
         missing. add `api_addr`; docs/config.md describes it"
    );
    let err = error_with("cluster = \"test\"\n", "");
    assert_eq!(err.key, "cluster");
    // A key missing at the top level points at the start of the file.
    assert_eq!(err.location, Some(Location { line: 1, column: 1 }));
}

#[test]
fn syntax_error_has_a_position() {
    let err = error_with("latency_ms = 38", "latency_ms = 38 ms");
    assert_eq!(err.kind, ErrorKind::Syntax);
    assert_eq!(err.key, "simulation.link[0].latency_ms");
    let at = err.location.unwrap();
    assert_eq!((at.line, at.column), (22, 14));
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:22:14: simulation.link[0].latency_ms: invalid TOML: string values must be quoted, expected \
         literal string. correct the TOML here: strings are quoted, tables are written [name] \
         and repeated tables [[name]] (see https://toml.io)"
    );

    let err = error_with(
        "carts = \"multi-value\"",
        "carts = \"multi-value\"\ncarts = \"lww\"",
    );
    assert_eq!(err.kind, ErrorKind::Syntax);
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:17:1: invalid TOML: duplicate key `carts`. each key may appear once \
         per table (and each [table] once); remove or rename one"
    );
}

#[test]
fn missing_default_table() {
    let err = error_with("default = \"lww\"\n", "");
    assert_eq!(err.kind, ErrorKind::MissingKey);
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:14:1: tables.default: there is no `default` table. add \
         `default = \"lww\"` under [tables]: requests that name no table use it"
    );
}

#[test]
fn bad_table_name() {
    let err = error_with("carts = ", "\"Carts!\" = ");
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:16:12: tables.\"Carts!\": `Carts!` is not a valid table \
         name. use 1 to 64 lowercase letters, digits, '-' and '_', e.g. `shopping_carts`"
    );
}

#[test]
fn bad_region_name() {
    let err = error_with("name = \"eu-west\"", "name = \"EU West\"");
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:10:8: region[1].name: `EU West` is not a valid region name. \
         use 1 to 32 lowercase letters, digits and '-', starting and ending with a letter or \
         digit (it is used in certificates), e.g. `eu-west`"
    );
    let err = error_with(
        "name = \"eu-west\"",
        &format!("name = \"{}\"", "r".repeat(33)),
    );
    assert_eq!(err.key, "region[1].name");
}

#[test]
fn simulation_link_naming_an_unknown_region() {
    let err = error_with("to = \"eu-west\"", "to = \"eu-wset\"");
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:21:6: simulation.link[0].to: `eu-wset` is not a configured \
         region. did you mean `eu-west`? use one of: us-east, eu-west"
    );
}

#[test]
fn simulation_link_figures_are_checked() {
    let err = error_with("latency_ms = 38", "latency_ms = 38\nloss = 1.0");
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:23:8: simulation.link[0].loss: 1 is not a probability in \
         [0, 1). write the fraction of packets dropped, e.g. 0.01 for 1%"
    );
    let err = error_with("latency_ms = 38", "latency_ms = 38\njitter_ms = 40");
    assert_eq!(err.key, "simulation.link[0].jitter_ms");
    let err = error_with("to = \"eu-west\"", "to = \"us-east\"");
    assert_eq!(err.problem, "the link goes from `us-east` to itself");
}

#[test]
fn a_direction_is_described_once() {
    let reverse = "\n[[simulation.link]]\nfrom = \"eu-west\"\nto = \"us-east\"\nlatency_ms = 40\n";
    let err = parse(&format!("{BASE}{reverse}")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:24:1: simulation.link[1]: the direction eu-west -> us-east \
         is already set by simulation.link[0]. a link applies both ways unless `symmetric = \
         false`: remove one of the two, or set `symmetric = false` on both to give each \
         direction its own figures"
    );
    // Setting `symmetric = false` on one of them is not enough: the other still covers both.
    let one_way = BASE.replace("latency_ms = 38", "latency_ms = 38\nsymmetric = false");
    let err = parse(&format!("{one_way}{reverse}")).unwrap_err();
    assert_eq!(
        err.problem,
        "the direction us-east -> eu-west is already set by simulation.link[0]"
    );
    let reverse_one_way = format!("{reverse}symmetric = false\n");
    let config = parse(&format!("{one_way}{reverse_one_way}")).unwrap();
    assert_eq!(config.link("us-east", "eu-west").unwrap().latency_ms, 38);
    assert_eq!(config.link("eu-west", "us-east").unwrap().latency_ms, 40);
}

#[test]
fn limits_must_be_consistent() {
    let text = BASE.replace(
        "tls_dir = \"certs\"\n",
        "tls_dir = \"certs\"\n[limits]\nmax_frame_bytes = 1048576\n",
    );
    let err = parse(&text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:3:1: limits.max_value_bytes: max_key_bytes + max_value_bytes \
         (1049600) is more than half of max_frame_bytes (1048576). lower max_value_bytes or raise \
         max_frame_bytes: a replication frame must hold the largest write with room for its \
         context and headers"
    );
    let text = BASE.replace(
        "tls_dir = \"certs\"\n",
        "tls_dir = \"certs\"\n[limits]\nmax_siblings = 0\n",
    );
    let err = parse(&text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:4:16: limits.max_siblings: 0 is out of range. use a value \
         from 1 to 64"
    );
    // Past what the store itself accepts (conflict::limits): refused at load, not at every
    // write.
    let text = BASE.replace(
        "tls_dir = \"certs\"\n",
        "tls_dir = \"certs\"\n[limits]\nmax_value_bytes = 2097152\n",
    );
    let err = parse(&text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:4:19: limits.max_value_bytes: 2097152 is out of range. use a \
         value from 1 to 1048576"
    );
}

/// Issue 11, item 4: the memory bounds are named in bytes, range-checked, and a restart's
/// replay chunk must hold the largest write.
#[test]
fn memory_bounds_are_bytes_in_range_and_a_replay_chunk_holds_the_largest_write() {
    let with = |limits: &str| {
        BASE.replace(
            "tls_dir = \"certs\"\n",
            &format!("tls_dir = \"certs\"\n[limits]\n{limits}\n"),
        )
    };
    let config = parse(&with(
        "log_tail_bytes = 0\ncheckpoint_bytes = 1048576\nreplay_chunk_bytes = 2097152\n\
         storage_cache_bytes = 1048576\nlog_segment_bytes = 2097152\n\
         log_retention_bytes = 3145728",
    ))
    .unwrap();
    assert_eq!(config.limits.log_segment_bytes, 2 << 20);
    assert_eq!(config.limits.log_retention_bytes, 3 << 20);
    assert_eq!(config.limits.log_tail_bytes, 0);
    assert_eq!(config.limits.checkpoint_bytes, 1 << 20);
    assert_eq!(config.limits.replay_chunk_bytes, 2 << 20);
    assert_eq!(config.limits.storage_cache_bytes, 1 << 20);
    let defaults = parse(BASE).unwrap().limits;
    assert_eq!(defaults.log_tail_bytes, 16 << 20);
    assert_eq!(defaults.checkpoint_bytes, 64 << 20);
    assert_eq!(defaults.replay_chunk_bytes, 8 << 20);
    assert_eq!(defaults.storage_cache_bytes, 64 << 20);
    assert_eq!(defaults.log_segment_bytes, 32 << 20);
    assert_eq!(defaults.log_retention_bytes, 1 << 30);
    let err = parse(&with("log_retention_bytes = 1000")).unwrap_err();
    assert_eq!(err.key, "limits.log_retention_bytes");
    let err = parse(&with("log_segment_bytes = 1000")).unwrap_err();
    assert_eq!(err.key, "limits.log_segment_bytes");

    let err = parse(&with("replay_chunk_bytes = 65536")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:4:22: limits.replay_chunk_bytes: 65536 is less than \
         max_key_bytes + max_value_bytes (1049600). raise replay_chunk_bytes (8 MiB suits a \
         1 MiB value) or lower max_value_bytes: a restart replays the log in chunks and the \
         largest write must fit one"
    );
    let err = parse(&with("checkpoint_bytes = 1000")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:4:20: limits.checkpoint_bytes: 1000 is out of range. use a \
         value from 1048576 to 17179869184"
    );
    let err = parse(&with("log_tail_entries = 65536")).unwrap_err();
    assert!(
        err.to_string().contains("unknown key `log_tail_entries`")
            && err.to_string().contains("log_tail_bytes"),
        "{err}"
    );
}

/// Issue 13, item 3: `snapshot_chunk_bytes` defaults to 1 MiB and lies between 4 KiB and a
/// quarter of the frame limit (a chunk travels in one frame with one more key state); the
/// error names the key, the range and the way out.
#[test]
fn snapshot_chunks_fit_a_quarter_of_a_frame() {
    let with = |limits: &str| {
        BASE.replace(
            "tls_dir = \"certs\"\n",
            &format!("tls_dir = \"certs\"\n[limits]\n{limits}\n"),
        )
    };
    assert_eq!(parse(BASE).unwrap().limits.snapshot_chunk_bytes, 1 << 20);
    let config = parse(&with("snapshot_chunk_bytes = 4096")).unwrap();
    assert_eq!(config.limits.snapshot_chunk_bytes, 4096);
    let config = parse(&with("snapshot_chunk_bytes = 2097152")).unwrap();
    assert_eq!(
        config.limits.snapshot_chunk_bytes,
        2 << 20,
        "a quarter of 8 MiB"
    );
    let err = parse(&with("snapshot_chunk_bytes = 4095")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:4:24: limits.snapshot_chunk_bytes: 4095 is out of range: it \
         must be at least 4096 and at most a quarter of max_frame_bytes (2097152). use a value \
         from 4096 to 2097152 (1 MiB, the default, suits most clusters), or raise \
         max_frame_bytes: a snapshot chunk travels in one replication frame together with one \
         more key state"
    );
    let err = parse(&with("snapshot_chunk_bytes = 2097153")).unwrap_err();
    assert_eq!(err.key, "limits.snapshot_chunk_bytes");
    // The default is too large for a small frame limit: the error says so.
    let err = parse(&with(
        "max_frame_bytes = 2097152
max_value_bytes = 65536
max_request_body_bytes = 262144
replay_chunk_bytes = 1048576",
    ))
    .unwrap_err();
    assert_eq!(err.key, "limits.snapshot_chunk_bytes");
    assert!(
        err.to_string()
            .contains("1048576 is out of range: it must be at least 4096 and at most a quarter of max_frame_bytes (524288)"),
        "{err}"
    );
}

#[test]
fn timeouts_must_be_consistent() {
    let text = BASE.replace(
        "tls_dir = \"certs\"\n",
        "tls_dir = \"certs\"\n[timeouts]\nkeep_alive_ms = 10000\n",
    );
    let err = parse(&text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml:4:17: timeouts.keep_alive_ms: 10000 is not less than \
         idle_timeout_ms (10000). make keep_alive_ms smaller than idle_timeout_ms, or idle \
         connections close between keep-alives"
    );
}

#[test]
fn unknown_region() {
    let config = parse(BASE).unwrap();
    let err = config.region("eu-wset").unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnknownRegion);
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml: region: there is no region `eu-wset` in this file. did you \
         mean `eu-west`? use one of the configured regions: us-east, eu-west, or add a \
         [[region]] named `eu-wset`"
    );
    assert!(config.check_tls("nowhere").unwrap_err().kind == ErrorKind::UnknownRegion);
}

#[test]
fn no_regions() {
    let err = parse("cluster = \"test\"\n[tables]\ndefault = \"lww\"\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/meridian/regions.toml: region: 0 regions are configured. write one [[region]] \
         table (name, peer_addr, api_addr) per region, 1 to 32 of them"
    );
}

#[test]
fn unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nope.toml");
    let err = Config::load(&file).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unreadable);
    assert_eq!(err.file, file);
    assert!(
        err.problem.starts_with("cannot read the file ("),
        "{}",
        err.problem
    );
    assert!(
        err.fix.starts_with("check the path given with --config"),
        "{}",
        err.fix
    );
}

#[test]
fn resp_databases_default_to_default_then_the_tables_by_name_and_must_name_tables() {
    let config = parse(BASE).unwrap();
    assert_eq!(config.resp.databases, ["default", "carts", "counters"]);
    assert_eq!(config.resp.max_connections, 10_000);
    assert_eq!(config.regions[0].resp_addr, None);
    let listed = parse(&format!(
        "{BASE}\n[resp]\ndatabases = [\"carts\", \"default\"]\n"
    ))
    .unwrap();
    assert_eq!(listed.resp.databases, ["carts", "default"]);

    let err = parse(&format!(
        "{BASE}\n[resp]\ndatabases = [\"default\", \"nope\"]\n"
    ))
    .unwrap_err();
    assert_eq!(err.key, "resp.databases");
    assert!(
        err.to_string().contains(
            "database 1 names table `nope`, which is not under [tables]. name configured tables only: carts, counters, default"
        ),
        "{err}"
    );
    let err = parse(&format!(
        "{BASE}\n[resp]\ndatabases = [\"carts\", \"carts\"]\n"
    ))
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("table `carts` is both database 0 and database 1"),
        "{err}"
    );
    let err = parse(&format!("{BASE}\n[resp]\ndatabases = []\n")).unwrap_err();
    assert!(err.to_string().contains("0 databases are listed"), "{err}");
    let err = parse(&format!("{BASE}\n[resp]\nmax_connections = 0\n")).unwrap_err();
    assert_eq!(err.key, "resp.max_connections");
}

#[test]
fn a_resp_address_must_not_take_an_api_port() {
    let ok = parse(&BASE.replacen(
        "api_addr = \"127.0.0.1:8101\"",
        "api_addr = \"127.0.0.1:8101\"\nresp_addr = \"127.0.0.1:8201\"",
        1,
    ))
    .unwrap();
    assert_eq!(
        ok.regions[0].resp_addr,
        Some("127.0.0.1:8201".parse().unwrap())
    );
    let own = error_with(
        "api_addr = \"127.0.0.1:8101\"",
        "api_addr = \"127.0.0.1:8101\"\nresp_addr = \"127.0.0.1:8101\"",
    );
    assert_eq!(own.key, "region[0].resp_addr");
    assert!(
        own.to_string()
            .contains("give the Redis-protocol listener its own port"),
        "{own}"
    );
    let other = error_with(
        "api_addr = \"127.0.0.1:8102\"",
        "api_addr = \"127.0.0.1:8102\"\nresp_addr = \"127.0.0.1:8101\"",
    );
    assert_eq!(other.key, "region[1].resp_addr");
    assert!(
        other
            .to_string()
            .contains("RESP address 127.0.0.1:8101 is already used by region[0]"),
        "{other}"
    );
    let bad = error_with(
        "api_addr = \"127.0.0.1:8101\"",
        "api_addr = \"127.0.0.1:8101\"\nresp_addr = \"localhost:8201\"",
    );
    assert_eq!(bad.key, "region[0].resp_addr");
}

#[test]
fn read_levels_name_configured_tables_and_known_levels() {
    let config = parse(&format!("{BASE}\n[read]\ncarts = \"quorum\"\n")).unwrap();
    assert_eq!(
        config.read.get("carts"),
        Some(&leader_core::ReadLevel::Quorum)
    );
    let err = parse(&format!("{BASE}\n[read]\ncarts = \"most\"\n")).unwrap_err();
    assert_eq!(err.key, "read.carts");
    assert!(
        err.to_string().contains("unknown read level 'most'"),
        "{err}"
    );
    assert_eq!(err.fix, "write one of \"one\", \"quorum\", \"all\"");
    let err = parse(&format!("{BASE}\n[read]\norders = \"all\"\n")).unwrap_err();
    assert_eq!(err.key, "read.orders");
    assert_eq!(
        err.fix,
        "give read defaults only for tables listed under [tables]"
    );
}

#[test]
fn anti_entropy_defaults_to_five_minutes_and_refuses_a_busy_loop() {
    let config = parse(BASE).unwrap();
    assert_eq!(config.anti_entropy.interval_ms, 300_000);
    let off = parse(&format!("{BASE}\n[anti_entropy]\ninterval_ms = 0\n")).unwrap();
    assert_eq!(off.anti_entropy.interval_ms, 0);
    let err = parse(&format!("{BASE}\n[anti_entropy]\ninterval_ms = 10\n")).unwrap_err();
    assert_eq!(err.key, "anti_entropy.interval_ms");
    assert!(err.fix.contains("1000"), "{err}");
    let err = parse(&format!("{BASE}\n[anti_entropy]\ninterval = 1000\n")).unwrap_err();
    assert!(err.key.starts_with("anti_entropy"), "{err}");
}
