//! The agent's work: hold a Vault token, keep every source fresh, and render a file when the data
//! it shows changed. [`Agent::pass`] does whatever is due now; init mode runs one pass, sidecar
//! mode loops until SIGTERM.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use vault::{AuthToken, VaultClient, VaultError, VaultToken};

use crate::config::{AgentConfig, AgentSecret, identity, state_dir};
use crate::files::{Written, write_atomic};
use crate::log::{info, warning};
use crate::source::{Kind, classify, default_data};
use crate::state::{self, StoredSource, StoredState};
use crate::template::{self, SourceKey};

/// The longest wait between retries of a failing request.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often a token that never expires is looked at again.
const NON_EXPIRING_RECHECK: Duration = Duration::from_secs(3600);

/// A Vault token and what to do with it next.
struct TokenState {
    token: VaultToken,
    /// The TTL a renewal should give; a renewal that gives less means the max TTL is near.
    full_ttl: Duration,
    /// Log in again at the next token step instead of renewing.
    relogin: bool,
}

/// One Vault path (and parameters) that one or more files read.
#[derive(Default)]
struct SourceState {
    answer: Option<Value>,
    kind: Option<Kind>,
    next: Option<Instant>,
    failures: u32,
    /// The policy denies `<mount>/metadata/…` (common with vault-k8s policies): poll by reading.
    metadata_denied: bool,
    /// The lease cannot be renewed further: issue a new credential when `next` comes.
    reissue: bool,
}

/// One file to render.
struct Output {
    spec: AgentSecret,
    sources: Vec<SourceKey>,
    /// Render at the next pass whose sources are all available.
    pending: bool,
    /// Rendered (or found up to date) at least once by this process.
    rendered: bool,
}

pub struct Agent {
    config: AgentConfig,
    client: VaultClient,
    poll: Duration,
    state_path: PathBuf,
    token: Option<TokenState>,
    token_next: Instant,
    token_failures: u32,
    sources: BTreeMap<SourceKey, SourceState>,
    outputs: Vec<Output>,
    /// Save the state file as things change (sidecar), or only after a complete render (init).
    persist_each_change: bool,
    /// Leases this process issued: an init run that fails revokes them.
    issued: Vec<String>,
}

impl Agent {
    /// Checks every template and plans which sources each file reads. A template that does not
    /// parse is a configuration error: fatal.
    pub fn new(
        config: AgentConfig,
        client: VaultClient,
        poll: Duration,
        persist_each_change: bool,
    ) -> Result<Self, String> {
        let mut outputs = Vec::new();
        let mut sources = BTreeMap::new();
        for spec in &config.secrets {
            let keys = match &spec.template {
                Some(text) => template::check(text)
                    .and_then(|()| template::secret_calls(text))
                    .map_err(|e| format!("secret {:?}: template {e}", spec.name))?,
                None => vec![SourceKey::read(&spec.path)],
            };
            for key in &keys {
                sources
                    .entry(key.clone())
                    .or_insert_with(SourceState::default);
            }
            outputs.push(Output {
                spec: spec.clone(),
                sources: keys,
                pending: true,
                rendered: false,
            });
        }
        Ok(Self {
            state_path: state::path_in(&state_dir(&config)),
            config,
            client,
            poll,
            token: None,
            token_next: Instant::now(),
            token_failures: 0,
            sources,
            outputs,
            persist_each_change,
            issued: Vec::new(),
        })
    }

    /// Whether every file has been rendered by this process.
    pub fn all_rendered(&self) -> bool {
        self.outputs.iter().all(|o| o.rendered)
    }

    /// When the next pass has something to do.
    pub fn next_due(&self) -> Instant {
        self.sources
            .values()
            .filter_map(|s| s.next)
            .chain([self.token_next])
            .min()
            .unwrap_or(self.token_next)
    }

