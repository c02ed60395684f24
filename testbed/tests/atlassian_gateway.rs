//! The stand-in's gateway side and its controls: accessible-resources per account, `/me`, the
//! Confluence current-user call, `tenant_info`, user revocation, app removal from a site, fault
//! injection, counters, the issued-secrets list, the HTTP control API under `/_testbed`, the
//! demo world, binding and shutdown.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{HOST, LOCATION, RETRY_AFTER};
use serde_json::{Value, json};
use testbed::atlassian::{
    Account, ClientApp, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SERVICE_CLIENT_ID, DEMO_SERVICE_CLIENT_SECRET,
    Endpoint, Fault, SecretKind, Site, StandIn,
};

const CB: &str = "https://app.example/oauth/callback";
const SCOPES: &str = "read:me read:confluence-user offline_access";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn acme() -> Site {
    Site {
        host: "acme.atlassian.net".into(),
        cloud_id: "cloud-acme".into(),
        name: "acme".into(),
    }
}

fn globex() -> Site {
    Site {
        host: "globex.atlassian.net".into(),
        cloud_id: "cloud-globex".into(),
        name: "globex".into(),
    }
}

fn person(id: &str, sites: &[&str]) -> Account {
    Account {
        account_id: id.into(),
        name: format!("Name of {id}"),
        email: format!("{id}@example.com"),
        sites: sites.iter().map(|s| s.to_string()).collect(),
    }
}

/// A stand-in with app `app`, sites acme and globex, Ada (both sites), Bob (acme), a guest.
/// A consent grants the account's first site unless the test picks another.
async fn world() -> StandIn {
    let s = StandIn::start().await.expect("start");
    s.freeze_clock();
    s.register_client(ClientApp {
        client_id: "app".into(),
        client_secret: "app-secret".into(),
        redirect_uris: vec![CB.into()],
        scopes: vec![],
    });
    s.add_site(acme());
    s.add_site(globex());
    s.add_account(person("ada", &["acme.atlassian.net", "globex.atlassian.net"]));
    s.add_account(person("bob", &["acme.atlassian.net"]));
    s.add_account(person("guest", &[]));
    s
}

/// Consents as `account` with `scopes` and exchanges the code: the token response.
async fn grant_for(base: &str, client: (&str, &str), account_scopes: &str) -> Value {
    let mut url = url::Url::parse(&format!("{base}/authorize")).expect("url");
    url.query_pairs_mut().extend_pairs([
        ("audience", "api.atlassian.com"),
        ("client_id", client.0),
        ("scope", account_scopes),
        ("redirect_uri", CB),
        ("state", "s"),
        ("response_type", "code"),
        ("prompt", "consent"),
    ]);
    let resp = http().get(url).send().await.expect("authorize");
    assert_eq!(resp.status(), StatusCode::FOUND);
    let loc = url::Url::parse(resp.headers()[LOCATION].to_str().expect("loc")).expect("url");
    let code = loc
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code");
    let resp = http()
        .post(format!("{base}/oauth/token"))
        .json(&json!({"grant_type": "authorization_code", "client_id": client.0,
                      "client_secret": client.1, "code": code, "redirect_uri": CB}))
        .send()
        .await
        .expect("token");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.expect("json")
}

async fn grant(s: &StandIn, account: &str, scopes: &str) -> String {
    s.consent_as(account);
    let g = grant_for(&s.url(), ("app", "app-secret"), scopes).await;
    g["access_token"].as_str().expect("at").to_owned()
}

async fn get(url: String, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = http().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("get");
    (resp.status(), resp.json().await.expect("json"))
}

fn resource(site: &Site) -> Value {
    json!({
        "id": site.cloud_id,
        "url": format!("https://{}", site.host),
        "name": site.name,
        "scopes": ["read:me", "read:confluence-user"],
        "avatarUrl": "https://site-admin-avatar-cdn.prod.public.atl-paas.net/avatars/240/site.png",
    })
}

fn unauthorized() -> (StatusCode, Value) {
    (
        StatusCode::UNAUTHORIZED,
        json!({"code": 401, "message": "Unauthorized"}),
    )
}

