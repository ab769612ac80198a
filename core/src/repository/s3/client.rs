//! A small S3 client: ListObjectsV2 (every page) and GetObject into a file, signed with
//! SigV4, over HTTP or HTTPS (rustls, with the Mozilla root certificates). Custom endpoints
//! are addressed path-style (`http://host:port/bucket/key`), Amazon S3 virtual-hosted style
//! where the bucket name allows it.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use super::credentials::{Env, Settings};
use super::location::{Endpoint, S3Location, Scheme};
use super::sigv4;
use crate::error::{Error, Result};

/// How long connecting to the store may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one read or write on a connection may stall.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts of a request that failed in a way that may pass (connection, 5xx).
const ATTEMPTS: u32 = 3;
/// Pause before the first retry; each later one waits three times longer.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Most pages one listing reads (1000 keys each).
const MAX_PAGES: usize = 100_000;
/// Largest error or listing body read into memory.
const MAX_BODY: u64 = 64 << 20;

/// An object as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The full key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag, without quotes (empty when the store gives none).
    pub etag: String,
}

/// What kind of failure an [`S3Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3ErrorKind {
    /// The endpoint could not be reached (name resolution, connection, TLS, timeout).
    Unreachable,
    /// The bucket does not exist.
    NoSuchBucket,
    /// The credentials were refused or do not allow the request.
    Denied,
    /// The object changed or disappeared since it was listed.
    Changed,
    /// Anything else.
    Failed,
}

/// A failed S3 request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Error {
    /// The kind of failure.
    pub kind: S3ErrorKind,
    /// What went wrong, for the operator.
    pub message: String,
}

impl S3Error {
    fn new(kind: S3ErrorKind, message: impl Into<String>) -> Self {
        S3Error {
            kind,
            message: message.into(),
        }
    }
}

impl From<S3Error> for Error {
    fn from(e: S3Error) -> Self {
        match e.kind {
            S3ErrorKind::NoSuchBucket => Error::not_found(e.message),
            S3ErrorKind::Denied => Error::invalid(e.message),
            _ => Error::unavailable(e.message),
        }
    }
}

/// Where requests go: the base URL, the Host header and the bucket's part of the path.
struct Target {
    /// `scheme://authority`.
    base: String,
    /// The Host header.
    authority: String,
    /// `/bucket` (path-style) or empty (virtual-hosted).
    bucket_path: String,
}

/// A client for one bucket.
pub struct Client {
    /// The repository's location.
    location: S3Location,
    /// The endpoint from `AWS_ENDPOINT_URL(_S3)`, for a location that names none.
    env_endpoint: Option<Endpoint>,
    /// The HTTP agent (keeps connections).
    agent: ureq::Agent,
    /// The bucket's region, once the store said it differs from the configured one.
    learned_region: Mutex<Option<String>>,
}

impl Client {
    /// A client for a location; `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` give the endpoint
    /// of a location that names none.
    pub fn new(location: S3Location, env: Env) -> Result<Client> {
        let env_endpoint = match location.endpoint {
            Some(_) => None,
            None => env("AWS_ENDPOINT_URL_S3")
                .or_else(|| env("AWS_ENDPOINT_URL"))
                .map(|url| Endpoint::parse_url(&url))
                .transpose()?,
        };
        let mut agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(IO_TIMEOUT)
            .timeout_write(IO_TIMEOUT)
            .redirects(0)
            .user_agent(concat!("ferrum/", env!("CARGO_PKG_VERSION")));
        if let Some(bundle) = env("AWS_CA_BUNDLE") {
            agent = agent.tls_config(ca_bundle_config(Path::new(&bundle))?);
        }
        let agent = agent.build();
        Ok(Client {
            location,
            env_endpoint,
            agent,
            learned_region: Mutex::new(None),
        })
    }

    /// The repository's location.
    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// The endpoint as a URL, for messages and as the cache key: `https://host[:port]` or
    /// `aws` for Amazon S3.
    pub fn endpoint_name(&self) -> String {
        match self.custom_endpoint() {
            Some(endpoint) => endpoint.base_url(),
            None => "aws".to_string(),
        }
    }

    fn custom_endpoint(&self) -> Option<&Endpoint> {
        self.location
            .endpoint
            .as_ref()
            .or(self.env_endpoint.as_ref())
    }

