//! The README's main command: `confluence-auth-operator demo` runs the whole product on the
//! embedded test control plane and ends with both credentials Ready.

use std::process::Command;

#[test]
fn the_demo_walks_both_consents_on_the_embedded_control_plane() {
    let output = Command::new(env!("CARGO_BIN_EXE_confluence-auth-operator"))
        .args(["demo", "--exit-when-ready"])
        .env_remove("KUBECONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "no cluster configured: embedded test control plane",
        "ConfluenceInstallation demo/acme is Ready",
        "ConfluenceUserAuth demo/alice is Ready",
        "Secret demo/alice-token (what pods mount) has keys: access_token, account_id, api_base_url, cloud_id, expires_at, scopes, site_url, token_type",
        "demo finished: both credentials Ready",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(
        !stdout.contains("atl_at_") && !stdout.contains("atl_rt_"),
        "the demo printed a token"
    );
}

/// Without `--exit-when-ready` the demo keeps going: short tokens, and one line per refresh,
/// health check and phase change. Two refreshes show within two minutes of the start.
#[test]
fn the_demo_keeps_refreshing_and_prints_each_refresh() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_confluence-auth-operator"))
        .arg("demo")
        .env_remove("KUBECONFIG")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(120);
    let mut lines = Vec::new();
    let mut refreshes = 0;
    while refreshes < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if line.contains(" refreshed: the new access token expires at ") {
                    refreshes += 1;
                }
                lines.push(line);
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = lines.join("\n");
    assert!(refreshes >= 2, "fewer than two refreshes within two minutes:\n{all}");
    assert!(all.contains("ConfluenceUserAuth demo/alice is Ready"), "{all}");
    assert!(
        !all.contains("atl_at_") && !all.contains("atl_rt_"),
        "the demo printed a token"
    );
}