/// One consent grants one site (the consent screen's "Use app on"), as on Atlassian: Ada's
/// tokens cover both of her sites only once she has consented for each.
#[tokio::test]
async fn accessible_resources_list_the_sites_the_account_consented_for() {
    let s = world().await;
    let url = format!("{}/oauth/token/accessible-resources", s.url());
    let ada = grant(&s, "ada", SCOPES).await;
    assert_eq!(
        get(url.clone(), Some(&ada)).await,
        (StatusCode::OK, json!([resource(&acme())]))
    );
    s.consent_site_next("globex.atlassian.net");
    let ada_again = grant(&s, "ada", SCOPES).await;
    for token in [&ada, &ada_again] {
        assert_eq!(
            get(url.clone(), Some(token)).await,
            (StatusCode::OK, json!([resource(&acme()), resource(&globex())]))
        );
    }
    // A site the account cannot use is not on offer.
    s.consent_as("bob");
    s.consent_site_next("globex.atlassian.net");
    let mut refused = url::Url::parse(&format!("{}/authorize", s.url())).expect("url");
    refused.query_pairs_mut().extend_pairs([
        ("audience", "api.atlassian.com"),
        ("client_id", "app"),
        ("scope", SCOPES),
        ("redirect_uri", CB),
        ("response_type", "code"),
    ]);
    let resp = http().get(refused).send().await.expect("authorize");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.json::<Value>().await.expect("json"),
        json!({"error": "invalid_request", "error_description": "The account cannot use the site globex.atlassian.net"})
    );
    let bob = grant(&s, "bob", SCOPES).await;
    assert_eq!(
        get(url.clone(), Some(&bob)).await,
        (StatusCode::OK, json!([resource(&acme())]))
    );
    let guest = grant(&s, "guest", SCOPES).await;
    assert_eq!(get(url.clone(), Some(&guest)).await, (StatusCode::OK, json!([])));
    assert_eq!(get(url.clone(), None).await, unauthorized());
    assert_eq!(get(url, Some("atl_at_forged")).await, unauthorized());
}

#[tokio::test]
async fn identity_endpoints() {
    let s = world().await;
    let ada = grant(&s, "ada", SCOPES).await;
    let (status, me) = get(format!("{}/me", s.url()), Some(&ada)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["account_id"], "ada");
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["name"], "Name of ada");
    assert_eq!(me["account_type"], "atlassian");
    assert_eq!(me["account_status"], "active");
    assert!(me["picture"].is_string());

    let no_read_me = grant(&s, "ada", "read:confluence-user").await;
    assert_eq!(
        get(format!("{}/me", s.url()), Some(&no_read_me)).await,
        (
            StatusCode::FORBIDDEN,
            json!({"code": 403, "message": "The token does not have the read:me scope"})
        )
    );

    let current = |cloud: &str| format!("{}/ex/confluence/{cloud}/wiki/rest/api/user/current", s.url());
    let (status, user) = get(current("cloud-acme"), Some(&no_read_me)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["accountId"], "ada");
    assert_eq!(user["displayName"], "Name of ada");
    assert_eq!(user["type"], "known");
    assert_eq!(user["_links"]["base"], "https://acme.atlassian.net/wiki");

    let bob = grant(&s, "bob", SCOPES).await;
    assert_eq!(
        get(current("cloud-globex"), Some(&bob)).await,
        (
            StatusCode::FORBIDDEN,
            json!({"code": 403, "message": "The app is not installed on this instance or the grant does not cover it"})
        )
    );
    assert_eq!(
        get(current("cloud-nowhere"), Some(&bob)).await,
        (StatusCode::NOT_FOUND, json!({"code": 404, "message": "Site not found"}))
    );
    assert_eq!(get(current("cloud-acme"), None).await, unauthorized());
}

#[tokio::test]
async fn tenant_info_by_host_header_and_by_path() {
    let s = world().await;
    let resp = http()
        .get(format!("{}/_edge/tenant_info", s.url()))
        .header(HOST, "globex.atlassian.net")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.expect("json"),
        json!({"cloudId": "cloud-globex"})
    );
    assert_eq!(
        get(format!("{}/site/acme.atlassian.net/_edge/tenant_info", s.url()), None).await,
        (StatusCode::OK, json!({"cloudId": "cloud-acme"}))
    );
    assert_eq!(
        get(
            format!("{}/site/nowhere.atlassian.net/_edge/tenant_info", s.url()),
            None
        )
        .await,
        (StatusCode::NOT_FOUND, json!({"code": 404, "message": "Site not found"}))
    );
}

