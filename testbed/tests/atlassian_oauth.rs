//! The stand-in's authorization server over HTTP: `/authorize` and `/oauth/token` (code
//! exchange with PKCE, rotating refresh tokens with the reuse leeway and family revocation,
//! inactivity and absolute expiry, client credentials). Time moves only through the stand-in's
//! frozen, controllable clock.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION};
use serde_json::{Value, json};
use testbed::atlassian::{Account, ClientApp, ServiceAccount, Site, StandIn};

const CB: &str = "https://app.example/oauth/callback";
const DAY: u64 = 86_400;

async fn world() -> StandIn {
    let s = StandIn::start().await.expect("start");
    s.freeze_clock();
    s.register_client(ClientApp {
        client_id: "app".into(),
        client_secret: "app-secret".into(),
        redirect_uris: vec![CB.into()],
        scopes: vec![],
    });
    s.add_site(Site {
        host: "acme.atlassian.net".into(),
        cloud_id: "cloud-acme".into(),
        name: "acme".into(),
    });
    s.add_account(Account {
        account_id: "acc-ada".into(),
        name: "Ada".into(),
        email: "ada@acme.example".into(),
        sites: vec!["acme.atlassian.net".into()],
    });
    s.add_service_account(ServiceAccount {
        client_id: "svc".into(),
        client_secret: "svc-secret".into(),
        account_id: "acc-svc".into(),
        name: "Service".into(),
        site: "acme.atlassian.net".into(),
        scopes: vec![],
    });
    s
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// `GET /authorize` with the operator's usual parameters, `overrides` replacing or adding some
/// (an empty value drops the parameter).
async fn authorize(s: &StandIn, overrides: &[(&str, &str)]) -> reqwest::Response {
    let mut params: Vec<(&str, &str)> = vec![
        ("audience", "api.atlassian.com"),
        ("client_id", "app"),
        ("scope", "read:me read:confluence-user offline_access"),
        ("redirect_uri", CB),
        ("state", "st4te"),
        ("response_type", "code"),
        ("prompt", "consent"),
    ];
    for (k, v) in overrides {
        params.retain(|(pk, _)| pk != k);
        if !v.is_empty() {
            params.push((k, v));
        }
    }
    let mut url = url::Url::parse(&format!("{}/authorize", s.url())).expect("url");
    url.query_pairs_mut().extend_pairs(params);
    http().get(url).send().await.expect("authorize")
}

/// The query of the `Location` of a 302.
fn redirect_query(resp: &reqwest::Response) -> Vec<(String, String)> {
    assert_eq!(resp.status(), StatusCode::FOUND);
    let loc = resp.headers()[LOCATION].to_str().expect("location");
    let url = url::Url::parse(loc).expect("location url");
    assert!(loc.starts_with(CB), "{loc}");
    url.query_pairs().into_owned().collect()
}

async fn code(s: &StandIn, overrides: &[(&str, &str)]) -> String {
    let q = redirect_query(&authorize(s, overrides).await);
    assert_eq!(q[1], ("state".to_string(), "st4te".to_string()));
    assert_eq!(q[0].0, "code");
    q[0].1.clone()
}

async fn token(s: &StandIn, body: Value) -> (StatusCode, Value) {
    let resp = http()
        .post(format!("{}/oauth/token", s.url()))
        .json(&body)
        .send()
        .await
        .expect("token");
    let status = resp.status();
    (status, resp.json().await.expect("json body"))
}

fn exchange(code: &str) -> Value {
    json!({"grant_type": "authorization_code", "client_id": "app", "client_secret": "app-secret",
           "code": code, "redirect_uri": CB})
}

fn refresh(rt: &Value) -> Value {
    json!({"grant_type": "refresh_token", "client_id": "app", "client_secret": "app-secret",
           "refresh_token": rt})
}

fn invalid_grant(description: &str) -> Value {
    json!({"error": "invalid_grant", "error_description": description})
}

fn unknown_rt() -> Value {
    invalid_grant("Unknown or invalid refresh token.")
}

async fn first_grant(s: &StandIn) -> Value {
    let c = code(s, &[]).await;
    let (status, body) = token(s, exchange(&c)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn authorize_consents_as_the_chosen_account_and_declines_on_demand() {
    let s = world().await;
    s.add_account(Account {
        account_id: "acc-bob".into(),
        name: "Bob".into(),
        email: "bob@acme.example".into(),
        sites: vec![],
    });
    let c = code(&s, &[]).await;
    assert!(c.starts_with("atl_code_"));

    s.decline_next_consent();
    let q = redirect_query(&authorize(&s, &[]).await);
    let expected = [
        ("error", "access_denied"),
        ("error_description", "User did not authorize the request"),
        ("state", "st4te"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    assert_eq!(q, expected);

    // The decline was for one consent only; now consent as Bob (a guest: no site).
    s.consent_as("acc-bob");
    let c = code(&s, &[]).await;
    let (_, grant) = token(&s, exchange(&c)).await;
    let me: Value = http()
        .get(format!("{}/me", s.url()))
        .bearer_auth(grant["access_token"].as_str().expect("at"))
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("json");
    assert_eq!(me["account_id"], "acc-bob");
}

#[tokio::test]
async fn authorize_refuses_bad_requests_without_redirecting() {
    let s = world().await;
    let cases: [(&[(&str, &str)], Value); 6] = [
        (
            &[("client_id", "nope")],
            json!({"error": "invalid_client", "error_description": "Unknown client"}),
        ),
        (
            &[("redirect_uri", "https://evil.example/oauth/callback")],
            json!({"error": "invalid_request", "error_description": "The redirect_uri is not registered for this app"}),
        ),
        (
            &[("audience", "")],
            json!({"error": "invalid_request", "error_description": "audience must be api.atlassian.com"}),
        ),
        (
            &[("response_type", "token")],
            json!({"error": "unsupported_response_type", "error_description": "Only response_type=code is supported"}),
        ),
        (
            &[("scope", "read:me read:jira-work")],
            json!({"error": "invalid_scope", "error_description": "The scope read:jira-work is not allowed for this app"}),
        ),
        (
            &[("code_challenge", "abc"), ("code_challenge_method", "plain")],
            json!({"error": "invalid_request", "error_description": "code_challenge_method must be S256"}),
        ),
    ];
    for (overrides, expected) in cases {
        let resp = authorize(&s, overrides).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{overrides:?}");
        assert!(resp.headers().get(LOCATION).is_none());
        assert_eq!(resp.json::<Value>().await.expect("json"), expected);
    }
}

#[tokio::test]
async fn code_exchange_answers_atlassians_shape_for_json_and_form_bodies() {
    let s = world().await;
    let body = first_grant(&s).await;
    let keys: Vec<&str> = body.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["access_token", "expires_in", "refresh_token", "scope", "token_type"]
    );
    assert!(body["access_token"].as_str().expect("at").starts_with("atl_at_"));
    assert!(body["refresh_token"].as_str().expect("rt").starts_with("atl_rt_"));
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "read:me read:confluence-user offline_access");

    // A form body, and no offline_access: no refresh token.
    let c = code(&s, &[("scope", "read:me")]).await;
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "authorization_code"),
            ("client_id", "app"),
            ("client_secret", "app-secret"),
            ("code", c.as_str()),
            ("redirect_uri", CB),
        ])
        .finish();
    let resp = http()
        .post(format!("{}/oauth/token", s.url()))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("token");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body.get("refresh_token"), None);
    assert_eq!(body["scope"], "read:me");
}

