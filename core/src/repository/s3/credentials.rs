//! Credentials and region, found where the AWS command line tools look: the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
//! `AWS_DEFAULT_REGION`), then the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`,
//! default `~/.aws/credentials`) and the config file (`AWS_CONFIG_FILE`, default
//! `~/.aws/config`) for the profile `AWS_PROFILE` (default `default`).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Reads an environment variable; unset and empty are the same.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, as an [`Env`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The region requests are signed for when nothing names one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// An access key.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token of temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret and the token never reach a log.
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// What requests are signed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The access key; none: requests go unsigned (a public bucket).
    pub credentials: Option<Credentials>,
    /// Where the access key came from, for error messages.
    pub source: String,
    /// The region requests are signed for.
    pub region: String,
}

impl Settings {
    /// Finds the credentials and the region.
    pub fn resolve(env: Env) -> Result<Settings> {
        let profile = env("AWS_PROFILE").or_else(|| env("AWS_DEFAULT_PROFILE"));
        let profile_named = profile.is_some();
        let profile = profile.unwrap_or_else(|| "default".to_string());
        let home = env("HOME").map(PathBuf::from);
        let file = |var: &str, default: &str| {
            env(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(default)))
        };
        let credentials_file = file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
        let config_file = file("AWS_CONFIG_FILE", ".aws/config");
        let read = |path: &Option<PathBuf>, sections: &[String]| -> Result<Option<Section>> {
            let Some(path) = path else { return Ok(None) };
            match std::fs::read_to_string(path) {
                Ok(text) => Ok(sections.iter().find_map(|s| section(&text, s))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::invalid(format!(
                    "cannot read AWS settings file '{}': {e}",
                    path.display()
                ))),
            }
        };
        let in_credentials = read(&credentials_file, std::slice::from_ref(&profile))?;
        let config_sections = if profile == "default" {
            vec!["default".to_string(), "profile default".to_string()]
        } else {
            vec![format!("profile {profile}")]
        };
        let in_config = read(&config_file, &config_sections)?;

        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| in_config.as_ref().and_then(|s| s.get("region").cloned()))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());

        let from_env = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => Some(Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: env("AWS_SESSION_TOKEN"),
            }),
            (Some(_), None) => {
                return Err(Error::invalid(
                    "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not",
                ));
            }
            (None, None) => None,
        };
        if let Some(credentials) = from_env {
            return Ok(Settings {
                credentials: Some(credentials),
                source: "the environment (AWS_ACCESS_KEY_ID)".to_string(),
                region,
            });
        }
        let from_files = [
            (in_credentials.as_ref(), &credentials_file),
            (in_config.as_ref(), &config_file),
        ];
        for (found, path) in from_files {
            let Some(section) = found else { continue };
            let path = path.as_ref().map(|p| p.display().to_string());
            let path = path.unwrap_or_default();
            match (
                section.get("aws_access_key_id"),
                section.get("aws_secret_access_key"),
            ) {
                (Some(id), Some(secret)) => {
                    return Ok(Settings {
                        credentials: Some(Credentials {
                            access_key_id: id.clone(),
                            secret_access_key: secret.clone(),
                            session_token: section.get("aws_session_token").cloned(),
                        }),
                        source: format!("profile '{profile}' in {path}"),
                        region,
                    });
                }
                (Some(_), None) | (None, Some(_)) => {
                    return Err(Error::invalid(format!(
                        "profile '{profile}' in {path} has only one of aws_access_key_id and \
                         aws_secret_access_key"
                    )));
                }
                (None, None) => {}
            }
        }
        if profile_named && in_credentials.is_none() && in_config.is_none() {
            return Err(Error::invalid(format!(
                "AWS_PROFILE names profile '{profile}', which is in neither {} nor {}",
                credentials_file
                    .as_ref()
                    .map_or("(no credentials file)".to_string(), |p| p
                        .display()
                        .to_string()),
                config_file
                    .as_ref()
                    .map_or("(no config file)".to_string(), |p| p.display().to_string()),
            )));
        }
        Ok(Settings {
            credentials: None,
            source: "no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a \
                     profile in ~/.aws/credentials); requests are unsigned"
                .to_string(),
            region,
        })
    }
}

