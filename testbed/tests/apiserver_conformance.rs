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
    group = "conformance.confluence-auth.dev",
    version = "v1",
    kind = "CaoProbe",
    namespaced,
    status = "CaoProbeStatus",
    shortname = "caoprb"
)]
struct CaoProbeSpec {
    size: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Default)]
struct CaoProbeStatus {
    seen: i64,
}

struct Cluster {
    server: Option<ApiServer>,
    client: Client,
    namespace: String,
    /// The real cluster's kubeconfig (`E2E_KUBECONFIG`), for the clean-up on drop.
    kubeconfig: Option<String>,
}

/// The conformance CRD, shared by the tests running at once; `scripts/test` deletes it after a
/// run against a real cluster.
const CRD_NAME: &str = "caoprobes.conformance.confluence-auth.dev";

async fn cluster() -> Cluster {
    let (server, kubeconfig, path) = match std::env::var("E2E_KUBECONFIG") {
        Ok(path) if !path.is_empty() => {
            eprintln!("conformance against the cluster in E2E_KUBECONFIG={path}");
            (None, Kubeconfig::read_from(&path).unwrap(), Some(path))
        }
        _ => {
            let server = ApiServer::start().await.unwrap();
            let kubeconfig = serde_yaml_ng::from_str(&server.kubeconfig_yaml()).unwrap();
            (Some(server), kubeconfig, None)
        }
    };
    let (client, namespace) = connect(kubeconfig).await;
    Cluster {
        server,
        client,
        namespace,
        kubeconfig: path,
    }
}

/// Always the testbed's server, even under `E2E_KUBECONFIG`: for the testbed's own knobs.
async fn testbed_cluster() -> (ApiServer, Cluster) {
    let server = ApiServer::start().await.unwrap();
    let kubeconfig = serde_yaml_ng::from_str(&server.kubeconfig_yaml()).unwrap();
    let (client, namespace) = connect(kubeconfig).await;
    let c = Cluster {
        server: None,
        client,
        namespace,
        kubeconfig: None,
    };
    (server, c)
}

/// A client, the conformance CRD established, and a fresh namespace.
async fn connect(kubeconfig: Kubeconfig) -> (Client, String) {
    let client = Client::try_from(
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap(),
    )
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = CaoProbe::crd();
    assert_eq!(crd.name_any(), CRD_NAME);
    // Tests starting at once on a fresh cluster race to create it: repeated until it lands.
    wait(|| async {
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("conformance").force(),
            &Patch::Apply(&crd),
        )
        .await
        .ok()
    })
    .await;
    established(&crds, CRD_NAME).await;
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
    (client, namespace)
}

