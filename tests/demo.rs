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
