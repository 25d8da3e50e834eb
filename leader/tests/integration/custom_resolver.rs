//! A custom resolver registered in code, end to end: the `cart-union` resolver of the
//! `shopping_cart` example obeys the laws it claims (checked with `conflict::laws`, the way an
//! application checks its own resolver), two regions running it in process converge on the
//! union of concurrent carts, and a leader whose `regions.toml` names a resolver it has not
//! registered refuses to start and lists the ones it has.

use std::sync::Arc;
use std::time::Duration;

use conflict::laws::{self, Law};
use conflict::{Dot, Hlc, ReplicaId, Resolved, Resolver, Seq, Sibling, Value};
use leader::api::{CONTEXT_HEADER, SIBLINGS_HEADER};
use leader::config::Config;
use leader::{LeaderBuilder, NodeError};
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::Value as Json;

#[path = "../../examples/cart/mod.rs"]
mod cart;

use cart::CartUnion;

use crate::common::{Cluster, poll_until};

// ---- the resolver alone --------------------------------------------------------------------

/// Cart values as clients really write them: canonical carts, the same carts spelled
/// differently (any line order, no final newline), and now and then bytes that are no cart at
/// all (which a replicated write could still carry, so the merge must stay lawful on them).
fn cart_values() -> impl Strategy<Value = Vec<u8>> {
    let items = proptest::collection::btree_map(
        prop_oneof![Just("apple"), Just("bread"), Just("milk"), Just("eggs")],
        1u32..5,
        0..4,
    );
    let canonical = items.clone().prop_map(|items| {
        let items: cart::Items = items.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        CartUnion::encode(&items)
    });
    let respelled = items.prop_map(|items| {
        let lines: Vec<String> = items
            .iter()
            .rev()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        lines.join("\n").into_bytes()
    });
    prop_oneof![
        4 => canonical,
        2 => respelled,
        1 => proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

#[test]
fn cart_union_obeys_the_semilattice_laws() {
    let report = laws::check(&CartUnion, cart_values(), &laws::Config::default())
        .unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(report.resolver.to_string(), "cart-union@1");
    assert_eq!(
        report.laws,
        [
            Law::Determinism,
            Law::Shape,
            Law::TombstonesReadAbsent,
            Law::Commutativity,
            Law::Associativity,
            Law::Idempotence
        ]
    );
}

/// The mistake the laws exist to catch: summing quantities instead of taking the largest
/// looks like a merge, and is commutative and associative, but merging a cart with a copy of
/// itself doubles every quantity. A resolver claiming to be a semilattice must not do that.
#[test]
fn the_law_checker_catches_a_cart_that_sums_quantities() {
    struct SummingCart;
    impl Resolver for SummingCart {
        fn name(&self) -> &str {
            "cart-sum"
        }
        fn version(&self) -> u32 {
            1
        }
        fn is_semilattice(&self) -> bool {
            true
        }
        fn resolve(&self, siblings: &[Sibling]) -> Resolved {
            let live: Vec<&[u8]> = siblings.iter().filter_map(|s| s.value.as_bytes()).collect();
            if live.is_empty() {
                return Resolved::Absent;
            }
            let mut sum = cart::Items::new();
            for items in live.iter().map(|b| CartUnion::parse(b).unwrap_or_default()) {
                for (sku, qty) in items {
                    *sum.entry(sku).or_insert(0) += qty;
                }
            }
            Resolved::Value(CartUnion::encode(&sum))
        }
    }
    let nonempty = (1u32..5).prop_map(|q| format!("apple:{q}\n").into_bytes());
    let config = laws::Config {
        cases: 64,
        ..laws::Config::default()
    };
    let violation = laws::check(&SummingCart, nonempty, &config).unwrap_err();
    assert_eq!(violation.law, Law::Idempotence, "{violation}");
}

fn sibling(n: u64, value: Option<&str>) -> Sibling {
    Sibling {
        dot: Dot::new(ReplicaId::from_u128(u128::from(n)), Seq(1)),
        hlc: Hlc::new(1_000 + n, 0),
        value: value.map_or(Value::Tombstone, |v| Value::Bytes(v.as_bytes().to_vec())),
    }
}

fn resolved_text(siblings: &[Sibling]) -> Option<String> {
    match CartUnion.resolve(siblings) {
        Resolved::Value(v) => Some(String::from_utf8(v).unwrap()),
        Resolved::Absent => None,
        Resolved::Siblings(s) => panic!("a semilattice answers one value, not {s:?}"),
    }
}

#[test]
fn cart_union_merges_items_with_the_largest_quantity() {
    let merged = resolved_text(&[
        sibling(1, Some("bread:1\napple:2")),
        sibling(2, Some("apple:1\nmilk:3\n")),
    ]);
    assert_eq!(merged.as_deref(), Some("apple:2\nbread:1\nmilk:3\n"));
    // Tombstones add nothing; only tombstones read as absent; an empty cart is not absent.
    assert_eq!(
        resolved_text(&[sibling(1, None), sibling(2, Some("milk:1"))]).as_deref(),
        Some("milk:1\n")
    );
    assert_eq!(resolved_text(&[sibling(1, None), sibling(2, None)]), None);
    assert_eq!(resolved_text(&[]), None);
    assert_eq!(resolved_text(&[sibling(1, Some(""))]).as_deref(), Some(""));
    // Bytes that are no cart (refused at their origin) merge as an empty cart.
    assert_eq!(
        resolved_text(&[sibling(1, Some("apple=2")), sibling(2, Some("eggs:6"))]).as_deref(),
        Some("eggs:6\n")
    );
    // Add wins: removing bread concurrently with an edit that still lists it brings it back.
    let removed = CartUnion::set(Some(b"apple:2\nbread:1\n"), "bread", 0);
    let edited = CartUnion::set(Some(b"apple:2\nbread:1\n"), "apple", 5);
    let both = [
        sibling(1, Some(std::str::from_utf8(&removed).unwrap())),
        sibling(2, Some(std::str::from_utf8(&edited).unwrap())),
    ];
    assert_eq!(resolved_text(&both).as_deref(), Some("apple:5\nbread:1\n"));
}

#[test]
fn cart_union_refuses_values_that_are_not_carts() {
    assert!(CartUnion.check_value(b"apple:2\nbread:1").is_ok());
    assert!(CartUnion.check_value(b"").is_ok());
    let reason = |v: &[u8]| CartUnion.check_value(v).unwrap_err().reason;
    assert_eq!(
        reason(b"apple"),
        "line 1 `apple` is not `sku:qty`; a cart is lines of `sku:qty`, e.g. `apple:2`"
    );
    assert!(reason(b"apple:0").contains("quantity `0` must be a whole number from 1"));
    assert!(reason(b"apple:+2").contains("quantity `+2`"));
    assert!(reason(b"apple:1\napple:2").contains("SKU `apple` appears twice"));
    assert!(reason(b"app le:1").contains("SKU `app le` must be 1-64 characters"));
    assert!(reason(&[0xff]).contains("UTF-8"));
    let huge: String = (0..=cart::MAX_ITEMS)
        .map(|i| format!("sku{i}:1\n"))
        .collect();
    assert_eq!(
        reason(huge.as_bytes()),
        "the cart has 1001 items and a cart holds at most 1000"
    );
}

// ---- two regions -----------------------------------------------------------------------------

/// Two regions as an operator writes them, for the errors of a resolver that is missing.
const TWO_REGIONS: &str = r#"
cluster = "cart-test"

[[region]]
name = "us-east"
peer_addr = "127.0.0.1:7901"   # replaced by sockets bound on port 0 (Wiring)
api_addr = "127.0.0.1:0"

[[region]]
name = "eu-west"
peer_addr = "127.0.0.1:7902"
api_addr = "127.0.0.1:0"

[tables]
default = "lww"
carts = "cart-union"
"#;

/// How long replication between two local regions may take before a test fails.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(30);

fn load(dir: &std::path::Path, text: &str) -> Config {
    let path = dir.join("regions.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

/// The harness's `us-east` and `eu-west` with `cart-union` registered for the `carts` table.
async fn start_regions() -> Cluster {
    let cluster = Cluster::builder(&["us-east", "eu-west"])
        .table("carts", "cart-union")
        .register(Arc::new(CartUnion))
        .start()
        .await;
    // New data directories serve once they have heard each other (docs/design.md).
    cluster.wait_connected().await;
    cluster
}

/// A cart as a region's API returns it: status, context, sibling count and body.
struct Read {
    status: StatusCode,
    context: String,
    siblings: String,
    body: String,
}

async fn read(http: &reqwest::Client, base: &str, key: &str) -> Read {
    let resp = http
        .get(format!("{base}/v1/kv/carts/{key}"))
        .send()
        .await
        .unwrap();
    let header = |name| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, context, siblings) = (
        resp.status(),
        header(CONTEXT_HEADER),
        header(SIBLINGS_HEADER),
    );
    Read {
        status,
        context,
        siblings,
        body: resp.text().await.unwrap(),
    }
}

async fn write(http: &reqwest::Client, base: &str, key: &str, cart: &[u8], context: &str) {
    let resp = http
        .put(format!("{base}/v1/kv/carts/{key}"))
        .header(CONTEXT_HEADER, context)
        .body(cart.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        resp.text().await.unwrap()
    );
}

/// Waits until every region reads `key` as `expected` with `siblings` versions, or fails with
/// what each region had at the deadline.
async fn converge(
    http: &reqwest::Client,
    regions: &[String],
    key: &str,
    expected: &str,
    siblings: &str,
) {
    let what = format!("regions to converge on {expected:?} ({siblings} siblings)");
    poll_until(
        &what,
        CONVERGENCE_BOUND,
        Duration::from_millis(50),
        async || {
            let mut reads = Vec::new();
            for r in regions {
                reads.push(read(http, r, key).await);
            }
            if reads
                .iter()
                .all(|r| r.status == StatusCode::OK && r.body == expected && r.siblings == siblings)
            {
                return Ok(());
            }
            let seen: Vec<(StatusCode, &str, &str)> = reads
                .iter()
                .map(|r| (r.status, r.siblings.as_str(), r.body.as_str()))
                .collect();
            Err(format!("{seen:?}"))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_carts_from_two_regions_converge_to_their_union() {
    let cluster = start_regions().await;
    let regions = [cluster.api_url("us-east"), cluster.api_url("eu-west")];
    let (east, west) = (&regions[0], &regions[1]);
    let http = reqwest::Client::new();

    // Each region reads the empty cart and writes with the (empty) context it read, so neither
    // write supersedes the other however fast replication is: they are concurrent by
    // construction.
    let e0 = read(&http, east, "alice").await;
    let w0 = read(&http, west, "alice").await;
    assert_eq!(
        (e0.status, w0.status),
        (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND)
    );
    write(&http, east, "alice", b"apple:2\nbread:1\n", &e0.context).await;
    write(&http, west, "alice", b"milk:3\napple:1", &w0.context).await;

    // Both regions keep both writes as siblings and read their union.
    converge(&http, &regions, "alice", "apple:2\nbread:1\nmilk:3\n", "2").await;
    for r in &regions {
        let items = CartUnion::items(&Resolved::Value(
            read(&http, r, "alice").await.body.into_bytes(),
        ));
        let expected: cart::Items = [("apple", 2), ("bread", 1), ("milk", 3)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(items, expected);

        // Each region logged the meeting, resolved by cart-union.
        let log: Json = http
            .get(format!("{r}/v1/conflicts?table=carts"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let conflicts = log["conflicts"].as_array().unwrap();
        assert_eq!(conflicts.len(), 1, "{log}");
        assert_eq!(conflicts[0]["key"], "alice");
        assert_eq!(conflicts[0]["resolver"], "cart-union@1");
        assert!(
            conflicts[0]["outcome"]
                .as_str()
                .unwrap()
                .starts_with("resolved to one value"),
            "{log}"
        );
        let regions_met: Vec<&str> = conflicts[0]["siblings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["region"].as_str().unwrap())
            .collect();
        assert!(
            regions_met.contains(&"us-east") && regions_met.contains(&"eu-west"),
            "{log}"
        );
    }

    // Read-modify-write in one region: remove the bread, writing back with the context read.
    // It supersedes both siblings, everywhere.
    let seen = read(&http, west, "alice").await;
    let without_bread = CartUnion::set(Some(seen.body.as_bytes()), "bread", 0);
    write(&http, west, "alice", &without_bread, &seen.context).await;
    converge(&http, &regions, "alice", "apple:2\nmilk:3\n", "1").await;

    let digests = [
        cluster.handle("us-east").digest().await.unwrap().unwrap(),
        cluster.handle("eu-west").digest().await.unwrap().unwrap(),
    ];
    assert_eq!(digests[0], digests[1], "both regions hold identical state");
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_resolver_that_is_not_registered_stops_the_start_and_lists_the_registered_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = load(dir.path(), TWO_REGIONS);
    // Forgot to register CartUnion.
    let err = LeaderBuilder::new(config, "us-east")
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::Config(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(
            "tables.carts: table `carts` uses resolver `cart-union`, which is not registered"
        ),
        "{message}"
    );
    assert!(
        message.contains("use one of the resolvers this program registers: lww, multi-value"),
        "{message}"
    );
    assert!(message.contains("must be registered in code"), "{message}");

    // Registered, but the file misspells it: the error suggests the registered name.
    let typo = TWO_REGIONS.replace("carts = \"cart-union\"", "carts = \"cart-unoin\"");
    let config = load(dir.path(), &typo);
    let err = LeaderBuilder::new(config, "us-east")
        .register(Arc::new(CartUnion))
        .unwrap()
        .start()
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("resolver `cart-unoin`, which is not registered"),
        "{message}"
    );
    assert!(message.contains("`cart-union`"), "{message}");
    assert!(
        message.contains("registers: cart-union, lww, multi-value"),
        "{message}"
    );

    // A second resolver under a taken name is refused when it is registered.
    let builder = LeaderBuilder::new(load(dir.path(), TWO_REGIONS), "us-east")
        .register(Arc::new(CartUnion))
        .unwrap();
    let taken = builder.register(Arc::new(CartUnion)).unwrap_err();
    assert!(taken.to_string().contains("cart-union"), "{taken}");
}
