//! A redis-server that also listens with TLS, for `rediss://` tests: a
//! throw-away certificate authority and a server certificate for
//! 127.0.0.1, both made with the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::RedisServer;

/// A [`RedisServer`] with a TLS port beside its plain one.
pub struct TlsRedis {
    /// The server; its plain port stays open for set-up and checks.
    pub server: RedisServer,
    tls_port: u16,
    certs: TempDir,
}

impl TlsRedis {
    /// Makes the certificates and starts the server.
    pub fn start() -> Self {
        let certs = tempfile::tempdir().expect("temp dir for certificates");
        let dir = certs.path();
        openssl(
            dir,
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA"],
            &["-keyout", "ca.key", "-out", "ca.pem"],
        );
        openssl(
            dir,
            &["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"],
            &["-keyout", "server.key", "-out", "server.csr"],
        );
        openssl(
            dir,
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other CA"],
            &["-keyout", "other.key", "-out", "other.pem"],
        );
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write san.ext");
        openssl(
            dir,
            &["x509", "-req", "-days", "1", "-CAcreateserial"],
            &["-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-extfile", "san.ext", "-out", "server.pem"],
        );
        let tls_port = crate::free_port();
        let path = |name: &str| dir.join(name).display().to_string();
        let server = RedisServer::start_with_extra(vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ]);
        Self { server, tls_port, certs }
    }

    /// `rediss://127.0.0.1:TLS-PORT`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    /// The port that speaks TLS.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// The PEM file of the authority that signed the server's certificate,
    /// for `SSL_CERT_FILE`.
    pub fn ca_file(&self) -> PathBuf {
        self.certs.path().join("ca.pem")
    }

    /// The PEM file of an authority that signed nothing here.
    pub fn other_ca_file(&self) -> PathBuf {
        self.certs.path().join("other.pem")
    }
}

fn openssl(dir: &Path, args: &[&str], files: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).args(files).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
