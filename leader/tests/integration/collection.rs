//! Tombstone collection over real QUIC (issue 13, item 4): deleting every key brings `keys`
//! in `/v1/status` back to 0 at every region once the cluster is quiet, with no timer, and
//! the regions stay equal. Prints the data directories' sizes before and after (the log's
//! segments and redb's file; redb reuses the freed pages but does not shrink its file).

use std::path::Path;

use crate::common::{Cluster, wait_until};

const US: &str = "us-east";
const EU: &str = "eu-west";
const AP: &str = "ap-south";
const REGIONS: [&str; 3] = [US, EU, AP];
const LWW: &str = "default";
const MV: &str = "carts";

/// Each file under `dir` (recursively) with its bytes, for the printout.
fn files_of(dir: &Path) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for e in entries.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => files.extend(files_of(&e.path())),
            Ok(m) => files.push((e.file_name().to_string_lossy().into_owned(), m.len())),
            Err(_) => {}
        }
    }
    files.sort();
    files
}

/// Bytes of the files under `dir` (recursively).
fn size_of(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => size_of(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_every_key_brings_the_key_count_back_to_zero_everywhere() {
    let cluster = Cluster::builder(&REGIONS).start().await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            let data = |region: &str| c.dir().join("data").join(region);
            let empty: Vec<u64> = REGIONS.iter().map(|r| size_of(&data(r))).collect();
            let value = "x".repeat(1_000);
            let mut keys = Vec::new();
            for (i, region) in REGIONS.iter().cycle().take(300).enumerate() {
                let table = if i % 3 == 0 { MV } else { LWW };
                c.put(region, table, &format!("k{i}"), &value).await;
                keys.push((table, format!("k{i}")));
            }
            c.wait_converged().await;
            let before: Vec<u64> = REGIONS.iter().map(|r| size_of(&data(r))).collect();
            for (i, (table, key)) in keys.iter().enumerate() {
                // Deleted at another region than the one that wrote it.
                c.delete(REGIONS[(i + 1) % 3], table, key).await;
            }
            for region in REGIONS {
                wait_until(
                    &format!("{region} collects every deleted key"),
                    async || {
                        let s = c.status(region).await;
                        match s.keys {
                            0 => Ok(s),
                            n => Err(format!("{n} keys left")),
                        }
                    },
                )
                .await;
            }
            c.wait_converged().await;
            for region in REGIONS {
                let s = c.status(region).await;
                assert_eq!(s.counters.keys_collected, 300, "{region}");
                assert_eq!(s.counters.tombstones_collected, 300, "{region}");
                let read = c.read(region, LWW, "k1").await;
                assert!(read.state.siblings.is_empty(), "{region}: {read:?}");
            }
            // Back near the empty size once the disk has caught up with collection: redb's
            // file compacted once it holds at most half its peak of keys, the log's segment
            // sealed and deleted once the log start covers it. 1.5 times the empty directory
            // leaves room for a few pages and records of metadata; keeping the freed pages or
            // the last segment is 5 to 15 times.
            for (i, region) in REGIONS.iter().enumerate() {
                wait_until(
                    &format!("{region}'s data directory to shrink"),
                    async || {
                        let now = size_of(&data(region));
                        if now * 2 <= empty[i] * 3 {
                            Ok(())
                        } else {
                            Err(format!(
                                "{now} bytes, {} empty: {:?}",
                                empty[i],
                                files_of(&data(region))
                            ))
                        }
                    },
                )
                .await;
            }
            let after: Vec<u64> = REGIONS.iter().map(|r| size_of(&data(r))).collect();
            println!(
                "data directories empty: {empty:?} bytes; with 300 keys of 1,000 bytes: \
                 {before:?} bytes; after deleting every key and collection: {after:?} bytes \
                 ({US}: {:?})",
                files_of(&data(US))
            );
        })
        .await;
}