    fn target(&self, region: &str) -> Target {
        let bucket = &self.location.bucket;
        if let Some(endpoint) = self.custom_endpoint() {
            return Target {
                base: endpoint.base_url(),
                authority: endpoint.authority(),
                bucket_path: format!("/{}", sigv4::uri_encode(bucket, false)),
            };
        }
        let domain = if region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        // Virtual-hosted style needs a bucket name that is one DNS label (dots would break
        // the certificate's wildcard).
        let dns_label = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !bucket.starts_with('-')
            && !bucket.ends_with('-');
        let (authority, bucket_path) = if dns_label {
            (format!("{bucket}.s3.{region}.{domain}"), String::new())
        } else {
            (
                format!("s3.{region}.{domain}"),
                format!("/{}", sigv4::uri_encode(bucket, false)),
            )
        };
        Target {
            base: format!("{}://{authority}", Scheme::Https.as_str()),
            authority,
            bucket_path,
        }
    }

    /// Sends a signed GET; retries what may pass, follows the store's word on the bucket's
    /// region once. `path` is the encoded part after the bucket (`/key` or empty).
    fn get(
        &self,
        settings: &Settings,
        path: &str,
        query: &[(String, String)],
        extra: &[(String, String)],
    ) -> Result<ureq::Response, S3Error> {
        let mut attempt = 0;
        let mut redirected = false;
        loop {
            let region = self
                .learned_region
                .lock()
                .clone()
                .unwrap_or_else(|| settings.region.clone());
            let target = self.target(&region);
            let mut full_path = format!("{}{path}", target.bucket_path);
            if full_path.is_empty() {
                full_path.push('/');
            }
            let query_string = sigv4::canonical_query(query);
            let url = if query_string.is_empty() {
                format!("{}{full_path}", target.base)
            } else {
                format!("{}{full_path}?{query_string}", target.base)
            };
            let date = sigv4::amz_date(SystemTime::now());
            let mut headers = vec![
                ("host".to_string(), target.authority.clone()),
                (
                    "x-amz-content-sha256".to_string(),
                    sigv4::EMPTY_PAYLOAD_SHA256.to_string(),
                ),
                ("x-amz-date".to_string(), date.clone()),
            ];
            if let Some(token) = settings
                .credentials
                .as_ref()
                .and_then(|c| c.session_token.as_ref())
            {
                headers.push(("x-amz-security-token".to_string(), token.clone()));
            }
            headers.extend(extra.iter().cloned());
            let mut request = self.agent.get(&url);
            for (name, value) in &headers {
                request = request.set(name, value);
            }
            if let Some(credentials) = &settings.credentials {
                let signed = sigv4::Request {
                    method: "GET",
                    path: &full_path,
                    query,
                    headers: &headers,
                    payload_sha256: sigv4::EMPTY_PAYLOAD_SHA256,
                };
                request = request.set(
                    "authorization",
                    &sigv4::authorization(credentials, &region, &date, &signed),
                );
            }
            let failure = match request.call() {
                Ok(response) if response.status() < 300 => return Ok(response),
                Ok(response) => self.status_error(response, settings),
                Err(ureq::Error::Status(_, response)) => self.status_error(response, settings),
                Err(ureq::Error::Transport(e)) => {
                    let retry = !matches!(
                        e.kind(),
                        ureq::ErrorKind::Dns
                            | ureq::ErrorKind::InvalidUrl
                            | ureq::ErrorKind::UnknownScheme
                    );
                    Failure {
                        error: S3Error::new(
                            S3ErrorKind::Unreachable,
                            format!("cannot reach the object store at {}: {e}", target.base),
                        ),
                        retry,
                        region: None,
                    }
                }
            };
            if let Some(region) = failure.region.filter(|_| !redirected) {
                tracing::info!(
                    "bucket '{}' is in region {region}; using it",
                    self.location.bucket
                );
                *self.learned_region.lock() = Some(region);
                redirected = true;
                continue;
            }
            attempt += 1;
            if !failure.retry || attempt >= ATTEMPTS {
                return Err(failure.error);
            }
            std::thread::sleep(FIRST_BACKOFF * 3u32.pow(attempt - 1));
        }
    }