    /// Picks up the token and answers a previous run of this pod's agent stored, when the token is
    /// still valid: its leases are then renewed instead of issuing new credentials.
    pub async fn restore(&mut self) {
        let stored = match state::load(&self.state_path) {
            Ok(Some(stored)) => stored,
            Ok(None) => return,
            Err(e) => return warning!("{e}"),
        };
        if stored.identity != identity(&self.config) {
            return info!("stored state belongs to another Vault identity; not reusing it");
        }
        let token = VaultToken::new(stored.token);
        let now = Instant::now();
        match self.client.lookup_self(&token).await {
            Ok(lookup) => {
                info!(
                    "reusing the stored Vault token (accessor {}, {}s left)",
                    lookup.accessor,
                    lookup.ttl.as_secs()
                );
                self.token = Some(TokenState {
                    token,
                    full_ttl: Duration::ZERO,
                    relogin: false,
                });
                self.schedule_token(lookup.ttl, lookup.renewable, now);
            }
            Err(e) if e.is_outage() => {
                warning!("could not check the stored Vault token ({e}); trying it");
                self.token = Some(TokenState {
                    token,
                    full_ttl: Duration::ZERO,
                    relogin: false,
                });
            }
            Err(e) => {
                return info!("the stored Vault token is no longer valid ({e}); logging in");
            }
        }
        for stored in stored.sources {
            let key = stored.key();
            if let Some(source) = self.sources.get_mut(&key) {
                if let Kind::Leased { lease_id, .. } = classify(&key.path, &stored.answer) {
                    info!("reusing lease {lease_id} for {}", key.describe());
                }
                source.kind = Some(classify(&key.path, &stored.answer));
                source.answer = Some(stored.answer);
            }
        }
    }

