//! The injection decision: a pod, its namespace and the webhook's configuration in; "leave it",
//! "deny it" or an RFC 6902 patch out. Pure: no I/O, no clock, so every case is a golden test.
//!
//! What an injected pod gets:
//! - volumes `vaultkeeper-secrets` (in-memory `emptyDir` with a size limit), `vaultkeeper-token`
//!   (a projected ServiceAccount token only the agent mounts) and `vaultkeeper-agent-run` (the
//!   agent's own scratch space, where it writes its ready file);
//! - the secrets volume mounted read-only into every container and init container of the app, at
//!   each distinct mount path the annotations name;
//! - agent containers according to the mode:
//!
//! | annotations | native sidecars supported | classic (no native sidecars) |
//! |---|---|---|
//! | `pre-populate-only` | init container (renders, exits) | same |
//! | default (`pre-populate` true) | restartable init container whose postStart hook returns after the first render, so the app starts with its files | init container + sidecar container |
//! | `pre-populate: false` | restartable init container without startup gate | sidecar container only |
//!
//! Agent init containers go first, so the app's own init containers can read the secrets too.
//! - the annotation `vaultkeeper.dev/status: injected`, so re-admission leaves the pod alone.
//!
//! Each agent's configuration is checked with the agent's own parser and validator
//! ([`AgentConfig::parse`] on the JSON about to be injected) before anything is admitted: a pod
//! whose agent would refuse to start is denied, with the rule it breaks and the annotation to fix.

use std::collections::{BTreeMap, BTreeSet};

use agent_contract::{
    AGENT_CONFIG_ENV, AGENT_CONFIG_VERSION, AgentConfig, AgentMode, AgentSecret, ConfigError,
};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, ExecAction, Lifecycle, LifecycleHandler,
    Pod, PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;

use crate::annotations::{
    self, Annotations, INJECTED, InjectionRequest, QuantitySetting, STATUS_ANNOTATION,
    quantity_value,
};

/// Name of the agent's init container (init-only, pre-populate, or native sidecar).
pub const INIT_CONTAINER: &str = "vaultkeeper-agent-init";
/// Name of the agent's classic sidecar container.
pub const SIDECAR_CONTAINER: &str = "vaultkeeper-agent";
/// The shared in-memory volume the agent renders into.
pub const SECRETS_VOLUME: &str = "vaultkeeper-secrets";
/// The projected ServiceAccount token the agent logs in with.
pub const TOKEN_VOLUME: &str = "vaultkeeper-token";
/// The agent's private scratch volume (ready file).
pub const RUN_VOLUME: &str = "vaultkeeper-agent-run";
/// Where the agent sees its token volume.
pub const TOKEN_DIR: &str = "/var/run/secrets/vaultkeeper/serviceaccount";
/// Where the agent sees its scratch volume.
pub const RUN_DIR: &str = "/var/run/vaultkeeper";
/// The postStart hook of a native sidecar, before its `--timeout`: the agent binary must be on the
/// image's `PATH` (the project's agent image sets `PATH=/`, where its binary is).
pub const WAIT_COMMAND: &[&str] = &["vaultkeeper-agent", "wait"];
/// The startup probe of a native sidecar ([`StartupGate::StartupProbe`]), same `PATH` rule.
pub const PROBE_COMMAND: &[&str] = &["vaultkeeper-agent", "probe"];

/// How a native sidecar (with `pre-populate`) holds the app containers until its first render.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StartupGate {
    /// A postStart hook that returns once the agent has rendered: the kubelet starts the app
    /// right after. While it waits the kubelet handles nothing else of the pod, so a pod deleted
    /// before its first render goes only when the hook gives up (the startup timeout).
    PostStart,
    /// A startup probe: the kubelet checks it once a second, so the app starts up to a second
    /// after the render (measured about one second per pod); a deleted pod goes at once.
    StartupProbe,
}

