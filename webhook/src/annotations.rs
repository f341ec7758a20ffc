//! Pod annotations → a typed injection request: the native `vaultkeeper.dev/` names and the subset
//! of the Vault Agent Injector's `vault.hashicorp.com/` names that vaultkeeper honours, so a
//! manifest written for vault-k8s works unchanged.
//!
//! The names themselves, with their defaults, are listed once in `agent_contract::annotations`
//! (shared with the agent's configuration errors); this module owns how they are read.
//!
//! When both spellings of one setting are present the native one wins. Booleans accept what Go's
//! `strconv.ParseBool` accepts (`true`, `1`, `t`, `false`, `0`, …) since vault-k8s users write
//! those. An empty resource value removes that request or limit. Nothing is validated until a pod
//! opts in, so a pod that does not ask for injection is never denied because of these annotations.
//! Once it opts in: an unknown `vaultkeeper.dev/` name is an error (a typo must not silently
//! drop a secret), so is any other `vault.hashicorp.com/agent-inject-…` name (those change what
//! is rendered, e.g. `agent-inject-command-<name>`); the remaining `vault.hashicorp.com/` names
//! (`agent-image`, `service`, `tls-*`, caching, logging) are ignored because vaultkeeper takes
//! them from its own configuration.

use std::collections::BTreeMap;
use std::fmt;

pub use agent_contract::annotations::{
    COMPAT_PREFIX, DEFAULT_VOLUME_PATH, INJECTED, NATIVE_PREFIX, STATUS_ANNOTATION,
};
use agent_contract::annotations::{PodSetting, SecretSetting};

/// `vaultkeeper.dev/` annotations that other vaultkeeper components own; the webhook ignores them.
const FOREIGN_NATIVE: &[&str] = &["restarted-for"];

/// What a pod's annotations ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Annotations {
    /// The pod did not opt in (no inject annotation, or it is false).
    NotRequested,
    /// The status annotation says the pod was injected already.
    AlreadyInjected,
    /// The pod opted in; everything it asked for is valid.
    Inject(Box<InjectionRequest>),
}

/// A validated injection request. `None` means "use the webhook's default".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectionRequest {
    pub role: String,
    /// Normalised to `auth/<mount>` without surrounding slashes.
    pub auth_path: Option<String>,
    pub vault_namespace: Option<String>,
    /// Absolute, normalised path where the secrets volume is mounted.
    pub volume_path: String,
    /// Sorted by name.
    pub secrets: Vec<SecretRequest>,
    pub pre_populate: bool,
    pub pre_populate_only: bool,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub resources: ResourceOverrides,
}

/// One file the agent renders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRequest {
    pub name: String,
    /// The Vault path to read.
    pub path: String,
    pub template: Option<String>,
    /// Relative to the mount path; defaults to the name.
    pub file: String,
    /// Four octal digits, e.g. `0440`.
    pub perms: Option<String>,
    /// Where this secret's volume mount is: absolute, normalised; the pod's volume path unless
    /// the secret has its own. The file is written to `<volume_path>/<file>`.
    pub volume_path: String,
}

/// Resource settings requested by annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceOverrides {
    pub requests_cpu: QuantitySetting,
    pub requests_memory: QuantitySetting,
    pub limits_cpu: QuantitySetting,
    pub limits_memory: QuantitySetting,
}

/// One resource quantity as the annotations set it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum QuantitySetting {
    /// Not annotated: the webhook's default applies.
    #[default]
    Default,
    /// Annotated with an empty value: no request/limit at all.
    Unset,
    /// A valid Kubernetes quantity.
    Value(String),
}