    /// Does everything due now: token renewal or login, source refreshes, renders. With
    /// `all_or_nothing` (init mode) no file is written unless every source and template succeeded.
    /// Returns one message per failure.
    pub async fn pass(&mut self, all_or_nothing: bool) -> Vec<String> {
        let now = Instant::now();
        let mut errors = Vec::new();
        if let Err(e) = self.token_step(now).await {
            errors.push(e);
        }
        let Some(token) = self.token.as_ref().map(|t| t.token.clone()) else {
            return errors;
        };
        let due: Vec<SourceKey> = self
            .sources
            .iter()
            .filter(|(_, s)| s.next.is_none_or(|next| next <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut changed = BTreeSet::new();
        for key in due {
            let Some(source) = self.sources.get_mut(&key) else {
                continue;
            };
            match refresh(
                &self.client,
                &token,
                &key,
                source,
                self.poll,
                &mut self.issued,
            )
            .await
            {
                Ok(fresh) => {
                    source.failures = 0;
                    if fresh {
                        changed.insert(key);
                    }
                }
                Err(e) => {
                    source.failures += 1;
                    source.next = Some(now + backoff(source.failures));
                    if matches!(e, VaultError::PermissionDenied { .. }) {
                        // Maybe the token itself is gone: check it at the next pass.
                        self.token_next = now;
                    }
                    let verb = if source.answer.is_some() {
                        "refresh"
                    } else {
                        "read"
                    };
                    errors.push(format!("failed to {verb} {}: {e}", key.describe()));
                }
            }
        }
        if !changed.is_empty() {
            self.save_if_persisting();
        }
        if all_or_nothing && !errors.is_empty() {
            return errors;
        }
        let renders = self.render_changed(&changed, &mut errors);
        if all_or_nothing && !errors.is_empty() {
            return errors;
        }
        self.write(renders, all_or_nothing, &mut errors);
        errors
    }

    /// Init mode's end: on success the state is stored for the sidecar or a restarted init
    /// container; on failure the leases issued by this run are revoked.
    pub async fn finish_init(&mut self, ok: bool) {
        if ok {
            self.save();
            return;
        }
        if let Some(token) = self.token.as_ref().map(|t| t.token.clone()) {
            for lease in std::mem::take(&mut self.issued) {
                match self.client.revoke_lease(&token, &lease).await {
                    Ok(()) => info!("revoked lease {lease} of the failed render"),
                    Err(e) => warning!("could not revoke lease {lease}: {e}"),
                }
            }
        }
    }

    /// Creates the ready file (sidecar, once every file is rendered).
    pub fn mark_ready(&self) -> std::io::Result<()> {
        write_atomic(Path::new(&self.config.ready_file), b"ready\n", 0o644).map(|_| ())
    }

    async fn token_step(&mut self, now: Instant) -> Result<(), String> {
        if self.token.is_some() && now < self.token_next {
            return Ok(());
        }
        let result = match &self.token {
            Some(state) if !state.relogin => {
                match self.client.renew_self(&state.token, None).await {
                    Ok(auth) => {
                        self.renewed(auth, now);
                        Ok(())
                    }
                    Err(e) if e.is_outage() => Err(format!("failed to renew the Vault token: {e}")),
                    Err(e) => {
                        info!("the Vault token can no longer be renewed ({e}); logging in again");
                        self.login(now).await
                    }
                }
            }
            _ => self.login(now).await,
        };
        match &result {
            Ok(()) => self.token_failures = 0,
            Err(_) => {
                self.token_failures += 1;
                self.token_next = now + backoff(self.token_failures);
            }
        }
        result
    }

    fn renewed(&mut self, auth: AuthToken, now: Instant) {
        let Some(state) = self.token.as_mut() else {
            return;
        };
        if state.full_ttl.is_zero() {
            state.full_ttl = auth.ttl;
        }
        if auth.ttl + Duration::from_secs(2) < state.full_ttl {
            info!(
                "the Vault token reached its max TTL ({}s left); will log in again before it expires",
                auth.ttl.as_secs()
            );
            state.relogin = true;
        }
        self.token_next = now + (auth.ttl * 2 / 3).max(Duration::from_secs(1));
    }

    /// ` in namespace "team-a"` when the client works in one (a 404 at login may mean the
    /// namespace does not exist), else nothing.
    fn in_namespace(&self) -> String {
        self.client
            .namespace()
            .map(|namespace| format!(" in namespace {namespace:?}"))
            .unwrap_or_default()
    }

    async fn login(&mut self, now: Instant) -> Result<(), String> {
        let path = Path::new(&self.config.token_file);
        let jwt = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "failed to read the ServiceAccount token {}: {e}",
                path.display()
            )
        })?;
        let auth = self
            .client
            .login_kubernetes(self.config.auth_mount(), &self.config.role, jwt.trim())
            .await
            .map_err(|e| {
                format!(
                    "failed to log in to Vault as role {:?}{}: {e}",
                    self.config.role,
                    self.in_namespace()
                )
            })?;
        info!(
            "logged in to Vault as role {:?} at auth/{}{} (token TTL {}s)",
            self.config.role,
            self.config.auth_mount(),
            self.in_namespace(),
            auth.ttl.as_secs()
        );
        let (ttl, renewable) = (auth.ttl, auth.renewable);
        self.token = Some(TokenState {
            token: auth.token,
            full_ttl: ttl,
            relogin: false,
        });
        self.schedule_token(ttl, renewable, now);
        // Leases die with the token that created them: re-issue them under the new one.
        for (key, source) in &mut self.sources {
            if matches!(source.kind, Some(Kind::Leased { .. })) {
                info!(
                    "issuing a new credential for {} under the new token",
                    key.describe()
                );
                source.reissue = true;
                source.next = Some(now);
            }
        }
        self.save_if_persisting();
        Ok(())
    }

    fn schedule_token(&mut self, ttl: Duration, renewable: bool, now: Instant) {
        if ttl.is_zero() {
            self.token_next = now + NON_EXPIRING_RECHECK;
            return;
        }
        if let Some(state) = self.token.as_mut() {
            state.relogin = !renewable;
        }
        self.token_next = now + (ttl * 2 / 3).max(Duration::from_secs(1));
    }

    fn render_changed(
        &mut self,
        changed: &BTreeSet<SourceKey>,
        errors: &mut Vec<String>,
    ) -> Vec<(usize, String)> {
        let mut renders = Vec::new();
        for (i, output) in self.outputs.iter_mut().enumerate() {
            if !output.pending && !output.sources.iter().any(|k| changed.contains(k)) {
                continue;
            }
            let answers: Option<BTreeMap<SourceKey, Value>> = output
                .sources
                .iter()
                .map(|k| {
                    self.sources
                        .get(k)
                        .and_then(|s| s.answer.clone())
                        .map(|a| (k.clone(), a))
                })
                .collect();
            let Some(answers) = answers else {
                output.pending = true;
                continue;
            };
            output.pending = false;
            let rendered = match &output.spec.template {
                Some(text) => template::render(text, &answers).map_err(|e| format!("template {e}")),
                None => answers
                    .iter()
                    .next()
                    .and_then(|(key, answer)| default_data(&classify(&key.path, answer), answer))
                    .map(template::default_format)
                    .ok_or_else(|| "the Vault answer has no key/value data".to_owned()),
            };
            match rendered {
                Ok(text) => renders.push((i, text)),
                Err(e) => errors.push(format!(
                    "secret {:?}: {e}; keeping the previous file",
                    output.spec.name
                )),
            }
        }
        renders
    }

    fn write(
        &mut self,
        renders: Vec<(usize, String)>,
        all_or_nothing: bool,
        errors: &mut Vec<String>,
    ) {
        let mut created = Vec::new();
        for (i, text) in renders {
            let output = &mut self.outputs[i];
            let path = output.spec.destination();
            let mode = output.spec.mode().unwrap_or(0o644);
            match write_atomic(&path, text.as_bytes(), mode) {
                Ok(written) => {
                    if written != Written::Unchanged {
                        info!(
                            "rendered secret {:?} to {} (mode {mode:04o})",
                            output.spec.name,
                            path.display()
                        );
                    }
                    if written == Written::Created {
                        created.push(path);
                    }
                    output.rendered = true;
                }
                Err(e) => {
                    output.pending = true;
                    errors.push(format!(
                        "secret {:?}: failed to write {}: {e}",
                        output.spec.name,
                        path.display()
                    ));
                    if all_or_nothing {
                        for path in created {
                            let _ = std::fs::remove_file(path);
                        }
                        return;
                    }
                }
            }
        }
    }

    fn save_if_persisting(&self) {
        if self.persist_each_change {
            self.save();
        }
    }

    fn save(&self) {
        let Some(token) = &self.token else {
            return;
        };
        let state = StoredState {
            identity: identity(&self.config),
            token: token.token.expose().to_owned(),
            sources: self
                .sources
                .iter()
                .filter_map(|(key, source)| {
                    source.answer.as_ref().map(|answer| StoredSource {
                        path: key.path.clone(),
                        params: key.params.clone(),
                        answer: answer.clone(),
                    })
                })
                .collect(),
        };
        if let Err(e) = state::save(&self.state_path, &state) {
            warning!(
                "failed to store the agent state in {}: {e} (a restart will issue new credentials)",
                self.state_path.display()
            );
        }
    }
}

