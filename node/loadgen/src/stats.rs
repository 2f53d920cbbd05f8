//! Per-phase results: latency percentiles, throughput and their human / JSON rendering.

use std::time::Duration;

/// Aggregated outcome of one phase (e.g. "PUT 1MiB").
#[derive(Debug, Clone)]
pub struct PhaseReport {
    pub op: &'static str,
    pub size: usize,
    pub concurrency: usize,
    /// Successful operations.
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl PhaseReport {
    /// Builds a report from the latencies (microseconds) of the successful operations.
    pub fn new(
        op: &'static str,
        size: usize,
        concurrency: usize,
        mut latencies_us: Vec<u32>,
        errors: u64,
        elapsed: Duration,
    ) -> Self {
        latencies_us.sort_unstable();
        let pct = |p: f64| percentile(&latencies_us, p) as f64 / 1000.0;
        Self {
            op,
            size,
            concurrency,
            ops: latencies_us.len() as u64,
            errors,
            elapsed,
            p50_ms: pct(50.0),
            p99_ms: pct(99.0),
            max_ms: latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        }
    }

    pub fn ops_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.ops as f64 / secs } else { 0.0 }
    }

    pub fn mib_per_sec(&self) -> f64 {
        self.ops_per_sec() * self.size as f64 / (1024.0 * 1024.0)
    }

    pub fn table_header() -> String {
        format!(
            "{:<4} {:>8} {:>5} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "op", "size", "conc", "ops", "errors", "ops/s", "MiB/s", "p50 ms", "p99 ms", "max ms", "secs"
        )
    }

    pub fn table_row(&self) -> String {
        format!(
            "{:<4} {:>8} {:>5} {:>9} {:>7} {:>10.1} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>8.2}",
            self.op,
            format_size(self.size),
            self.concurrency,
            self.ops,
            self.errors,
            self.ops_per_sec(),
            self.mib_per_sec(),
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.elapsed.as_secs_f64()
        )
    }

    /// One JSON object on a single line (all string fields are plain ASCII tokens, no escaping needed).
    pub fn json(&self) -> String {
        format!(
            "{{\"op\":\"{}\",\"size\":{},\"size_label\":\"{}\",\"concurrency\":{},\"ops\":{},\"errors\":{},\
             \"seconds\":{:.3},\"ops_per_sec\":{:.2},\"mib_per_sec\":{:.2},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\
             \"max_ms\":{:.3}}}",
            self.op,
            self.size,
            format_size(self.size),
            self.concurrency,
            self.ops,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.ops_per_sec(),
            self.mib_per_sec(),
            self.p50_ms,
            self.p99_ms,
            self.max_ms
        )
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Parses sizes like `4096`, `4KiB`, `1MiB`, `64MiB`, `1GiB`, `4k`, `1m`, `10KB` (KB/MB/GB are decimal).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: usize = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "invalid size unit in {s:?} (use e.g. 4096, 4KiB, 1MiB, 64MiB)"
            ));
        }
    };
    num.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

/// Formats a byte count compactly: `4KiB`, `1MiB`, `64MiB`, or plain bytes when not a whole unit.
pub fn format_size(size: usize) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if size >= 1 << shift && size.is_multiple_of(1 << shift) {
            return format!("{}{unit}", size >> shift);
        }
    }
    format!("{size}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("12345"), Ok(12345));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("10KB"), Ok(10_000));
        assert!(parse_size("x").is_err());
        assert!(parse_size("4XB").is_err());
        assert_eq!(format_size(4096), "4KiB");
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_size(0), "0B");
    }

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[7], 99.0), 7);
    }

    #[test]
    fn report() {
        let r = PhaseReport::new(
            "put",
            1 << 20,
            4,
            vec![3000, 1000, 2000],
            1,
            Duration::from_secs(1),
        );
        assert_eq!(r.ops, 3);
        assert_eq!(r.ops_per_sec(), 3.0);
        assert_eq!(r.mib_per_sec(), 3.0);
        assert_eq!(r.p50_ms, 2.0);
        assert_eq!(r.max_ms, 3.0);
        assert!(
            r.json()
                .starts_with("{\"op\":\"put\",\"size\":1048576,\"size_label\":\"1MiB\"")
        );
    }
}
