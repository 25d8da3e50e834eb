//! Real quinn meshes on 127.0.0.1: frames in every direction over mTLS, exactly one
//! connection per pair after simultaneous dials, reconnection after a restart, and the
//! send-side errors.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{
    Msg, Node, WAIT, bind_loopback, init_tracing, names, shutdown_all, start_cluster, start_on,
    test_config, wait_converged,
};
use transport::certs::generate_identities;
use transport::impair::ImpairedSocket;
use transport::{KeyAlgorithm, LinkState, Mesh, MeshEvent, SendError};

const MESSAGES: u32 = 50;

/// Sends `MESSAGES` numbered frames from every region to every other one and checks that
/// each arrives, in order, attributed to the authenticated sender.
async fn exchange_all(nodes: &mut BTreeMap<String, Node>) {
    let regions: Vec<String> = nodes.keys().cloned().collect();
    for from in &regions {
        for to in regions.iter().filter(|r| *r != from) {
            for n in 0..MESSAGES {
                let msg = Msg::Seq {
                    from: from.clone(),
                    n,
                };
                nodes[from].mesh.send(to, &msg).await.expect("send");
            }
        }
    }
    for (region, node) in nodes.iter_mut() {
        let mut next: BTreeMap<String, u32> = regions
            .iter()
            .filter(|r| *r != region)
            .map(|r| (r.clone(), 0))
            .collect();
        while next.values().any(|n| *n < MESSAGES) {
            let event = node
                .wait_event("frame", |e| matches!(e, MeshEvent::Frame { .. }))
                .await;
            let MeshEvent::Frame { peer, msg, .. } = event else {
                unreachable!("matched above")
            };
            let Msg::Seq { from, n } = msg else {
                panic!("unexpected {msg:?}")
            };
            assert_eq!(peer, from, "{region}: frame attributed to the wrong region");
            let expected = next.get_mut(&peer).expect("known peer");
            assert_eq!(n, *expected, "{region}: frames from {peer} out of order");
            *expected += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_exchange_frames_in_every_direction() {
    init_tracing();
    let ids = generate_identities("test", &names(&["a", "b", "c"]), KeyAlgorithm::EcdsaP256)
        .expect("certificates");
    let mut nodes = start_cluster(&ids).await;
    wait_converged(&mut nodes).await;
    exchange_all(&mut nodes).await;

    // A frame near the size limit crosses too.
    let big = Msg::Blob(vec![7; 1024 * 1024]);
    nodes["a"].mesh.send("c", &big).await.expect("send big");
    let event = nodes
        .get_mut("c")
        .expect("c")
        .wait_event("big frame", |e| {
            matches!(
                e,
                MeshEvent::Frame {
                    msg: Msg::Blob(_),
                    ..
                }
            )
        })
        .await;
    assert!(matches!(event, MeshEvent::Frame { peer, msg, .. } if peer == "a" && msg == big));

    for (region, node) in &nodes {
        for (peer, status) in node.mesh.links() {
            assert_eq!(status.state, LinkState::Up, "{region}->{peer}");
            assert!(status.rtt.is_some(), "{region}->{peer}: no rtt");
            assert!(
                status.frames_sent >= u64::from(MESSAGES),
                "{region}->{peer}: {status:?}"
            );
            assert!(
                status.frames_recv >= u64::from(MESSAGES),
                "{region}->{peer}: {status:?}"
            );
            assert!(status.bytes_sent > 0 && status.bytes_recv > 0, "{status:?}");
        }
    }
    shutdown_all(nodes).await;
}

/// The byte counters of a link (what `meridian bench` divides by replicated writes) grow by
/// exactly the encoded frame sizes: length prefix and payload, on both ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_counters_grow_by_the_encoded_frame_sizes() {
    init_tracing();
    let ids = generate_identities("test", &names(&["a", "b"]), KeyAlgorithm::EcdsaP256)
        .expect("certificates");
    let mut nodes = start_cluster(&ids).await;
    wait_converged(&mut nodes).await;
    let sent_before = nodes["a"].mesh.links()["b"].clone();
    let recv_before = nodes["b"].mesh.links()["a"].clone();

    let msgs: Vec<Msg> = (0..20u32)
        .map(|n| Msg::Numbered {
            n,
            pad: vec![1; (n as usize) * 37],
        })
        .collect();
    let mut expected = 0u64;
    for msg in &msgs {
        expected += transport::encode_frame(msg, usize::MAX >> 1)
            .expect("encodes")
            .len() as u64;
        nodes["a"].mesh.send("b", msg).await.expect("send");
    }
    let b = nodes.get_mut("b").expect("b");
    for n in 0..20u32 {
        b.wait_event(
            "numbered frame",
            |e| matches!(e, MeshEvent::Frame { msg: Msg::Numbered { n: m, .. }, .. } if *m == n),
        )
        .await;
    }
    // The writer counts a frame once the stream took it, which can trail the delivery.
    let deadline = tokio::time::Instant::now() + WAIT;
    let sent = loop {
        let now = nodes["a"].mesh.links()["b"].clone();
        if now.bytes_sent - sent_before.bytes_sent >= expected
            || tokio::time::Instant::now() > deadline
        {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let recv = nodes["b"].mesh.links()["a"].clone();
    assert_eq!(
        sent.bytes_sent - sent_before.bytes_sent,
        expected,
        "{sent:?}"
    );
    assert_eq!(sent.frames_sent - sent_before.frames_sent, 20);
    assert_eq!(
        recv.bytes_recv - recv_before.bytes_recv,
        expected,
        "{recv:?}"
    );
    assert_eq!(recv.frames_recv - recv_before.frames_recv, 20);
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_leave_exactly_one_connection_per_pair() {
    init_tracing();
    let regions = ["a", "b", "c", "d"];
    let ids = generate_identities("test", &names(&regions), KeyAlgorithm::EcdsaP256)
        .expect("certificates");
    // Every region starts at once and dials every other: each pair races two dials.
    let mut nodes = start_cluster(&ids).await;
    wait_converged(&mut nodes).await;
    // One frame each way pins down which connection carries traffic, and proves every Up
    // and Down that preceded it has been delivered.
    exchange_all(&mut nodes).await;
    for (region, node) in nodes.iter_mut() {
        node.drain();
        let links = node.mesh.links();
        let live = node.live_connections();
        for (peer, status) in &links {
            assert_eq!(
                live.get(peer).map(Vec::as_slice),
                Some(&[status.conn_id.expect("up")][..]),
                "{region}: not exactly one live connection to {peer}; events: {:#?}",
                node.log
            );
            let smaller = region.as_str().min(peer.as_str());
            assert_eq!(status.dialer.as_deref(), Some(smaller), "{region}->{peer}");
        }
        // Every connection that went down on the way was dropped by the dial rule.
        for event in &node.log {
            if let MeshEvent::Down { reason, .. } = event {
                assert!(
                    reason.contains("duplicate connection") || reason.contains("replaced"),
                    "{region}: unexpected Down reason {reason:?}"
                );
            }
        }
    }
    // Both ends of a pair agree, and no frame travelled on a dropped connection.
    for (region, node) in &nodes {
        for event in &node.log {
            if let MeshEvent::Frame { peer, conn_id, .. } = event {
                assert_eq!(
                    node.mesh.links()[peer].conn_id,
                    Some(*conn_id),
                    "{region}: frame from {peer} on a dropped connection"
                );
            }
        }
    }
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_peer_is_reconnected_and_frames_flow_again() {
    init_tracing();
    let ids = generate_identities("test", &names(&["a", "b"]), KeyAlgorithm::EcdsaP256)
        .expect("certificates");
    let mut nodes = start_cluster(&ids).await;
    wait_converged(&mut nodes).await;
    let a_addr = nodes["a"].mesh.local_addr();
    let b = nodes.remove("b").expect("b");
    let mut a = nodes.remove("a").expect("a");
    let old_conn = a.mesh.links()["b"].conn_id.expect("up");
    let connections_before = a.mesh.links()["b"].connections;

    b.mesh.shutdown().await;
    let down = a
        .wait_event("Down from b", |e| matches!(e, MeshEvent::Down { .. }))
        .await;
    match down {
        MeshEvent::Down {
            peer,
            conn_id,
            reason,
        } => {
            assert_eq!((peer.as_str(), conn_id), ("b", old_conn));
            assert!(reason.contains("region b is shutting down"), "{reason}");
        }
        other => unreachable!("{other:?}"),
    }

    // b comes back on a new port (Mesh::start, port 0). It dials a itself, so a sees it
    // without being told the new address.
    let config = test_config(
        ids["b"].clone(),
        "127.0.0.1:0".parse().expect("addr"),
        BTreeMap::from([("a".to_owned(), a_addr)]),
    );
    let (mesh, events) = Mesh::<Msg>::start(config).await.expect("b restarts");
    let mut b = Node {
        mesh,
        events,
        log: Vec::new(),
    };
    let up = a
        .wait_event("Up from restarted b", |e| matches!(e, MeshEvent::Up { .. }))
        .await;
    let MeshEvent::Up { peer, conn_id } = up else {
        unreachable!("matched above")
    };
    assert_eq!(peer, "b");
    assert_ne!(conn_id, old_conn, "a new connection gets a new id");
    b.wait_event("Up from a", |e| matches!(e, MeshEvent::Up { .. }))
        .await;
    a.mesh.set_peer_addr("b", b.mesh.local_addr());
    assert_eq!(a.mesh.links()["b"].addr, b.mesh.local_addr());

    a.mesh
        .send(
            "b",
            &Msg::Seq {
                from: "a".into(),
                n: 1,
            },
        )
        .await
        .expect("a -> b");
    b.mesh
        .send(
            "a",
            &Msg::Seq {
                from: "b".into(),
                n: 1,
            },
        )
        .await
        .expect("b -> a");
    b.wait_event(
        "frame from a",
        |e| matches!(e, MeshEvent::Frame { peer, .. } if peer == "a"),
    )
    .await;
    a.wait_event(
        "frame from b",
        |e| matches!(e, MeshEvent::Frame { peer, .. } if peer == "b"),
    )
    .await;
    assert_eq!(a.mesh.links()["b"].connections, connections_before + 1);
    a.mesh.shutdown().await;
    b.mesh.shutdown().await;
}

/// A peer that dies without closing anything (its packets simply stop) and comes back with
/// a new incarnation replaces its stale connection at once, even though the surviving side
/// still believes the old one is alive and the idle timeout is far away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_peer_that_returns_replaces_its_stale_connection() {
    init_tracing();
    let ids = generate_identities("test", &names(&["a", "b"]), KeyAlgorithm::EcdsaP256)
        .expect("certificates");
    let (sock_a, sock_b) = (bind_loopback(), bind_loopback());
    let (addr_a, addr_b) = (
        sock_a.local_addr().expect("addr"),
        sock_b.local_addr().expect("addr"),
    );
    let slow_idle = |mut config: transport::MeshConfig| {
        config.idle_timeout = Duration::from_secs(120);
        config
    };
    let mut a = start_on(
        sock_a,
        slow_idle(test_config(
            ids["a"].clone(),
            addr_a,
            BTreeMap::from([("b".to_owned(), addr_b)]),
        )),
    )
    .await;
    // b runs behind an impairment wrapper, so the test can cut it off like a crash.
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let (socket_b, cut_b) = ImpairedSocket::wrap(runtime.wrap_udp_socket(sock_b).expect("wrap"), 1);
    let (old_b, _old_b_events) = Mesh::<Msg>::start_with_socket(
        slow_idle(test_config(
            ids["b"].clone(),
            addr_b,
            BTreeMap::from([("a".to_owned(), addr_a)]),
        )),
        socket_b,
        runtime,
    )
    .await
    .expect("b starts");
    // Let the dial rule settle on the connection a dialed before cutting b off.
    let stale = a.wait_dialed_by("b", "a").await;

    cut_b.partition(addr_a);
    // A new b, same certificate, new port and incarnation: a still holds the stale
    // connection (a dialed it, and nothing told a it is dead).
    let config = slow_idle(test_config(
        ids["b"].clone(),
        "127.0.0.1:0".parse().expect("addr"),
        BTreeMap::from([("a".to_owned(), addr_a)]),
    ));
    let (new_b, new_b_events) = Mesh::<Msg>::start(config).await.expect("b restarts");
    let mut new_b = Node {
        mesh: new_b,
        events: new_b_events,
        log: Vec::new(),
    };
    let down = a
        .wait_event("Down of the stale connection", |e| {
            matches!(e, MeshEvent::Down { .. })
        })
        .await;
    assert!(
        matches!(&down, MeshEvent::Down { conn_id, reason, .. }
            if *conn_id == stale && reason.contains("b restarted")),
        "{down:?}"
    );
    a.wait_event("Up from the new b", |e| matches!(e, MeshEvent::Up { .. }))
        .await;
    new_b
        .wait_event("Up from a", |e| matches!(e, MeshEvent::Up { .. }))
        .await;
    new_b
        .mesh
        .send("a", &Msg::Blob(vec![1, 2, 3]))
        .await
        .expect("new b -> a");
    a.wait_event("frame from the new b", |e| {
        matches!(e, MeshEvent::Frame { .. })
    })
    .await;
    old_b.shutdown().await;
    new_b.mesh.shutdown().await;
    a.mesh.shutdown().await;
}

/// Neither region can reach the other at its configured address; telling one of them the
/// right address makes it dial at once, without waiting for the stuck dial to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_peer_addr_redials_immediately() {
    init_tracing();
    let ids = generate_identities("test", &names(&["a", "b"]), KeyAlgorithm::EcdsaP256)
        .expect("certificates");
    let (silent, nowhere) = (bind_loopback(), bind_loopback());
    let mut nodes = Vec::new();
    for (region, wrong) in [("a", &silent), ("b", &nowhere)] {
        let socket = bind_loopback();
        let addr = socket.local_addr().expect("addr");
        let peer = if region == "a" { "b" } else { "a" };
        let mut config = test_config(
            ids[region].clone(),
            addr,
            BTreeMap::from([(peer.to_owned(), wrong.local_addr().expect("addr"))]),
        );
        // A stuck dial would only give up after this long, far beyond the test's bound.
        config.idle_timeout = Duration::from_secs(120);
        nodes.push(start_on(socket, config).await);
    }
    let mut b = nodes.pop().expect("b");
    let mut a = nodes.pop().expect("a");
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.mesh.links()["b"].state != LinkState::Connecting {
        assert!(tokio::time::Instant::now() < deadline, "a never dialed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.mesh.set_peer_addr("b", b.mesh.local_addr());
    a.wait_event(
        "Up",
        |e| matches!(e, MeshEvent::Up { peer, .. } if peer == "b"),
    )
    .await;
    b.wait_event(
        "Up",
        |e| matches!(e, MeshEvent::Up { peer, .. } if peer == "a"),
    )
    .await;
    assert_eq!(a.mesh.links()["b"].addr, b.mesh.local_addr());
    a.mesh.shutdown().await;
    b.mesh.shutdown().await;
}

/// Two regions where `a` has a tiny send queue and `b` a tiny event queue.
async fn start_pair_with_small_queues() -> (Node, Node) {
    let ids = generate_identities("test", &names(&["a", "b"]), KeyAlgorithm::Ed25519)
        .expect("certificates");
    let (sock_a, sock_b) = (bind_loopback(), bind_loopback());
    let (addr_a, addr_b) = (
        sock_a.local_addr().expect("addr"),
        sock_b.local_addr().expect("addr"),
    );
    let mut config_a = test_config(
        ids["a"].clone(),
        addr_a,
        BTreeMap::from([("b".to_owned(), addr_b)]),
    );
    config_a.max_frame_bytes = 4096;
    config_a.send_queue_frames = 4;
    let mut config_b = test_config(
        ids["b"].clone(),
        addr_b,
        BTreeMap::from([("a".to_owned(), addr_a)]),
    );
    config_b.event_queue = 1;
    let a = start_on(sock_a, config_a).await;
    let b = start_on(sock_b, config_b).await;
    let mut nodes = BTreeMap::from([("a".to_owned(), a), ("b".to_owned(), b)]);
    wait_converged(&mut nodes).await;
    let b = nodes.remove("b").expect("b");
    let mut a = nodes.remove("a").expect("a");
    let current = a.mesh.links()["b"].conn_id.expect("up");
    a.wait_up(current).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_errors_are_typed() {
    init_tracing();
    let (a, b) = start_pair_with_small_queues().await;
    let conn_id = a.mesh.links()["b"].conn_id.expect("up");
    let small = Msg::Blob(vec![0; 10]);
    let err = a.mesh.send("zz", &small).await.unwrap_err();
    assert!(
        matches!(&err, SendError::UnknownPeer(p) if p == "zz"),
        "{err}"
    );
    let err = a
        .mesh
        .send("b", &Msg::Blob(vec![0; 5000]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("exceeds the limit of 4096 bytes"),
        "{err}"
    );
    a.mesh
        .send_on("b", conn_id, &small)
        .await
        .expect("current connection");
    let err = a
        .mesh
        .send_on("b", conn_id + 1000, &small)
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::Stale { .. }), "{err}");

    b.mesh.shutdown().await;
    let mut a = a;
    a.wait_event("Down", |e| matches!(e, MeshEvent::Down { .. }))
        .await;
    let err = a.mesh.send("b", &small).await.unwrap_err();
    assert!(
        matches!(&err, SendError::NotConnected(p) if p == "b"),
        "{err}"
    );
    assert!(matches!(
        a.mesh.try_send("b", &small),
        Err(SendError::NotConnected(_))
    ));
    assert_ne!(a.mesh.links()["b"].state, LinkState::Up);
    let handle = a.mesh.clone();
    a.mesh.shutdown().await;
    assert!(matches!(
        handle.send("b", &small).await,
        Err(SendError::ShutDown)
    ));
}

/// A consumer that does not read its events stops its mesh from reading the stream; QUIC
/// flow control then fills the sender's bounded queue, and `try_send` says `Full`. Once the
/// consumer reads again, every queued frame arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_backpressures_the_sender_without_losing_frames() {
    init_tracing();
    let (a, mut b) = start_pair_with_small_queues().await;
    let payload = vec![5u8; 4000];
    let mut queued = 0u32;
    // Bounded: 5_000 frames of 4 kB are far beyond every window and queue on the way.
    let full = loop {
        assert!(queued < 5_000, "the sender never saw backpressure");
        let msg = Msg::Numbered {
            n: queued,
            pad: payload.clone(),
        };
        match a.mesh.try_send("b", &msg) {
            Ok(()) => queued += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(&full, SendError::Full(p) if p == "b"), "{full}");
    for expected in 0..queued {
        let event = b
            .wait_event("frame", |e| matches!(e, MeshEvent::Frame { .. }))
            .await;
        assert!(
            matches!(&event, MeshEvent::Frame { msg: Msg::Numbered { n, .. }, .. } if *n == expected),
            "expected frame {expected}, got {event:?}"
        );
    }
    a.mesh.shutdown().await;
    b.mesh.shutdown().await;
}

/// An application that refuses a connection closes it with a reason: both ends see it go
/// down, the peer reads the reason, and the link redials afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_close_reaches_the_peer_and_the_link_redials() {
    init_tracing();
    let ids =
        generate_identities("test", &names(&["a", "b"]), KeyAlgorithm::EcdsaP256).expect("certs");
    let mut nodes = start_cluster(&ids).await;
    wait_converged(&mut nodes).await;
    let mut b = nodes.remove("b").expect("b");
    let mut a = nodes.remove("a").expect("a");
    let conn = a.mesh.links()["b"]
        .conn_id
        .expect("a link that is up has a connection");
    assert!(a.mesh.close("b", conn, "hello claims region 'c'"));
    // Connection ids are numbered by each mesh on its own, so b's side is found by reason.
    let down = b
        .wait_event("Down", |e| {
            matches!(e, MeshEvent::Down { reason, .. } if reason.contains("hello claims region 'c'"))
        })
        .await;
    let MeshEvent::Down { reason, .. } = down else {
        unreachable!("matched Down")
    };
    assert!(reason.contains("hello claims region 'c'"), "{reason}");
    a.wait_event(
        "Down",
        |e| matches!(e, MeshEvent::Down { conn_id, .. } if *conn_id == conn),
    )
    .await;
    a.wait_event(
        "a new Up",
        |e| matches!(e, MeshEvent::Up { conn_id, .. } if *conn_id != conn),
    )
    .await;
    a.mesh.shutdown().await;
    b.mesh.shutdown().await;
}

/// Split-brain fencing (`MeshConfig::peer_liveness`): while the process connected first keeps
/// sending, a second process with the same certificate (a new incarnation) is refused, its
/// connection never replaces the live one, and the split brain is reported naming both
/// instances. Once the first process falls silent (cut off like a crash), the second one gets
/// in on a redial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_live_process_for_a_region_is_fenced_until_the_first_falls_silent() {
    init_tracing();
    let ids = generate_identities("test", &names(&["a", "b"]), KeyAlgorithm::EcdsaP256)
        .expect("certificates");
    let (sock_a, sock_b) = (bind_loopback(), bind_loopback());
    let (addr_a, addr_b) = (
        sock_a.local_addr().expect("addr"),
        sock_b.local_addr().expect("addr"),
    );
    let liveness = Duration::from_millis(400);
    let mut config_a = test_config(
        ids["a"].clone(),
        addr_a,
        BTreeMap::from([("b".to_owned(), addr_b)]),
    );
    config_a.peer_liveness = Some(liveness);
    config_a.idle_timeout = Duration::from_secs(120); // only liveness may retire the first b
    let mut a = start_on(sock_a, config_a).await;
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let (socket_b, cut_b) = ImpairedSocket::wrap(runtime.wrap_udp_socket(sock_b).expect("wrap"), 1);
    let mut config_b = test_config(
        ids["b"].clone(),
        addr_b,
        BTreeMap::from([("a".to_owned(), addr_a)]),
    );
    config_b.instance = "b-first".into();
    let (first_b, mut first_events) = Mesh::<Msg>::start_with_socket(config_b, socket_b, runtime)
        .await
        .expect("b starts");
    // Let the dial rule settle on the connection a dialed (both sides dial at first).
    let live = a.wait_dialed_by("b", "a").await;
    a.drain();
    a.log.clear();
    // The first b keeps talking, as a region's heartbeats do.
    let talker = {
        let mesh = first_b.clone();
        tokio::spawn(async move {
            loop {
                // A send fails once the link is cut; the loop just keeps going.
                let _ = mesh.send("a", &Msg::Blob(vec![7])).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let drain_first = tokio::spawn(async move { while first_events.recv().await.is_some() {} });

    let mut config = test_config(
        ids["b"].clone(),
        "127.0.0.1:0".parse().expect("addr"),
        BTreeMap::from([("a".to_owned(), addr_a)]),
    );
    config.instance = "b-second".into();
    let (second_b, second_events) = Mesh::<Msg>::start(config).await.expect("second b starts");
    let mut second_b = Node {
        mesh: second_b,
        events: second_events,
        log: Vec::new(),
    };
    let report = a
        .wait_event("a split-brain report", |e| {
            matches!(e, MeshEvent::SplitBrain { .. })
        })
        .await;
    assert_eq!(
        report,
        MeshEvent::SplitBrain {
            peer: "b".into(),
            live: "b-first".into(),
            refused: "b-second".into(),
        }
    );
    // Some more redials of the second b: the live connection is never replaced.
    tokio::time::sleep(Duration::from_millis(600)).await;
    a.drain();
    let replaced = a.log.iter().any(|e| matches!(e, MeshEvent::Down { .. }));
    assert!(!replaced, "the live connection was replaced: {:?}", a.log);
    assert_eq!(a.mesh.links()["b"].conn_id, Some(live));

    // The first b dies without a word: after `liveness` of silence the second one gets in.
    talker.abort();
    cut_b.partition(addr_a);
    a.wait_event(
        "Up from the second b",
        |e| matches!(e, MeshEvent::Up { conn_id, .. } if *conn_id != live),
    )
    .await;
    second_b
        .wait_event("Up from a", |e| matches!(e, MeshEvent::Up { .. }))
        .await;
    first_b.shutdown().await;
    drain_first.abort();
    second_b.mesh.shutdown().await;
    a.mesh.shutdown().await;
}

/// A WAN link with jitter reorders datagrams sent closer together than the jitter (the
/// impairment layer draws each datagram's delay independently, as Linux netem does). QUIC's
/// loss detection must not take that for loss: with RFC 9002's packet threshold of 3, most
/// reordered packets were declared lost, retransmitted, and each cut the congestion window,
/// so a 20 ms link carried a fraction of its capacity (issue 11). With loss detection by time
/// alone, a link that loses nothing declares (almost) nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordering_by_jitter_is_not_taken_for_loss() {
    init_tracing();
    const FRAMES: u32 = 3_000;
    let ids = generate_identities("test", &names(&["a", "b"]), KeyAlgorithm::Ed25519)
        .expect("certificates");
    let (sock_a, sock_b) = (bind_loopback(), bind_loopback());
    let (addr_a, addr_b) = (
        sock_a.local_addr().expect("addr"),
        sock_b.local_addr().expect("addr"),
    );
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let (socket_a, impair_a) =
        ImpairedSocket::wrap(runtime.wrap_udp_socket(sock_a).expect("wrap"), 7);
    let wan = transport::impair::LinkImpairment {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(2),
        ..Default::default()
    };
    impair_a.set(addr_b, wan).expect("a valid link");
    let (mesh_a, events_a) = Mesh::<Msg>::start_with_socket(
        test_config(
            ids["a"].clone(),
            addr_a,
            BTreeMap::from([("b".to_owned(), addr_b)]),
        ),
        socket_a,
        runtime,
    )
    .await
    .expect("a starts");
    let b = start_on(
        sock_b,
        test_config(
            ids["b"].clone(),
            addr_b,
            BTreeMap::from([("a".to_owned(), addr_a)]),
        ),
    )
    .await;
    let a = Node {
        mesh: mesh_a,
        events: events_a,
        log: Vec::new(),
    };
    let mut nodes = BTreeMap::from([("a".to_owned(), a), ("b".to_owned(), b)]);
    wait_converged(&mut nodes).await;
    let mut b = nodes.remove("b").expect("b");
    let a = nodes.remove("a").expect("a");
    let conn = a.mesh.links()["b"].conn_id.expect("up");
    let before = a.mesh.links()["b"].path.expect("up");
    let pad = vec![7u8; 1000];
    for n in 0..FRAMES {
        let msg = Msg::Numbered {
            n,
            pad: pad.clone(),
        };
        a.mesh.send_on("b", conn, &msg).await.expect("send");
    }
    for expected in 0..FRAMES {
        let event = b
            .wait_event("frame", |e| matches!(e, MeshEvent::Frame { .. }))
            .await;
        assert!(
            matches!(&event, MeshEvent::Frame { msg: Msg::Numbered { n, .. }, .. } if *n == expected),
            "expected frame {expected}, got {event:?}"
        );
    }
    let link = a.mesh.links()["b"].clone();
    assert_eq!(link.conn_id, Some(conn), "the connection held: {link:?}");
    let after = link.path.expect("up");
    let stats = impair_a.stats();
    assert!(stats.delayed > 0 && stats.dropped_loss == 0, "{stats:?}");
    let sent = after.sent_packets - before.sent_packets;
    let lost = after.lost_packets - before.lost_packets;
    eprintln!("{lost} of {sent} packets declared lost: {after:?}");
    // About 3 MB in some 2,200 datagrams. RFC 9002's thresholds (3 packets, 9/8 round trips)
    // declared 121–151 of them lost and cut the congestion window 91–114 times, leaving it
    // at about 6 kB (5 packets); these declare one lost, with one cut (three runs). A packet
    // really lost (the receiving socket's buffer overflowing while a loaded machine does not
    // schedule the receiver) is loss, so the bound leaves room for some.
    let events = after.congestion_events - before.congestion_events;
    assert!(
        events <= 30,
        "{events} congestion window cuts, {lost} of {sent} packets declared lost, on a link that loses none: {after:?}"
    );
    a.mesh.shutdown().await;
    b.mesh.shutdown().await;
}
