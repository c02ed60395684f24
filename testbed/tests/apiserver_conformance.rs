//! Conformance of the test API server, written against `kube::Api`: each test asserts the
//! status code or field a real API server gives, per the Kubernetes API concepts
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/>) and the captures in
//! `shared/k8s-reference/`. With `E2E_KUBECONFIG` set the same tests run against that cluster
//! (the fault-knob tests then check only what a real server shows without knobs).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use testbed::apiserver::ApiServer;

const WAIT: Duration = Duration::from_secs(20);

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(
    group = "conformance.testbed.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wdg"
)]
struct WidgetSpec {
    size: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Default)]
struct WidgetStatus {
    seen: i64,
}

struct Cluster {
    server: Option<ApiServer>,
    client: Client,
    namespace: String,
}

async fn cluster() -> Cluster {
    let (server, kubeconfig) = match std::env::var("E2E_KUBECONFIG") {
        Ok(path) if !path.is_empty() => {
            eprintln!("conformance against the cluster in E2E_KUBECONFIG={path}");
            (None, Kubeconfig::read_from(path).unwrap())
        }
        _ => {
            let server = ApiServer::start().await.unwrap();
            let kubeconfig = serde_yaml_ng::from_str(&server.kubeconfig_yaml()).unwrap();
            (Some(server), kubeconfig)
        }
    };
    let client = Client::try_from(
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap(),
    )
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = Widget::crd();
    let _ = crds
        .patch(
            &crd.name_any(),
            &PatchParams::apply("conformance").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    // A real server needs a moment to establish the CRD.
    wait(|| async {
        Api::<Widget>::all(client.clone())
            .list(&ListParams::default())
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let mut suffix = [0u8; 4];
    getrandom::fill(&mut suffix).unwrap();
    let namespace = format!("conf-{}", suffix.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    Cluster {
        server,
        client,
        namespace,
    }
}

async fn wait<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn widget(name: &str, size: i64) -> Widget {
    let mut w = Widget::new(name, WidgetSpec { size });
    w.metadata.labels = Some(BTreeMap::from([(
        "size".to_string(),
        if size > 5 { "big" } else { "small" }.to_string(),
    )]));
    w
}

fn status_code(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other}"),
    }
}

fn rv(obj: &impl ResourceExt) -> u64 {
    obj.resource_version().unwrap().parse().unwrap()
}

#[tokio::test]
async fn create_sets_identity_and_generate_name_works() {
    let c = cluster().await;
    let api: Api<Widget> = Api::namespaced(c.client.clone(), &c.namespace);
    let created = api.create(&PostParams::default(), &widget("a", 1)).await.unwrap();
    assert!(created.uid().is_some_and(|u| u.len() == 36));
    assert!(created.creation_timestamp().is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.namespace().as_deref(), Some(c.namespace.as_str()));
    let mut generated = widget("", 1);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let generated = api.create(&PostParams::default(), &generated).await.unwrap();
    assert!(generated.name_any().starts_with("gen-") && generated.name_any().len() > 4);
}

#[tokio::test]
async fn resource_versions_rise_across_kinds_and_a_no_op_update_keeps_it() {
    let c = cluster().await;
    let widgets: Api<Widget> = Api::namespaced(c.client.clone(), &c.namespace);
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.namespace);
    let w = widgets.create(&PostParams::default(), &widget("a", 1)).await.unwrap();
    let s = secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("s".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(rv(&s) > rv(&w), "one cluster-wide resourceVersion");
    let same = widgets.replace("a", &PostParams::default(), &w).await.unwrap();
    assert_eq!(rv(&same), rv(&w), "a no-op update does not bump resourceVersion");
}

#[tokio::test]
async fn conflicts_already_exists_and_not_found_are_status_bodies() {
    let c = cluster().await;
    let api: Api<Widget> = Api::namespaced(c.client.clone(), &c.namespace);
    let first = api.create(&PostParams::default(), &widget("a", 1)).await.unwrap();
    assert_eq!(
        status_code(api.create(&PostParams::default(), &widget("a", 1)).await.unwrap_err()),
        (409, "AlreadyExists".into())
    );
    let mut changed = first.clone();
    changed.spec.size = 2;
    api.replace("a", &PostParams::default(), &changed).await.unwrap();
    let mut stale = first.clone();
    stale.spec.size = 3;
    assert_eq!(
        status_code(api.replace("a", &PostParams::default(), &stale).await.unwrap_err()),
        (409, "Conflict".into())
    );
    let err = api.get("nope").await.unwrap_err();
    let kube::Error::Api(status) = err else { panic!() };
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, "widgets.conformance.testbed.dev \"nope\" not found");
    let missing_ns: Api<Secret> = Api::namespaced(c.client.clone(), "no-such-namespace");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("s".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(
        status_code(missing_ns.create(&PostParams::default(), &secret).await.unwrap_err()),
        (404, "NotFound".into())
    );
}

#[tokio::test]
async fn generation_moves_on_spec_changes_only_and_status_has_its_own_endpoint() {
    let c = cluster().await;
    let api: Api<Widget> = Api::namespaced(c.client.clone(), &c.namespace);
    api.create(&PostParams::default(), &widget("a", 1)).await.unwrap();
    let labelled = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        labelled.metadata.generation,
        Some(1),
        "metadata changes do not bump generation"
    );
    let with_status = api
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"seen": 7}, "spec": {"size": 99}})),
        )
        .await
        .unwrap();
    assert_eq!(with_status.status, Some(WidgetStatus { seen: 7 }));
    assert_eq!(with_status.spec.size, 1, "the status endpoint ignores spec");
    assert_eq!(with_status.metadata.generation, Some(1));
    let resized = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 5}, "status": {"seen": 0}})),
        )
        .await
        .unwrap();
    assert_eq!(resized.metadata.generation, Some(2));
    assert_eq!(
        resized.status,
        Some(WidgetStatus { seen: 7 }),
        "the main endpoint ignores status"
    );
}

