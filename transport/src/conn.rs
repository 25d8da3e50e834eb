//! One connection's life after the TLS handshake: authenticate the peer, exchange hellos,
//! let the peer link decide whether to keep it, then move frames until it ends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::codec::{
    FrameError, FrameReader, HELLO_MAX_BYTES, Hello, TRANSPORT_VERSION, decode_payload,
    encode_frame, encode_preamble,
};
use crate::link::{ConnOrigin, Current, Install, Link, Side, close, lock};
use crate::shared::{MeshEvent, Message, Shared};
use crate::tls;

/// Why a connection was refused before it could carry frames. Each variant's message is
/// what the refusing side logs, reports in [`MeshEvent::Rejected`] and sends to the peer as
/// the close reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The peer's certificate is not a usable Meridian region certificate.
    #[error("peer certificate unusable: {0}")]
    Certificate(String),
    /// The peer's certificate (or hello) belongs to another cluster.
    #[error("wrong cluster: the peer is in cluster {peer:?}, this region is in cluster {local:?}")]
    WrongCluster {
        /// This region's cluster.
        local: String,
        /// The cluster the peer named.
        peer: String,
    },
    /// The peer's certificate names a region that is not a configured peer.
    #[error(
        "region {region:?} is not a peer in this region's configuration (configured peers: {configured})"
    )]
    UnknownRegion {
        /// The region the certificate names.
        region: String,
        /// The configured peers, comma-separated.
        configured: String,
    },
    /// The peer's certificate names this very region.
    #[error(
        "the peer's certificate names this region ({0:?}) itself; two processes share one region's certificate"
    )]
    SelfRegion(String),
    /// A dial reached a certificate for another region than the one dialed.
    #[error(
        "dialed region {expected:?} but the certificate at that address names region {found:?}"
    )]
    UnexpectedRegion {
        /// The region this side dialed.
        expected: String,
        /// The region the certificate names.
        found: String,
    },
    /// The peer's hello claims another region than its certificate.
    #[error("the peer's hello claims region {hello:?} but its certificate names {certificate:?}")]
    HelloRegionMismatch {
        /// The region named in the certificate.
        certificate: String,
        /// The region claimed in the hello.
        hello: String,
    },
    /// The peer speaks another transport protocol version.
    #[error(
        "transport protocol version mismatch: the peer speaks version {peer}, this build speaks version {local}; upgrade the older region"
    )]
    Version {
        /// This build's version.
        local: u16,
        /// The peer's version.
        peer: u16,
    },
    /// The peer's preamble or hello frame is broken.
    #[error("bad transport hello: {0}")]
    BadHello(String),
    /// The peer sent no hello in time.
    #[error("no transport hello from the peer within {0:?}")]
    Timeout(Duration),
    /// The connection failed during the hello (the peer closed it, or it was lost).
    #[error("{0}")]
    Connection(String),
}

impl HandshakeError {
    /// Whether this side refused the peer (as opposed to the connection failing).
    fn is_local_refusal(&self) -> bool {
        !matches!(self, HandshakeError::Connection(_))
    }
}

/// How a connection ended, for the dialer's backoff.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// It was up (its `Up` event was emitted) and has now ended.
    WasUp,
    /// The dial rule kept another connection.
    Duplicate,
    /// It never came up.
    Failed(String),
    /// Its handshake got no answer within `dial_timeout`: the attempt itself was the wait, so
    /// the next one starts at once (a partition or a dead peer is probed every `dial_timeout`).
    TimedOut(String),
}

