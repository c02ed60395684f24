//! The optional consent page: with [`super::StandIn::set_consent_page`] on, `/authorize` answers
//! an HTML page (like Atlassian's consent screen) where a person picks the account and the one
//! site the app is for ("Use app on"), and accepts or declines; the form posts to `POST /authorize/consent`, which redirects to the app as the
//! automatic consent would. Meant for the demo; tests usually keep the automatic consent.

use std::fmt::Write as _;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::CONTENT_TYPE;

use super::http::{Req, Resp, oauth_error, respond};
use super::oauth::{AuthRequest, accept, consenting_account, decline};
use super::state::State;

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Random id of a pending request.
fn request_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// Stores the request and answers the consent page.
pub(crate) fn page(st: &mut State, ar: AuthRequest) -> Resp {
    let Some(id) = request_id() else {
        return oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "no randomness available",
        );
    };
    let chosen = consenting_account(st);
    let mut accounts = String::new();
    for a in st.world.accounts() {
        let checked = if Some(&a.account_id) == chosen.as_ref() {
            " checked"
        } else {
            ""
        };
        let _ = write!(
            accounts,
            r#"<label><input type="radio" name="account_id" value="{}"{checked}> {} &lt;{}&gt;</label><br>"#,
            esc(&a.account_id),
            esc(&a.name),
            esc(&a.email),
        );
    }
    let mut sites = String::from(r#"<option value="">the account's first site</option>"#);
    for host in st.world.sites() {
        let selected = if st.consent_site_next.as_deref() == Some(host.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(sites, r#"<option value="{0}"{selected}>{0}</option>"#, esc(&host));
    }
    let scopes: String = ar
        .scopes
        .iter()
        .map(|s| format!("<li><code>{}</code></li>", esc(s)))
        .collect();
    let html = format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Authorize {client}</title></head>
<body>
<h1>{client} is requesting access to your Atlassian account</h1>
<p>It will be able to:</p><ul>{scopes}</ul>
<form method="post" action="/authorize/consent">
<input type="hidden" name="request" value="{id}">
<p>Use this account:</p>{accounts}
<p><label>Use app on <select name="site">{sites}</select></label></p>
<button type="submit" name="decision" value="accept">Accept</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form>
<p><small>Atlassian stand-in (testbed): no real account is involved.</small></p>
</body></html>
"#,
        client = esc(&ar.client_id),
    );
    st.pending.insert(id, ar);
    respond(
        StatusCode::OK,
        &[(CONTENT_TYPE, "text/html; charset=utf-8")],
        Bytes::from(html),
    )
}

/// `POST /authorize/consent`: the decision from the page.
pub(crate) fn decision(st: &mut State, req: &Req) -> Resp {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&req.body).into_owned().collect();
    let field = |k: &str| form.iter().find(|(fk, _)| fk == k).map(|(_, v)| v.clone());
    let Some(ar) = field("request").and_then(|id| st.pending.remove(&id)) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Unknown or already answered consent request",
        );
    };
    match field("decision").as_deref() {
        Some("accept") => {
            let account = field("account_id").or_else(|| consenting_account(st));
            let site = field("site").filter(|s| !s.is_empty());
            accept(st, ar, account, site)
        }
        _ => decline(&ar),
    }
}
