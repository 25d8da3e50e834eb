//! Cluster certificates: one CA per cluster, one leaf certificate per region.
//!
//! Every region proves who it is with a leaf certificate signed by the cluster CA. A leaf
//! names its region twice, in two subject-alternative names:
//!
//! - a DNS name `<region>.meridian` ([`server_name`]), which the dialing side passes to rustls
//!   as the server name, so webpki itself refuses a certificate for another region;
//! - a URI `meridian://<cluster>/<region>`, which carries the cluster too, so a certificate
//!   from another cluster that happens to share a CA is detected ("wrong cluster").
//!
//! The subject's organisation (`O`) of both the CA and the leaves is the cluster name, for
//! humans reading the certificates with `openssl x509`.
//!
//! Files written by [`generate`] into one directory:
//!
//! | file | content | mode |
//! |---|---|---|
//! | `ca.pem` | the cluster CA certificate | 0644 |
//! | `ca.key` | the CA private key (PKCS#8) | 0600 |
//! | `<region>.pem` | the region's leaf certificate | 0644 |
//! | `<region>.key` | the region's private key (PKCS#8) | 0600 |
//!
//! Private keys are created with mode 0600 in the `open(2)` call itself, so there is no
//! moment in which another user could read them. No file is ever overwritten: regenerating a
//! CA by accident would lock every region out of the cluster.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The suffix of the DNS name a region's certificate carries (`<region>.meridian`).
///
/// Region names are single DNS labels; the suffix keeps an all-digit region name from
/// looking like an IP address to a TLS library.
pub const DNS_SUFFIX: &str = "meridian";

/// The scheme of the URI subject-alternative name that binds a leaf to its cluster.
pub const URI_SCHEME: &str = "meridian";

/// How long a generated CA stays valid. The CA is long-lived; rotating it means reissuing
/// every region's certificate at once.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How long a generated region certificate stays valid (two years). A region whose
/// certificate has expired is refused by every peer, so operators reissue before then.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);

/// How far in the past a new certificate's validity starts, so that a peer whose clock is a
/// little behind does not see a freshly issued certificate as "not yet valid".
pub const BACKDATE: Duration = Duration::from_secs(3600);

/// Longest accepted region name, from the design (`[a-z0-9-]{1,32}`).
pub const REGION_NAME_MAX: usize = 32;

/// Longest accepted cluster name; it appears in certificates and in every transport hello.
pub const CLUSTER_NAME_MAX: usize = 64;

/// The key algorithm for the CA and the region keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256: the default, supported by every TLS stack.
    #[default]
    EcdsaP256,
    /// Ed25519: signatures have a fixed length and are deterministic, so packet sizes (and
    /// therefore simulated traces under turmoil) repeat exactly from run to run.
    Ed25519,
}

impl KeyAlgorithm {
    fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// Why generating, writing, loading or reading a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A region or cluster name cannot be used in a certificate.
    #[error("invalid {what} name {name:?}: {why}")]
    InvalidName {
        /// "region" or "cluster".
        what: &'static str,
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// Generation refuses to overwrite an existing file.
    #[error(
        "{} already exists; refusing to overwrite certificates (remove the directory's files or choose another directory)",
        path.display()
    )]
    AlreadyExists {
        /// The file that is already there.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file did not contain what it should.
    #[error("{}: {why}", path.display())]
    Pem {
        /// The file involved.
        path: PathBuf,
        /// What was wrong with it.
        why: String,
    },
    /// rcgen could not build or sign a certificate or key.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate is not a Meridian certificate or names its cluster or region badly.
    #[error("certificate is not usable by Meridian: {0}")]
    NotMeridian(String),
    /// A certificate file names another region than the one it was loaded for.
    #[error("certificate {} is for region {found:?}, expected {expected:?}", path.display())]
    RegionMismatch {
        /// The file loaded.
        path: PathBuf,
        /// The region asked for.
        expected: String,
        /// The region the certificate names.
        found: String,
    },
}

/// The DNS name in a region's certificate and the server name a dialer verifies.
pub fn server_name(region: &str) -> String {
    format!("{region}.{DNS_SUFFIX}")
}

