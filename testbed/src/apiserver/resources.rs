//! What the server serves: built-in kinds and those registered by CustomResourceDefinitions,
//! and the discovery documents describing them.

use std::sync::Arc;

use kube_core::cel::{CompiledSchema, compile_schema};
use serde_json::{Value, json};

/// A printer column (`additionalPrinterColumns`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Column {
    /// Header.
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    /// JSONPath, e.g. `.status.phase`.
    pub json_path: String,
    /// OpenAPI format hint (`""` when unset).
    pub format: String,
    /// The column's description, when the CRD gives one.
    pub description: Option<String>,
    /// 0: always shown; more: only with `-o wide`.
    pub priority: i64,
}

/// One served resource (a group/version/plural).
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// API group (`""` for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural (the URL segment).
    pub plural: String,
    /// Singular.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names.
    pub short_names: Vec<String>,
    /// Categories.
    pub categories: Vec<String>,
    /// Printer columns (custom resources).
    pub columns: Vec<Column>,
    /// Has the `status` subresource.
    pub status_subresource: bool,
    /// Custom resource (generation on spec change, Table columns from the CRD).
    pub custom: bool,
    /// The CRD's openAPIV3Schema, for optional validation (set with `set_schema`).
    schema: Option<Value>,
    /// The schema's `x-kubernetes-validations` rules, compiled once with it (as kube-apiserver
    /// does per CRD), not on every write.
    cel: Option<CelRules>,
}

/// A schema's CEL rules, compiled.
#[derive(Clone)]
pub struct CelRules(Arc<CompiledSchema>);

impl CelRules {
    fn of(schema: &Value) -> Self {
        Self(Arc::new(compile_schema(schema)))
    }

    /// The compiled tree.
    pub fn compiled(&self) -> &CompiledSchema {
        &self.0
    }
}

impl std::fmt::Debug for CelRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CelRules")
    }
}

/// The rules are a function of `Resource::schema`, which the comparison of two resources
/// already covers.
impl PartialEq for CelRules {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Resource {
    /// The CRD's openAPIV3Schema.
    pub fn schema(&self) -> Option<&Value> {
        self.schema.as_ref()
    }

    /// Its CEL rules, compiled.
    pub fn cel(&self) -> Option<&CelRules> {
        self.cel.as_ref()
    }

    /// Sets the schema and compiles its rules.
    pub fn set_schema(&mut self, schema: Option<Value>) {
        self.cel = schema.as_ref().map(CelRules::of);
        self.schema = schema;
    }

    fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool, short: &[&str]) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.into(),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: if matches!(plural, "deployments" | "services") {
                vec!["all".to_string()]
            } else {
                Vec::new()
            },
            columns: Vec::new(),
            status_subresource: matches!(
                plural,
                "namespaces"
                    | "customresourcedefinitions"
                    | "deployments"
                    | "services"
                    | "poddisruptionbudgets"
                    | "ingresses"
            ),
            custom: false,
            schema: None,
            cel: None,
        }
    }

    /// Whether `metadata.generation` tracks spec changes (custom resources and the built-in
    /// kinds with a spec a controller acts on).
    pub fn tracks_generation(&self) -> bool {
        self.custom
            || matches!(
                self.plural.as_str(),
                "customresourcedefinitions" | "deployments" | "poddisruptionbudgets" | "networkpolicies" | "ingresses"
            )
    }

    /// Only `create` is served (reviews: nothing is stored).
    pub fn create_only(&self) -> bool {
        self.plural == "tokenreviews"
    }

    /// `apiVersion` of objects of this resource.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` (or `plural` for core), as Status details and messages name it.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Reads a CRD object into the resources it serves (one per served version).
    pub fn from_crd(crd: &Value) -> Vec<Resource> {
        let spec = &crd["spec"];
        let names = &spec["names"];
        let strings = |v: &Value| {
            v.as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        let group = spec["group"].as_str().unwrap_or_default().to_string();
        let plural = names["plural"].as_str().unwrap_or_default().to_string();
        let kind = names["kind"].as_str().unwrap_or_default().to_string();
        let singular = names["singular"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_ascii_lowercase());
        let versions = spec["versions"].as_array().cloned().unwrap_or_default();
        versions
            .iter()
            .filter(|v| v["served"].as_bool().unwrap_or(true))
            .map(|v| {
                let mut resource = Resource {
                    group: group.clone(),
                    version: v["name"].as_str().unwrap_or_default().to_string(),
                    plural: plural.clone(),
                    singular: singular.clone(),
                    kind: kind.clone(),
                    namespaced: spec["scope"].as_str() != Some("Cluster"),
                    short_names: strings(&names["shortNames"]),
                    categories: strings(&names["categories"]),
                    columns: v["additionalPrinterColumns"]
                        .as_array()
                        .map(|cols| {
                            cols.iter()
                                .map(|c| Column {
                                    name: c["name"].as_str().unwrap_or_default().to_string(),
                                    type_: c["type"].as_str().unwrap_or("string").to_string(),
                                    json_path: c["jsonPath"].as_str().unwrap_or_default().to_string(),
                                    format: c["format"].as_str().unwrap_or_default().to_string(),
                                    description: c["description"]
                                        .as_str()
                                        .filter(|d| !d.is_empty())
                                        .map(str::to_string),
                                    priority: c["priority"].as_i64().unwrap_or(0),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    status_subresource: v["subresources"]["status"].is_object(),
                    custom: true,
                    schema: None,
                    cel: None,
                };
                let schema = &v["schema"]["openAPIV3Schema"];
                resource.set_schema(schema.is_object().then(|| schema.clone()));
                resource
            })
            .collect()
    }
}

/// The kinds every server starts with.
pub fn builtins() -> Vec<Resource> {
    vec![
        Resource::builtin("", "v1", "namespaces", "Namespace", false, &["ns"]),
        Resource::builtin("", "v1", "secrets", "Secret", true, &[]),
        Resource::builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"]),
        Resource::builtin("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"]),
        Resource::builtin("", "v1", "events", "Event", true, &["ev"]),
        Resource::builtin("events.k8s.io", "v1", "events", "Event", true, &["ev"]),
        Resource::builtin("coordination.k8s.io", "v1", "leases", "Lease", true, &[]),
        Resource::builtin("", "v1", "services", "Service", true, &["svc"]),
        Resource::builtin("apps", "v1", "deployments", "Deployment", true, &["deploy"]),
        Resource::builtin("rbac.authorization.k8s.io", "v1", "roles", "Role", true, &[]),
        Resource::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
            &[],
        ),
        Resource::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
            &[],
        ),
        Resource::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
        ),
        Resource::builtin(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            &["pdb"],
        ),
        Resource::builtin(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            true,
            &["netpol"],
        ),
        Resource::builtin("networking.k8s.io", "v1", "ingresses", "Ingress", true, &["ing"]),
        Resource::builtin("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", false, &[]),
        Resource::builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
        ),
    ]
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `APIResourceList` for one group/version.
pub fn resource_list(group_version: &str, resources: &[&Resource]) -> Value {
    let mut items = Vec::new();
    for r in resources {
        let verbs: &[&str] = if r.create_only() { &["create"] } else { &VERBS };
        items.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
            "verbs": verbs, "shortNames": r.short_names, "categories": r.categories,
        }));
        if r.group.is_empty() && r.plural == "serviceaccounts" {
            items.push(
                json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true,
                "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}),
            );
        }
        if r.status_subresource {
            items.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": items})
}

/// `APIGroupList` for `/apis`.
pub fn group_list(resources: &[&Resource]) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for r in resources.iter().filter(|r| !r.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version.clone()),
            Some(_) => {}
            None => groups.push((r.group.clone(), vec![r.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                .collect();
            json!({"name": name, "versions": vs, "preferredVersion": vs[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/openapi/v3`: one entry per group/version.
pub fn openapi_root(resources: &[&Resource], hash: &str) -> Value {
    let mut paths = serde_json::Map::new();
    for r in resources {
        let gv = if r.group.is_empty() {
            "api/v1".to_string()
        } else {
            format!("apis/{}/{}", r.group, r.version)
        };
        paths.insert(
            gv.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<group-version>`: just enough for kubectl to see that PATCH takes
/// `fieldValidation` (it then validates server-side and needs no schemas).
pub fn openapi_group_version(resources: &[&Resource]) -> Value {
    let mut paths = serde_json::Map::new();
    for r in resources {
        let prefix = if r.group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{}/{}", r.group, r.version)
        };
        let path = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let params = json!([{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}, {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}}]);
        paths.insert(path, json!({
            "get": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "get", "responses": {}},
            "put": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "put", "parameters": params, "responses": {}},
            "patch": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "patch", "parameters": params, "responses": {}},
        }));
    }
    json!({"openapi": "3.0.0", "info": {"title": "Kubernetes (testbed)", "version": "v0.1.0"}, "paths": paths, "components": {"schemas": crd_schemas(resources)}})
}

/// The schemas of custom resources, named as a real server names them (the group reversed,
/// then version and kind), so `kubectl explain` finds their fields and descriptions.
fn crd_schemas(resources: &[&Resource]) -> serde_json::Map<String, Value> {
    let mut schemas = serde_json::Map::new();
    for r in resources.iter().filter(|r| r.custom) {
        let Some(Value::Object(schema)) = r.schema() else {
            continue;
        };
        let reversed: Vec<&str> = r.group.split('.').rev().collect();
        let mut schema = schema.clone();
        schema.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": r.group, "version": r.version, "kind": r.kind}]),
        );
        schemas.insert(
            format!("{}.{}.{}", reversed.join("."), r.version, r.kind),
            Value::Object(schema),
        );
    }
    schemas
}
