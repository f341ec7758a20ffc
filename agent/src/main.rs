//! vaultkeeper agent: logs in to Vault with the pod's ServiceAccount token and renders secrets to
//! files, once (`init`) or continuously (`sidecar`). Configured by the JSON the webhook writes into
//! `VAULTKEEPER_AGENT_CONFIG`. Depends on the `vault` crate and never on kube or k8s-openapi: it
//! runs in every injected pod, so size and memory matter (single-threaded runtime, few crates).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

use vaultkeeper_agent::agent::Agent;
use vaultkeeper_agent::config::{AGENT_CONFIG_ENV, AgentConfig, AgentMode};
use vaultkeeper_agent::log::{info, warning};

/// vaultkeeper agent: renders Vault secrets to files inside a pod.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// The agent configuration (JSON, written by the webhook).
    #[arg(
        long,
        env = AGENT_CONFIG_ENV,
        hide_env_values = true,
        global = true
    )]
    config: Option<String>,

    /// How often static secrets are checked for changes: KV v2 by metadata version (one small
    /// request), KV v1 and other static data by reading them. Leased secrets follow their TTL.
    #[arg(long, env = "VAULTKEEPER_AGENT_POLL_INTERVAL", default_value = "5m", value_parser = parse_duration, global = true)]
    poll_interval: Duration,

    /// Timeout of one Vault request.
    #[arg(long, env = "VAULTKEEPER_AGENT_VAULT_TIMEOUT", default_value = "10s", value_parser = parse_duration, global = true)]
    vault_timeout: Duration,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// Render as the configuration's `mode` says (the default).
    Run,
    /// Exit 0 if the ready file exists (the native sidecar's startup probe), 1 otherwise.
    Probe,
    /// Wait until the ready file exists, then exit 0; exit 1 after `--timeout` (the native
    /// sidecar's postStart hook: the kubelet starts the next container once it returns).
    Wait {
        /// How long to wait for the first render.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    vault::install_crypto_provider();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("vaultkeeper-agent: error: {}", message.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let json = args
        .config
        .as_deref()
        .ok_or("no configuration: set VAULTKEEPER_AGENT_CONFIG (or --config)")?;
    let config = AgentConfig::parse(json).map_err(|e| e.to_string())?;
    match args.command {
        Some(Command::Probe) => {
            return if std::path::Path::new(&config.ready_file).exists() {
                Ok(())
            } else {
                Err(format!("not ready: {} does not exist", config.ready_file))
            };
        }
        Some(Command::Wait { timeout }) => return wait_ready(&config.ready_file, timeout),
        Some(Command::Run) | None => {}
    }
    let mut client = vault::VaultClient::new(
        &vault::VaultConfig {
            address: config.vault_addr.clone(),
            ca_pem: config.vault_ca_pem.as_ref().map(|p| p.clone().into_bytes()),
            timeout: args.vault_timeout,
            user_agent: format!("vaultkeeper-agent/{}", env!("CARGO_PKG_VERSION")),
        },
        None,
    )?;
    if let Some(namespace) = &config.vault_namespace {
        client = client.with_namespace(namespace)?;
        info!(
            "working in Vault namespace {:?}",
            client.namespace().unwrap_or("root")
        );
    }
    let mode = config.mode;
    let agent = Agent::new(
        config,
        client,
        args.poll_interval,
        mode == AgentMode::Sidecar,
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("failed to start the runtime: {e}"))?;
    match mode {
        AgentMode::Init => runtime.block_on(run_init(agent)),
        AgentMode::Sidecar => runtime.block_on(run_sidecar(agent, args.poll_interval)),
    }
}

/// Renders every file once. Any failure fails the whole run and writes nothing.
async fn run_init(mut agent: Agent) -> Result<(), String> {
    let started = Instant::now();
    agent.restore().await;
    let errors = agent.pass(true).await;
    agent.finish_init(errors.is_empty()).await;
    if let Some(first) = errors.first() {
        let more = match errors.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        return Err(format!("{first}{more}"));
    }
    info!(
        "rendered every secret in {} ms; exiting",
        started.elapsed().as_millis()
    );
    Ok(())
}

