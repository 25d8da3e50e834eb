//! The storage engine alone, under a region's sustained write stream: batches of log entries
//! and key states persisted back to back by `leader::storage::Store`, exactly as the node's
//! group commit hands them over, with no network, HTTP or state machine in the way. Every
//! `--report-every` writes it prints the rate, the CPU time and the bytes written to disk per
//! write (from `/proc/self/stat` and `/proc/self/io`) and the size of the data directory, so a
//! cost that grows with the log shows up as a trend down the rows.
//!
//! Each batch holds writes of three origins (this region and two peers), as a region of a
//! 3-region cluster under load at every region commits them.
//!
//! ```text
//! cargo run --release -p leader --example storage_bench -- --writes 2000000 --batch 64
//! ```

use std::path::Path;
use std::time::Instant;

use conflict::{Dot, Hlc, KeyState, Registry, ReplicaId, Seq, Value, VersionVector, Write};
use leader::leader_core::{LogEntry, PersistBatch};
use leader::storage::{Store, StoreLimits};

struct Args {
    writes: u64,
    batch: u64,
    keys: u64,
    value_bytes: usize,
    report_every: u64,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        writes: 1_000_000,
        batch: 64,
        keys: 6_000,
        value_bytes: 100,
        report_every: 100_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let n: u64 = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?;
        match flag.as_str() {
            "--writes" => args.writes = n,
            "--batch" => args.batch = n.max(1),
            "--keys" => args.keys = n.max(1),
            "--value-bytes" => args.value_bytes = n as usize,
            "--report-every" => args.report_every = n.max(1),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// This process's CPU time (user + system), seconds, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

/// Bytes this process caused to be written to storage, from `/proc/self/io`.
fn write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Bytes of the files under `dir` (the log's segments are in a subdirectory).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    Some(if meta.is_dir() {
                        dir_bytes(&e.path())
                    } else {
                        meta.len()
                    })
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let dir = tempfile::tempdir()?;
    let opened = Store::open_with(dir.path(), "bench", "us-east", StoreLimits::default())?;
    let store = opened.store;
    let lww = Registry::with_builtins()
        .get("lww")
        .ok_or("the lww resolver is built in")?;
    let origins = [
        opened.replica,
        ReplicaId::from_u128(2),
        ReplicaId::from_u128(3),
    ];
    let mut seqs = [0u64; 3];
    let mut keys: Vec<KeyState> = vec![KeyState::default(); args.keys as usize];
    let mut applied = VersionVector::default();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let value = vec![b'v'; args.value_bytes];
    println!("writes\twrites/s\tcpu_us/write\tdisk_bytes/write\tdata_dir_MB");
    let (mut last_t, mut last_cpu, mut last_io) = (Instant::now(), cpu_seconds(), write_bytes());
    let mut written = 0u64;
    let mut batch_id = 0u64;
    while written < args.writes {
        batch_id += 1;
        let mut batch = PersistBatch {
            id: batch_id,
            ..PersistBatch::default()
        };
        let mut touched = std::collections::BTreeSet::new();
        for i in 0..args.batch {
            let o = (i % 3) as usize;
            seqs[o] += 1;
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let k = (rng % args.keys) as usize;
            let key = format!("key-{k:08}").into_bytes();
            let dot = Dot::new(origins[o], Seq(seqs[o]));
            let write = Write {
                dot,
                hlc: Hlc::new(1_700_000_000_000 + written + i, 0),
                context: keys[k].context.clone(),
                value: Value::Bytes(value.clone()),
            };
            keys[k].apply(&write, lww.as_ref());
            applied.add_dot(&dot);
            touched.insert(k);
            batch.log.push(LogEntry {
                table: "default".into(),
                key,
                write,
            });
        }
        batch.keys = touched
            .into_iter()
            .map(|k| {
                let key = format!("key-{k:08}").into_bytes();
                ("default".to_owned(), key, keys[k].clone())
            })
            .collect();
        batch.applied = applied.clone();
        batch.own_seq = Seq(seqs[0]);
        store.persist(batch)?;
        let before = written;
        written += args.batch;
        if written / args.report_every != before / args.report_every {
            let (t, cpu, io) = (Instant::now(), cpu_seconds(), write_bytes());
            let n = args.report_every as f64;
            println!(
                "{written}\t{:.0}\t{:.1}\t{:.0}\t{:.1}",
                n / t.duration_since(last_t).as_secs_f64(),
                (cpu - last_cpu) * 1e6 / n,
                (io - last_io) as f64 / n,
                dir_bytes(dir.path()) as f64 / 1e6
            );
            (last_t, last_cpu, last_io) = (t, cpu, io);
        }
    }
    Ok(())
}
