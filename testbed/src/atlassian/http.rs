//! HTTP plumbing shared by the handlers: a fully read request ([`Req`]) and the response
//! shapes Atlassian uses: OAuth errors `{"error", "error_description"}` from the authorization
//! server, API errors `{"code", "message"}` from the gateway.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, LOCATION, PRAGMA};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::json;

/// The response type of every handler.
pub(crate) type Resp = Response<Full<Bytes>>;

/// Largest request body read.
const MAX_BODY: usize = 1 << 20;

/// A request read to the end.
#[derive(Debug)]
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Req {
    /// Reads a hyper request; a body over 1 MiB or a broken one answers an error response.
    pub(crate) async fn read(req: Request<Incoming>) -> Result<Req, Resp> {
        let (parts, body) = req.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|_| api_error(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"))?
            .to_bytes();
        let query = parts
            .uri
            .query()
            .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        Ok(Req {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query,
            headers: parts.headers,
            body,
        })
    }

    /// The first value of a query parameter.
    pub(crate) fn query(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A header as text.
    pub(crate) fn header(&self, name: HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The token of an `Authorization: Bearer …` header.
    pub(crate) fn bearer(&self) -> Option<&str> {
        let value = self.header(hyper::header::AUTHORIZATION)?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

/// A response with a body and headers.
pub(crate) fn respond(status: StatusCode, headers: &[(HeaderName, &str)], body: Bytes) -> Resp {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            r.headers_mut().insert(name.clone(), v);
        }
    }
    r
}

/// A JSON response.
pub(crate) fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    respond(status, &[(CONTENT_TYPE, "application/json")], Bytes::from(bytes))
}

/// A JSON response that must not be cached (token endpoint answers).
pub(crate) fn json_no_store<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Resp {
    let mut r = json(status, body);
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// An authorization-server error: `{"error", "error_description"}`.
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Resp {
    json_no_store(status, &json!({ "error": error, "error_description": description }))
}

/// A gateway (API) error: `{"code", "message"}`.
pub(crate) fn api_error(status: StatusCode, message: &str) -> Resp {
    json(status, &json!({ "code": status.as_u16(), "message": message }))
}

/// A 302 to `location`.
pub(crate) fn redirect(location: &str) -> Resp {
    respond(StatusCode::FOUND, &[(LOCATION, location)], Bytes::new())
}
