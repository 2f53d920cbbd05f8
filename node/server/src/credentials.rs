//! The S3 credentials: from the environment, or generated once and kept on every drive.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::json;

pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

const ACCESS_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn random_string(alphabet: &[u8], len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// The keys from `RINGSTORE_ACCESS_KEY` / `RINGSTORE_SECRET_KEY`, `None` when both are unset.
pub fn from_env() -> anyhow::Result<Option<Credentials>> {
    let env = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    match (env("RINGSTORE_ACCESS_KEY"), env("RINGSTORE_SECRET_KEY")) {
        (Some(access_key), Some(secret_key)) => {
            if access_key.len() < 3 {
                bail!("RINGSTORE_ACCESS_KEY must be at least 3 characters");
            }
            if secret_key.len() < 8 {
                bail!("RINGSTORE_SECRET_KEY must be at least 8 characters");
            }
            Ok(Some(Credentials {
                access_key,
                secret_key,
            }))
        }
        (Some(_), None) => {
            bail!("RINGSTORE_ACCESS_KEY is set but RINGSTORE_SECRET_KEY is not; set both or neither")
        }
        (None, Some(_)) => {
            bail!("RINGSTORE_SECRET_KEY is set but RINGSTORE_ACCESS_KEY is not; set both or neither")
        }
        (None, None) => Ok(None),
    }
}

/// Reads `RINGSTORE_ACCESS_KEY` / `RINGSTORE_SECRET_KEY`; when both are unset, loads the
/// keys stored on the drives, generating and printing them once on first start. They are
/// kept on every drive, so that replacing any one of them keeps the keys.
pub fn load(drives: &[PathBuf]) -> anyhow::Result<Credentials> {
    if let Some(c) = from_env()? {
        return Ok(c);
    }
    let paths: Vec<PathBuf> = drives
        .iter()
        .map(|d| d.join(".ringstore").join("credentials.json"))
        .collect();
    let mut found = None;
    for path in &paths {
        if let Ok(bytes) = fs::read(path) {
            found = Some(parse(path, &bytes)?);
            break;
        }
    }
    let generated = found.is_none();
    let creds = found.unwrap_or_else(|| Credentials {
        access_key: random_string(ACCESS_ALPHABET, 20),
        secret_key: random_string(SECRET_ALPHABET, 40),
    });
    let body = json!({ "access_key": creds.access_key, "secret_key": creds.secret_key });
    let body = serde_json::to_string_pretty(&body)?;
    for path in paths.iter().filter(|p| !p.exists()) {
        crate::mirror::write_private(path, body.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if generated {
        eprintln!(
            "\nGenerated S3 credentials (stored in {}; shown only once):\n  \
             AWS_ACCESS_KEY_ID={}\n  AWS_SECRET_ACCESS_KEY={}\n\
             Set RINGSTORE_ACCESS_KEY and RINGSTORE_SECRET_KEY to choose your own.\n",
            paths[0].display(),
            creds.access_key,
            creds.secret_key
        );
    }
    Ok(creds)
}

fn parse(path: &Path, bytes: &[u8]) -> anyhow::Result<Credentials> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).with_context(|| format!("{} is damaged", path.display()))?;
    let get = |k: &str| v.get(k).and_then(|s| s.as_str()).map(str::to_string);
    match (get("access_key"), get("secret_key")) {
        (Some(access_key), Some(secret_key)) => Ok(Credentials {
            access_key,
            secret_key,
        }),
        _ => bail!("{} lacks access_key or secret_key", path.display()),
    }
}
