//! The exec shim (`b24-host exec-shim -- PROGRAM ARGS...`, hidden): what the host starts for
//! an exec plugin, so that nothing the plugin's program starts outlives a host that was
//! SIGKILLed. [`super::process`] makes it lead a process group and die with the host
//! (`PR_SET_PDEATHSIG`), which covers only the direct child; the shim replaces that death
//! signal with SIGUSR2, whose handler kills the whole group (as the runner does, see
//! `child.rs`), then starts the user's command as its child in the same group with stdin,
//! stdout and stderr passed straight through (no copying), waits for it and ends as it ended:
//! the same exit status, or killed by the same signal.

use std::{ffi::OsString, process::ExitCode};

/// The shim's death signal: the host is gone.
const HOST_GONE: i32 = libc::SIGUSR2;

extern "C" fn host_gone(_: libc::c_int) {
    // SAFETY: kill is async-signal-safe; our own group, which the host made us lead.
    unsafe { libc::kill(0, libc::SIGKILL) };
}

/// Arms the death signal that takes the whole group; false if the host is already gone.
fn die_with_the_host() -> bool {
    // SAFETY: getppid has no preconditions; while SIGKILL is armed as the death signal (the
    // host armed it before exec), the parent seen here is the host.
    let host = unsafe { libc::getppid() };
    // SAFETY: an async-signal-safe handler and the death signal: this process's own state.
    unsafe {
        libc::signal(HOST_GONE, host_gone as *const () as libc::sighandler_t);
        if libc::prctl(libc::PR_SET_PDEATHSIG, HOST_GONE) < 0 {
            return true;
        }
        libc::getppid() == host
    }
}

/// Runs `command` as the shim's child and ends as it ended.
pub fn main(command: Vec<OsString>) -> ExitCode {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    if !die_with_the_host() {
        // SAFETY: our own group.
        unsafe { libc::kill(0, libc::SIGKILL) };
        return ExitCode::FAILURE;
    }
    let Some((program, args)) = command.split_first() else {
        eprintln!("b24-host exec-shim: no command (started by `b24-host serve` for exec plugins)");
        return ExitCode::from(2);
    };
    let mut child = std::process::Command::new(program);
    child.args(args);
    // SAFETY: runs in the forked child before exec; signal() is async-signal-safe. The handler
    // would be reset by exec anyway; the default disposition is what the program expects.
    unsafe {
        child.pre_exec(|| {
            libc::signal(HOST_GONE, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = match child.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("b24-host exec-shim: cannot start {}: {e}", program.to_string_lossy());
            return ExitCode::from(127);
        }
    };
    // The program holds stdin and stdout; the host sees their ends as the program's.
    // SAFETY: closing our own copies of descriptors 0 and 1; nothing here uses them again.
    unsafe {
        libc::close(0);
        libc::close(1);
    }
    let status = loop {
        match child.wait() {
            Ok(status) => break status,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return ExitCode::FAILURE,
        }
    };
    if let Some(signal) = status.signal() {
        // SAFETY: the default disposition, then the same signal to ourselves: the host sees
        // the program's death as it was.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::kill(libc::getpid(), signal);
        }
        return ExitCode::from(128u8.wrapping_add(signal as u8));
    }
    ExitCode::from(status.code().unwrap_or(1) as u8)
}
