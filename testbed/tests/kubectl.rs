//! kubectl 1.32 against the test API server, compared with what a real cluster answers
//! (`shared/k8s-reference/kubectl/*.log`): apply of a CRD and a custom resource, Table output
//! with printer columns, categories, `get -w`, status patches, a stale replace, re-apply.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Kubectl, fixture};
use testbed::apiserver::ApiServer;

async fn with_sample() -> (ApiServer, Kubectl) {
    let server = ApiServer::start().await.unwrap();
    let k = Kubectl::new(&server);
    assert_eq!(
        k.ok(&["apply", "-f", &fixture("namespace.yaml")]).trim(),
        "namespace/ref created"
    );
    assert_eq!(
        k.ok(&["apply", "-f", &fixture("sample-crd.yaml")]).trim(),
        "customresourcedefinition.apiextensions.k8s.io/samples.reference.test created"
    );
    assert_eq!(
        k.ok(&["apply", "-n", "ref", "-f", &fixture("sample.yaml")]).trim(),
        "sample.reference.test/s1 created"
    );
    (server, k)
}

fn columns(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prints_the_printer_columns_and_categories_resolve() {
    let (_server, k) = with_sample().await;
    let by_short_name = columns(&k.ok(&["get", "smp", "-n", "ref"]));
    assert_eq!(by_short_name[0], ["NAME", "PHASE", "AGE"]);
    assert_eq!(by_short_name[1][0], "s1");
    assert!(
        by_short_name[1][1].ends_with('s'),
        "an empty phase, then the age: {by_short_name:?}"
    );
    let by_category = columns(&k.ok(&["get", "refcat", "-n", "ref"]));
    assert_eq!(by_category[1][0], "s1");
    assert_eq!(
        k.ok(&["get", "smp", "-n", "ref", "-o", "name"]).trim(),
        "sample.reference.test/s1"
    );
    let missing = k.run(&["get", "smp", "nope", "-n", "ref"]);
    assert!(!missing.status.success());
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr).trim(),
        "Error from server (NotFound): samples.reference.test \"nope\" not found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_patches_stale_replaces_and_reapplies_behave_as_on_a_cluster() {
    let (_server, k) = with_sample().await;
    assert_eq!(
        k.ok(&[
            "patch",
            "smp",
            "s1",
            "-n",
            "ref",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Ready"}}"#
        ])
        .trim(),
        "sample.reference.test/s1 patched"
    );
    assert_eq!(
        k.ok(&["get", "smp", "s1", "-n", "ref", "-o", "jsonpath={.status.phase}"]),
        "Ready"
    );
    let stale = k.ok(&["get", "smp", "s1", "-n", "ref", "-o", "yaml"]);
    k.ok(&[
        "patch",
        "smp",
        "s1",
        "-n",
        "ref",
        "--type=merge",
        "-p",
        r#"{"spec":{"size":4}}"#,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let stale_file = dir.path().join("stale.yaml");
    std::fs::write(&stale_file, stale).unwrap();
    let replaced = k.run(&["replace", "-f", &stale_file.to_string_lossy()]);
    assert!(!replaced.status.success());
    assert!(
        String::from_utf8_lossy(&replaced.stderr).contains("Error from server (Conflict): error when replacing")
            && String::from_utf8_lossy(&replaced.stderr).contains(
                "the object has been modified; please apply your changes to the latest version and try again"
            ),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    let changed = std::fs::read_to_string(fixture("sample.yaml"))
        .unwrap()
        .replace("size: 2", "size: 7");
    let changed_file = dir.path().join("changed.yaml");
    std::fs::write(&changed_file, changed).unwrap();
    assert_eq!(
        k.ok(&["apply", "-n", "ref", "-f", &changed_file.to_string_lossy()])
            .trim(),
        "sample.reference.test/s1 configured"
    );
    assert_eq!(
        k.ok(&["get", "smp", "s1", "-n", "ref", "-o", "jsonpath={.spec.size}"]),
        "7"
    );
    assert_eq!(
        k.ok(&["apply", "-n", "ref", "-f", &changed_file.to_string_lossy()])
            .trim(),
        "sample.reference.test/s1 unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_streams_a_change() {
    let (_server, k) = with_sample().await;
    let mut watch = k
        .command()
        .args(["get", "smp", "-n", "ref", "-w", "--request-timeout=20s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Read kubectl's output on a thread; change the object once the initial listing is out.
    let mut stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = String::new();
    let mut patched = false;
    while !seen.contains("Watched") && Instant::now() < deadline {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push_str(&chunk);
        }
        if !patched && seen.contains("s1") {
            k.ok(&[
                "patch",
                "smp",
                "s1",
                "-n",
                "ref",
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"phase":"Watched"}}"#,
            ]);
            patched = true;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(patched, "kubectl get -w printed no initial listing:\n{seen}");
    let listing_then_change: Vec<&str> = seen.lines().collect();
    assert!(
        listing_then_change.len() >= 3,
        "a header, the listing, then the change:\n{seen}"
    );
    assert!(
        seen.contains("NAME") && seen.contains("s1") && seen.contains("Watched"),
        "kubectl get -w printed:\n{seen}"
    );
}
