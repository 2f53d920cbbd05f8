//! Signed S3 requests over a keep-alive hyper client: create bucket, PUT object, streaming verified GET.

use std::time::Duration;

use anyhow::{Context as _, bail};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use http::{Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::payload::{ObjectBody, Verifier};
use crate::sigv4::{self, Signer, UNSIGNED_PAYLOAD};

/// How many bytes of an error response body are kept for the error message.
const ERROR_SNIPPET: usize = 300;

/// One S3 endpoint + bucket, with a pooled HTTP/1.1 client and the request signer.
pub struct S3Client {
    http: Client<HttpConnector, ObjectBody>,
    signer: Signer,
    /// `scheme://authority`, no trailing slash.
    base: String,
    /// Value of the `Host` header (the endpoint authority), also signed.
    host: String,
    bucket: String,
}

impl S3Client {
    pub fn new(endpoint: &str, signer: Signer, bucket: &str, pool: usize) -> anyhow::Result<Self> {
        let uri: Uri = endpoint
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("bad endpoint {endpoint:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("endpoint {endpoint:?} must be http://host:port (https is not supported)");
        }
        let host = uri
            .authority()
            .context("endpoint has no host")?
            .as_str()
            .to_owned();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(pool)
            .build(connector);
        Ok(Self {
            http,
            signer,
            base: format!("http://{host}"),
            host,
            bucket: bucket.to_owned(),
        })
    }

    fn request(&self, method: Method, key: Option<&str>, body: ObjectBody, len: u64) -> Request<ObjectBody> {
        let path = match key {
            Some(key) => sigv4::encode_path(&format!("/{}/{key}", self.bucket)),
            None => sigv4::encode_path(&format!("/{}", self.bucket)),
        };
        let date = sigv4::amz_date(time::OffsetDateTime::now_utc());
        let auth = self.signer.authorization(
            method.as_str(),
            &path,
            "",
            &[
                ("host", &self.host),
                ("x-amz-content-sha256", UNSIGNED_PAYLOAD),
                ("x-amz-date", &date),
            ],
            UNSIGNED_PAYLOAD,
            &date,
        );
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .header(HOST, &self.host)
            .header("x-amz-date", date)
            .header("x-amz-content-sha256", UNSIGNED_PAYLOAD)
            .header(AUTHORIZATION, auth);
        if method == Method::PUT {
            builder = builder.header(CONTENT_LENGTH, len);
        }
        builder.body(body).expect("request parts are valid")
    }

    async fn send(&self, req: Request<ObjectBody>) -> Result<Response<Incoming>, String> {
        let what = format!("{} {}", req.method(), req.uri().path());
        self.http
            .request(req)
            .await
            .map_err(|e| format!("{what}: {}", error_chain(&e)))
    }

    /// Creates the bucket; an existing bucket owned by us is fine.
    pub async fn ensure_bucket(&self) -> anyhow::Result<()> {
        let resp = self
            .send(self.request(Method::PUT, None, ObjectBody::empty(), 0))
            .await
            .map_err(anyhow::Error::msg)?;
        let status = resp.status();
        let body = read_snippet(resp.into_body()).await;
        if status.is_success() || (status.as_u16() == 409 && body.contains("BucketAlreadyOwnedByYou")) {
            return Ok(());
        }
        bail!("create bucket {:?}: HTTP {status}: {body}", self.bucket)
    }

    /// PUTs one object; Ok only for a 2xx response.
    pub async fn put(&self, key: &str, body: ObjectBody, len: u64) -> Result<(), String> {
        let resp = self.send(self.request(Method::PUT, Some(key), body, len)).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!(
                "PUT {key}: HTTP {status}: {}",
                read_snippet(resp.into_body()).await
            ));
        }
        // drain (normally empty) so the connection goes back to the pool
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("PUT {key}: reading response: {e}"))?;
        Ok(())
    }

    /// GETs one object, streaming the body through `verifier` chunk by chunk.
    pub async fn get(&self, key: &str, mut verifier: Verifier<'_>) -> Result<(), String> {
        let resp = self
            .send(self.request(Method::GET, Some(key), ObjectBody::empty(), 0))
            .await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!(
                "GET {key}: HTTP {status}: {}",
                read_snippet(resp.into_body()).await
            ));
        }
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("GET {key}: reading body: {}", error_chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                verifier.update(&data).map_err(|at| {
                    format!("GET {key}: content mismatch at byte {at} (wrong or corrupt object)")
                })?;
            }
        }
        verifier
            .finish()
            .map_err(|n| format!("GET {key}: body truncated after {n} bytes"))
    }
}

/// Reads up to [`ERROR_SNIPPET`] bytes of a (error) response body as one line of text.
async fn read_snippet(mut body: Incoming) -> String {
    let mut buf: Vec<u8> = Vec::new();
    while buf.len() < ERROR_SNIPPET {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                buf.extend_from_slice(format!(" <body error: {e}>").as_bytes());
                break;
            }
            None => break,
        }
    }
    snippet(&buf)
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_SNIPPET)]);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        "<empty body>".to_owned()
    } else {
        one_line
    }
}

/// Formats an error with all its sources ("connection refused" hides behind hyper's generic message).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

/// Wraps an operation in a timeout, turning expiry into an error message.
pub async fn with_timeout<F>(timeout: Duration, what: &str, fut: F) -> Result<(), String>
where
    F: std::future::Future<Output = Result<(), String>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("{what}: timed out after {:.1}s", timeout.as_secs_f64())),
    }
}
