//! The harness the testbed's kubectl tests share: kubectl (1.32 in CI) pointed at one
//! [`ApiServer`] through a kubeconfig in a temporary directory, and the captured fixtures.
#![allow(dead_code)] // each test file uses a different part of it

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use testbed::apiserver::ApiServer;

/// kubectl against one test API server.
pub struct Kubectl {
    /// The kubeconfig kubectl is given.
    pub kubeconfig: PathBuf,
    /// Where the kubeconfig and any written manifests live (gone with the value).
    pub dir: tempfile::TempDir,
}

impl Kubectl {
    /// Writes a kubeconfig for `server` into a fresh temporary directory.
    pub fn new(server: &ApiServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Self { kubeconfig, dir }
    }

    /// A kubectl command with the kubeconfig set and no stdin, for callers that spawn it.
    pub fn command(&self) -> Command {
        let mut command = Command::new("kubectl");
        command.arg("--kubeconfig").arg(&self.kubeconfig).stdin(Stdio::null());
        command
    }

    /// Runs kubectl with `args` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs kubectl, insists it succeeds, and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Writes `text` to `name` in the temporary directory; returns its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    /// `kubectl apply -f` of `text` (written to `name`), which must succeed; its stdout.
    pub fn apply(&self, name: &str, text: &str) -> String {
        self.ok(&["apply", "-f", &self.file(name, text)])
    }

    /// `kubectl apply -n namespace -f` of `text` (written to `name`): its trimmed stdout on
    /// success, its trimmed stderr on refusal.
    pub fn try_apply_in(&self, namespace: &str, name: &str, text: &str) -> Result<String, String> {
        let out = self.run(&["apply", "-n", namespace, "-f", &self.file(name, text)]);
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(text(&out.stderr))
        }
    }
}

/// The path of a file under `tests/fixtures`.
pub fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}
