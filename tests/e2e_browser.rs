//! A real browser (Debian's headless Chromium, driven through ChromeDriver's WebDriver API)
//! opens an installation's start link, clicks the confirmation page's button, follows the
//! redirects through the stand-in's consent and back to the callback, and renders the success
//! page. `.ci/run` installs Chromium and ChromeDriver; the test fails (not skips) when either is
//! missing.

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

/// A ChromeDriver process on a port it picked itself.
struct ChromeDriver {
    child: tokio::process::Child,
    url: String,
    chromium: String,
    http: reqwest::Client,
}

impl ChromeDriver {
    async fn start(chromium: &str) -> ChromeDriver {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("chromedriver")
            .arg("--port=0")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("ChromeDriver is not installed: run `apt-get install chromium-driver` (.ci/run does)");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').trim().to_string();
                }
            }
            panic!("ChromeDriver exited without saying its port");
        })
        .await
        .expect("ChromeDriver says its port");
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            chromium: chromium.to_string(),
            http: reqwest::Client::new(),
        }
    }

    async fn session(&self) -> Session<'_> {
        let binary = which(&self.chromium);
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": binary, "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=800,600"
            ]}
        }}});
        let answer: serde_json::Value = self
            .http
            .post(format!("{}/session", self.url))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_string();
        Session { driver: self, id }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The full path of a command (ChromeDriver wants a binary path).
fn which(command: &str) -> String {
    if command.starts_with('/') {
        return command.to_string();
    }
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One WebDriver session.
struct Session<'a> {
    driver: &'a ChromeDriver,
    id: String,
}

impl Session<'_> {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let url = format!("{}/session/{}{path}", self.driver.url, self.id);
        let mut request = self.driver.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
        assert!(answer["value"].get("error").is_none(), "WebDriver {path}: {answer}");
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(serde_json::json!({"url": url})))
            .await;
    }

    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn click(&self, css: &str) {
        let element = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(serde_json::json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = element
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(serde_json::json!({})),
        )
        .await;
    }

    async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap()
    }

    async fn close(self) {
        let _ = self
            .driver
            .http
            .delete(format!("{}/session/{}", self.driver.url, self.id))
            .send()
            .await;
    }
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

    // The link opens the confirmation page; the success page comes only after its button.
    let driver = ChromeDriver::start(&browser).await;
    let session = driver.session().await;
    session.go(&link).await;
    let page = eventually("the confirmation page", || async {
        let page = session.source().await;
        page.contains("<h1>Authorize Confluence access</h1>").then_some(page)
    })
    .await;
    assert!(
        page.contains(&format!("<td>{ns}</td>")) && page.contains("<td>acme</td>"),
        "{page}"
    );
    session.click("#continue").await;
    let dom = eventually("the success page", || async {
        let dom = session.source().await;
        dom.contains("<h1>Connected</h1>").then_some(dom)
    })
    .await;
    assert!(
        dom.contains("https://acme.atlassian.net") && dom.contains("Ada Admin"),
        "{dom}"
    );
    let shot = session.screenshot().await;
    assert!(shot.starts_with(b"\x89PNG"), "no PNG screenshot");
    std::fs::write(env.dir.path().join("success.png"), &shot).unwrap();

    let cfi = ready(&installations, "acme").await;
    assert_eq!(cfi.credential().unwrap().installed_by.as_deref(), Some(ADA));
    // The used link, opened again in the same browser, renders the one invalid-link page.
    session.go(&link).await;
    eventually("the invalid-link page", || async {
        session.source().await.contains("<h1>Link not valid</h1>").then_some(())
    })
    .await;
    session.close().await;
    drop(operator);
}
