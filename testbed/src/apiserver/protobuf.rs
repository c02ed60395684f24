//! Protobuf request bodies (`Content-Type: application/vnd.kubernetes.protobuf`), as kubectl
//! sends them for imperative commands (`kubectl create namespace`, `create secret`, `create
//! token`, …): the `k8s\0` magic, then a `runtime.Unknown` whose `raw` is the typed object.
//! Decoded with `k8s-pb` (kube-rs's protobuf bindings) and turned into the JSON the rest of
//! the server handles, following the Go JSON tags (`omitempty` strings and lists dropped,
//! embedded structs inlined, `Time` as RFC 3339, `bytes` as base64, `IntOrString` as either).
//!
//! Answers stay JSON (kubectl accepts either). Custom resources are JSON only, as on a real
//! server. Pod templates convert the fields workloads commonly set (containers with image,
//! command, args, ports, env, envFrom, resources, volume mounts, probes, security context;
//! secret / configMap / emptyDir volumes; service account, node selector, tolerations):
//! anything else in a protobuf pod template is dropped (JSON bodies keep everything).

use std::collections::BTreeMap;

use base64::Engine;
use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::authentication::v1 as authn;
use k8s_pb::api::coordination::v1 as coordination;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::networking::v1 as networking;
use k8s_pb::api::policy::v1 as policy;
use k8s_pb::api::rbac::v1 as rbac;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{Map, Value, json};

/// The four bytes before every Kubernetes protobuf body.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// Why a protobuf body cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No `k8s\0` prefix.
    #[error("the body does not start with the Kubernetes protobuf magic k8s\\0")]
    NoMagic,
    /// The envelope or the object does not decode.
    #[error("the protobuf body does not decode: {0}")]
    Malformed(String),
    /// A kind this server does not read as protobuf.
    #[error("protobuf bodies of {0} are not supported by the testbed API server: send JSON")]
    Unsupported(String),
}

/// Decodes a protobuf request body into the object's JSON form (with `apiVersion` and `kind`).
pub fn decode(body: &[u8]) -> Result<Value, DecodeError> {
    let rest = body.strip_prefix(MAGIC.as_slice()).ok_or(DecodeError::NoMagic)?;
    let unknown = Unknown::decode(rest).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let mut object = object_json(&api_version, &kind, &raw)?;
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    // `generation` is a plain int64 with omitempty in Go: zero means unset.
    if object["metadata"]["generation"] == json!(0)
        && let Some(metadata) = object["metadata"].as_object_mut()
    {
        metadata.remove("generation");
    }
    Ok(object)
}

fn object_json(api_version: &str, kind: &str, raw: &[u8]) -> Result<Value, DecodeError> {
    fn read<T: Message + Default + Js>(raw: &[u8]) -> Result<Value, DecodeError> {
        let message = T::decode(raw).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        Ok(message.js().unwrap_or_else(|| json!({})))
    }
    match (api_version, kind) {
        ("v1", "Namespace") => read::<core::Namespace>(raw),
        ("v1", "Secret") => read::<core::Secret>(raw),
        ("v1", "ConfigMap") => read::<core::ConfigMap>(raw),
        ("v1", "ServiceAccount") => read::<core::ServiceAccount>(raw),
        ("v1", "Event") => read::<core::Event>(raw),
        ("v1", "Service") => read::<core::Service>(raw),
        ("coordination.k8s.io/v1", "Lease") => read::<coordination::Lease>(raw),
        ("authentication.k8s.io/v1", "TokenRequest") => read::<authn::TokenRequest>(raw),
        ("authentication.k8s.io/v1", "TokenReview") => read::<authn::TokenReview>(raw),
        ("apps/v1", "Deployment") => read::<apps::Deployment>(raw),
        ("rbac.authorization.k8s.io/v1", "Role") => read::<rbac::Role>(raw),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => read::<rbac::RoleBinding>(raw),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => read::<rbac::ClusterRole>(raw),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => read::<rbac::ClusterRoleBinding>(raw),
        ("policy/v1", "PodDisruptionBudget") => read::<policy::PodDisruptionBudget>(raw),
        ("networking.k8s.io/v1", "NetworkPolicy") => read::<networking::NetworkPolicy>(raw),
        ("networking.k8s.io/v1", "Ingress") => read::<networking::Ingress>(raw),
        _ => Err(DecodeError::Unsupported(format!("{api_version} {kind}"))),
    }
}

