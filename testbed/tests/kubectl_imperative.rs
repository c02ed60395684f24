//! What a person types: kubectl 1.32's imperative commands (protobuf bodies), built-in Tables,
//! `describe` with Events, ServiceAccount tokens, namespace deletion and a chart's kinds, each
//! asserting the output a real server gives (`shared/k8s-reference/kubectl/*.log`).

mod common;

use std::time::{Duration, Instant};

use common::{Kubectl, fixture};
use serde_json::{Value, json};
use testbed::apiserver::ApiServer;

/// Rows of a printed table, cells split on runs of two or more spaces (cells may hold one).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

fn is_age(cell: &str) -> bool {
    cell.ends_with('s') && cell[..cell.len() - 1].chars().all(|c| c.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imperative_creates_and_built_in_tables_print_as_on_a_cluster() {
    let server = ApiServer::start().await.unwrap();
    let k = Kubectl::new(&server);
    // kubectl/create-namespace.log, create-secret-generic.log, create-configmap.log,
    // create-serviceaccount.log: each prints "<kind>/<name> created".
    assert_eq!(k.ok(&["create", "namespace", "ref2"]).trim(), "namespace/ref2 created");
    assert_eq!(
        k.ok(&[
            "create",
            "secret",
            "generic",
            "app",
            "-n",
            "ref2",
            "--from-literal=client-secret=not-a-real-secret"
        ])
        .trim(),
        "secret/app created"
    );
    assert_eq!(
        k.ok(&["create", "configmap", "cm", "-n", "ref2", "--from-literal=a=b"])
            .trim(),
        "configmap/cm created"
    );
    assert_eq!(
        k.ok(&["create", "serviceaccount", "robot", "-n", "ref2"]).trim(),
        "serviceaccount/robot created"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "secret",
            "app",
            "-n",
            "ref2",
            "-o",
            "jsonpath={.data.client-secret}"
        ]),
        "bm90LWEtcmVhbC1zZWNyZXQ="
    );
    assert_eq!(
        k.ok(&["get", "namespace", "ref2", "-o", "jsonpath={.metadata.labels}"]),
        r#"{"kubernetes.io/metadata.name":"ref2"}"#
    );

    // kubectl/get-secrets.log: NAME TYPE DATA AGE.
    let secrets = rows(&k.ok(&["get", "secrets", "-n", "ref2"]));
    assert_eq!(secrets[0], ["NAME", "TYPE", "DATA", "AGE"]);
    assert_eq!(secrets[1][..3], ["app", "Opaque", "1"]);
    assert!(is_age(&secrets[1][3]), "{secrets:?}");
    let configmaps = rows(&k.ok(&["get", "configmaps", "-n", "ref2"]));
    assert_eq!(configmaps[0], ["NAME", "DATA", "AGE"]);
    assert_eq!(configmaps[1][..2], ["cm", "1"]);
    let accounts = rows(&k.ok(&["get", "serviceaccounts", "-n", "ref2"]));
    assert_eq!(accounts[0], ["NAME", "SECRETS", "AGE"]);
    assert_eq!(accounts[1][..2], ["robot", "0"]);
    // kubectl/get-namespaces.log: NAME STATUS AGE.
    let namespaces = rows(&k.ok(&["get", "namespaces"]));
    assert_eq!(namespaces[0], ["NAME", "STATUS", "AGE"]);
    assert!(
        namespaces
            .iter()
            .any(|r| r[..2] == ["ref2".to_string(), "Active".to_string()])
    );

    // kubectl/get-leases.log: NAME HOLDER AGE.
    k.apply(
        "lease.yaml",
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: leader\n  namespace: ref2\nspec:\n  holderIdentity: pod-a_1234\n  leaseDurationSeconds: 15\n",
    );
    let leases = rows(&k.ok(&["get", "leases", "-n", "ref2"]));
    assert_eq!(leases[0], ["NAME", "HOLDER", "AGE"]);
    assert_eq!(leases[1][..2], ["leader", "pod-a_1234"]);

    // An identical second create is refused as on a cluster (kubectl/create-already-exists.log).
    let again = k.run(&["create", "namespace", "ref2"]);
    assert!(!again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stderr).trim(),
        r#"Error from server (AlreadyExists): namespaces "ref2" already exists"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_show_in_get_and_in_describe_of_a_custom_resource() {
    let server = ApiServer::start().await.unwrap();
    let k = Kubectl::new(&server);
    k.ok(&["create", "namespace", "ref2"]);
    k.ok(&["apply", "-f", &fixture("sample-crd.yaml")]);
    k.ok(&["apply", "-n", "ref2", "-f", &fixture("sample.yaml")]);
    let uid = k.ok(&["get", "smp", "s1", "-n", "ref2", "-o", "jsonpath={.metadata.uid}"]);
    // The Event of kubectl/create-event.log, 17 hours old as there.
    let seen = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(17))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let event = json!({"apiVersion": "v1", "kind": "Event", "count": 1, "firstTimestamp": seen, "lastTimestamp": seen,
        "involvedObject": {"apiVersion": "reference.test/v1", "kind": "Sample", "name": "s1", "namespace": "ref2", "uid": uid},
        "message": "a probe event for s1", "metadata": {"name": "s1.probe", "namespace": "ref2"},
        "reason": "ProbeReason", "source": {"component": "reference-capture"}, "type": "Warning"});
    assert_eq!(
        k.apply("event.json", &event.to_string()).trim(),
        "event/s1.probe created"
    );
    // An Event about an object elsewhere (another name) must not show in s1's describe.
    let mut other = event.clone();
    other["metadata"]["name"] = json!("other.probe");
    other["involvedObject"]["name"] = json!("s2");
    other["reason"] = json!("OtherReason");
    k.apply("other.json", &other.to_string());

    // kubectl/get-events.log.
    let events = rows(&k.ok(&[
        "get",
        "events",
        "-n",
        "ref2",
        "--field-selector",
        "involvedObject.name=s1",
    ]));
    assert_eq!(events[0], ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]);
    assert_eq!(
        events[1],
        ["17h", "Warning", "ProbeReason", "sample/s1", "a probe event for s1"]
    );
    assert_eq!(events.len(), 2);

    // kubectl/describe-cr-with-events.log: the Events section, found through the field selector.
    let described = k.ok(&["describe", "smp", "s1", "-n", "ref2"]);
    let tail: Vec<&str> = described.lines().skip_while(|l| !l.starts_with("Events:")).collect();
    assert_eq!(
        tail,
        [
            "Events:",
            "  Type     Reason       Age   From               Message",
            "  ----     ------       ----  ----               -------",
            "  Warning  ProbeReason  17h   reference-capture  a probe event for s1",
        ],
        "{described}"
    );
    assert!(
        described.starts_with("Name:         s1\nNamespace:    ref2\n"),
        "{described}"
    );

    // kube-runtime's Recorder writes events.k8s.io/v1 Events: one stored kind with the core
    // API, so they show in `kubectl get events` and `describe` too (as on a real server).
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string();
    let recorded = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "s1.recorded", "namespace": "ref2"}, "eventTime": now,
        "regarding": {"apiVersion": "reference.test/v1", "kind": "Sample", "name": "s1", "namespace": "ref2", "uid": uid},
        "reason": "Reconciled", "note": "all good", "type": "Normal", "action": "Reconcile",
        "reportingController": "cao-controller", "reportingInstance": "cao-0"});
    assert_eq!(
        k.apply("recorded.json", &recorded.to_string()).trim(),
        "event.events.k8s.io/s1.recorded created"
    );
    let events = rows(&k.ok(&["get", "events", "-n", "ref2", "--field-selector", "reason=Reconciled"]));
    assert_eq!(events[1][1..], ["Normal", "Reconciled", "sample/s1", "all good"]);
    assert!(is_age(&events[1][0]), "{events:?}");
    let described = k.ok(&["describe", "smp", "s1", "-n", "ref2"]);
    let line: Vec<&str> = described
        .lines()
        .find(|l| l.contains("Reconciled"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(line.len(), 6, "{described}");
    assert_eq!(line[..2], ["Normal", "Reconciled"]);
    assert!(is_age(line[2]), "{described}");
    assert_eq!(line[3..], ["cao-controller", "all", "good"]);
    assert_eq!(
        k.ok(&[
            "get",
            "events.v1.events.k8s.io",
            "s1.probe",
            "-n",
            "ref2",
            "-o",
            "jsonpath={.note}"
        ]),
        "a probe event for s1"
    );

    // kubectl/create-event-invalid.log.
    let bad = json!({"apiVersion": "v1", "kind": "Event", "involvedObject": {"kind": "Sample", "name": "s1"},
        "message": "a message", "metadata": {"name": "bad.1", "namespace": "ref2"}, "reason": "X", "type": "Normal"});
    let file = k.dir.path().join("bad.json");
    std::fs::write(&file, bad.to_string()).unwrap();
    let refused = k.run(&["create", "-f", &file.to_string_lossy()]);
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr).trim(),
        r#"The Event "bad.1" is invalid: involvedObject.namespace: Invalid value: "": does not match event.namespace"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_token_issues_a_token_that_token_review_accepts() {
    let server = ApiServer::start().await.unwrap();
    let k = Kubectl::new(&server);
    k.ok(&["create", "namespace", "ref3"]);
    k.ok(&["create", "serviceaccount", "robot", "-n", "ref3"]);
    let uid = k.ok(&["get", "sa", "robot", "-n", "ref3", "-o", "jsonpath={.metadata.uid}"]);
    // kubectl/create-token.log: the token alone on stdout, a JWT.
    let token = k.ok(&["create", "token", "robot", "-n", "ref3"]).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    assert!(token.starts_with("eyJ"), "{token}");

    let http = reqwest::Client::new();
    let review = |token: String| {
        let http = http.clone();
        let url = format!("{}/apis/authentication.k8s.io/v1/tokenreviews", server.url());
        async move {
            let answer = http
                .post(url)
                .json(
                    &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 201);
            answer.json::<Value>().await.unwrap()
        }
    };
    // raw/tokenreview-valid.json.
    let valid = review(token.clone()).await;
    assert_eq!(valid["status"]["authenticated"], true);
    assert_eq!(valid["status"]["user"]["username"], "system:serviceaccount:ref3:robot");
    assert_eq!(valid["status"]["user"]["uid"], uid.as_str());
    assert_eq!(
        valid["status"]["user"]["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:ref3",
            "system:authenticated"
        ])
    );
    assert_eq!(
        valid["status"]["audiences"],
        json!(["https://kubernetes.default.svc.cluster.local"])
    );
    // raw/tokenreview-invalid.json.
    let invalid = review("not-a-token".into()).await;
    assert_eq!(invalid["status"], json!({"user": {}, "error": "invalid bearer token"}));
    // Deleting the ServiceAccount revokes its tokens.
    k.ok(&["delete", "sa", "robot", "-n", "ref3"]);
    assert_eq!(review(token).await["status"]["error"], "invalid bearer token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_terminates_it_then_it_is_gone() {
    let server = ApiServer::start().await.unwrap();
    let k = Kubectl::new(&server);
    k.ok(&["create", "namespace", "ref2"]);
    k.ok(&["create", "secret", "generic", "app", "-n", "ref2", "--from-literal=k=v"]);
    k.ok(&["apply", "-f", &fixture("sample-crd.yaml")]);
    k.ok(&["apply", "-n", "ref2", "-f", &fixture("sample.yaml")]);
    // A finalizer on the custom resource holds the namespace in Terminating.
    k.ok(&[
        "patch",
        "smp",
        "s1",
        "-n",
        "ref2",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["testbed.dev/hold"]}}"#,
    ]);
    let deleting = k.run(&["delete", "namespace", "ref2", "--wait=false"]);
    assert!(deleting.status.success());
    assert_eq!(
        String::from_utf8_lossy(&deleting.stdout).trim(),
        r#"namespace "ref2" deleted"#
    );
    assert_eq!(
        k.ok(&["get", "namespace", "ref2", "-o", "jsonpath={.status.phase}"]),
        "Terminating"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while k.run(&["get", "secret", "app", "-n", "ref2"]).status.success() {
        assert!(Instant::now() < deadline, "the namespace's Secret was never deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing new goes into a Terminating namespace (403, as on a cluster).
    let refused = k.run(&["create", "configmap", "late", "-n", "ref2"]);
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr).trim(),
        r#"error: failed to create configmap: configmaps "late" is forbidden: unable to create new content in namespace ref2 because it is being terminated"#
    );
    assert_eq!(
        k.ok(&["get", "namespace", "ref2", "-o", "jsonpath={.status.phase}"]),
        "Terminating"
    );
    k.ok(&[
        "patch",
        "smp",
        "s1",
        "-n",
        "ref2",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    // kubectl/delete-namespace.log: `kubectl delete namespace` waits until the namespace is gone.
    k.ok(&["create", "namespace", "ref4"]);
    k.ok(&["create", "configmap", "cm", "-n", "ref4", "--from-literal=a=b"]);
    assert_eq!(
        k.ok(&["delete", "namespace", "ref4", "--timeout=20s"]).trim(),
        r#"namespace "ref4" deleted"#
    );
    let gone = k.run(&["get", "namespace", "ref4"]);
    assert_eq!(
        String::from_utf8_lossy(&gone.stderr).trim(),
        r#"Error from server (NotFound): namespaces "ref4" not found"#
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while k.run(&["get", "namespace", "ref2"]).status.success() {
        assert!(Instant::now() < deadline, "ref2 stayed after its finalizer went");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a Helm chart renders for an operator: every kind applies, lists with its columns.
const CHART: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: cao-system
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: cao
  namespace: cao-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: cao
rules:
- apiGroups: [""]
  resources: ["secrets", "events"]
  verbs: ["get", "list", "watch", "create", "patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: cao
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cao
subjects:
- kind: ServiceAccount
  name: cao
  namespace: cao-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: cao-leader
  namespace: cao-system
rules:
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: cao-leader
  namespace: cao-system
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: cao-leader
subjects:
- kind: ServiceAccount
  name: cao
  namespace: cao-system
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: cao
  namespace: cao-system
spec:
  replicas: 2
  selector:
    matchLabels:
      app: cao
  template:
    metadata:
      labels:
        app: cao
    spec:
      serviceAccountName: cao
      containers:
      - name: operator
        image: ghcr.io/example/cao:0.1.0
        ports:
        - name: http
          containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: cao
  namespace: cao-system
spec:
  selector:
    app: cao
  ports:
  - name: http
    port: 80
    targetPort: http
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: cao
  namespace: cao-system
spec:
  minAvailable: 1
  selector:
    matchLabels:
      app: cao
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: cao
  namespace: cao-system
spec:
  podSelector:
    matchLabels:
      app: cao
  policyTypes: ["Ingress"]
  ingress:
  - ports:
    - port: 8080
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: cao
  namespace: cao-system
spec:
  ingressClassName: nginx
  rules:
  - host: cao.example.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: cao
            port:
              name: http
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendered_chart_applies_and_lists_with_the_real_columns() {
    let server = ApiServer::start().await.unwrap();
    let k = Kubectl::new(&server);
    let applied = k.apply("chart.yaml", CHART);
    assert_eq!(
        applied.lines().collect::<Vec<_>>(),
        [
            "namespace/cao-system created",
            "serviceaccount/cao created",
            "clusterrole.rbac.authorization.k8s.io/cao created",
            "clusterrolebinding.rbac.authorization.k8s.io/cao created",
            "role.rbac.authorization.k8s.io/cao-leader created",
            "rolebinding.rbac.authorization.k8s.io/cao-leader created",
            "deployment.apps/cao created",
            "service/cao created",
            "poddisruptionbudget.policy/cao created",
            "networkpolicy.networking.k8s.io/cao created",
            "ingress.networking.k8s.io/cao created",
        ]
    );
    // A second apply changes nothing (the registry's defaults do not count as changes), except
    // that kubectl always patches a PodDisruptionBudget's selector (its `replace` patch
    // strategy), against a real cluster too.
    let again = k.apply("chart.yaml", CHART);
    assert!(
        again
            .lines()
            .all(|l| l.ends_with(" unchanged") || l == "poddisruptionbudget.policy/cao configured"),
        "{again}"
    );

    let deployments = rows(&k.ok(&["get", "deployments", "-n", "cao-system"]));
    assert_eq!(deployments[0], ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert_eq!(deployments[1][..4], ["cao", "0/2", "0", "0"]);
    let services = rows(&k.ok(&["get", "svc", "-n", "cao-system"]));
    assert_eq!(
        services[0],
        ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    );
    assert_eq!(services[1][0..2], ["cao", "ClusterIP"]);
    assert!(services[1][2].starts_with("10.96."), "{services:?}");
    assert_eq!(services[1][3..5], ["<none>", "80/TCP"]);
    let pdbs = rows(&k.ok(&["get", "pdb", "-n", "cao-system"]));
    assert_eq!(
        pdbs[0],
        ["NAME", "MIN AVAILABLE", "MAX UNAVAILABLE", "ALLOWED DISRUPTIONS", "AGE"]
    );
    assert_eq!(pdbs[1][..4], ["cao", "1", "N/A", "0"]);
    let policies = rows(&k.ok(&["get", "netpol", "-n", "cao-system"]));
    assert_eq!(policies[0], ["NAME", "POD-SELECTOR", "AGE"]);
    assert_eq!(policies[1][..2], ["cao", "app=cao"]);
    let ingresses = rows(&k.ok(&["get", "ingress", "-n", "cao-system"]));
    assert_eq!(ingresses[0], ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]);
    assert_eq!(ingresses[1][..3], ["cao", "nginx", "cao.example.com"]);
    let bindings = rows(&k.ok(&["get", "rolebindings", "-n", "cao-system"]));
    assert_eq!(bindings[0], ["NAME", "ROLE", "AGE"]);
    assert_eq!(bindings[1][..2], ["cao-leader", "Role/cao-leader"]);
    let roles = rows(&k.ok(&["get", "clusterroles"]));
    assert_eq!(roles[0], ["NAME", "CREATED AT"]);
    assert_eq!(roles[1][0], "cao");
    // Cluster-scoped kinds take no namespace; namespaced ones are found only in theirs.
    assert_eq!(
        k.ok(&[
            "get",
            "clusterrolebinding",
            "cao",
            "-o",
            "jsonpath={.subjects[0].namespace}"
        ]),
        "cao-system"
    );
    assert!(!k.run(&["get", "deployment", "cao", "-n", "default"]).status.success());
    // Imperative creates of chart kinds go through protobuf too.
    assert_eq!(
        k.ok(&["create", "deployment", "web", "-n", "cao-system", "--image=nginx:1.27"])
            .trim(),
        "deployment.apps/web created"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "cao-system",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        "nginx:1.27"
    );
    assert_eq!(
        k.ok(&[
            "create",
            "service",
            "clusterip",
            "web",
            "-n",
            "cao-system",
            "--tcp=80:8080"
        ])
        .trim(),
        "service/web created"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "svc",
            "web",
            "-n",
            "cao-system",
            "-o",
            "jsonpath={.spec.ports[0].targetPort}"
        ]),
        "8080"
    );
    assert_eq!(
        k.ok(&[
            "create",
            "role",
            "reader",
            "-n",
            "cao-system",
            "--verb=get",
            "--resource=secrets"
        ])
        .trim(),
        "role.rbac.authorization.k8s.io/reader created"
    );
    assert_eq!(
        k.ok(&[
            "create",
            "rolebinding",
            "reader",
            "-n",
            "cao-system",
            "--role=reader",
            "--serviceaccount=cao-system:cao"
        ])
        .trim(),
        "rolebinding.rbac.authorization.k8s.io/reader created"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "role",
            "reader",
            "-n",
            "cao-system",
            "-o",
            "jsonpath={.rules[0].apiGroups}"
        ]),
        r#"[""]"#
    );
}