/// The URI subject-alternative name that binds a region's certificate to its cluster.
pub fn identity_uri(cluster: &str, region: &str) -> String {
    format!("{URI_SCHEME}://{cluster}/{region}")
}

/// Checks a region name: `[a-z0-9-]{1,32}`, not starting or ending with `-` (it is used as a
/// DNS label in certificates).
pub fn validate_region(name: &str) -> Result<(), CertError> {
    let bad = |why| {
        Err(CertError::InvalidName {
            what: "region",
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() || name.len() > REGION_NAME_MAX {
        return bad("must be 1 to 32 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("may only contain a-z, 0-9 and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("must not start or end with '-' (it is used as a DNS label)");
    }
    Ok(())
}

/// Checks a cluster name: 1 to 64 characters from `A-Z a-z 0-9 . _ -` (it appears in a URI
/// in every certificate).
pub fn validate_cluster(name: &str) -> Result<(), CertError> {
    if name.is_empty() || name.len() > CLUSTER_NAME_MAX {
        return Err(CertError::InvalidName {
            what: "cluster",
            name: name.to_owned(),
            why: "must be 1 to 64 characters long",
        });
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(CertError::InvalidName {
            what: "cluster",
            name: name.to_owned(),
            why: "may only contain A-Z, a-z, 0-9, '.', '_' and '-'",
        });
    }
    Ok(())
}

/// What a region needs to take part in a mesh: the cluster CA to verify peers with, its own
/// certificate chain and its private key.
pub struct Identity {
    /// The cluster named in the region's certificate.
    pub cluster: String,
    /// The region named in the region's certificate.
    pub region: String,
    /// The cluster CA certificate: the only trust root for peers.
    pub ca_cert: CertificateDer<'static>,
    /// The region's certificate first, then any intermediates.
    pub cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Builds an identity from PEM text: the CA certificate, the region's certificate chain
    /// (leaf first) and its private key. The cluster and region are read from the leaf.
    pub fn from_pem(ca_pem: &str, chain_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let mem = PathBuf::from("<memory>");
        let ca_cert = one_cert(ca_pem.as_bytes(), &mem)?;
        let cert_chain = cert_chain(chain_pem.as_bytes(), &mem)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CertError::Pem {
                path: mem,
                why: format!("no usable private key: {e}"),
            })?;
        let leaf = parse_identity(&cert_chain[0])?;
        Ok(Identity {
            cluster: leaf.cluster,
            region: leaf.region,
            ca_cert,
            cert_chain,
            key,
        })
    }

    /// The region's private key.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cluster: self.cluster.clone(),
            region: self.region.clone(),
            ca_cert: self.ca_cert.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for Identity {
    // Never print key material, not even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("cluster", &self.cluster)
            .field("region", &self.region)
            .field("cert_chain_len", &self.cert_chain.len())
            .finish_non_exhaustive()
    }
}

/// The cluster and region a certificate names, read from its URI subject-alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The cluster named in the certificate.
    pub cluster: String,
    /// The region named in the certificate.
    pub region: String,
}

/// Reads the cluster and region from a Meridian leaf certificate (DER).
///
/// The certificate must carry exactly one `meridian://<cluster>/<region>` URI, and a DNS name
/// `<region>.meridian` that agrees with it. This parses only; it does not verify signatures
/// (rustls does that during the handshake, before this is called on a peer's certificate).
pub fn parse_identity(der: &CertificateDer<'_>) -> Result<CertIdentity, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| CertError::NotMeridian(format!("unparseable certificate: {e}")))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| CertError::NotMeridian(format!("bad subjectAltName extension: {e}")))?
        .ok_or_else(|| CertError::NotMeridian("no subjectAltName extension".into()))?;
    let prefix = format!("{URI_SCHEME}://");
    let mut found: Option<CertIdentity> = None;
    let mut dns = Vec::new();
    for name in &sans.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::URI(uri) => {
                let Some(rest) = uri.strip_prefix(&prefix) else {
                    continue;
                };
                let Some((cluster, region)) = rest.split_once('/') else {
                    return Err(CertError::NotMeridian(format!(
                        "malformed identity URI {uri:?}"
                    )));
                };
                if found.is_some() {
                    return Err(CertError::NotMeridian("more than one identity URI".into()));
                }
                validate_cluster(cluster)?;
                validate_region(region)?;
                found = Some(CertIdentity {
                    cluster: cluster.to_owned(),
                    region: region.to_owned(),
                });
            }
            x509_parser::extensions::GeneralName::DNSName(name) => dns.push(*name),
            _ => {}
        }
    }
    let id = found.ok_or_else(|| {
        CertError::NotMeridian(format!(
            "no {prefix}<cluster>/<region> URI in subjectAltName"
        ))
    })?;
    let want = server_name(&id.region);
    if !dns.iter().any(|d| *d == want) {
        return Err(CertError::NotMeridian(format!(
            "identity URI names region {:?} but the DNS names are {dns:?}",
            id.region
        )));
    }
    Ok(id)
}

