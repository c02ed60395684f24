//! A real browser (Debian's headless Chromium) opens an installation's start link, follows the
//! redirects through the stand-in's consent and back to the callback, and renders the success
//! page. `.ci/run` installs Chromium; the test fails (not skips) when it is missing.

mod support;

use confluence_auth_operator::crd::{ConfluenceInstallation, CredentialResource};
use kube::api::Api;
use support::*;

fn chromium() -> String {
    for candidate in ["chromium", "chromium-browser", "/usr/bin/chromium"] {
        if std::process::Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return candidate.to_string();
        }
    }
    panic!("Chromium is not installed: run `apt-get install chromium` (.ci/run does)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_completes_the_consent_and_renders_the_success_page() {
    let browser = chromium();
    let (env, operator, ns) = with_operator("browser").await;
    env.apply_examples(&ns, &["client-secret.yaml", "installation.yaml"]);
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    let link = eventually("a link", || async {
        installations
            .get("acme")
            .await
            .ok()
            .and_then(|o| o.credential().and_then(|c| c.authorization_url.clone()))
    })
    .await;
    env.atlassian.consent_as(ADA);

    let profile = env.dir.path().join("chromium-profile");
    let screenshot = env.dir.path().join("success.png");
    let run = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(&browser);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(&link)
        .kill_on_drop(true);
        cmd
    };
    let output = tokio::time::timeout(WAIT, run(&["--dump-dom", "--virtual-time-budget=10000"]).output())
        .await
        .expect("chromium finishes")
        .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("<h1>Connected</h1>"),
        "Chromium did not end on the success page:\n{dom}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        dom.contains("https://acme.atlassian.net") && dom.contains("Ada Admin"),
        "{dom}"
    );

    let cfi = ready(&installations, "acme").await;
    assert_eq!(cfi.credential().unwrap().installed_by.as_deref(), Some(ADA));
    // The used link, opened again in the same browser, renders the stale-link page.
    let screenshot_arg = format!("--screenshot={}", screenshot.display());
    let again = tokio::time::timeout(WAIT, run(&["--dump-dom"]).output())
        .await
        .expect("chromium finishes")
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("Link expired or already used"));
    let shot = tokio::time::timeout(WAIT, run(&[&screenshot_arg, "--window-size=800,400"]).output())
        .await
        .expect("chromium finishes")
        .unwrap();
    assert!(
        shot.status.success() && std::fs::metadata(&screenshot).map(|m| m.len() > 0).unwrap_or(false),
        "no screenshot"
    );
    drop(operator);
}