/// Waits until the CRD `name` is `Established` (a real server serves its resources only then).
async fn established(crds: &Api<CustomResourceDefinition>, name: &str) {
    wait(|| async {
        let crd = crds.get_opt(name).await.ok()??;
        let conditions = crd.status?.conditions?;
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
}

impl Drop for Cluster {
    /// Against a real cluster, deletes the test's namespace (and everything in it).
    fn drop(&mut self) {
        if let Some(path) = &self.kubeconfig {
            let _ = std::process::Command::new("kubectl")
                .args([
                    "--kubeconfig",
                    path,
                    "delete",
                    "namespace",
                    "--ignore-not-found",
                    "--wait=false",
                ])
                .arg(&self.namespace)
                .output();
        }
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

fn probe(name: &str, size: i64) -> CaoProbe {
    let mut w = CaoProbe::new(name, CaoProbeSpec { size });
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
    let api: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    let created = api.create(&PostParams::default(), &probe("a", 1)).await.unwrap();
    assert!(created.uid().is_some_and(|u| u.len() == 36));
    assert!(created.creation_timestamp().is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.namespace().as_deref(), Some(c.namespace.as_str()));
    let mut generated = probe("", 1);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let generated = api.create(&PostParams::default(), &generated).await.unwrap();
    assert!(generated.name_any().starts_with("gen-") && generated.name_any().len() > 4);
}

#[tokio::test]
async fn resource_versions_rise_across_kinds_and_a_no_op_update_keeps_it() {
    let c = cluster().await;
    let caoprobes: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.namespace);
    let w = caoprobes.create(&PostParams::default(), &probe("a", 1)).await.unwrap();
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
    let same = caoprobes.replace("a", &PostParams::default(), &w).await.unwrap();
    assert_eq!(rv(&same), rv(&w), "a no-op update does not bump resourceVersion");
}

#[tokio::test]
async fn conflicts_already_exists_and_not_found_are_status_bodies() {
    let c = cluster().await;
    let api: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    let first = api.create(&PostParams::default(), &probe("a", 1)).await.unwrap();
    assert_eq!(
        status_code(api.create(&PostParams::default(), &probe("a", 1)).await.unwrap_err()),
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
    assert_eq!(
        status.message,
        "caoprobes.conformance.confluence-auth.dev \"nope\" not found"
    );
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
    let api: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    api.create(&PostParams::default(), &probe("a", 1)).await.unwrap();
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
    assert_eq!(with_status.status, Some(CaoProbeStatus { seen: 7 }));
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
        Some(CaoProbeStatus { seen: 7 }),
        "the main endpoint ignores status"
    );
}

#[tokio::test]
async fn merge_json_and_apply_patches() {
    let c = cluster().await;
    let api: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    let applied = api
        .patch("applied", &PatchParams::apply("conformance"), &Patch::Apply(json!({"apiVersion": "conformance.confluence-auth.dev/v1", "kind": "CaoProbe", "metadata": {"name": "applied"}, "spec": {"size": 3}})))
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
    let api: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    for (name, size) in [("s1", 1), ("s2", 2), ("b1", 9)] {
        api.create(&PostParams::default(), &probe(name, size)).await.unwrap();
    }
    let names = |list: kube::core::ObjectList<CaoProbe>| list.items.iter().map(|w| w.name_any()).collect::<Vec<_>>();
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
    let api: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    let a = api.create(&PostParams::default(), &probe("a", 1)).await.unwrap();
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
    // Bookmarks may come at any moment (allowWatchBookmarks is on): only changes count here.
    let events: Vec<WatchEvent<CaoProbe>> = stream
        .try_filter(|e| std::future::ready(!matches!(e, WatchEvent::Bookmark(_))))
        .take(2)
        .try_collect()
        .await
        .unwrap();
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
    let api: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    let first = api.create(&PostParams::default(), &probe("a", 1)).await.unwrap();
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
    let api: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
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
    let api: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    let mut w = probe("held", 1);
    w.metadata.finalizers = Some(vec!["conformance.confluence-auth.dev/hold".into()]);
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
    let caoprobes: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.namespace);
    for (owner_name, policy) in [("bg", DeleteParams::background()), ("fg", DeleteParams::foreground())] {
        let owner = caoprobes
            .create(&PostParams::default(), &probe(owner_name, 1))
            .await
            .unwrap();
        let reference = OwnerReference {
            api_version: "conformance.confluence-auth.dev/v1".into(),
            kind: "CaoProbe".into(),
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
        caoprobes.delete(owner_name, &policy).await.unwrap();
        let dep = format!("{owner_name}-dep");
        wait(|| async { secrets.get_opt(&dep).await.unwrap().is_none().then_some(()) }).await;
        wait(|| async { caoprobes.get_opt(owner_name).await.unwrap().is_none().then_some(()) }).await;
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
    let event: CoreEvent = serde_json::from_value(json!({"metadata": {"name": "e1"}, "involvedObject": {"kind": "CaoProbe", "name": "a", "namespace": c.namespace}, "reason": "Tested", "message": "m", "type": "Normal"})).unwrap();
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
    // The knobs are the testbed's own: this test always runs against it.
    let (server, c) = testbed_cluster().await;
    let server = &server;
    let api: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    server.faults().fail_next(Some("create"), Some("caoprobes"), 2, 500);
    for _ in 0..2 {
        assert_eq!(
            status_code(api.create(&PostParams::default(), &probe("f", 1)).await.unwrap_err()).0,
            500
        );
    }
    api.create(&PostParams::default(), &probe("f", 1)).await.unwrap();
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
            .any(|r| r.method == "POST" && r.path.ends_with("/caoprobes") && r.status == 500)
    );
}

#[tokio::test]
async fn it_binds_loopback_and_stops_on_drop() {
    // How fast it starts is not asserted: a timed assert flakes on a busy machine.
    let server = ApiServer::start().await.unwrap();
    let url = server.url();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let addr = url.trim_start_matches("http://").to_string();
    assert!(tokio::net::TcpStream::connect(&addr).await.is_ok());
    drop(server);
    wait(|| async { tokio::net::TcpStream::connect(&addr).await.is_err().then_some(()) }).await;
}

#[tokio::test]
async fn a_watch_from_resource_version_1_is_gone_by_default() {
    let c = cluster().await;
    let api: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    let created = api.create(&PostParams::default(), &probe("a", 1)).await.unwrap();
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
        // Polled: the window passes on the server's clock, not after a fixed sleep here.
        let from = created.resource_version().unwrap();
        wait(|| async {
            let events: Vec<_> = api
                .watch(&WatchParams::default().timeout(1), &from)
                .await
                .unwrap()
                .filter(|e| std::future::ready(!matches!(e, Ok(WatchEvent::Bookmark(_)))))
                .take(1)
                .collect()
                .await;
            matches!(events.first(), Some(Ok(WatchEvent::Error(s))) if s.code == 410).then_some(())
        })
        .await;
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
    let resource = ApiResource::erase::<CaoProbe>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), &c.namespace, &resource);
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "conformance.confluence-auth.dev/v1", "kind": "CaoProbe",
        "metadata": {"name": "bad"}, "spec": {"size": "big"}
    }))
    .unwrap();
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}")
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    let details = status.details.unwrap();
    assert_eq!(details.kind, "CaoProbe");
    assert_eq!(details.name, "bad");
    assert_eq!(details.causes[0].field, "spec.size");
    assert_eq!(details.causes[0].reason, "FieldValueTypeInvalid");
    let missing: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "conformance.confluence-auth.dev/v1", "kind": "CaoProbe",
        "metadata": {"name": "bad"}, "spec": {}
    }))
    .unwrap();
    let err = api.create(&PostParams::default(), &missing).await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}")
    };
    assert_eq!(
        status.message,
        "CaoProbe.conformance.confluence-auth.dev \"bad\" is invalid: spec.size: Required value"
    );
}

