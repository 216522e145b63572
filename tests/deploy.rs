//! Checks of the deployment files: the Kubernetes manifests under
//! deploy/kubernetes, the systemd unit under deploy/systemd and the
//! Dockerfile. They are read and cross-checked, never applied or built.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

const KUBERNETES_DIR: &str = "deploy/kubernetes";
const SYSTEMD_UNIT: &str = "deploy/systemd/tokensync.service";
const SYSTEMD_CONFIG: &str = "deploy/systemd/tokensync.yaml";
const RULES_FILE: &str = "alerts/tokensync.rules.yml";
/// The metrics port that the README, the Dockerfile and the manifests name.
const METRICS_PORT: u64 = 8417;

/// The apiVersion expected for each kind that deploy/kubernetes may contain.
const API_VERSIONS: [(&str, &str); 7] = [
    ("ConfigMap", "v1"),
    ("Service", "v1"),
    ("Deployment", "apps/v1"),
    ("NetworkPolicy", "networking.k8s.io/v1"),
    ("ServiceMonitor", "monitoring.coreos.com/v1"),
    ("PrometheusRule", "monitoring.coreos.com/v1"),
    ("Kustomization", "kustomize.config.k8s.io/v1beta1"),
];

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    fs::read_to_string(repo_path(relative)).unwrap_or_else(|error| panic!("{relative}: cannot read: {error}"))
}

/// One YAML document of a file under deploy/kubernetes.
struct Manifest {
    file: String,
    doc: Value,
}

impl Manifest {
    /// Returns the value at a JSON pointer such as `/spec/replicas`, or
    /// fails naming the file and the missing field.
    fn get(&self, pointer: &str) -> &Value {
        self.doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{}: {} is missing", self.file, pointer_to_path(pointer)))
    }

    fn str(&self, pointer: &str) -> &str {
        self.get(pointer)
            .as_str()
            .unwrap_or_else(|| panic!("{}: {} is not a string", self.file, pointer_to_path(pointer)))
    }

    fn array(&self, pointer: &str) -> &Vec<Value> {
        self.get(pointer)
            .as_array()
            .unwrap_or_else(|| panic!("{}: {} is not a list", self.file, pointer_to_path(pointer)))
    }

    fn kind(&self) -> &str {
        self.str("/kind")
    }
}

