//! The exec shim (`b24-host exec-shim -- PROGRAM ARGS...`, hidden): what the host starts for
//! an exec plugin, so that nothing the plugin's program starts outlives a host that was
//! SIGKILLed. [`super::process`] makes it lead a process group and die with the host
//! (`PR_SET_PDEATHSIG`), which covers only the direct child; the shim replaces that death
//! signal with SIGUSR2, whose handler kills the whole group (as the runner does, see
//! `child.rs`), then starts the user's command as its child in the same group with stdin,
//! stdout and stderr passed straight through (no copying), waits for it and ends as it ended:
//! the same exit status, or killed by the same signal.

use std::{ffi::OsString, process::ExitCode};

use super::group::{HOST_GONE, die_with_the_host, end_group};

/// Runs `command` as the shim's child and ends as it ended.
pub fn main(command: Vec<OsString>) -> ExitCode {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    if !die_with_the_host() {
        end_group();
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
