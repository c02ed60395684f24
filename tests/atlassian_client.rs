//! The Atlassian client against the stand-in: code exchange with PKCE, refresh with rotation
//! (and storing the rotated token), dead grants, rate limits and timeouts.

use std::time::Duration;

use confluence_auth_operator::oauth::atlassian::{
    AtlassianClient, AtlassianError, AuthorizeRequest, ClientCredentials, Endpoints, TokenResponse,
};
use confluence_auth_operator::refresh::{self, RefreshError};
use confluence_auth_operator::token_set::TokenSet;
use secrecy::ExposeSecret;
use testbed::atlassian::{Endpoint, Fault, StandIn};

const ADA: &str = "557058:aaaaaaaa-0000-4000-8000-000000000001";
const REDIRECT: &str = "http://127.0.0.1:1/oauth/callback";

fn client(standin: &StandIn, timeout: Duration) -> AtlassianClient {
    let url = standin.url();
    AtlassianClient::new(
        Endpoints {
            auth_url: url.clone(),
            api_url: url.clone(),
            tenant_info_url: format!("{url}/site/{{site}}/_edge/tenant_info"),
        },
        timeout,
    )
    .unwrap()
}

fn app() -> ClientCredentials {
    ClientCredentials {
        client_id: "demo-client".into(),
        client_secret: "demo-secret".to_string().into(),
    }
}

