//! Read latency of a hot key (issue 11, item 3): `--writers` keep-alive HTTP clients write one
//! key as fast as the region answers while one client reads it in a loop, all at the region
//! behind `--target`. Prints the read latency (p50, p99, max) and the write rate.
//!
//! Before the fix a read waited while the key held a write of the region that was not durable
//! yet, which with a write in every commit could be many fsyncs; now it is served at once from
//! the key's newest durable state. `bench/hot_key_reads.sh` starts a region and runs this.
//!
//! ```text
//! cargo run --release -p meridian --example hot_key_reads -- --target http://127.0.0.1:7070
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

struct Args {
    target: String,
    writers: usize,
    seconds: u64,
    table: String,
    key: String,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        target: String::new(),
        writers: 16,
        seconds: 10,
        table: "default".into(),
        key: "hot".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => args.target = value()?,
            "--writers" => {
                args.writers = value()?.parse().map_err(|e| format!("--writers: {e}"))?
            }
            "--seconds" => {
                args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?
            }
            "--table" => args.table = value()?,
            "--key" => args.key = value()?,
            other => {
                return Err(format!(
                    "unknown flag {other}; use --target URL [--writers N] [--seconds S] [--table T] [--key K]"
                ));
            }
        }
    }
    if args.target.is_empty() {
        return Err("--target URL of a running region's API is required".into());
    }
    Ok(args)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hot_key_reads: {e}");
            std::process::exit(2);
        }
    };
    let url = format!("{}/v1/kv/{}/{}", args.target, args.table, args.key);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client without TLS");
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let (client, url, stop, writes) =
            (client.clone(), url.clone(), stop.clone(), writes.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let ok = client
                    .put(&url)
                    .body(format!("w{w}-{n}"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Let the writers get going before the reads are timed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes_at_start = writes.load(Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut failed = 0u64;
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    while Instant::now() < end {
        let t = Instant::now();
        let resp = client.get(&url).send().await;
        let ok = match resp {
            Ok(r) => {
                let code = r.status();
                r.bytes().await.is_ok() && (code.is_success() || code.as_u16() == 404)
            }
            Err(_) => false,
        };
        if ok {
            hist.record(t.elapsed().as_micros().max(1) as u64)
                .expect("within bounds");
        } else {
            failed += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let written = writes.load(Ordering::Relaxed) - writes_at_start;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "reads {} (failed {failed}) p50 {:.2} ms p99 {:.2} ms max {:.2} ms; writes {:.0}/s by {} writers",
        hist.len(),
        ms(hist.value_at_quantile(0.5)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.max()),
        written as f64 / elapsed,
        args.writers
    );
}
