//! Object-store (S3) repositories: the `s3://` location, credentials, SigV4 signing and a
//! small client. [`super::mirror`] mirrors a repository into a local folder with them.

pub mod client;
pub mod credentials;
pub mod location;
pub mod sigv4;

pub use location::{S3Location, is_s3};
