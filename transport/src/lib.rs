//! How Meridian regions talk: QUIC endpoints with mutual TLS, certificates, framing,
//! reconnecting peer links and WAN impairment for simulations.
//!
//! The crate moves typed, versioned frames between authenticated regions; it knows nothing
//! about replication.
//!
//! # Layout
//!
//! - [`certs`]: the cluster CA and one certificate per region (rcgen), written to and loaded
//!   from PEM files; reading the cluster and region a certificate names.
//! - [`codec`]: framing. Length-prefixed postcard frames, the stream preamble and the
//!   transport hello; a sans-IO [`FrameDecoder`] and an async [`FrameReader`] over it.
//! - `tls`: rustls client and server configurations that trust only the cluster CA (both
//!   sides verify), and handshake failures explained in words.
//! - [`link`]: one peer link: its state, counters and the dial rule that keeps exactly one
//!   connection per pair of regions.
//! - `shared`: what the mesh and its connections share: the [`Message`] bound, the
//!   [`MeshEvent`]s delivered, and one running mesh's state (below both `mesh` and `conn`).
//! - `conn`: one connection's life: authenticate, exchange hellos, install, move frames.
//! - [`mesh`]: the public handle. [`Mesh`] starts the endpoint, dials and accepts, and
//!   delivers [`MeshEvent`]s; [`MeshConfig`] says how.
//! - `backoff`: reconnect delays with seeded jitter.
//! - [`impair`]: WAN impairment under a QUIC endpoint: `impair/mod.rs` (the model, link
//!   settings, counters), `delay.rs` (the bounded delay line), `socket.rs` (the socket quinn
//!   sends through), `handle.rs` (runtime control), `tests.rs`.
//! - `sim` (feature `turmoil`): quinn over turmoil's virtual network.
//!
//! # Identities
//!
//! A region is identified by its certificate, never by what it says: the `peer` of every
//! event is the region named in the peer's verified certificate (URI SAN
//! `meridian://<cluster>/<region>`). A dialer verifies the server's certificate against the
//! DNS name `<region>.meridian` of the region it meant to reach.

pub mod certs;
pub mod codec;
pub mod link;
pub mod mesh;

pub mod impair;
#[cfg(feature = "turmoil")]
pub mod sim;

mod backoff;
mod conn;
mod shared;
mod tls;

pub use certs::{CertError, Identity, KeyAlgorithm};
pub use codec::{FrameDecoder, FrameError, FrameReader, Hello, encode_frame};
pub use conn::HandshakeError;
pub use link::{LinkState, LinkStatus, PathStats};
pub use mesh::{Mesh, MeshConfig, MeshEvent, Message, SendError, TransportError};
pub use tls::{ALPN, TlsError};
