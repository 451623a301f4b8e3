//! Certificates made at run time: a test CA ([`Ca`]) issuing server and
//! client leaves described by a [`Leaf`] (names, URI and IP SANs, subject,
//! validity), with rcgen; and, for the control plane's own TLS, a CA with a
//! server and a client certificate made by the openssl command.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::Path;
use std::process::Command;

/// A self-signed test CA.
pub struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    /// A CA named `cn` (its only subject field).
    pub fn new(cn: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        Ca(CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA"))
    }

    pub fn pem(&self) -> String {
        self.0.pem()
    }

    pub fn der(&self) -> Vec<u8> {
        self.0.der().to_vec()
    }

    /// Writes the CA certificate to `dir/file`.
    pub fn write(&self, dir: &Path, file: &str) {
        std::fs::write(dir.join(file), self.pem()).expect("write");
    }

    /// A leaf certificate signed by this CA, with a fresh key.
    pub fn issue(&self, leaf: &Leaf) -> Issued {
        let mut p = CertificateParams::new(leaf.dns.clone()).expect("params");
        if let Some(u) = &leaf.uri {
            p.subject_alt_names.push(SanType::URI(u.as_str().try_into().expect("uri")));
        }
        if let Some(ip) = &leaf.ip {
            p.subject_alt_names.push(SanType::IpAddress(ip.parse().expect("ip")));
        }
        for (t, v) in &leaf.subject {
            p.distinguished_name.push(t.clone(), v.as_str());
        }
        p.extended_key_usages =
            vec![if leaf.client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        if let Some(days) = leaf.valid_days {
            let now = time::OffsetDateTime::now_utc();
            p.not_before = now - time::Duration::hours(1);
            p.not_after = now + time::Duration::days(days);
        }
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.0).expect("sign");
        Issued { pem: cert.pem(), key: key.serialize_pem(), der: cert.der().to_vec() }
    }
}

/// What a leaf certificate says: built from [`server`] or [`client`].
#[derive(Clone)]
pub struct Leaf {
    dns: Vec<String>,
    uri: Option<String>,
    ip: Option<String>,
    subject: Vec<(DnType, String)>,
    client: bool,
    valid_days: Option<i64>,
}

/// A server certificate (extended key usage serverAuth) for the DNS names
/// `dns`, with an empty subject and rcgen's default validity.
pub fn server(dns: &[&str]) -> Leaf {
    Leaf {
        dns: dns.iter().map(|s| s.to_string()).collect(),
        uri: None,
        ip: None,
        subject: Vec::new(),
        client: false,
        valid_days: None,
    }
}

/// A client certificate (extended key usage clientAuth) for the DNS names `dns`.
pub fn client(dns: &[&str]) -> Leaf {
    Leaf { client: true, ..server(dns) }
}

impl Leaf {
    /// A URI SAN after the DNS names.
    pub fn uri(mut self, uri: &str) -> Leaf {
        self.uri = Some(uri.into());
        self
    }
    /// An IP SAN after the DNS names (and the URI).
    pub fn ip(mut self, ip: &str) -> Leaf {
        self.ip = Some(ip.into());
        self
    }
    /// A subject field, after those given before.
    pub fn subject(mut self, t: DnType, v: &str) -> Leaf {
        self.subject.push((t, v.into()));
        self
    }
    /// The subject's common name.
    pub fn cn(self, v: &str) -> Leaf {
        self.subject(DnType::CommonName, v)
    }
    /// Valid from an hour ago for `days` days.
    pub fn valid_days(mut self, days: i64) -> Leaf {
        self.valid_days = Some(days);
        self
    }
}

/// A leaf certificate and its key, as PEM, and the certificate's DER.
pub struct Issued {
    pub pem: String,
    pub key: String,
    pub der: Vec<u8>,
}

impl Issued {
    /// Writes `dir/<name>.pem` and `dir/<name>.key`.
    pub fn write(&self, dir: &Path, name: &str) {
        std::fs::write(dir.join(format!("{name}.pem")), &self.pem).expect("write");
        std::fs::write(dir.join(format!("{name}.key")), &self.key).expect("write");
    }
}

/// Makes a CA, a server certificate for localhost/127.0.0.1 and a client
/// certificate with openssl, in `dir`. Returns the paths of (ca, server
/// cert, server key, client cert, client key).
pub fn openssl_ca_server_client(dir: &Path) -> [String; 5] {
    let run = |args: &[&str]| {
        let out =
            Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is needed for the TLS tests");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=legate-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for who in ["server", "client"] {
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={who}"),
            "-keyout",
            &format!("{who}.key"),
            "-out",
            &format!("{who}.csr"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{who}.ext"),
            "-out",
            &format!("{who}.pem"),
        ]);
    }
    ["ca.pem", "server.pem", "server.key", "client.pem", "client.key"]
        .map(|f| dir.join(f).to_string_lossy().into_owned())
}
