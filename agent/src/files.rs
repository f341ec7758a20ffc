//! Writing rendered files: atomically (temporary file in the same directory, then rename), with
//! the requested mode, parent directories created, and no write at all when nothing changed.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The file did not exist and was created.
    Created,
    /// The file existed with other contents or mode and was replaced.
    Replaced,
    /// The file already had these contents and mode: not touched.
    Unchanged,
}

/// Writes `contents` to `path` with `mode`, atomically: readers see the old file or the new one,
/// never a part. The file is not touched when it already holds `contents` with `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<Written> {
    let existing = match fs::metadata(path) {
        Ok(meta) => Some(meta.permissions().mode() & 0o7777),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if existing == Some(mode) && fs::read(path).is_ok_and(|old| old == contents) {
        return Ok(Written::Unchanged);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let temp = dir.join(format!(
        ".{}.vk-tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(contents)?;
        // The umask must not weaken or strengthen what the user asked for.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map(|()| match existing {
        Some(_) => Written::Replaced,
        None => Written::Created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("vk-agent-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn writes_atomically_with_mode_and_parents() {
        let dir = temp_dir("write");
        let path = dir.join("a/b/secret.txt");
        assert_eq!(
            write_atomic(&path, b"one", 0o440).unwrap(),
            Written::Created
        );
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(mode_of(&path), 0o440);
        // A read-only file is still replaced (rename, not rewrite in place).
        assert_eq!(
            write_atomic(&path, b"two", 0o440).unwrap(),
            Written::Replaced
        );
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            write_atomic(&path, b"two", 0o440).unwrap(),
            Written::Unchanged
        );
        assert_eq!(
            write_atomic(&path, b"two", 0o600).unwrap(),
            Written::Replaced
        );
        assert_eq!(mode_of(&path), 0o600);
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("secret.txt")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = temp_dir("fail");
        let path = dir.join("f");
        write_atomic(&path, b"old", 0o644).unwrap();
        // A directory where the file should go cannot be renamed over.
        let blocked = dir.join("d");
        fs::create_dir_all(blocked.join("x")).unwrap();
        assert!(write_atomic(&blocked, b"new", 0o644).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(
            fs::read_dir(&dir).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("vk-tmp"))
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
