//! vaultkeeper agent (renders Vault secrets to files inside a pod). Not built yet: this binary only
//! parses its flags and exits. It depends on the `vault` crate and never on kube or k8s-openapi.

use clap::Parser;

/// vaultkeeper agent: logs in to Vault as the pod and renders secrets to files (not implemented yet).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Vault address.
    #[arg(long, env = "VAULTKEEPER_VAULT_ADDR")]
    vault_addr: Option<String>,
}

fn main() -> anyhow::Result<()> {
    vault::install_crypto_provider();
    let args = Args::parse();
    anyhow::bail!(
        "the agent is not implemented yet (Vault address: {:?})",
        args.vault_addr
    )
}
