//! The socket quinn sends through: each datagram is judged (pass, drop, delay) on the way out,
//! and blocked sources are discarded on the way in.

use super::*;

/// A [`quinn::AsyncUdpSocket`] that impairs the traffic of the socket it wraps.
///
/// Create it with [`ImpairedSocket::wrap`], give it to quinn (for example
/// `Endpoint::new_with_abstract_socket`), and steer it through the returned handle.
pub struct ImpairedSocket {
    pub(super) inner: Arc<dyn AsyncUdpSocket>,
    pub(super) control: Arc<Control>,
    pub(super) delay: Arc<DelayLine>,
}

impl fmt::Debug for ImpairedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImpairedSocket")
            .field("inner", &self.inner)
            .field("queued", &self.delay.queued.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ImpairedSocket {
    /// Wraps `inner`; `seed` seeds the RNG behind loss and jitter, so a run can be repeated.
    ///
    /// The wrapper starts with no impairment: it changes nothing until the returned handle
    /// configures a fault.
    pub fn wrap(inner: Arc<dyn AsyncUdpSocket>, seed: u64) -> (Arc<Self>, ImpairmentHandle) {
        let control = Arc::new(Control {
            settings: Mutex::new(Settings {
                outbound: BTreeMap::new(),
                inbound_blocked: BTreeSet::new(),
                rng: StdRng::seed_from_u64(seed),
            }),
            inbound_active: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let delay = Arc::new(DelayLine::default());
        let handle = ImpairmentHandle {
            control: control.clone(),
            delay: delay.clone(),
        };
        let socket = Arc::new(Self {
            inner,
            control,
            delay,
        });
        (socket, handle)
    }

    /// Sends one datagram (never a GSO batch) through the impairment.
    pub(super) fn send_one(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let counters = &self.control.counters;
        let (delay, may_reorder) = match self.control.judge(transmit.destination) {
            // Dropping is silent success, as on a real network: an error here would make quinn
            // tear the connection down.
            Verdict::Drop => return Ok(()),
            Verdict::Send { delay, may_reorder } => (delay, may_reorder),
        };
        if delay.is_zero() && self.delay.queued.load(Ordering::Acquire) == 0 {
            return self.pass(transmit);
        }
        match self.delay.offer(transmit, delay, may_reorder) {
            Queued::NotNeeded => self.pass(transmit),
            Queued::Full => {
                Counters::add(&counters.dropped_queue_full, 1);
                Ok(())
            }
            Queued::Accepted { start_releaser } => {
                Counters::add(&counters.delayed, 1);
                if start_releaser {
                    self.start_releaser();
                }
                Ok(())
            }
        }
    }

    pub(super) fn pass(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)?;
        Counters::add(&self.control.counters.passed, 1);
        Ok(())
    }

    pub(super) fn start_releaser(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to run the timer on: the queued packets can never leave. This cannot
            // happen under quinn, whose driver always runs on the runtime; count it, don't panic.
            let lost = self.delay.drain();
            Counters::add(&self.control.counters.send_errors, lost as u64);
            tracing::warn!(
                lost,
                "impaired socket used outside a tokio runtime; delayed packets dropped"
            );
            return;
        };
        runtime.spawn(release_delayed(
            self.delay.clone(),
            self.inner.clone(),
            self.control.clone(),
        ));
    }
}

impl Drop for ImpairedSocket {
    fn drop(&mut self) {
        self.delay.closed.store(true, Ordering::Release);
        self.delay.wake.notify_one();
    }
}

/// Sends delayed packets when they fall due, until the socket is dropped.
pub(super) async fn release_delayed(
    line: Arc<DelayLine>,
    inner: Arc<dyn AsyncUdpSocket>,
    control: Arc<Control>,
) {
    let counters = &control.counters;
    let mut poller = inner.clone().create_io_poller();
    let mut due = Vec::new();
    while !line.closed.load(Ordering::Acquire) {
        let next = line.take_due(Instant::now(), &mut due);
        for packet in due.drain(..) {
            let transmit = Transmit {
                destination: packet.destination,
                ecn: packet.ecn,
                contents: &packet.contents,
                segment_size: None,
                src_ip: packet.src_ip,
            };
            match send_when_writable(inner.as_ref(), poller.as_mut(), &transmit).await {
                Ok(()) => Counters::add(&counters.released, 1),
                Err(error) => {
                    Counters::add(&counters.send_errors, 1);
                    tracing::debug!(%error, dest = %packet.destination, "delayed packet not sent");
                }
            }
        }
        match next {
            // `biased`: no random branch choice, so simulations stay deterministic.
            Some(at) => tokio::select! {
                biased;
                () = line.wake.notified() => {}
                () = tokio::time::sleep_until(at) => {}
            },
            None => line.wake.notified().await,
        }
    }
    let lost = line.drain();
    Counters::add(&counters.send_errors, lost as u64);
}

/// Sends one datagram, waiting for the socket to become writable when it would block.
pub(super) async fn send_when_writable(
    socket: &dyn AsyncUdpSocket,
    mut poller: Pin<&mut dyn UdpPoller>,
    transmit: &Transmit<'_>,
) -> io::Result<()> {
    loop {
        match socket.try_send(transmit) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                poll_fn(|cx| poller.as_mut().poll_writable(cx)).await?;
            }
            other => return other,
        }
    }
}

impl AsyncUdpSocket for ImpairedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let segment = match transmit.segment_size {
            Some(segment) if segment > 0 && segment < transmit.contents.len() => segment,
            _ => return self.send_one(transmit),
        };
        // Defensive: quinn sends no batches to a socket reporting one segment (see the module
        // doc). Split it; once the first datagram is out, a failure of a later one is loss.
        for (index, contents) in transmit.contents.chunks(segment).enumerate() {
            let single = Transmit {
                contents,
                segment_size: None,
                ..transmit.clone()
            };
            match self.send_one(&single) {
                Ok(()) => {}
                Err(error) if index == 0 => return Err(error),
                Err(_) => Counters::add(&self.control.counters.send_errors, 1),
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
            let received = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            if !self.control.inbound_active.load(Ordering::Acquire) {
                return Poll::Ready(Ok(received));
            }
            let kept = self.discard_blocked(bufs, meta, received);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // Everything came from blocked sources: poll again, which either yields more or
            // registers the waker.
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

impl ImpairedSocket {
    /// Removes the received entries whose source is blocked, compacting the rest to the front
    /// of `bufs`/`meta`; returns how many are kept.
    pub(super) fn discard_blocked(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
        received: usize,
    ) -> usize {
        let mut kept = 0;
        for index in 0..received {
            let entry = meta[index];
            if self.control.is_inbound_blocked(entry.addr) {
                // With GRO one entry may hold several datagrams, all from the same source.
                let datagrams = entry.len.div_ceil(entry.stride.max(1)).max(1);
                Counters::add(&self.control.counters.blocked_inbound, datagrams as u64);
                continue;
            }
            if kept != index {
                meta[kept] = entry;
                let (front, back) = bufs.split_at_mut(index);
                front[kept][..entry.len].copy_from_slice(&back[0][..entry.len]);
            }
            kept += 1;
        }
        kept
    }
}
