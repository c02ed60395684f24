//! `testbed serve`: one JSON line with both URLs and the kubeconfig, both servers usable
//! (kubectl through the kubeconfig; the stand-in's demo world), everything on 127.0.0.1,
//! and nothing left behind once the process is killed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn serve_prints_its_urls_and_both_servers_answer() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(["serve", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&line).unwrap();
    let apiserver = info["apiserver"].as_str().unwrap().to_string();
    let atlassian = info["atlassian"].as_str().unwrap().to_string();
    assert!(
        apiserver.starts_with("http://127.0.0.1:") && atlassian.starts_with("http://127.0.0.1:"),
        "{info}"
    );
    assert_eq!(info["kubeconfig"].as_str().unwrap(), kubeconfig.to_str().unwrap());

    let kubectl = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "namespaces", "-o", "name"])
        .output()
        .unwrap();
    assert!(kubectl.status.success(), "{}", String::from_utf8_lossy(&kubectl.stderr));
    assert!(String::from_utf8_lossy(&kubectl.stdout).contains("namespace/default"));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tenant: serde_json::Value = runtime.block_on(async {
        reqwest::get(format!("{atlassian}/site/acme.atlassian.net/_edge/tenant_info"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(tenant["cloudId"], "11111111-1111-4111-8111-111111111111");

    child.kill().unwrap();
    child.wait().unwrap();
    let addr = apiserver.trim_start_matches("http://").to_string();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "nothing listens after the process is gone"
    );
}