/// How the webhook injects; set once from flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The agent image, e.g. `ghcr.io/vaultkeeper/agent:0.1.0`.
    pub agent_image: String,
    /// Vault's address as the agent reaches it.
    pub vault_addr: String,
    /// PEM CA bundle for Vault's certificate, passed to the agent.
    pub vault_ca_pem: Option<String>,
    /// Auth path when a pod does not name one, e.g. `auth/kubernetes`.
    pub default_auth_path: String,
    /// Whether the API server supports restartable init containers (Kubernetes ≥ 1.29).
    pub native_sidecars: bool,
    /// Agent resources when a pod does not set them; `None` = no request/limit. The defaults
    /// (requests 5m CPU and 8Mi memory, limit 32Mi memory, no CPU limit) come from measuring the
    /// release agent: 5.8 MiB peak resident (VmHWM) as a sidecar, 34 ms for an init render.
    pub requests_cpu: Option<String>,
    pub requests_memory: Option<String>,
    pub limits_cpu: Option<String>,
    pub limits_memory: Option<String>,
    /// `sizeLimit` of the in-memory secrets volume.
    pub secrets_volume_size_limit: String,
    /// Agent user and group when a pod does not set them.
    pub run_as_user: i64,
    pub run_as_group: i64,
    /// Audience of the projected token; `None` = the API server's default audience.
    pub token_audience: Option<String>,
    /// Lifetime of the projected token (the kubelet refreshes it at 80%).
    pub token_expiration_seconds: i64,
    /// How long a native sidecar may take for its first render before the kubelet restarts it.
    pub startup_timeout_seconds: i32,
    /// How a native sidecar holds the app containers until its first render.
    pub startup_gate: StartupGate,
    /// Namespaces whose pods are never touched, whatever their annotations (defence in depth
    /// behind the webhook configuration's namespace selector).
    pub skip_namespaces: BTreeSet<String>,
}

impl Default for WebhookConfig {
    /// The documented defaults (also the defaults of the flags).
    fn default() -> Self {
        Self {
            agent_image: "ghcr.io/vaultkeeper/vaultkeeper-agent:latest".into(),
            vault_addr: "https://vault.vault.svc:8200".into(),
            vault_ca_pem: None,
            default_auth_path: "auth/kubernetes".into(),
            native_sidecars: true,
            requests_cpu: Some("5m".into()),
            requests_memory: Some("8Mi".into()),
            limits_cpu: None,
            limits_memory: Some("32Mi".into()),
            secrets_volume_size_limit: "16Mi".into(),
            run_as_user: 100,
            run_as_group: 1000,
            token_audience: None,
            token_expiration_seconds: 3600,
            startup_timeout_seconds: 30,
            startup_gate: StartupGate::PostStart,
            skip_namespaces: ["kube-system", "kube-public", "kube-node-lease"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

/// What to do with a pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Admit unchanged.
    Skip(SkipReason),
    /// Refuse the pod with this message (it names the annotation to fix).
    Deny(String),
    /// Admit with this patch.
    Patch(Patch),
}

/// Why a pod is admitted unchanged (a bounded set, used in logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    NotRequested,
    AlreadyInjected,
    SkippedNamespace,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotRequested => "not-requested",
            Self::AlreadyInjected => "already-injected",
            Self::SkippedNamespace => "skipped-namespace",
        }
    }
}

/// Decides what to do with `pod`, created in `namespace`.
pub fn inject(pod: &Pod, namespace: &str, config: &WebhookConfig) -> Decision {
    if config.skip_namespaces.contains(namespace) {
        return Decision::Skip(SkipReason::SkippedNamespace);
    }
    let empty = BTreeMap::new();
    let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let request = match annotations::parse(pod_annotations) {
        Ok(Annotations::NotRequested) => return Decision::Skip(SkipReason::NotRequested),
        Ok(Annotations::AlreadyInjected) => return Decision::Skip(SkipReason::AlreadyInjected),
        Ok(Annotations::Inject(request)) => request,
        Err(errors) => return Decision::Deny(errors.to_string()),
    };
    let Some(spec) = pod.spec.as_ref() else {
        return Decision::Deny("the pod has no spec".into());
    };
    match plan(spec, &request, config) {
        Ok(patch) => Decision::Patch(patch),
        Err(message) => Decision::Deny(message),
    }
}

