//! What happens between fork and exec: the one `unsafe` in the crate.
//!
//! Everything here was prepared in the parent ([`Plan`] is plain numbers, a file
//! descriptor and a compiled filter behind an `Arc`); the child only makes system calls,
//! which are async-signal-safe, and allocates nothing. The order matters:
//!
//! 1. leave root (supplementary groups, gid, uid), since a later step could not;
//! 2. a new user and network namespace (an unprivileged user may make them);
//! 3. the limits, the task count last: in the new user namespace it counts this
//!    sandbox's tasks only, not every process of the uid;
//! 4. die with the cell: set after the uid change, which clears it;
//! 5. no new privileges, then Landlock, then seccomp, which would deny nothing earlier.

use std::sync::Arc;

use tokio::process::Command;

use super::seccomp::Filters;

/// A resource the child limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    AddressSpace,
    CpuSeconds,
    FileSize,
    Tasks,
}

/// One resource limit: soft, then hard.
#[derive(Debug, Clone, Copy)]
pub struct Rlimit {
    pub resource: Resource,
    pub soft: u64,
    pub hard: u64,
}

/// What the child applies to itself.
#[derive(Clone)]
pub struct Plan {
    /// uid and gid to become (the cell runs as root).
    pub ids: Option<(u32, u32)>,
    pub namespaces: bool,
    /// Address space, CPU seconds, file size.
    pub limits: [Rlimit; 3],
    /// Tasks (processes and threads) of the sandbox.
    pub tasks: Option<u64>,
    /// The cell's pid: a child whose parent is already gone exits.
    pub parent: u32,
    /// A Landlock ruleset, kept open by the parent until the spawn returns.
    pub landlock: Option<i32>,
    pub seccomp: Option<Arc<Filters>>,
}

/// Makes `cmd` apply `plan` before it execs.
#[allow(unsafe_code)]
pub fn confine(cmd: &mut Command, plan: Plan) {
    // SAFETY: the closure runs in the forked child and only makes system calls on
    // values prepared before the fork; it allocates and locks nothing.
    unsafe {
        cmd.pre_exec(move || apply(&plan));
    }
}

#[allow(unsafe_code)]
fn apply(plan: &Plan) -> std::io::Result<()> {
    let check = |rc: libc::c_long| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain system calls with arguments that outlive them.
    unsafe {
        if let Some((uid, gid)) = plan.ids {
            check(libc::setgroups(0, std::ptr::null()).into())?;
            check(libc::setresgid(gid, gid, gid).into())?;
            check(libc::setresuid(uid, uid, uid).into())?;
        }
        if plan.namespaces {
            check(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET).into())?;
        }
        let tasks = plan.tasks.map(|n| Rlimit {
            resource: Resource::Tasks,
            soft: n,
            hard: n,
        });
        for limit in plan.limits.iter().chain(tasks.iter()) {
            let value = libc::rlimit {
                rlim_cur: limit.soft as libc::rlim_t,
                rlim_max: limit.hard as libc::rlim_t,
            };
            // One call per constant: their type differs between the C libraries.
            let rc = match limit.resource {
                Resource::AddressSpace => libc::setrlimit(libc::RLIMIT_AS, &value),
                Resource::CpuSeconds => libc::setrlimit(libc::RLIMIT_CPU, &value),
                Resource::FileSize => libc::setrlimit(libc::RLIMIT_FSIZE, &value),
                Resource::Tasks => libc::setrlimit(libc::RLIMIT_NPROC, &value),
            };
            check(rc.into())?;
        }
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL).into())?;
        if libc::getppid() as u32 != plan.parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into())?;
        if let Some(fd) = plan.landlock {
            check(libc::syscall(libc::SYS_landlock_restrict_self, fd, 0))?;
        }
    }
    if let Some(filters) = &plan.seccomp {
        for program in [&filters.deny, &filters.clone3] {
            seccompiler::apply_filter(program).map_err(|e| match e {
                seccompiler::Error::Seccomp(e) | seccompiler::Error::Prctl(e) => e,
                _ => std::io::Error::from_raw_os_error(libc::EINVAL),
            })?;
        }
    }
    Ok(())
}