#[tokio::test]
async fn merge_json_and_apply_patches() {
    let c = cluster().await;
    let api: Api<Widget> = Api::namespaced(c.client.clone(), &c.namespace);
    let applied = api
        .patch("applied", &PatchParams::apply("conformance"), &Patch::Apply(json!({"apiVersion": "conformance.testbed.dev/v1", "kind": "Widget", "metadata": {"name": "applied"}, "spec": {"size": 3}})))
        .await
        .unwrap();
    assert_eq!(applied.spec.size, 3, "apply creates a missing object");
    let json_patched = api
        .patch(
            "applied",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([{"op": "replace", "path": "/spec/size", "value": 4}])).unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(json_patched.spec.size, 4);
    let merged = api
        .patch(
            "applied",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(merged.labels().get("a").map(String::as_str), Some("b"));
    assert_eq!(merged.spec.size, 4);
    let failed = api
        .patch(
            "applied",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([{"op": "test", "path": "/spec/size", "value": 1}])).unwrap(),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(failed).0, 422, "a failed JSON patch test is 422");
}

#[tokio::test]
async fn lists_filter_by_label_and_carry_a_resource_version() {
    let c = cluster().await;
    let api: Api<Widget> = Api::namespaced(c.client.clone(), &c.namespace);
    for (name, size) in [("s1", 1), ("s2", 2), ("b1", 9)] {
        api.create(&PostParams::default(), &widget(name, size)).await.unwrap();
    }
    let names = |list: kube::core::ObjectList<Widget>| list.items.iter().map(|w| w.name_any()).collect::<Vec<_>>();
    for (selector, want) in [
        ("size=small", vec!["s1", "s2"]),
        ("size!=small", vec!["b1"]),
        ("size in (big)", vec!["b1"]),
        ("size notin (big)", vec!["s1", "s2"]),
        ("size", vec!["b1", "s1", "s2"]),
        ("!size", vec![]),
    ] {
        let list = api.list(&ListParams::default().labels(selector)).await.unwrap();
        assert!(list.metadata.resource_version.as_ref().is_some_and(|r| !r.is_empty()));
        let mut got = names(list);
        got.sort();
        assert_eq!(got, want, "{selector}");
    }
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=s2"))
        .await
        .unwrap();
    assert_eq!(names(by_name), ["s2"]);
}

