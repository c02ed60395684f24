//! Scale of the test API server: 10,000 custom resources created over HTTP, then full lists
//! timed (through `kube::Api`, and as raw HTTP bytes), and resident memory per stored object.
//!
//! `cargo bench -p testbed --bench list_10k` (figures go to BENCHMARKS.md).

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use testbed::apiserver::ApiServer;

const OBJECTS: usize = 10_000;
const RUNS: usize = 7;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "bench.testbed.dev", version = "v1", kind = "Item", namespaced)]
struct ItemSpec {
    owner: String,
    size: i64,
    tags: Vec<String>,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn summary(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    (times[0], times[times.len() / 2])
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = ApiServer::start().await.unwrap();
        let kubeconfig = serde_yaml_ng::from_str(&server.kubeconfig_yaml()).unwrap();
        let client = Client::try_from(kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap()).unwrap();
        Api::<CustomResourceDefinition>::all(client.clone()).create(&PostParams::default(), &Item::crd()).await.unwrap();
        let api: Api<Item> = Api::namespaced(client.clone(), "default");

        let rss_before = rss_kib();
        let objects_before = server.object_count();
        let started = Instant::now();
        futures::stream::iter(0..OBJECTS)
            .map(|i| {
                let api = api.clone();
                async move {
                    let item = Item::new(&format!("item-{i:05}"), ItemSpec { owner: format!("user_{i}"), size: i as i64, tags: vec!["a".into(), "b".into()] });
                    api.create(&PostParams::default(), &item).await.unwrap();
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        let create_time = started.elapsed();
        let stored = server.object_count() - objects_before;
        assert_eq!(stored, OBJECTS);
        let rss_after = rss_kib();

        let mut typed = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            let list = api.list(&ListParams::default()).await.unwrap();
            typed.push(t.elapsed());
            assert_eq!(list.items.len(), OBJECTS);
        }
        let http = reqwest::Client::new();
        let url = format!("{}/apis/bench.testbed.dev/v1/namespaces/default/items", server.url());
        let mut raw = Vec::new();
        let mut bytes = 0;
        for _ in 0..RUNS {
            let t = Instant::now();
            let body = http.get(&url).send().await.unwrap().bytes().await.unwrap();
            raw.push(t.elapsed());
            bytes = body.len();
        }
        let (typed_min, typed_median) = summary(typed);
        let (raw_min, raw_median) = summary(raw);
        println!("objects stored: {stored}");
        println!("create {OBJECTS} over HTTP (32 in flight): {create_time:.2?} ({:.0} objects/s)", OBJECTS as f64 / create_time.as_secs_f64());
        println!("full list through kube::Api (server + client deserialization): min {typed_min:.2?}, median {typed_median:.2?} over {RUNS} runs");
        println!("full list as raw HTTP ({:.1} MiB): min {raw_min:.2?}, median {raw_median:.2?} over {RUNS} runs", bytes as f64 / 1048576.0);
        println!(
            "resident memory: {rss_before} KiB before, {rss_after} KiB after; {:.2} KiB per stored object",
            (rss_after.saturating_sub(rss_before)) as f64 / OBJECTS as f64
        );
        assert!(typed_median < Duration::from_secs(1), "target: a full list of {OBJECTS} in under a second");
    });
}
