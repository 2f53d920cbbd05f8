//! Request authentication: the node's single key pair.
//!
//! `s3s::auth::SimpleAuth` answers an unknown access key with `NotSignedUp`; S3 (and every
//! client's error handling) expects `InvalidAccessKeyId` (403).

use s3s::auth::{S3Auth, SecretKey};
use s3s::{S3Result, s3_error};

/// Accepts requests signed with one access key and its secret key.
pub struct KeyAuth {
    access_key: String,
    secret_key: SecretKey,
}

impl KeyAuth {
    pub fn single(access_key: impl Into<String>, secret_key: impl Into<SecretKey>) -> Self {
        Self {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
        }
    }
}

#[async_trait::async_trait]
impl S3Auth for KeyAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if access_key == self.access_key {
            Ok(self.secret_key.clone())
        } else {
            Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records."
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_access_key_is_invalid_access_key_id() {
        let auth = KeyAuth::single("AK", "secret-key");
        assert!(auth.get_secret_key("AK").await.is_ok());
        let e = auth.get_secret_key("OTHER").await.unwrap_err();
        assert_eq!(e.code(), &s3s::S3ErrorCode::InvalidAccessKeyId);
        assert_eq!(e.status_code(), Some(http::StatusCode::FORBIDDEN));
    }
}
