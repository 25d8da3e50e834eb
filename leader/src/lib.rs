//! A Meridian region's leader: the sans-IO replication state machine, durable storage, the
//! client API and the node runtime that wires them together.

pub mod config;