/// One problem with one annotation. Messages name the annotation as the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error("{key}: {value:?} is not a boolean (use \"true\" or \"false\")")]
    NotABool { key: String, value: String },
    #[error("a role is required: set vaultkeeper.dev/role (or vault.hashicorp.com/role)")]
    MissingRole,
    #[error(
        "no secret requested: add vaultkeeper.dev/secret-<name> (or vault.hashicorp.com/agent-inject-secret-<name>) with a Vault path"
    )]
    NoSecrets,
    #[error("{key}: the Vault path is empty")]
    EmptyPath { key: String },
    #[error("{key}: there is no secret named {name:?} (add {NATIVE_PREFIX}secret-{name})")]
    NoMatchingSecret { key: String, name: String },
    #[error("{key}: {value:?} is not a file mode (use three octal digits such as \"0440\")")]
    BadPerms { key: String, value: String },
    #[error("{key}: {value:?} must be a relative path without \"..\" inside the secrets volume")]
    BadFile { key: String, value: String },
    #[error("{key}: {value:?} must be an absolute path without \"..\" (and not \"/\")")]
    BadVolumePath { key: String, value: String },
    #[error("{key}: {value:?} is not a Kubernetes quantity (e.g. \"50m\", \"64Mi\")")]
    BadQuantity { key: String, value: String },
    #[error("{key}: {value:?} is not a user or group id (a non-negative integer)")]
    BadId { key: String, value: String },
    #[error("{key}: the agent never runs as root; choose a non-zero user id")]
    RootUser { key: String },
    #[error("{key}: the auth path is empty")]
    EmptyAuthPath { key: String },
    #[error("{key} is not a vaultkeeper annotation{hint}")]
    Unknown { key: String, hint: String },
    #[error("{key} is not supported by vaultkeeper")]
    Unsupported { key: String },
    #[error("{request_key}={request} is more than {limit_key}={limit}")]
    RequestAboveLimit {
        request_key: String,
        request: String,
        limit_key: String,
        limit: String,
    },
    #[error(
        "pre-populate-only is true but pre-populate is false: an init-only agent always pre-populates"
    )]
    ConflictingModes,
    #[error("secrets {first:?} and {second:?} would both be written to {destination}")]
    SameDestination {
        first: String,
        second: String,
        destination: String,
    },
}

/// Every problem found in a pod's annotations (never empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnotationErrors(pub Vec<AnnotationError>);

impl fmt::Display for AnnotationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid vaultkeeper injection annotations: ")?;
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for AnnotationErrors {}

/// vault-k8s names that start like a supported per-secret prefix but mean something else.
const COMPAT_UNSUPPORTED_PREFIXES: &[&str] = &["agent-inject-template-file-"];

/// Which spelling an annotation used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Compat,
    Native,
}

/// An annotation value and the key it came from.
#[derive(Clone, Debug)]
struct Entry<'a> {
    origin: Origin,
    key: &'a str,
    value: &'a str,
}

/// Sorted annotations by meaning; the native spelling replaces the compat one.
#[derive(Default)]
struct Sorted<'a> {
    pod: BTreeMap<PodSetting, Entry<'a>>,
    secrets: BTreeMap<(&'a str, SecretSetting), Entry<'a>>,
    errors: Vec<AnnotationError>,
}

impl<'a> Sorted<'a> {
    fn sort(annotations: &'a BTreeMap<String, String>) -> Self {
        let mut sorted = Sorted::default();
        for (key, value) in annotations {
            let (origin, name) = if let Some(name) = key.strip_prefix(NATIVE_PREFIX) {
                (Origin::Native, name)
            } else if let Some(name) = key.strip_prefix(COMPAT_PREFIX) {
                (Origin::Compat, name)
            } else {
                continue;
            };
            let entry = Entry { origin, key, value };
            if let Some(setting) = PodSetting::ALL.into_iter().find(|setting| {
                name == match origin {
                    Origin::Compat => setting.compat_name(),
                    Origin::Native => setting.native_name(),
                }
            }) {
                insert(&mut sorted.pod, setting, entry);
                continue;
            }
            let unsupported = origin == Origin::Compat
                && COMPAT_UNSUPPORTED_PREFIXES
                    .iter()
                    .any(|prefix| name.starts_with(prefix));
            let per_secret = SecretSetting::ALL.into_iter().find_map(|setting| {
                let prefix = match origin {
                    Origin::Compat => setting.compat_prefix(),
                    Origin::Native => setting.native_prefix(),
                };
                name.strip_prefix(prefix)
                    .filter(|secret| !secret.is_empty())
                    .map(|secret| (secret, setting))
            });
            match (per_secret, origin) {
                (Some(slot), _) if !unsupported => insert(&mut sorted.secrets, slot, entry),
                (_, Origin::Native) if FOREIGN_NATIVE.contains(&name) => {}
                (_, Origin::Native) => sorted.errors.push(AnnotationError::Unknown {
                    key: key.clone(),
                    hint: suggestion(name),
                }),
                (_, Origin::Compat) if name.starts_with("agent-inject-") => sorted
                    .errors
                    .push(AnnotationError::Unsupported { key: key.clone() }),
                (_, Origin::Compat) => {}
            }
        }
        sorted
    }