/// Validity period of a certificate to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First moment the certificate is valid.
    pub not_before: SystemTime,
    /// Last moment the certificate is valid.
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from [`BACKDATE`] ago for `lifetime` from now.
    pub fn from_now(lifetime: Duration) -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now.checked_sub(BACKDATE).unwrap_or(SystemTime::UNIX_EPOCH),
            not_after: now + lifetime,
        }
    }
}

/// What to put in a region's certificate. [`LeafSpec::new`] fills in the defaults; the
/// fields are public so tests can issue unusual certificates (expired, other cluster).
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// The cluster named in the certificate (normally the CA's).
    pub cluster: String,
    /// The region named in the certificate.
    pub region: String,
    /// The algorithm of the region's new key.
    pub alg: KeyAlgorithm,
    /// The validity period.
    pub validity: Validity,
}

impl LeafSpec {
    /// A certificate for `region` in the CA's cluster, valid for [`LEAF_VALIDITY`].
    pub fn new(ca: &ClusterCa, region: &str, alg: KeyAlgorithm) -> Self {
        LeafSpec {
            cluster: ca.cluster.clone(),
            region: region.to_owned(),
            alg,
            validity: Validity::from_now(LEAF_VALIDITY),
        }
    }
}

/// A region certificate and its key, in PEM, as issued by a [`ClusterCa`].
pub struct IssuedCert {
    /// The cluster the certificate names.
    pub cluster: String,
    /// The region the certificate names.
    pub region: String,
    /// The certificate in PEM.
    pub cert_pem: String,
    key_pem: String,
}