/// Runs an established connection to its end. `dialed` is the link dialed, for outgoing
/// connections.
pub(crate) async fn run<M: Message>(
    shared: Arc<Shared<M>>,
    conn: Connection,
    dialer: Side,
    dialed: Option<&Arc<Link>>,
) -> Outcome {
    let remote = conn.remote_address();
    let handshake = async {
        let link = authenticate(&shared, &conn, dialed.map(|l| l.peer.as_str()))?;
        let (send, reader, hello) = exchange_hello(&shared, &conn, &link.peer).await?;
        Ok::<_, HandshakeError>((link, send, reader, hello))
    };
    let (link, send, reader, hello) = match handshake.await {
        Ok(parts) => parts,
        Err(err) => return refuse(&shared, &conn, remote, dialed, err),
    };
    let peer = link.peer.as_str();
    let conn_id = shared.next_conn_id();
    let (done_tx, done_rx) = watch::channel(false);
    let close_reason = Arc::new(Mutex::new(None));
    let current = Current {
        conn_id,
        conn: conn.clone(),
        origin: ConnOrigin {
            dialer,
            peer_incarnation: hello.incarnation,
        },
        peer_instance: hello.instance.clone(),
        tx: None,
        close_reason: close_reason.clone(),
        done: done_rx,
    };
    match link.install(current) {
        Install::Duplicate(reason) => {
            debug!(peer, conn_id, %remote, "{reason}");
            conn.close(close::DUPLICATE.into(), reason.as_bytes());
            Outcome::Duplicate
        }
        Install::Fenced { reason, report } => {
            warn!(region = %shared.settings.region, peer, %remote, instance = %hello.instance, "refused: {reason}");
            conn.close(close::SPLIT_BRAIN.into(), reason.as_bytes());
            if let Some((live, refused)) = report {
                shared.report_split_brain(peer, live, refused);
            }
            Outcome::Failed(reason)
        }
        Install::Accepted { replaced } => {
            if let Some(mut old_done) = replaced {
                // The old connection emits its Down before this one emits Up.
                let _ = old_done.wait_for(|done| *done).await;
            }
            let served = Served {
                shared: &shared,
                link: &link,
                conn: &conn,
                conn_id,
                close_reason: &close_reason,
            };
            let outcome = served.serve(send, reader).await;
            done_tx.send_replace(true);
            outcome
        }
    }
}

/// Closes a refused connection, logs why and reports it. The link table shows the failure
/// before any event reports it.
fn refuse<M: Message>(
    shared: &Shared<M>,
    conn: &Connection,
    remote: SocketAddr,
    dialed: Option<&Arc<Link>>,
    err: HandshakeError,
) -> Outcome {
    let reason = err.to_string();
    let region = &shared.settings.region;
    if err.is_local_refusal() {
        conn.close(close::REFUSED.into(), reason.as_bytes());
        if let Some(link) = dialed {
            link.attempt_failed(reason.clone());
        }
        warn!(%region, %remote, "refused connection: {reason}");
        shared.report_rejected(remote, reason.clone());
        return Outcome::Failed(reason);
    }
    let closed = conn.close_reason();
    conn.close(close::REFUSED.into(), b"handshake failed");
    if let Some(quinn::ConnectionError::ApplicationClosed(c)) = &closed
        && c.error_code == close::DUPLICATE.into()
    {
        return Outcome::Duplicate;
    }
    if let Some(link) = dialed {
        link.attempt_failed(reason.clone());
    }
    if closed.is_some_and(|e| tls::describe(&e, close::REFUSED.into()).refusal) {
        warn!(%region, %remote, "connection refused by the peer: {reason}");
        shared.report_rejected(remote, reason.clone());
    } else {
        debug!(%region, %remote, "connection failed during hello: {reason}");
    }
    Outcome::Failed(reason)
}

/// Reads the authenticated region from the verified certificate and checks it is a peer.
fn authenticate<M: Message>(
    shared: &Shared<M>,
    conn: &Connection,
    expected: Option<&str>,
) -> Result<Arc<Link>, HandshakeError> {
    let settings = &shared.settings;
    let id = tls::peer_identity(conn).map_err(|e| HandshakeError::Certificate(e.to_string()))?;
    if id.cluster != settings.cluster {
        return Err(HandshakeError::WrongCluster {
            local: settings.cluster.clone(),
            peer: id.cluster,
        });
    }
    if id.region == settings.region {
        return Err(HandshakeError::SelfRegion(id.region));
    }
    if let Some(expected) = expected.filter(|e| *e != id.region) {
        return Err(HandshakeError::UnexpectedRegion {
            expected: expected.to_owned(),
            found: id.region,
        });
    }
    shared
        .link(&id.region)
        .ok_or_else(|| HandshakeError::UnknownRegion {
            region: id.region,
            configured: shared.peer_names().join(", "),
        })
}