/// The patch for a pod whose annotations were parsed into `request`, or why it is refused.
pub fn plan(
    spec: &PodSpec,
    request: &InjectionRequest,
    config: &WebhookConfig,
) -> Result<Patch, String> {
    check_conflicts(spec, request)?;
    let resources = resources(request, config)?;
    let mount_paths: BTreeSet<&str> = request
        .secrets
        .iter()
        .map(|secret| secret.volume_path.as_str())
        .chain([request.volume_path.as_str()])
        .collect();
    let security_context = security_context(request, config);
    let agent = |name: &str, mode: AgentMode| -> Result<Container, String> {
        Ok(Container {
            name: name.to_owned(),
            image: Some(config.agent_image.clone()),
            env: Some(vec![EnvVar {
                name: AGENT_CONFIG_ENV.to_owned(),
                value: Some(admit(&agent_config(request, config, mode))?),
                value_from: None,
            }]),
            resources: resources.clone(),
            security_context: Some(security_context.clone()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            volume_mounts: Some(agent_mounts(&mount_paths)),
            ..Container::default()
        })
    };

    let mut init_container = None;
    let mut sidecar = None;
    if request.pre_populate_only {
        init_container = Some(agent(INIT_CONTAINER, AgentMode::Init)?);
    } else if config.native_sidecars {
        let mut container = agent(INIT_CONTAINER, AgentMode::Sidecar)?;
        container.restart_policy = Some("Always".into());
        if request.pre_populate {
            match config.startup_gate {
                StartupGate::PostStart => container.lifecycle = Some(wait_for_first_render(config)),
                StartupGate::StartupProbe => container.startup_probe = Some(startup_probe(config)),
            }
        }
        init_container = Some(container);
    } else {
        if request.pre_populate {
            init_container = Some(agent(INIT_CONTAINER, AgentMode::Init)?);
        }
        sidecar = Some(agent(SIDECAR_CONTAINER, AgentMode::Sidecar)?);
    }

    let mut patch = PatchBuilder::default();
    patch.add(
        &["metadata", "annotations", STATUS_ANNOTATION],
        Value::from(INJECTED),
    );
    for volume in volumes(config) {
        patch.append(
            &["spec", "volumes"],
            spec.volumes.is_some(),
            to_value(volume),
        );
    }
    let app_mounts: Vec<VolumeMount> = mount_paths
        .iter()
        .map(|path| VolumeMount {
            name: SECRETS_VOLUME.to_owned(),
            mount_path: (*path).to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        })
        .collect();
    for (list, containers) in [
        ("containers", Some(&spec.containers)),
        ("initContainers", spec.init_containers.as_ref()),
    ] {
        for (index, container) in containers.into_iter().flatten().enumerate() {
            let index = index.to_string();
            for mount in &app_mounts {
                patch.append(
                    &["spec", list, &index, "volumeMounts"],
                    container.volume_mounts.is_some(),
                    to_value(mount),
                );
            }
        }
    }
    if let Some(container) = init_container {
        if spec.init_containers.is_some() {
            patch.add(&["spec", "initContainers", "0"], to_value(container));
        } else {
            patch.add(
                &["spec", "initContainers"],
                Value::Array(vec![to_value(container)]),
            );
        }
    }
    if let Some(container) = sidecar {
        // A pod sent without `containers` (the API server refuses it later, with its own
        // message) gets the list, so the patch still applies.
        patch.append(
            &["spec", "containers"],
            !spec.containers.is_empty(),
            to_value(container),
        );
    }
    Ok(patch.finish())
}

/// Collects `add` operations, turning "append to a list that does not exist yet" into one
/// operation that creates the list.
#[derive(Default)]
struct PatchBuilder {
    operations: Vec<PatchOperation>,
    /// Lists created by this patch, by pointer, with the index of their `add` operation.
    created: BTreeMap<String, usize>,
}

impl PatchBuilder {
    fn add(&mut self, tokens: &[&str], value: Value) {
        self.operations.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(tokens.iter().copied()),
            value,
        }));
    }

    /// Appends `value` to the list at `tokens`; `exists` says whether the pod already has it.
    fn append(&mut self, tokens: &[&str], exists: bool, value: Value) {
        if exists {
            let mut path = tokens.to_vec();
            path.push("-");
            return self.add(&path, value);
        }
        let key = PointerBuf::from_tokens(tokens.iter().copied()).to_string();
        if let Some(&index) = self.created.get(&key)
            && let PatchOperation::Add(AddOperation {
                value: Value::Array(items),
                ..
            }) = &mut self.operations[index]
        {
            items.push(value);
            return;
        }
        self.created.insert(key, self.operations.len());
        self.add(tokens, Value::Array(vec![value]));
    }

    fn finish(self) -> Patch {
        Patch(self.operations)
    }
}