#[tokio::test]
async fn user_revocation_kills_every_token_of_that_account_and_app() {
    let s = world().await;
    s.consent_as("ada");
    let g1 = grant_for(&s.url(), ("app", "app-secret"), SCOPES).await;
    let g2 = grant_for(&s.url(), ("app", "app-secret"), SCOPES).await;
    let bob = grant(&s, "bob", SCOPES).await;
    assert_eq!(s.revoke_user("ada", "app"), 2);
    let url = format!("{}/oauth/token/accessible-resources", s.url());
    for g in [&g1, &g2] {
        assert_eq!(get(url.clone(), g["access_token"].as_str()).await, unauthorized());
        let resp = http()
            .post(format!("{}/oauth/token", s.url()))
            .json(&json!({"grant_type": "refresh_token", "client_id": "app",
                          "client_secret": "app-secret", "refresh_token": g["refresh_token"]}))
            .send()
            .await
            .expect("token");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            resp.json::<Value>().await.expect("json"),
            json!({"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."})
        );
    }
    assert_eq!(get(url, Some(&bob)).await.0, StatusCode::OK, "Bob is not affected");
}

#[tokio::test]
async fn removing_the_app_from_a_site_drops_that_site() {
    let s = world().await;
    let ada = grant(&s, "ada", SCOPES).await;
    s.consent_site_next("globex.atlassian.net");
    grant(&s, "ada", SCOPES).await;
    s.remove_app_from_site("app", "acme.atlassian.net");
    assert_eq!(
        get(format!("{}/oauth/token/accessible-resources", s.url()), Some(&ada)).await,
        (StatusCode::OK, json!([resource(&globex())]))
    );
    let current = format!("{}/ex/confluence/cloud-acme/wiki/rest/api/user/current", s.url());
    assert_eq!(get(current, Some(&ada)).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn injected_faults_5xx_429_and_delay() {
    let s = world().await;
    let ada = grant(&s, "ada", SCOPES).await;
    let url = format!("{}/oauth/token/accessible-resources", s.url());

    s.fail_next(Endpoint::AccessibleResources, 2, Fault::Status { status: 503 });
    s.fail_next(
        Endpoint::AccessibleResources,
        1,
        Fault::RateLimited { retry_after_secs: 7 },
    );
    let unavailable = (
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"code": 503, "message": "Service Unavailable"}),
    );
    assert_eq!(get(url.clone(), Some(&ada)).await, unavailable);
    assert_eq!(get(url.clone(), Some(&ada)).await, unavailable);
    let resp = http().get(&url).bearer_auth(&ada).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()[RETRY_AFTER], "7");
    assert_eq!(
        resp.json::<Value>().await.expect("json"),
        json!({"code": 429, "message": "Too Many Requests"})
    );
    assert_eq!(get(url.clone(), Some(&ada)).await.0, StatusCode::OK);

    // The token endpoint answers in the OAuth error shape.
    s.fail_next(Endpoint::Token, 1, Fault::Status { status: 502 });
    let resp = http()
        .post(format!("{}/oauth/token", s.url()))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .expect("token");
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        resp.json::<Value>().await.expect("json"),
        json!({"error": "server_error", "error_description": "Bad Gateway"})
    );

    // A delay holds the answer back, then answers normally.
    s.fail_next(
        Endpoint::AccessibleResources,
        1,
        Fault::delay(Duration::from_millis(300)),
    );
    let started = Instant::now();
    assert_eq!(get(url.clone(), Some(&ada)).await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    s.fail_next(Endpoint::AccessibleResources, 1, Fault::delay(Duration::from_secs(5)));
    let timed_out = http()
        .get(&url)
        .bearer_auth(&ada)
        .timeout(Duration::from_millis(50))
        .send()
        .await;
    assert!(timed_out.expect_err("times out").is_timeout());
}