#[tokio::test]
async fn config_maps_and_service_accounts_are_stored_and_patched_strategically() {
    use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
    let c = cluster().await;
    let maps: Api<ConfigMap> = Api::namespaced(c.client.clone(), &c.namespace);
    let map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"a": "1", "b": "2"}})).unwrap();
    maps.create(&PostParams::default(), &map).await.unwrap();
    // A strategic merge patch of a map merges it key by key, as a merge patch does.
    let patched = maps
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"tier": "gold"}}, "data": {"b": "3", "c": "4"}})),
        )
        .await
        .unwrap();
    let data = patched.data.unwrap();
    assert_eq!(
        data,
        BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "3".to_string()),
            ("c".to_string(), "4".to_string()),
        ])
    );
    assert_eq!(patched.metadata.labels.unwrap()["tier"], "gold");
    let listed = maps.list(&ListParams::default().labels("tier=gold")).await.unwrap();
    assert_eq!(
        listed.items.iter().map(|m| m.name_any()).collect::<Vec<_>>(),
        ["settings"]
    );

    let accounts: Api<ServiceAccount> = Api::namespaced(c.client.clone(), &c.namespace);
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "reader", "labels": {"app": "x"}}})).unwrap();
    let created = accounts.create(&PostParams::default(), &account).await.unwrap();
    assert!(created.uid().is_some());
    assert_eq!(
        status_code(accounts.create(&PostParams::default(), &account).await.unwrap_err()),
        (409, "AlreadyExists".into())
    );
    let listed = accounts.list(&ListParams::default().labels("app=x")).await.unwrap();
    assert_eq!(
        listed.items.iter().map(|a| a.name_any()).collect::<Vec<_>>(),
        ["reader"]
    );
}