    fn get(&self, key: PodSetting) -> Option<&Entry<'a>> {
        self.pod.get(&key)
    }
}

/// Native beats compat; among equals the first (sorted) key stays.
fn insert<'a, K: Ord>(map: &mut BTreeMap<K, Entry<'a>>, key: K, entry: Entry<'a>) {
    match map.get(&key) {
        Some(existing) if existing.origin == Origin::Native => {}
        Some(_) if entry.origin == Origin::Compat => {}
        _ => {
            map.insert(key, entry);
        }
    }
}

/// A hint for a mistyped native name: the vault-k8s spelling maps to a native one.
fn suggestion(name: &str) -> String {
    let native = PodSetting::ALL
        .into_iter()
        .find(|setting| setting.compat_name() == name)
        .map(|setting| setting.native_name().to_owned())
        .or_else(|| {
            SecretSetting::ALL.into_iter().find_map(|setting| {
                name.strip_prefix(setting.compat_prefix())
                    .map(|secret| format!("{}{secret}", setting.native_prefix()))
            })
        });
    match native {
        Some(native) => format!(" (did you mean {NATIVE_PREFIX}{native}?)"),
        None => String::new(),
    }
}

/// Reads a pod's annotations. Pure; see the module docs for the vocabulary.
pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Annotations, AnnotationErrors> {
    let mut sorted = Sorted::sort(annotations);
    let mut errors = std::mem::take(&mut sorted.errors);

    if let Some(status) = sorted.get(PodSetting::Status)
        && status.value == INJECTED
    {
        return Ok(Annotations::AlreadyInjected);
    }
    // The compat status annotation counts even when a native one (with another value) exists.
    if annotations
        .get(&format!(
            "{COMPAT_PREFIX}{}",
            PodSetting::Status.compat_name()
        ))
        .is_some_and(|value| value == INJECTED)
    {
        return Ok(Annotations::AlreadyInjected);
    }
    match sorted.get(PodSetting::Inject).map(parse_bool) {
        None | Some(Ok(false)) => return Ok(Annotations::NotRequested),
        Some(Err(error)) => return Err(AnnotationErrors(vec![error])),
        Some(Ok(true)) => {}
    }

    let role = match sorted.get(PodSetting::Role) {
        Some(entry) if !entry.value.trim().is_empty() => entry.value.trim().to_owned(),
        _ => {
            errors.push(AnnotationError::MissingRole);
            String::new()
        }
    };
    let auth_path = sorted
        .get(PodSetting::AuthPath)
        .and_then(|entry| record(&mut errors, normalise_auth_path(entry)));
    let vault_namespace = sorted
        .get(PodSetting::VaultNamespace)
        .map(|entry| entry.value.trim().to_owned())
        .filter(|namespace| !namespace.is_empty());
    let volume_path = sorted
        .get(PodSetting::VolumePath)
        .and_then(|entry| record(&mut errors, normalise_volume_path(entry)))
        .unwrap_or_else(|| DEFAULT_VOLUME_PATH.to_owned());
    let mut flag = |key: PodSetting, default: bool| match sorted.get(key) {
        None => default,
        Some(entry) => record(&mut errors, parse_bool(entry)).unwrap_or(default),
    };
    let pre_populate = flag(PodSetting::PrePopulate, true);
    let pre_populate_only = flag(PodSetting::PrePopulateOnly, false);
    if pre_populate_only && sorted.get(PodSetting::PrePopulate).is_some() && !pre_populate {
        errors.push(AnnotationError::ConflictingModes);
    }
    let run_as_user = sorted
        .get(PodSetting::RunAsUser)
        .and_then(|entry| record(&mut errors, parse_id(entry, true)));
    let run_as_group = sorted
        .get(PodSetting::RunAsGroup)
        .and_then(|entry| record(&mut errors, parse_id(entry, false)));
    let resources = resources(&sorted, &mut errors);
    let secrets = secrets(&sorted, &volume_path, &mut errors);

    if errors.is_empty() {
        Ok(Annotations::Inject(Box::new(InjectionRequest {
            role,
            auth_path,
            vault_namespace,
            volume_path,
            secrets,
            pre_populate,
            pre_populate_only,
            run_as_user,
            run_as_group,
            resources,
        })))
    } else {
        Err(AnnotationErrors(errors))
    }
}