impl IssuedCert {
    /// The region's private key in PEM (PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes `<region>.pem` and `<region>.key` (0600) into `dir`; never overwrites.
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        let cert = dir.join(format!("{}.pem", self.region));
        let key = dir.join(format!("{}.key", self.region));
        refuse_existing(&[&cert, &key])?;
        write_new(&cert, self.cert_pem.as_bytes(), false)?;
        write_new(&key, self.key_pem.as_bytes(), true)
    }

    /// The identity a mesh runs with, trusting `ca`.
    pub fn identity(&self, ca: &ClusterCa) -> Result<Identity, CertError> {
        Identity::from_pem(&ca.cert_pem, &self.cert_pem, &self.key_pem)
    }
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cluster", &self.cluster)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// A cluster certificate authority: signs the region certificates every peer trusts.
pub struct ClusterCa {
    cluster: String,
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl ClusterCa {
    /// Creates a new CA for `cluster`, valid for [`CA_VALIDITY`].
    pub fn new(cluster: &str, alg: KeyAlgorithm) -> Result<Self, CertError> {
        validate_cluster(cluster)?;
        let key = KeyPair::generate_for(alg.rcgen())?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        // A random tag keeps two CAs for the same cluster name apart: a peer from the other
        // one is then an unknown issuer, not a bad signature.
        let tag: u32 = rand::random();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Meridian cluster CA ({cluster}) {tag:08x}"),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, cluster);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, Validity::from_now(CA_VALIDITY));
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cluster: cluster.to_owned(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads `ca.pem` and `ca.key` from `dir` (to issue more region certificates).
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let cert_pem = read_text(&cert_path)?;
        let key_pem = read_text(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CertError::Pem {
            path: key_path.clone(),
            why: format!("no usable CA key: {e}"),
        })?;
        let der = one_cert(cert_pem.as_bytes(), &cert_path)?;
        let cluster = ca_cluster(&der, &cert_path)?;
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(ClusterCa {
            cluster,
            cert_pem,
            key_pem,
            issuer,
        })
    }

    /// The cluster this CA was created for.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The CA certificate in PEM, to distribute to every region.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `ca.pem` and `ca.key` (0600) into `dir`; never overwrites.
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        let cert = dir.join("ca.pem");
        let key = dir.join("ca.key");
        refuse_existing(&[&cert, &key])?;
        write_new(&cert, self.cert_pem.as_bytes(), false)?;
        write_new(&key, self.key_pem.as_bytes(), true)
    }

    /// Issues a region certificate with both server and client authentication usages.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedCert, CertError> {
        validate_cluster(&spec.cluster)?;
        validate_region(&spec.region)?;
        let key = KeyPair::generate_for(spec.alg.rcgen())?;
        let mut params = CertificateParams::new(vec![server_name(&spec.region)])?;
        params.subject_alt_names.push(SanType::URI(
            identity_uri(&spec.cluster, &spec.region).try_into()?,
        ));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, spec.region.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, spec.cluster.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, spec.validity);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cluster: spec.cluster.clone(),
            region: spec.region.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// Generates a cluster CA and one certificate per region and writes them into `dir`
/// (created if missing). This is what `meridian certs init` runs.
///
/// Refuses, before writing anything, if any of the files already exists.
pub fn generate(
    dir: &Path,
    cluster: &str,
    regions: &[String],
    alg: KeyAlgorithm,
) -> Result<(), CertError> {
    for region in regions {
        validate_region(region)?;
    }
    let ca = ClusterCa::new(cluster, alg)?;
    let leaves = regions
        .iter()
        .map(|r| ca.issue(&LeafSpec::new(&ca, r, alg)))
        .collect::<Result<Vec<_>, _>>()?;
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let paths = file_names(dir, regions);
    refuse_existing(&paths.iter().collect::<Vec<_>>())?;
    ca.write(dir)?;
    for leaf in &leaves {
        leaf.write(dir)?;
    }
    Ok(())
}

/// Generates a CA and one identity per region in memory, without touching the filesystem:
/// for tests and simulations that start whole clusters in one process.
pub fn generate_identities(
    cluster: &str,
    regions: &[String],
    alg: KeyAlgorithm,
) -> Result<BTreeMap<String, Identity>, CertError> {
    let ca = ClusterCa::new(cluster, alg)?;
    regions
        .iter()
        .map(|r| {
            let id = ca.issue(&LeafSpec::new(&ca, r, alg))?.identity(&ca)?;
            Ok((r.clone(), id))
        })
        .collect()
}

/// Loads `region`'s identity from `dir` (`ca.pem`, `<region>.pem`, `<region>.key`).
///
/// The cluster is the one named in the region's certificate; the certificate must name
/// `region`.
pub fn load(dir: &Path, region: &str) -> Result<Identity, CertError> {
    validate_region(region)?;
    let ca_path = dir.join("ca.pem");
    let cert_path = dir.join(format!("{region}.pem"));
    let key_path = dir.join(format!("{region}.key"));
    let ca_cert = one_cert(read_text(&ca_path)?.as_bytes(), &ca_path)?;
    let chain = cert_chain(read_text(&cert_path)?.as_bytes(), &cert_path)?;
    let key = PrivateKeyDer::from_pem_slice(read_text(&key_path)?.as_bytes()).map_err(|e| {
        CertError::Pem {
            path: key_path.clone(),
            why: format!("no usable private key: {e}"),
        }
    })?;
    let leaf = parse_identity(&chain[0])?;
    if leaf.region != region {
        return Err(CertError::RegionMismatch {
            path: cert_path,
            expected: region.to_owned(),
            found: leaf.region,
        });
    }
    Ok(Identity {
        cluster: leaf.cluster,
        region: leaf.region,
        ca_cert,
        cert_chain: chain,
        key,
    })
}

/// Whether `dir` holds the CA files and a certificate and key for every region in `regions`.
pub fn exists(dir: &Path, regions: &[String]) -> bool {
    file_names(dir, regions).iter().all(|p| p.is_file())
}

fn file_names(dir: &Path, regions: &[String]) -> Vec<PathBuf> {
    let mut paths = vec![dir.join("ca.pem"), dir.join("ca.key")];
    for r in regions {
        paths.push(dir.join(format!("{r}.pem")));
        paths.push(dir.join(format!("{r}.key")));
    }
    paths
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
}

fn random_serial() -> SerialNumber {
    // 16 random bytes with the top bit clear: a positive serial, unique in practice.
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn ca_cluster(der: &CertificateDer<'_>, path: &Path) -> Result<String, CertError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| CertError::Pem {
            path: path.to_owned(),
            why: format!("unparseable CA certificate: {e}"),
        })?;
    let cluster = cert
        .subject()
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .ok_or_else(|| CertError::Pem {
            path: path.to_owned(),
            why: "CA certificate has no organisation (O) naming its cluster".into(),
        })?;
    validate_cluster(cluster)?;
    Ok(cluster.to_owned())
}