#[tokio::test]
async fn watches_resume_from_a_resource_version_and_send_bookmarks() {
    let c = cluster().await;
    let api: Api<Widget> = Api::namespaced(c.client.clone(), &c.namespace);
    let a = api.create(&PostParams::default(), &widget("a", 1)).await.unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 2}})),
    )
    .await
    .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let stream = api
        .watch(&WatchParams::default().timeout(5), &a.resource_version().unwrap())
        .await
        .unwrap();
    let events: Vec<WatchEvent<Widget>> = stream.take(2).try_collect().await.unwrap();
    assert!(
        matches!(&events[0], WatchEvent::Modified(w) if w.spec.size == 2),
        "{events:?}"
    );
    assert!(
        matches!(&events[1], WatchEvent::Deleted(w) if w.name_any() == "a"),
        "{events:?}"
    );
    let current = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut bookmarks = api
        .watch(&WatchParams::default().timeout(10), &current)
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(WAIT, bookmarks.next())
        .await
        .expect("a bookmark arrives")
        .unwrap()
        .unwrap();
    assert!(matches!(first, WatchEvent::Bookmark(_)), "{first:?}");
}

#[tokio::test]
async fn a_watch_from_a_compacted_resource_version_is_gone() {
    let c = cluster().await;
    let api: Api<Widget> = Api::namespaced(c.client.clone(), &c.namespace);
    let first = api.create(&PostParams::default(), &widget("a", 1)).await.unwrap();
    if let Some(server) = &c.server {
        server.set_history_limit(2);
    }
    for size in 2..6 {
        api.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": size}})),
        )
        .await
        .unwrap();
    }
    // A real cluster compacts on its own schedule: there, resourceVersion "1" is long gone.
    let from = if c.server.is_some() {
        first.resource_version().unwrap()
    } else {
        "1".into()
    };
    let events: Vec<_> = api
        .watch(&WatchParams::default().timeout(5), &from)
        .await
        .unwrap()
        .take(1)
        .collect()
        .await;
    match &events[0] {
        Ok(WatchEvent::Error(status)) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 Expired event, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_timeout_ends_the_stream() {
    let c = cluster().await;
    let api: Api<Widget> = Api::namespaced(c.client.clone(), &c.namespace);
    let current = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let stream = api.watch(&WatchParams::default().timeout(1), &current).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>()).await;
    assert!(ended.is_ok(), "timeoutSeconds=1 ends the watch");
}

#[tokio::test]
async fn finalizers_hold_a_deleted_object_until_removed() {
    let c = cluster().await;
    let api: Api<Widget> = Api::namespaced(c.client.clone(), &c.namespace);
    let mut w = widget("held", 1);
    w.metadata.finalizers = Some(vec!["conformance.testbed.dev/hold".into()]);
    api.create(&PostParams::default(), &w).await.unwrap();
    api.delete("held", &DeleteParams::default()).await.unwrap();
    let held = api.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some(), "deletionTimestamp is set");
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait(|| async { api.get_opt("held").await.unwrap().is_none().then_some(()) }).await;
}