#[tokio::test]
async fn an_event_is_one_object_in_both_event_apis_and_names_its_own_namespace() {
    use k8s_openapi::api::events::v1::Event as NewEvent;
    let c = cluster().await;
    let new_events: Api<NewEvent> = Api::namespaced(c.client.clone(), &c.namespace);
    let core_events: Api<CoreEvent> = Api::namespaced(c.client.clone(), &c.namespace);
    // Written through events.k8s.io (as kube-runtime's Recorder writes), read through core/v1.
    let event: NewEvent = serde_json::from_value(json!({
        "metadata": {"name": "probe.1"},
        "eventTime": "2026-11-25T00:00:00.000000Z",
        "reportingController": "confluence-auth.dev/conformance",
        "reportingInstance": "conformance-1",
        "action": "Probing",
        "reason": "Probed",
        "type": "Normal",
        "note": "a probe event",
        "regarding": {"apiVersion": "v1", "kind": "ConfigMap", "name": "settings", "namespace": c.namespace},
    }))
    .unwrap();
    new_events.create(&PostParams::default(), &event).await.unwrap();
    let core = core_events.get("probe.1").await.unwrap();
    assert_eq!(core.reason.as_deref(), Some("Probed"));
    assert_eq!(core.message.as_deref(), Some("a probe event"));
    assert_eq!(core.involved_object.name.as_deref(), Some("settings"));
    assert_eq!(core.involved_object.namespace.as_deref(), Some(c.namespace.as_str()));
    assert_eq!(
        core.reporting_component.as_deref(),
        Some("confluence-auth.dev/conformance")
    );
    let by_reason = core_events
        .list(&ListParams::default().fields("reason=Probed"))
        .await
        .unwrap();
    assert_eq!(by_reason.items.len(), 1);

    // Written through core/v1, read through events.k8s.io.
    let legacy: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "probe.2"},
        "involvedObject": {"apiVersion": "v1", "kind": "ConfigMap", "name": "settings", "namespace": c.namespace},
        "reason": "Legacy", "message": "a core event", "type": "Warning",
        "source": {"component": "conformance"},
        "firstTimestamp": "2026-11-25T00:00:00Z", "lastTimestamp": "2026-11-25T00:00:00Z", "count": 1,
    }))
    .unwrap();
    core_events.create(&PostParams::default(), &legacy).await.unwrap();
    let read = new_events.get("probe.2").await.unwrap();
    assert_eq!(read.reason.as_deref(), Some("Legacy"));
    assert_eq!(read.note.as_deref(), Some("a core event"));
    assert_eq!(read.regarding.and_then(|r| r.name).as_deref(), Some("settings"));

    // An Event about an object in another namespace, or in none, is refused
    // (kubectl/create-event-invalid.log).
    for (name, involved_namespace) in [("bad.1", json!(null)), ("bad.2", json!("elsewhere"))] {
        let mut involved = json!({"kind": "ConfigMap", "name": "settings"});
        if !involved_namespace.is_null() {
            involved["namespace"] = involved_namespace.clone();
        }
        let bad: CoreEvent = serde_json::from_value(json!({
            "metadata": {"name": name}, "involvedObject": involved,
            "reason": "X", "message": "a message", "type": "Normal",
        }))
        .unwrap();
        let err = core_events.create(&PostParams::default(), &bad).await.unwrap_err();
        let kube::Error::Api(status) = err else {
            panic!("expected an API error, got {err}")
        };
        let shown = involved_namespace.as_str().unwrap_or("");
        assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"), "{name}");
        assert_eq!(
            status.message,
            format!(
                "Event \"{name}\" is invalid: involvedObject.namespace: Invalid value: \"{shown}\": does not match event.namespace"
            )
        );
        let details = status.details.unwrap();
        assert_eq!((details.kind.as_str(), details.name.as_str()), ("Event", name));
        assert_eq!(details.causes[0].field, "involvedObject.namespace");
        assert_eq!(details.causes[0].reason, "FieldValueInvalid");
        assert!(core_events.get_opt(name).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_watch_sending_initial_events_lists_first_and_marks_the_end() {
    let c = cluster().await;
    let api: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    for name in ["one", "two"] {
        api.create(&PostParams::default(), &probe(name, 1)).await.unwrap();
    }
    let mut stream = api
        .watch(&WatchParams::default().initial_events().timeout(10), "")
        .await
        .unwrap()
        .boxed();
    let mut added = Vec::new();
    let end = loop {
        let event = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("the initial events end")
            .expect("the stream stays open")
            .unwrap();
        match event {
            WatchEvent::Added(p) => added.push(p.name_any()),
            WatchEvent::Bookmark(b) => break b,
            other => panic!("unexpected {other:?}"),
        }
    };
    added.sort();
    assert_eq!(added, ["one", "two"]);
    assert_eq!(
        end.metadata
            .annotations
            .get("k8s.io/initial-events-end")
            .map(String::as_str),
        Some("true")
    );
    // Then it goes on as a watch.
    api.create(&PostParams::default(), &probe("three", 1)).await.unwrap();
    let next = loop {
        let event = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a live event")
            .expect("the stream stays open")
            .unwrap();
        if !matches!(event, WatchEvent::Bookmark(_)) {
            break event;
        }
    };
    assert!(
        matches!(&next, WatchEvent::Added(p) if p.name_any() == "three"),
        "{next:?}"
    );
}

#[tokio::test]
async fn a_namespace_field_selector_picks_or_leaves_out_one_namespace() {
    let c = cluster().await;
    let api: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    api.create(&PostParams::default(), &probe("here", 1)).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.namespace);
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "here"}})).unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let in_namespace = |items: Vec<(Option<String>, String)>| {
        items
            .into_iter()
            .filter(|(ns, _)| ns.as_deref() == Some(c.namespace.as_str()))
            .map(|(_, name)| name)
            .collect::<Vec<_>>()
    };
    let all_probes: Api<CaoProbe> = Api::all(c.client.clone());
    let all_secrets: Api<Secret> = Api::all(c.client.clone());
    let only = ListParams::default().fields(&format!("metadata.namespace={}", c.namespace));
    let except = ListParams::default().fields(&format!("metadata.namespace!={}", c.namespace));
    let probes = |list: kube::core::ObjectList<CaoProbe>| {
        list.items.into_iter().map(|o| (o.namespace(), o.name_any())).collect()
    };
    let secrets_of = |list: kube::core::ObjectList<Secret>| {
        list.items
            .into_iter()
            .map(|o| (o.namespace(), o.name_any()))
            .collect::<Vec<_>>()
    };
    let picked = all_probes.list(&only).await.unwrap();
    assert_eq!(picked.items.len(), 1);
    assert_eq!(in_namespace(probes(picked)), ["here"]);
    assert!(in_namespace(probes(all_probes.list(&except).await.unwrap())).is_empty());
    let picked = secrets_of(all_secrets.list(&only).await.unwrap());
    assert!(
        picked.iter().all(|(ns, _)| ns.as_deref() == Some(c.namespace.as_str())),
        "{picked:?}"
    );
    assert!(in_namespace(picked).contains(&"here".to_string()));
    assert!(in_namespace(secrets_of(all_secrets.list(&except).await.unwrap())).is_empty());
}