#[tokio::test]
async fn code_exchange_refuses_wrong_secret_reuse_expiry_and_redirect_mismatch() {
    let s = world().await;
    let c = code(&s, &[]).await;
    let mut wrong = exchange(&c);
    wrong["client_secret"] = json!("nope");
    assert_eq!(
        token(&s, wrong).await,
        (
            StatusCode::UNAUTHORIZED,
            json!({"error": "access_denied", "error_description": "Unauthorized"})
        )
    );
    // The failed client authentication did not consume the code.
    assert_eq!(token(&s, exchange(&c)).await.0, StatusCode::OK);
    let invalid_code = (StatusCode::FORBIDDEN, invalid_grant("Invalid authorization code"));
    assert_eq!(token(&s, exchange(&c)).await, invalid_code);

    let c = code(&s, &[]).await;
    s.advance_clock(Duration::from_secs(600));
    assert_eq!(token(&s, exchange(&c)).await, invalid_code);

    let c = code(&s, &[]).await;
    s.advance_clock(Duration::from_secs(599));
    let mut other = exchange(&c);
    other["redirect_uri"] = json!("https://app.example/other");
    assert_eq!(
        token(&s, other).await,
        (
            StatusCode::FORBIDDEN,
            invalid_grant("redirect_uri does not match the one used in the authorization request")
        )
    );
}

