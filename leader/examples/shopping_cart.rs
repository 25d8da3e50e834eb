//! A program that embeds a Meridian leader and adds its own conflict resolver: `cart-union`,
//! a shopping cart whose concurrent edits from several regions merge into the union of their
//! items (largest quantity per SKU). The resolver is in `cart/mod.rs`; its laws and its
//! behaviour across two regions are tested in `tests/custom_resolver.rs`.
//!
//! Run one process per region, all with the same `regions.toml`, whose `[tables]` names the
//! resolver (copy the repository's file and change one line):
//!
//! ```toml
//! [tables]
//! default = "lww"
//! carts = "cart-union"
//! counters = "counter"
//! ```
//!
//! ```sh
//! cargo run --release -- certs init --config regions.toml   # once: the cluster's certificates
//! cargo run -p leader --example shopping_cart -- --config regions.toml --region us-east
//! cargo run -p leader --example shopping_cart -- --config regions.toml --region eu-west
//!
//! # Two shoppers edit alice's cart in two regions, each with the context it read before
//! # either wrote (the empty cart's), so neither write supersedes the other.
//! C=$(curl -s -D - -o /dev/null http://127.0.0.1:8101/v1/kv/carts/alice \
//!     | sed -n 's/^x-meridian-context: //ip' | tr -d '\r')
//! curl -X PUT -H "x-meridian-context: $C" --data-binary $'apple:2\nbread:1\n' \
//!     http://127.0.0.1:8101/v1/kv/carts/alice
//! curl -X PUT -H "x-meridian-context: $C" --data-binary $'apple:1\nmilk:3\n' \
//!     http://127.0.0.1:8102/v1/kv/carts/alice
//! curl http://127.0.0.1:8102/v1/kv/carts/alice     # apple:2 bread:1 milk:3, in both regions
//! ```
//!
//! A write without a context is blind: it supersedes everything its region has for the key.
//! On localhost, without simulated latency, a write reaches the other region within
//! milliseconds, so a blind write sent there afterwards supersedes it, as it should.
//!
//! It runs until Ctrl-C, then shuts the leader down cleanly. Set
//! `MERIDIAN_API_TOKEN` to require a bearer token on the API, as `meridian run` does.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use leader::{LeaderBuilder, Wiring};

mod cart;

/// A Meridian region leader with the `cart-union` resolver registered.
#[derive(Debug, Parser)]
#[command(name = "shopping_cart")]
struct Args {
    /// The regions.toml every region shares; a table names `cart-union` as its resolver.
    #[arg(long, default_value = "regions.toml")]
    config: PathBuf,
    /// Which region of the file this process runs.
    #[arg(long)]
    region: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let token = std::env::var("MERIDIAN_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let node = LeaderBuilder::from_file(&args.config, &args.region)?
        // The resolver this program adds. Its name is what `[tables]` refers to.
        .register(Arc::new(cart::CartUnion))?
        // The examples the `meridian` binary registers too, so the repository's regions.toml
        // (whose `counters` table uses `counter`) works with only the `carts` line changed.
        .register(Arc::new(conflict::examples::Counter))?
        .register(Arc::new(conflict::examples::UnionSet))?
        .wiring(Wiring {
            api_token: token,
            ..Wiring::default()
        })
        .start()
        .await
        .with_context(|| format!("starting region {}", args.region))?;

    let api = node
        .api_addr()
        .map_or_else(|| "-".to_owned(), |a| a.to_string());
    println!(
        "region {} up with resolver cart-union; API http://{api}; Ctrl-C stops it",
        args.region
    );
    println!("  curl -X PUT --data-binary $'apple:2\\nbread:1\\n' http://{api}/v1/kv/carts/alice");

    let mut node = node;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        r = node.wait() => {
            r?;
            anyhow::bail!("region {} stopped unexpectedly", args.region);
        }
    }
    println!("stopping region {}", args.region);
    node.shutdown().await?;
    Ok(())
}
