//! Certificate files: generate, load back, permissions, refusal to overwrite, and a cluster
//! whose regions mutually authenticate from files written by `certs::generate`.

use std::path::Path;

use transport::certs::{self, CertError, ClusterCa, KeyAlgorithm, LeafSpec};

fn regions() -> Vec<String> {
    ["eu-west", "us-east", "ap-south"]
        .map(String::from)
        .to_vec()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn generate_then_load_every_region() {
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519] {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs_dir = dir.path().join("certs");
        assert!(!certs::exists(&certs_dir, &regions()));
        certs::generate(&certs_dir, "prod", &regions(), alg).expect("generate");
        assert!(certs::exists(&certs_dir, &regions()));
        assert!(!certs::exists(&certs_dir, &["other".to_owned()]));
        for region in regions() {
            let id = certs::load(&certs_dir, &region).expect("load");
            assert_eq!(id.cluster, "prod");
            assert_eq!(id.region, region);
            assert_eq!(id.cert_chain.len(), 1);
            let parsed = certs::parse_identity(&id.cert_chain[0]).expect("parse");
            assert_eq!(parsed.region, region);
        }
        let ca = ClusterCa::load(&certs_dir).expect("load CA");
        assert_eq!(ca.cluster(), "prod");
    }
}

#[cfg(unix)]
#[test]
fn private_keys_are_owner_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    certs::generate(dir.path(), "prod", &regions(), KeyAlgorithm::EcdsaP256).expect("generate");
    assert_eq!(mode(&dir.path().join("ca.key")), 0o600);
    for region in regions() {
        assert_eq!(
            mode(&dir.path().join(format!("{region}.key"))),
            0o600,
            "{region}"
        );
    }
}

#[test]
fn generate_never_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    certs::generate(dir.path(), "prod", &regions(), KeyAlgorithm::EcdsaP256).expect("generate");
    let before = std::fs::read(dir.path().join("ca.pem")).expect("read");
    let err = certs::generate(dir.path(), "prod", &regions(), KeyAlgorithm::EcdsaP256).unwrap_err();
    assert!(matches!(err, CertError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("ca.pem")).expect("read"),
        before
    );
}

#[test]
fn a_region_can_be_added_from_the_saved_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    certs::generate(dir.path(), "prod", &regions(), KeyAlgorithm::EcdsaP256).expect("generate");
    let ca = ClusterCa::load(dir.path()).expect("load CA");
    ca.issue(&LeafSpec::new(&ca, "sa-east", KeyAlgorithm::Ed25519))
        .expect("issue")
        .write(dir.path())
        .expect("write");
    let id = certs::load(dir.path(), "sa-east").expect("load");
    assert_eq!(
        (id.cluster.as_str(), id.region.as_str()),
        ("prod", "sa-east")
    );
    assert_eq!(
        id.ca_cert,
        certs::load(dir.path(), "eu-west").expect("load").ca_cert
    );
}

#[test]
fn bad_inputs_have_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = certs::generate(
        dir.path(),
        "prod",
        &["EU_West".to_owned()],
        KeyAlgorithm::EcdsaP256,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid region name \"EU_West\": may only contain a-z, 0-9 and '-'"
    );
    let err = certs::load(dir.path(), "eu-west").unwrap_err();
    assert!(err.to_string().contains("ca.pem"), "{err}");
    certs::generate(dir.path(), "prod", &regions(), KeyAlgorithm::EcdsaP256).expect("generate");
    // A certificate file renamed to another region is caught.
    std::fs::copy(dir.path().join("us-east.pem"), dir.path().join("xx.pem")).expect("copy");
    std::fs::copy(dir.path().join("us-east.key"), dir.path().join("xx.key")).expect("copy");
    let err = certs::load(dir.path(), "xx").unwrap_err();
    assert!(
        err.to_string()
            .contains("is for region \"us-east\", expected \"xx\""),
        "{err}"
    );
}
