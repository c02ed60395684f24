//! Runs the chart's pytest suites (tests/chart/, through `helm-python-sdk`: Helm's Go SDK, no
//! helm binary) as part of the Rust suite: the offline checks, and the install checks against a
//! testbed API server started here, with the operator binary this build produced.
//! Needs `pip install -r tests/chart/requirements.txt` (`.ci/run` does it).

use std::path::Path;
use std::process::Command;

use testbed::apiserver::ApiServer;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs one pytest file; panics with pytest's output unless every test in it passed.
fn pytest(file: &str, envs: &[(&str, &Path)]) {
    let probe = Command::new(python())
        .args(["-c", "import helm_python, pytest, yaml"])
        .output()
        .expect("python3 runs");
    assert!(
        probe.status.success(),
        "the chart tests need Python packages: pip install -r tests/chart/requirements.txt\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let mut command = Command::new(python());
    command
        .current_dir(repo())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="])
        .arg(format!("tests/chart/{file}"));
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = command.output().expect("pytest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Exit 0 only: 5 ("no tests collected") is a failure too.
    assert!(
        output.status.code() == Some(0),
        "pytest tests/chart/{file} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(" passed"), "{stdout}");
    eprintln!("{stdout}");
}

#[test]
fn chart_lints_renders_and_grants_least_privilege() {
    pytest("test_chart.py", &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_deploy_and_examples_install_on_the_test_control_plane() {
    let api = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let operator = Path::new(env!("CARGO_BIN_EXE_confluence-auth-operator")).to_path_buf();
    // pytest blocks; the API server keeps serving on the runtime's other worker.
    tokio::task::spawn_blocking(move || {
        pytest(
            "test_install.py",
            &[("CHART_TEST_KUBECONFIG", &kubeconfig), ("OPERATOR_BIN", &operator)],
        )
    })
    .await
    .unwrap();
}