fn to_value(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("Kubernetes types always serialise to JSON")
}

/// Refuses pods that already use the names or paths the injection needs: the API server would
/// reject the patched pod with a less helpful message.
fn check_conflicts(spec: &PodSpec, request: &InjectionRequest) -> Result<(), String> {
    for volume in spec.volumes.iter().flatten() {
        if [SECRETS_VOLUME, TOKEN_VOLUME, RUN_VOLUME].contains(&volume.name.as_str()) {
            return Err(format!(
                "the pod already has a volume named {:?}, which vaultkeeper injection needs",
                volume.name
            ));
        }
    }
    let all_containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for container in all_containers {
        if [INIT_CONTAINER, SIDECAR_CONTAINER].contains(&container.name.as_str()) {
            return Err(format!(
                "the pod already has a container named {:?}, which vaultkeeper injection needs",
                container.name
            ));
        }
        for mount in container.volume_mounts.iter().flatten() {
            let taken = mount.mount_path.trim_end_matches('/');
            let clash = request
                .secrets
                .iter()
                .map(|secret| secret.volume_path.as_str())
                .chain([request.volume_path.as_str()])
                .find(|path| *path == taken);
            if let Some(path) = clash {
                return Err(format!(
                    "container {:?} already mounts volume {:?} at {path}, where vaultkeeper mounts the secrets; choose another path with vaultkeeper.dev/volume-path",
                    container.name, mount.name
                ));
            }
        }
    }
    Ok(())
}

fn volumes(config: &WebhookConfig) -> [Volume; 3] {
    let memory = |size: &str| EmptyDirVolumeSource {
        medium: Some("Memory".into()),
        size_limit: Some(Quantity(size.to_owned())),
    };
    [
        Volume {
            name: SECRETS_VOLUME.into(),
            empty_dir: Some(memory(&config.secrets_volume_size_limit)),
            ..Volume::default()
        },
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: config.token_audience.clone(),
                        expiration_seconds: Some(config.token_expiration_seconds),
                        path: "token".into(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: RUN_VOLUME.into(),
            empty_dir: Some(memory("1Mi")),
            ..Volume::default()
        },
    ]
}

fn agent_mounts(mount_paths: &BTreeSet<&str>) -> Vec<VolumeMount> {
    let mut mounts: Vec<VolumeMount> = mount_paths
        .iter()
        .map(|path| VolumeMount {
            name: SECRETS_VOLUME.into(),
            mount_path: (*path).to_owned(),
            ..VolumeMount::default()
        })
        .collect();
    mounts.push(VolumeMount {
        name: TOKEN_VOLUME.into(),
        mount_path: TOKEN_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    mounts.push(VolumeMount {
        name: RUN_VOLUME.into(),
        mount_path: RUN_DIR.into(),
        ..VolumeMount::default()
    });
    mounts
}

fn security_context(request: &InjectionRequest, config: &WebhookConfig) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(request.run_as_user.unwrap_or(config.run_as_user)),
        run_as_group: Some(request.run_as_group.unwrap_or(config.run_as_group)),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

fn startup_probe(config: &WebhookConfig) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(
                PROBE_COMMAND
                    .iter()
                    .map(|part| (*part).to_owned())
                    .collect(),
            ),
        }),
        period_seconds: Some(1),
        timeout_seconds: Some(1),
        failure_threshold: Some(config.startup_timeout_seconds.max(1)),
        ..Probe::default()
    }
}

