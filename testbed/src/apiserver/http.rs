//! HTTP routing and handlers: discovery, CRUD, patch, delete, list and watch, in the shapes of
//! `../shared/k8s-reference/` (Status bodies, Tables, watch streams).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use super::faults::Faults;
use super::resources::{self, Resource};
use super::select::LabelSelector;
use super::store::{ApiError, Propagation, Store};
use super::table;
use super::tokens::Tokens;
use super::{patch, protobuf};

/// The response body type.
pub type Body = BoxBody<Bytes, Infallible>;

/// One request, as tests inspect them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query.
    pub query: String,
    /// Answer status.
    pub status: u16,
}

/// What every request handler shares.
pub struct Shared {
    /// Objects.
    pub store: Store,
    /// Fault knobs.
    pub faults: Faults,
    /// Every request so far.
    pub log: Mutex<Vec<RequestRecord>>,
    /// Requests by verb and resource.
    pub counts: super::counts::Counter,
    /// Where the server listens (for discovery's serverAddress).
    pub address: String,
    /// ServiceAccount tokens issued so far.
    pub tokens: Tokens,
}

/// Handles one request.
pub async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let latency = shared.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query_text = request.uri().query().unwrap_or("").to_string();
    let accept = header_text(&request, header::ACCEPT);
    let content_type = header_text(&request, header::CONTENT_TYPE);
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let query: HashMap<String, String> = url::form_urlencoded::parse(query_text.as_bytes())
        .into_owned()
        .collect();
    let call = Call {
        shared: shared.clone(),
        method: method.clone(),
        path: path.clone(),
        query,
        accept,
        content_type,
        body,
    };
    let response = route(call).await.unwrap_or_else(|e| status_response(&e));
    let record = RequestRecord {
        method: method.to_string(),
        path,
        query: query_text,
        status: response.status().as_u16(),
    };
    shared.log.lock().unwrap_or_else(|p| p.into_inner()).push(record);
    Ok(response)
}

struct Call {
    shared: Arc<Shared>,
    method: Method,
    path: String,
    query: HashMap<String, String>,
    accept: String,
    content_type: String,
    body: Bytes,
}

impl Call {
    fn flag(&self, name: &str) -> bool {
        matches!(self.query.get(name).map(String::as_str), Some("true" | "1"))
    }

    fn wants_table(&self) -> bool {
        self.accept.contains("as=Table")
    }

    /// `Accept: application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1` (and the `List`
    /// form): metadata-only answers, as kube's `Api<PartialObjectMeta<K>>` asks.
    fn wants_metadata(&self) -> bool {
        self.accept.contains("as=PartialObjectMetadata")
    }
}

/// `object` as a `PartialObjectMetadata` (metadata only).
fn metadata_only(object: &Value) -> Value {
    serde_json::to_value(MetadataView(object)).unwrap_or_default()
}

/// One line of a watch stream, `{"type": …, "object": …}`, serialized from a view of the
/// stored object (a watch serializes every event for every watcher: no copy on the way).
fn event_line(type_: &str, object: &impl serde::Serialize) -> String {
    #[derive(serde::Serialize)]
    struct Line<'a, O> {
        #[serde(rename = "type")]
        type_: &'a str,
        object: &'a O,
    }
    serde_json::to_string(&Line { type_, object }).unwrap_or_default()
}

/// An object's `PartialObjectMetadata`, serialized from the object itself.
struct MetadataView<'a>(&'a Value);

impl serde::Serialize for MetadataView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("kind", "PartialObjectMetadata")?;
        map.serialize_entry("apiVersion", "meta.k8s.io/v1")?;
        map.serialize_entry("metadata", &self.0["metadata"])?;
        map.end()
    }
}

/// The stored object in the version a request asked for (`apiVersion` set), without the copy
/// [`super::store::with_version`] makes.
struct VersionedView<'a> {
    object: &'a Value,
    api_version: &'a str,
}

