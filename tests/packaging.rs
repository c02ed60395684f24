//! What ships: the chart's CRDs and `deploy/crds.yaml` are the repository's CRDs byte for byte,
//! the production build carries no test control plane, and the Dockerfile builds that build as a
//! non-root image whose binary sits where the chart runs it. (No container engine exists on the
//! build machines, so the image itself is checked by reading the Dockerfile.)

use std::path::{Path, PathBuf};
use std::process::Command;

use confluence_auth_operator::crd;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn file_names(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn chart_crds_are_the_repository_crds_byte_for_byte() {
    assert_eq!(file_names("charts/confluence-auth-operator/crds"), file_names("crds"));
    for name in file_names("crds") {
        assert!(
            read(&format!("charts/confluence-auth-operator/crds/{name}")) == read(&format!("crds/{name}")),
            "charts/confluence-auth-operator/crds/{name} drifted from crds/{name}: \
             cp crds/*.yaml charts/confluence-auth-operator/crds/"
        );
    }
}

#[test]
fn deploy_crds_are_what_the_crd_subcommand_prints() {
    assert!(
        read("deploy/crds.yaml") == crd::render_all(),
        "deploy/crds.yaml drifted: python3 tests/chart/render_deploy.py"
    );
}

/// `cargo tree` of the root package's normal dependencies (the ones linked into the binary).
fn normal_dependency_tree(extra: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(repo("."))
        .args(["tree", "--offline", "--locked", "-e", "normal", "--prefix", "none"])
        .args(["--package", "confluence-auth-operator"])
        .args(extra)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn has_crate(tree: &str, name: &str) -> bool {
    tree.lines().any(|line| line.split_whitespace().next() == Some(name))
}

#[test]
fn the_production_build_has_no_test_control_plane() {
    let production = normal_dependency_tree(&["--no-default-features"]);
    assert!(
        has_crate(&production, "kube"),
        "the tree is not the operator's:\n{production}"
    );
    for crate_name in ["testbed", "tempfile"] {
        assert!(
            !has_crate(&production, crate_name),
            "`{crate_name}` is linked into the --no-default-features build:\n{production}"
        );
    }
    // The default build (the demo) does carry it: the feature is what removes it.
    assert!(has_crate(&normal_dependency_tree(&[]), "testbed"));
}

/// The lines of the Dockerfile's last stage (the image that ships).
fn final_stage(dockerfile: &str) -> Vec<String> {
    let lines: Vec<String> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).expect("a FROM");
    lines[last_from..].to_vec()
}

/// The build instructions (RUN with its continuation lines joined) of every stage.
fn run_instructions(dockerfile: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    joined
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("RUN "))
        .map(str::to_string)
        .collect()
}

/// The path of the binary the chart's Deployment runs.
fn chart_binary() -> String {
    let helpers = read("charts/confluence-auth-operator/templates/_helpers.tpl");
    let start = helpers
        .find("{{- define \"cao.binary\" -}}")
        .expect("cao.binary is defined");
    helpers[start..].lines().nth(1).unwrap().trim().to_string()
}

#[test]
fn the_image_runs_the_production_build_as_non_root_where_the_chart_expects_it() {
    let dockerfile = read("Dockerfile");
    let image = final_stage(&dockerfile);
    assert!(
        dockerfile.lines().filter(|l| l.starts_with("FROM ")).count() >= 2,
        "multi-stage"
    );
    assert!(
        image[0].contains("distroless") || image[0] == "FROM scratch",
        "small base: {}",
        image[0]
    );

    let user = image
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the image sets USER");
    let uid = user.split(':').next().unwrap().trim();
    assert!(!["root", "0", ""].contains(&uid), "the image runs as {user:?}");
    assert!(
        uid.parse::<u32>().is_ok_and(|n| n > 0),
        "numeric non-root uid (runAsNonRoot needs one): {user}"
    );

    let build = run_instructions(&dockerfile)
        .into_iter()
        .find(|r| r.contains("cargo build"))
        .expect("a cargo build step");
    for flag in ["--release", "--locked", "--no-default-features"] {
        assert!(build.contains(flag), "the image build lacks {flag}: {build}");
    }
    assert!(
        !build.contains("--features") && !build.contains("--all-features"),
        "the image build must not turn features back on: {build}"
    );

    let binary = chart_binary();
    assert_eq!(binary, "/usr/local/bin/confluence-auth-operator");
    let entrypoint = image
        .iter()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    assert_eq!(entrypoint, format!("[\"{binary}\"]"));
    assert!(
        image
            .iter()
            .any(|l| l.starts_with("COPY --from=") && l.ends_with(&format!(" {binary}"))),
        "the final stage copies the binary to {binary}"
    );
    let deployment = read("charts/confluence-auth-operator/templates/deployment.yaml");
    assert!(
        deployment.contains("command: [{{ include \"cao.binary\" . | quote }}]"),
        "the Deployment runs cao.binary"
    );
}

#[test]
fn the_docker_context_keeps_what_the_build_needs() {
    let ignored = read(".dockerignore");
    let ignored: Vec<&str> = ignored
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // Cargo reads every workspace member and every target the manifests name.
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "testbed",
        "tests",
        "crds",
        "examples",
    ] {
        assert!(
            !ignored.iter().any(|i| i.trim_end_matches('/') == needed),
            ".dockerignore drops {needed}"
        );
    }
    assert!(
        ignored.contains(&"target/"),
        "the build directory stays out of the context"
    );
}
