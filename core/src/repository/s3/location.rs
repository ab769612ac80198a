//! Where an object-store repository lives: the `s3://` forms tritonserver accepts, and the
//! endpoint requests go to.
//!
//! - `s3://bucket/path/to/repository` — Amazon S3 (or the endpoint in `AWS_ENDPOINT_URL_S3` /
//!   `AWS_ENDPOINT_URL`, when set);
//! - `s3://host:port/bucket/path` — an S3-compatible store over HTTP;
//! - `s3://https://host:port/bucket/path` (or `http://`) — the same with the scheme spelled out.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};

/// The URL prefix of an S3 repository.
pub const S3_PREFIX: &str = "s3://";

/// Whether a `--model-repository` value names an S3 repository rather than a folder.
pub fn is_s3(path: &Path) -> bool {
    path.to_str().is_some_and(|p| p.starts_with(S3_PREFIX))
}

/// HTTP or HTTPS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// The scheme's name in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// An S3-compatible endpoint other than Amazon's (MinIO, Ceph, moto, ...), addressed path-style.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// HTTP or HTTPS.
    pub scheme: Scheme,
    /// Host name or address (an IPv6 address in brackets).
    pub host: String,
    /// Port, when one is given.
    pub port: Option<u16>,
}

impl Endpoint {
    /// `host[:port]`, as the Host header carries it (a scheme's default port left out).
    pub fn authority(&self) -> String {
        match self.port {
            Some(port) if port != self.scheme.default_port() => format!("{}:{port}", self.host),
            _ => self.host.clone(),
        }
    }

    /// `scheme://host[:port]`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.authority())
    }

    /// Parses an endpoint URL such as `AWS_ENDPOINT_URL` holds: `http(s)://host[:port][/]`.
    pub fn parse_url(url: &str) -> Result<Endpoint> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "endpoint URL '{url}' {why}; expected http(s)://host[:port]"
            ))
        };
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(bad("does not start with http:// or https://"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('/') {
            return Err(bad("has a path"));
        }
        let (host, port) = split_authority(authority).map_err(|why| bad(&why))?;
        Ok(Endpoint { scheme, host, port })
    }
}

/// Splits `host[:port]` (IPv6 hosts in brackets).
fn split_authority(authority: &str) -> std::result::Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6
            .find(']')
            .ok_or_else(|| "has an IPv6 address without its closing ']'".to_string())?;
        let after = &v6[end + 1..];
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("has '{p}' after the IPv6 address"))?,
            ),
        };
        (&authority[..end + 2], port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err("has no host".to_string());
    }
    let valid_host = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':' | '%'));
    if !valid_host {
        return Err(format!("has an invalid host '{host}'"));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("has an invalid port '{p}'"))?,
        ),
    };
    Ok((host.to_string(), port))
}

/// An `s3://` repository location, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    /// The custom endpoint named in the URL; none: Amazon S3 (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<Endpoint>,
    /// The bucket.
    pub bucket: String,
    /// The repository's key prefix inside the bucket, without leading or trailing `/`
    /// (empty: the whole bucket).
    pub prefix: String,
}

