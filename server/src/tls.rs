//! TLS for the HTTP and gRPC ports (rustls, ring provider). Each port that serves TLS holds a
//! [`ServerTls`]: its certificate, key and (for mutual TLS) client CA files, loaded at start-up,
//! where any problem is a start-up error, and reloaded when the files change: every new
//! connection first checks the files' metadata (size, times, inode) and, when it moved, builds
//! a fresh configuration, so a renewed certificate is served without a restart. A reload that
//! fails (say the key was not replaced yet) keeps the previous configuration and logs why;
//! the next change to the files tries again. Connections already open keep their session.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

/// How long a client may take to finish the TLS handshake before its connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ALPN protocols of the HTTP port: HTTP/2 or HTTP/1.1, as the client prefers.
pub const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// ALPN protocols of the gRPC port: HTTP/2 only (gRPC clients insist on it).
pub const GRPC_ALPN: &[&[u8]] = &[b"h2"];

/// The files one port's TLS is made of, as its flags name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The protocol whose flags these are (`http` or `grpc`), for messages.
    pub protocol: &'static str,
    /// PEM certificate chain the server presents (`--<protocol>-server-cert`).
    pub cert: PathBuf,
    /// PEM private key of that certificate (`--<protocol>-server-key`).
    pub key: PathBuf,
    /// PEM CA certificates that must have signed a client's certificate
    /// (`--<protocol>-root-cert`); `Some` only with mutual TLS.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The TLS files of a port from its flags (tritonserver's meaning): `None` where TLS is
    /// off. `mutual` turns TLS on by itself and needs the root certificate; a certificate and
    /// a key are needed whenever TLS is on.
    pub fn from_flags(
        protocol: &'static str,
        use_ssl: bool,
        mutual: bool,
        cert: Option<&Path>,
        key: Option<&Path>,
        root: Option<&Path>,
    ) -> Result<Option<TlsFiles>, String> {
        if !use_ssl && !mutual {
            return Ok(None);
        }
        let switch = if mutual {
            format!("--{protocol}-use-ssl-mutual")
        } else {
            format!("--{protocol}-use-ssl")
        };
        let needed = |path: Option<&Path>, flag: &str, what: &str| {
            path.map(Path::to_path_buf)
                .ok_or_else(|| format!("{switch} needs --{protocol}-{flag} ({what})"))
        };
        let cert = needed(
            cert,
            "server-cert",
            "the PEM certificate chain the server presents",
        )?;
        let key = needed(key, "server-key", "the PEM private key of that certificate")?;
        let client_ca = if mutual {
            Some(needed(
                root,
                "root-cert",
                "the PEM CA certificates that sign the clients' certificates",
            )?)
        } else {
            None
        };
        Ok(Some(TlsFiles {
            protocol,
            cert,
            key,
            client_ca,
        }))
    }

    /// The ALPN protocols the port offers: gRPC needs HTTP/2, HTTP takes either.
    fn alpn(&self) -> &'static [&'static [u8]] {
        if self.protocol == "grpc" {
            GRPC_ALPN
        } else {
            HTTP_ALPN
        }
    }

    /// What the files look like on disk now; a change means they were rewritten or replaced.
    fn stamp(&self) -> Vec<Option<FileStamp>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|path| FileStamp::of(path))
            .collect()
    }
}

/// The metadata that changes when a file is rewritten or replaced (a rename over it, or a
/// symlink pointed elsewhere, as Kubernetes does with mounted secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    /// Size in bytes.
    len: u64,
    /// Last modification.
    modified: Option<SystemTime>,
    /// Last status change (ctime) in nanoseconds.
    changed: i128,
    /// Device and inode.
    identity: (u64, u64),
}

impl FileStamp {
    /// The stamp of the file at `path` (symlinks followed); `None` where it cannot be read.
    fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        use std::os::unix::fs::MetadataExt;
        let changed = i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec());
        let identity = (meta.dev(), meta.ino());
        Some(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            changed,
            identity,
        })
    }
}

/// Reads a file a flag names, saying which flag and file where it cannot.
fn read(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} '{}': cannot read it: {e}", path.display()))
}

/// The certificates of a PEM file (`what` says what they are for, in messages).
fn certificates(
    path: &Path,
    flag: &str,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path, flag)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{flag} '{}': not a PEM file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} '{}': no PEM certificate (-----BEGIN CERTIFICATE-----) in it; {what}",
            path.display()
        ));
    }
    Ok(certs)
}

