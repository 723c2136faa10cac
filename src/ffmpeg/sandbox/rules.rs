//! The Landlock layer's rules, and the sandbox user: pure parts, and the ruleset built
//! in the parent (opening the paths allocates, so the child only enforces it).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access as _, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetError, Scope, ABI,
};

/// What FFmpeg reads to start and run, read-only: its programs and libraries, the
/// loader's cache, fonts for `drawtext`, the null and random devices, the CPU count.
/// Paths missing on a system are skipped.
pub const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/fonts",
    "/var/cache/fontconfig",
    "/dev/urandom",
    "/sys/devices/system/cpu",
];

/// Written as well as read: FFmpeg opens `/dev/null` both ways.
pub const SYSTEM_WRITE: &[&str] = &["/dev/null"];

/// The newest Landlock ABI this code knows; an older kernel enforces what it has.
const ABI_KNOWN: ABI = ABI::V6;

/// The paths one run may use besides [`SYSTEM_READ`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Access {
    /// Read-only: a source, an asset, a file to probe.
    pub read: Vec<PathBuf>,
    /// Read and write: the attempt's scratch directory.
    pub write: Vec<PathBuf>,
}

impl Access {
    /// Reading and writing under `dir` (an attempt's scratch directory).
    pub fn scratch(dir: &Path) -> Access {
        Access {
            read: Vec::new(),
            write: vec![dir.to_path_buf()],
        }
    }

    /// Reading `path` only.
    pub fn read(path: &Path) -> Access {
        Access {
            read: vec![path.to_path_buf()],
            write: Vec::new(),
        }
    }

    /// The directory a run starts in: its scratch directory, so that files FFmpeg
    /// names by itself (two-pass logs) land there.
    pub fn workdir(&self) -> Option<&Path> {
        self.write.first().map(PathBuf::as_path)
    }
}

/// The ruleset of one run: no file access but `extra` and the system's, no TCP bind or
/// connect, no signal or abstract socket out of the sandbox. `None` when the kernel has
/// no Landlock.
pub fn ruleset(
    read: impl IntoIterator<Item = PathBuf>,
    write: impl IntoIterator<Item = PathBuf>,
) -> Result<Option<OwnedFd>, RulesetError> {
    let ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_KNOWN))?
        .handle_access(AccessNet::from_all(ABI_KNOWN))?
        .scope(Scope::from_all(ABI_KNOWN))?
        .create()?
        .add_rules(path_beneath_rules(
            SYSTEM_READ.iter().map(PathBuf::from).chain(read),
            AccessFs::from_read(ABI_KNOWN),
        ))?
        .add_rules(path_beneath_rules(
            SYSTEM_WRITE,
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))?
        .add_rules(path_beneath_rules(write, AccessFs::from_all(ABI_KNOWN)))?;
    Ok(ruleset.into())
}

/// A user's uid and gid from `/etc/passwd` text, or from `uid:gid` written out.
pub fn lookup_user(passwd: &str, user: &str) -> Option<(u32, u32)> {
    if let Some((uid, gid)) = user.split_once(':') {
        return Some((uid.parse().ok()?, gid.parse().ok()?));
    }
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != user {
            return None;
        }
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

/// The absolute path of `program`: itself when it names a path, else the first match
/// on `path` (a `PATH` value) that is an executable file.
pub fn find_program(program: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = std::path::absolute(program).ok()?;
        return executable(&p).then_some(p);
    }
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        cellfarm-media:x:998:997::/nonexistent:/usr/sbin/nologin\n";

    #[test]
    fn users_are_found_by_name_or_ids() {
        assert_eq!(lookup_user(PASSWD, "nobody"), Some((65534, 65534)));
        assert_eq!(lookup_user(PASSWD, "cellfarm-media"), Some((998, 997)));
        assert_eq!(lookup_user(PASSWD, "1234:99"), Some((1234, 99)));
        assert_eq!(lookup_user(PASSWD, "nobod"), None);
        assert_eq!(lookup_user(PASSWD, "x:1"), None);
        assert_eq!(lookup_user("broken:x\n", "broken"), None);
    }

    #[test]
    fn programs_are_found_on_the_path_only_if_executable() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        let path = format!("relative:{}", dir.path().display());
        assert_eq!(find_program("tool", &path), None, "not executable yet");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_program("tool", &path), Some(tool.clone()));
        assert_eq!(find_program(&tool.display().to_string(), ""), Some(tool));
        assert_eq!(
            find_program("tool", "relative"),
            None,
            "relative dirs are skipped"
        );
    }

    #[test]
    fn the_system_paths_are_read_only_and_name_no_secret() {
        for p in SYSTEM_READ.iter().chain(SYSTEM_WRITE) {
            assert!(p.starts_with('/'), "{p}");
            for secret in [
                "/etc/shadow",
                "/etc/cellfarm",
                "/proc",
                "/root",
                "/home",
                "/tmp",
                "/var/tmp",
            ] {
                assert!(
                    !secret.starts_with(p) && !p.starts_with(secret),
                    "{p} opens {secret}"
                );
            }
        }
        let access = Access::scratch(Path::new("/s/job-1"));
        assert_eq!(access.workdir(), Some(Path::new("/s/job-1")));
        assert_eq!(Access::read(Path::new("/t/f")).workdir(), None);
    }
}