    /// Turns an error status into a failure, reading the store's error document.
    fn status_error(&self, response: ureq::Response, settings: &Settings) -> Failure {
        let status = response.status();
        let current = self
            .learned_region
            .lock()
            .clone()
            .unwrap_or_else(|| settings.region.clone());
        let header_region = response.header("x-amz-bucket-region").map(str::to_string);
        let mut body = String::new();
        let _ = response
            .into_reader()
            .take(MAX_BODY)
            .read_to_string(&mut body);
        let ErrorDocument {
            code,
            message,
            region,
        } = error_document(&body);
        // The bucket's region, when the store says it is not the one signed for.
        let region = header_region
            .or(region)
            .filter(|r| !r.is_empty() && *r != current);
        let what = match (&code, &message) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.clone(),
            (None, Some(m)) => m.clone(),
            (None, None) => format!("HTTP {status}"),
        };
        let location = &self.location;
        let code = code.unwrap_or_default();
        let (kind, message) = match (status, code.as_str()) {
            (_, "NoSuchBucket") => (
                S3ErrorKind::NoSuchBucket,
                format!(
                    "bucket '{}' does not exist at {} ({what})",
                    location.bucket,
                    self.endpoint_description()
                ),
            ),
            (_, "PreconditionFailed" | "NoSuchKey") | (412, _) => {
                (S3ErrorKind::Changed, format!("{what} (HTTP {status})"))
            }
            (401 | 403, _)
            | (
                _,
                "AccessDenied"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired",
            ) => (
                S3ErrorKind::Denied,
                format!(
                    "access to {location} was denied: {what} (credentials: {})",
                    settings.source
                ),
            ),
            _ => (
                S3ErrorKind::Failed,
                format!("request to {location} failed: HTTP {status}: {what}"),
            ),
        };
        Failure {
            error: S3Error::new(kind, message),
            retry: matches!(status, 500 | 502 | 503 | 504),
            region,
        }
    }

    fn endpoint_description(&self) -> String {
        match self.custom_endpoint() {
            Some(endpoint) => endpoint.base_url(),
            None => "Amazon S3".to_string(),
        }
    }

    /// Every object whose key starts with `prefix`, in key order.
    pub fn list(&self, settings: &Settings, prefix: &str) -> Result<Vec<ObjectInfo>, S3Error> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![
                ("list-type".to_string(), "2".to_string()),
                ("prefix".to_string(), prefix.to_string()),
            ];
            if let Some(token) = &token {
                query.push(("continuation-token".to_string(), token.clone()));
            }
            let response = self.get(settings, "", &query, &[])?;
            let mut body = String::new();
            response
                .into_reader()
                .take(MAX_BODY)
                .read_to_string(&mut body)
                .map_err(|e| {
                    S3Error::new(
                        S3ErrorKind::Unreachable,
                        format!("listing {} broke off: {e}", self.location),
                    )
                })?;
            let page = parse_listing(&body).map_err(|why| {
                S3Error::new(
                    S3ErrorKind::Failed,
                    format!("the listing of {} cannot be read: {why}", self.location),
                )
            })?;
            objects.extend(page.objects);
            match page.next {
                Some(next) => token = Some(next),
                None => return Ok(objects),
            }
        }
        Err(S3Error::new(
            S3ErrorKind::Failed,
            format!(
                "the listing of {} has more than {MAX_PAGES} pages",
                self.location
            ),
        ))
    }

    /// Downloads an object into a new file, checking that it is still the object listed
    /// (ETag and size); [`S3ErrorKind::Changed`] when it is not.
    pub fn download(
        &self,
        settings: &Settings,
        object: &ObjectInfo,
        dest: &Path,
    ) -> Result<(), S3Error> {
        let path = format!("/{}", sigv4::uri_encode(&object.key, true));
        let mut extra = Vec::new();
        if !object.etag.is_empty() {
            extra.push(("if-match".to_string(), format!("\"{}\"", object.etag)));
        }
        let response = self.get(settings, &path, &[], &extra)?;
        let changed = |what: String| {
            S3Error::new(
                S3ErrorKind::Changed,
                format!("object '{}' {what} since it was listed", object.key),
            )
        };
        let etag = response.header("etag").map(unquote).unwrap_or_default();
        if !object.etag.is_empty() && !etag.is_empty() && etag != object.etag {
            return Err(changed(format!(
                "changed (ETag {etag}, listed {})",
                object.etag
            )));
        }
        let local = |e: std::io::Error| {
            S3Error::new(
                S3ErrorKind::Failed,
                format!("cannot write '{}': {e}", dest.display()),
            )
        };
        let mut file = std::fs::File::create(dest).map_err(local)?;
        let mut reader = response.into_reader();
        let mut buffer = vec![0u8; 256 * 1024];
        let mut written: u64 = 0;
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(S3Error::new(
                        S3ErrorKind::Unreachable,
                        format!("download of '{}' broke off: {e}", object.key),
                    ));
                }
            };
            written += n as u64;
            if written > object.size {
                return Err(changed("grew".to_string()));
            }
            file.write_all(&buffer[..n]).map_err(local)?;
        }
        if written != object.size {
            return Err(changed(format!(
                "has {written} bytes instead of the {} listed",
                object.size
            )));
        }
        file.sync_all().map_err(local)?;
        Ok(())
    }
}

