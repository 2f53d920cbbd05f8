//! What the kubelet stand-in does to a container's environment and arguments so that many
//! pods can share one host: `$(VAR)` expansion as the kubelet does it, a DNS stand-in
//! (pod host names become the pods' loopback IPs), `0.0.0.0` becomes the pod's own IP, and
//! volume mount paths become host folders.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Expands `$(NAME)` from `vars` the way the kubelet does: `$$` is a literal `$`, a name
/// not in `vars` (or a reference without its closing parenthesis) is left as written.
pub fn expand(input: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Rewrites host names and mount paths in one pod's env values and arguments.
pub struct Rewriter<'a> {
    /// The pod's namespace: `<pod>.<service>.<namespace>` is only taken for a pod host name
    /// in this namespace (the other forms end in `.svc` or `.svc.cluster.local`).
    pub namespace: &'a str,
    /// This pod's IP: `0.0.0.0` becomes it, since all pods share the host.
    pub pod_ip: Ipv4Addr,
    /// The IP of (namespace, pod), allocated on first use.
    pub resolve: &'a dyn Fn(&str, &str) -> Ipv4Addr,
    /// (mount path in the container, folder on the host)
    pub mounts: &'a [(String, PathBuf)],
}

fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-'
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Rewriter<'_> {
    pub fn rewrite(&self, s: &str) -> String {
        self.rewrite_mounts(&self.rewrite_hosts(s))
    }

    /// Host-name tokens (runs of letters, digits, `.` and `-`) that name a pod become the
    /// pod's IP; `0.0.0.0` becomes this pod's IP.
    pub fn rewrite_hosts(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut token = String::new();
        for c in s.chars() {
            if is_host_char(c) {
                token.push(c);
            } else {
                out.push_str(&self.host_token(&token));
                token.clear();
                out.push(c);
            }
        }
        out.push_str(&self.host_token(&token));
        out
    }

    fn host_token(&self, token: &str) -> String {
        if token == "0.0.0.0" {
            return self.pod_ip.to_string();
        }
        let name = token.strip_suffix('.').unwrap_or(token);
        let labels: Vec<&str> = name.split('.').collect();
        if !labels.iter().all(|l| is_label(l)) {
            return token.to_string();
        }
        let target = match labels.as_slice() {
            [pod, _service, ns, "svc", "cluster", "local"] => Some((*ns, *pod)),
            [pod, _service, ns, "svc"] => Some((*ns, *pod)),
            [pod, service, ns]
                if *ns == self.namespace
                    && !token.ends_with('.')
                    && [pod, service]
                        .iter()
                        .all(|l| l.chars().any(|c| c.is_ascii_lowercase())) =>
            {
                Some((*ns, *pod))
            }
            _ => None,
        };
        match target {
            Some((ns, pod)) => (self.resolve)(ns, pod).to_string(),
            None => token.to_string(),
        }
    }

    /// Every occurrence of a mount path (as a whole path or a prefix of a longer path)
    /// becomes the host folder.
    pub fn rewrite_mounts(&self, s: &str) -> String {
        if self.mounts.is_empty() {
            return s.to_string();
        }
        let mut mounts: Vec<&(String, PathBuf)> = self.mounts.iter().filter(|(p, _)| !p.is_empty()).collect();
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let path_char = |c: char| c.is_ascii_alphanumeric() || "._-/".contains(c);
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        'scan: while i < s.len() {
            let before_ok = s[..i].chars().next_back().is_none_or(|c| !path_char(c));
            if before_ok {
                for (path, host) in &mounts {
                    let path = path.trim_end_matches('/');
                    if s[i..].starts_with(path) {
                        let end = i + path.len();
                        let after_ok = s[end..].chars().next().is_none_or(|c| c == '/' || !path_char(c));
                        if after_ok {
                            out.push_str(&host.to_string_lossy());
                            i = end;
                            continue 'scan;
                        }
                    }
                }
            }
            let c = s[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expands_like_the_kubelet() {
        let v = vars(&[("A", "1"), ("NAME", "pod-0")]);
        assert_eq!(expand("$(A)", &v), "1");
        assert_eq!(expand("x$(A)y$(A)", &v), "x1y1");
        assert_eq!(expand("$(B)", &v), "$(B)");
        assert_eq!(expand("$$(A)", &v), "$(A)");
        assert_eq!(expand("$$", &v), "$");
        assert_eq!(expand("a$b", &v), "a$b");
        assert_eq!(expand("$(A", &v), "$(A");
        assert_eq!(expand("end$", &v), "end$");
        assert_eq!(
            expand("$(NAME).t-peers.ns.svc.cluster.local:9100", &v),
            "pod-0.t-peers.ns.svc.cluster.local:9100"
        );
    }

    #[test]
    fn rewrites_pod_host_names_and_mounts() {
        let resolve = |ns: &str, pod: &str| -> Ipv4Addr {
            match (ns, pod) {
                ("ns", "t-a-0") => Ipv4Addr::new(127, 1, 0, 1),
                ("ns", "t-a-1") => Ipv4Addr::new(127, 1, 0, 2),
                ("other", "x-0") => Ipv4Addr::new(127, 1, 0, 9),
                _ => Ipv4Addr::new(127, 1, 0, 99),
            }
        };
        let mounts = vec![
            ("/data/0".to_string(), PathBuf::from("/h/ns/data-0-t-a-0")),
            ("/data/1/".to_string(), PathBuf::from("/h/ns/data-1-t-a-0")),
        ];
        let r = Rewriter {
            namespace: "ns",
            pod_ip: Ipv4Addr::new(127, 1, 0, 1),
            resolve: &resolve,
            mounts: &mounts,
        };
        assert_eq!(
            r.rewrite("t-a-0.t-peers.ns.svc.cluster.local:9100,t-a-1.t-peers.ns.svc:9100"),
            "127.1.0.1:9100,127.1.0.2:9100"
        );
        assert_eq!(r.rewrite("t-a-1.t-peers.ns:9100"), "127.1.0.2:9100");
        assert_eq!(
            r.rewrite("http://x-0.s.other.svc.cluster.local.:80/"),
            "http://127.1.0.9:80/"
        );
        // not pod names: other namespaces without .svc, files, versions, plain words
        assert_eq!(r.rewrite("a.b.other"), "a.b.other");
        assert_eq!(r.rewrite("file.tar.gz"), "file.tar.gz");
        assert_eq!(r.rewrite("1.2.3"), "1.2.3");
        assert_eq!(r.rewrite("t-svc.ns.svc"), "t-svc.ns.svc");
        assert_eq!(r.rewrite("0.0.0.0:9000"), "127.1.0.1:9000");
        assert_eq!(r.rewrite("10.0.0.0:9000"), "10.0.0.0:9000");
        assert_eq!(
            r.rewrite("/data/0,/data/1"),
            "/h/ns/data-0-t-a-0,/h/ns/data-1-t-a-0"
        );
        assert_eq!(r.rewrite("--data=/data/0/sub"), "--data=/h/ns/data-0-t-a-0/sub");
        assert_eq!(r.rewrite("/data/01 /x/data/0"), "/data/01 /x/data/0");
    }
}