fn record<T>(errors: &mut Vec<AnnotationError>, result: Result<T, AnnotationError>) -> Option<T> {
    result.map_err(|error| errors.push(error)).ok()
}

/// Accepts what Go's `strconv.ParseBool` accepts.
fn parse_bool(entry: &Entry<'_>) -> Result<bool, AnnotationError> {
    match entry.value.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(AnnotationError::NotABool {
            key: entry.key.to_owned(),
            value: entry.value.to_owned(),
        }),
    }
}

fn parse_id(entry: &Entry<'_>, is_user: bool) -> Result<i64, AnnotationError> {
    let id: i64 = entry
        .value
        .trim()
        .parse()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| AnnotationError::BadId {
            key: entry.key.to_owned(),
            value: entry.value.to_owned(),
        })?;
    if is_user && id == 0 {
        return Err(AnnotationError::RootUser {
            key: entry.key.to_owned(),
        });
    }
    Ok(id)
}

/// `kubernetes`, `/auth/kubernetes/` and `auth/kubernetes` all mean `auth/kubernetes`.
fn normalise_auth_path(entry: &Entry<'_>) -> Result<String, AnnotationError> {
    let trimmed = entry.value.trim().trim_matches('/');
    let mount = trimmed.strip_prefix("auth/").unwrap_or(trimmed);
    if mount.is_empty() || mount.trim_matches('/').is_empty() {
        return Err(AnnotationError::EmptyAuthPath {
            key: entry.key.to_owned(),
        });
    }
    Ok(format!("auth/{mount}"))
}

fn normalise_volume_path(entry: &Entry<'_>) -> Result<String, AnnotationError> {
    let value = entry.value.trim();
    let bad = || AnnotationError::BadVolumePath {
        key: entry.key.to_owned(),
        value: entry.value.to_owned(),
    };
    if !value.starts_with('/') {
        return Err(bad());
    }
    let parts = path_parts(value);
    if parts.is_empty() || parts.contains(&"..") {
        return Err(bad());
    }
    Ok(format!("/{}", parts.join("/")))
}

fn normalise_file(entry: &Entry<'_>) -> Result<String, AnnotationError> {
    let value = entry.value.trim();
    let parts = path_parts(value);
    if value.starts_with('/') || parts.is_empty() || parts.contains(&"..") {
        return Err(AnnotationError::BadFile {
            key: entry.key.to_owned(),
            value: entry.value.to_owned(),
        });
    }
    Ok(parts.join("/"))
}

/// The components of a path without empty and `.` ones.
fn path_parts(path: &str) -> Vec<&str> {
    path.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect()
}

/// Three octal digits with an optional leading zero, returned as four digits (`440` → `0440`).
fn normalise_perms(entry: &Entry<'_>) -> Result<String, AnnotationError> {
    let value = entry.value.trim();
    let digits = value
        .strip_prefix('0')
        .filter(|d| d.len() == 3)
        .unwrap_or(value);
    if digits.len() == 3 && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        Ok(format!("0{digits}"))
    } else {
        Err(AnnotationError::BadPerms {
            key: entry.key.to_owned(),
            value: entry.value.to_owned(),
        })
    }
}

