//! Deterministic full-stack simulation: quinn endpoints over turmoil's simulated UDP, in virtual
//! time (cargo feature `turmoil`).
//!
//! turmoil runs every simulated host on its own single-threaded tokio runtime with a paused clock
//! and moves datagrams between hosts in steps of virtual time, with the latency, loss, partitions
//! and crashes the test asks for. This module gives quinn what it needs to run there:
//!
//! * [`TurmoilUdpSocket`]: quinn's [`AsyncUdpSocket`] over [`turmoil::net::UdpSocket`];
//! * [`TurmoilRuntime`]: quinn's [`Runtime`], with timers and `now()` on tokio's (virtual) clock
//!   and tasks spawned on the host's runtime;
//! * [`bind`]: both at once, ready for `quinn::Endpoint::new_with_abstract_socket` (or
//!   `Mesh::start_with_socket`), optionally wrapped in an [`crate::impair::ImpairedSocket`];
//! * [`Trace`]: a log of `(virtual time, event)` with a running digest, so a test can run one
//!   seed twice and prove that both runs did exactly the same thing.
//!
//! # Determinism
//!
//! Run the same simulation twice and you get the same trace when every input repeats: the
//! turmoil seed (`turmoil::Builder::rng_seed`), quinn's seed (`EndpointConfig::rng_seed`), the
//! impairment seed, and the certificates. Use the *same* certificates in both runs and Ed25519
//! keys: an ECDSA signature's DER length varies from run to run, which changes handshake packet
//! sizes. TLS key shares and nonces still come from the OS RNG, so packet *contents* differ
//! between runs, but their sizes, times and order do not. rustls checks certificate validity
//! against the system clock, which does not affect the trace.
//!
//! Code under test must not let tokio's unseeded RNG order its work: `tokio::select!` without
//! `biased;` picks a random ready branch, and a `tokio::sync::watch` channel files each waiter
//! under one of 8 notifiers picked at random, so waiters of one change wake in a random order.
//! Building with `--cfg tokio_unstable` lets turmoil seed every host's runtime, which seeds both.
//! Where such an order reaches the network, two runs agree on what each host sends and
//! receives in each millisecond but not always on the order within it, and then may drift.
//!
//! All functions here must be called from inside a turmoil host or client.