#[tokio::test]
async fn counters_count_every_call_per_endpoint_and_grant_type() {
    let s = world().await;
    s.fail_next(Endpoint::Me, 1, Fault::Status { status: 500 });
    let ada = grant(&s, "ada", SCOPES).await;
    let _ = get(format!("{}/me", s.url()), Some(&ada)).await;
    let _ = get(format!("{}/me", s.url()), Some(&ada)).await;
    let _ = http()
        .post(format!("{}/oauth/token", s.url()))
        .json(&json!({"grant_type": "refresh_token"}))
        .send()
        .await
        .expect("token");
    let c = s.counters();
    assert_eq!(c.calls(Endpoint::Authorize), 1);
    assert_eq!(c.calls(Endpoint::Token), 2);
    assert_eq!(c.calls(Endpoint::Me), 2, "faulted calls count too");
    assert_eq!(c.calls(Endpoint::AccessibleResources), 0);
    assert_eq!(c.grants("authorization_code"), 1);
    assert_eq!(c.grants("refresh_token"), 1);
    assert_eq!(c.grants("client_credentials"), 0);

    // Every issued secret is listed, recognisable by its prefix.
    let issued = s.issued_secrets();
    let kinds: Vec<SecretKind> = issued.iter().map(|i| i.kind).collect();
    assert_eq!(
        kinds,
        [SecretKind::Code, SecretKind::RefreshToken, SecretKind::AccessToken]
    );
    assert!(issued[0].value.starts_with("atl_code_"));
    assert!(issued[1].value.starts_with("atl_rt_"));
    assert_eq!(issued[2].value, ada);
}

async fn control(base: &str, path: &str, body: Value) -> Value {
    let resp = http()
        .post(format!("{base}/_testbed/{path}"))
        .json(&body)
        .send()
        .await
        .expect("control");
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    resp.json().await.expect("json")
}