/// Brings one source up to date. `Ok(true)` when its answer changed (files must be rendered).
async fn refresh(
    client: &VaultClient,
    token: &VaultToken,
    key: &SourceKey,
    source: &mut SourceState,
    poll: Duration,
    issued: &mut Vec<String>,
) -> Result<bool, VaultError> {
    let now = Instant::now();
    match (&source.kind, &source.answer) {
        (
            Some(Kind::Kv2 {
                mount,
                name,
                version,
            }),
            Some(_),
        ) if !source.metadata_denied => match client.kv2_metadata(token, mount, name).await {
            Ok(meta) if meta.current_version == *version => {
                source.next = Some(now + poll);
                return Ok(false);
            }
            Ok(meta) => info!(
                "{} changed (version {version} -> {})",
                key.describe(),
                meta.current_version
            ),
            Err(VaultError::PermissionDenied { .. }) => {
                info!(
                    "no read access to the metadata of {}; polling it by reading the data",
                    key.describe()
                );
                source.metadata_denied = true;
            }
            Err(e) => return Err(e),
        },
        (
            Some(Kind::Leased {
                lease_id,
                duration,
                renewable: true,
            }),
            Some(_),
        ) if !source.reissue => {
            let increment = Duration::from_secs((*duration).max(1));
            match client.renew_lease(token, lease_id, increment).await {
                Ok(renewal) => {
                    let ttl = renewal.lease.duration;
                    if renewal.capped {
                        info!(
                            "renewed lease {lease_id} up to its max TTL ({}s left); a new credential will be issued before it expires",
                            ttl.as_secs()
                        );
                        source.reissue = true;
                    } else {
                        info!("renewed lease {lease_id} ({}s)", ttl.as_secs());
                    }
                    source.next = Some(now + (ttl * 2 / 3).max(Duration::from_secs(1)));
                    return Ok(false);
                }
                Err(e) if e.is_outage() => return Err(e),
                Err(e) => info!(
                    "lease {lease_id} can no longer be renewed ({e}); issuing a new credential"
                ),
            }
        }
        _ => {}
    }
    let answer = if key.params.is_empty() {
        client.read_raw(token, &key.path).await?
    } else {
        let body: serde_json::Map<String, Value> = key
            .params
            .iter()
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), Value::String(v.to_owned()))
            })
            .collect();
        client
            .write_raw(token, &key.path, &Value::Object(body))
            .await?
    };
    let kind = classify(&key.path, &answer);
    let changed = match (&kind, &source.answer) {
        (Kind::Leased { .. }, _) | (_, None) => true,
        (_, Some(old)) => old.get("data") != answer.get("data"),
    };
    source.reissue = false;
    source.next = Some(match &kind {
        Kind::Leased {
            lease_id,
            duration,
            renewable,
        } if *duration > 0 => {
            info!(
                "issued a credential for {} (lease {lease_id}, {duration}s{})",
                key.describe(),
                if *renewable { "" } else { ", not renewable" }
            );
            issued.push(lease_id.clone());
            source.reissue = !renewable;
            now + (Duration::from_secs(*duration) * 2 / 3).max(Duration::from_secs(1))
        }
        Kind::Kv2 { version, .. } => {
            if changed {
                info!("read {} (KV v2, version {version})", key.describe());
            }
            now + poll
        }
        _ => {
            if changed {
                info!("read {}", key.describe());
            }
            now + poll
        }
    });
    source.kind = Some(kind);
    source.answer = Some(answer);
    Ok(changed)
}

