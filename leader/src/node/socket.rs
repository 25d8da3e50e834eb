//! The QUIC endpoint's socket, wrapped so that [`Node::shutdown`](super::Node::shutdown)
//! learns when the port is free.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;

/// The QUIC endpoint's UDP socket, wrapped so that [`Node::shutdown`] learns when it is closed:
/// the sender is dropped after the socket (fields drop in order), when the last reference —
/// quinn's endpoint task or an I/O poller — lets go of it.
#[derive(Debug)]
pub(super) struct ClosingSocket {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    _closed: oneshot::Sender<()>,
}

impl ClosingSocket {
    pub(super) fn wrap(
        inner: Arc<dyn quinn::AsyncUdpSocket>,
    ) -> (Arc<dyn quinn::AsyncUdpSocket>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let socket = Arc::new(ClosingSocket { inner, _closed: tx });
        (socket, rx)
    }
}

impl quinn::AsyncUdpSocket for ClosingSocket {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        // The inner poller holds the inner socket; holding `self` too keeps the closed signal
        // from firing while a poller still keeps the socket open.
        Box::pin(ClosingPoller {
            inner: Arc::clone(&self.inner).create_io_poller(),
            _socket: self,
        })
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit<'_>) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context<'_>,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// An I/O poller of a [`ClosingSocket`]; drops the inner poller before the socket.
#[derive(Debug)]
struct ClosingPoller {
    inner: std::pin::Pin<Box<dyn quinn::UdpPoller>>,
    _socket: Arc<ClosingSocket>,
}

impl quinn::UdpPoller for ClosingPoller {
    fn poll_writable(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_writable(cx)
    }
}
