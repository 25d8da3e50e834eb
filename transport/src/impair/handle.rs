//! The handle that steers a socket's faults at runtime.

use super::*;

/// Steers the impairment of one [`ImpairedSocket`] at runtime.
///
/// Cheap to clone and safe to share between tasks and threads; changes apply to the next packet.
/// The handle stays usable after the socket is gone (changes then have no effect).
#[derive(Clone)]
pub struct ImpairmentHandle {
    pub(super) control: Arc<Control>,
    pub(super) delay: Arc<DelayLine>,
}

impl fmt::Debug for ImpairmentHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImpairmentHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl ImpairmentHandle {
    /// Sets what happens to packets sent to `dest` from now on, replacing any earlier setting.
    ///
    /// Packets already delayed keep their release time.
    pub fn set(&self, dest: SocketAddr, link: LinkImpairment) -> Result<(), ImpairmentError> {
        link.validate()?;
        let mut settings = lock(&self.control.settings);
        if link.is_noop() {
            settings.outbound.remove(&dest);
        } else {
            settings.outbound.insert(dest, link);
        }
        Ok(())
    }

    /// The current setting for packets sent to `dest`, if any.
    pub fn get(&self, dest: SocketAddr) -> Option<LinkImpairment> {
        lock(&self.control.settings).outbound.get(&dest).copied()
    }

    /// Makes the link to `dest` perfect again (packets already delayed still wait).
    pub fn clear(&self, dest: SocketAddr) {
        lock(&self.control.settings).outbound.remove(&dest);
    }

    /// Removes every outbound setting and every inbound block: the socket behaves as the one it
    /// wraps (packets already delayed still wait).
    pub fn clear_all(&self) {
        let mut settings = lock(&self.control.settings);
        settings.outbound.clear();
        settings.inbound_blocked.clear();
        self.control.inbound_active.store(false, Ordering::Release);
    }

    /// Discards every packet received from `src`: the inbound half of a partition.
    pub fn block_inbound_from(&self, src: SocketAddr) {
        let mut settings = lock(&self.control.settings);
        settings.inbound_blocked.insert(src);
        self.control.inbound_active.store(true, Ordering::Release);
    }

    /// Accepts packets from `src` again.
    pub fn unblock_inbound_from(&self, src: SocketAddr) {
        let mut settings = lock(&self.control.settings);
        settings.inbound_blocked.remove(&src);
        self.control
            .inbound_active
            .store(!settings.inbound_blocked.is_empty(), Ordering::Release);
    }

    /// Whether packets from `src` are being discarded.
    pub fn is_inbound_blocked(&self, src: SocketAddr) -> bool {
        lock(&self.control.settings).inbound_blocked.contains(&src)
    }

    /// Cuts this socket off from `peer` in both directions (block outbound to it and inbound
    /// from it), keeping its latency, jitter and loss for when the link heals.
    pub fn partition(&self, peer: SocketAddr) {
        let mut settings = lock(&self.control.settings);
        settings.outbound.entry(peer).or_default().blocked = true;
        settings.inbound_blocked.insert(peer);
        self.control.inbound_active.store(true, Ordering::Release);
    }

    /// Undoes [`ImpairmentHandle::partition`] (and any one-way block) for `peer`: both directions
    /// flow again, with the link's latency, jitter and loss unchanged.
    pub fn heal(&self, peer: SocketAddr) {
        let mut settings = lock(&self.control.settings);
        if let Some(link) = settings.outbound.get_mut(&peer) {
            link.blocked = false;
            if link.is_noop() {
                settings.outbound.remove(&peer);
            }
        }
        settings.inbound_blocked.remove(&peer);
        self.control
            .inbound_active
            .store(!settings.inbound_blocked.is_empty(), Ordering::Release);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ImpairmentStats {
        let c = &self.control.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ImpairmentStats {
            passed: read(&c.passed),
            delayed: read(&c.delayed),
            released: read(&c.released),
            dropped_loss: read(&c.dropped_loss),
            dropped_queue_full: read(&c.dropped_queue_full),
            blocked_outbound: read(&c.blocked_outbound),
            blocked_inbound: read(&c.blocked_inbound),
            send_errors: read(&c.send_errors),
            queued: self.delay.queued.load(Ordering::Relaxed) as u64,
        }
    }
}