/// One section of an INI file: keys (lower case) and values.
type Section = HashMap<String, String>;

/// The keys of section `[name]` of an AWS INI file, if it has one. Indented lines (nested
/// settings such as `s3 =` blocks) and comments are skipped.
fn section(text: &str, name: &str) -> Option<Section> {
    let mut current: Option<bool> = None;
    let mut found: Option<Section> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let header = header.split_whitespace().collect::<Vec<_>>().join(" ");
            let this = header == name;
            if this && found.is_none() {
                found = Some(Section::new());
            }
            current = Some(this);
            continue;
        }
        if current != Some(true) {
            continue;
        }
        if let (Some((key, value)), Some(section)) = (line.split_once('='), found.as_mut()) {
            section.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn the_environment_comes_first() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", "token"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("HOME", "/nonexistent"),
        ]);
        let settings = Settings::resolve(&env).unwrap();
        let credentials = settings.credentials.unwrap();
        assert_eq!(credentials.access_key_id, "AKID");
        assert_eq!(credentials.session_token.as_deref(), Some("token"));
        assert_eq!(settings.region, "eu-west-1");
        assert!(!format!("{credentials:?}").contains("secret"));

        let half = env_of(&[("AWS_ACCESS_KEY_ID", "AKID")]);
        let error = Settings::resolve(&half).unwrap_err();
        assert!(
            error.message.contains("AWS_SECRET_ACCESS_KEY"),
            "{}",
            error.message
        );
    }

    #[test]
    fn profiles_come_from_the_shared_files() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &credentials,
            "# comment\n[default]\naws_access_key_id = DEFAULTKEY\naws_secret_access_key = s1\n\n\
             [dev]\nAWS_ACCESS_KEY_ID=DEVKEY\naws_secret_access_key=s2\naws_session_token = t2\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[default]\nregion = us-west-2\n[profile dev]\nregion = ap-south-1\ns3 =\n  \
             addressing_style = path\n[profile cfg]\naws_access_key_id = CFGKEY\n\
             aws_secret_access_key = s3\n",
        )
        .unwrap();
        let base = |profile: Option<&str>| {
            let credentials = credentials.to_str().unwrap().to_string();
            let config = config.to_str().unwrap().to_string();
            let profile = profile.map(str::to_string);
            move |name: &str| match name {
                "AWS_SHARED_CREDENTIALS_FILE" => Some(credentials.clone()),
                "AWS_CONFIG_FILE" => Some(config.clone()),
                "AWS_PROFILE" => profile.clone(),
                _ => None,
            }
        };
        let default = Settings::resolve(&base(None)).unwrap();
        assert_eq!(default.credentials.unwrap().access_key_id, "DEFAULTKEY");
        assert_eq!(default.region, "us-west-2");

        let dev = Settings::resolve(&base(Some("dev"))).unwrap();
        let key = dev.credentials.unwrap();
        assert_eq!(key.access_key_id, "DEVKEY");
        assert_eq!(key.session_token.as_deref(), Some("t2"));
        assert_eq!(dev.region, "ap-south-1");
        assert!(dev.source.contains("profile 'dev'"), "{}", dev.source);

        let cfg = Settings::resolve(&base(Some("cfg"))).unwrap();
        assert_eq!(cfg.credentials.unwrap().access_key_id, "CFGKEY");
        assert_eq!(cfg.region, DEFAULT_REGION);

        let missing = Settings::resolve(&base(Some("nope"))).unwrap_err();
        assert!(missing.message.contains("'nope'"), "{}", missing.message);
    }

    #[test]
    fn no_credentials_means_unsigned_requests() {
        let env = env_of(&[("HOME", "/nonexistent")]);
        let settings = Settings::resolve(&env).unwrap();
        assert!(settings.credentials.is_none());
        assert_eq!(settings.region, DEFAULT_REGION);
    }
}