#[tokio::test]
async fn pkce_s256_is_verified_when_a_challenge_was_sent() {
    let s = world().await;
    // RFC 7636 appendix B.
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let pkce = [
        ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
        ("code_challenge_method", "S256"),
    ];
    let c = code(&s, &pkce).await;
    let mut body = exchange(&c);
    body["code_verifier"] = json!("the-wrong-verifier-the-wrong-verifier-0123");
    assert_eq!(
        token(&s, body).await,
        (StatusCode::FORBIDDEN, invalid_grant("Failed to verify code verifier"))
    );
    let c = code(&s, &pkce).await;
    assert_eq!(
        token(&s, exchange(&c)).await.0,
        StatusCode::FORBIDDEN,
        "a missing verifier is refused"
    );
    let c = code(&s, &pkce).await;
    let mut body = exchange(&c);
    body["code_verifier"] = json!(verifier);
    assert_eq!(token(&s, body).await.0, StatusCode::OK);
}

#[tokio::test]
async fn refresh_tokens_rotate_with_a_reuse_leeway_then_the_family_dies() {
    let s = world().await;
    let g1 = first_grant(&s).await;
    let (status, g2) = token(&s, refresh(&g1["refresh_token"])).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(g2["refresh_token"], g1["refresh_token"]);
    assert_ne!(g2["access_token"], g1["access_token"]);
    assert_eq!(g2["token_type"], "Bearer");

    // Reusing the superseded token inside the 10-minute leeway gives a new pair again.
    s.advance_clock(Duration::from_secs(10 * 60));
    let (status, g3) = token(&s, refresh(&g1["refresh_token"])).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(g3["refresh_token"], g2["refresh_token"]);

    // After the leeway: refused, and every token of the family is dead.
    s.advance_clock(Duration::from_secs(1));
    assert_eq!(
        token(&s, refresh(&g1["refresh_token"])).await,
        (StatusCode::FORBIDDEN, unknown_rt())
    );
    for rt in [&g2["refresh_token"], &g3["refresh_token"]] {
        assert_eq!(token(&s, refresh(rt)).await, (StatusCode::FORBIDDEN, unknown_rt()));
    }
    let resp = http()
        .get(format!("{}/oauth/token/accessible-resources", s.url()))
        .bearer_auth(g3["access_token"].as_str().expect("at"))
        .send()
        .await
        .expect("resources");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // An unknown token is refused the same way.
    assert_eq!(
        token(&s, refresh(&json!("atl_rt_nope"))).await,
        (StatusCode::FORBIDDEN, unknown_rt())
    );
}

#[tokio::test]
async fn refresh_tokens_expire_after_90_idle_days_and_365_days_after_consent() {
    let s = world().await;
    let idle = first_grant(&s).await;
    let mut rt = first_grant(&s).await["refresh_token"].clone();
    s.advance_clock(Duration::from_secs(90 * DAY - 1));
    let (status, g) = token(&s, refresh(&rt)).await;
    assert_eq!(status, StatusCode::OK, "day 89.99 is still inside the window");
    rt = g["refresh_token"].clone();
    s.advance_clock(Duration::from_secs(1));
    assert_eq!(
        token(&s, refresh(&idle["refresh_token"])).await,
        (StatusCode::FORBIDDEN, unknown_rt())
    );

    // Kept busy, the family still dies 365 days after the consent.
    for _ in 0..3 {
        s.advance_clock(Duration::from_secs(85 * DAY));
        let (status, g) = token(&s, refresh(&rt)).await;
        assert_eq!(status, StatusCode::OK);
        rt = g["refresh_token"].clone();
    }
    // Now at day 345; day 365 is the end.
    s.advance_clock(Duration::from_secs(20 * DAY - 1));
    let (status, g) = token(&s, refresh(&rt)).await;
    assert_eq!(status, StatusCode::OK);
    rt = g["refresh_token"].clone();
    s.advance_clock(Duration::from_secs(1));
    assert_eq!(token(&s, refresh(&rt)).await, (StatusCode::FORBIDDEN, unknown_rt()));
}

