//! Certificates a test makes for itself ([`Pki`]): a CA, a server certificate for `localhost` and
//! `127.0.0.1` signed by it, a client certificate signed by it (for servers that verify clients),
//! and a second, unrelated CA that a "wrong CA" test trusts instead. All PEM files in one
//! tempdir, removed on drop. Made with rcgen (ECDSA P-256).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

use super::fixture_dir;

/// The PEM files of one test's certificates.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    /// Generates everything (a few milliseconds).
    pub fn generate() -> Pki {
        let dir = fixture_dir("pki");
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();

        let (ca_params, ca_key) = ca("testkit CA");
        write("ca.pem", ca_params.self_signed(&ca_key).unwrap().pem());
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        server.distinguished_name.push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // Redis checks a client certificate with the server's own usage too: allow both.
        server.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        write("server.pem", server.signed_by(&server_key, &issuer).unwrap().pem());
        write("server-key.pem", server_key.serialize_pem());

        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, "testkit client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        write("client.pem", client.signed_by(&client_key, &issuer).unwrap().pem());
        write("client-key.pem", client_key.serialize_pem());

        let (other_params, other_key) = ca("unrelated CA");
        write("other-ca.pem", other_params.self_signed(&other_key).unwrap().pem());
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA that signed the server and client certificates.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A CA that signed nothing here: trusting it instead of [`Pki::ca`] must fail.
    pub fn other_ca(&self) -> PathBuf {
        self.path("other-ca.pem")
    }

    /// The server certificate (`localhost`, `127.0.0.1`) and its key.
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (self.path("server.pem"), self.path("server-key.pem"))
    }

    /// The client certificate and its key.
    pub fn client(&self) -> (PathBuf, PathBuf) {
        (self.path("client.pem"), self.path("client-key.pem"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    (params, key)
}
