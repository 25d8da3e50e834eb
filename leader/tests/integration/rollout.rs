//! Issue 11, item 6, over whole leaders (machine, node runtime, redb, QUIC): a table added
//! region by region. us-east and eu-west already run a configuration with table `new`;
//! ap-south does not, logs their writes to it without applying them (held back), and applies
//! them when it is restarted with the new configuration. Before, held-back writes were never
//! applied: ap-south lacked them for good.

use crate::common::Cluster;

const US: &str = "us-east";
const EU: &str = "eu-west";
const AP: &str = "ap-south";
const REGIONS: [&str; 3] = [US, EU, AP];
const NEW: &str = "new";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_region_by_region_converges_after_the_last_restart() {
    let cluster = Cluster::builder(&REGIONS)
        .region_table(US, NEW, "lww")
        .region_table(EU, NEW, "lww")
        .start()
        .await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            let w = c.put(US, NEW, "k", "from-us").await;
            let reads = c.wait_key_in(&[EU], NEW, "k", &[w.dot]).await;
            assert_eq!(reads[EU].state.siblings.len(), 1);
            crate::common::wait_until("ap-south to log us-east's write", async || {
                let applied = c.applied(AP).await;
                match applied.get(US) {
                    Some(seq) if *seq >= w.dot.seq.0 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            let status = c.status(AP).await;
            assert_eq!(
                status.held_back.get(NEW),
                Some(&1),
                "{:?}",
                status.held_back
            );
            assert_eq!(status.counters.quarantined, 1);

            c.stop(AP).await;
            c.adopt_config_of(AP, US);
            c.restart(AP).await;
            let reads = c.wait_key_in(&[AP], NEW, "k", &[w.dot]).await;
            assert_eq!(reads[AP].state, {
                let us = c.read(US, NEW, "k").await;
                us.state
            });
            let status = c.status(AP).await;
            assert!(status.held_back.is_empty(), "{:?}", status.held_back);
            assert_eq!(status.counters.released, 1);
            // Written at the restarted region, the new table replicates everywhere.
            let w2 = c.put(AP, NEW, "k2", "from-ap").await;
            c.wait_key(NEW, "k2", &[w2.dot]).await;
            c.wait_converged().await;
        })
        .await;
}
