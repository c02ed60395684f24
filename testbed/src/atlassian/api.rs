//! The gateway side (`api.atlassian.com` and site hosts): accessible-resources, `/me`, the
//! Confluence current-user call and `/_edge/tenant_info`. Bearer tokens are checked on the
//! stand-in clock; a dead token answers 401 `{"code": 401, "message": "Unauthorized"}`.
//!
//! Shapes follow <https://developer.atlassian.com/cloud/confluence/oauth-2-3lo-apps/>
//! ("Get the cloudid for your site", "Construct the request URL", `/me` with `read:me`).

use hyper::StatusCode;
use serde_json::{Value, json};

use super::http::{Req, Resp, api_error, json};
use super::state::State;
use super::tokens::{AccessError, Principal};

/// The principal of a live bearer token, if the request carries one; counts the outcome.
fn principal(st: &mut State, req: &Req) -> Option<Principal> {
    let Some(token) = req.bearer() else {
        st.bearer.missing += 1;
        return None;
    };
    let result = st.tokens.authenticate(st.now(), token);
    let counter = match &result {
        Ok(_) => &mut st.bearer.accepted,
        Err(AccessError::Unknown) => &mut st.bearer.unknown,
        Err(AccessError::Expired) => &mut st.bearer.expired,
        Err(AccessError::Revoked) => &mut st.bearer.revoked,
    };
    *counter += 1;
    result.ok()
}

fn unauthorized() -> Resp {
    api_error(StatusCode::UNAUTHORIZED, "Unauthorized")
}

/// `GET /oauth/token/accessible-resources`: the sites the grant covers.
pub(crate) fn accessible_resources(st: &mut State, req: &Req) -> Resp {
    let Some(p) = principal(st, req) else {
        return unauthorized();
    };
    let scopes: Vec<&String> = p.scopes.iter().filter(|s| *s != "offline_access").collect();
    let sites: Vec<Value> = p
        .sites
        .iter()
        .filter_map(|h| st.world.site_by_host(h))
        .map(|s| {
            json!({
                "id": s.cloud_id,
                "url": s.url(),
                "name": s.name,
                "scopes": scopes,
                "avatarUrl": "https://site-admin-avatar-cdn.prod.public.atl-paas.net/avatars/240/site.png",
            })
        })
        .collect();
    json(StatusCode::OK, &sites)
}

/// `GET /me`: the user's profile; needs `read:me`.
pub(crate) fn me(st: &mut State, req: &Req) -> Resp {
    let Some(p) = principal(st, req) else {
        return unauthorized();
    };
    if !p.scopes.iter().any(|s| s == "read:me") {
        return api_error(StatusCode::FORBIDDEN, "The token does not have the read:me scope");
    }
    let Some(who) = st.world.identity(&p.account_id) else {
        return api_error(StatusCode::NOT_FOUND, "Account not found");
    };
    let mut body = json!({
        "account_type": who.account_type,
        "account_id": who.account_id,
        "name": who.name,
        "nickname": who.name,
        "picture": format!("https://avatar-management.services.atlassian.com/{}/48", who.account_id),
        "account_status": "active",
        "zoneinfo": "Etc/UTC",
        "locale": "en-US",
        "extended_profile": {},
    });
    if !who.email.is_empty() {
        body["email"] = json!(who.email);
        body["email_verified"] = json!(true);
    }
    json(StatusCode::OK, &body)
}

/// `GET /ex/confluence/{cloudId}/wiki/rest/api/user/current`.
pub(crate) fn confluence_user(st: &mut State, req: &Req, cloud_id: &str) -> Resp {
    let Some(p) = principal(st, req) else {
        return unauthorized();
    };
    let Some(site) = st.world.site_by_cloud_id(cloud_id) else {
        return api_error(StatusCode::NOT_FOUND, "Site not found");
    };
    if !p.sites.iter().any(|h| h.eq_ignore_ascii_case(&site.host)) {
        return api_error(
            StatusCode::FORBIDDEN,
            "The app is not installed on this instance or the grant does not cover it",
        );
    }
    let Some(who) = st.world.identity(&p.account_id) else {
        return api_error(StatusCode::NOT_FOUND, "Account not found");
    };
    let base = format!("{}/wiki", site.url());
    json(
        StatusCode::OK,
        &json!({
            "type": "known",
            "accountId": who.account_id,
            "accountType": who.account_type,
            "email": who.email,
            "publicName": who.name,
            "displayName": who.name,
            "profilePicture": {
                "path": format!("/wiki/aa-avatar/{}", who.account_id),
                "width": 48,
                "height": 48,
                "isDefault": false,
            },
            "_links": {
                "self": format!("{base}/rest/api/user?accountId={}", who.account_id),
                "base": base,
                "context": "/wiki",
            },
        }),
    )
}

/// `GET /_edge/tenant_info` on a site host: that site's cloud id.
pub(crate) fn tenant_info(st: &State, host: &str) -> Resp {
    match st.world.site_by_host(host) {
        Some(site) => json(StatusCode::OK, &json!({ "cloudId": site.cloud_id })),
        None => api_error(StatusCode::NOT_FOUND, "Site not found"),
    }
}
