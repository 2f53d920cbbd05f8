//! Minimal AWS Signature Version 4 signer for path-style S3 requests (header-based auth).

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// `x-amz-content-sha256` value telling the server the payload is not hashed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

type HmacSha256 = Hmac<Sha256>;

/// Credentials and scope used to sign every request.
#[derive(Debug, Clone)]
pub struct Signer {
    access_key: String,
    secret_key: String,
    region: String,
}

/// Formats a UTC timestamp as the SigV4 `x-amz-date` value (`YYYYMMDDTHHMMSSZ`).
pub fn amz_date(now: time::OffsetDateTime) -> String {
    let now = now.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

impl Signer {
    pub fn new(
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
        region: impl Into<String>,
    ) -> Self {
        Self {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            region: region.into(),
        }
    }

    /// Returns the `Authorization` header value for a request.
    ///
    /// `path` must already be URI-encoded, `query` must be the canonical query string (empty for none),
    /// `headers` are the (name, value) pairs to sign; they must include `host`, `x-amz-date` and
    /// `x-amz-content-sha256` and names must be lowercase. `amz_date` is the `x-amz-date` value.
    pub fn authorization(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        payload_hash: &str,
        amz_date: &str,
    ) -> String {
        let mut sorted: Vec<(&str, &str)> = headers.to_vec();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut canonical_headers = String::with_capacity(256);
        let mut signed_headers = String::with_capacity(64);
        for (name, value) in &sorted {
            canonical_headers.push_str(name);
            canonical_headers.push(':');
            canonical_headers.push_str(value.trim());
            canonical_headers.push('\n');
            if !signed_headers.is_empty() {
                signed_headers.push(';');
            }
            signed_headers.push_str(name);
        }
        let canonical_request =
            format!("{method}\n{path}\n{query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}");

        let date = &amz_date[..8];
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );

        let k_date = hmac(format!("AWS4{}", self.secret_key).as_bytes(), date.as_bytes());
        let k_region = hmac(&k_date, self.region.as_bytes());
        let k_service = hmac(&k_region, b"s3");
        let k_signing = hmac(&k_service, b"aws4_request");
        let signature = hex::encode(hmac(&k_signing, string_to_sign.as_bytes()));

        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope},SignedHeaders={signed_headers},Signature={signature}",
            self.access_key
        )
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// URI-encodes a path per SigV4 rules: everything but unreserved characters and `/` is percent-encoded.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// "GET Object" example from the AWS S3 SigV4 documentation (sig-v4-header-based-auth).
    #[test]
    fn aws_get_object_example() {
        let signer = Signer::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
        );
        let date = "20130524T000000Z";
        let auth = signer.authorization(
            "GET",
            "/test.txt",
            "",
            &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", date),
            ],
            EMPTY_SHA256,
            date,
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn header_order_does_not_matter() {
        let signer = Signer::new("A", "S", "us-east-1");
        let date = "20240101T000000Z";
        let a = signer.authorization(
            "PUT",
            "/b/k",
            "",
            &[
                ("host", "h"),
                ("x-amz-date", date),
                ("x-amz-content-sha256", UNSIGNED_PAYLOAD),
            ],
            UNSIGNED_PAYLOAD,
            date,
        );
        let b = signer.authorization(
            "PUT",
            "/b/k",
            "",
            &[
                ("x-amz-content-sha256", UNSIGNED_PAYLOAD),
                ("host", "h"),
                ("x-amz-date", date),
            ],
            UNSIGNED_PAYLOAD,
            date,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn amz_date_format() {
        let t = time::macros::datetime!(2013-05-24 01:02:03 UTC);
        assert_eq!(amz_date(t), "20130524T010203Z");
    }

    #[test]
    fn path_encoding() {
        assert_eq!(encode_path("/b/a b+c~d_e.f-g/h"), "/b/a%20b%2Bc~d_e.f-g/h");
    }
}
