//! Prints the CRD YAML generated from the Rust types, writes the Helm chart's CRD templates, or
//! checks both for drift.
//!
//! - `crdgen` prints `manifests/crds.yaml`'s text;
//! - `crdgen --chart DIR` writes the chart's CRD templates into DIR (one file per CRD);
//! - `crdgen --check FILE [--chart DIR]` exits 1 when FILE (or a template in DIR, or a file
//!   there that no CRD writes) differs from the generated text.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] => {
            print!("{}", vaultkeeper_crds::crds_yaml());
            ExitCode::SUCCESS
        }
        ["--chart", dir] => match write_chart(Path::new(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("failed to write the chart's CRD templates into {dir}: {e}");
                ExitCode::FAILURE
            }
        },
        ["--check", file, rest @ ..] => {
            let mut drifted = check_file(file);
            match rest {
                [] => {}
                ["--chart", dir] => drifted |= check_chart(Path::new(dir)),
                _ => return usage(),
            }
            if drifted {
                eprintln!("regenerate with `make crds`");
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: crdgen [--chart DIR | --check FILE [--chart DIR]]");
    ExitCode::from(2)
}

fn check_file(file: &str) -> bool {
    let on_disk = std::fs::read_to_string(file).unwrap_or_default();
    let drifted = on_disk != vaultkeeper_crds::crds_yaml();
    if drifted {
        eprintln!("{file} is out of date");
    }
    drifted
}

fn write_chart(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        std::fs::remove_file(entry?.path())?;
    }
    for (name, text) in vaultkeeper_crds::chart_crd_templates() {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

fn check_chart(dir: &Path) -> bool {
    let templates = vaultkeeper_crds::chart_crd_templates();
    let mut drifted = false;
    for (name, text) in &templates {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).unwrap_or_default() != *text {
            eprintln!("{} is out of date", path.display());
            drifted = true;
        }
    }
    let known: Vec<&str> = templates.iter().map(|(name, _)| name.as_str()).collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !known.contains(&name.as_str()) {
            eprintln!("{} is not generated from a CRD", entry.path().display());
            drifted = true;
        }
    }
    drifted
}