/// Turns `/spec/template/0/name` into `spec.template[0].name` for messages.
fn pointer_to_path(pointer: &str) -> String {
    let mut path = String::new();
    for part in pointer.trim_start_matches('/').split('/') {
        if part.parse::<usize>().is_ok() {
            path.push_str(&format!("[{part}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(part);
        }
    }
    path
}

/// Returns the file names of deploy/kubernetes that end in .yaml or .yml.
fn manifest_files() -> Vec<String> {
    let directory = repo_path(KUBERNETES_DIR);
    let mut files: Vec<String> = fs::read_dir(&directory)
        .unwrap_or_else(|error| panic!("{KUBERNETES_DIR}: cannot list: {error}"))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect();
    files.sort();
    files
}

/// Parses every YAML document under deploy/kubernetes.
fn manifests() -> Vec<Manifest> {
    let mut manifests = Vec::new();
    for name in manifest_files() {
        let file = format!("{KUBERNETES_DIR}/{name}");
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&read(&file)).unwrap_or_else(|error| panic!("{file}: invalid YAML: {error}"));
        assert!(!docs.is_empty(), "{file}: no YAML document");
        for doc in docs {
            manifests.push(Manifest { file: file.clone(), doc });
        }
    }
    manifests
}

/// Returns the one manifest of `kind` named `name`.
fn manifest(kind: &str, name: &str) -> Manifest {
    let mut found: Vec<Manifest> = manifests()
        .into_iter()
        .filter(|manifest| manifest.doc["kind"] == kind && manifest.doc["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "{KUBERNETES_DIR}: expected one {kind} named `{name}`, found {}", found.len());
    found.pop().unwrap()
}

/// Returns true when every label of `selector` is in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let (Some(selector), Some(labels)) = (selector.as_object(), labels.as_object()) else {
        return false;
    };
    !selector.is_empty() && selector.iter().all(|(key, value)| labels.get(key) == Some(value))
}

fn parse_yaml_file(relative: &str) -> Value {
    serde_saphyr::from_str(&read(relative)).unwrap_or_else(|error| panic!("{relative}: invalid YAML: {error}"))
}

// ---------------------------------------------------------------------------
// Kubernetes

#[test]
fn manifests_have_kind_api_version_and_name() {
    let expected: BTreeMap<&str, &str> = API_VERSIONS.into_iter().collect();
    let manifests = manifests();
    assert!(!manifests.is_empty(), "{KUBERNETES_DIR}: no manifests");
    for manifest in &manifests {
        let kind = manifest.kind();
        let api_version = manifest.str("/apiVersion");
        let Some(expected_version) = expected.get(kind) else {
            panic!("{}: unexpected kind {kind}; add it to API_VERSIONS in tests/deploy.rs", manifest.file);
        };
        assert_eq!(api_version, *expected_version, "{}: apiVersion of {kind}", manifest.file);
        if kind != "Kustomization" {
            assert!(!manifest.str("/metadata/name").is_empty(), "{}: metadata.name is empty", manifest.file);
            assert!(
                manifest.get("/metadata/labels/app.kubernetes.io~1name") == "tokensync",
                "{}: {kind} lacks the label app.kubernetes.io/name: tokensync",
                manifest.file
            );
        }
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let kustomization = manifest_files()
        .into_iter()
        .find(|name| name == "kustomization.yaml")
        .map(|name| format!("{KUBERNETES_DIR}/{name}"))
        .unwrap_or_else(|| panic!("{KUBERNETES_DIR}: kustomization.yaml is missing"));
    let doc = parse_yaml_file(&kustomization);
    let listed: BTreeSet<String> = doc["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("{kustomization}: resources is not a list"))
        .iter()
        .map(|resource| resource.as_str().unwrap_or_else(|| panic!("{kustomization}: a resource is not a string")).to_owned())
        .collect();
    let present: BTreeSet<String> = manifest_files().into_iter().filter(|name| name != "kustomization.yaml").collect();
    assert_eq!(listed, present, "{kustomization}: resources differ from the manifests in {KUBERNETES_DIR}");
}

#[test]
fn deployment_runs_one_non_root_read_only_instance() {
    let deployment = manifest("Deployment", "tokensync");
    let file = &deployment.file;
    assert_eq!(deployment.get("/spec/replicas"), 1, "{file}: replicas must be 1, because instances would rotate each other's refresh tokens");
    assert_eq!(deployment.str("/spec/strategy/type"), "Recreate", "{file}: strategy.type");
    assert_eq!(deployment.get("/spec/template/spec/automountServiceAccountToken"), false, "{file}: automountServiceAccountToken");

    let pod = "/spec/template/spec/securityContext";
    assert_eq!(deployment.get(&format!("{pod}/runAsNonRoot")), true, "{file}: pod runAsNonRoot");
    let user = deployment.get(&format!("{pod}/runAsUser")).as_u64();
    assert!(user.is_some_and(|user| user > 0), "{file}: pod runAsUser must be a non-zero UID, found {user:?}");
    assert_eq!(deployment.str(&format!("{pod}/seccompProfile/type")), "RuntimeDefault", "{file}: seccompProfile");

    let container = "/spec/template/spec/containers/0/securityContext";
    assert_eq!(deployment.get(&format!("{container}/allowPrivilegeEscalation")), false, "{file}: allowPrivilegeEscalation");
    assert_eq!(deployment.get(&format!("{container}/readOnlyRootFilesystem")), true, "{file}: readOnlyRootFilesystem");
    let dropped = deployment.array(&format!("{container}/capabilities/drop"));
    assert!(dropped.contains(&Value::from("ALL")), "{file}: capabilities.drop must contain ALL, found {dropped:?}");
}

#[test]
fn deployment_exposes_metrics_and_probes() {
    let deployment = manifest("Deployment", "tokensync");
    let file = &deployment.file;
    let container = "/spec/template/spec/containers/0";
    let ports = deployment.array(&format!("{container}/ports"));
    let metrics = ports.iter().find(|port| port["name"] == "metrics");
    let metrics = metrics.unwrap_or_else(|| panic!("{file}: no container port named `metrics` in {ports:?}"));
    assert_eq!(metrics["containerPort"], METRICS_PORT, "{file}: port `metrics`");

    for (probe, path) in [("readinessProbe", "/-/ready"), ("livenessProbe", "/-/healthy")] {
        assert_eq!(deployment.str(&format!("{container}/{probe}/httpGet/path")), path, "{file}: {probe} path");
        assert_eq!(deployment.str(&format!("{container}/{probe}/httpGet/port")), "metrics", "{file}: {probe} port");
    }

    let args = deployment.array(&format!("{container}/args"));
    assert_eq!(args.first(), Some(&Value::from("run")), "{file}: args must start with `run`, found {args:?}");
    let listen = format!("--web.listen-address=:{METRICS_PORT}");
    assert!(args.contains(&Value::from(listen.as_str())), "{file}: args lack {listen}; the default address is loopback only");
}

/// Returns the configuration file that the Deployment passes with --config.
fn config_argument(deployment: &Manifest) -> String {
    let args = deployment.array("/spec/template/spec/containers/0/args");
    args.iter()
        .filter_map(Value::as_str)
        .find_map(|arg| arg.strip_prefix("--config="))
        .unwrap_or_else(|| panic!("{}: args lack --config=FILE: {args:?}", deployment.file))
        .to_owned()
}

/// Returns (mount path, volume) for each volume mount of the container.
fn mounts(deployment: &Manifest) -> Vec<(String, Value)> {
    let file = &deployment.file;
    let volumes = deployment.array("/spec/template/spec/volumes");
    deployment
        .array("/spec/template/spec/containers/0/volumeMounts")
        .iter()
        .map(|mount| {
            let name = &mount["name"];
            let volume = volumes.iter().find(|volume| &volume["name"] == name);
            let volume = volume.unwrap_or_else(|| panic!("{file}: volumeMount {name} names no volume"));
            let path = mount["mountPath"].as_str().unwrap_or_else(|| panic!("{file}: volumeMount {name} has no mountPath"));
            (path.to_owned(), volume.clone())
        })
        .collect()
}

/// Returns the volume mounted at the directory that contains `path`.
fn volume_for(mounts: &[(String, Value)], path: &str) -> Option<Value> {
    mounts
        .iter()
        .filter(|(mount, _)| Path::new(path).starts_with(mount))
        .max_by_key(|(mount, _)| mount.len())
        .map(|(_, volume)| volume.clone())
}

/// Returns the configuration text that the Deployment mounts from its ConfigMap.
fn mounted_config(deployment: &Manifest) -> (String, String) {
    let config_path = config_argument(deployment);
    let mounts = mounts(deployment);
    let volume = volume_for(&mounts, &config_path)
        .unwrap_or_else(|| panic!("{}: no volume is mounted at {config_path}", deployment.file));
    let config_map_name = volume["configMap"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: {config_path} is not on a ConfigMap volume", deployment.file));
    let config_map = manifest("ConfigMap", config_map_name);
    let key = Path::new(&config_path).file_name().unwrap().to_string_lossy().into_owned();
    let text = config_map.str(&format!("/data/{key}")).to_owned();
    (config_map.file, text)
}

#[test]
fn mounted_config_parses() {
    let deployment = manifest("Deployment", "tokensync");
    let (file, text) = mounted_config(&deployment);
    tokensync::config::parse(&text, &file).unwrap_or_else(|error| panic!("{file}: tokensync.yaml does not parse: {error}"));
}

/// Returns every `path` and `key_file` of the sinks, and every `*_file` of
/// the sources, of a configuration, as (YAML path, file path) pairs.
fn config_files(config: &Value) -> (Vec<(String, String)>, Vec<(String, String)>) {
    let (mut written, mut read) = (Vec::new(), Vec::new());
    let tokens = config["tokens"].as_array().cloned().unwrap_or_default();
    for (index, token) in tokens.iter().enumerate() {
        for (key, value) in token["source"].as_object().into_iter().flatten() {
            if let (true, Some(path)) = (key.ends_with("_file"), value.as_str()) {
                read.push((format!("tokens[{index}].source.{key}"), path.to_owned()));
            }
        }
        for (sink_index, sink) in token["sinks"].as_array().into_iter().flatten().enumerate() {
            let yaml_path = format!("tokens[{index}].sinks[{sink_index}]");
            if let Some(path) = sink["path"].as_str() {
                written.push((format!("{yaml_path}.path"), path.to_owned()));
            }
            if let Some(path) = sink["key_file"].as_str() {
                read.push((format!("{yaml_path}.key_file"), path.to_owned()));
            }
        }
    }
    (written, read)
}

#[test]
fn deployment_mounts_sinks_writable_and_secrets_from_secret() {
    let deployment = manifest("Deployment", "tokensync");
    let (config_file, text) = mounted_config(&deployment);
    let config: Value = serde_saphyr::from_str(&text).unwrap_or_else(|error| panic!("{config_file}: invalid YAML: {error}"));
    let mounts = mounts(&deployment);
    let (written, read) = config_files(&config);
    assert!(!written.is_empty(), "{config_file}: the configuration has no sinks");

    // The root filesystem is read-only, so every sink must be on an emptyDir.
    for (yaml_path, path) in &written {
        let volume = volume_for(&mounts, path);
        assert!(
            volume.as_ref().is_some_and(|volume| volume.get("emptyDir").is_some()),
            "{}: {config_file} writes {yaml_path} = {path}, which is on no emptyDir volume (found {volume:?})",
            deployment.file
        );
    }
    // Secrets, the session key among them, come from a Secret volume.
    assert!(read.iter().any(|(yaml_path, _)| yaml_path.ends_with("key_file")), "{config_file}: no session_store with key_file");
    for (yaml_path, path) in &read {
        let volume = volume_for(&mounts, path);
        assert!(
            volume.as_ref().is_some_and(|volume| volume["secret"]["secretName"].is_string()),
            "{}: {config_file} reads {yaml_path} = {path}, which is on no Secret volume (found {volume:?})",
            deployment.file
        );
    }
}

#[test]
fn service_selects_deployment_pods() {
    let deployment = manifest("Deployment", "tokensync");
    let service = manifest("Service", "tokensync");
    let pod_labels = deployment.get("/spec/template/metadata/labels");
    assert!(
        selects(service.get("/spec/selector"), pod_labels),
        "{}: spec.selector does not match the pod labels {pod_labels} of {}",
        service.file,
        deployment.file
    );
    assert!(
        selects(deployment.get("/spec/selector/matchLabels"), pod_labels),
        "{}: spec.selector.matchLabels does not match the pod labels",
        deployment.file
    );
    let port = &service.array("/spec/ports")[0];
    assert_eq!(port["name"], "metrics", "{}: ports[0].name", service.file);
    assert_eq!(port["port"], METRICS_PORT, "{}: ports[0].port", service.file);
    assert_eq!(port["targetPort"], "metrics", "{}: ports[0].targetPort", service.file);
    assert_eq!(service.get("/spec/publishNotReadyAddresses"), true, "{}: publishNotReadyAddresses, so that Prometheus scrapes before ready", service.file);
}

#[test]
fn service_monitor_scrapes_service_as_job_tokensync() {
    let service = manifest("Service", "tokensync");
    let monitor = manifest("ServiceMonitor", "tokensync");
    assert!(
        selects(monitor.get("/spec/selector/matchLabels"), service.get("/metadata/labels")),
        "{}: spec.selector.matchLabels does not match the labels of {}",
        monitor.file,
        service.file
    );
    // Without jobLabel, the Prometheus Operator names the job after the
    // Service, and the rules select job="tokensync".
    assert!(monitor.doc["spec"].get("jobLabel").is_none(), "{}: jobLabel would change the job name", monitor.file);
    assert!(read(RULES_FILE).contains("job=\"tokensync\""), "{RULES_FILE}: the rules no longer select job=\"tokensync\"");
    let endpoints = monitor.array("/spec/endpoints");
    assert!(
        endpoints.iter().any(|endpoint| endpoint["port"] == "metrics" && endpoint["path"] == "/metrics"),
        "{}: no endpoint scrapes port `metrics` at /metrics: {endpoints:?}",
        monitor.file
    );
}

#[test]
fn network_policy_admits_only_metrics_port() {
    let deployment = manifest("Deployment", "tokensync");
    let policy = manifest("NetworkPolicy", "tokensync");
    assert!(
        selects(policy.get("/spec/podSelector/matchLabels"), deployment.get("/spec/template/metadata/labels")),
        "{}: spec.podSelector does not match the pods of {}",
        policy.file,
        deployment.file
    );
    for rule in policy.array("/spec/ingress") {
        let ports = rule["ports"].as_array().unwrap_or_else(|| panic!("{}: an ingress rule allows every port", policy.file));
        assert!(ports.iter().all(|port| port["port"] == "metrics"), "{}: ingress ports {ports:?}", policy.file);
    }
}

#[test]
fn prometheus_rule_groups_equal_rules_file() {
    let rule = manifest("PrometheusRule", "tokensync");
    let rules_file = parse_yaml_file(RULES_FILE);
    let shipped = rules_file.get("groups").unwrap_or_else(|| panic!("{RULES_FILE}: groups is missing"));
    assert!(
        rule.get("/spec/groups") == shipped,
        "{}: spec.groups differ from the groups of {RULES_FILE}; run scripts/gen-k8s",
        rule.file
    );
}

#[test]
fn dashboards_config_map_equals_dashboard_files() {
    let config_map = manifest("ConfigMap", "tokensync-dashboards");
    let data = config_map.get("/data").as_object().unwrap_or_else(|| panic!("{}: data is not a map", config_map.file));

    let mut dashboards: Vec<String> = fs::read_dir(repo_path("dashboards"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    dashboards.sort();
    let keys: Vec<String> = data.keys().cloned().collect();
    assert_eq!(keys, dashboards, "{}: data keys differ from dashboards/*.json; run scripts/gen-k8s", config_map.file);

    for name in &dashboards {
        let shipped = read(&format!("dashboards/{name}"));
        let embedded = data[name].as_str().unwrap_or_else(|| panic!("{}: data.{name} is not a string", config_map.file));
        let first_difference = embedded.bytes().zip(shipped.bytes()).position(|(left, right)| left != right);
        assert!(
            embedded == shipped,
            "{}: data.{name} differs from dashboards/{name} at byte {} ({} bytes embedded, {} shipped); run scripts/gen-k8s",
            config_map.file,
            first_difference.unwrap_or(embedded.len().min(shipped.len())),
            embedded.len(),
            shipped.len()
        );
    }
}

// ---------------------------------------------------------------------------
// systemd

/// Parses a unit file into section → key → values, in order of appearance.
fn parse_unit(relative: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for (number, line) in read(relative).lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        assert!(!line.ends_with('\\'), "{relative}:{}: continuation lines are not supported by this test", number + 1);
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("{relative}:{}: not KEY=VALUE: {line}", number + 1));
        assert!(!section.is_empty(), "{relative}:{}: {key} outside a section", number + 1);
        sections.entry(section.clone()).or_default().entry(key.trim().to_owned()).or_default().push(value.trim().to_owned());
    }
    sections
}

#[test]
fn systemd_unit_has_hardening_directives() {
    let unit = parse_unit(SYSTEMD_UNIT);
    let service = unit.get("Service").unwrap_or_else(|| panic!("{SYSTEMD_UNIT}: no [Service] section"));
    let required = [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("StateDirectory", "tokensync"),
        ("RuntimeDirectory", "tokensync"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
    ];
    for (key, value) in required {
        let values = service.get(key);
        assert!(
            values.is_some_and(|values| values.last().map(String::as_str) == Some(value)),
            "{SYSTEMD_UNIT}: [Service] needs {key}={value}, found {values:?}"
        );
    }
    assert!(service.get("User").is_none_or(|users| users.iter().all(|user| user != "root" && user != "0")), "{SYSTEMD_UNIT}: User= is root");
    let exec_start = service.get("ExecStart").and_then(|values| values.last()).cloned().unwrap_or_default();
    assert!(exec_start.contains("tokensync run --config "), "{SYSTEMD_UNIT}: ExecStart does not run `tokensync run --config`: {exec_start:?}");
    let install = unit.get("Install").and_then(|install| install.get("WantedBy"));
    assert!(install.is_some_and(|targets| targets.contains(&"multi-user.target".to_owned())), "{SYSTEMD_UNIT}: [Install] WantedBy=multi-user.target is missing");
}

#[test]
fn systemd_credentials_cover_config_secrets() {
    let unit = parse_unit(SYSTEMD_UNIT);
    let credentials: BTreeSet<String> = unit["Service"]
        .get("LoadCredential")
        .unwrap_or_else(|| panic!("{SYSTEMD_UNIT}: no LoadCredential= line"))
        .iter()
        .map(|value| value.split_once(':').map_or(value.as_str(), |(id, _)| id).to_owned())
        .collect();

    let config: Value = parse_yaml_file(SYSTEMD_CONFIG);
    let (written, read) = config_files(&config);
    assert!(!read.is_empty(), "{SYSTEMD_CONFIG}: reads no secret files");
    for (yaml_path, path) in &read {
        let id = path
            .strip_prefix("${CREDENTIALS_DIRECTORY}/")
            .unwrap_or_else(|| panic!("{SYSTEMD_CONFIG}: {yaml_path} = {path} is not under ${{CREDENTIALS_DIRECTORY}}"));
        assert!(credentials.contains(id), "{SYSTEMD_UNIT}: no LoadCredential={id}:... for {SYSTEMD_CONFIG} {yaml_path}");
    }
    for (yaml_path, path) in &written {
        assert!(
            path.starts_with("/run/tokensync/") || path.starts_with("/var/lib/tokensync/"),
            "{SYSTEMD_CONFIG}: {yaml_path} = {path} is outside RuntimeDirectory and StateDirectory, which ProtectSystem=strict makes read-only"
        );
    }
}

#[test]
fn systemd_config_parses() {
    tokensync::config::parse(&read(SYSTEMD_CONFIG), SYSTEMD_CONFIG).unwrap_or_else(|error| panic!("{error}"));
}

// ---------------------------------------------------------------------------
// Docker

/// Returns the Dockerfile's instructions as (keyword, arguments), with
/// comments removed and continuation lines joined.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(start) = trimmed.strip_suffix('\\') {
            pending.push_str(start);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (keyword, arguments) = pending.split_once(char::is_whitespace).unwrap_or((&pending, ""));
        instructions.push((keyword.to_ascii_uppercase(), arguments.trim().to_owned()));
        pending.clear();
    }
    instructions
}

#[test]
fn dockerfile_is_multi_stage_and_non_root() {
    let instructions = dockerfile_instructions();
    let stages: Vec<&String> = instructions.iter().filter(|(keyword, _)| keyword == "FROM").map(|(_, arguments)| arguments).collect();
    assert!(stages.len() >= 2, "Dockerfile: expected a build stage and a runtime stage, found FROM lines {stages:?}");
    let build_stage = stages[0]
        .split_whitespace()
        .skip_while(|word| !word.eq_ignore_ascii_case("AS"))
        .nth(1)
        .unwrap_or_else(|| panic!("Dockerfile: the first stage is not named (FROM ... AS NAME): {}", stages[0]));

    let last_from = instructions.iter().rposition(|(keyword, _)| keyword == "FROM").unwrap();
    let runtime = &instructions[last_from..];
    assert!(
        runtime.iter().any(|(keyword, arguments)| keyword == "COPY" && arguments.contains(&format!("--from={build_stage}"))),
        "Dockerfile: the runtime stage copies nothing from the build stage `{build_stage}`"
    );
    let user = runtime.iter().rev().find(|(keyword, _)| keyword == "USER").map(|(_, arguments)| arguments.as_str());
    let user = user.unwrap_or_else(|| panic!("Dockerfile: the runtime stage has no USER instruction"));
    let uid = user.split(':').next().unwrap();
    assert!(!["root", "0"].contains(&uid), "Dockerfile: USER {user} is root");
    assert!(uid.parse::<u32>().is_ok(), "Dockerfile: USER {user} is not numeric, so runAsNonRoot cannot verify it");

    let deployment = manifest("Deployment", "tokensync");
    let run_as = deployment.get("/spec/template/spec/securityContext/runAsUser");
    assert_eq!(run_as.to_string(), uid, "{}: runAsUser differs from the Dockerfile's USER {user}", deployment.file);

    let healthcheck = runtime.iter().find(|(keyword, _)| keyword == "HEALTHCHECK").map(|(_, arguments)| arguments.as_str());
    let healthcheck = healthcheck.unwrap_or_else(|| panic!("Dockerfile: the runtime stage has no HEALTHCHECK"));
    let probe = format!(r#"CMD ["/usr/local/bin/tokensync", "status", "--url", "http://127.0.0.1:{METRICS_PORT}"]"#);
    assert!(healthcheck.ends_with(&probe), "Dockerfile: HEALTHCHECK does not run {probe}: {healthcheck}");

    let exposed = runtime.iter().any(|(keyword, arguments)| keyword == "EXPOSE" && arguments.split_whitespace().any(|port| port.trim_end_matches("/tcp") == METRICS_PORT.to_string()));
    assert!(exposed, "Dockerfile: the runtime stage does not EXPOSE {METRICS_PORT}");
}

#[test]
fn dockerfile_rust_meets_rust_version() {
    let instructions = dockerfile_instructions();
    let image = instructions
        .iter()
        .find_map(|(keyword, arguments)| (keyword == "ARG").then(|| arguments.strip_prefix("RUST_IMAGE=")).flatten())
        .unwrap_or_else(|| panic!("Dockerfile: no ARG RUST_IMAGE=rust:VERSION-..."));
    let version = image
        .strip_prefix("rust:")
        .and_then(|tag| tag.split('-').next())
        .unwrap_or_else(|| panic!("Dockerfile: RUST_IMAGE={image} is not rust:VERSION-..."));

    let manifest = read("Cargo.toml");
    let required = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .map(|value| value.trim_matches('"'))
        .unwrap_or_else(|| panic!("Cargo.toml: no rust-version"));
    let parse = |text: &str| -> Vec<u32> { text.split('.').map(|part| part.parse().unwrap_or(0)).collect() };
    assert!(
        parse(version) >= parse(required),
        "Dockerfile: RUST_IMAGE={image} is older than rust-version {required} in Cargo.toml"
    );
}

#[test]
fn dockerignore_excludes_build_output() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(|line| line.trim().trim_start_matches('/').trim_end_matches('/').to_owned())
        .collect();
    for required in ["target", ".git", "fuzz/target", "tests/oidc/node_modules"] {
        assert!(patterns.iter().any(|pattern| pattern == required), ".dockerignore: {required} is not excluded");
    }
}