#[tokio::test]
async fn client_credentials_for_service_accounts_only() {
    let s = world().await;
    let body = json!({"grant_type": "client_credentials", "client_id": "svc", "client_secret": "svc-secret"});
    let (status, g) = token(&s, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(g["expires_in"], 3600);
    assert_eq!(g["scope"], "read:confluence-user read:me");
    assert_eq!(g.get("refresh_token"), None);

    // HTTP Basic client authentication works too.
    let resp = http()
        .post(format!("{}/oauth/token", s.url()))
        .basic_auth("svc", Some("svc-secret"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=read%3Ame")
        .send()
        .await
        .expect("token");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.expect("json")["scope"], "read:me");

    let wrong = json!({"grant_type": "client_credentials", "client_id": "svc", "client_secret": "x"});
    assert_eq!(
        token(&s, wrong).await,
        (
            StatusCode::UNAUTHORIZED,
            json!({"error": "access_denied", "error_description": "Unauthorized"})
        )
    );
    let app = json!({"grant_type": "client_credentials", "client_id": "app", "client_secret": "app-secret"});
    assert_eq!(
        token(&s, app).await,
        (
            StatusCode::FORBIDDEN,
            json!({"error": "unauthorized_client", "error_description": "Grant type 'client_credentials' not allowed for the client."})
        )
    );
    let odd = json!({"grant_type": "password", "client_id": "app", "client_secret": "app-secret"});
    assert_eq!(
        token(&s, odd).await,
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "unsupported_grant_type", "error_description": "Unsupported grant type"})
        )
    );
}

