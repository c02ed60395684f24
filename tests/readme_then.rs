//! The README's "Then" steps, followed literally: every `kubectl` line of its code block runs as
//! written (from the repository root, against the test control plane or `E2E_KUBECONFIG`, with
//! the operator running), and the last one prints the installation's authorization link.

mod support;

use support::*;

/// The words of one shell line (single and double quotes, `#` comments; nothing else is used).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, '#') if word.is_none() => break,
            (None, c) if c.is_whitespace() => out.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    assert!(quote.is_none(), "unbalanced quote in {line:?}");
    out.extend(word);
    out
}

/// The command lines of the first `sh` block under `### Then`.
fn then_commands() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let section = readme.split("\n### Then\n").nth(1).expect("README has a Then section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the Then section has a sh block");
    block.lines().map(words).filter(|w| !w.is_empty()).collect()
}

#[test]
fn shell_words_are_split_as_a_shell_splits_them() {
    assert_eq!(
        words("kubectl -n a get cfi -o jsonpath='{.status.x}'   # open it"),
        ["kubectl", "-n", "a", "get", "cfi", "-o", "jsonpath={.status.x}"]
    );
    assert_eq!(
        words("create --from-literal=k='<a b>' \"x y\""),
        ["create", "--from-literal=k=<a b>", "x y"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_then_steps_work_as_written() {
    let env = Env::start().await;
    env.ensure_namespace(&env.operator_ns).await;
    // The README's own namespace, created by its first step: the operator watches it (and only
    // it) before it exists, as one installed for `my-app` would.
    env.delete_on_drop("my-app");
    let operator = Operator::spawn_with(&env, &env.operator_ns, &["--namespaces", "my-app"]);
    operator.ready().await;
    let commands = then_commands();
    assert!(commands.len() >= 4, "{commands:?}");
    let mut printed = String::new();
    for command in &commands {
        assert_eq!(
            command[0], "kubectl",
            "the Then steps are kubectl commands: {command:?}"
        );
        let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
        printed = if args.iter().any(|a| a.starts_with("jsonpath=")) {
            // The operator publishes the link a moment after the apply.
            eventually(&format!("{command:?} to print something"), || {
                let out = env.kubectl_ok(&args);
                async move { (!out.is_empty()).then_some(out) }
            })
            .await
        } else {
            env.kubectl_ok(&args)
        };
    }
    assert!(
        printed.starts_with(&format!(
            "{}/oauth/start/my-app/installation/acme?nonce=",
            operator.public_url
        )),
        "the last step prints the link: {printed:?}"
    );
    // The secret went in as typed (an imperative create: a protobuf body).
    let stored = env.kubectl_ok(&[
        "-n",
        "my-app",
        "get",
        "secret",
        "atlassian-app",
        "-o",
        "jsonpath={.data.client-secret}",
    ]);
    use base64::Engine as _;
    let value = base64::engine::general_purpose::STANDARD.decode(stored).unwrap();
    assert_eq!(value, b"<client secret>");
    env.kubectl_ok(&["delete", "namespace", "my-app", "--wait=false"]);
}
