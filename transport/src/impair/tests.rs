//! Exact checks in tokio's paused clock against an in-memory inner socket.

use std::collections::VecDeque;

use super::*;

const DEST: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9000);
const OTHER: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9001);

/// An inner socket that records what is sent (with tokio's time) and delivers what a test
/// pushes into `inbox`.
#[derive(Debug, Default)]
struct Wire {
    sent: Mutex<Vec<(Instant, SocketAddr, Vec<u8>)>>,
    inbox: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
}

#[derive(Debug)]
struct AlwaysWritable;
impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for Wire {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }
    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        assert_eq!(t.segment_size, None, "the wrapper must not pass batches on");
        lock(&self.sent).push((Instant::now(), t.destination, t.contents.to_vec()));
        Ok(())
    }
    fn poll_recv(
        &self,
        _: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut inbox = lock(&self.inbox);
        let mut n = 0;
        while n < bufs.len() {
            let Some((addr, data)) = inbox.pop_front() else {
                break;
            };
            bufs[n][..data.len()].copy_from_slice(&data);
            meta[n] = RecvMeta {
                addr,
                len: data.len(),
                stride: data.len(),
                ..RecvMeta::default()
            };
            n += 1;
        }
        if n == 0 {
            Poll::Pending
        } else {
            Poll::Ready(Ok(n))
        }
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(OTHER)
    }
}

fn setup(seed: u64) -> (Arc<Wire>, Arc<ImpairedSocket>, ImpairmentHandle) {
    let wire = Arc::new(Wire::default());
    let (socket, handle) = ImpairedSocket::wrap(wire.clone(), seed);
    (wire, socket, handle)
}

fn send(socket: &ImpairedSocket, dest: SocketAddr, payload: &[u8]) {
    let transmit = Transmit {
        destination: dest,
        ecn: None,
        contents: payload,
        segment_size: None,
        src_ip: None,
    };
    socket.try_send(&transmit).expect("send");
}

fn sent(wire: &Wire) -> Vec<(Instant, SocketAddr, Vec<u8>)> {
    lock(&wire.sent).clone()
}

