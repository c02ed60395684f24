//! Custom-resource Table cells as a real API server renders them (apiextensions-apiserver's
//! table convertor; `shared/k8s-reference/raw/table.json` shows the shape): a `date` column is
//! the time since the instant (`90m`), `<invalid>` for a future instant or a non-RFC 3339 string,
//! `<unknown>` for the zero time; `integer`, `number` and `boolean` cells are JSON numbers and
//! booleans (`null` for a value of another type); `string` cells are text; a path that finds
//! nothing is `null`, which kubectl prints as an empty cell.

mod common;

use common::{Kubectl, fixture};
use serde_json::{Value, json};
use testbed::apiserver::ApiServer;

/// `kubectl apply -n ref` of `text`, written to `name`.
fn apply_in_ref(k: &Kubectl, name: &str, text: &str) {
    k.ok(&["apply", "-n", "ref", "-f", &k.file(name, text)]);
}

fn cell_object(name: &str, spec: Value) -> String {
    json!({"apiVersion": "reference.test/v1", "kind": "Cell", "metadata": {"name": name}, "spec": spec}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_cells_read_as_on_a_real_server_and_typed_cells_keep_their_json_types() {
    let server = ApiServer::start().await.unwrap();
    let k = Kubectl::new(&server);
    k.ok(&["apply", "-f", &fixture("namespace.yaml")]);
    k.ok(&["apply", "-f", &fixture("cells-crd.yaml")]);

    let now = jiff::Timestamp::now();
    let ninety_minutes_ago = now - jiff::SignedDuration::from_mins(90);
    let in_27_minutes = now + jiff::SignedDuration::from_mins(27);
    apply_in_ref(
        &k,
        "past.json",
        &cell_object(
            "past",
            json!({"when": ninety_minutes_ago.to_string(), "count": 3, "enabled": true, "ratio": 0.5,
                   "conditions": [{"type": "Authorized", "status": "False"}, {"type": "Ready", "status": "True"}],
                   "detail": "wide"}),
        ),
    );
    apply_in_ref(
        &k,
        "future.json",
        &cell_object(
            "future",
            json!({"when": in_27_minutes.to_string(), "count": 4.7, "enabled": "yes", "ratio": 2,
                   "conditions": [{"type": "Authorized", "status": "True"}]}),
        ),
    );
    apply_in_ref(
        &k,
        "garbage.json",
        &cell_object("garbage", json!({"when": "tomorrow", "count": "3"})),
    );
    apply_in_ref(
        &k,
        "zero.json",
        &cell_object("zero", json!({"when": "0001-01-01T00:00:00Z", "count": [1]})),
    );

    // The Table itself: cells as JSON values.
    let table: Value = reqwest::Client::new()
        .get(format!("{}/apis/reference.test/v1/namespaces/ref/cells", server.url()))
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let columns: Vec<(&str, &str, i64)> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["type"].as_str().unwrap(),
                c["priority"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("Name", "string", 0),
            ("When", "date", 0),
            ("Count", "integer", 0),
            ("Enabled", "boolean", 0),
            ("Ratio", "number", 0),
            ("Text", "string", 0),
            ("Ready", "string", 0),
            ("Missing", "string", 0),
            ("Detail", "string", 1),
        ]
    );
    assert_eq!(table["columnDefinitions"][8]["description"], "Shown with -o wide only.");
    assert_eq!(
        table["columnDefinitions"][2]["description"],
        "Custom resource definition column (in JSONPath format): .spec.count"
    );
    let rows: Vec<&Value> = table["rows"].as_array().unwrap().iter().map(|r| &r["cells"]).collect();
    assert_eq!(
        rows,
        [
            &json!(["future", "<invalid>", 4, null, 2, "4.7", null, null, null]),
            &json!(["garbage", "<invalid>", null, null, null, "3", null, null, null]),
            &json!(["past", "90m", 3, true, 0.5, "3", "True", null, "wide"]),
            &json!(["zero", "<unknown>", null, null, null, "[1]", null, null, null]),
        ]
    );

    // What a user sees: kubectl prints null cells empty and wide columns with -o wide only.
    let listing = k.ok(&["get", "cells", "-n", "ref"]);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "WHEN", "COUNT", "ENABLED", "RATIO", "TEXT", "READY", "MISSING"]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["future", "<invalid>", "4", "2", "4.7"]
    );
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>(),
        ["past", "90m", "3", "true", "0.5", "3", "True"]
    );
    let wide = k.ok(&["get", "cells", "past", "-n", "ref", "-o", "wide"]);
    assert_eq!(
        wide.lines().nth(1).unwrap().split_whitespace().collect::<Vec<_>>(),
        ["past", "90m", "3", "true", "0.5", "3", "True", "wide"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_object_reads_as_the_captured_real_table() {
    // raw/table.json: a Sample just created, no status: ["s1", null, "0s"].
    let server = ApiServer::start().await.unwrap();
    let k = Kubectl::new(&server);
    k.ok(&["apply", "-f", &fixture("namespace.yaml")]);
    k.ok(&["apply", "-f", &fixture("sample-crd.yaml")]);
    k.ok(&["apply", "-n", "ref", "-f", &fixture("sample.yaml")]);
    let table: Value = reqwest::Client::new()
        .get(format!(
            "{}/apis/reference.test/v1/namespaces/ref/samples",
            server.url()
        ))
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cells = &table["rows"][0]["cells"];
    assert_eq!(cells[0], "s1");
    assert_eq!(cells[1], Value::Null);
    let age = cells[2].as_str().unwrap();
    assert!(
        age.strip_suffix('s')
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n < 30),
        "a few seconds old: {age}"
    );
}