#[tokio::test]
async fn orphan_propagation_deletes_the_owner_and_keeps_its_dependents_unowned() {
    let c = cluster().await;
    let probes: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.namespace);
    let owner = probes.create(&PostParams::default(), &probe("owner", 1)).await.unwrap();
    let dependent: Secret = serde_json::from_value(json!({"metadata": {"name": "kept", "ownerReferences": [{
        "apiVersion": "conformance.confluence-auth.dev/v1", "kind": "CaoProbe", "name": "owner",
        "uid": owner.uid().unwrap(), "controller": true, "blockOwnerDeletion": true}]}}))
    .unwrap();
    secrets.create(&PostParams::default(), &dependent).await.unwrap();
    probes.delete("owner", &DeleteParams::orphan()).await.unwrap();
    wait(|| async { probes.get_opt("owner").await.unwrap().is_none().then_some(()) }).await;
    let kept = wait(|| async {
        secrets
            .get_opt("kept")
            .await
            .unwrap()
            .filter(|s| s.metadata.owner_references.as_ref().is_none_or(Vec::is_empty))
    })
    .await;
    assert!(
        kept.metadata.deletion_timestamp.is_none(),
        "the dependent is not being deleted"
    );
}

#[tokio::test]
async fn deleting_a_crd_deletes_its_objects() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let c = cluster().await;
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    // A CRD of this test alone (the shared one stays): a unique plural and kind.
    let suffix = &c.namespace["conf-".len()..];
    let (plural, kind) = (format!("caocascade{suffix}s"), format!("CaoCascade{suffix}"));
    let name = format!("{plural}.conformance.confluence-auth.dev");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "group": "conformance.confluence-auth.dev",
            "names": {"plural": plural, "singular": format!("caocascade{suffix}"), "kind": kind, "listKind": format!("{kind}List")},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
        },
    }))
    .unwrap();
    let create_crd = || async {
        crds.create(&PostParams::default(), &crd).await.unwrap();
        established(&crds, &name).await;
    };
    create_crd().await;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("conformance.confluence-auth.dev", "v1", &kind),
        &plural,
    );
    let objects: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), &c.namespace, &resource);
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "conformance.confluence-auth.dev/v1", "kind": kind, "metadata": {"name": "doomed"}, "data": 1,
    }))
    .unwrap();
    objects.create(&PostParams::default(), &object).await.unwrap();
    crds.delete(&name, &DeleteParams::default()).await.unwrap();
    wait(|| async { crds.get_opt(&name).await.unwrap().is_none().then_some(()) }).await;
    // The same CRD again: its object did not survive.
    create_crd().await;
    let listed = wait(|| async { objects.list(&ListParams::default()).await.ok() }).await;
    assert!(listed.items.is_empty(), "{:?}", listed.items);
    crds.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn a_label_selected_watch_sees_an_object_enter_as_added_and_leave_as_deleted() {
    let c = cluster().await;
    let api: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    let mut moving = probe("moving", 1);
    moving.metadata.labels = Some([("shard".to_string(), "a".to_string())].into());
    let created = api.create(&PostParams::default(), &moving).await.unwrap();
    let params = WatchParams::default().labels("shard=b");
    let mut stream = api
        .watch(&params, &created.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    let relabel = |shard: &'static str| {
        let api = api.clone();
        async move {
            api.patch(
                "moving",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"shard": shard}}})),
            )
            .await
            .unwrap()
        }
    };
    let mut next = async || loop {
        let event = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("an event")
            .expect("the stream stays open")
            .unwrap();
        if !matches!(event, WatchEvent::Bookmark(_)) {
            break event;
        }
    };
    let entered = relabel("b").await;
    match next().await {
        WatchEvent::Added(p) => assert_eq!(p.resource_version(), entered.resource_version()),
        other => panic!("entering the selection: {other:?}"),
    }
    let left = relabel("c").await;
    match next().await {
        // The object as it was (still matching), at the resourceVersion of the change.
        WatchEvent::Deleted(p) => {
            assert_eq!(p.labels()["shard"], "b");
            assert_eq!(p.resource_version(), left.resource_version());
        }
        other => panic!("leaving the selection: {other:?}"),
    }
}