#[tokio::test]
async fn the_http_control_api_drives_the_same_world() {
    let s = StandIn::start().await.expect("start");
    let base = s.url();
    let ok = json!({"ok": true});
    let app = json!({"client_id": "app", "client_secret": "app-secret", "redirect_uris": [CB]});
    assert_eq!(control(&base, "clients", app).await, ok);
    let site = json!({"host": "acme.atlassian.net", "cloud_id": "cloud-acme", "name": "acme"});
    assert_eq!(control(&base, "sites", site).await, ok);
    for id in ["ada", "bob"] {
        let acc = json!({"account_id": id, "name": id, "email": "x@example.com", "sites": ["acme.atlassian.net"]});
        assert_eq!(control(&base, "accounts", acc).await, ok);
    }
    let sa = json!({"client_id": "svc", "client_secret": "svc-secret", "account_id": "svc-acc",
                    "name": "svc", "site": "acme.atlassian.net"});
    assert_eq!(control(&base, "service-accounts", sa).await, ok);
    control(&base, "clock/freeze", json!({})).await;
    control(&base, "consent", json!({"account_id": "bob"})).await;
    control(&base, "access-token-lifetime", json!({"seconds": 120})).await;

    let g = grant_for(&base, ("app", "app-secret"), SCOPES).await;
    assert_eq!(g["expires_in"], 120);
    let at = g["access_token"].as_str().expect("at").to_owned();
    let (_, me) = get(format!("{base}/me"), Some(&at)).await;
    assert_eq!(me["account_id"], "bob");

    // Declines, faults, clock.
    control(&base, "decline-next-consent", json!({})).await;
    let resp = http()
        .get(format!("{base}/authorize?audience=api.atlassian.com&client_id=app&scope=read%3Ame&redirect_uri={CB}&response_type=code"))
        .send()
        .await
        .expect("authorize");
    assert!(
        resp.headers()[LOCATION]
            .to_str()
            .expect("loc")
            .contains("error=access_denied")
    );
    let fault = json!({"endpoint": "me", "count": 1, "fault": {"kind": "rate_limited", "retry_after_secs": 3}});
    control(&base, "faults", fault).await;
    assert_eq!(
        get(format!("{base}/me"), Some(&at)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let before: Value = http()
        .get(format!("{base}/_testbed/clock"))
        .send()
        .await
        .expect("clock")
        .json()
        .await
        .expect("json");
    let after = control(&base, "clock/advance", json!({"seconds": 120})).await;
    let parse = |v: &Value| v["now"].as_str().expect("now").parse::<jiff::Timestamp>().expect("ts");
    assert_eq!(parse(&after).duration_since(parse(&before)).as_secs(), 120);
    assert_eq!(get(format!("{base}/me"), Some(&at)).await, unauthorized());

    // Counters and issued secrets.
    let counters: Value = http()
        .get(format!("{base}/_testbed/counters"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(counters["endpoints"]["authorize"], 2);
    assert_eq!(counters["endpoints"]["me"], 3);
    assert_eq!(counters["grant_types"]["authorization_code"], 1);
    // /me saw Bob's token live once and expired once (the 429 never looked at it).
    let bearer: Value = http()
        .get(format!("{base}/_testbed/bearer-counters"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        bearer,
        json!({"accepted": 1, "missing": 0, "unknown": 0, "expired": 1, "revoked": 0})
    );
    // A share of calls: all of them here, then none once cleared.
    control(&base, "fault-seed", json!({"seed": 7})).await;
    let share = json!({"endpoint": "tenant_info", "ratio": 1.0, "fault": {"kind": "status", "status": 503}});
    control(&base, "fault-ratios", share).await;
    let tenant = format!("{base}/site/acme.atlassian.net/_edge/tenant_info");
    assert_eq!(get(tenant.clone(), None).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        http()
            .delete(format!("{base}/_testbed/faults"))
            .send()
            .await
            .expect("delete")
            .status(),
        StatusCode::OK
    );
    assert_eq!(get(tenant, None).await.0, StatusCode::OK);
    let issued: Value = http()
        .get(format!("{base}/_testbed/issued"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(issued[2]["kind"], "access_token");
    assert_eq!(issued[2]["value"], at.as_str());

    // Revocation and removal over HTTP.
    control(&base, "access-token-lifetime", json!({"seconds": 3600})).await;
    let g = grant_for(&base, ("app", "app-secret"), SCOPES).await;
    let at = g["access_token"].as_str().expect("at").to_owned();
    control(
        &base,
        "remove-app",
        json!({"client_id": "app", "host": "acme.atlassian.net"}),
    )
    .await;
    assert_eq!(
        get(format!("{base}/oauth/token/accessible-resources"), Some(&at)).await,
        (StatusCode::OK, json!([]))
    );
    assert_eq!(
        control(&base, "revoke", json!({"account_id": "bob", "client_id": "app"})).await,
        json!({"revoked_families": 2})
    );
    assert_eq!(
        get(format!("{base}/oauth/token/accessible-resources"), Some(&at)).await,
        unauthorized()
    );

    // Bad control requests.
    let resp = http()
        .post(format!("{base}/_testbed/sites"))
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = http().post(format!("{base}/_testbed/nope")).send().await.expect("post");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn demo_world_serves_the_operator_demo() {
    let s = StandIn::demo_world().await.expect("start");
    let mut url = url::Url::parse(&format!("{}/authorize", s.url())).expect("url");
    let cb = "http://127.0.0.1:8080/oauth/callback";
    assert!(s.add_callback(DEMO_CLIENT_ID, cb));
    url.query_pairs_mut().extend_pairs([
        ("audience", "api.atlassian.com"),
        ("client_id", DEMO_CLIENT_ID),
        ("scope", "read:confluence-user read:me offline_access"),
        ("redirect_uri", cb),
        ("state", "s"),
        ("response_type", "code"),
    ]);
    let resp = http().get(url).send().await.expect("authorize");
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert!(resp.headers()[LOCATION].to_str().expect("loc").starts_with(cb));

    let resp = http()
        .post(format!("{}/oauth/token", s.url()))
        .json(
            &json!({"grant_type": "client_credentials", "client_id": DEMO_SERVICE_CLIENT_ID,
                      "client_secret": DEMO_SERVICE_CLIENT_SECRET}),
        )
        .send()
        .await
        .expect("token");
    let at = resp.json::<Value>().await.expect("json")["access_token"]
        .as_str()
        .expect("at")
        .to_owned();
    let (status, sites) = get(format!("{}/oauth/token/accessible-resources", s.url()), Some(&at)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sites[0]["url"], "https://acme.atlassian.net");
    let (_, tenant) = get(format!("{}/site/globex.atlassian.net/_edge/tenant_info", s.url()), None).await;
    assert_eq!(tenant, json!({"cloudId": "22222222-2222-4222-8222-222222222222"}));
    // The demo app's secret is the documented one.
    assert_eq!(DEMO_CLIENT_SECRET, "demo-secret");
}

#[tokio::test]
async fn binds_loopback_and_stops_on_drop() {
    // How fast it starts is not asserted: a timed assert flakes on a busy machine.
    let s = StandIn::start().await.expect("start");
    assert!(s.addr().ip().is_loopback());
    assert!(s.url().starts_with("http://127.0.0.1:"));
    let addr = s.addr();
    assert_eq!(get(format!("{}/nope", s.url()), None).await.0, StatusCode::NOT_FOUND);
    drop(s);
    // The listener closes once the runtime has run the aborted accept loop; wait for it
    // under a deadline.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::task::yield_now().await;
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "still listening after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The record of refresh calls names each call's token family and fault (what a test needs to
/// check that a client waited out a `Retry-After`), and the bearer counters say how every token
/// presented to the gateway fared (expired ones included).
#[tokio::test]
async fn refresh_calls_are_recorded_per_family_and_bearer_outcomes_counted() {
    let s = world().await;
    s.consent_as("ada");
    let ada = grant_for(&s.url(), ("app", "app-secret"), SCOPES).await;
    s.consent_as("bob");
    let bob = grant_for(&s.url(), ("app", "app-secret"), SCOPES).await;
    let refresh = |rt: &Value| {
        http()
            .post(format!("{}/oauth/token", s.url()))
            .json(&json!({"grant_type": "refresh_token", "client_id": "app",
                          "client_secret": "app-secret", "refresh_token": rt}))
            .send()
    };
    s.fail_next(Endpoint::Token, 1, Fault::RateLimited { retry_after_secs: 3 });
    assert_eq!(
        refresh(&ada["refresh_token"]).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let rotated: Value = refresh(&ada["refresh_token"]).await.unwrap().json().await.unwrap();
    assert_eq!(refresh(&bob["refresh_token"]).await.unwrap().status(), StatusCode::OK);
    // The rotated token is of Ada's family too; an unknown token of none.
    assert_eq!(
        refresh(&rotated["refresh_token"]).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        refresh(&json!("atl_rt_never")).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    let calls = s.refresh_calls();
    let seen: Vec<(Option<&str>, Option<Fault>, u16)> = calls
        .iter()
        .map(|c| (c.account_id.as_deref(), c.fault, c.status))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("ada"), Some(Fault::RateLimited { retry_after_secs: 3 }), 429),
            (Some("ada"), None, 200),
            (Some("bob"), None, 200),
            (Some("ada"), None, 200),
            (None, None, 403),
        ]
    );
    assert_eq!(calls[0].family, calls[1].family);
    assert_eq!(calls[0].family, calls[3].family);
    assert_ne!(calls[0].family, calls[2].family);
    assert!(calls.windows(2).all(|w| w[0].at <= w[1].at));

    // Bearer outcomes: live, missing, unknown, expired (Ada's first token is retired ten minutes
    // after her refresh), revoked (Bob revokes the app).
    let url = format!("{}/oauth/token/accessible-resources", s.url());
    let token = |g: &Value| g["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get(url.clone(), Some(&token(&rotated))).await.0, StatusCode::OK);
    assert_eq!(get(url.clone(), None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(url.clone(), Some("atl_at_never")).await.0, StatusCode::UNAUTHORIZED);
    s.advance_clock(Duration::from_secs(601));
    assert_eq!(get(url.clone(), Some(&token(&ada))).await.0, StatusCode::UNAUTHORIZED);
    s.revoke_user("bob", "app");
    assert_eq!(get(url.clone(), Some(&token(&bob))).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        s.bearer_counters(),
        testbed::atlassian::BearerCounters {
            accepted: 1,
            missing: 1,
            unknown: 1,
            expired: 1,
            revoked: 1,
        }
    );
}