impl serde::Serialize for VersionedView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let Some(fields) = self.object.as_object() else {
            return self.object.serialize(serializer);
        };
        let mut map = serializer.serialize_map(Some(fields.len() + usize::from(!fields.contains_key("apiVersion"))))?;
        let mut versioned = false;
        for (key, value) in fields {
            if key == "apiVersion" {
                map.serialize_entry(key, self.api_version)?;
                versioned = true;
            } else {
                map.serialize_entry(key, value)?;
            }
        }
        if !versioned {
            map.serialize_entry("apiVersion", self.api_version)?;
        }
        map.end()
    }
}

fn header_text(request: &Request<Incoming>, name: header::HeaderName) -> String {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Where a resource path points.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

async fn route(call: Call) -> Result<Response<Body>, ApiError> {
    let segments: Vec<String> = call
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let store = &call.shared.store;
    match s.as_slice() {
        ["version"] => return Ok(json_response(StatusCode::OK, &version())),
        ["healthz" | "readyz" | "livez"] => return Ok(text_response(StatusCode::OK, "ok")),
        ["api"] => {
            let body = json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": call.shared.address}]});
            return Ok(json_response(StatusCode::OK, &body));
        }
        ["apis"] => {
            let all = store.resources();
            return Ok(json_response(
                StatusCode::OK,
                &resources::group_list(&all.iter().collect::<Vec<_>>()),
            ));
        }
        ["api", "v1"] => {
            let all = store.resources();
            let core: Vec<&Resource> = all.iter().filter(|r| r.group.is_empty()).collect();
            return Ok(json_response(StatusCode::OK, &resources::resource_list("v1", &core)));
        }
        ["apis", group, version] => {
            let all = store.resources();
            let matching: Vec<&Resource> = all
                .iter()
                .filter(|r| r.group == *group && r.version == *version)
                .collect();
            if matching.is_empty() {
                return Err(ApiError {
                    code: 404,
                    reason: "NotFound",
                    message: "the server could not find the requested resource".into(),
                    details: Value::Null,
                });
            }
            return Ok(json_response(
                StatusCode::OK,
                &resources::resource_list(&format!("{group}/{version}"), &matching),
            ));
        }
        // Enough OpenAPI for kubectl to validate server-side (schemas are not served).
        ["openapi", "v3"] => {
            let all = store.resources();
            let hash = store.resource_version().to_string();
            return Ok(json_response(
                StatusCode::OK,
                &resources::openapi_root(&all.iter().collect::<Vec<_>>(), &hash),
            ));
        }
        ["openapi", "v3", "api", "v1"] => {
            let all = store.resources();
            let core: Vec<&Resource> = all.iter().filter(|r| r.group.is_empty()).collect();
            return Ok(json_response(StatusCode::OK, &resources::openapi_group_version(&core)));
        }
        ["openapi", "v3", "apis", group, version] => {
            let all = store.resources();
            let matching: Vec<&Resource> = all
                .iter()
                .filter(|r| r.group == *group && r.version == *version)
                .collect();
            return Ok(json_response(
                StatusCode::OK,
                &resources::openapi_group_version(&matching),
            ));
        }
        _ => {}
    }
    let (group, version, rest) = match s.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => {
            return Err(ApiError {
                code: 404,
                reason: "NotFound",
                message: "the server could not find the requested resource".into(),
                details: Value::Null,
            });
        }
    };
    let (namespace, plural, name, subresource) = match rest {
        ["namespaces", ns] if group.is_empty() => (None, "namespaces", Some(*ns), None),
        ["namespaces", ns, sub @ ("status" | "finalize")] if group.is_empty() => {
            (None, "namespaces", Some(*ns), Some(*sub))
        }
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
        [plural] => (None, *plural, None, None),
        [plural, name] => (None, *plural, Some(*name), None),
        [plural, name, sub] => (None, *plural, Some(*name), Some(*sub)),
        _ => {
            return Err(ApiError {
                code: 404,
                reason: "NotFound",
                message: "the server could not find the requested resource".into(),
                details: Value::Null,
            });
        }
    };
    let resource = store.resource(group, version, plural).ok_or_else(|| ApiError {
        code: 404,
        reason: "NotFound",
        message: "the server could not find the requested resource".into(),
        details: Value::Null,
    })?;
    let target = Target {
        namespace: namespace.map(str::to_string).filter(|_| resource.namespaced),
        name: name.map(str::to_string),
        subresource: subresource.map(str::to_string),
        resource,
    };
    let verb = match (&call.method, &target.name) {
        (&Method::GET, None) if call.flag("watch") => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, None) => "deletecollection",
        (&Method::DELETE, Some(_)) => "delete",
        _ => {
            return Err(ApiError {
                code: 405,
                reason: "MethodNotAllowed",
                message: "method not allowed".into(),
                details: Value::Null,
            });
        }
    };
    call.shared
        .counts
        .count(verb, &target.resource.plural, target.subresource.as_deref());
    if let Some(code) = call.shared.faults.take(verb, &target.resource.plural) {
        return Err(injected(code));
    }
    if target.resource.create_only() && verb != "create" {
        return Err(ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("the server does not allow this method on the requested resource ({verb})"),
            details: Value::Null,
        });
    }
    if target.resource.create_only() {
        return token_review(&call);
    }
    if target.subresource.as_deref() == Some("token")
        && target.resource.group.is_empty()
        && target.resource.plural == "serviceaccounts"
        && verb == "create"
    {
        return token_request(&call, &target);
    }
    if target
        .subresource
        .as_deref()
        .is_some_and(|s| s != "status" || !target.resource.status_subresource)
    {
        return Err(ApiError {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: Value::Null,
        });
    }
    match verb {
        "watch" => watch(&call, &target),
        "list" => list(&call, &target),
        "get" => {
            let object = store.get(
                &target.resource,
                target.namespace.as_deref().unwrap_or(""),
                target.name.as_deref().unwrap_or(""),
            )?;
            if call.wants_table() {
                return Ok(table_response(&table::render(
                    &target.resource,
                    &[object],
                    store.resource_version(),
                )));
            }
            if call.wants_metadata() {
                return Ok(json_response(StatusCode::OK, &metadata_only(&object)));
            }
            Ok(json_response(StatusCode::OK, &object))
        }
        "create" => {
            let object = parse_body(&call)?;
            let namespace = target.namespace.clone().unwrap_or_default();
            if let Some(in_body) = object["metadata"]["namespace"].as_str()
                && target.resource.namespaced
                && in_body != namespace
            {
                {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
            let created = store.create(&target.resource, &namespace, object)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        "update" => {
            let object = parse_body(&call)?;
            let name = target.name.clone().unwrap_or_default();
            let updated = store.update(
                &target.resource,
                target.namespace.as_deref().unwrap_or(""),
                &name,
                object,
                target.subresource.is_some(),
            )?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        "patch" => patch_object(&call, &target),
        "delete" => {
            let propagation = propagation(&call);
            let deleted = store.delete(
                &target.resource,
                target.namespace.as_deref().unwrap_or(""),
                target.name.as_deref().unwrap_or(""),
                propagation,
            )?;
            if target.resource.group.is_empty() && target.resource.plural == "namespaces" {
                spawn_namespace_controller(&call.shared, target.name.clone().unwrap_or_default());
            }
            Ok(json_response(StatusCode::OK, &deleted))
        }
        _ => {
            let (items, _) = store.list(
                &target.resource,
                target.namespace.as_deref(),
                &selector(&call)?,
                call.query.get("fieldSelector").map(String::as_str),
            )?;
            for item in &items {
                let (ns, name) = (
                    item["metadata"]["namespace"].as_str().unwrap_or(""),
                    item["metadata"]["name"].as_str().unwrap_or(""),
                );
                let _ = store.delete(&target.resource, ns, name, propagation(&call));
            }
            Ok(json_response(
                StatusCode::OK,
                &list_body(&target.resource, items, store.resource_version()),
            ))
        }
    }
}

fn injected(code: u16) -> ApiError {
    let reason = match code {
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        409 => "Conflict",
        _ => "InternalError",
    };
    ApiError {
        code,
        reason,
        message: format!("injected fault ({code})"),
        details: Value::Null,
    }
}

fn selector(call: &Call) -> Result<LabelSelector, ApiError> {
    LabelSelector::parse(call.query.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(ApiError::bad_request)
}

fn propagation(call: &Call) -> Propagation {
    let from_body = serde_json::from_slice::<Value>(&call.body)
        .ok()
        .and_then(|b| b["propagationPolicy"].as_str().map(str::to_string));
    match from_body
        .or_else(|| call.query.get("propagationPolicy").cloned())
        .as_deref()
    {
        Some("Foreground") => Propagation::Foreground,
        Some("Orphan") => Propagation::Orphan,
        _ => Propagation::Background,
    }
}

/// The namespace controller: after a namespace is marked Terminating, delete its contents and
/// then it, retrying while finalizers hold something (until the server stops).
fn spawn_namespace_controller(shared: &Arc<Shared>, namespace: String) {
    let shared = Arc::downgrade(shared);
    tokio::spawn(async move {
        loop {
            let Some(shared) = shared.upgrade() else { return };
            if shared.store.finalize_namespace(&namespace) {
                return;
            }
            drop(shared);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// `POST .../serviceaccounts/NAME/token`.
fn token_request(call: &Call, target: &Target) -> Result<Response<Body>, ApiError> {
    let namespace = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let account = call.shared.store.get(&target.resource, &namespace, &name)?;
    let request = parse_body(call)?;
    let uid = account["metadata"]["uid"].as_str().unwrap_or_default();
    let answer = call
        .shared
        .tokens
        .issue(&namespace, &name, uid, &request)
        .map_err(|refusal| {
            let mut error = ApiError::invalid(&target.resource, &name, refusal.field, &refusal.message);
            error.message = format!(
                "TokenRequest.authentication.k8s.io \"{name}\" is invalid: {}: {}",
                refusal.field, refusal.message
            );
            error.details["kind"] = json!("TokenRequest");
            error.details["group"] = json!("authentication.k8s.io");
            error
        })?;
    Ok(json_response(StatusCode::CREATED, &answer))
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
fn token_review(call: &Call) -> Result<Response<Body>, ApiError> {
    let review = parse_body(call)?;
    let store = &call.shared.store;
    let accounts = store.resource("", "v1", "serviceaccounts");
    let answer = call.shared.tokens.review(&review, |namespace, name| {
        let account = store.get(accounts.as_ref()?, namespace, name).ok()?;
        account["metadata"]["uid"].as_str().map(str::to_string)
    });
    Ok(json_response(StatusCode::CREATED, &answer))
}

fn parse_body(call: &Call) -> Result<Value, ApiError> {
    if call.content_type.contains("protobuf") {
        return protobuf::decode(&call.body).map_err(|e| match e {
            protobuf::DecodeError::Unsupported(_) => ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: e.to_string(),
                details: Value::Null,
            },
            _ => ApiError::bad_request(e.to_string()),
        });
    }
    serde_json::from_slice(&call.body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn list_body(resource: &Resource, items: Vec<Value>, rv: u64) -> Value {
    json!({"apiVersion": resource.api_version(), "kind": format!("{}List", resource.kind), "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}

fn list(call: &Call, target: &Target) -> Result<Response<Body>, ApiError> {
    let store = &call.shared.store;
    // `limit` and `continue` page a list (kube's watcher asks for 500 at a time); the token is
    // the first page's resourceVersion and the last key served, base64url-encoded (opaque to clients).
    let limit = call
        .query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let resumed = match call.query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => Some(decode_continue(token)?),
        None => None,
    };
    let page = store.list_page(
        &target.resource,
        target.namespace.as_deref(),
        &selector(call)?,
        call.query.get("fieldSelector").map(String::as_str),
        resumed.as_ref().map(|(_, after)| after),
        limit,
    )?;
    let rv = resumed.as_ref().map_or(page.rv, |(rv, _)| *rv);
    if call.wants_table() {
        return Ok(table_response(&table::render(&target.resource, &page.items, rv)));
    }
    let mut body = if call.wants_metadata() {
        let items: Vec<Value> = page.items.iter().map(metadata_only).collect();
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": rv.to_string()}, "items": items})
    } else {
        list_body(&target.resource, page.items, rv)
    };
    if let Some((ns, name)) = &page.next {
        body["metadata"]["continue"] =
            json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{rv}\0{ns}\0{name}")));
        body["metadata"]["remainingItemCount"] = json!(page.remaining);
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// (resourceVersion of the first page, last key served) of a `continue` token.
fn decode_continue(token: &str) -> Result<(u64, (String, String)), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: invalid continue token");
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let mut parts = text.splitn(3, '\0');
    let rv = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
    let ns = parts.next().ok_or_else(bad)?.to_string();
    let name = parts.next().ok_or_else(bad)?.to_string();
    Ok((rv, (ns, name)))
}

fn patch_object(call: &Call, target: &Target) -> Result<Response<Body>, ApiError> {
    let name = target.name.clone().unwrap_or_default();
    let namespace = target.namespace.clone().unwrap_or_default();
    let kind = call.content_type.split(';').next().unwrap_or("").trim().to_string();
    let apply = kind == "application/apply-patch+yaml";
    if apply && call.query.get("fieldManager").is_none_or(|m| m.is_empty()) {
        return Err(ApiError::invalid(
            &target.resource,
            &name,
            "fieldManager",
            "Required value: is required for apply patch",
        ));
    }
    let body: Value = if apply {
        let text =
            std::str::from_utf8(&call.body).map_err(|_| ApiError::bad_request("the apply patch is not UTF-8"))?;
        serde_yaml_ng::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("the apply patch is not valid YAML: {e}")))?
    } else {
        parse_body(call)?
    };
    let status_only = target.subresource.is_some();
    let change = |object: &mut Value| -> Result<(), ApiError> {
        match kind.as_str() {
            "application/json-patch+json" => patch::json_patch(object, &body).map_err(|e| ApiError {
                code: 422,
                reason: "Invalid",
                message: format!(
                    "the server rejected our request due to an error in our request: {}",
                    e.0
                ),
                details: Value::Null,
            }),
            "application/merge-patch+json" | "application/apply-patch+yaml" => {
                patch::merge(object, &body);
                Ok(())
            }
            "application/strategic-merge-patch+json" => {
                patch::strategic(object, &body);
                Ok(())
            }
            other => Err(ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                ),
                details: Value::Null,
            }),
        }
    };
    let patched = call
        .shared
        .store
        .patch(&target.resource, &namespace, &name, status_only, apply, change)?;
    Ok(json_response(StatusCode::OK, &patched))
}

/// A watch: the backlog, then live events, bookmarks, until timeout, a dropped connection or
/// an injected drop.
fn watch(call: &Call, target: &Target) -> Result<Response<Body>, ApiError> {
    let store = &call.shared.store;
    let rv = match call.query.get("resourceVersion").map(String::as_str) {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {text:?}")))?,
        ),
    };
    let labels = selector(call)?;
    let fields = call.query.get("fieldSelector").cloned();
    let initial = call.flag("sendInitialEvents");
    let bookmarks = call.flag("allowWatchBookmarks");
    let timeout = call
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let as_table = call.wants_table();
    let as_metadata = call.wants_metadata();
    let resource = target.resource.clone();
    let namespace = target.namespace.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
    let start = match store.watch_from(&resource, rv, initial) {
        Ok(start) => start,
        Err(expired) => {
            // A too-old watch is a 200 stream carrying one ERROR event (raw/watch-too-old.jsonl).
            let line = format!("{}\n", json!({"type": "ERROR", "object": expired.status()}));
            let _ = tx.try_send(Ok(Frame::data(Bytes::from(line))));
            drop(tx);
            return Ok(stream_response(rx));
        }
    };
    let shared = call.shared.clone();
    let mut drops = shared.faults.drop_signal();
    drops.mark_unchanged();
    tokio::spawn(async move {
        let matches = |object: &Value| {
            namespace
                .as_deref()
                .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
                && labels.matches(object)
                && fields
                    .as_deref()
                    .is_none_or(|f| super::select::field_matches(f, object).unwrap_or(false))
        };
        let api_version = resource.api_version();
        let render = |type_: &str, object: &Value| -> Bytes {
            let line = if as_table && type_ != "BOOKMARK" {
                let object = &super::store::with_version(object, &resource);
                let table = table::render(
                    &resource,
                    std::slice::from_ref(object),
                    object["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(0),
                );
                json!({"type": type_, "object": table}).to_string()
            } else if super::store::converts_on_read(&resource) {
                // The writer may have used the other Event API: serve this watch's shape.
                let object = super::store::with_version(object, &resource);
                let object = if as_metadata { metadata_only(&object) } else { object };
                json!({"type": type_, "object": object}).to_string()
            } else if as_metadata {
                event_line(type_, &MetadataView(object))
            } else {
                event_line(
                    type_,
                    &VersionedView {
                        object,
                        api_version: &api_version,
                    },
                )
            };
            Bytes::from(line + "\n")
        };
        let bookmark = |rv: u64, end: bool| {
            let mut object = json!({"kind": resource.kind, "apiVersion": resource.api_version(), "metadata": {"resourceVersion": rv.to_string()}});
            if end {
                object["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            Bytes::from(format!("{}\n", json!({"type": "BOOKMARK", "object": object})))
        };
        for event in &start.backlog {
            if let Some((type_, object)) = seen_by(event, &matches)
                && tx.send(Ok(Frame::data(render(type_, &object)))).await.is_err()
            {
                return;
            }
        }
        if initial && tx.send(Ok(Frame::data(bookmark(start.from, true)))).await.is_err() {
            return;
        }
        let mut live = start.live;
        let key = super::store::key(&resource);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = drops.changed() => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    if tx.send(Ok(Frame::data(bookmark(shared.store.resource_version(), false)))).await.is_err() { return; }
                }
                event = live.recv() => match event {
                    Ok(event) if event.rv > start.from && event.key == key => {
                        if let Some((type_, object)) = seen_by(&event, &matches)
                            && tx.send(Ok(Frame::data(render(type_, &object)))).await.is_err() { return; }
                    }
                    Ok(_) => {}
                    // Fell behind or the store went away: end the stream; the client re-watches.
                    Err(_) => return,
                }
            }
        }
    });
    Ok(stream_response(rx))
}

/// What a watch selecting by `matches` sees of a change (cacher's `convertToWatchEvent`): an
/// object entering the selection is ADDED, one leaving it is DELETED (its previous content at
/// the new resourceVersion).
fn seen_by<'e>(
    event: &'e super::store::Event,
    matches: &impl Fn(&Value) -> bool,
) -> Option<(&'static str, std::borrow::Cow<'e, Value>)> {
    let now = matches(&event.object);
    let before = event.previous.as_ref().map(matches);
    match (event.type_, now, before) {
        ("MODIFIED", true, Some(false)) => Some(("ADDED", std::borrow::Cow::Borrowed(&event.object))),
        ("MODIFIED", false, Some(true)) => {
            let mut gone = event.previous.clone().unwrap_or_default();
            gone["metadata"]["resourceVersion"] = event.object["metadata"]["resourceVersion"].clone();
            Some(("DELETED", std::borrow::Cow::Owned(gone)))
        }
        (type_, true, _) => Some((type_, std::borrow::Cow::Borrowed(&event.object))),
        _ => None,
    }
}

fn stream_response(rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>) -> Response<Body> {
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, private"),
    );
    response
}

fn version() -> Value {
    json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-testbed", "gitCommit": "testbed", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "rust", "compiler": "rustc", "platform": "linux/amd64"})
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(full(serde_json::to_vec(body).unwrap_or_default()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn table_response(body: &Value) -> Response<Body> {
    let mut response = json_response(StatusCode::OK, body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io"),
    );
    response
}

fn text_response(code: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text.as_bytes().to_vec()));
    *response.status_mut() = code;
    response
}

fn status_response(error: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &error.status(),
    )
}

fn full(bytes: Vec<u8>) -> Body {
    BodyExt::boxed(Full::new(Bytes::from(bytes)))
}
