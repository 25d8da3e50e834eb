//! How Meridian regions talk: QUIC endpoints with mutual TLS, certificates, framing,
//! reconnecting peer links and WAN impairment for simulations.

pub mod impair;
