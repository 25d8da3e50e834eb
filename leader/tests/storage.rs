//! The redb store of one data directory: what a persisted batch leaves on disk is exactly what
//! a restart recovers; a directory of another region or cluster, or one already open, is
//! refused with an error that says what to do.

use conflict::{Dot, Hlc, KeyState, Lww, ReplicaId, Seq, Value, VersionVector, Write};
use leader::storage::{StorageError, Store};
use leader_core::{LogEntry, PersistBatch};

fn write(replica: ReplicaId, seq: u64, value: &str) -> Write {
    Write {
        dot: Dot {
            replica,
            seq: Seq(seq),
        },
        hlc: Hlc::new(1_700_000_000_000 + seq, 0),
        context: VersionVector::new(),
        value: Value::Bytes(value.as_bytes().to_vec()),
    }
}

fn entry(replica: ReplicaId, seq: u64) -> LogEntry {
    LogEntry {
        table: "default".into(),
        key: format!("k{seq}").into_bytes(),
        write: write(replica, seq, "v"),
    }
}

#[test]
fn a_restart_recovers_exactly_what_was_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let opened = Store::open(dir.path(), "c1", "us-east").unwrap();
    assert!(opened.created);
    let me = opened.replica;
    let other = ReplicaId::from_u128(7);
    let mut state = KeyState::default();
    state.apply(&write(me, 1, "hello"), &Lww);
    let mut applied = VersionVector::new();
    applied.add_dot(&Dot {
        replica: me,
        seq: Seq(2),
    });
    applied.add_dot(&Dot {
        replica: other,
        seq: Seq(3),
    });
    let mut acked = VersionVector::new();
    acked.add_dot(&Dot {
        replica: me,
        seq: Seq(1),
    });
    let batch = PersistBatch {
        id: 1,
        keys: vec![("default".into(), b"k1".to_vec(), state.clone())],
        log: vec![
            entry(me, 1),
            entry(me, 2),
            entry(other, 1),
            entry(other, 2),
            entry(other, 3),
        ],
        applied: applied.clone(),
        own_seq: Seq(2),
        hlc_high: Hlc::new(1_700_000_000_500, 3),
        replicas: vec![(other, "eu-west".into())],
        peer_acked: vec![("eu-west".into(), acked.clone())],
    };
    opened.store.persist(&batch).unwrap();
    assert_eq!(opened.store.commits(), 1, "one batch, one commit");
    drop(opened);

    let again = Store::open(dir.path(), "c1", "us-east").unwrap();
    assert!(!again.created);
    assert_eq!(again.replica, me, "the replica id is kept in the directory");
    let rec = again.recovered;
    assert_eq!(rec.own_seq, Seq(2));
    assert_eq!(rec.hlc_high, Hlc::new(1_700_000_000_500, 3));
    assert_eq!(rec.applied, applied);
    assert_eq!(
        rec.keys.get(&("default".to_owned(), b"k1".to_vec())),
        Some(&state)
    );
    assert_eq!(
        rec.replicas.get(&other).map(String::as_str),
        Some("eu-west")
    );
    assert_eq!(rec.peer_acked.get("eu-west"), Some(&acked));
    // The log is read back per origin, in order, within the range asked for.
    let log = again
        .store
        .read_log(other, Seq(2), Seq(3), usize::MAX)
        .unwrap();
    assert_eq!(log, vec![entry(other, 2), entry(other, 3)]);
    let capped = again.store.read_log(other, Seq(1), Seq(3), 1).unwrap();
    assert_eq!(
        capped,
        vec![entry(other, 1)],
        "a byte budget still returns one entry"
    );
    assert!(
        again
            .store
            .read_log(ReplicaId::from_u128(99), Seq(1), Seq(9), 1 << 20)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_directory_of_another_region_or_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), "c1", "us-east").unwrap());
    let err = Store::open(dir.path(), "c1", "eu-west").unwrap_err();
    assert!(matches!(err, StorageError::WrongOwner { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("belongs to region 'us-east' of cluster 'c1'"),
        "{msg}"
    );
    assert!(msg.contains("this process runs region 'eu-west'"), "{msg}");
    assert!(
        msg.contains("point data_dir at this region's own directory"),
        "{msg}"
    );
    let err = Store::open(dir.path(), "c2", "us-east")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("of cluster 'c1'") && err.contains("of cluster 'c2'"),
        "{err}"
    );
}

#[test]
fn a_directory_in_use_by_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path(), "c1", "us-east").unwrap();
    let err = Store::open(dir.path(), "c1", "us-east").unwrap_err();
    assert!(matches!(err, StorageError::InUse(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("two processes must never run as one region")
    );
    drop(first);
    assert!(
        Store::open(dir.path(), "c1", "us-east").is_ok(),
        "free again once closed"
    );
}