#[tokio::test]
async fn dependents_follow_their_owner_in_background_and_foreground_deletion() {
    let c = cluster().await;
    let widgets: Api<Widget> = Api::namespaced(c.client.clone(), &c.namespace);
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.namespace);
    for (owner_name, policy) in [("bg", DeleteParams::background()), ("fg", DeleteParams::foreground())] {
        let owner = widgets
            .create(&PostParams::default(), &widget(owner_name, 1))
            .await
            .unwrap();
        let reference = OwnerReference {
            api_version: "conformance.testbed.dev/v1".into(),
            kind: "Widget".into(),
            name: owner_name.into(),
            uid: owner.uid().unwrap(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let dependent = Secret {
            metadata: ObjectMeta {
                name: Some(format!("{owner_name}-dep")),
                owner_references: Some(vec![reference]),
                ..Default::default()
            },
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &dependent).await.unwrap();
        widgets.delete(owner_name, &policy).await.unwrap();
        let dep = format!("{owner_name}-dep");
        wait(|| async { secrets.get_opt(&dep).await.unwrap().is_none().then_some(()) }).await;
        wait(|| async { widgets.get_opt(owner_name).await.unwrap().is_none().then_some(()) }).await;
    }
}

#[tokio::test]
async fn secrets_fold_string_data_and_events_and_leases_are_stored() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.namespace);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("s".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        type_: Some("confluence-auth.dev/vault".into()),
        ..Default::default()
    };
    let created = secrets.create(&PostParams::default(), &secret).await.unwrap();
    assert_eq!(created.data.unwrap()["k"].0, b"v");
    assert!(created.string_data.is_none());
    assert_eq!(created.type_.as_deref(), Some("confluence-auth.dev/vault"));
    let events: Api<CoreEvent> = Api::namespaced(c.client.clone(), &c.namespace);
    // A real server refuses an Event whose involvedObject.namespace differs from its own.
    let event: CoreEvent = serde_json::from_value(json!({"metadata": {"name": "e1"}, "involvedObject": {"kind": "Widget", "name": "a", "namespace": c.namespace}, "reason": "Tested", "message": "m", "type": "Normal"})).unwrap();
    events.create(&PostParams::default(), &event).await.unwrap();
    assert_eq!(events.get("e1").await.unwrap().reason.as_deref(), Some("Tested"));
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), &c.namespace);
    let lease: Lease = serde_json::from_value(
        json!({"metadata": {"name": "leader"}, "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}}),
    )
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    assert_eq!(
        leases
            .get("leader")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("me")
    );
}

#[tokio::test]
async fn fault_knobs_fail_delay_and_drop() {
    let c = cluster().await;
    let Some(server) = &c.server else {
        eprintln!("E2E_KUBECONFIG: fault knobs exist only on the testbed server; checked the plain behaviour instead");
        let api: Api<Widget> = Api::namespaced(c.client.clone(), &c.namespace);
        assert!(api.list(&ListParams::default()).await.is_ok());
        return;
    };
    let api: Api<Widget> = Api::namespaced(c.client.clone(), &c.namespace);
    server.faults().fail_next(Some("create"), Some("widgets"), 2, 500);
    for _ in 0..2 {
        assert_eq!(
            status_code(api.create(&PostParams::default(), &widget("f", 1)).await.unwrap_err()).0,
            500
        );
    }
    api.create(&PostParams::default(), &widget("f", 1)).await.unwrap();
    server.faults().set_latency(Duration::from_millis(300));
    let started = std::time::Instant::now();
    api.get("f").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.faults().clear();
    let current = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let stream = api.watch(&WatchParams::default().timeout(60), &current).await.unwrap();
    server.faults().drop_watches();
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>()).await;
    assert!(ended.is_ok(), "a dropped watch ends");
    let log = server.request_log();
    assert!(
        log.iter()
            .any(|r| r.method == "POST" && r.path.ends_with("/widgets") && r.status == 500)
    );
}

#[tokio::test]
async fn it_binds_loopback_starts_fast_and_stops_on_drop() {
    let started = std::time::Instant::now();
    let server = ApiServer::start().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "started in {:?}",
        started.elapsed()
    );
    let url = server.url();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let addr = url.trim_start_matches("http://").to_string();
    assert!(tokio::net::TcpStream::connect(&addr).await.is_ok());
    drop(server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "the port is closed after drop"
    );
}

