//! What a multi-leader store adds to the Redis protocol (issue 14), over real TCP: counters
//! that merge across regions (`INCR`, `INCRBY`, `DECR`, `DECRBY`), `WAIT` counting regions,
//! and Meridian's own `MERIDIAN.*` commands — a key's siblings with their context, writes
//! back with a context, and session tokens that carry read-your-writes from one region to
//! another. Byte-exact in RESP2 and RESP3 where the bytes are known in advance.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::common::Cluster;
use crate::resp::{Client, Solo};

async fn connect(addr: SocketAddr) -> Client {
    Client(TcpStream::connect(addr).await.unwrap())
}

/// The text of a one-line reply (`+OK`, `:3`, `-ERR ...`) without its `\r\n`.
async fn line(c: &mut Client, args: &[&str]) -> String {
    c.cmd(args).await;
    c.line().await.trim_end().to_owned()
}

/// The payload of a bulk-string reply (`None` for nil).
async fn bulk(c: &mut Client, args: &[&str]) -> Option<String> {
    c.cmd(args).await;
    let frame = c.frame().await;
    let (head, body) = frame.split_once("\r\n").unwrap();
    match head {
        "$-1" | "_" => None,
        h if h.starts_with('$') => Some(body.trim_end_matches("\r\n").to_owned()),
        other => panic!("{args:?}: expected a bulk string, got {other}{body}"),
    }
}

#[tokio::test]
async fn counters_count_up_and_down_and_refuse_what_redis_refuses() {
    let s = Solo::start(None, 16).await;
    let mut c = s.client().await;
    c.roundtrip(&["SELECT", "2"], "+OK\r\n").await;
    c.roundtrip(&["INCR", "hits"], ":1\r\n").await;
    c.roundtrip(&["INCRBY", "hits", "10"], ":11\r\n").await;
    c.roundtrip(&["DECR", "hits"], ":10\r\n").await;
    c.roundtrip(&["DECRBY", "hits", "20"], ":-10\r\n").await;
    c.roundtrip(&["GET", "hits"], "$3\r\n-10\r\n").await;
    c.roundtrip(
        &["INCRBY", "hits", "9223372036854775807"],
        ":9223372036854775797\r\n",
    )
    .await;
    let over = line(&mut c, &["INCRBY", "hits", "11"]).await;
    assert!(
        over.starts_with("-ERR") && over.contains("increment or decrement would overflow"),
        "{over}"
    );
    let nan = line(&mut c, &["INCRBY", "hits", "ten"]).await;
    assert_eq!(nan, "-ERR value is not an integer or out of range");
    let neg = line(&mut c, &["DECRBY", "hits", "-9223372036854775808"]).await;
    assert_eq!(neg, "-ERR decrement would overflow");
    let set = line(&mut c, &["SET", "hits", "5"]).await;
    assert!(
        set.starts_with("-ERR table 'counters' keeps counters"),
        "{set}"
    );
    c.roundtrip(&["GET", "hits"], "$19\r\n9223372036854775797\r\n")
        .await;
    // A delete resets a counter; it counts again from zero.
    c.roundtrip(&["DEL", "hits"], ":1\r\n").await;
    c.roundtrip(&["GET", "hits"], "$-1\r\n").await;
    c.roundtrip(&["INCR", "hits"], ":1\r\n").await;
    // RESP3 answers the same integers.
    c.cmd(&["HELLO", "3"]).await;
    c.frame().await;
    c.roundtrip(&["INCRBY", "hits", "2"], ":3\r\n").await;
    c.roundtrip(&["GET", "hits"], "$1\r\n3\r\n").await;
    // Tables without counters refuse, as Redis refuses INCR of a non-integer.
    c.roundtrip(&["SELECT", "0"], "+OK\r\n").await;
    let wrong = line(&mut c, &["INCR", "hits"]).await;
    assert!(
        wrong.starts_with("-WRONGTYPE table 'default' does not keep counters"),
        "{wrong}"
    );
    c.roundtrip(
        &["INCR"],
        "-ERR wrong number of arguments for 'incr' command\r\n",
    )
    .await;
    s.stop().await;
}

