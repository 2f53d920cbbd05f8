//! Virtual-hosted-style addressing: a Host of `BUCKET.DOMAIN` (with or without a port) names
//! a bucket; any other host (a base domain itself, an IP address, another name) is
//! path-style, so path-style requests keep working whatever name clients use.
//!
//! `s3s::host::MultiDomain` compares the Host header including its port with the base
//! domains, so `bucket.s3.example.com:9000` never matched `s3.example.com`, and it treats
//! every unknown host name as a bucket name (CNAME style), which broke path-style requests
//! sent to any name but the configured domain.

use s3s::S3Result;
use s3s::host::{S3Host, VirtualHost};

/// The base domains of virtual-hosted-style requests.
#[derive(Debug, Clone)]
pub struct VirtualHosts {
    /// Lower case, without port, longest first.
    domains: Vec<String>,
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host; // an IPv6 literal names no bucket
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

impl VirtualHosts {
    /// Builds the parser from base domains such as `s3.example.com` (a port is ignored).
    pub fn new<I, S>(domains: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        for given in domains {
            let given = given.as_ref();
            let d = strip_port(given.trim())
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let valid = !d.is_empty()
                && d.split('.').all(|label| {
                    !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !valid {
                return Err(format!("{given:?} is not a valid domain name"));
            }
            out.push(d);
        }
        if out.is_empty() {
            return Err("no domain given".into());
        }
        // the most specific domain wins: `b.s3.example.com` is bucket `b` of `s3.example.com`
        out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        out.dedup();
        Ok(Self { domains: out })
    }

    /// The bucket a Host header names, if it is `BUCKET.DOMAIN[:port]`.
    pub fn bucket_of(&self, host: &str) -> Option<String> {
        let name = strip_port(host.trim()).trim_end_matches('.').to_ascii_lowercase();
        if self.domains.contains(&name) {
            return None; // a base domain itself is path-style
        }
        self.domains.iter().find_map(|d| {
            name.strip_suffix(d.as_str())?
                .strip_suffix('.')
                .filter(|b| !b.is_empty())
                .map(str::to_string)
        })
    }
}

impl S3Host for VirtualHosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        Ok(match self.bucket_of(host) {
            Some(bucket) => VirtualHost::new(host).with_bucket(bucket),
            None => VirtualHost::new(host),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_from_hosts_with_and_without_ports() {
        let v = VirtualHosts::new(["s3.local", "example.com:9000"]).unwrap();
        assert_eq!(v.bucket_of("photos.s3.local").as_deref(), Some("photos"));
        assert_eq!(v.bucket_of("photos.s3.local:9000").as_deref(), Some("photos"));
        assert_eq!(v.bucket_of("Photos.S3.Local:80").as_deref(), Some("photos"));
        assert_eq!(
            v.bucket_of("my.dotted.bucket.s3.local").as_deref(),
            Some("my.dotted.bucket")
        );
        assert_eq!(v.bucket_of("b.example.com:1234").as_deref(), Some("b"));
        assert_eq!(v.bucket_of("b.example.com.").as_deref(), Some("b"));
        // path-style hosts
        for host in [
            "s3.local",
            "s3.local:9000",
            "localhost:9000",
            "other.org",
            "xs3.local",
            "[::1]:9000",
        ] {
            assert_eq!(v.bucket_of(host), None, "{host}");
        }
    }

    #[test]
    fn most_specific_domain_wins() {
        let v = VirtualHosts::new(["example.com", "s3.example.com"]).unwrap();
        assert_eq!(v.bucket_of("b.s3.example.com").as_deref(), Some("b"));
        assert_eq!(v.bucket_of("s3.example.com"), None);
        assert_eq!(v.bucket_of("b.example.com").as_deref(), Some("b"));
    }

    #[test]
    fn invalid_domains_are_refused() {
        assert!(VirtualHosts::new(Vec::<String>::new()).is_err());
        for bad in ["", "a..b", "under_score.com", "bad domain"] {
            assert!(VirtualHosts::new([bad]).is_err(), "{bad}");
        }
    }
}