#[tokio::test]
async fn access_tokens_live_as_long_as_the_test_says() {
    let s = world().await;
    s.set_access_token_lifetime(Duration::from_secs(60));
    let g = first_grant(&s).await;
    assert_eq!(g["expires_in"], 60);
    let at = g["access_token"].as_str().expect("at").to_owned();
    let resources = |at: String| {
        let url = format!("{}/oauth/token/accessible-resources", s.url());
        async move { http().get(url).bearer_auth(at).send().await.expect("get").status() }
    };
    s.advance_clock(Duration::from_secs(59));
    assert_eq!(resources(at.clone()).await, StatusCode::OK);
    s.advance_clock(Duration::from_secs(1));
    assert_eq!(resources(at).await, StatusCode::UNAUTHORIZED);

    // A refresh retires the previous access token after 10 minutes.
    s.set_access_token_lifetime(Duration::from_secs(3600));
    let g = first_grant(&s).await;
    let (_, _g2) = token(&s, refresh(&g["refresh_token"])).await;
    let old = g["access_token"].as_str().expect("at").to_owned();
    s.advance_clock(Duration::from_secs(599));
    assert_eq!(resources(old.clone()).await, StatusCode::OK);
    s.advance_clock(Duration::from_secs(1));
    assert_eq!(resources(old).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_optional_consent_page_lets_a_person_pick_and_decide() {
    let s = world().await;
    s.add_account(Account {
        account_id: "acc-bob".into(),
        name: "Bob".into(),
        email: "bob@acme.example".into(),
        sites: vec![],
    });
    s.set_consent_page(true);
    let request_id = |html: &str| {
        let start = html.find(r#"name="request" value=""#).expect("request field") + 22;
        html[start..start + 32].to_owned()
    };
    let decide = |fields: String| {
        http()
            .post(format!("{}/authorize/consent", s.url()))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(fields)
            .send()
    };

    let resp = authorize(&s, &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
    let html = resp.text().await.expect("html");
    assert!(html.contains(r#"value="acc-ada" checked"#), "{html}");
    assert!(html.contains("<code>offline_access</code>"));
    let id = request_id(&html);
    let resp = decide(format!("request={id}&decision=accept&account_id=acc-bob"))
        .await
        .expect("post");
    let q = redirect_query(&resp);
    let (status, grant) = token(&s, exchange(&q[0].1)).await;
    assert_eq!(status, StatusCode::OK);
    let me: Value = http()
        .get(format!("{}/me", s.url()))
        .bearer_auth(grant["access_token"].as_str().expect("at"))
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("json");
    assert_eq!(me["account_id"], "acc-bob");

    // A request is answered once.
    let resp = decide(format!("request={id}&decision=accept")).await.expect("post");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let html = authorize(&s, &[]).await.text().await.expect("html");
    let resp = decide(format!("request={}&decision=deny", request_id(&html)))
        .await
        .expect("post");
    assert_eq!(
        redirect_query(&resp)[0],
        ("error".to_string(), "access_denied".to_string())
    );
}

#[tokio::test]
async fn a_withheld_offline_access_yields_no_refresh_token() {
    let standin = testbed::atlassian::StandIn::demo_world().await.unwrap();
    assert!(standin.add_callback("demo-client", "http://127.0.0.1:1/oauth/callback"));
    standin.withhold_scope_next("offline_access");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let authorize = format!(
        "{}/authorize?audience=api.atlassian.com&client_id=demo-client&scope=offline_access%20read%3Ame&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Foauth%2Fcallback&state=s&response_type=code&prompt=consent",
        standin.url()
    );
    let consent = http.get(&authorize).send().await.unwrap();
    assert_eq!(consent.status(), 302);
    let location = url::Url::parse(consent.headers()["location"].to_str().unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let token: serde_json::Value = http
        .post(format!("{}/oauth/token", standin.url()))
        .json(&serde_json::json!({"grant_type": "authorization_code", "client_id": "demo-client", "client_secret": "demo-secret", "code": code, "redirect_uri": "http://127.0.0.1:1/oauth/callback"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(token.get("refresh_token").is_none(), "{token}");
    assert_eq!(token["scope"], "read:me");
}

/// Atlassian compares `redirect_uri` with the app's registered callback URLs exactly: no
/// wildcard, not even for another loopback port. The demo world's app starts with none.
#[tokio::test]
async fn callback_urls_match_exactly_even_on_loopback() {
    let s = StandIn::demo_world().await.expect("start");
    let registered = "http://127.0.0.1:8080/oauth/callback";
    let ask = |redirect_uri: &'static str| {
        let url = s.url();
        async move {
            let mut u = url::Url::parse(&format!("{url}/authorize")).expect("url");
            u.query_pairs_mut().extend_pairs([
                ("audience", "api.atlassian.com"),
                ("client_id", "demo-client"),
                ("scope", "read:me offline_access"),
                ("redirect_uri", redirect_uri),
                ("state", "s"),
                ("response_type", "code"),
            ]);
            http().get(u).send().await.expect("authorize").status()
        }
    };
    assert_eq!(ask(registered).await, StatusCode::BAD_REQUEST, "nothing registered yet");
    assert!(s.add_callback("demo-client", registered));
    assert!(!s.add_callback("no-such-app", registered));
    assert_eq!(ask(registered).await, StatusCode::FOUND);
    for near_miss in [
        "http://127.0.0.1:8081/oauth/callback",
        "http://127.0.0.1/oauth/callback",
        "http://localhost:8080/oauth/callback",
        "http://127.0.0.1:8080/oauth/callback/",
        "http://127.0.0.1:8080/oauth/callback?next=1",
    ] {
        assert_eq!(ask(near_miss).await, StatusCode::BAD_REQUEST, "{near_miss}");
    }
    // The same through the HTTP control API (what `testbed serve` users call).
    let resp = http()
        .post(format!("{}/_testbed/callbacks", s.url()))
        .json(&json!({"client_id": "demo-client", "redirect_uri": "http://127.0.0.1:8081/oauth/callback"}))
        .send()
        .await
        .expect("control");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(ask("http://127.0.0.1:8081/oauth/callback").await, StatusCode::FOUND);
}
