//! End to end: `authorize --wait` and `status` as a person runs them (the binary, with
//! `KUBECONFIG`), against the operator on the test control plane and the Atlassian stand-in.

mod support;

use std::process::Stdio;

use confluence_auth_operator::crd::{ConfluenceInstallation, CredentialResource};
use kube::api::Api;
use serde_json::Value;
use support::*;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

fn cli(env: &Env, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_confluence-auth-operator"));
    cmd.args(args)
        .env("KUBECONFIG", &env.kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn run(env: &Env, args: &[&str]) -> std::process::Output {
    tokio::time::timeout(WAIT, cli(env, args).output())
        .await
        .expect("the command ends")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_wait_prints_the_link_and_returns_once_ready_and_status_shows_it() {
    let (env, _operator, ns) = with_operator("cli").await;
    env.apply_examples(&ns, &["client-secret.yaml", "installation.yaml", "user-auth.yaml"]);
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    link_of(&installations, "acme").await;

    let mut child = cli(
        &env,
        &[
            "authorize",
            "installation",
            "acme",
            "-n",
            &ns,
            "--wait",
            "--timeout",
            "60s",
        ],
    )
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let link = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(link) = line.trim().strip_prefix("http") {
                return format!("http{link}");
            }
        }
        panic!("authorize ended without printing a link");
    })
    .await
    .expect("a link within the wait");
    assert!(
        link.contains(&format!("/oauth/start/{ns}/installation/acme?nonce=")),
        "{link}"
    );

    let page = Browser::new().authorize(&link).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("authorize --wait returns")
        .unwrap();
    assert!(status.success(), "authorize --wait exited with {status}");
    let mut rest = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        rest.push_str(&line);
        rest.push('\n');
    }
    assert!(rest.contains("installation/acme is Ready"), "{rest}");

    let cfi = installations.get("acme").await.unwrap();
    let cred = cfi.credential().unwrap();
    let out = run(&env, &["status", "-n", &ns, "-o", "json"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let installation = &rows[0];
    assert_eq!(installation["kind"], "ConfluenceInstallation");
    assert_eq!(installation["name"], "acme");
    assert_eq!(installation["namespace"], ns.as_str());
    assert_eq!(installation["phase"], "Ready");
    assert_eq!(installation["site"], "https://acme.atlassian.net");
    assert_eq!(installation["account"], ADA);
    assert_eq!(
        installation["tokenExpiresAt"],
        cred.access_token_expires_at.as_ref().unwrap().0.to_string()
    );
    assert_eq!(
        installation["refreshTokenExpiresAt"],
        cred.refresh_token_expires_at.as_ref().unwrap().0.to_string()
    );
    // Set once the operator schedules refreshes; the column shows whatever status holds.
    assert_eq!(
        installation["nextRefresh"],
        serde_json::json!(cred.next_refresh_time.as_ref().map(|t| t.0.to_string()))
    );
    assert_eq!(installation["lastProblem"], Value::Null);
    let user = &rows[1];
    assert_eq!(user["kind"], "ConfluenceUserAuth");
    assert_eq!(user["name"], "alice");
    assert_eq!(user["phase"], "AwaitingAuthorization");
    let problem = user["lastProblem"].as_str().expect("the user's problem");
    assert!(problem.starts_with("AwaitingConsent: "), "{problem}");

    let out = run(&env, &["status", "-A"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for column in [
        "NAMESPACE",
        "KIND",
        "NAME",
        "PHASE",
        "SITE",
        "ACCOUNT",
        "TOKEN EXPIRES",
        "NEXT REFRESH",
        "REFRESH TOKEN EXPIRES",
        "LAST PROBLEM",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let acme = table
        .lines()
        .find(|l| l.starts_with(&ns) && l.contains("ConfluenceInstallation"))
        .unwrap_or_else(|| panic!("no row for {ns}/acme:\n{table}"));
    assert!(
        acme.contains(" Ready ") && acme.contains(ADA) && acme.contains("https://acme.atlassian.net"),
        "{acme}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_wait_fails_with_the_ready_message_on_failed_and_on_timeout() {
    let (env, _operator, ns) = with_operator("cli-fail").await;
    // A service-account installation whose client secret does not exist: phase Failed.
    let manifest = env.dir.path().join("bot.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: confluence-auth.dev/v1alpha1\nkind: ConfluenceInstallation\nmetadata:\n  name: bot\nspec:\n  \
         grant: ClientCredentials\n  clientId: demo-service-client\n  clientSecretRef:\n    name: nope\n    key: client-secret\n  \
         scopes: [read:confluence-content.all]\n  site: acme.atlassian.net\n",
    )
    .unwrap();
    env.kubectl_ok(&["apply", "-n", &ns, "-f", &manifest.to_string_lossy()]);
    let out = run(
        &env,
        &[
            "authorize",
            "installation",
            "bot",
            "-n",
            &ns,
            "--wait",
            "--timeout",
            "25s",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Failed") && stderr.contains("ClientSecretMissing") && stderr.contains("nope"),
        "{stderr}"
    );

    // Nobody consents: the wait ends at --timeout with the Ready condition's message.
    env.apply_examples(&ns, &["client-secret.yaml", "installation.yaml"]);
    let out = run(
        &env,
        &[
            "authorize",
            "installation",
            "acme",
            "-n",
            &ns,
            "--wait",
            "--timeout",
            "2s",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("/oauth/start/"));
    assert!(
        stderr.contains("not Ready after 2s") && stderr.contains("AwaitingConsent"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_an_object_past_the_schema_as_a_row_naming_its_problem() {
    let env = Env::start().await;
    let Some(api) = &env.api else {
        eprintln!("a real cluster enforces the schema: nothing to list past it");
        return;
    };
    let ns = env.namespace("cli-bad").await;
    env.apply_examples(&ns, &["client-secret.yaml", "installation.yaml", "user-auth.yaml"]);
    api.set_enforce_schemas(false);
    let path = env.dir.path().join("dave.yaml");
    std::fs::write(
        &path,
        "apiVersion: confluence-auth.dev/v1alpha1\nkind: ConfluenceUserAuth\nmetadata:\n  name: dave\nspec:\n  installationRef:\n    name: acme\n  userId: [0]\n",
    )
    .unwrap();
    env.kubectl_ok(&["apply", "-n", &ns, "-f", &path.to_string_lossy()]);
    api.set_enforce_schemas(true);

    let out = run(&env, &["status", "-n", &ns, "-o", "json"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["acme", "alice", "dave"]);
    assert_eq!(
        rows[2]["lastProblem"],
        "InvalidSpec: spec.userId has the wrong type (sequence, expected a string): correct it (kubectl explain confluenceuserauth.spec.userId describes it)"
    );
    assert_eq!(rows[2]["phase"], "-");
}
