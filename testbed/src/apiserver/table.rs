//! `kubectl get` asks for `as=Table`: the server renders the rows (printer columns of a CRD,
//! name and age for built-ins), as in `raw/table.json`.

use serde_json::{Value, json};

use super::resources::Resource;

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

/// A Table of `objects`.
pub fn render(resource: &Resource, objects: &[Value], resource_version: u64) -> Value {
    if !resource.custom
        && let Some(table) = super::builtin_table::render(resource, objects, resource_version)
    {
        return table;
    }
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DESCRIPTION, "priority": 0}),
    ];
    let printer: Vec<(String, String, String)> = if resource.columns.is_empty() {
        vec![("Age".into(), "date".into(), ".metadata.creationTimestamp".into())]
    } else {
        resource
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.type_.clone(), c.json_path.clone()))
            .collect()
    };
    for (name, type_, path) in &printer {
        columns.push(json!({"name": name, "type": type_, "format": "", "description": format!("Custom resource definition column (in JSONPath format): {path}"), "priority": 0}));
    }
    let now = jiff::Timestamp::now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut cells = vec![object["metadata"]["name"].clone()];
            for (_, type_, path) in &printer {
                let value = lookup(object, path);
                cells.push(match (type_.as_str(), value) {
                    ("date", Some(Value::String(t))) => t.parse::<jiff::Timestamp>().map(|t| json!(age(now, t))).unwrap_or(Value::Null),
                    (_, Some(v)) => v.clone(),
                    (_, None) => Value::Null,
                });
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version.to_string()}, "columnDefinitions": columns, "rows": rows})
}

/// Simple JSONPath (`.a.b.c`), as printer columns use it.
fn lookup<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = object;
    for part in path.trim_start_matches('.').split('.').filter(|p| !p.is_empty()) {
        at = at.get(part)?;
    }
    (!at.is_null()).then_some(at)
}

/// kubectl's short age: `45s`, `5m`, `3h`, `2d`.
fn age(now: jiff::Timestamp, then: jiff::Timestamp) -> String {
    let secs = (now.as_second() - then.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
