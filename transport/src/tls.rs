//! mTLS for QUIC: rustls configurations that trust only the cluster CA, reading the
//! authenticated peer region after a handshake, and turning handshake failures into
//! messages an operator can act on.
//!
//! Both sides verify: the server with `WebPkiClientVerifier`, the client with
//! `WebPkiServerVerifier` and the server name `<region>.meridian` of the region it meant to
//! dial. The ring provider is passed explicitly, so nothing depends on a process-wide default
//! provider being installed.

use std::sync::Arc;

use quinn::ConnectionError;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::CertificateDer;

use crate::certs::{CertError, CertIdentity, Identity, parse_identity};

/// The ALPN protocol both sides must offer; a peer speaking anything else fails the
/// handshake with "no application protocol".
pub const ALPN: &[u8] = b"meridian/1";

/// Why building the TLS configuration from an identity failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the CA, certificate or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The verifier could not be built (e.g. the CA certificate is unusable as a root).
    #[error("TLS verifier: {0}")]
    Verifier(String),
    /// The rustls configuration cannot be used for QUIC.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(identity: &Identity) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(identity.ca_cert.clone())?;
    Ok(Arc::new(roots))
}

/// The QUIC server crypto for `identity`: requires a client certificate from the cluster CA.
pub(crate) fn server_crypto(identity: &Identity) -> Result<Arc<QuicServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(identity)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.cert_chain.clone(), identity.key().clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(config).map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(Arc::new(quic))
}

/// The QUIC client crypto for `identity`: presents its certificate and accepts only servers
/// with a certificate from the cluster CA for the dialed name.
pub(crate) fn client_crypto(identity: &Identity) -> Result<Arc<QuicClientConfig>, TlsError> {
    let provider = provider();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(identity)?,
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(identity.cert_chain.clone(), identity.key().clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(config).map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(Arc::new(quic))
}

/// The cluster and region named by the verified certificate of an established connection.
pub(crate) fn peer_identity(conn: &quinn::Connection) -> Result<CertIdentity, CertError> {
    let chain = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| CertError::NotMeridian("the peer presented no certificate".into()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| CertError::NotMeridian("the peer presented an empty chain".into()))?;
    parse_identity(leaf)
}

/// A connection failure in words, and whether it was an authentication refusal (by us or by
/// the peer) rather than a peer being unreachable or closing normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) refusal: bool,
}

/// First crypto (TLS alert) transport error code: 0x100 + alert number (RFC 9001 §4.8).
const CRYPTO_ERROR_BASE: u64 = 0x100;

/// Describes why a connection could not be established or ended, with a hint at the fix.
pub(crate) fn describe(err: &ConnectionError, refused_code: u64) -> Failure {
    match err {
        ConnectionError::TransportError(te) => {
            let code = u64::from(te.code);
            let is_tls = (CRYPTO_ERROR_BASE..CRYPTO_ERROR_BASE + 0x100).contains(&code);
            Failure {
                message: describe_local_tls(&te.reason),
                refusal: is_tls,
            }
        }
        ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            if let Some(alert) = code.checked_sub(CRYPTO_ERROR_BASE).filter(|a| *a < 0x100) {
                Failure {
                    message: format!("the peer refused the TLS handshake: {}", alert_text(alert)),
                    refusal: true,
                }
            } else {
                Failure {
                    message: format!("the peer closed the connection: {close}"),
                    refusal: false,
                }
            }
        }
        ConnectionError::ApplicationClosed(close) => Failure {
            message: format!(
                "closed by the peer: {} (code {})",
                String::from_utf8_lossy(&close.reason),
                close.error_code
            ),
            refusal: u64::from(close.error_code) == refused_code,
        },
        ConnectionError::TimedOut => Failure {
            message: "timed out: the peer did not answer (down, unreachable or partitioned)".into(),
            refusal: false,
        },
        ConnectionError::Reset => Failure {
            message: "reset by the peer (it restarted or no longer knows this connection)".into(),
            refusal: false,
        },
        ConnectionError::LocallyClosed => Failure {
            message: "closed locally".into(),
            refusal: false,
        },
        other => Failure {
            message: other.to_string(),
            refusal: false,
        },
    }
}

fn describe_local_tls(reason: &str) -> String {
    let hint = if reason.contains("UnknownIssuer") || reason.contains("BadSignature") {
        "the peer's certificate was not issued by this cluster's CA; \
         both regions must use certificates from the same ca.pem"
    } else if reason.contains("expired") || reason.contains("Expired") {
        "the peer's certificate has expired; reissue it from the cluster CA"
    } else if reason.contains("not valid yet") || reason.contains("NotValidYet") {
        "the peer's certificate is not valid yet; check both clocks"
    } else if reason.contains("not valid for name") || reason.contains("NotValidForName") {
        "the peer's certificate is for another region than the one configured at this address"
    } else if reason.contains("NoApplicationProtocol") || reason.contains("application protocol") {
        "the peer does not speak the Meridian protocol (ALPN meridian/1)"
    } else if reason.contains("certificate") {
        "the peer's certificate was refused"
    } else {
        "TLS handshake failed"
    };
    format!("{hint}: {reason}")
}

/// TLS alerts (RFC 8446 §6) a peer sends when it refuses our certificate.
fn alert_text(alert: u64) -> String {
    let text = match alert {
        42 => "bad certificate",
        43 => "unsupported certificate",
        44 => "certificate revoked",
        45 => "certificate expired: our certificate has expired, reissue it",
        46 => "certificate unknown",
        48 => "unknown CA: the peer does not trust our cluster CA",
        51 => "decrypt error: the peer could not verify our certificate against its CA",
        49 => "access denied",
        116 => "certificate required",
        120 => "no application protocol (ALPN mismatch)",
        40 => "handshake failure",
        _ => "unexpected alert",
    };
    format!("TLS alert {alert} ({text})")
}