#[tokio::test]
async fn a_pipeline_of_increments_is_answered_in_order_with_every_total() {
    let s = Solo::start(None, 16).await;
    let mut c = s.client().await;
    c.roundtrip(&["SELECT", "2"], "+OK\r\n").await;
    let mut pipeline = Vec::new();
    let mut expected = String::new();
    for i in 1..=200 {
        pipeline.extend(crate::resp::encode(&["INCR", "n"]));
        expected.push_str(&format!(":{i}\r\n"));
    }
    pipeline.extend(crate::resp::encode(&["GET", "n"]));
    expected.push_str("$3\r\n200\r\n");
    c.send(&pipeline).await;
    c.expect(&expected).await;
    s.stop().await;
}

/// A cluster of `regions` with the harness's tables plus `counters` (database 2: `[resp]
/// databases` defaults to `default`, then the other tables in name order).
async fn cluster(regions: &[&str]) -> Cluster {
    Cluster::builder(regions)
        .register(Arc::new(conflict::examples::Counter))
        .table("counters", "counter")
        .start()
        .await
}

/// Concurrent increments in three regions all count once the regions exchange them, as
/// active-active counters do; every region then reads the same total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_in_every_region_merge_into_one_total() {
    let regions = ["us-east", "eu-west", "ap-south"];
    cluster(&regions)
        .await
        .run(async |c| {
            c.wait_connected().await;
            // Each region counts 50 up and 10 down while cut off from the others, so that
            // every increment is concurrent with the other regions' ones.
            c.partition("us-east", "eu-west");
            c.partition("us-east", "ap-south");
            c.partition("eu-west", "ap-south");
            for r in regions {
                let mut client = connect(c.resp_addr(r)).await;
                client.roundtrip(&["SELECT", "2"], "+OK\r\n").await;
                for _ in 0..50 {
                    line(&mut client, &["INCR", "visits"]).await;
                }
                client
                    .roundtrip(&["DECRBY", "visits", "10"], ":40\r\n")
                    .await;
            }
            c.heal("us-east", "eu-west");
            c.heal("us-east", "ap-south");
            c.heal("eu-west", "ap-south");
            c.wait_converged().await;
            for r in regions {
                // The redis crate, as an application would: its own INCRBY and GET.
                let url = format!("redis://{}/2", c.resp_addr(r));
                tokio::task::spawn_blocking(move || {
                    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                    let total: i64 = redis::cmd("GET").arg("visits").query(&mut con).unwrap();
                    assert_eq!(total, 120);
                    let after: i64 = redis::cmd("INCRBY")
                        .arg("visits")
                        .arg(0)
                        .query(&mut con)
                        .unwrap();
                    assert_eq!(after, 120);
                })
                .await
                .unwrap();
            }
        })
        .await;
}

/// `WAIT n timeout` answers how many other regions have the connection's last write durably:
/// at once when enough do, at the timeout with fewer when a region is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_counts_the_regions_that_have_the_connections_last_write() {
    let regions = ["us-east", "eu-west", "ap-south"];
    cluster(&regions)
        .await
        .run(async |c| {
            c.wait_connected().await;
            let mut client = connect(c.resp_addr("us-east")).await;
            // No write yet: every other region has "it".
            client.roundtrip(&["WAIT", "2", "1000"], ":2\r\n").await;
            client.roundtrip(&["SET", "k", "v1"], "+OK\r\n").await;
            client.roundtrip(&["WAIT", "2", "0"], ":2\r\n").await;
            c.partition("us-east", "ap-south");
            c.partition("eu-west", "ap-south");
            client.roundtrip(&["SET", "k", "v2"], "+OK\r\n").await;
            client.roundtrip(&["WAIT", "1", "5000"], ":1\r\n").await;
            let started = Instant::now();
            client.roundtrip(&["WAIT", "2", "300"], ":1\r\n").await;
            let waited = started.elapsed();
            // The state machine keeps time in whole milliseconds (the deadline is the event's
            // millisecond + 300), so the wait ends up to 1 ms short of 300 ms of wall time.
            assert!(
                waited >= Duration::from_millis(299),
                "answered after {waited:?}, before its timeout"
            );
            // Asking for fewer regions than have it is answered at once with all that do.
            client.roundtrip(&["WAIT", "0", "0"], ":1\r\n").await;
            let bad = line(&mut client, &["WAIT", "1", "-1"]).await;
            assert_eq!(bad, "-ERR timeout is negative");
            c.heal("us-east", "ap-south");
            c.heal("eu-west", "ap-south");
            client.roundtrip(&["WAIT", "2", "0"], ":2\r\n").await;
        })
        .await;
}