/// Exponential backoff from 1 s to [`MAX_BACKOFF`], with up to 20% jitter so that pods restarted
/// together do not retry together.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1 << failures.saturating_sub(1).min(6)).min(MAX_BACKOFF);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base + base * (nanos % 200) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_rendering_into(dir: &std::path::Path) -> Agent {
        vault::install_crypto_provider();
        let config = AgentConfig::parse(
            &serde_json::json!({
                "version": 1, "mode": "sidecar", "vaultAddr": "http://127.0.0.1:1",
                "authPath": "auth/kubernetes", "role": "web", "tokenFile": "/nonexistent",
                "readyFile": dir.join("run/ready"),
                "secrets": [
                    {"name": "cfg", "path": "kv/web", "file": "cfg.env", "mountPath": dir, "perms": "0400",
                     "template": "{{ with secret \"kv/web\" }}KEY={{ .Data.key | base64Decode }}{{ end }}"},
                    {"name": "plain", "path": "kv/web", "file": "plain", "mountPath": dir}
                ]
            })
            .to_string(),
        )
        .unwrap();
        let client = VaultClient::new(
            &vault::VaultConfig {
                address: config.vault_addr.clone(),
                ca_pem: None,
                timeout: Duration::from_secs(1),
                user_agent: String::new(),
            },
            None,
        )
        .unwrap();
        Agent::new(config, client, Duration::from_secs(60), true).unwrap()
    }

    fn set_answer(agent: &mut Agent, key: &str) -> BTreeSet<SourceKey> {
        let answer = serde_json::json!({"lease_id": "", "data": {"key": key}});
        let source = agent.sources.get_mut(&SourceKey::read("kv/web")).unwrap();
        source.kind = Some(classify("kv/web", &answer));
        source.answer = Some(answer);
        [SourceKey::read("kv/web")].into_iter().collect()
    }

    #[test]
    fn a_template_error_keeps_the_previous_file() {
        let dir = std::env::temp_dir().join(format!("vk-agent-render-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut agent = agent_rendering_into(&dir);
        assert_eq!(agent.sources.len(), 1, "both files read one source");
        let mut errors = Vec::new();
        let changed = set_answer(&mut agent, "aGVsbG8=");
        let renders = agent.render_changed(&changed, &mut errors);
        agent.write(renders, false, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(agent.all_rendered());
        assert_eq!(
            std::fs::read_to_string(dir.join("cfg.env")).unwrap(),
            "KEY=hello"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("plain")).unwrap(),
            "key: aGVsbG8=\n"
        );

        let changed = set_answer(&mut agent, "not base64 canary!");
        let renders = agent.render_changed(&changed, &mut errors);
        agent.write(renders, false, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("secret \"cfg\": template failed to render"),
            "{errors:?}"
        );
        assert!(
            errors[0].ends_with("keeping the previous file"),
            "{errors:?}"
        );
        assert!(!errors[0].contains("canary"), "{errors:?}");
        assert_eq!(
            std::fs::read_to_string(dir.join("cfg.env")).unwrap(),
            "KEY=hello"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("plain")).unwrap(),
            "key: not base64 canary!\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn backoff_grows_to_a_cap() {
        assert!(backoff(1) >= Duration::from_secs(1) && backoff(1) < Duration::from_millis(1300));
        assert!(backoff(3) >= Duration::from_secs(4));
        assert!(backoff(50) >= MAX_BACKOFF && backoff(50) <= MAX_BACKOFF * 6 / 5);
    }
}
