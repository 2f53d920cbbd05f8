//! `ringstore admin ...`: a small client of the admin API.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::config::{
    AdminArgs, AdminCommand, AdminStatusArgs, LayoutApplyArgs, LayoutArgs, LayoutCommand, ThrottleArgs,
    TransitionArgs, TransitionCommand,
};

const TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: AdminArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let result = runtime.map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async {
            match args.command {
                AdminCommand::Status(a) => status(a).await,
                AdminCommand::Layout(LayoutArgs {
                    command: LayoutCommand::Show(a),
                }) => layout_show(a).await,
                AdminCommand::Layout(LayoutArgs {
                    command: LayoutCommand::Apply(a),
                }) => layout_apply(a).await,
                AdminCommand::Transition(TransitionArgs { command }) => transition(command).await,
            }
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringstore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn status(args: AdminStatusArgs) -> anyhow::Result<()> {
    let doc = get_json(
        &args.endpoint,
        args.token.as_deref(),
        "/_ringstore/admin/v1/status",
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", status_table(&doc));
    }
    Ok(())
}

async fn layout_show(args: AdminStatusArgs) -> anyhow::Result<()> {
    let doc = get_json(
        &args.endpoint,
        args.token.as_deref(),
        "/_ringstore/admin/v1/layout",
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", layout_table(&doc));
    }
    Ok(())
}

async fn layout_apply(args: LayoutApplyArgs) -> anyhow::Result<()> {
    let mut body = serde_json::Map::new();
    if !args.nodes.is_empty() {
        body.insert("nodes".into(), Value::from(args.nodes.clone()));
    }
    if let Some(r) = &args.redundancy {
        body.insert("redundancy".into(), Value::from(r.clone()));
    }
    let doc = request_json(
        &args.common.endpoint,
        args.common.token.as_deref(),
        http::Method::POST,
        "/_ringstore/admin/v1/layout",
        Value::Object(body).to_string(),
    )
    .await?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", layout_table(&doc));
    }
    Ok(())
}

async fn transition(command: TransitionCommand) -> anyhow::Result<()> {
    const PATH: &str = "/_ringstore/admin/v1/transition";
    let change = |common: AdminStatusArgs, body: Value| async move {
        let doc = request_json(
            &common.endpoint,
            common.token.as_deref(),
            http::Method::POST,
            PATH,
            body.to_string(),
        )
        .await?;
        anyhow::Ok((common, doc))
    };
    let (common, doc) = match command {
        TransitionCommand::Status(a) => {
            let doc = get_json(&a.endpoint, a.token.as_deref(), PATH).await?;
            (a, doc)
        }
        TransitionCommand::Pause(a) => change(a, serde_json::json!({ "paused": true })).await?,
        TransitionCommand::Resume(a) => change(a, serde_json::json!({ "paused": false })).await?,
        TransitionCommand::Throttle(ThrottleArgs {
            common,
            bytes_per_sec,
            concurrency,
        }) => {
            if bytes_per_sec.is_none() && concurrency.is_none() {
                bail!("give --bytes-per-sec, --concurrency or both");
            }
            let mut body = serde_json::Map::new();
            if let Some(b) = bytes_per_sec {
                body.insert("bytes_per_sec".into(), Value::from(b));
            }
            if let Some(c) = concurrency {
                body.insert("concurrency".into(), Value::from(c));
            }
            change(common, Value::Object(body)).await?
        }
    };
    if common.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", transition_table(&doc));
    }
    Ok(())
}

/// The readable form of a transition document.
fn transition_table(doc: &Value) -> String {
    use std::fmt::Write as _;
    let t = &doc["transition"];
    if t.is_null() {
        return "no layout transition has run\n".into();
    }
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "transition:      layout {} -> {} ({})",
        s(&t["from"]),
        s(&t["to"]),
        s(&t["kind"])
    );
    let _ = writeln!(out, "phase:           {}", s(&t["phase"]));
    let _ = writeln!(
        out,
        "progress:        {}% ({} of {} partitions)",
        s(&t["percent"]),
        s(&t["partitions_done"]),
        s(&t["partitions"])
    );
    let _ = writeln!(
        out,
        "moved:           {} objects, {}",
        s(&t["objects_moved"]),
        human_bytes(t["bytes_moved"].as_u64())
    );
    let _ = writeln!(out, "errors:          {}", s(&t["errors"]));
    let _ = writeln!(
        out,
        "elapsed / ETA:   {} s / {}",
        s(&t["elapsed_seconds"]),
        t["eta_seconds"].as_f64().map_or("-".into(), |e| format!("{e} s"))
    );
    let _ = writeln!(
        out,
        "throttle:        {}/s, {} objects at once per node",
        human_bytes(t["throttle"]["bytes_per_sec"].as_u64()),
        s(&t["throttle"]["concurrency"])
    );
    let _ = writeln!(
        out,
        "{:<20} {:<8} {:>10} {:>12} {:>10}  WAITING",
        "NODE", "STATE", "OBJECTS", "BYTES", "PARTS"
    );
    for n in t["nodes"].as_array().into_iter().flatten() {
        let r = &n["report"];
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:>10} {:>12} {:>10}  {}",
            s(&n["name"]),
            s(&n["state"]),
            s(&r["moved"]["objects_moved"]),
            human_bytes(r["moved"]["bytes_moved"].as_u64()),
            format!("{}/{}", s(&r["partitions_done"]), s(&r["partitions"])),
            s(&r["waiting"]),
        );
    }
    out
}