/// A TLS configuration that trusts the certificates of a PEM bundle (`AWS_CA_BUNDLE`, as the
/// AWS tools read it) instead of the Mozilla root certificates.
fn ca_bundle_config(path: &Path) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let bad = |why: String| Error::invalid(format!("AWS_CA_BUNDLE '{}' {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("is not a PEM certificate bundle: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("holds a certificate that cannot be used: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".to_string()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A request that failed: the error, whether trying again may help, and the bucket's
/// region when the store named another one.
struct Failure {
    error: S3Error,
    retry: bool,
    region: Option<String>,
}

fn unquote(etag: &str) -> String {
    etag.trim().trim_matches('"').to_string()
}

/// What an S3 error document says.
#[derive(Debug, Default, PartialEq, Eq)]
struct ErrorDocument {
    /// The error code (`NoSuchBucket`, `AccessDenied`, ...).
    code: Option<String>,
    /// The message.
    message: Option<String>,
    /// The bucket's region, which some errors name.
    region: Option<String>,
}

/// Reads an S3 error document; an unreadable one says nothing.
fn error_document(body: &str) -> ErrorDocument {
    let Ok(doc) = roxmltree::Document::parse(body) else {
        return ErrorDocument::default();
    };
    let field = |name: &str| {
        doc.root_element()
            .children()
            .find(|n| n.is_element() && n.tag_name().name() == name)
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    ErrorDocument {
        code: field("Code"),
        message: field("Message"),
        region: field("Region"),
    }
}

/// One page of a ListObjectsV2 answer.
struct Page {
    /// Its objects.
    objects: Vec<ObjectInfo>,
    /// The continuation token of the next page, when there is one.
    next: Option<String>,
}

fn parse_listing(body: &str) -> std::result::Result<Page, String> {
    let doc = roxmltree::Document::parse(body).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    if root.tag_name().name() != "ListBucketResult" {
        return Err(format!(
            "expected a ListBucketResult, got {}",
            root.tag_name().name()
        ));
    }
    let text = |node: roxmltree::Node, name: &str| {
        node.children()
            .find(|n| n.is_element() && n.tag_name().name() == name)
            .map(|n| n.text().unwrap_or_default().to_string())
    };
    let mut objects = Vec::new();
    for contents in root
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == "Contents")
    {
        let key = text(contents, "Key").ok_or("an entry has no Key")?;
        let size = text(contents, "Size")
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("entry '{key}' has no valid Size"))?;
        let etag = text(contents, "ETag")
            .map(|e| unquote(&e))
            .unwrap_or_default();
        objects.push(ObjectInfo { key, size, etag });
    }
    let truncated = text(root, "IsTruncated").is_some_and(|t| t.trim() == "true");
    let next = text(root, "NextContinuationToken").filter(|t| !t.is_empty());
    if truncated && next.is_none() {
        return Err("the listing is truncated but gives no NextContinuationToken".to_string());
    }
    Ok(Page {
        objects,
        next: next.filter(|_| truncated),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listing_pages() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>models</Name><Prefix>repo/</Prefix><KeyCount>2</KeyCount>
  <IsTruncated>true</IsTruncated>
  <NextContinuationToken>tok/en=</NextContinuationToken>
  <Contents><Key>repo/m/config.pbtxt</Key><Size>12</Size>
    <ETag>&quot;abc&quot;</ETag></Contents>
  <Contents><Key>repo/m/1/a &amp; b.bin</Key><Size>0</Size><ETag>"d-2"</ETag></Contents>
</ListBucketResult>"#;
        let page = parse_listing(body).unwrap();
        assert_eq!(page.next.as_deref(), Some("tok/en="));
        assert_eq!(
            page.objects,
            vec![
                ObjectInfo {
                    key: "repo/m/config.pbtxt".into(),
                    size: 12,
                    etag: "abc".into()
                },
                ObjectInfo {
                    key: "repo/m/1/a & b.bin".into(),
                    size: 0,
                    etag: "d-2".into()
                },
            ]
        );
        let last = "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>";
        let page = parse_listing(last).unwrap();
        assert!(page.objects.is_empty() && page.next.is_none());
        assert!(parse_listing("<Error><Code>x</Code></Error>").is_err());
        assert!(parse_listing("not xml").is_err());
        let broken = "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>";
        assert!(parse_listing(broken).is_err());
    }

    #[test]
    fn reads_error_documents() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code>\
                    <Message>The specified bucket does not exist</Message></Error>";
        assert_eq!(
            error_document(body),
            ErrorDocument {
                code: Some("NoSuchBucket".to_string()),
                message: Some("The specified bucket does not exist".to_string()),
                region: None,
            }
        );
        let wrong_region = "<Error><Code>AuthorizationHeaderMalformed</Code>\
                            <Region>eu-west-1</Region></Error>";
        assert_eq!(
            error_document(wrong_region).region.as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(error_document(""), ErrorDocument::default());
    }

    #[test]
    fn a_ca_bundle_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let missing = ca_bundle_config(&dir.path().join("missing.pem")).unwrap_err();
        assert!(
            missing.message.contains("cannot be read"),
            "{}",
            missing.message
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let error = ca_bundle_config(&empty).unwrap_err();
        assert!(
            error.message.contains("holds no certificate"),
            "{}",
            error.message
        );
        let env = |name: &str| (name == "AWS_CA_BUNDLE").then(|| "/nonexistent/ca.pem".to_string());
        let location = S3Location::parse("s3://https://127.0.0.1:9443/b").unwrap();
        assert!(Client::new(location, &env).is_err());
    }

    #[test]
    fn addresses_amazon_and_custom_endpoints() {
        let env = |_: &str| None;
        let aws = Client::new(S3Location::parse("s3://my-models/r").unwrap(), &env).unwrap();
        let target = aws.target("eu-west-1");
        assert_eq!(target.base, "https://my-models.s3.eu-west-1.amazonaws.com");
        assert_eq!(target.bucket_path, "");
        let dotted = Client::new(S3Location::parse("s3://my.models/r").unwrap(), &env).unwrap();
        let target = dotted.target("cn-north-1");
        assert_eq!(target.base, "https://s3.cn-north-1.amazonaws.com.cn");
        assert_eq!(target.bucket_path, "/my.models");
        assert_eq!(aws.endpoint_name(), "aws");

        let local = S3Location::parse("s3://127.0.0.1:9000/models/r").unwrap();
        let custom = Client::new(local, &env).unwrap();
        let target = custom.target("us-east-1");
        assert_eq!(target.base, "http://127.0.0.1:9000");
        assert_eq!(target.authority, "127.0.0.1:9000");
        assert_eq!(target.bucket_path, "/models");

        let from_env = |name: &str| {
            (name == "AWS_ENDPOINT_URL").then(|| "https://minio.internal:9443".to_string())
        };
        let client = Client::new(S3Location::parse("s3://models").unwrap(), &from_env).unwrap();
        assert_eq!(client.endpoint_name(), "https://minio.internal:9443");
        assert_eq!(client.target("x").bucket_path, "/models");
        let bad = |name: &str| (name == "AWS_ENDPOINT_URL").then(|| "minio:9000".to_string());
        assert!(Client::new(S3Location::parse("s3://models").unwrap(), &bad).is_err());
    }
}