/// Renders, signals readiness, then keeps files, token and leases fresh until SIGTERM.
async fn run_sidecar(mut agent: Agent, poll: Duration) -> Result<(), String> {
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| format!("failed to listen for SIGTERM: {e}"))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| format!("failed to listen for SIGINT: {e}"))?;
    let started = Instant::now();
    info!(
        "starting in sidecar mode (static secrets checked every {}s)",
        poll.as_secs()
    );
    // Shared with the select below: a stop before the first render is reported as a failure.
    let ready = std::cell::Cell::new(false);
    let work = async {
        agent.restore().await;
        loop {
            for error in agent.pass(false).await {
                warning!("{error}");
            }
            if !ready.get() && agent.all_rendered() {
                match agent.mark_ready() {
                    Ok(()) => {
                        ready.set(true);
                        info!(
                            "every secret rendered in {} ms; ready",
                            started.elapsed().as_millis()
                        );
                    }
                    Err(e) => warning!("failed to create the ready file: {e}"),
                }
            }
            let next = agent
                .next_due()
                .max(Instant::now() + Duration::from_millis(100));
            tokio::time::sleep_until(next.into()).await;
        }
    };
    let stopped = tokio::select! {
        () = work => return Ok(()),
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    if ready.get() {
        info!("{stopped}: exiting (files, token and leases are kept for a restart)");
        Ok(())
    } else {
        // A failure, so the kubelet keeps this log's end as the container's last state
        // (FallbackToLogsOnError): `kubectl describe pod` then shows why the first render failed.
        Err(format!(
            "{stopped} before every secret was rendered; the errors above say why"
        ))
    }
}

/// Polls for the ready file: a stat every 10 ms costs nothing next to the render it waits for, and
/// the app container starts within 10 ms of it.
fn wait_ready(ready_file: &str, timeout: Duration) -> Result<(), String> {
    // A timeout past what the clock can add (a bare number of seconds is accepted) never ends.
    let deadline = Instant::now().checked_add(timeout);
    let path = std::path::Path::new(ready_file);
    while !path.exists() {
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(format!(
                "not ready after {}s: {ready_file} does not exist (see the agent's log for why)",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// `90`, `90s`, `5m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    // A bare number of seconds, or the contract's (checked) duration syntax.
    let text = text.trim();
    let duration = text
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .or_else(|| agent_contract::duration::parse(text))
        .ok_or_else(|| format!("{text:?} is not a duration such as 30s, 5m or 1h"))?;
    if duration < Duration::from_secs(1) {
        return Err("the duration must be at least 1s".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("x").is_err());
        // Values past any range are refused, not overflowed (they panicked before).
        assert!(parse_duration("99999999999999999m").is_err());
        assert!(parse_duration("9999999999999999h").is_err());
    }

    #[test]
    fn flags_have_env_and_parse() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let args = Args::try_parse_from(["vaultkeeper-agent", "probe", "--config", "{}"]).unwrap();
        assert_eq!(args.command, Some(Command::Probe));
        assert_eq!(args.poll_interval, Duration::from_secs(300));
        let args = Args::try_parse_from(["vaultkeeper-agent", "wait", "--timeout", "7s"]).unwrap();
        assert_eq!(
            args.command,
            Some(Command::Wait {
                timeout: Duration::from_secs(7)
            })
        );
    }

    #[test]
    fn wait_returns_once_the_ready_file_appears_and_fails_after_the_timeout() {
        let dir = std::env::temp_dir().join(format!("vk-wait-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let ready_name = ready.to_str().unwrap().to_owned();
        let error = wait_ready(&ready_name, Duration::from_millis(50)).unwrap_err();
        // Any duration the flag accepts is a deadline or none, never an overflow.
        let huge = parse_duration(&u64::MAX.to_string()).unwrap();
        std::fs::write(&ready, "ready\n").unwrap();
        wait_ready(&ready_name, huge).unwrap();
        std::fs::remove_file(&ready).unwrap();
        assert!(error.contains("does not exist"), "{error}");
        let writer = {
            let ready = ready.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                std::fs::write(ready, "ready\n").unwrap();
            })
        };
        let started = Instant::now();
        wait_ready(&ready_name, Duration::from_secs(10)).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(100));
        writer.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