/// A protobuf value as JSON; `None` is "omitted" (an unset optional, an empty list or map).
trait Js {
    fn js(&self) -> Option<Value>;
}

impl Js for String {
    fn js(&self) -> Option<Value> {
        Some(json!(self))
    }
}
impl Js for i32 {
    fn js(&self) -> Option<Value> {
        Some(json!(self))
    }
}
impl Js for i64 {
    fn js(&self) -> Option<Value> {
        Some(json!(self))
    }
}
impl Js for bool {
    fn js(&self) -> Option<Value> {
        Some(json!(self))
    }
}
impl<T: Js> Js for Option<T> {
    fn js(&self) -> Option<Value> {
        self.as_ref().and_then(Js::js)
    }
}
impl<T: Js> Js for Vec<T> {
    fn js(&self) -> Option<Value> {
        (!self.is_empty()).then(|| Value::Array(self.iter().map(|v| v.js().unwrap_or(Value::Null)).collect()))
    }
}
/// `bytes` fields (Secret data, ConfigMap binaryData) are base64 in JSON.
impl Js for Vec<u8> {
    fn js(&self) -> Option<Value> {
        Some(json!(base64::engine::general_purpose::STANDARD.encode(self)))
    }
}
impl<T: Js> Js for BTreeMap<String, T> {
    fn js(&self) -> Option<Value> {
        (!self.is_empty()).then(|| {
            Value::Object(
                self.iter()
                    .map(|(k, v)| (k.clone(), v.js().unwrap_or(Value::Null)))
                    .collect(),
            )
        })
    }
}
impl Js for Quantity {
    fn js(&self) -> Option<Value> {
        self.string.js()
    }
}
impl Js for IntOrString {
    fn js(&self) -> Option<Value> {
        match self.r#type {
            Some(1) => self.str_val.js(),
            _ => self.int_val.js(),
        }
    }
}
impl Js for meta::Time {
    fn js(&self) -> Option<Value> {
        let seconds = self.seconds.filter(|s| *s != 0)?;
        let t = jiff::Timestamp::from_second(seconds).ok()?;
        Some(json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
    }
}
impl Js for meta::MicroTime {
    fn js(&self) -> Option<Value> {
        let seconds = self.seconds.filter(|s| *s != 0)?;
        let t = jiff::Timestamp::new(seconds, self.nanos.unwrap_or(0)).ok()?;
        Some(json!(t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()))
    }
}

/// `message!(Type { "jsonName" => field, ..inlined })`: a message as a JSON object, fields
/// omitted when unset or empty (Go's `omitempty`), embedded structs inlined.
macro_rules! message {
    ($ty:ty { $($name:literal => $field:ident),* $(,)? $(.. $inline:ident),* }) => {
        impl Js for $ty {
            fn js(&self) -> Option<Value> {
                #[allow(unused_mut)]
                let mut map = Map::new();
                $(
                    if let Some(v) = self.$field.js()
                        && v != json!("")
                    {
                        map.insert($name.to_string(), v);
                    }
                )*
                $(
                    if let Some(Value::Object(inner)) = self.$inline.js() {
                        map.extend(inner);
                    }
                )*
                Some(Value::Object(map))
            }
        }
    };
}

message!(meta::ObjectMeta { "name" => name, "generateName" => generate_name, "namespace" => namespace,
    "uid" => uid, "resourceVersion" => resource_version, "generation" => generation,
    "creationTimestamp" => creation_timestamp, "deletionTimestamp" => deletion_timestamp,
    "deletionGracePeriodSeconds" => deletion_grace_period_seconds, "labels" => labels,
    "annotations" => annotations, "ownerReferences" => owner_references, "finalizers" => finalizers });
message!(meta::OwnerReference { "apiVersion" => api_version, "kind" => kind, "name" => name, "uid" => uid,
    "controller" => controller, "blockOwnerDeletion" => block_owner_deletion });
message!(meta::LabelSelector { "matchLabels" => match_labels, "matchExpressions" => match_expressions });
message!(meta::LabelSelectorRequirement { "key" => key, "operator" => operator, "values" => values });

message!(core::Namespace { "metadata" => metadata, "spec" => spec, "status" => status });
message!(core::NamespaceSpec { "finalizers" => finalizers });
message!(core::NamespaceStatus { "phase" => phase });
message!(core::Secret { "metadata" => metadata, "immutable" => immutable, "data" => data,
    "stringData" => string_data, "type" => r#type });
message!(core::ConfigMap { "metadata" => metadata, "immutable" => immutable, "data" => data,
    "binaryData" => binary_data });
message!(core::ServiceAccount { "metadata" => metadata, "secrets" => secrets,
    "imagePullSecrets" => image_pull_secrets, "automountServiceAccountToken" => automount_service_account_token });
message!(core::ObjectReference { "kind" => kind, "namespace" => namespace, "name" => name, "uid" => uid,
    "apiVersion" => api_version, "resourceVersion" => resource_version, "fieldPath" => field_path });
message!(core::LocalObjectReference { "name" => name });
message!(core::Event { "metadata" => metadata, "involvedObject" => involved_object, "reason" => reason,
    "message" => message, "source" => source, "firstTimestamp" => first_timestamp,
    "lastTimestamp" => last_timestamp, "count" => count, "type" => r#type, "eventTime" => event_time,
    "series" => series, "action" => action, "related" => related,
    "reportingComponent" => reporting_component, "reportingInstance" => reporting_instance });
message!(core::EventSource { "component" => component, "host" => host });
message!(core::EventSeries { "count" => count, "lastObservedTime" => last_observed_time });
message!(core::Service { "metadata" => metadata, "spec" => spec });
message!(core::ServiceSpec { "ports" => ports, "selector" => selector, "clusterIP" => cluster_ip,
    "clusterIPs" => cluster_ips, "type" => r#type, "externalIPs" => external_ips,
    "sessionAffinity" => session_affinity, "loadBalancerIP" => load_balancer_ip,
    "loadBalancerSourceRanges" => load_balancer_source_ranges, "externalName" => external_name,
    "externalTrafficPolicy" => external_traffic_policy, "healthCheckNodePort" => health_check_node_port,
    "publishNotReadyAddresses" => publish_not_ready_addresses, "ipFamilies" => ip_families,
    "ipFamilyPolicy" => ip_family_policy, "allocateLoadBalancerNodePorts" => allocate_load_balancer_node_ports,
    "loadBalancerClass" => load_balancer_class, "internalTrafficPolicy" => internal_traffic_policy,
    "trafficDistribution" => traffic_distribution });
message!(core::ServicePort { "name" => name, "protocol" => protocol, "appProtocol" => app_protocol,
    "port" => port, "targetPort" => target_port, "nodePort" => node_port });
message!(core::PodTemplateSpec { "metadata" => metadata, "spec" => spec });
message!(core::PodSpec { "volumes" => volumes, "initContainers" => init_containers, "containers" => containers,
    "restartPolicy" => restart_policy, "terminationGracePeriodSeconds" => termination_grace_period_seconds,
    "dnsPolicy" => dns_policy, "nodeSelector" => node_selector, "serviceAccountName" => service_account_name,
    "automountServiceAccountToken" => automount_service_account_token, "securityContext" => security_context,
    "imagePullSecrets" => image_pull_secrets, "schedulerName" => scheduler_name, "tolerations" => tolerations,
    "priorityClassName" => priority_class_name, "enableServiceLinks" => enable_service_links });
message!(core::Container { "name" => name, "image" => image, "command" => command, "args" => args,
    "workingDir" => working_dir, "ports" => ports, "envFrom" => env_from, "env" => env, "resources" => resources,
    "volumeMounts" => volume_mounts, "livenessProbe" => liveness_probe, "readinessProbe" => readiness_probe,
    "startupProbe" => startup_probe, "terminationMessagePath" => termination_message_path,
    "terminationMessagePolicy" => termination_message_policy, "imagePullPolicy" => image_pull_policy,
    "securityContext" => security_context });
message!(core::ContainerPort { "name" => name, "containerPort" => container_port, "protocol" => protocol });
message!(core::EnvVar { "name" => name, "value" => value, "valueFrom" => value_from });
message!(core::EnvVarSource { "fieldRef" => field_ref, "configMapKeyRef" => config_map_key_ref,
    "secretKeyRef" => secret_key_ref });
message!(core::SecretKeySelector { "key" => key, "optional" => optional, ..local_object_reference });
message!(core::ConfigMapKeySelector { "key" => key, "optional" => optional, ..local_object_reference });
message!(core::ObjectFieldSelector { "apiVersion" => api_version, "fieldPath" => field_path });
message!(core::EnvFromSource { "prefix" => prefix, "configMapRef" => config_map_ref, "secretRef" => secret_ref });
message!(core::SecretEnvSource { "optional" => optional, ..local_object_reference });
message!(core::ConfigMapEnvSource { "optional" => optional, ..local_object_reference });
message!(core::ResourceRequirements { "limits" => limits, "requests" => requests });
message!(core::VolumeMount { "name" => name, "readOnly" => read_only, "mountPath" => mount_path,
    "subPath" => sub_path });
message!(core::Probe { "initialDelaySeconds" => initial_delay_seconds, "timeoutSeconds" => timeout_seconds,
    "periodSeconds" => period_seconds, "successThreshold" => success_threshold,
    "failureThreshold" => failure_threshold, ..handler });
message!(core::ProbeHandler { "exec" => exec, "httpGet" => http_get, "tcpSocket" => tcp_socket });
message!(core::ExecAction { "command" => command });
message!(core::HttpGetAction { "path" => path, "port" => port, "host" => host, "scheme" => scheme,
    "httpHeaders" => http_headers });
message!(core::HttpHeader { "name" => name, "value" => value });
message!(core::TcpSocketAction { "port" => port, "host" => host });
message!(core::SecurityContext { "capabilities" => capabilities, "privileged" => privileged,
    "runAsUser" => run_as_user, "runAsGroup" => run_as_group, "runAsNonRoot" => run_as_non_root,
    "readOnlyRootFilesystem" => read_only_root_filesystem,
    "allowPrivilegeEscalation" => allow_privilege_escalation, "seccompProfile" => seccomp_profile });
message!(core::Capabilities { "add" => add, "drop" => drop });
message!(core::PodSecurityContext { "runAsUser" => run_as_user, "runAsGroup" => run_as_group,
    "runAsNonRoot" => run_as_non_root, "supplementalGroups" => supplemental_groups, "fsGroup" => fs_group,
    "seccompProfile" => seccomp_profile });
message!(core::SeccompProfile { "type" => r#type, "localhostProfile" => localhost_profile });
message!(core::Volume { "name" => name, ..volume_source });
message!(core::VolumeSource { "emptyDir" => empty_dir, "secret" => secret, "configMap" => config_map });
message!(core::SecretVolumeSource { "secretName" => secret_name, "items" => items,
    "defaultMode" => default_mode, "optional" => optional });
message!(core::ConfigMapVolumeSource { "items" => items, "defaultMode" => default_mode,
    "optional" => optional, ..local_object_reference });
message!(core::KeyToPath { "key" => key, "path" => path, "mode" => mode });
message!(core::EmptyDirVolumeSource { "medium" => medium, "sizeLimit" => size_limit });
message!(core::Toleration { "key" => key, "operator" => operator, "value" => value, "effect" => effect,
    "tolerationSeconds" => toleration_seconds });

message!(coordination::Lease { "metadata" => metadata, "spec" => spec });
message!(coordination::LeaseSpec { "holderIdentity" => holder_identity,
    "leaseDurationSeconds" => lease_duration_seconds, "acquireTime" => acquire_time,
    "renewTime" => renew_time, "leaseTransitions" => lease_transitions, "strategy" => strategy,
    "preferredHolder" => preferred_holder });

message!(authn::TokenRequest { "metadata" => metadata, "spec" => spec });
message!(authn::TokenRequestSpec { "audiences" => audiences, "expirationSeconds" => expiration_seconds,
    "boundObjectRef" => bound_object_ref });
message!(authn::BoundObjectReference { "kind" => kind, "apiVersion" => api_version, "name" => name,
    "uid" => u_id });
message!(authn::TokenReview { "metadata" => metadata, "spec" => spec });
message!(authn::TokenReviewSpec { "token" => token, "audiences" => audiences });

message!(apps::Deployment { "metadata" => metadata, "spec" => spec });
message!(apps::DeploymentSpec { "replicas" => replicas, "selector" => selector, "template" => template,
    "strategy" => strategy, "minReadySeconds" => min_ready_seconds,
    "revisionHistoryLimit" => revision_history_limit, "paused" => paused,
    "progressDeadlineSeconds" => progress_deadline_seconds });
message!(apps::DeploymentStrategy { "type" => r#type, "rollingUpdate" => rolling_update });
message!(apps::RollingUpdateDeployment { "maxUnavailable" => max_unavailable, "maxSurge" => max_surge });

message!(rbac::Role { "metadata" => metadata, "rules" => rules });
message!(rbac::ClusterRole { "metadata" => metadata, "rules" => rules, "aggregationRule" => aggregation_rule });
message!(rbac::AggregationRule { "clusterRoleSelectors" => cluster_role_selectors });
message!(rbac::RoleBinding { "metadata" => metadata, "subjects" => subjects, "roleRef" => role_ref });
message!(rbac::ClusterRoleBinding { "metadata" => metadata, "subjects" => subjects, "roleRef" => role_ref });
message!(rbac::PolicyRule { "verbs" => verbs, "apiGroups" => api_groups, "resources" => resources,
    "resourceNames" => resource_names, "nonResourceURLs" => non_resource_ur_ls });
message!(rbac::Subject { "kind" => kind, "apiGroup" => api_group, "name" => name, "namespace" => namespace });
message!(rbac::RoleRef { "apiGroup" => api_group, "kind" => kind, "name" => name });

message!(policy::PodDisruptionBudget { "metadata" => metadata, "spec" => spec });
message!(policy::PodDisruptionBudgetSpec { "minAvailable" => min_available, "selector" => selector,
    "maxUnavailable" => max_unavailable, "unhealthyPodEvictionPolicy" => unhealthy_pod_eviction_policy });

message!(networking::NetworkPolicy { "metadata" => metadata, "spec" => spec });
message!(networking::NetworkPolicySpec { "podSelector" => pod_selector, "ingress" => ingress,
    "egress" => egress, "policyTypes" => policy_types });
message!(networking::NetworkPolicyIngressRule { "ports" => ports, "from" => from });
message!(networking::NetworkPolicyEgressRule { "ports" => ports, "to" => to });
message!(networking::NetworkPolicyPort { "protocol" => protocol, "port" => port, "endPort" => end_port });
message!(networking::NetworkPolicyPeer { "podSelector" => pod_selector,
    "namespaceSelector" => namespace_selector, "ipBlock" => ip_block });
message!(networking::IpBlock { "cidr" => cidr, "except" => except });
message!(networking::Ingress { "metadata" => metadata, "spec" => spec });
message!(networking::IngressSpec { "ingressClassName" => ingress_class_name,
    "defaultBackend" => default_backend, "tls" => tls, "rules" => rules });
message!(networking::IngressTls { "hosts" => hosts, "secretName" => secret_name });
message!(networking::IngressRule { "host" => host, ..ingress_rule_value });
message!(networking::IngressRuleValue { "http" => http });
message!(networking::HttpIngressRuleValue { "paths" => paths });
message!(networking::HttpIngressPath { "path" => path, "pathType" => path_type, "backend" => backend });
message!(networking::IngressBackend { "service" => service });
message!(networking::IngressServiceBackend { "name" => name, "port" => port });
message!(networking::ServiceBackendPort { "name" => name, "number" => number });

#[cfg(test)]
mod tests {
    use super::*;

    /// `kubectl create namespace ref2`, byte for byte (`kubectl/create-namespace.log`).
    const CREATE_NAMESPACE: &str = "6b 38 73 00 0a 0f 0a 02 76 31 12 09 4e 61 6d 65 73 70 61 63 65 12 1c 0a 14 0a 04 72 65 66 32 12 00 1a 00 22 00 2a 00 32 00 38 00 42 00 12 00 1a 02 0a 00 1a 00 22 00";
    /// `kubectl create secret generic app --from-literal=client-secret=not-a-real-secret -n ref2`.
    const CREATE_SECRET: &str = "6b 38 73 00 0a 0c 0a 02 76 31 12 06 53 65 63 72 65 74 12 3f 0a 17 0a 03 61 70 70 12 00 1a 04 72 65 66 32 22 00 2a 00 32 00 38 00 42 00 12 22 0a 0d 63 6c 69 65 6e 74 2d 73 65 63 72 65 74 12 11 6e 6f 74 2d 61 2d 72 65 61 6c 2d 73 65 63 72 65 74 1a 00 1a 00 22 00";
    /// `kubectl create token robot -n ref3` (`kubectl/create-token.log`).
    const CREATE_TOKEN: &str = "6b 38 73 00 0a 28 0a 18 61 75 74 68 65 6e 74 69 63 61 74 69 6f 6e 2e 6b 38 73 2e 69 6f 2f 76 31 12 0c 54 6f 6b 65 6e 52 65 71 75 65 73 74 12 1d 0a 10 0a 00 12 00 1a 00 22 00 2a 00 32 00 38 00 42 00 12 03 20 d8 04 1a 04 0a 00 12 00 1a 00 22 00";

    fn bytes(hex: &str) -> Vec<u8> {
        hex.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    #[test]
    fn kubectl_create_bodies_decode_to_the_json_a_real_server_stores() {
        assert_eq!(
            decode(&bytes(CREATE_NAMESPACE)).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ref2"}, "spec": {}, "status": {}})
        );
        assert_eq!(
            decode(&bytes(CREATE_SECRET)).unwrap(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app", "namespace": "ref2"},
                "data": {"client-secret": "bm90LWEtcmVhbC1zZWNyZXQ="}})
        );
        assert_eq!(
            decode(&bytes(CREATE_TOKEN)).unwrap(),
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": {},
                "spec": {"expirationSeconds": 600}})
        );
    }

    #[test]
    fn round_trips_typed_objects_with_inlined_and_special_fields() {
        let deployment = apps::Deployment {
            metadata: Some(meta::ObjectMeta {
                name: Some("web".into()),
                labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(0),
                selector: Some(meta::LabelSelector {
                    match_labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
                strategy: Some(apps::DeploymentStrategy {
                    r#type: Some("RollingUpdate".into()),
                    rolling_update: Some(apps::RollingUpdateDeployment {
                        max_unavailable: Some(IntOrString {
                            r#type: Some(1),
                            int_val: None,
                            str_val: Some("25%".into()),
                        }),
                        max_surge: Some(IntOrString {
                            r#type: Some(0),
                            int_val: Some(1),
                            str_val: None,
                        }),
                    }),
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: None,
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container {
                            name: Some("web".into()),
                            image: Some("nginx".into()),
                            env: vec![core::EnvVar {
                                name: Some("SECRET".into()),
                                value: None,
                                value_from: Some(core::EnvVarSource {
                                    secret_key_ref: Some(core::SecretKeySelector {
                                        local_object_reference: Some(core::LocalObjectReference {
                                            name: Some("s".into()),
                                        }),
                                        key: Some("k".into()),
                                        optional: None,
                                    }),
                                    ..Default::default()
                                }),
                            }],
                            readiness_probe: Some(core::Probe {
                                handler: Some(core::ProbeHandler {
                                    http_get: Some(core::HttpGetAction {
                                        path: Some("/readyz".into()),
                                        port: Some(IntOrString {
                                            r#type: Some(1),
                                            int_val: None,
                                            str_val: Some("http".into()),
                                        }),
                                        ..Default::default()
                                    }),
                                    ..Default::default()
                                }),
                                period_seconds: Some(5),
                                ..Default::default()
                            }),
                            resources: Some(core::ResourceRequirements {
                                limits: [(
                                    "memory".to_string(),
                                    Quantity {
                                        string: Some("64Mi".into()),
                                    },
                                )]
                                .into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let mut body = MAGIC.to_vec();
        body.extend(
            Unknown {
                type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                    api_version: Some("apps/v1".into()),
                    kind: Some("Deployment".into()),
                }),
                raw: Some(deployment.encode_to_vec()),
                content_encoding: Some(String::new()),
                content_type: Some(String::new()),
            }
            .encode_to_vec(),
        );
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}},
                    "template": {"spec": {"containers": [{"name": "web", "image": "nginx",
                        "env": [{"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                        "resources": {"limits": {"memory": "64Mi"}},
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5}}]}}}})
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(decode(b"{}"), Err(DecodeError::NoMagic));
        assert!(matches!(decode(b"k8s\0\xff\xff"), Err(DecodeError::Malformed(_))));
        let mut body = MAGIC.to_vec();
        body.extend(
            Unknown {
                type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                }),
                raw: Some(Vec::new()),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        assert_eq!(decode(&body), Err(DecodeError::Unsupported("v1 Pod".into())));
    }
}
