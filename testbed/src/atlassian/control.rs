//! The HTTP control API under `/_testbed/...`: the same controls as the Rust API of
//! [`super::StandIn`], as JSON over HTTP, for `testbed serve` users and the demo. Documented in
//! `testbed/ATLASSIAN.md`. Control calls are neither counted nor faulted.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::faults::{Endpoint, Fault};
use super::http::{Req, Resp, api_error, json};
use super::state::{State, secs};
use super::world::{Account, ClientApp, ServiceAccount, Site, seed_demo};

#[derive(Deserialize)]
struct AccountRef {
    account_id: String,
}

#[derive(Deserialize)]
struct SiteRef {
    host: String,
}

#[derive(Deserialize)]
struct Callback {
    client_id: String,
    redirect_uri: String,
}

#[derive(Deserialize)]
struct Revoke {
    account_id: String,
    client_id: String,
}

#[derive(Deserialize)]
struct RemoveApp {
    client_id: String,
    host: String,
}

#[derive(Deserialize)]
struct Enabled {
    enabled: bool,
}

#[derive(Deserialize)]
struct Seconds {
    seconds: u64,
}

#[derive(Deserialize)]
struct FailNext {
    endpoint: Endpoint,
    count: u32,
    fault: Fault,
}

#[derive(Deserialize)]
struct FailRatio {
    endpoint: Endpoint,
    ratio: f64,
    fault: Fault,
}

#[derive(Deserialize)]
struct Seed {
    seed: u64,
}

/// The JSON body of a control call, or why it is not one.
fn body<T: DeserializeOwned>(req: &Req) -> Result<T, String> {
    serde_json::from_slice(&req.body).map_err(|e| format!("Bad control request: {e}"))
}

fn ok() -> Resp {
    json(StatusCode::OK, &json!({ "ok": true }))
}

fn clock(st: &State) -> Resp {
    json(StatusCode::OK, &json!({ "now": st.now() }))
}

/// Handles `/_testbed/<what>`.
pub(crate) fn handle(st: &mut State, req: &Req) -> Resp {
    match run(st, req) {
        Ok(r) => r,
        Err(message) => api_error(StatusCode::BAD_REQUEST, &message),
    }
}

fn run(st: &mut State, req: &Req) -> Result<Resp, String> {
    let what = req.path.trim_start_matches("/_testbed/");
    let resp = match (&req.method, what) {
        (&Method::POST, "clients") => {
            st.world.register_client(body::<ClientApp>(req)?);
            ok()
        }
        (&Method::POST, "sites") => {
            st.world.add_site(body::<Site>(req)?);
            ok()
        }
        (&Method::POST, "accounts") => {
            st.world.add_account(body::<Account>(req)?);
            ok()
        }
        (&Method::POST, "service-accounts") => {
            st.world.add_service_account(body::<ServiceAccount>(req)?);
            ok()
        }
        (&Method::POST, "demo-world") => {
            seed_demo(&mut st.world);
            ok()
        }
        (&Method::POST, "consent") => {
            st.consenting = Some(body::<AccountRef>(req)?.account_id);
            ok()
        }
        (&Method::POST, "consent-site-next") => {
            st.consent_site_next = Some(body::<SiteRef>(req)?.host);
            ok()
        }
        (&Method::POST, "callbacks") => {
            let c = body::<Callback>(req)?;
            if !st.world.add_callback(&c.client_id, &c.redirect_uri) {
                return Err(format!("No app with client id {}", c.client_id));
            }
            ok()
        }
        (&Method::POST, "consent-page") => {
            st.consent_page = body::<Enabled>(req)?.enabled;
            ok()
        }
        (&Method::POST, "decline-next-consent") => {
            st.decline_next = true;
            ok()
        }
        (&Method::POST, "revoke") => {
            let r = body::<Revoke>(req)?;
            let n = st.tokens.revoke_user(&r.account_id, &r.client_id);
            json(StatusCode::OK, &json!({ "revoked_families": n }))
        }
        (&Method::POST, "remove-app") => {
            let r = body::<RemoveApp>(req)?;
            st.tokens.remove_site(&r.client_id, &r.host);
            ok()
        }
        (&Method::POST, "access-token-lifetime") => {
            st.access_lifetime = secs(Duration::from_secs(body::<Seconds>(req)?.seconds));
            ok()
        }
        (&Method::POST, "service-token-lifetime") => {
            st.service_lifetime = secs(Duration::from_secs(body::<Seconds>(req)?.seconds));
            ok()
        }
        (&Method::GET, "clock") => clock(st),
        (&Method::POST, "clock/advance") => {
            st.advance_clock(Duration::from_secs(body::<Seconds>(req)?.seconds));
            clock(st)
        }
        (&Method::POST, "clock/freeze") => {
            st.freeze_clock();
            clock(st)
        }
        (&Method::POST, "faults") => {
            let f = body::<FailNext>(req)?;
            st.faults.fail_next(f.endpoint, f.count, f.fault);
            ok()
        }
        (&Method::POST, "fault-ratios") => {
            let f = body::<FailRatio>(req)?;
            st.faults.fail_ratio(f.endpoint, f.ratio, f.fault);
            ok()
        }
        (&Method::POST, "fault-seed") => {
            st.faults.seed(body::<Seed>(req)?.seed);
            ok()
        }
        (&Method::GET, "bearer-counters") => json(StatusCode::OK, &st.bearer),
        (&Method::DELETE, "faults") => {
            st.faults.clear();
            ok()
        }
        (&Method::GET, "counters") => json(StatusCode::OK, &st.faults.counters()),
        (&Method::GET, "issued") => json(StatusCode::OK, st.tokens.issued()),
        _ => api_error(StatusCode::NOT_FOUND, "Unknown control"),
    };
    Ok(resp)
}
