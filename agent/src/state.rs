//! What survives a container restart: the Vault token (leases die with the token that created
//! them) and each source's last answer (so a reused lease still has its credential to render).
//! One JSON file, mode 0600, in the agent's own in-memory volume next to the ready file; it holds
//! what the rendered files hold, so it is no more exposed than they are.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::files::write_atomic;
use crate::template::SourceKey;

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "agent-state.json";

/// The persisted state. No `Debug`: it holds a token and secret data.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredState {
    /// The identity the token belongs to ([`crate::config::identity`]).
    pub identity: String,
    pub token: String,
    #[serde(default)]
    pub sources: Vec<StoredSource>,
}

/// One source's last answer, as Vault gave it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredSource {
    pub path: String,
    #[serde(default)]
    pub params: Vec<String>,
    pub answer: Value,
}

impl StoredSource {
    pub fn key(&self) -> SourceKey {
        SourceKey {
            path: self.path.clone(),
            params: self.params.clone(),
        }
    }
}

pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// The stored state, if there is a readable one. A damaged file is as good as none.
pub fn load(path: &Path) -> Result<Option<StoredState>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("ignoring unreadable state file {}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("ignoring state file {}: {e}", path.display())),
    }
}

pub fn save(path: &Path, state: &StoredState) -> io::Result<()> {
    let bytes = serde_json::to_vec(state).map_err(io::Error::other)?;
    write_atomic(path, &bytes, 0o600).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trips_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("vk-agent-state-{}", std::process::id()));
        let path = path_in(&dir);
        assert!(load(&path).unwrap().is_none());
        let state = StoredState {
            identity: "addr|kubernetes|web".into(),
            token: "hvs.x".into(),
            sources: vec![StoredSource {
                path: "database/creds/app".into(),
                params: vec![],
                answer: serde_json::json!({"lease_id": "l1", "data": {"username": "u"}}),
            }],
        };
        save(&path, &state).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.token, "hvs.x");
        assert_eq!(back.sources[0].key(), SourceKey::read("database/creds/app"));
        std::fs::write(&path, b"{broken").unwrap();
        assert!(matches!(load(&path), Err(e) if e.contains("unreadable state file")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