use std::{
    fmt,
    future::Future,
    hash::Hasher,
    io::{self, IoSliceMut},
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use quinn::{
    AsyncTimer, AsyncUdpSocket, Runtime, UdpPoller,
    udp::{RecvMeta, Transmit},
};

/// A pending `readable()` of the turmoil socket, kept between calls of `poll_recv`.
type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// Locks a mutex, ignoring poisoning: the guarded values stay consistent at every step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// quinn's [`AsyncUdpSocket`] over a turmoil simulated UDP socket.
///
/// turmoil sockets are always writable and have no GSO, GRO or ECN: every transmit is one
/// datagram and arrives as one.
pub struct TurmoilUdpSocket {
    inner: Arc<turmoil::net::UdpSocket>,
    /// The in-flight wait for readability. turmoil only offers an async `readable()`, which
    /// holds the socket's receive lock while it waits, so it is polled to completion here rather
    /// than re-created on every `poll_recv` (which would drop and lose its registration).
    readable: Mutex<Option<Readable>>,
    /// Where to record datagrams, and the name to record them under.
    trace: Option<(Trace, String)>,
}

impl fmt::Debug for TurmoilUdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurmoilUdpSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl TurmoilUdpSocket {
    /// Binds a simulated UDP socket on the current turmoil host (`0.0.0.0:port`, or port 0 for
    /// an ephemeral one).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let inner = turmoil::net::UdpSocket::bind(addr).await?;
        Ok(Self::from_turmoil(inner))
    }

    /// Wraps a turmoil socket that is already bound.
    pub fn from_turmoil(inner: turmoil::net::UdpSocket) -> Self {
        Self {
            inner: Arc::new(inner),
            readable: Mutex::new(None),
            trace: None,
        }
    }

    /// Records every datagram this socket sends and receives into `trace`, as
    /// `<name> send <to> <len>` and `<name> recv <from> <len>`. The name (usually the host's)
    /// tells the sockets apart: they are all bound to `0.0.0.0`.
    pub fn with_trace(mut self, trace: Trace, name: impl Into<String>) -> Self {
        self.trace = Some((trace, name.into()));
        self
    }

    fn record(&self, direction: &str, peer: SocketAddr, len: usize) {
        if let Some((trace, name)) = &self.trace {
            trace.record(format!("{name} {direction} {peer} {len}"));
        }
    }

    /// Moves every datagram that is ready into `bufs`/`meta` without waiting.
    fn drain_ready(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        let mut received = 0;
        for (buf, entry) in bufs.iter_mut().zip(meta.iter_mut()) {
            match self.inner.try_recv_from(buf) {
                Ok((len, addr)) => {
                    *entry = RecvMeta {
                        addr,
                        len,
                        stride: len,
                        ecn: None,
                        dst_ip: None,
                    };
                    self.record("recv", addr, len);
                    received += 1;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if received == 0 => return Err(error),
                Err(_) => break,
            }
        }
        Ok(received)
    }
}

impl AsyncUdpSocket for TurmoilUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let segment = transmit
            .segment_size
            .filter(|size| *size > 0)
            .unwrap_or(transmit.contents.len().max(1));
        for datagram in transmit.contents.chunks(segment) {
            self.record("send", transmit.destination, datagram.len());
            match self.inner.try_send_to(datagram, transmit.destination) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Err(error),
                // Like quinn-udp on a real socket: other send errors are left to QUIC's loss
                // recovery, since an error here would tear the whole endpoint down.
                Err(error) => {
                    tracing::debug!(%error, dest = %transmit.destination, "simulated send failed")
                }
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut slot = lock(&self.readable);
            if slot.is_none() {
                // Only try directly when no wait is in flight: a pending wait holds turmoil's
                // receive lock, so a direct try would fail anyway.
                drop(slot);
                match self.drain_ready(bufs, meta) {
                    Ok(0) => {}
                    other => return Poll::Ready(other),
                }
                slot = lock(&self.readable);
            }
            let wait = slot.get_or_insert_with(|| {
                let inner = self.inner.clone();
                Box::pin(async move { inner.readable().await })
            });
            match wait.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => {
                    *slot = None;
                    result?;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

/// turmoil's UDP has no send buffer to fill, so its sockets are always writable.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// quinn's [`Runtime`] for turmoil hosts: tokio's timers and clock (virtual in a simulation)
/// and `tokio::spawn` on the host's runtime, so a crashed host takes its tasks with it.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurmoilRuntime;

impl Runtime for TurmoilRuntime {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(tokio::time::sleep_until(at.into()))
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        tokio::spawn(future);
    }

    fn wrap_udp_socket(&self, _socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a turmoil simulation has no OS sockets; bind with transport::sim::bind and use Endpoint::new_with_abstract_socket",
        ))
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// Binds a simulated UDP socket on the current turmoil host and returns it with the runtime to
/// run quinn on, ready for `quinn::Endpoint::new_with_abstract_socket`.
pub async fn bind(addr: SocketAddr) -> io::Result<(Arc<dyn AsyncUdpSocket>, Arc<dyn Runtime>)> {
    let socket = TurmoilUdpSocket::bind(addr).await?;
    Ok((Arc::new(socket), Arc::new(TurmoilRuntime)))
}

/// How many events a [`Trace`] keeps for inspection. Policy: enough for a few seconds of
/// simulated QUIC traffic between a handful of hosts; later events still count in the digest.
pub const TRACE_EVENTS_MAX: usize = 200_000;

/// A shared log of `(virtual time, event)` with a running digest over every event.
///
/// Clone it into every host of a simulation; all clones append to one log. Times are
/// `turmoil::sim_elapsed()` (zero outside a simulation). Two runs of one seed must end with equal
/// [`Trace::digest`]s; the kept events help to find where they diverged.
#[derive(Clone, Default)]
pub struct Trace {
    inner: Arc<Mutex<TraceLog>>,
}

#[derive(Default)]
struct TraceLog {
    events: Vec<(Duration, String)>,
    count: u64,
    digest: Fnv1a,
}

impl fmt::Debug for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let log = lock(&self.inner);
        f.debug_struct("Trace")
            .field("count", &log.count)
            .field("digest", &format_args!("{:016x}", log.digest.finish()))
            .finish()
    }
}

impl Trace {
    /// An empty trace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `event`, stamped with the simulation's virtual time.
    pub fn record(&self, event: impl Into<String>) {
        let at = turmoil::sim_elapsed().unwrap_or_default();
        let event = event.into();
        let mut log = lock(&self.inner);
        log.digest.write(&at.as_nanos().to_le_bytes());
        log.digest.write(event.as_bytes());
        // A separator, so ("ab", "c") and ("a", "bc") hash differently.
        log.digest.write(&[0xff]);
        log.count += 1;
        if log.events.len() < TRACE_EVENTS_MAX {
            log.events.push((at, event));
        }
    }

    /// A digest of every event recorded so far (times included). Stable across Rust versions
    /// and platforms (FNV-1a), so a digest can be written into a regression test.
    pub fn digest(&self) -> u64 {
        lock(&self.inner).digest.finish()
    }

    /// How many events were recorded (including those past [`TRACE_EVENTS_MAX`]).
    pub fn len(&self) -> u64 {
        lock(&self.inner).count
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first [`TRACE_EVENTS_MAX`] events, in the order they were recorded.
    pub fn events(&self) -> Vec<(Duration, String)> {
        lock(&self.inner).events.clone()
    }
}

/// 64-bit FNV-1a: tiny, and unlike `DefaultHasher` its output is specified and never changes.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        let hash = |input: &[u8]| {
            let mut h = Fnv1a::default();
            h.write(input);
            h.finish()
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn trace_digest_depends_on_event_boundaries_and_order() {
        let digest = |events: &[&str]| {
            let trace = Trace::new();
            events.iter().for_each(|e| trace.record(*e));
            trace.digest()
        };
        assert_eq!(digest(&["a", "b"]), digest(&["a", "b"]));
        assert_ne!(digest(&["ab", "c"]), digest(&["a", "bc"]));
        assert_ne!(digest(&["a", "b"]), digest(&["b", "a"]));
        let trace = Trace::new();
        trace.record("x");
        assert_eq!(
            (trace.len(), trace.events()),
            (1, vec![(Duration::ZERO, "x".to_owned())])
        );
    }
}