/// Sends our preamble and hello on a new uni stream and reads the peer's, within the
/// hello timeout.
async fn exchange_hello<M: Message>(
    shared: &Shared<M>,
    conn: &Connection,
    peer: &str,
) -> Result<(SendStream, FrameReader<RecvStream>, Hello), HandshakeError> {
    let settings = &shared.settings;
    let hello = Hello {
        cluster: settings.cluster.clone(),
        region: settings.region.clone(),
        incarnation: shared.incarnation,
        instance: settings.instance.clone(),
    };
    let exchange = async {
        let lost = |e: &dyn std::fmt::Display| {
            let message = conn
                .close_reason()
                .map(|c| tls::describe(&c, close::REFUSED.into()).message)
                .unwrap_or_else(|| e.to_string());
            HandshakeError::Connection(message)
        };
        let mut send = conn.open_uni().await.map_err(|e| lost(&e))?;
        let frame = encode_frame(&hello, HELLO_MAX_BYTES)
            .map_err(|e| HandshakeError::BadHello(e.to_string()))?;
        send.write_all(&encode_preamble())
            .await
            .map_err(|e| lost(&e))?;
        send.write_all(&frame).await.map_err(|e| lost(&e))?;
        let recv = conn.accept_uni().await.map_err(|e| lost(&e))?;
        let mut reader = FrameReader::new(recv, HELLO_MAX_BYTES);
        let bad = |e: FrameError| match e {
            FrameError::Io(io) => lost(&io),
            other => HandshakeError::BadHello(other.to_string()),
        };
        let version = reader.read_preamble().await.map_err(bad)?;
        if version != TRANSPORT_VERSION {
            return Err(HandshakeError::Version {
                local: TRANSPORT_VERSION,
                peer: version,
            });
        }
        let theirs: Hello = reader
            .next()
            .await
            .map_err(bad)?
            .ok_or_else(|| HandshakeError::BadHello("stream ended before the hello".into()))?;
        Ok((send, reader, theirs))
    };
    let (send, mut reader, theirs) = tokio::time::timeout(settings.hello_timeout, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout(settings.hello_timeout))??;
    if theirs.cluster != settings.cluster {
        return Err(HandshakeError::WrongCluster {
            local: settings.cluster.clone(),
            peer: theirs.cluster,
        });
    }
    if theirs.region != peer {
        return Err(HandshakeError::HelloRegionMismatch {
            certificate: peer.to_owned(),
            hello: theirs.region,
        });
    }
    reader.set_max_frame_bytes(settings.max_frame_bytes);
    Ok((send, reader, theirs))
}

/// An installed connection, from its `Up` to its `Down`.
struct Served<'a, M: Message> {
    shared: &'a Shared<M>,
    link: &'a Arc<Link>,
    conn: &'a Connection,
    conn_id: u64,
    close_reason: &'a Mutex<Option<String>>,
}

