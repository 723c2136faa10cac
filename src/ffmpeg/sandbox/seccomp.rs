//! The seccomp layer: system calls a transcoder never makes fail with `EPERM`, so that
//! an exploited decoder that tries one gets an error it can print, not a new power.
//!
//! The filters are compiled once, in the parent; the child only installs them
//! ([`seccompiler::apply_filter`] makes two system calls and allocates nothing).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Calls denied outright, with why a decoder must not have them.
pub const DENIED: &[(&str, i64)] = &[
    // Reading or steering another process (the cell, another job's FFmpeg).
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    // Leaving the sandbox's namespaces, or building new ones to escape through.
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    // The kernel itself: modules, kexec, BPF, perf, keyrings, swap, clocks, reboot.
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("syslog", libc::SYS_syslog),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("fanotify_init", libc::SYS_fanotify_init),
    // Sockets: inputs are files (the protocol whitelist says so); io_uring would open
    // and connect sockets past this filter.
    ("socket", libc::SYS_socket),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
];

/// `clone` flags that make a namespace: a thread or a child process is fine, a new
/// namespace is not.
pub const NAMESPACE_FLAGS: &[(&str, i32)] = &[
    ("CLONE_NEWNS", libc::CLONE_NEWNS),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC),
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER),
    ("CLONE_NEWPID", libc::CLONE_NEWPID),
    ("CLONE_NEWNET", libc::CLONE_NEWNET),
];

/// The compiled filters, installed in this order.
pub struct Filters {
    /// [`DENIED`] and namespace-making `clone`: `EPERM`.
    pub deny: BpfProgram,
    /// `clone3`, whose flags sit in memory a filter cannot read: `ENOSYS`, which makes
    /// the C library fall back to `clone`, where the flags are checked.
    pub clone3: BpfProgram,
}

/// Compiles the filters for this machine's architecture; an error names what failed.
pub fn compile() -> Result<Filters, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let clone = NAMESPACE_FLAGS
        .iter()
        .map(|(_, flag)| {
            let flag = *flag as u64;
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?;
            SeccompRule::new(vec![cond])
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    rules.insert(libc::SYS_clone, clone);
    let deny = program(rules, libc::EPERM, arch)?;
    let clone3 = program(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        libc::ENOSYS,
        arch,
    )?;
    Ok(Filters { deny, clone3 })
}

fn program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    errno: i32,
    arch: TargetArch,
) -> Result<BpfProgram, String> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_covers_what_a_transcoder_never_needs() {
        let names: Vec<&str> = DENIED.iter().map(|(n, _)| *n).collect();
        for call in [
            "ptrace",
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "process_vm_readv",
            "process_vm_writev",
            "reboot",
            "swapon",
            "swapoff",
            "socket",
        ] {
            assert!(names.contains(&call), "{call} is not denied");
        }
        for call in [
            "read", "write", "openat", "mmap", "execve", "clone", "futex",
        ] {
            assert!(!names.contains(&call), "{call} is needed");
        }
        let mut numbers: Vec<i64> = DENIED.iter().map(|(_, nr)| *nr).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), DENIED.len(), "a call is listed twice");
    }

    #[test]
    fn the_filters_compile() {
        let filters = compile().unwrap();
        assert!(!filters.deny.is_empty());
        assert!(!filters.clone3.is_empty());
        let flags: i32 = NAMESPACE_FLAGS.iter().map(|(_, f)| f).fold(0, |a, f| a | f);
        assert_eq!(flags & libc::CLONE_THREAD, 0, "threads stay allowed");
    }
}
