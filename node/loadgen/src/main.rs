//! `ringstore-loadgen`: PUTs then GETs (verified) objects against an S3 endpoint and reports
//! throughput and latency per phase.

mod client;
mod payload;
mod sigv4;
mod stats;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use rand::Rng;

use client::{S3Client, with_timeout};
use payload::Payload;
use sigv4::Signer;
use stats::{PhaseReport, format_size, parse_size};

/// How many error messages are printed per phase.
const MAX_PRINTED_ERRORS: usize = 5;

/// Load generator for S3-compatible endpoints (path-style, SigV4 with UNSIGNED-PAYLOAD).
///
/// A PUT phase writes objects `<prefix>/<size>/<seq>`; a GET phase reads random objects among those
/// written and verifies every byte. Object content is deterministic per size, so `--ops get` alone
/// (with `--population N` or `--objects N`) re-reads objects 0..N written by an earlier run with the
/// same size and prefix.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// S3 endpoint (http only); several, comma separated, spread the workers over the nodes
    /// of a cluster (worker i uses endpoint i mod N)
    #[arg(
        long,
        env = "RINGSTORE_LOADGEN_ENDPOINT",
        default_value = "http://127.0.0.1:9000",
        value_delimiter = ','
    )]
    endpoint: Vec<String>,
    /// Access key (falls back to AWS_ACCESS_KEY_ID)
    #[arg(long, env = "RINGSTORE_ACCESS_KEY")]
    access_key: Option<String>,
    /// Secret key (falls back to AWS_SECRET_ACCESS_KEY)
    #[arg(long, env = "RINGSTORE_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// Signing region (falls back to AWS_REGION, then us-east-1)
    #[arg(long, env = "RINGSTORE_LOADGEN_REGION")]
    region: Option<String>,
    /// Bucket to use; created if missing
    #[arg(long, env = "RINGSTORE_LOADGEN_BUCKET", default_value = "loadgen")]
    bucket: String,
    /// Key prefix
    #[arg(long, env = "RINGSTORE_LOADGEN_PREFIX", default_value = "obj")]
    prefix: String,
    /// Object size: plain bytes or with a unit (4KiB, 1MiB, 64MiB, 1GiB; KB/MB/GB are decimal)
    #[arg(long, env = "RINGSTORE_LOADGEN_SIZE", default_value = "1MiB", value_parser = parse_size)]
    size: usize,
    /// Requests in flight
    #[arg(long, env = "RINGSTORE_LOADGEN_CONCURRENCY", default_value_t = 32)]
    concurrency: usize,
    /// Seconds per phase (default 10 unless --objects is given; with both, whichever ends first)
    #[arg(long, env = "RINGSTORE_LOADGEN_DURATION")]
    duration: Option<f64>,
    /// Operations per phase (PUT writes objects 0..N)
    #[arg(long, env = "RINGSTORE_LOADGEN_OBJECTS")]
    objects: Option<u64>,
    /// For `--ops get` alone: read random objects among 0..N (written by an earlier run with
    /// the same size and prefix) for the whole phase; unlike --objects, the number of GETs is
    /// not capped
    #[arg(long, env = "RINGSTORE_LOADGEN_POPULATION", value_parser = clap::value_parser!(u64).range(1..))]
    population: Option<u64>,
    /// Phases to run, in order put then get
    #[arg(
        long,
        env = "RINGSTORE_LOADGEN_OPS",
        value_delimiter = ',',
        default_value = "put,get"
    )]
    ops: Vec<Op>,
    /// Also print one JSON line per phase
    #[arg(long, env = "RINGSTORE_LOADGEN_JSON")]
    json: bool,
    /// Per-request timeout in seconds
    #[arg(long, env = "RINGSTORE_LOADGEN_TIMEOUT", default_value_t = 120.0)]
    timeout: f64,
    /// Tokio worker threads (1 = single-threaded runtime, cheapest on a shared machine)
    #[arg(long, env = "RINGSTORE_LOADGEN_THREADS", default_value_t = 1)]
    threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Op {
    Put,
    Get,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(errors) => {
            eprintln!("{errors} operation(s) failed");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs all phases; returns the total number of failed operations.
async fn run(args: Args) -> anyhow::Result<u64> {
    let access_key = args
        .access_key
        .clone()
        .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok())
        .context("no access key: use --access-key, RINGSTORE_ACCESS_KEY or AWS_ACCESS_KEY_ID")?;
    let secret_key = args
        .secret_key
        .clone()
        .or_else(|| std::env::var("AWS_SECRET_ACCESS_KEY").ok())
        .context("no secret key: use --secret-key, RINGSTORE_SECRET_KEY or AWS_SECRET_ACCESS_KEY")?;
    let region = args
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .unwrap_or_else(|| "us-east-1".to_owned());
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let duration = match (args.duration, args.objects) {
        (Some(d), _) if !(d > 0.0 && d.is_finite()) => bail!("--duration must be positive"),
        (Some(d), _) => Some(Duration::from_secs_f64(d)),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let mut ops = args.ops.clone();
    ops.sort_unstable();
    ops.dedup();

    if args.endpoint.is_empty() {
        bail!("--endpoint needs at least one URL");
    }
    let per_endpoint = args.concurrency.div_ceil(args.endpoint.len());
    let clients = args
        .endpoint
        .iter()
        .map(|e| {
            S3Client::new(
                e,
                Signer::new(access_key.clone(), secret_key.clone(), region.clone()),
                &args.bucket,
                per_endpoint,
            )
            .map(Arc::new)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    clients[0].ensure_bucket().await?;
    let payload = Payload::new(args.size);

    let phase = Phase {
        clients,
        payload,
        prefix: format!("{}/{}", args.prefix, format_size(args.size)),
        concurrency: args.concurrency,
        duration,
        objects: args.objects,
        timeout: Duration::from_secs_f64(args.timeout.max(0.001)),
    };

    println!("{}", PhaseReport::table_header());
    let mut written: Option<Vec<u64>> = None;
    let mut total_errors = 0;
    for op in ops {
        let population = match op {
            Op::Put => Vec::new(),
            Op::Get => match (written.take(), args.population.or(args.objects)) {
                (Some(w), _) => w,
                (None, Some(n)) => (0..n).collect(),
                (None, None) => bail!(
                    "--ops get without put needs --population N or --objects N (objects 0..N must exist)"
                ),
            },
        };
        if op == Op::Get && population.is_empty() {
            eprintln!("get: skipped, no object was written successfully");
            total_errors += 1;
            continue;
        }
        let (report, ok_seqs) = phase.run(op, Arc::new(population)).await;
        println!("{}", report.table_row());
        if args.json {
            println!("{}", report.json());
        }
        total_errors += report.errors;
        if op == Op::Put {
            written = Some(ok_seqs);
        }
    }
    Ok(total_errors)
}

/// Everything a phase needs, shared by its workers.
struct Phase {
    clients: Vec<Arc<S3Client>>,
    payload: Payload,
    prefix: String,
    concurrency: usize,
    duration: Option<Duration>,
    objects: Option<u64>,
    timeout: Duration,
}

/// State shared by the workers of one phase.
struct Shared {
    next: AtomicU64,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

/// What one worker collected.
#[derive(Default)]
struct WorkerResult {
    latencies_us: Vec<u32>,
    ok_seqs: Vec<u64>,
}

impl Phase {
    /// Runs one phase; returns its report and the sequence numbers of successful operations.
    async fn run(&self, op: Op, population: Arc<Vec<u64>>) -> (PhaseReport, Vec<u64>) {
        let shared = Arc::new(Shared {
            next: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_errors: Mutex::new(Vec::new()),
        });
        let start = Instant::now();
        let deadline = self.duration.map(|d| start + d);
        let workers: Vec<_> = (0..self.concurrency)
            .map(|i| {
                let ctx = WorkerCtx {
                    client: self.clients[i % self.clients.len()].clone(),
                    payload: self.payload.clone(),
                    prefix: self.prefix.clone(),
                    shared: shared.clone(),
                    population: population.clone(),
                    deadline,
                    objects: self.objects,
                    timeout: self.timeout,
                };
                tokio::spawn(ctx.run(op))
            })
            .collect();
        let mut latencies = Vec::new();
        let mut ok_seqs = Vec::new();
        for w in workers {
            match w.await {
                Ok(r) => {
                    latencies.extend(r.latencies_us);
                    ok_seqs.extend(r.ok_seqs);
                }
                Err(e) => record_error(&shared, format!("worker panicked: {e}")),
            }
        }
        let elapsed = start.elapsed();
        let errors = shared.errors.load(Ordering::Relaxed);
        let first = std::mem::take(&mut *shared.first_errors.lock().expect("not poisoned"));
        if errors > 0 {
            eprintln!(
                "{} {}: {errors} error(s), first {}:",
                op.name(),
                format_size(self.payload.size()),
                first.len()
            );
            for e in &first {
                eprintln!("  {e}");
            }
        }
        let report = PhaseReport::new(
            op.name(),
            self.payload.size(),
            self.concurrency,
            latencies,
            errors,
            elapsed,
        );
        (report, ok_seqs)
    }
}

fn record_error(shared: &Shared, msg: String) {
    shared.errors.fetch_add(1, Ordering::Relaxed);
    let mut first = shared.first_errors.lock().expect("not poisoned");
    if first.len() < MAX_PRINTED_ERRORS {
        first.push(msg);
    }
}

/// One in-flight request slot: issues operations back to back until the phase ends.
struct WorkerCtx {
    client: Arc<S3Client>,
    payload: Payload,
    prefix: String,
    shared: Arc<Shared>,
    population: Arc<Vec<u64>>,
    deadline: Option<Instant>,
    objects: Option<u64>,
    timeout: Duration,
}

impl WorkerCtx {
    async fn run(self, op: Op) -> WorkerResult {
        let mut out = WorkerResult::default();
        let size = self.payload.size() as u64;
        loop {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let n = self.shared.next.fetch_add(1, Ordering::Relaxed);
            if self.objects.is_some_and(|max| n >= max) {
                break;
            }
            let seq = match op {
                Op::Put => n,
                Op::Get => self.population[rand::rng().random_range(0..self.population.len())],
            };
            let key = format!("{}/{seq:010}", self.prefix);
            let start = Instant::now();
            let result = match op {
                Op::Put => {
                    let fut = self.client.put(&key, self.payload.body(seq), size);
                    with_timeout(self.timeout, &key, fut).await
                }
                Op::Get => {
                    let fut = self.client.get(&key, self.payload.verifier(seq));
                    with_timeout(self.timeout, &key, fut).await
                }
            };
            match result {
                Ok(()) => {
                    let us = start.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    out.latencies_us.push(us);
                    if op == Op::Put {
                        out.ok_seqs.push(seq);
                    }
                }
                Err(msg) => record_error(&self.shared, msg),
            }
        }
        out
    }
}