/// Consents as Ada and exchanges the code, the way the callback does.
async fn grant(standin: &StandIn, atlassian: &AtlassianClient) -> TokenResponse {
    standin.consent_as(ADA);
    let verifier = oauth2::PkceCodeVerifier::new("v".repeat(64));
    let challenge = oauth2::PkceCodeChallenge::from_code_verifier_sha256(&verifier);
    let scopes = vec![
        "offline_access".to_string(),
        "read:me".to_string(),
        "read:confluence-content.all".to_string(),
    ];
    let link = atlassian.authorize_url(&AuthorizeRequest {
        client_id: "demo-client",
        scopes: &scopes,
        redirect_uri: REDIRECT,
        state: "s",
        code_challenge: challenge.as_str(),
    });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let consent = http.get(&link).send().await.unwrap();
    assert_eq!(consent.status(), 302);
    let location = url::Url::parse(consent.headers()["location"].to_str().unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    atlassian
        .exchange_code(&app(), &code, REDIRECT, verifier.secret())
        .await
        .unwrap()
}

fn stored(tokens: &TokenResponse) -> TokenSet {
    let now = jiff::Timestamp::now();
    TokenSet {
        access_token: tokens.access_token.clone(),
        refresh_token: tokens.refresh_token.clone(),
        expires_at: now,
        scopes: tokens.scopes(),
        cloud_id: "11111111-1111-4111-8111-111111111111".into(),
        site_url: "https://acme.atlassian.net".into(),
        account_id: ADA.into(),
        obtained_at: now,
        consented_at: now,
        installation: None,
    }
}

#[tokio::test]
async fn a_code_exchange_yields_a_grant_with_identity_and_sites() {
    let standin = StandIn::demo_world().await.unwrap();
    let atlassian = client(&standin, Duration::from_secs(5));
    let tokens = grant(&standin, &atlassian).await;
    assert!(tokens.refresh_token.is_some());
    assert!(tokens.scopes().contains(&"offline_access".to_string()));
    let sites = atlassian.accessible_resources(&tokens.access_token).await.unwrap();
    let urls: Vec<&str> = sites.iter().map(|s| s.url.as_str()).collect();
    assert_eq!(urls, ["https://acme.atlassian.net", "https://globex.atlassian.net"]);
    assert_eq!(atlassian.me(&tokens.access_token).await.unwrap().account_id, ADA);
    let user = atlassian
        .current_user(&tokens.access_token, &sites[0].id)
        .await
        .unwrap();
    assert_eq!(
        (user.account_id.as_str(), user.display_name.as_str()),
        (ADA, "Ada Admin")
    );
}

#[tokio::test]
async fn a_wrong_pkce_verifier_or_client_secret_is_refused_with_its_category() {
    let standin = StandIn::demo_world().await.unwrap();
    let atlassian = client(&standin, Duration::from_secs(5));
    let wrong_secret = ClientCredentials {
        client_id: "demo-client".into(),
        client_secret: "nope".to_string().into(),
    };
    assert_eq!(
        atlassian.client_credentials(&wrong_secret).await.unwrap_err(),
        AtlassianError::InvalidClient
    );
    let err = atlassian
        .exchange_code(&app(), "atl_code_unknown", REDIRECT, "verifier")
        .await
        .unwrap_err();
    assert!(matches!(err, AtlassianError::GrantDead(_)), "{err:?}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn refresh_rotates_and_the_rotated_token_is_what_gets_stored() {
    let standin = StandIn::demo_world().await.unwrap();
    let atlassian = client(&standin, Duration::from_secs(5));
    let first = stored(&grant(&standin, &atlassian).await);
    let second = refresh::refresh(&atlassian, &app(), &first, jiff::Timestamp::now())
        .await
        .unwrap();
    let (old, new) = (
        first.refresh_token.as_ref().unwrap().expose_secret(),
        second.refresh_token.as_ref().unwrap().expose_secret(),
    );
    assert_ne!(old, new, "Atlassian rotates the refresh token on every refresh");
    assert_ne!(first.access_token.expose_secret(), second.access_token.expose_secret());
    assert_eq!(
        second.consented_at, first.consented_at,
        "the 365-day clock starts at consent, not at refresh"
    );
    // What the vault would hold round-trips with the new token.
    let again = TokenSet::from_json(&second.to_json()).unwrap();
    assert_eq!(again.refresh_token.as_ref().unwrap().expose_secret(), new);
    // And the new one refreshes again.
    let third = refresh::refresh(&atlassian, &app(), &again, jiff::Timestamp::now())
        .await
        .unwrap();
    assert_ne!(third.refresh_token.as_ref().unwrap().expose_secret(), new);
}

#[tokio::test]
async fn a_revoked_grant_is_the_dead_credential_error() {
    let standin = StandIn::demo_world().await.unwrap();
    let atlassian = client(&standin, Duration::from_secs(5));
    let set = stored(&grant(&standin, &atlassian).await);
    assert!(standin.revoke_user(ADA, "demo-client") > 0);
    let err = refresh::refresh(&atlassian, &app(), &set, jiff::Timestamp::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RefreshError::Atlassian(AtlassianError::GrantDead(_))),
        "{err:?}"
    );
    assert_eq!(
        atlassian.accessible_resources(&set.access_token).await.unwrap_err(),
        AtlassianError::Unauthorized
    );
}

#[tokio::test]
async fn rate_limits_carry_retry_after_and_outages_and_timeouts_are_retryable() {
    let standin = StandIn::demo_world().await.unwrap();
    let atlassian = client(&standin, Duration::from_millis(500));
    let set = stored(&grant(&standin, &atlassian).await);

    standin.fail_next(Endpoint::Token, 1, Fault::RateLimited { retry_after_secs: 7 });
    let err = refresh::refresh(&atlassian, &app(), &set, jiff::Timestamp::now())
        .await
        .unwrap_err();
    let RefreshError::Atlassian(err) = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        err,
        AtlassianError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert!(err.is_transient());

    standin.fail_next(Endpoint::Token, 1, Fault::Status { status: 502 });
    let err = atlassian
        .refresh(&app(), set.refresh_token.as_ref().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err, AtlassianError::Unavailable(502));
    assert!(err.is_transient());

    standin.fail_next(Endpoint::AccessibleResources, 1, Fault::delay(Duration::from_secs(2)));
    let err = atlassian.accessible_resources(&set.access_token).await.unwrap_err();
    assert_eq!(err, AtlassianError::Timeout);
    assert!(err.is_transient());
    // None of these consumed the refresh token: it still works.
    assert!(
        refresh::refresh(&atlassian, &app(), &set, jiff::Timestamp::now())
            .await
            .is_ok()
    );
}
