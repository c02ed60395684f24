//! Logs read clean where they land: `run` with stderr to a file (as in a pod) writes plain lines
//! without a single escape code, and `--log-format json` writes one JSON object per line.

mod support;

use confluence_auth_operator::crd::ConfluenceInstallation;
use kube::api::Api;
use support::{Env, Operator, link_of};

/// Runs the operator with `log_format` through start-up and one reconcile, stops it cleanly,
/// and returns what it wrote.
async fn logged(log_format: &str) -> String {
    let env = Env::start().await;
    env.ensure_namespace(&env.operator_ns).await;
    let ns = env.namespace("logs").await;
    let mut operator = Operator::spawn_logging(&env, &env.operator_ns, log_format, &["--namespaces", &ns]);
    operator.ready().await;
    env.apply_examples(&ns, &["client-secret.yaml", "installation.yaml"]);
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    link_of(&installations, "acme").await;
    operator.stop();
    operator.logs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_logs_to_a_file_carry_no_escape_codes() {
    let log = logged("plain").await;
    assert!(
        log.lines().filter(|l| l.contains(" INFO ")).count() >= 2,
        "expected INFO lines from start-up and the reconcile:\n{log}"
    );
    assert!(
        !log.as_bytes().contains(&0x1b),
        "an escape code (0x1b) in a log written to a file:\n{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_line_by_line() {
    let log = logged("json").await;
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 2, "expected log lines:\n{log}");
    for line in lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(
            value["level"].is_string() && value["timestamp"].is_string(),
            "a log line without level or timestamp: {line}"
        );
    }
    assert!(!log.as_bytes().contains(&0x1b), "an escape code in JSON logs");
}
