//! A supervised child's side of its process group (the runner's, the exec shim's): the host
//! made it lead a group and armed SIGKILL as its death signal, which takes only this process;
//! [`die_with_the_host`] replaces it with [`HOST_GONE`], whose handler kills the whole group, so
//! nothing the plugin started outlives a host that was SIGKILLed.

/// The death signal once armed here: the host is gone.
pub const HOST_GONE: i32 = libc::SIGUSR2;

extern "C" fn host_gone(_: libc::c_int) {
    // SAFETY: kill is async-signal-safe; our own group, which the host made us lead.
    unsafe { libc::kill(0, libc::SIGKILL) };
}

/// Arms the death signal that takes the whole group; false if the host is already gone.
pub fn die_with_the_host() -> bool {
    // SAFETY: getppid has no preconditions; while SIGKILL is armed as the death signal (the
    // host armed it before exec), the parent seen here is the host (had it died, we would be
    // dead).
    let host = unsafe { libc::getppid() };
    // SAFETY: installs an async-signal-safe handler and replaces the death signal: this
    // process's own state.
    unsafe {
        libc::signal(HOST_GONE, host_gone as *const () as libc::sighandler_t);
        if libc::prctl(libc::PR_SET_PDEATHSIG, HOST_GONE) < 0 {
            return true;
        }
        libc::getppid() == host
    }
}

/// Kills this process's group: this process and whatever its plugin started.
pub fn end_group() -> ! {
    // SAFETY: kill(2) on our own process group, which the host made us lead.
    unsafe { libc::kill(0, libc::SIGKILL) };
    std::process::exit(1)
}
