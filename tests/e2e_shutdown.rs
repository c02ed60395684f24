//! SIGTERM (issue 9: graceful shutdown within the pod's grace period). The kubelet sends
//! SIGTERM, waits `terminationGracePeriodSeconds`, then SIGKILLs: the operator finishes the
//! refreshes in flight, but for at most `--shutdown-timeout` (the chart sets it 5 s below the
//! grace period), and a refresh cut off there is the crash window of DESIGN.md step 4 (the next
//! leader sends the previous refresh token again, within Atlassian's leeway).

mod support;

use std::time::Duration;

use confluence_auth_operator::crd::{ConfluenceInstallation, CredentialResource};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use support::*;
use testbed::atlassian::{Endpoint, Fault};

async fn last_refresh(api: &Api<ConfluenceInstallation>) -> Option<Time> {
    api.get("acme")
        .await
        .unwrap()
        .credential()
        .and_then(|s| s.last_refresh_time.clone())
}

/// A Ready installation with 30-second tokens, and the operator that keeps it.
async fn ready_installation(prefix: &str, flags: &[&str]) -> (Env, Operator, Api<ConfluenceInstallation>) {
    let env = Env::start().await;
    env.ensure_namespace(&env.operator_ns).await;
    let ns = env.namespace(prefix).await;
    let mut args = vec!["--lease-duration", "3s"];
    args.extend_from_slice(flags);
    let operator = Operator::spawn_with(&env, &env.operator_ns, &args);
    operator.ready().await;
    env.apply_examples(&ns, &["client-secret.yaml"]);
    env.atlassian.set_access_token_lifetime(Duration::from_secs(30));
    let api = installation(&env.client, &ns, "10s", "24h").await;
    consent(&env, &api, "acme", ADA).await;
    (env, operator, api)
}

/// Waits until the next refresh-token call has reached the stand-in (its answer is delayed).
async fn refresh_in_flight(env: &Env) {
    let before = env.atlassian.counters().grants("refresh_token");
    eventually("a refresh-token call to reach the stand-in", || async {
        (env.atlassian.counters().grants("refresh_token") > before).then_some(())
    })
    .await;
}

/// Restarts the operator, lets it refresh once, then moves the stand-in's clock past the
/// 10-minute leeway: the refresh after that succeeds only with the newest refresh token of the
/// family, so it proves what the vault holds.
async fn vault_holds_a_live_refresh_token(env: &Env, api: &Api<ConfluenceInstallation>) -> Operator {
    let operator = Operator::spawn_with(env, &env.operator_ns, &["--lease-duration", "3s"]);
    operator.ready().await;
    for when in ["after the restart", "after the leeway"] {
        let before = last_refresh(api).await;
        if when == "after the leeway" {
            env.atlassian.advance_clock(Duration::from_secs(11 * 60));
        }
        eventually(&format!("a refresh {when}"), || async {
            (last_refresh(api).await != before).then_some(())
        })
        .await;
    }
    ready(api, "acme").await;
    assert_eq!(
        env.atlassian.reuse_counters().after_leeway,
        0,
        "a family was revoked; the log:\n{}",
        operator.logs()
    );
    operator
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_refresh_in_flight_and_stores_it() {
    let (env, mut operator, api) = ready_installation("term-finish", &[]).await;
    let codes = env.atlassian.counters().grants("authorization_code");
    // Slow, but within the harness's `--atlassian-timeout 2s`.
    env.atlassian
        .fail_next(Endpoint::Token, 1, Fault::delay(Duration::from_millis(1500)));
    refresh_in_flight(&env).await;
    operator.terminate();
    let status = operator.wait_exit().await;
    let log = operator.logs();
    assert!(status.success(), "exit {status}; log:\n{log}");
    let renewed = log.find("renewed the access token").expect(&log);
    let shutting_down = log.find("shutting down").expect(&log);
    assert!(
        shutting_down < renewed,
        "the refresh finished after the SIGTERM:\n{log}"
    );
    assert!(!log.contains("did not finish within --shutdown-timeout"), "{log}");
    // The rotated refresh token reached the vault: nothing is resent.
    let reuse_before = env.atlassian.reuse_counters().within_leeway;
    let _successor = vault_holds_a_live_refresh_token(&env, &api).await;
    assert_eq!(env.atlassian.reuse_counters().within_leeway, reuse_before);
    assert_eq!(
        env.atlassian.counters().grants("authorization_code"),
        codes,
        "no new consent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_shutdown_timeout_exits_and_the_successor_recovers() {
    let (env, mut operator, api) = ready_installation("term-timeout", &["--shutdown-timeout", "1s"]).await;
    let codes = env.atlassian.counters().grants("authorization_code");
    env.atlassian
        .fail_next(Endpoint::Token, 1, Fault::delay(Duration::from_secs(8)));
    refresh_in_flight(&env).await;
    operator.terminate();
    let status = operator.wait_exit().await;
    let log = operator.logs();
    assert!(status.success(), "exit {status}; log:\n{log}");
    assert!(log.contains("did not finish within --shutdown-timeout"), "{log}");
    assert!(!log.contains("renewed the access token"), "{log}");
    // Whatever Atlassian did with the cut-off call, the successor's refresh is due and the
    // family survives the leeway.
    let _successor = vault_holds_a_live_refresh_token(&env, &api).await;
    assert_eq!(
        env.atlassian.counters().grants("authorization_code"),
        codes,
        "no new consent"
    );
}
