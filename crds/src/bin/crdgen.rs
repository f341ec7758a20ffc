//! Prints the CRD YAML generated from the Rust types, or checks a file for drift.
//!
//! `crdgen` prints; `crdgen --check FILE...` exits 1 when a file differs from the generated text.

use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = vaultkeeper_crds::crds_yaml();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        None => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Some((flag, files)) if flag == "--check" && !files.is_empty() => {
            let mut drifted = false;
            for file in files {
                let on_disk = std::fs::read_to_string(file).unwrap_or_default();
                if on_disk != yaml {
                    eprintln!(
                        "{file} is out of date: run `cargo run -p vaultkeeper-crds --bin crdgen > {file}`"
                    );
                    drifted = true;
                }
            }
            if drifted {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            eprintln!("usage: crdgen [--check FILE...]");
            ExitCode::from(2)
        }
    }
}