#[tokio::test]
async fn a_watch_from_resource_version_1_is_gone_by_default() {
    let c = cluster().await;
    let api: Api<Widget> = Api::namespaced(c.client.clone(), &c.namespace);
    let created = api.create(&PostParams::default(), &widget("a", 1)).await.unwrap();
    // Neither server keeps history from before its watch cache started (raw/watch-too-old.jsonl).
    let gone = |from: String| {
        let api = api.clone();
        async move {
            let events: Vec<_> = api
                .watch(&WatchParams::default().timeout(5), &from)
                .await
                .unwrap()
                .take(1)
                .collect()
                .await;
            match &events[0] {
                Ok(WatchEvent::Error(status)) => {
                    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
                    assert!(
                        status.message.starts_with("too old resource version: 1 ("),
                        "{}",
                        status.message
                    );
                }
                other => panic!("expected a 410 Expired event, got {other:?}"),
            }
        }
    };
    gone("1".into()).await;
    // History is bounded by time too (etcd compaction): shrink the window and wait past it.
    if let Some(server) = &c.server {
        server.set_history_window(Duration::from_millis(200));
        api.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let from = created.resource_version().unwrap();
        let events: Vec<_> = api
            .watch(&WatchParams::default().timeout(5), &from)
            .await
            .unwrap()
            .take(1)
            .collect()
            .await;
        assert!(
            matches!(&events[0], Ok(WatchEvent::Error(s)) if s.code == 410),
            "{events:?}"
        );
    }
}

#[tokio::test]
async fn deleting_a_namespace_terminates_it_then_removes_it_with_its_contents() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.namespace);
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}})).unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    let ns = namespaces.get(&c.namespace).await.unwrap();
    assert_eq!(ns.labels().get("kubernetes.io/metadata.name"), Some(&c.namespace));
    assert_eq!(ns.spec.unwrap().finalizers, Some(vec!["kubernetes".to_string()]));
    let deleting = namespaces.delete(&c.namespace, &DeleteParams::default()).await.unwrap();
    let answered = deleting.left().expect("the namespace is returned while it terminates");
    assert_eq!(answered.status.and_then(|s| s.phase).as_deref(), Some("Terminating"));
    assert!(answered.metadata.deletion_timestamp.is_some());
    wait(|| async { namespaces.get_opt(&c.namespace).await.unwrap().is_none().then_some(()) }).await;
    assert!(secrets.get_opt("s").await.unwrap().is_none());
}

#[tokio::test]
async fn service_account_tokens_review_as_their_account() {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let c = cluster().await;
    let accounts: Api<ServiceAccount> = Api::namespaced(c.client.clone(), &c.namespace);
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "robot"}})).unwrap();
    let account = accounts.create(&PostParams::default(), &account).await.unwrap();
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 600}})).unwrap();
    let issued = accounts
        .create_token_request("robot", &PostParams::default(), &request)
        .await
        .unwrap();
    let token = issued.status.unwrap().token.unwrap();
    assert_eq!(token.split('.').count(), 3);
    let reviews: Api<TokenReview> = Api::all(c.client.clone());
    let review = |token: String| -> TokenReview { serde_json::from_value(json!({"spec": {"token": token}})).unwrap() };
    let valid = reviews
        .create(&PostParams::default(), &review(token))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(valid.authenticated, Some(true));
    let user = valid.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{}:robot", c.namespace).as_str())
    );
    assert_eq!(user.uid, account.metadata.uid);
    let invalid = reviews
        .create(&PostParams::default(), &review("not-a-token".into()))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(invalid.authenticated, Some(true));
    assert!(invalid.error.is_some());
}

#[tokio::test]
async fn a_spec_the_schema_forbids_is_invalid() {
    use kube::api::{ApiResource, DynamicObject};
    let c = cluster().await;
    let resource = ApiResource::erase::<Widget>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), &c.namespace, &resource);
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "conformance.testbed.dev/v1", "kind": "Widget",
        "metadata": {"name": "bad"}, "spec": {"size": "big"}
    }))
    .unwrap();
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}")
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    let details = status.details.unwrap();
    assert_eq!(details.kind, "Widget");
    assert_eq!(details.name, "bad");
    assert_eq!(details.causes[0].field, "spec.size");
    assert_eq!(details.causes[0].reason, "FieldValueTypeInvalid");
    let missing: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "conformance.testbed.dev/v1", "kind": "Widget",
        "metadata": {"name": "bad"}, "spec": {}
    }))
    .unwrap();
    let err = api.create(&PostParams::default(), &missing).await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}")
    };
    assert_eq!(
        status.message,
        "Widget.conformance.testbed.dev \"bad\" is invalid: spec.size: Required value"
    );
}