/// A multi-value key with two siblings: plain `GET` refuses and names the commands to use;
/// `MERIDIAN.SIBLINGS` lists them with their region and HLC and the key's context;
/// `MERIDIAN.SET` with that context resolves them into one value.
#[tokio::test]
async fn siblings_are_listed_and_resolved_with_their_context() {
    let s = Solo::start(None, 16).await;
    let mut c = s.client().await;
    c.roundtrip(&["SELECT", "1"], "+OK\r\n").await;
    // The context of a key never written, then two writes that each saw nothing: concurrent.
    c.cmd(&["MERIDIAN.SIBLINGS", "cart"]).await;
    let empty = c.frame().await;
    let (_, rest) = empty.split_once("\r\n").unwrap();
    let (_, rest) = rest.split_once("\r\n").unwrap();
    let (context, tail) = rest.split_once("\r\n").unwrap();
    assert_eq!(tail, "*0\r\n", "no siblings yet: {empty}");
    let first = bulk(&mut c, &["MERIDIAN.SET", "cart", "apples", context])
        .await
        .unwrap();
    assert_ne!(first, context);
    bulk(&mut c, &["MERIDIAN.SET", "cart", "pears", context])
        .await
        .unwrap();
    let get = line(&mut c, &["GET", "cart"]).await;
    assert!(
        get.starts_with("-MULTIVALUE the key has 2 concurrent values")
            && get.contains("MERIDIAN.SIBLINGS"),
        "{get}"
    );
    c.cmd(&["MERIDIAN.SIBLINGS", "cart"]).await;
    let listed = c.frame().await;
    assert!(listed.starts_with("*2\r\n$"), "{listed}");
    assert!(
        listed.contains("*2\r\n*3\r\n$6\r\napples\r\n$4\r\nsolo\r\n"),
        "{listed}"
    );
    assert!(
        listed.contains("*3\r\n$5\r\npears\r\n$4\r\nsolo\r\n"),
        "{listed}"
    );
    let both = listed.split("\r\n").nth(2).unwrap().to_owned();
    bulk(&mut c, &["MERIDIAN.SET", "cart", "apples+pears", &both])
        .await
        .unwrap();
    c.roundtrip(&["GET", "cart"], "$12\r\napples+pears\r\n")
        .await;
    // A delete with the context supersedes it; a bad context is refused with advice.
    c.cmd(&["MERIDIAN.SIBLINGS", "cart"]).await;
    let now = c.frame().await;
    let ctx = now.split("\r\n").nth(2).unwrap().to_owned();
    bulk(&mut c, &["MERIDIAN.DEL", "cart", &ctx]).await.unwrap();
    c.roundtrip(&["GET", "cart"], "$-1\r\n").await;
    let bad = line(&mut c, &["MERIDIAN.SET", "cart", "x", "not-a-context"]).await;
    assert!(bad.starts_with("-ERR invalid context"), "{bad}");
    s.stop().await;
}

/// A session token taken from one region's connection makes a read at another region wait
/// until that region has the write: read-your-writes across regions through RESP, as the
/// `x-meridian-session` header gives it over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_token_carries_read_your_writes_to_another_region() {
    let regions = ["us-east", "eu-west"];
    cluster(&regions)
        .await
        .run(async |c| {
            c.wait_connected().await;
            let mut us = connect(c.resp_addr("us-east")).await;
            let mut eu = connect(c.resp_addr("eu-west")).await;
            eu.roundtrip(&["MERIDIAN.SESSION"], "$-1\r\n").await;
            c.partition("us-east", "eu-west");
            us.roundtrip(&["SET", "profile", "v2"], "+OK\r\n").await;
            let token = bulk(&mut us, &["MERIDIAN.SESSION"]).await.unwrap();
            eu.roundtrip(&["MERIDIAN.SESSION", &token], "+OK\r\n").await;
            // eu-west cannot have the write while cut off: the read waits, then heals.
            eu.cmd(&["GET", "profile"]).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.heal("us-east", "eu-west");
            eu.expect("$2\r\nv2\r\n").await;
            let bad = line(&mut eu, &["MERIDIAN.SESSION", "garbage"]).await;
            assert!(bad.starts_with("-ERR invalid session token"), "{bad}");
        })
        .await;
}