#[tokio::test(start_paused = true)]
async fn nothing_configured_passes_straight_through() {
    let (wire, socket, handle) = setup(1);
    let t0 = Instant::now();
    send(&socket, DEST, b"a");
    assert_eq!(sent(&wire), vec![(t0, DEST, b"a".to_vec())]);
    assert_eq!(
        handle.stats(),
        ImpairmentStats {
            passed: 1,
            ..ImpairmentStats::default()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn latency_delays_each_packet_by_exactly_the_configured_time() {
    let (wire, socket, handle) = setup(1);
    handle
        .set(DEST, LinkImpairment::latency(Duration::from_millis(40)))
        .unwrap();
    let t0 = Instant::now();
    send(&socket, DEST, b"1");
    send(&socket, OTHER, b"x");
    tokio::time::sleep(Duration::from_millis(10)).await;
    send(&socket, DEST, b"2");
    assert_eq!(sent(&wire), vec![(t0, OTHER, b"x".to_vec())]);
    assert_eq!(handle.stats().queued, 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ms = Duration::from_millis;
    assert_eq!(
        sent(&wire)[1..],
        [
            (t0 + ms(40), DEST, b"1".to_vec()),
            (t0 + ms(50), DEST, b"2".to_vec())
        ]
    );
    let stats = handle.stats();
    assert_eq!(
        (stats.delayed, stats.released, stats.passed, stats.queued),
        (2, 2, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn order_to_one_destination_survives_a_latency_decrease_and_a_clear() {
    let (wire, socket, handle) = setup(1);
    let t0 = Instant::now();
    handle
        .set(DEST, LinkImpairment::latency(Duration::from_millis(100)))
        .unwrap();
    send(&socket, DEST, b"1");
    handle
        .set(DEST, LinkImpairment::latency(Duration::from_millis(10)))
        .unwrap();
    send(&socket, DEST, b"2");
    handle.clear(DEST);
    send(&socket, DEST, b"3");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got: Vec<_> = sent(&wire)
        .into_iter()
        .map(|(t, _, p)| (t - t0, p))
        .collect();
    let at = Duration::from_millis(100);
    assert_eq!(
        got,
        vec![
            (at, b"1".to_vec()),
            (at, b"2".to_vec()),
            (at, b"3".to_vec())
        ]
    );
    // Once the queue is empty, an unimpaired packet goes out at once again.
    let t1 = Instant::now();
    send(&socket, DEST, b"4");
    assert_eq!(sent(&wire).last().unwrap().0, t1);
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_within_bounds_and_may_reorder() {
    let (wire, socket, handle) = setup(7);
    let link = LinkImpairment {
        latency: Duration::from_millis(50),
        jitter: Duration::from_millis(20),
        ..LinkImpairment::default()
    };
    handle.set(DEST, link).unwrap();
    let t0 = Instant::now();
    for i in 0..200u32 {
        send(&socket, DEST, &i.to_be_bytes());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = sent(&wire);
    assert_eq!(got.len(), 200);
    for (at, _, _) in &got {
        let delay = *at - t0;
        assert!(
            (Duration::from_millis(30)..=Duration::from_millis(70)).contains(&delay),
            "{delay:?}"
        );
    }
    let order: Vec<u32> = got
        .iter()
        .map(|(_, _, p)| u32::from_be_bytes(p[..].try_into().unwrap()))
        .collect();
    assert!(
        order.windows(2).any(|w| w[0] > w[1]),
        "jitter should reorder"
    );
}

/// Which of `n` numbered packets get through a 50 % lossy link with `seed`.
async fn survivors(seed: u64, n: u32) -> (Vec<u32>, ImpairmentStats) {
    let (wire, socket, handle) = setup(seed);
    let link = LinkImpairment {
        loss: 0.5,
        ..LinkImpairment::default()
    };
    handle.set(DEST, link).unwrap();
    for i in 0..n {
        send(&socket, DEST, &i.to_be_bytes());
    }
    let got = sent(&wire)
        .iter()
        .map(|(_, _, p)| u32::from_be_bytes(p[..].try_into().unwrap()))
        .collect();
    (got, handle.stats())
}

#[tokio::test(start_paused = true)]
async fn loss_is_exactly_repeatable_for_a_seed() {
    let (first, stats) = survivors(42, 1000).await;
    let (second, _) = survivors(42, 1000).await;
    let (other_seed, _) = survivors(43, 1000).await;
    assert_eq!(first, second);
    assert_ne!(first, other_seed);
    assert_eq!(stats.dropped_loss + stats.passed, 1000);
    assert_eq!(first.len() as u64, stats.passed);
    assert!((400..=600).contains(&stats.dropped_loss), "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn blocked_link_drops_everything_until_cleared() {
    let (wire, socket, handle) = setup(1);
    handle.set(DEST, LinkImpairment::blocked()).unwrap();
    assert_eq!(handle.get(DEST), Some(LinkImpairment::blocked()));
    send(&socket, DEST, b"lost");
    send(&socket, OTHER, b"fine");
    handle.clear(DEST);
    assert_eq!(handle.get(DEST), None);
    send(&socket, DEST, b"back");
    let got: Vec<_> = sent(&wire).into_iter().map(|(_, d, p)| (d, p)).collect();
    assert_eq!(
        got,
        vec![(OTHER, b"fine".to_vec()), (DEST, b"back".to_vec())]
    );
    assert_eq!(handle.stats().blocked_outbound, 1);
}

#[tokio::test(start_paused = true)]
async fn full_delay_queue_drops_and_counts() {
    let (wire, socket, handle) = setup(1);
    handle
        .set(DEST, LinkImpairment::latency(Duration::from_secs(1)))
        .unwrap();
    for _ in 0..DELAY_QUEUE_CAPACITY + 10 {
        send(&socket, DEST, b"p");
    }
    let stats = handle.stats();
    assert_eq!(stats.queued, DELAY_QUEUE_CAPACITY as u64);
    assert_eq!(stats.dropped_queue_full, 10);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sent(&wire).len(), DELAY_QUEUE_CAPACITY);
    assert_eq!(handle.stats().released, DELAY_QUEUE_CAPACITY as u64);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_socket_stops_the_releaser_and_counts_what_it_held() {
    let (wire, socket, handle) = setup(1);
    handle
        .set(DEST, LinkImpairment::latency(Duration::from_secs(1)))
        .unwrap();
    send(&socket, DEST, b"p");
    tokio::task::yield_now().await;
    drop(socket);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(sent(&wire).is_empty());
    assert_eq!(handle.stats().send_errors, 1);
    // The releaser dropped its reference to the inner socket when it ended.
    assert_eq!(Arc::strong_count(&wire), 1);
}

#[tokio::test(start_paused = true)]
async fn inbound_block_discards_one_source_and_keeps_the_rest_in_order() {
    let (wire, socket, handle) = setup(1);
    lock(&wire.inbox).extend([
        (DEST, b"a1".to_vec()),
        (OTHER, b"b1".to_vec()),
        (DEST, b"a2".to_vec()),
        (OTHER, b"b22".to_vec()),
    ]);
    handle.block_inbound_from(DEST);
    assert!(handle.is_inbound_blocked(DEST));
    let mut storage = [[0u8; 8]; 4];
    let mut bufs: Vec<IoSliceMut<'_>> = storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
    let mut meta = [RecvMeta::default(); 4];
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let Poll::Ready(Ok(n)) = socket.poll_recv(&mut cx, &mut bufs, &mut meta) else {
        panic!("expected packets");
    };
    assert_eq!(n, 2);
    assert_eq!((meta[0].addr, &bufs[0][..meta[0].len]), (OTHER, &b"b1"[..]));
    assert_eq!(
        (meta[1].addr, &bufs[1][..meta[1].len]),
        (OTHER, &b"b22"[..])
    );
    assert_eq!(handle.stats().blocked_inbound, 2);

    handle.unblock_inbound_from(DEST);
    lock(&wire.inbox).push_back((DEST, b"a3".to_vec()));
    let Poll::Ready(Ok(1)) = socket.poll_recv(&mut cx, &mut bufs, &mut meta) else {
        panic!("expected one packet");
    };
    assert_eq!(&bufs[0][..meta[0].len], b"a3");
}

#[tokio::test(start_paused = true)]
async fn partition_and_heal_keep_the_link_latency() {
    let (_wire, _socket, handle) = setup(1);
    let slow = LinkImpairment::latency(Duration::from_millis(30));
    handle.set(DEST, slow).unwrap();
    handle.partition(DEST);
    assert!(handle.get(DEST).unwrap().blocked);
    assert!(handle.is_inbound_blocked(DEST));
    handle.heal(DEST);
    assert_eq!(handle.get(DEST), Some(slow));
    assert!(!handle.is_inbound_blocked(DEST));
    handle.partition(OTHER);
    handle.heal(OTHER);
    assert_eq!(handle.get(OTHER), None);
    handle.partition(OTHER);
    handle.clear_all();
    assert_eq!(
        (handle.get(DEST), handle.is_inbound_blocked(OTHER)),
        (None, false)
    );
}

#[tokio::test(start_paused = true)]
async fn gso_batches_are_split_into_datagrams() {
    let (wire, socket, handle) = setup(1);
    assert_eq!(socket.max_transmit_segments(), 1);
    let transmit = Transmit {
        destination: DEST,
        ecn: None,
        contents: b"aaabbbc",
        segment_size: Some(3),
        src_ip: None,
    };
    socket.try_send(&transmit).unwrap();
    let got: Vec<_> = sent(&wire).into_iter().map(|(_, _, p)| p).collect();
    assert_eq!(got, vec![b"aaa".to_vec(), b"bbb".to_vec(), b"c".to_vec()]);
    assert_eq!(handle.stats().passed, 3);
}

#[test]
fn bad_settings_are_refused() {
    let (_wire, _socket, handle) = setup(1);
    for loss in [-0.1, 1.5, f64::NAN] {
        let link = LinkImpairment {
            loss,
            ..LinkImpairment::default()
        };
        assert!(matches!(
            handle.set(DEST, link),
            Err(ImpairmentError::InvalidLoss(_))
        ));
    }
    let link = LinkImpairment::latency(MAX_LINK_DELAY + Duration::from_millis(1));
    assert_eq!(
        handle.set(DEST, link),
        Err(ImpairmentError::DelayTooLarge(link.latency))
    );
    assert_eq!(handle.get(DEST), None);
}