fn resources(sorted: &Sorted<'_>, errors: &mut Vec<AnnotationError>) -> ResourceOverrides {
    let mut setting = |key: PodSetting| match sorted.get(key) {
        None => QuantitySetting::Default,
        Some(entry) if entry.value.trim().is_empty() => QuantitySetting::Unset,
        Some(entry) => match quantity_value(entry.value.trim()) {
            Some(_) => QuantitySetting::Value(entry.value.trim().to_owned()),
            None => {
                errors.push(AnnotationError::BadQuantity {
                    key: entry.key.to_owned(),
                    value: entry.value.to_owned(),
                });
                QuantitySetting::Default
            }
        },
    };
    let overrides = ResourceOverrides {
        requests_cpu: setting(PodSetting::RequestsCpu),
        requests_memory: setting(PodSetting::RequestsMemory),
        limits_cpu: setting(PodSetting::LimitsCpu),
        limits_memory: setting(PodSetting::LimitsMemory),
    };
    for (request_key, limit_key, request, limit) in [
        (
            PodSetting::RequestsCpu,
            PodSetting::LimitsCpu,
            &overrides.requests_cpu,
            &overrides.limits_cpu,
        ),
        (
            PodSetting::RequestsMemory,
            PodSetting::LimitsMemory,
            &overrides.requests_memory,
            &overrides.limits_memory,
        ),
    ] {
        if let (QuantitySetting::Value(request), QuantitySetting::Value(limit)) = (request, limit)
            && quantity_value(request) > quantity_value(limit)
        {
            errors.push(AnnotationError::RequestAboveLimit {
                request_key: sorted.pod[&request_key].key.to_owned(),
                request: request.clone(),
                limit_key: sorted.pod[&limit_key].key.to_owned(),
                limit: limit.clone(),
            });
        }
    }
    overrides
}

/// The numeric value of a Kubernetes quantity (`500m`, `64Mi`, `1e3`, `0.5`), or `None` when the
/// text is not one. Negative quantities are rejected: no resource can be negative. Precision is
/// that of `f64`, enough to compare a request with a limit.
pub fn quantity_value(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let unsigned = number.strip_prefix('+').unwrap_or(number);
    let valid_number = !unsigned.is_empty()
        && unsigned.bytes().filter(|b| *b == b'.').count() <= 1
        && unsigned.bytes().any(|b| b.is_ascii_digit())
        && unsigned.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if !valid_number {
        return None;
    }
    let base: f64 = unsigned.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let digits = exponent.strip_prefix(['e', 'E'])?;
            let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(digits.parse().ok()?)
        }
    };
    Some(base * multiplier)
}

fn secrets(
    sorted: &Sorted<'_>,
    pod_volume_path: &str,
    errors: &mut Vec<AnnotationError>,
) -> Vec<SecretRequest> {
    let mut secrets = Vec::new();
    for ((name, key), entry) in &sorted.secrets {
        if *key == SecretSetting::Path {
            let path = entry.value.trim().trim_matches('/');
            if path.is_empty() {
                errors.push(AnnotationError::EmptyPath {
                    key: entry.key.to_owned(),
                });
            }
            let setting = |key: SecretSetting| sorted.secrets.get(&(*name, key));
            secrets.push(SecretRequest {
                name: (*name).to_owned(),
                path: path.to_owned(),
                template: setting(SecretSetting::Template).map(|entry| entry.value.to_owned()),
                // The name is the default file, so it must be a file name too (the API server
                // refuses such annotation keys, but only after admission).
                file: record(
                    errors,
                    normalise_file(setting(SecretSetting::File).unwrap_or(&Entry {
                        value: name,
                        ..entry.clone()
                    })),
                )
                .unwrap_or_default(),
                perms: setting(SecretSetting::Perms)
                    .and_then(|entry| record(errors, normalise_perms(entry))),
                volume_path: setting(SecretSetting::VolumePath)
                    .and_then(|entry| record(errors, normalise_volume_path(entry)))
                    .unwrap_or_else(|| pod_volume_path.to_owned()),
            });
        } else if !sorted.secrets.contains_key(&(*name, SecretSetting::Path)) {
            errors.push(AnnotationError::NoMatchingSecret {
                key: entry.key.to_owned(),
                name: (*name).to_owned(),
            });
        }
    }
    if secrets.is_empty() && errors.is_empty() {
        errors.push(AnnotationError::NoSecrets);
    }
    let mut destinations = BTreeMap::new();
    for secret in &secrets {
        let destination = format!("{}/{}", secret.volume_path, secret.file);
        if let Some(first) = destinations.insert(destination.clone(), &secret.name) {
            errors.push(AnnotationError::SameDestination {
                first: first.clone(),
                second: secret.name.clone(),
                destination,
            });
        }
    }
    secrets
}
