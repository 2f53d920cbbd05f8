//! The operator binary's command line: flags documented with their environment variables,
//! and bad input or a missing cluster answered with a message that names the problem.

use std::process::Command;

fn operator() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ringstore-operator"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn help_documents_every_flag_with_its_environment_variable() {
    let out = operator().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--metrics-address",
        "--log-format",
        "--leader-election",
        "--watch-namespace",
        "--resync-seconds",
    ] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
    assert!(
        text.contains("[env: RINGSTORE_OPERATOR_METRICS_ADDRESS="),
        "{text}"
    );
    assert!(text.contains("[env: POD_NAMESPACE="), "{text}");
}

#[test]
fn a_bad_flag_value_is_named() {
    let out = operator().args(["--resync-seconds", "soon"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("invalid value 'soon' for '--resync-seconds"),
        "{text}"
    );
}

#[test]
fn without_a_cluster_it_exits_and_says_why() {
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("no-kubeconfig");
    let out = operator()
        .env("HOME", home.path())
        .env("KUBECONFIG", &missing)
        .args(["--metrics-address", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "exits non-zero without a cluster");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("kubeconfig"), "{text}");
    assert!(text.contains("no-kubeconfig"), "names the file it tried: {text}");
}