/// GETs an admin path and parses the JSON answer, with errors that name the endpoint.
async fn get_json(endpoint: &str, token: Option<&str>, path: &str) -> anyhow::Result<Value> {
    request_json(endpoint, token, http::Method::GET, path, String::new()).await
}

/// Sends an admin request and parses the JSON answer, with errors that name the endpoint.
async fn request_json(
    endpoint: &str,
    token: Option<&str>,
    method: http::Method,
    path: &str,
    body: String,
) -> anyhow::Result<Value> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        bail!("no admin token: pass --token or set RINGSTORE_SECRET_KEY (the node's S3 secret key)");
    };
    let base = endpoint.trim_end_matches('/');
    if !base.starts_with("http://") {
        bail!("endpoint {endpoint} is not supported: the CLI speaks plain http:// only");
    }
    let uri: http::Uri = format!("{base}{path}")
        .parse()
        .with_context(|| format!("invalid endpoint {endpoint}"))?;
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .context("cannot build the request")?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let exchange = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, body))
    };
    let (status, body) = match tokio::time::timeout(TIMEOUT, exchange).await {
        Err(_) => bail!("no answer from ringstore at {endpoint} within {TIMEOUT:?}"),
        Ok(Err(e)) => return Err(anyhow!("cannot reach ringstore at {endpoint}: {}", chain(&*e))),
        Ok(Ok(r)) => r,
    };
    if status == http::StatusCode::UNAUTHORIZED {
        bail!(
            "ringstore at {endpoint} refused the admin token (401 Unauthorized): check --token or RINGSTORE_SECRET_KEY"
        );
    }
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.trim().to_string());
        bail!("ringstore at {endpoint} answered {status}: {message}");
    }
    serde_json::from_slice(&body).with_context(|| {
        format!("ringstore at {endpoint} did not answer with JSON (is it a ringstore node?)")
    })
}

/// An error and its causes on one line (hyper's errors keep the useful part in sources).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

fn human_bytes(v: Option<u64>) -> String {
    let Some(v) = v else { return "-".into() };
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = v as f64;
    let mut unit = 0;
    while x >= 1024.0 && unit < UNITS.len() - 1 {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v} B")
    } else {
        format!("{x:.1} {}", UNITS[unit])
    }
}

/// The readable form of the status document.
fn status_table(doc: &Value) -> String {
    use std::fmt::Write;
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node:            {} (ringstore {})",
        s(&doc["node"]),
        s(&doc["version"])
    );
    let _ = writeln!(out, "redundancy:      {}", s(&doc["redundancy"]));
    let _ = writeln!(out, "layout version:  {}", s(&doc["layout_version"]));
    let c = &doc["cluster"];
    if c.is_object() {
        let _ = writeln!(
            out,
            "raft:            {} (leader {}, term {}, applied {}), voters {}, learners {}",
            s(&c["role"]),
            s(&c["leader"]),
            s(&c["current_term"]),
            s(&c["last_applied"]),
            c["voters"].as_array().map(Vec::len).unwrap_or(0),
            c["learners"].as_array().map(Vec::len).unwrap_or(0),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:<12} {:<8} {:>6}  RPC",
        "NODE", "ZONE", "STATE", "DRIVES"
    );
    for n in doc["nodes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:<8} {:>6}  {}",
            s(&n["name"]),
            s(&n["zone"]),
            s(&n["state"]),
            s(&n["drives"]),
            s(&n["rpc_address"])
        );
    }
    let cap = &doc["capacity"];
    let _ = writeln!(
        out,
        "drives:          {} of {} online",
        s(&cap["drives_online"]),
        s(&cap["drives_total"])
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<34} {:<16} {:<8} {:>10} {:>10}  PATH",
        "DRIVE", "NODE", "STATE", "USED", "AVAILABLE"
    );
    for d in doc["drives"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<34} {:<16} {:<8} {:>10} {:>10}  {}",
            s(&d["id"]),
            s(&d["node"]),
            s(&d["state"]),
            human_bytes(d["bytes_used"].as_u64()),
            human_bytes(d["bytes_available"].as_u64()),
            s(&d["path"])
        );
    }
    let h = &doc["healing"];
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "healing:         {} objects checked, {} shards healed, {} records healed, {} orphans removed, {} errors",
        s(&h["objects_checked"]),
        s(&h["shards_healed"]),
        s(&h["records_healed"]),
        s(&h["orphans_removed"]),
        s(&h["heal_errors"])
    );
    out
}

/// The readable form of a layout document.
fn layout_table(doc: &Value) -> String {
    use std::fmt::Write;
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let mut out = String::new();
    let _ = writeln!(out, "layout version:  {}", s(&doc["version"]));
    let _ = writeln!(out, "redundancy:      {}", s(&doc["redundancy"]));
    let _ = writeln!(out, "partitions:      {}", s(&doc["partitions"]));
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<24} {:<12} {:<34} WEIGHT", "NODE", "ZONE", "DRIVE");
    for n in doc["nodes"].as_array().into_iter().flatten() {
        for d in n["drives"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "{:<24} {:<12} {:<34} {}",
                s(&n["name"]),
                s(&n["zone"]),
                s(&d["id"]),
                s(&d["weight"])
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_readable() {
        assert_eq!(human_bytes(Some(512)), "512 B");
        assert_eq!(human_bytes(Some(3 * 1024 * 1024 / 2)), "1.5 MiB");
        assert_eq!(human_bytes(None), "-");
    }
}