fn read_text(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

fn cert_chain(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            path: path.to_owned(),
            why: format!("bad PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(CertError::Pem {
            path: path.to_owned(),
            why: "no CERTIFICATE block".into(),
        });
    }
    Ok(chain)
}

fn one_cert(pem: &[u8], path: &Path) -> Result<CertificateDer<'static>, CertError> {
    let mut chain = cert_chain(pem, path)?;
    if chain.len() != 1 {
        return Err(CertError::Pem {
            path: path.to_owned(),
            why: format!("expected one CERTIFICATE block, found {}", chain.len()),
        });
    }
    Ok(chain.remove(0))
}

fn refuse_existing(paths: &[&PathBuf]) -> Result<(), CertError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(CertError::AlreadyExists { path: (*p).clone() }),
        None => Ok(()),
    }
}

/// Creates `path` (failing if it exists) and writes `data`. Secrets get mode 0600 from the
/// `open` call itself, so the file is never readable by others, not even briefly.
fn write_new(path: &Path, data: &[u8], secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::AlreadyExists {
                path: path.to_owned(),
            }
        } else {
            io(e)
        }
    })?;
    file.write_all(data).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_names() {
        for ok in ["a", "eu-west", "us-east-1", "123", &"x".repeat(32)] {
            validate_region(ok).unwrap();
        }
        for bad in ["", "EU", "eu_west", "-a", "a-", "a.b", &"x".repeat(33)] {
            assert!(validate_region(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cluster_names() {
        validate_cluster("prod.eu_1-A").unwrap();
        assert!(validate_cluster("").is_err());
        assert!(validate_cluster("a/b").is_err());
        assert!(validate_cluster(&"c".repeat(65)).is_err());
    }

    #[test]
    fn leaf_names_cluster_and_region() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519] {
            let ca = ClusterCa::new("prod", alg).unwrap();
            let leaf = ca.issue(&LeafSpec::new(&ca, "eu-west", alg)).unwrap();
            let id = leaf.identity(&ca).unwrap();
            assert_eq!(
                (id.cluster.as_str(), id.region.as_str()),
                ("prod", "eu-west")
            );
            let parsed = parse_identity(&id.cert_chain[0]).unwrap();
            assert_eq!(parsed.cluster, "prod");
            assert_eq!(parsed.region, "eu-west");
        }
    }

    #[test]
    fn ca_is_not_a_region_certificate() {
        let ca = ClusterCa::new("prod", KeyAlgorithm::EcdsaP256).unwrap();
        let der = one_cert(ca.cert_pem().as_bytes(), Path::new("ca")).unwrap();
        let err = parse_identity(&der).unwrap_err().to_string();
        assert!(err.contains("no subjectAltName"), "{err}");
    }

    #[test]
    fn debug_never_prints_keys() {
        let ids = generate_identities("c", &["a".into()], KeyAlgorithm::Ed25519).unwrap();
        let text = format!("{:?}", ids["a"]);
        assert!(!text.contains("PRIVATE"), "{text}");
        assert!(!text.contains("key:"), "{text}");
    }
}