impl<M: Message> Served<'_, M> {
    async fn serve(&self, send: SendStream, reader: FrameReader<RecvStream>) -> Outcome {
        let peer = self.link.peer.clone();
        let conn_id = self.conn_id;
        // Replaced (or shut down) while waiting for the previous connection to finish:
        // it never came up, so it gets neither Up nor Down.
        if !self.link.is_current(conn_id) || self.conn.close_reason().is_some() {
            let reason = self.end_reason("closed before it came up".into());
            self.link.finished(conn_id, &reason);
            return Outcome::Failed(reason);
        }
        info!(region = %self.shared.settings.region, peer, conn_id, remote = %self.conn.remote_address(), "link up");
        // Sendable before the Up is delivered, so that a caller who has seen the Up can
        // always send. `send_on` pins a message to a connection the caller has greeted.
        let (tx, rx) = mpsc::channel(self.shared.settings.send_queue_frames);
        if !self.link.set_sender(conn_id, tx) {
            // Replaced in the meantime; its successor is waiting for this to finish.
            return Outcome::Failed(self.end_reason("replaced before it came up".into()));
        }
        self.shared
            .emit(MeshEvent::Up {
                peer: peer.clone(),
                conn_id,
            })
            .await;
        let writer = AbortOnDrop(tokio::spawn(write_loop(
            send,
            rx,
            self.link.clone(),
            self.conn.clone(),
        )));
        let reason = self.read_loop(reader).await;
        drop(writer);
        let reason = self.end_reason(reason);
        info!(region = %self.shared.settings.region, peer, conn_id, "link down: {reason}");
        self.link.finished(conn_id, &reason);
        let fenced = matches!(
            self.conn.close_reason(),
            Some(quinn::ConnectionError::ApplicationClosed(c))
                if c.error_code == close::SPLIT_BRAIN.into()
        );
        self.shared
            .emit(MeshEvent::Down {
                peer,
                conn_id,
                reason: reason.clone(),
            })
            .await;
        if fenced {
            // The peer keeps another live process of this region: this one is the impostor
            // (or the other is). Back off as after a failed dial instead of redialing at once.
            warn!(region = %self.shared.settings.region, peer = %self.link.peer, "{reason}");
            self.shared
                .report_rejected(self.conn.remote_address(), reason.clone());
            return Outcome::Failed(reason);
        }
        Outcome::WasUp
    }

    /// Delivers frames until the connection ends; returns why it ended.
    async fn read_loop(&self, mut reader: FrameReader<RecvStream>) -> String {
        let mut seen = reader.bytes_read();
        loop {
            let payload = match reader.next_frame().await {
                Ok(Some(payload)) => payload,
                Ok(None) => {
                    let reason = "the peer finished its stream";
                    self.conn.close(close::PROTOCOL.into(), reason.as_bytes());
                    return reason.into();
                }
                Err(FrameError::Io(e)) => return format!("stream read failed: {e}"),
                Err(e) => return self.protocol_error(&e),
            };
            let msg = match decode_payload::<M>(&payload) {
                Ok(msg) => msg,
                Err(e) => return self.protocol_error(&e),
            };
            let now = reader.bytes_read();
            self.link.count_recv(now - seen);
            seen = now;
            self.shared
                .emit(MeshEvent::Frame {
                    peer: self.link.peer.clone(),
                    conn_id: self.conn_id,
                    msg,
                })
                .await;
        }
    }

    fn protocol_error(&self, e: &FrameError) -> String {
        let reason = format!("protocol error from the peer: {e}");
        warn!(region = %self.shared.settings.region, peer = %self.link.peer, conn_id = self.conn_id, "{reason}; closing the connection");
        lock(self.close_reason).get_or_insert_with(|| reason.clone());
        self.conn.close(close::PROTOCOL.into(), reason.as_bytes());
        reason
    }

    /// The reason for the Down event: ours if the mesh closed the connection, else the
    /// connection's own close reason, else what the reader saw.
    fn end_reason(&self, fallback: String) -> String {
        if let Some(ours) = lock(self.close_reason).clone() {
            return ours;
        }
        match self.conn.close_reason() {
            Some(e) => tls::describe(&e, close::REFUSED.into()).message,
            None => fallback,
        }
    }
}

/// Writes queued frames to the connection's stream; QUIC flow control is the backpressure.
async fn write_loop(
    mut send: SendStream,
    mut rx: mpsc::Receiver<Bytes>,
    link: Arc<Link>,
    conn: Connection,
) {
    while let Some(frame) = rx.recv().await {
        if let Err(e) = send.write_all(&frame).await {
            if conn.close_reason().is_none() {
                // The stream broke while the connection lives: nothing sent on this
                // connection can be trusted to arrive in order any more.
                let reason = format!("send stream failed: {e}");
                conn.close(close::PROTOCOL.into(), reason.as_bytes());
            }
            return;
        }
        link.count_sent(frame.len());
    }
}

/// Aborts a task when dropped, so a connection's writer never outlives it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