/// The same commands after `HELLO 3`: RESP3's null for "no session yet", integers for `WAIT`
/// and counters, arrays for the siblings, and a hostile mix of them never breaks a connection
/// (errors keep it open, as Redis's do).
#[tokio::test]
async fn the_meridian_commands_answer_in_resp3_too() {
    let s = Solo::start(None, 16).await;
    let mut c = s.client().await;
    c.cmd(&["HELLO", "3"]).await;
    assert!(c.frame().await.starts_with("%7\r\n"));
    c.roundtrip(&["MERIDIAN.SESSION"], "_\r\n").await;
    c.roundtrip(&["WAIT", "0", "0"], ":0\r\n").await;
    c.roundtrip(&["SELECT", "1"], "+OK\r\n").await;
    c.cmd(&["MERIDIAN.SIBLINGS", "cart"]).await;
    let empty = c.frame().await;
    assert!(
        empty.starts_with("*2\r\n$") && empty.ends_with("*0\r\n"),
        "{empty}"
    );
    let context = empty.split("\r\n").nth(2).unwrap().to_owned();
    let next = bulk(&mut c, &["MERIDIAN.SET", "cart", "figs", &context]).await;
    assert!(next.is_some());
    c.cmd(&["MERIDIAN.SIBLINGS", "cart"]).await;
    let one = c.frame().await;
    assert!(
        one.contains("*1\r\n*3\r\n$4\r\nfigs\r\n$4\r\nsolo\r\n$"),
        "{one}"
    );
    let token = bulk(&mut c, &["MERIDIAN.SESSION"])
        .await
        .expect("a token after a write");
    c.roundtrip(&["MERIDIAN.SESSION", &token], "+OK\r\n").await;
    c.roundtrip(&["SELECT", "2"], "+OK\r\n").await;
    c.roundtrip(&["DECRBY", "n", "3"], ":-3\r\n").await;
    for bad in [
        &["WAIT", "x", "1"][..],
        &["WAIT", "1"],
        &["MERIDIAN.SET", "k", "v"],
        &["MERIDIAN.DEL", "k", "!!"],
        &["MERIDIAN.SIBLINGS"],
        &["MERIDIAN.SESSION", "a", "b"],
        &["INCRBY", "n", "1.5"],
    ] {
        let reply = line(&mut c, bad).await;
        assert!(reply.starts_with("-ERR"), "{bad:?}: {reply}");
    }
    c.roundtrip(&["GET", "n"], "$2\r\n-3\r\n").await;
    s.stop().await;
}

/// `MERIDIAN.READ quorum` over RESP: after `SET` + `WAIT 1` (durable in a majority of three),
/// a `GET` at a region cut off from the writer sees the write through the third region, while
/// a plain `GET` there does not yet; cut off from both, `GET` is `-NOREPLICAS` naming who
/// answered, never a local answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_read_over_resp_sees_a_write_a_majority_has() {
    let regions = ["us-east", "eu-west", "ap-south"];
    Cluster::builder(&regions)
        .timeout("relay_delay_ms", 60_000)
        .timeout("write_timeout_ms", 300)
        .start()
        .await
        .run(async |c| {
            c.wait_connected().await;
            let mut us = connect(c.resp_addr("us-east")).await;
            let mut eu = connect(c.resp_addr("eu-west")).await;
            c.partition("us-east", "eu-west");
            us.roundtrip(&["SET", "plan", "gold"], "+OK\r\n").await;
            us.roundtrip(&["WAIT", "1", "5000"], ":1\r\n").await;
            eu.roundtrip(&["GET", "plan"], "$-1\r\n").await;
            eu.roundtrip(&["MERIDIAN.READ"], "+default\r\n").await;
            eu.roundtrip(&["MERIDIAN.READ", "quorum"], "+OK\r\n").await;
            eu.roundtrip(&["MERIDIAN.READ"], "+quorum\r\n").await;
            eu.roundtrip(&["GET", "plan"], "$4\r\ngold\r\n").await;
            let bad = line(&mut eu, &["MERIDIAN.READ", "most"]).await;
            assert!(bad.starts_with("-ERR unknown read level"), "{bad}");
            c.partition("eu-west", "ap-south");
            let failed = line(&mut eu, &["GET", "plan"]).await;
            assert!(
                failed.starts_with("-NOREPLICAS read=quorum needs 2 regions")
                    && failed.contains("(eu-west)"),
                "{failed}"
            );
            eu.roundtrip(&["MERIDIAN.READ", "default"], "+OK\r\n").await;
            eu.roundtrip(&["GET", "plan"], "$4\r\ngold\r\n").await;
        })
        .await;
}