#[tokio::test]
async fn a_limited_list_comes_in_pages_that_continue_where_the_last_ended() {
    let c = cluster().await;
    let api: Api<CaoProbe> = Api::namespaced(c.client.clone(), &c.namespace);
    for i in 0..5 {
        api.create(&PostParams::default(), &probe(&format!("p{i}"), i))
            .await
            .unwrap();
    }
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(2);
    let mut pages = 0;
    let mut first_rv = None;
    loop {
        let page = api.list(&params).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 2);
        // Every page carries the first page's resourceVersion: a watch from it misses nothing.
        let rv = page.metadata.resource_version.clone();
        assert_eq!(*first_rv.get_or_insert(rv.clone()), rv);
        names.extend(page.items.iter().map(|p| p.name_any()));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => {
                assert!(page.metadata.remaining_item_count.unwrap_or(0) > 0);
                params = params.continue_token(&token);
            }
            None => break,
        }
    }
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn metadata_only_requests_answer_partial_object_metadata() {
    use kube::api::PartialObjectMeta;
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.namespace);
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "meta", "labels": {"pick": "me"}}, "stringData": {"k": "secret-value"}}),
    )
    .unwrap();
    let created = secrets.create(&PostParams::default(), &secret).await.unwrap();
    let meta: Api<PartialObjectMeta<Secret>> = Api::namespaced(c.client.clone(), &c.namespace);
    let one = meta.get("meta").await.unwrap();
    assert_eq!(one.types.as_ref().unwrap().kind, "PartialObjectMetadata");
    assert_eq!(one.metadata.labels.as_ref().unwrap()["pick"], "me");
    let list = meta.list(&ListParams::default().labels("pick=me")).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.types.kind, "PartialObjectMetadataList");
    let mut stream = meta
        .watch(
            &WatchParams::default().labels("pick=me"),
            &created.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    secrets
        .patch(
            "meta",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"a": "b"}}})),
        )
        .await
        .unwrap();
    let event = loop {
        let event = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if !matches!(event, WatchEvent::Bookmark(_)) {
            break event;
        }
    };
    match event {
        WatchEvent::Modified(p) => {
            assert_eq!(p.types.as_ref().unwrap().kind, "PartialObjectMetadata");
            assert_eq!(p.metadata.annotations.as_ref().unwrap()["a"], "b");
        }
        other => panic!("{other:?}"),
    }
}
