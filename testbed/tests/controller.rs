//! A `kube::runtime::Controller` runs against the test API server, reconciles every change,
//! and keeps doing so across a forced 410 Gone (history compacted under its watch) and a dropped
//! watch connection.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use testbed::apiserver::ApiServer;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "controller.testbed.dev",
    version = "v1",
    kind = "Gadget",
    namespaced,
    status = "GadgetStatus"
)]
struct GadgetSpec {
    size: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default)]
struct GadgetStatus {
    seen: i64,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Failed(#[from] kube::Error);

async fn reconcile(gadget: Arc<Gadget>, client: Arc<Client>) -> Result<Action, Failed> {
    let api: Api<Gadget> = Api::namespaced((*client).clone(), &gadget.namespace().unwrap());
    let status = json!({"status": {"seen": gadget.spec.size}});
    api.patch_status(&gadget.name_any(), &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(Action::await_change())
}

fn error_policy(_: Arc<Gadget>, _: &Failed, _: Arc<Client>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

async fn seen(api: &Api<Gadget>, name: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let current = api.get(name).await.unwrap().status.map(|s| s.seen);
        if current == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never reconciled to {want} (status {current:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lists_of_gadgets(server: &ApiServer) -> usize {
    server
        .request_log()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/gadgets") && !r.query.contains("watch="))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_reconciles_every_change_across_410_and_dropped_watches() {
    let server = ApiServer::start().await.unwrap();
    let kubeconfig = serde_yaml_ng::from_str(&server.kubeconfig_yaml()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Gadget::crd()).await.unwrap();
    let api: Api<Gadget> = Api::namespaced(client.clone(), "default");

    let controller = tokio::spawn(
        Controller::new(api.clone(), watcher::Config::default())
            .run(reconcile, error_policy, Arc::new(client.clone()))
            .for_each(|_| async {}),
    );
    api.create(&PostParams::default(), &Gadget::new("g1", GadgetSpec { size: 1 }))
        .await
        .unwrap();
    seen(&api, "g1", 1).await;
    api.patch(
        "g1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 2}})),
    )
    .await
    .unwrap();
    seen(&api, "g1", 2).await;

    // Writes to another kind move the cluster's resourceVersion on while the gadget watch sees
    // nothing; with the history cut to one event, the watch's position is compacted away. Cut
    // the watch: its re-watch is too old (410 Expired), so the watcher must list again.
    let lists_before = lists_of_gadgets(&server);
    server.set_history_limit(1);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    for i in 0..5 {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("churn-{i}")),
                ..Default::default()
            },
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &secret).await.unwrap();
    }
    server.faults().drop_watches();
    api.patch(
        "g1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 3}})),
    )
    .await
    .unwrap();
    seen(&api, "g1", 3).await;
    assert!(
        lists_of_gadgets(&server) > lists_before,
        "the watcher relisted after 410 Gone"
    );

    // A plain dropped connection (history intact again).
    server.set_history_limit(10_000);
    server.faults().drop_watches();
    api.patch(
        "g1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 4}})),
    )
    .await
    .unwrap();
    api.create(&PostParams::default(), &Gadget::new("g2", GadgetSpec { size: 5 }))
        .await
        .unwrap();
    seen(&api, "g1", 4).await;
    seen(&api, "g2", 5).await;
    controller.abort();
}