/// Builds a rustls server configuration from the files as they are now.
fn build(files: &TlsFiles) -> Result<ServerConfig, String> {
    let protocol = files.protocol;
    let cert_flag = format!("--{protocol}-server-cert");
    let key_flag = format!("--{protocol}-server-key");
    let chain = certificates(
        &files.cert,
        &cert_flag,
        "it must hold the server's certificate chain",
    )?;
    let key_pem = read(&files.key, &key_flag)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{key_flag} '{}': no PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
            files.key.display()
        ),
        e => format!(
            "{key_flag} '{}': not a PEM private key: {e}",
            files.key.display()
        ),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let root_flag = format!("--{protocol}-root-cert");
            let mut roots = RootCertStore::empty();
            let certs = certificates(
                ca,
                &root_flag,
                "it must hold the CA certificates that sign the clients' certificates",
            )?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    format!(
                        "{root_flag} '{}': not a usable CA certificate: {e}",
                        ca.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| {
                    format!(
                        "{root_flag} '{}': cannot verify clients with it: {e}",
                        ca.display()
                    )
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{key_flag} '{}' is not the private key of the certificate in {cert_flag} '{}'",
            files.key.display(),
            files.cert.display()
        ),
        e => format!(
            "{cert_flag} '{}' with {key_flag} '{}': {e}",
            files.cert.display(),
            files.key.display()
        ),
    })?;
    config.alpn_protocols = files.alpn().iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// What a [`ServerTls`] serves now.
struct Current {
    /// The files' stamps when they were last looked at.
    seen: Vec<Option<FileStamp>>,
    /// The configuration new connections get.
    config: Arc<ServerConfig>,
}

/// One port's TLS: accepts connections with the certificate its files hold, reloading them
/// when they change.
pub struct ServerTls {
    /// The files.
    files: TlsFiles,
    /// The configuration in use and the stamps it was built from.
    current: Mutex<Current>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the files; any problem with them is an error that names the flag and file.
    pub fn load(files: TlsFiles) -> Result<ServerTls, String> {
        let seen = files.stamp();
        let config = Arc::new(build(&files)?);
        Ok(ServerTls {
            files,
            current: Mutex::new(Current { seen, config }),
        })
    }

    /// The files this port serves.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration for a new connection: the files are reloaded first if they changed.
    fn config(&self) -> Arc<ServerConfig> {
        let stamp = self.files.stamp();
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.seen != stamp {
            current.seen = stamp;
            match build(&self.files) {
                Ok(config) => {
                    current.config = Arc::new(config);
                    tracing::info!(
                        "{}: reloaded the TLS certificate from '{}'",
                        self.files.protocol,
                        self.files.cert.display()
                    );
                }
                Err(e) => tracing::warn!(
                    "{}: the TLS files changed but cannot be used, so connections keep the \
                     previous certificate: {e}",
                    self.files.protocol
                ),
            }
        }
        Arc::clone(&current.config)
    }

    /// Runs the server side of the TLS handshake on a new connection, within
    /// [`HANDSHAKE_TIMEOUT`]. A client that does not speak TLS, or (with mutual TLS) has no
    /// certificate signed by the root CA, fails here.
    pub async fn accept<IO>(&self, io: IO) -> io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = TlsAcceptor::from(self.config());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the TLS handshake did not finish within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_off_unless_a_switch_is_on() {
        let cert = Path::new("c.pem");
        let tls = TlsFiles::from_flags("grpc", false, false, Some(cert), Some(cert), None);
        assert_eq!(tls, Ok(None));
    }

    #[test]
    fn tls_needs_a_certificate_and_a_key() {
        let cert = Path::new("c.pem");
        let key = Path::new("k.pem");
        let e = TlsFiles::from_flags("grpc", true, false, None, Some(key), None).unwrap_err();
        assert!(e.contains("--grpc-use-ssl needs --grpc-server-cert"), "{e}");
        let e = TlsFiles::from_flags("http", true, false, Some(cert), None, None).unwrap_err();
        assert!(e.contains("--http-use-ssl needs --http-server-key"), "{e}");
        let files = TlsFiles::from_flags("http", true, false, Some(cert), Some(key), Some(cert))
            .unwrap()
            .unwrap();
        assert_eq!(files.cert, cert);
        assert_eq!(files.key, key);
        assert_eq!(
            files.client_ca, None,
            "the root is used only with mutual TLS"
        );
    }

    #[test]
    fn mutual_tls_turns_tls_on_and_needs_the_root_certificate() {
        let cert = Path::new("c.pem");
        let key = Path::new("k.pem");
        let root = Path::new("ca.pem");
        let e = TlsFiles::from_flags("grpc", false, true, Some(cert), Some(key), None).unwrap_err();
        assert!(
            e.contains("--grpc-use-ssl-mutual needs --grpc-root-cert"),
            "{e}"
        );
        let files = TlsFiles::from_flags("grpc", false, true, Some(cert), Some(key), Some(root))
            .unwrap()
            .unwrap();
        assert_eq!(files.client_ca.as_deref(), Some(root));
    }

    #[test]
    fn unreadable_and_non_pem_files_are_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("ferrum-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, b"not a certificate").unwrap();
        let files = TlsFiles {
            protocol: "http",
            cert: dir.join("missing.pem"),
            key: garbage.clone(),
            client_ca: None,
        };
        let e = ServerTls::load(files.clone()).err().unwrap();
        assert!(e.contains("--http-server-cert"), "{e}");
        assert!(e.contains("missing.pem': cannot read it"), "{e}");
        let files = TlsFiles {
            cert: garbage.clone(),
            ..files
        };
        let e = ServerTls::load(files).err().unwrap();
        assert!(e.contains("no PEM certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