impl S3Location {
    /// Parses one of the `s3://` forms tritonserver accepts.
    pub fn parse(url: &str) -> Result<S3Location> {
        let bad = |why: String| {
            Error::invalid(format!(
                "model repository '{url}' {why}; expected s3://bucket/path, \
                 s3://host:port/bucket/path or s3://https://host:port/bucket/path"
            ))
        };
        let rest = url
            .strip_prefix(S3_PREFIX)
            .ok_or_else(|| bad("does not start with s3://".to_string()))?;
        let (scheme, rest) = if let Some(rest) = rest.strip_prefix("https://") {
            (Some(Scheme::Https), rest)
        } else if let Some(rest) = rest.strip_prefix("http://") {
            (Some(Scheme::Http), rest)
        } else {
            (None, rest)
        };
        let (first, path) = rest.split_once('/').unwrap_or((rest, ""));
        // A bucket name never holds ':', so a first part with one is host:port; a scheme
        // spelled out also says the first part is the endpoint.
        let endpoint = if scheme.is_some() || first.contains(':') {
            let (host, port) = split_authority(first).map_err(bad)?;
            Some(Endpoint {
                scheme: scheme.unwrap_or(Scheme::Http),
                host,
                port,
            })
        } else {
            None
        };
        let (bucket, prefix) = match endpoint {
            Some(_) => path.split_once('/').unwrap_or((path, "")),
            None => (first, path),
        };
        if bucket.is_empty() {
            return Err(bad("names no bucket".to_string()));
        }
        let valid_bucket = bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid_bucket {
            return Err(bad(format!("has an invalid bucket name '{bucket}'")));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            for part in prefix.split('/') {
                if !valid_segment(part) {
                    return Err(bad(format!(
                        "has an invalid path '{prefix}' (empty, '.' or '..' parts)"
                    )));
                }
            }
        }
        Ok(S3Location {
            endpoint,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The key prefix every object of the repository starts with: `path/` (empty for a whole
    /// bucket).
    pub fn key_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{S3_PREFIX}")?;
        if let Some(endpoint) = &self.endpoint {
            write!(f, "{}/", endpoint.base_url())?;
        }
        write!(f, "{}", self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// A usable path part of a key (a file, folder or model name): not empty, `.` or `..`, and
/// without NUL.
pub(crate) fn valid_segment(segment: &str) -> bool {
    !segment.is_empty() && segment != "." && segment != ".." && !segment.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(scheme: Scheme, host: &str, port: Option<u16>) -> Option<Endpoint> {
        Some(Endpoint {
            scheme,
            host: host.to_string(),
            port,
        })
    }

    #[test]
    fn parses_the_tritonserver_forms() {
        let aws = S3Location::parse("s3://models/path/to/repo").unwrap();
        assert_eq!(aws.endpoint, None);
        assert_eq!(aws.bucket, "models");
        assert_eq!(aws.prefix, "path/to/repo");
        assert_eq!(aws.key_prefix(), "path/to/repo/");

        let whole = S3Location::parse("s3://models").unwrap();
        assert_eq!(
            (whole.bucket.as_str(), whole.key_prefix()),
            ("models", String::new())
        );
        let trailing = S3Location::parse("s3://models/repo/").unwrap();
        assert_eq!(trailing.prefix, "repo");

        let local = S3Location::parse("s3://127.0.0.1:9000/bucket/repo").unwrap();
        assert_eq!(
            local.endpoint,
            endpoint(Scheme::Http, "127.0.0.1", Some(9000))
        );
        assert_eq!(
            (local.bucket.as_str(), local.prefix.as_str()),
            ("bucket", "repo")
        );
        assert_eq!(
            local.endpoint.as_ref().unwrap().base_url(),
            "http://127.0.0.1:9000"
        );

        let tls = S3Location::parse("s3://https://minio.example.com:443/b-1/a/b").unwrap();
        assert_eq!(
            tls.endpoint,
            endpoint(Scheme::Https, "minio.example.com", Some(443))
        );
        assert_eq!(
            tls.endpoint.as_ref().unwrap().authority(),
            "minio.example.com"
        );
        assert_eq!((tls.bucket.as_str(), tls.prefix.as_str()), ("b-1", "a/b"));

        let plain = S3Location::parse("s3://http://localhost/bucket").unwrap();
        assert_eq!(plain.endpoint, endpoint(Scheme::Http, "localhost", None));
        assert_eq!(plain.prefix, "");

        let v6 = S3Location::parse("s3://[::1]:9000/bucket/p").unwrap();
        assert_eq!(v6.endpoint, endpoint(Scheme::Http, "[::1]", Some(9000)));
        assert_eq!(v6.endpoint.as_ref().unwrap().authority(), "[::1]:9000");
        assert_eq!(v6.to_string(), "s3://http://[::1]:9000/bucket/p");
        assert_eq!(aws.to_string(), "s3://models/path/to/repo");
    }

    #[test]
    fn refuses_malformed_urls_with_a_reason() {
        for (url, why) in [
            ("s3://", "names no bucket"),
            ("s3://127.0.0.1:9000", "names no bucket"),
            ("s3://127.0.0.1:9000/", "names no bucket"),
            ("s3://host:port/bucket", "invalid port"),
            ("s3://host:70000/bucket", "invalid port"),
            ("s3://bu cket/x", "invalid bucket name"),
            ("s3://bucket/a//b", "invalid path"),
            ("s3://bucket/a/../b", "invalid path"),
            ("s3://https:///bucket", "no host"),
            ("gs://bucket", "does not start with s3://"),
        ] {
            let error = S3Location::parse(url).unwrap_err();
            assert!(error.message.contains(why), "{url}: {}", error.message);
            assert!(error.message.contains(url), "{url}: {}", error.message);
        }
    }

    #[test]
    fn parses_endpoint_urls() {
        assert_eq!(
            Endpoint::parse_url("http://localhost:9000/").unwrap(),
            Endpoint {
                scheme: Scheme::Http,
                host: "localhost".into(),
                port: Some(9000)
            }
        );
        assert_eq!(
            Endpoint::parse_url("https://s3.example.com")
                .unwrap()
                .base_url(),
            "https://s3.example.com"
        );
        assert!(Endpoint::parse_url("localhost:9000").is_err());
        assert!(Endpoint::parse_url("http://host/path").is_err());
    }

    #[test]
    fn tells_s3_urls_from_folders() {
        assert!(is_s3(Path::new("s3://bucket/x")));
        assert!(!is_s3(Path::new("/models")));
        assert!(!is_s3(Path::new("s3/models")));
    }
}
