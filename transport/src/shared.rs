//! What the mesh's handle and its connections' tasks share: the [`Message`] bound, the
//! [`MeshEvent`]s they deliver, and the state of one running mesh ([`Shared`]). Below both
//! [`mesh`](crate::mesh), which builds it, and `conn`, which serves connections with it, so
//! that neither has to know the other's insides.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::warn;

use crate::link::{Link, lock};

/// What a mesh can carry: any serde type that can cross tasks.
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Message for T {}

/// What happens on a mesh, in order per connection: `Up`, then its `Frame`s, then `Down`.
/// Per peer, a connection's `Down` comes before the next connection's `Up`.
///
/// `peer` is always the region named in the peer's verified certificate.
#[derive(Debug, Clone, PartialEq)]
pub enum MeshEvent<M> {
    /// A connection to `peer` is established and authenticated; frames can be sent. The
    /// application redoes its own hello on every `Up`.
    Up {
        /// The authenticated peer region.
        peer: String,
        /// Unique per connection within this mesh.
        conn_id: u64,
    },
    /// A message arrived from `peer` on connection `conn_id`.
    Frame {
        /// The authenticated peer region.
        peer: String,
        /// The connection it arrived on.
        conn_id: u64,
        /// The message.
        msg: M,
    },
    /// The connection ended; anything sent on it and not yet delivered is lost.
    Down {
        /// The authenticated peer region.
        peer: String,
        /// The connection that ended.
        conn_id: u64,
        /// Why it ended.
        reason: String,
    },
    /// A handshake was refused (by this region or by the peer): unknown CA, wrong cluster,
    /// expired certificate, unknown region, version mismatch. For logs and metrics.
    Rejected {
        /// The other side's address.
        remote: SocketAddr,
        /// Why, in words.
        reason: String,
    },
    /// Two live processes claim region `peer` (split brain; see
    /// [`MeshConfig::peer_liveness`](crate::MeshConfig::peer_liveness)). The one connected first keeps the link; the other's
    /// connections are refused. Repeated at most once a second while the other keeps dialing.
    SplitBrain {
        /// The region both claim.
        peer: String,
        /// The live connection's process ([`MeshConfig::instance`](crate::MeshConfig::instance) of it).
        live: String,
        /// The refused process.
        refused: String,
    },
}

/// The validated settings connections consult.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) cluster: String,
    pub(crate) region: String,
    pub(crate) max_frame_bytes: usize,
    pub(crate) send_queue_frames: usize,
    pub(crate) hello_timeout: Duration,
    pub(crate) shutdown_drain: Duration,
    pub(crate) dial_timeout: Duration,
    pub(crate) instance: String,
}

/// State shared by the handle and every task of one mesh.
pub(crate) struct Shared<M> {
    pub(crate) settings: Settings,
    /// Drawn once per start; tells a restarted peer from a simultaneous dial.
    pub(crate) incarnation: u64,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) client_config: quinn::ClientConfig,
    pub(crate) links: BTreeMap<String, Arc<Link>>,
    /// Taken at shutdown so the event channel closes once the tasks are gone.
    pub(crate) events: Mutex<Option<mpsc::Sender<MeshEvent<M>>>>,
    pub(crate) next_conn_id: AtomicU64,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) tasks: Mutex<JoinSet<()>>,
    pub(crate) handshakes: Arc<Semaphore>,
    pub(crate) local_addr: SocketAddr,
}

impl<M: Message> Shared<M> {
    pub(crate) fn link(&self, peer: &str) -> Option<Arc<Link>> {
        self.links.get(peer).cloned()
    }

    pub(crate) fn peer_names(&self) -> Vec<&str> {
        self.links.keys().map(String::as_str).collect()
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Delivers an event, waiting while the channel is full (backpressure).
    pub(crate) async fn emit(&self, event: MeshEvent<M>) {
        let sender = lock(&self.events).clone();
        if let Some(sender) = sender {
            // A closed channel means the application stopped listening; nothing to do.
            let _ = sender.send(event).await;
        }
    }

    /// Reports a split brain without waiting (see [`Shared::report_rejected`]).
    pub(crate) fn report_split_brain(&self, peer: &str, live: String, refused: String) {
        let sender = lock(&self.events).clone();
        let event = MeshEvent::SplitBrain {
            peer: peer.to_owned(),
            live,
            refused,
        };
        if let Some(sender) = sender
            && let Err(mpsc::error::TrySendError::Full(_)) = sender.try_send(event)
        {
            warn!(region = %self.settings.region, peer, "event queue full: dropped a SplitBrain event");
        }
    }

    /// Reports a refused handshake without waiting: diagnostics must not stall handshakes.
    pub(crate) fn report_rejected(&self, remote: SocketAddr, reason: String) {
        let sender = lock(&self.events).clone();
        if let Some(sender) = sender
            && let Err(mpsc::error::TrySendError::Full(_)) =
                sender.try_send(MeshEvent::Rejected { remote, reason })
        {
            warn!(region = %self.settings.region, %remote, "event queue full: dropped a Rejected event");
        }
    }

    /// Spawns a task that shutdown will abort; refused once shutdown has begun.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.tasks);
        while tasks.try_join_next().is_some() {}
        if !self.is_shut_down() {
            tasks.spawn(task);
        }
    }
}