/// Holds the app containers until the first render: the hook fails, and the kubelet restarts the
/// sidecar, when the render takes longer than the startup timeout.
fn wait_for_first_render(config: &WebhookConfig) -> Lifecycle {
    let timeout = format!("{}s", config.startup_timeout_seconds.max(1));
    Lifecycle {
        post_start: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(
                    WAIT_COMMAND
                        .iter()
                        .copied()
                        .chain(["--timeout", timeout.as_str()])
                        .map(str::to_owned)
                        .collect(),
                ),
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    }
}

/// The pod's settings over the webhook's defaults; a request above its limit is refused here
/// with the annotation to change, instead of by the API server after mutation.
fn resources(
    request: &InjectionRequest,
    config: &WebhookConfig,
) -> Result<Option<ResourceRequirements>, String> {
    let pick = |setting: &QuantitySetting, default: &Option<String>| match setting {
        QuantitySetting::Default => default.clone(),
        QuantitySetting::Unset => None,
        QuantitySetting::Value(value) => Some(value.clone()),
    };
    let wanted = &request.resources;
    let cpu = (
        pick(&wanted.requests_cpu, &config.requests_cpu),
        pick(&wanted.limits_cpu, &config.limits_cpu),
    );
    let memory = (
        pick(&wanted.requests_memory, &config.requests_memory),
        pick(&wanted.limits_memory, &config.limits_memory),
    );
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for (resource, (request, limit), hint) in [
        (
            "cpu",
            cpu,
            "vaultkeeper.dev/requests-cpu and vaultkeeper.dev/limits-cpu",
        ),
        (
            "memory",
            memory,
            "vaultkeeper.dev/requests-mem and vaultkeeper.dev/limits-mem",
        ),
    ] {
        if let (Some(request), Some(limit)) = (&request, &limit)
            && quantity_value(request) > quantity_value(limit)
        {
            return Err(format!(
                "the agent's {resource} request {request} would be above its limit {limit}; set both {hint}"
            ));
        }
        if let Some(request) = request {
            requests.insert(resource.to_owned(), Quantity(request));
        }
        if let Some(limit) = limit {
            limits.insert(resource.to_owned(), Quantity(limit));
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return Ok(None);
    }
    Ok(Some(ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..ResourceRequirements::default()
    }))
}

/// The agent configuration for `request`, as built; [`admit`] decides whether it may be injected.
pub fn agent_config(
    request: &InjectionRequest,
    config: &WebhookConfig,
    mode: AgentMode,
) -> AgentConfig {
    AgentConfig {
        version: AGENT_CONFIG_VERSION,
        mode,
        vault_addr: config.vault_addr.clone(),
        vault_ca_pem: config.vault_ca_pem.clone(),
        vault_namespace: request.vault_namespace.clone(),
        auth_path: request
            .auth_path
            .clone()
            .unwrap_or_else(|| config.default_auth_path.clone()),
        role: request.role.clone(),
        token_file: format!("{TOKEN_DIR}/token"),
        ready_file: format!("{RUN_DIR}/ready"),
        volume_path: request.volume_path.clone(),
        secrets: request
            .secrets
            .iter()
            .map(|secret| AgentSecret {
                name: secret.name.clone(),
                path: secret.path.clone(),
                template: secret.template.clone(),
                file: secret.file.clone(),
                mount_path: secret.volume_path.clone(),
                perms: secret.perms.clone(),
            })
            .collect(),
    }
}

/// The JSON for the agent's environment, once the agent's own check ([`AgentConfig::parse`], run
/// on that very JSON) accepts it; otherwise the denial message, naming the annotation to fix.
pub fn admit(agent: &AgentConfig) -> Result<String, String> {
    let json = serde_json::to_string(agent)
        .map_err(|error| format!("failed to encode the agent configuration: {error}"))?;
    const REFUSED: &str = "vaultkeeper cannot inject this pod, its agent would refuse to start";
    match AgentConfig::parse(&json) {
        Ok(_) => Ok(json),
        Err(ConfigError::Invalid(violation)) => Err(match violation.annotations() {
            Some(keys) => format!("{REFUSED}: {violation}; fix {keys}"),
            None => format!(
                "{REFUSED}: {violation}; this comes from the webhook's configuration, not from the pod"
            ),
        }),
        Err(error) => Err(format!("{REFUSED}: {error}")),
    }
}
