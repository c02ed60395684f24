//! Server-side Tables of built-in kinds, with the columns and cells the real API server's
//! printers give (`kubectl/get-secrets.log`, `get-events.log`, `get-namespaces.log`,
//! `get-leases.log`; the other kinds after Kubernetes' `pkg/printers/internalversion`).
//! Ages are rendered as `duration.HumanDuration` renders them (`47s`, `7m5s`, `31m`, `3h10m`).

use serde_json::{Value, json};

use super::resources::Resource;

const NAME: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// One column: header, type, priority (1 = only with `-o wide`), description.
struct Col(&'static str, &'static str, u8, &'static str);

/// A Table for a built-in kind, or `None` for kinds without a printer here (the caller falls
/// back to NAME and AGE).
pub fn render(resource: &Resource, objects: &[Value], resource_version: u64) -> Option<Value> {
    let now = jiff::Timestamp::now();
    let age = move |o: &Value| since(now, o["metadata"]["creationTimestamp"].as_str());
    let name = |o: &Value| json!(o["metadata"]["name"].as_str().unwrap_or(""));
    let created = |o: &Value| json!(o["metadata"]["creationTimestamp"].as_str().unwrap_or(""));
    type Row = Box<dyn Fn(&Value) -> Vec<Value>>;
    let (columns, row): (Vec<Col>, Row) = match (resource.group.as_str(), resource.plural.as_str()) {
        ("", "namespaces") => (
            vec![
                Col("Name", "string", 0, NAME),
                Col("Status", "string", 0, "The status of the namespace"),
                Col("Age", "string", 0, AGE),
            ],
            Box::new(move |o| vec![name(o), o["status"]["phase"].clone(), json!(age(o))]),
        ),
        ("", "secrets") => (
            vec![
                Col("Name", "string", 0, NAME),
                Col(
                    "Type",
                    "string",
                    0,
                    "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types",
                ),
                Col(
                    "Data",
                    "string",
                    0,
                    "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4",
                ),
                Col("Age", "string", 0, AGE),
            ],
            Box::new(move |o| vec![name(o), o["type"].clone(), json!(len(&o["data"])), json!(age(o))]),
        ),
        ("", "configmaps") => (
            vec![
                Col("Name", "string", 0, NAME),
                Col(
                    "Data",
                    "string",
                    0,
                    "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process.",
                ),
                Col("Age", "string", 0, AGE),
            ],
            Box::new(move |o| vec![name(o), json!(len(&o["data"]) + len(&o["binaryData"])), json!(age(o))]),
        ),
        ("", "serviceaccounts") => (
            vec![
                Col("Name", "string", 0, NAME),
                Col(
                    "Secrets",
                    "string",
                    0,
                    "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
                ),
                Col("Age", "string", 0, AGE),
            ],
            Box::new(move |o| vec![name(o), json!(len(&o["secrets"])), json!(age(o))]),
        ),
        ("", "events") => (
            vec![
                Col(
                    "Last Seen",
                    "string",
                    0,
                    "The time at which the most recent occurrence of this event was recorded.",
                ),
                Col(
                    "Type",
                    "string",
                    0,
                    "Type of this event (Normal, Warning), new types could be added in the future",
                ),
                Col(
                    "Reason",
                    "string",
                    0,
                    "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
                ),
                Col("Object", "string", 0, "The object that this event is about."),
                Col(
                    "Subobject",
                    "string",
                    1,
                    "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2].",
                ),
                Col(
                    "Source",
                    "string",
                    1,
                    "The component reporting this event. Should be a short machine understandable string.",
                ),
                Col(
                    "Message",
                    "string",
                    0,
                    "A human-readable description of the status of this operation.",
                ),
                Col(
                    "First Seen",
                    "string",
                    1,
                    "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
                ),
                Col("Count", "string", 1, "The number of times this event has occurred."),
                Col("Name", "string", 1, NAME),
            ],
            Box::new(move |o| event_cells(now, o)),
        ),
        ("coordination.k8s.io", "leases") => (
            vec![
                Col("Name", "string", 0, NAME),
                Col(
                    "Holder",
                    "string",
                    0,
                    "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name field.",
                ),
                Col("Age", "string", 0, AGE),
            ],
            Box::new(move |o| {
                vec![
                    name(o),
                    json!(o["spec"]["holderIdentity"].as_str().unwrap_or("")),
                    json!(age(o)),
                ]
            }),
        ),
        ("apps", "deployments") => (
            vec![
                Col("Name", "string", 0, NAME),
                Col("Ready", "string", 0, "Number of the pod with ready state"),
                Col(
                    "Up-to-date",
                    "string",
                    0,
                    "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
                ),
                Col(
                    "Available",
                    "string",
                    0,
                    "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
                ),
                Col("Age", "string", 0, AGE),
                Col("Containers", "string", 1, "Names of each container in the template."),
                Col(
                    "Images",
                    "string",
                    1,
                    "Images referenced by each container in the template.",
                ),
                Col(
                    "Selector",
                    "string",
                    1,
                    "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
                ),
            ],
            Box::new(move |o| {
                let status = &o["status"];
                let int = |v: &Value| v.as_i64().unwrap_or(0);
                let containers = o["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let join = |field: &str| {
                    containers
                        .iter()
                        .filter_map(|c| c[field].as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                vec![
                    name(o),
                    json!(format!(
                        "{}/{}",
                        int(&status["readyReplicas"]),
                        int(&o["spec"]["replicas"])
                    )),
                    json!(int(&status["updatedReplicas"])),
                    json!(int(&status["availableReplicas"])),
                    json!(age(o)),
                    json!(join("name")),
                    json!(join("image")),
                    json!(label_selector(&o["spec"]["selector"])),
                ]
            }),
        ),
        ("", "services") => (
            vec![
                Col("Name", "string", 0, NAME),
                Col("Type", "string", 0, "type determines how the Service is exposed."),
                Col(
                    "Cluster-IP",
                    "string",
                    0,
                    "clusterIP is the IP address of the service and is usually assigned randomly.",
                ),
                Col(
                    "External-IP",
                    "string",
                    0,
                    "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
                ),
                Col(
                    "Port(s)",
                    "string",
                    0,
                    "The list of ports that are exposed by this service.",
                ),
                Col("Age", "string", 0, AGE),
                Col(
                    "Selector",
                    "string",
                    1,
                    "Route service traffic to pods with label keys and values matching this selector.",
                ),
            ],
            Box::new(move |o| {
                let spec = &o["spec"];
                vec![
                    name(o),
                    spec["type"].clone(),
                    json!(spec["clusterIP"].as_str().filter(|s| !s.is_empty()).unwrap_or("<none>")),
                    json!(external_ip(o)),
                    json!(service_ports(spec)),
                    json!(age(o)),
                    json!(map_selector(&spec["selector"])),
                ]
            }),
        ),
        ("rbac.authorization.k8s.io", "roles" | "clusterroles")
        | ("apiextensions.k8s.io", "customresourcedefinitions") => (
            vec![Col("Name", "string", 0, NAME), Col("Created At", "date", 0, AGE)],
            Box::new(move |o| vec![name(o), created(o)]),
        ),
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => (
            vec![
                Col("Name", "string", 0, NAME),
                Col(
                    "Role",
                    "string",
                    0,
                    "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace.",
                ),
                Col("Age", "string", 0, AGE),
                Col("Users", "string", 1, "Users in the binding"),
                Col("Groups", "string", 1, "Groups in the binding"),
                Col("ServiceAccounts", "string", 1, "ServiceAccounts in the binding"),
            ],
            Box::new(move |o| {
                let subjects = o["subjects"].as_array().cloned().unwrap_or_default();
                let of = |kind: &str| {
                    subjects
                        .iter()
                        .filter(|s| s["kind"] == kind)
                        .map(|s| match (kind, s["namespace"].as_str()) {
                            ("ServiceAccount", Some(ns)) => format!("{ns}/{}", s["name"].as_str().unwrap_or("")),
                            _ => s["name"].as_str().unwrap_or("").to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                vec![
                    name(o),
                    json!(format!(
                        "{}/{}",
                        o["roleRef"]["kind"].as_str().unwrap_or(""),
                        o["roleRef"]["name"].as_str().unwrap_or("")
                    )),
                    json!(age(o)),
                    json!(of("User")),
                    json!(of("Group")),
                    json!(of("ServiceAccount")),
                ]
            }),
        ),
        ("policy", "poddisruptionbudgets") => (
            vec![
                Col("Name", "string", 0, NAME),
                Col(
                    "Min Available",
                    "string",
                    0,
                    "The minimum number of pods that must be available simultaneously.  This can be either an integer or a string specifying a percentage, e.g. \"28%\".",
                ),
                Col(
                    "Max Unavailable",
                    "string",
                    0,
                    "The maximum number of pods that may be unavailable simultaneously.  This can be either an integer or a string specifying a percentage, e.g. \"28%\".",
                ),
                Col(
                    "Allowed Disruptions",
                    "integer",
                    0,
                    "Calculated number of pods that may be disrupted at this time.",
                ),
                Col("Age", "string", 0, AGE),
            ],
            Box::new(move |o| {
                let int_or_string = |v: &Value| match v {
                    Value::Null => "N/A".to_string(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                vec![
                    name(o),
                    json!(int_or_string(&o["spec"]["minAvailable"])),
                    json!(int_or_string(&o["spec"]["maxUnavailable"])),
                    json!(o["status"]["disruptionsAllowed"].as_i64().unwrap_or(0)),
                    json!(age(o)),
                ]
            }),
        ),
        ("networking.k8s.io", "networkpolicies") => (
            vec![
                Col("Name", "string", 0, NAME),
                Col(
                    "Pod-Selector",
                    "string",
                    0,
                    "Selects the pods to which this NetworkPolicy object applies.",
                ),
                Col("Age", "string", 0, AGE),
            ],
            Box::new(move |o| vec![name(o), json!(label_selector(&o["spec"]["podSelector"])), json!(age(o))]),
        ),
        ("networking.k8s.io", "ingresses") => (
            vec![
                Col("Name", "string", 0, NAME),
                Col("Class", "string", 0, "The name of the IngressClass cluster resource."),
                Col(
                    "Hosts",
                    "string",
                    0,
                    "Hosts that incoming requests are matched against before the ingress rule",
                ),
                Col(
                    "Address",
                    "string",
                    0,
                    "Address is a list containing ingress points for the load-balancer",
                ),
                Col("Ports", "string", 0, "Ports of TLS configurations that open"),
                Col("Age", "string", 0, AGE),
            ],
            Box::new(move |o| {
                let spec = &o["spec"];
                let hosts: Vec<&str> = spec["rules"]
                    .as_array()
                    .map(|r| r.iter().filter_map(|r| r["host"].as_str()).collect())
                    .unwrap_or_default();
                let ports = if spec["tls"].as_array().is_some_and(|t| !t.is_empty()) {
                    "80, 443"
                } else {
                    "80"
                };
                vec![
                    name(o),
                    json!(spec["ingressClassName"].as_str().unwrap_or("<none>")),
                    json!(if hosts.is_empty() {
                        "*".to_string()
                    } else {
                        hosts.join(",")
                    }),
                    json!(load_balancer_addresses(&o["status"]["loadBalancer"]).join(",")),
                    json!(ports),
                    json!(age(o)),
                ]
            }),
        ),
        _ => return None,
    };
    let column_definitions: Vec<Value> = columns
        .iter()
        .map(|Col(name, type_, priority, description)| {
            let format = if *name == "Name" { "name" } else { "" };
            json!({"name": name, "type": type_, "format": format, "description": description, "priority": priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| json!({"cells": row(o), "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}}))
        .collect();
    Some(
        json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": column_definitions, "rows": rows}),
    )
}

/// `printEvent`: last seen (series, lastTimestamp, firstTimestamp or eventTime), type, reason,
/// `kind/name` in lower case, field path, source, message, first seen, count, name.
fn event_cells(now: jiff::Timestamp, event: &Value) -> Vec<Value> {
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let first = text(&event["firstTimestamp"])
        .or_else(|| text(&event["eventTime"]))
        .map(|t| since(now, Some(&t)))
        .unwrap_or_else(|| "<unknown>".into());
    let mut last = text(&event["lastTimestamp"])
        .map(|t| since(now, Some(&t)))
        .unwrap_or_else(|| first.clone());
    let mut count = event["count"].as_i64().unwrap_or(0);
    if event["series"].is_object() {
        last = since(now, event["series"]["lastObservedTime"].as_str());
        count = event["series"]["count"].as_i64().unwrap_or(0);
    } else if count == 0 {
        count = 1;
    }
    let involved = &event["involvedObject"];
    let kind = involved["kind"].as_str().unwrap_or("").to_ascii_lowercase();
    let target = match involved["name"].as_str().filter(|n| !n.is_empty()) {
        Some(name) => format!("{kind}/{name}"),
        None => kind,
    };
    let component = text(&event["source"]["component"]).or_else(|| text(&event["reportingComponent"]));
    let instance = text(&event["source"]["host"]).or_else(|| text(&event["reportingInstance"]));
    let source = match (component, instance) {
        (c, Some(i)) => format!("{}, {i}", c.unwrap_or_default()),
        (c, None) => c.unwrap_or_default(),
    };
    vec![
        json!(last),
        json!(event["type"].as_str().unwrap_or("")),
        json!(event["reason"].as_str().unwrap_or("")),
        json!(target),
        json!(involved["fieldPath"].as_str().unwrap_or("")),
        json!(source),
        json!(event["message"].as_str().unwrap_or("").trim()),
        json!(first),
        json!(count),
        json!(event["metadata"]["name"].as_str().unwrap_or("")),
    ]
}

fn len(v: &Value) -> usize {
    v.as_object()
        .map(|m| m.len())
        .or_else(|| v.as_array().map(Vec::len))
        .unwrap_or(0)
}

/// `metav1.FormatLabelSelector`: `a=b,c in (d)`, `<none>` for an empty selector.
fn label_selector(selector: &Value) -> String {
    let mut parts: Vec<String> = selector["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    for e in selector["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or("");
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        parts.push(match e["operator"].as_str().unwrap_or("") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other}"),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn map_selector(selector: &Value) -> String {
    match selector.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

fn load_balancer_addresses(lb: &Value) -> Vec<String> {
    lb["ingress"]
        .as_array()
        .map(|i| {
            i.iter()
                .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `getServiceExternalIP`.
fn external_ip(service: &Value) -> String {
    let spec = &service["spec"];
    let external: Vec<String> = spec["externalIPs"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    match spec["type"].as_str().unwrap_or("ClusterIP") {
        "ClusterIP" | "NodePort" if external.is_empty() => "<none>".into(),
        "ClusterIP" | "NodePort" => external.join(","),
        "LoadBalancer" => {
            let mut all = load_balancer_addresses(&service["status"]["loadBalancer"]);
            all.extend(external);
            if all.is_empty() {
                "<pending>".into()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => spec["externalName"].as_str().unwrap_or("").to_string(),
        _ => "<unknown>".into(),
    }
}

/// `makePortString`: `80/TCP`, `80:30080/TCP`, comma-separated.
fn service_ports(spec: &Value) -> String {
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() {
        return "<none>".into();
    }
    ports
        .iter()
        .map(|p| {
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64().filter(|n| *n > 0) {
                Some(node) => format!("{}:{node}/{protocol}", p["port"]),
                None => format!("{}/{protocol}", p["port"]),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn since(now: jiff::Timestamp, timestamp: Option<&str>) -> String {
    match timestamp.and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        Some(t) => human_duration(now.as_second() - t.as_second()),
        None => "<unknown>".into(),
    }
}

/// apimachinery's `duration.HumanDuration`, which kubectl's AGE columns use.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        for (seconds, want) in [
            (47, "47s"),
            (119, "119s"),
            (425, "7m5s"),
            (600, "10m"),
            (1860, "31m"),
            (11_400, "3h10m"),
            (61_200, "17h"),
            (3 * 86_400 + 3600, "3d1h"),
            (40 * 86_400, "40d"),
        ] {
            assert_eq!(human_duration(seconds), want, "{seconds}");
        }
    }

    #[test]
    fn event_rows_name_the_object_and_default_the_count() {
        let now = jiff::Timestamp::now();
        let event = json!({"metadata": {"name": "s1.probe"}, "involvedObject": {"kind": "Sample", "name": "s1"},
            "reason": "ProbeReason", "message": "a probe event for s1 ", "type": "Warning",
            "source": {"component": "reference-capture"}, "eventTime": now.to_string()});
        let cells = event_cells(now, &event);
        assert_eq!(
            cells,
            vec![
                json!("0s"),
                json!("Warning"),
                json!("ProbeReason"),
                json!("sample/s1"),
                json!(""),
                json!("reference-capture"),
                json!("a probe event for s1"),
                json!("0s"),
                json!(1),
                json!("s1.probe")
            ]
        );
    }
}
