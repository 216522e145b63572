//! Atomic file replacement: a reader sees the old file or the new one, never
//! a partial write, and a crash leaves at most a stray temporary file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Temporary files modified more recently are kept even when their process
/// seems dead: a writer in another PID namespace (another container sharing
/// the directory) is invisible to kill(2), and a write takes far less.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// Replaces `path` with `contents`, atomically and durably.
///
/// Steps: create a temporary file in the same directory with
/// `O_EXCL | O_NOFOLLOW` and `mode`, write, fsync, rename over `path`, fsync
/// the directory. A symlink or a non-regular file at `path` is an error of
/// kind `InvalidInput`: the link is never followed or replaced.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;

    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the target is a symlink; refusing to replace it"));
        }
        Ok(metadata) if !metadata.is_file() => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the target is not a regular file"));
        }
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }

    let counter = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp_name = format!(".{}.tmp-{}-{counter}", file_name.to_string_lossy(), std::process::id());
    let temp_path = directory.join(temp_name);

    let result = write_temp(&temp_path, contents, mode).and_then(|()| fs::rename(&temp_path, path));
    if let Err(error) = result {
        let _ = fs::remove_file(&temp_path);
        return Err(error);
    }
    File::open(directory)?.sync_all()
}

/// Removes temporary files that a killed process left next to `path`
/// (`.NAME.tmp-PID-N` whose process no longer exists, unchanged for
/// [`STALE_AFTER`]). Files of running processes are left alone. Each path is
/// swept once per process, so reloads do not scan its directory again.
/// Failures are ignored, because this is housekeeping.
pub fn remove_stale_temp_files(path: &Path) {
    static SWEPT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let first_sweep = SWEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get_or_insert_default().insert(path.to_path_buf());
    if first_sweep {
        sweep_temp_files(path, SystemTime::now());
    }
}

fn sweep_temp_files(path: &Path, now: SystemTime) {
    let (Some(directory), Some(file_name)) = (path.parent(), path.file_name()) else { return };
    let directory = if directory.as_os_str().is_empty() { Path::new(".") } else { directory };
    let prefix = format!(".{}.tmp-", file_name.to_string_lossy());
    let Ok(entries) = fs::read_dir(directory) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|rest| rest.split('-').next()).and_then(|pid| pid.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        // SAFETY: kill(2) with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        let Ok(metadata) = entry.metadata() else { continue };
        let age = metadata.modified().ok().and_then(|modified| now.duration_since(modified).ok());
        if !alive && metadata.is_file() && age.is_some_and(|age| age >= STALE_AFTER) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn write_temp(temp_path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(temp_path)?;
    // The umask may have removed bits from `mode`; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_file_with_mode() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("token");
        write_atomic(&path, b"first", 0o600).unwrap();
        write_atomic(&path, b"second", 0o640).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        let names: Vec<_> = fs::read_dir(directory.path()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
    }

    #[test]
    fn removes_temp_files_of_dead_processes() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("token");
        // Pid 0x7fff_fff0 is far above any pid Linux hands out.
        let stale = directory.path().join(".token.tmp-2147483632-0");
        let live = directory.path().join(format!(".token.tmp-{}-0", std::process::id()));
        let other = directory.path().join(".other.tmp-2147483632-0");
        for file in [&stale, &live, &other] {
            fs::write(file, b"x").unwrap();
        }
        // The sweep runs as if a minute had passed since the files were written.
        sweep_temp_files(&path, SystemTime::now() + STALE_AFTER);
        assert!(!stale.exists(), "a dead process's temp file is removed");
        assert!(live.exists(), "a running process's temp file is kept");
        assert!(other.exists(), "another target's temp file is kept");
    }

    #[test]
    fn keeps_recent_temp_files() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("token");
        // The writer may run in another PID namespace, where its pid means nothing here.
        let recent = directory.path().join(".token.tmp-2147483632-0");
        fs::write(&recent, b"x").unwrap();
        remove_stale_temp_files(&path);
        assert!(recent.exists(), "a temp file written moments ago is kept");
    }

    #[test]
    fn refuses_symlink_target() {
        let directory = tempfile::tempdir().unwrap();
        let victim = directory.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let link = directory.path().join("token");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let error = write_atomic(&link, b"new", 0o600).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    }
}
