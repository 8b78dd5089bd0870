//! The `b24-host` binary: sets the allocator up, parses the command line, hands it to
//! [`b24_host::cmd::run`] and reports an error with its context. The commands live in the
//! library's `cmd/`.

use std::process::ExitCode;

use b24_host::cli::Cli;
use clap::Parser;

/// mimalloc: the request path allocates many small, short-lived buffers; glibc's malloc spent
/// about 8% of the host's CPU on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc settings that must be in place before the first allocation (see
/// `allocator::tune_allocator`); Linux runs them as an ELF constructor.
#[cfg(target_os = "linux")]
mod allocator {
    /// mimalloc's option numbers (v3 `mi_option_e`), for [`tune_allocator`].
    const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    /// How long a freed page stays with the process before it goes back to the OS (mimalloc's
    /// own default).
    const PURGE_DELAY_MS: std::ffi::c_long = 10;

    /// Keeps the resident set close to what is in use: commit arena memory as it is used rather
    /// than up front (peak RSS under `bench/load.sh` point (4): 67 -> 47 MiB). Freed pages go
    /// back to the OS after [`PURGE_DELAY_MS`], not at once: returning each page as it empties
    /// cost 7-10% of the host's CPU at point (3) (an `madvise`, TLB shoot-downs on both cores,
    /// and a page fault when the page is used again a moment later) for a few MiB of peak RSS
    /// (point (4) in-process 61 -> 65 MiB). The options must be set before the first
    /// allocation creates an arena, so this runs as an ELF constructor ahead of the
    /// default-priority ones (mimalloc's own and Rust's start-up). Environment variables
    /// (`MIMALLOC_*`) still win for anyone tuning by hand.
    extern "C" fn tune_allocator() {
        for (option, value, env) in [
            (MI_OPTION_ARENA_EAGER_COMMIT, 0, c"MIMALLOC_ARENA_EAGER_COMMIT"),
            (MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS, c"MIMALLOC_PURGE_DELAY"),
        ] {
            // SAFETY: `getenv` with a NUL-terminated name, and a process-wide allocator option
            // set while the process is still single-threaded (constructors run before `main`).
            unsafe {
                if libc_getenv(env.as_ptr()).is_null() {
                    libmimalloc_sys::mi_option_set(option, value);
                }
            }
        }
    }

    unsafe extern "C" {
        #[link_name = "getenv"]
        fn libc_getenv(name: *const std::ffi::c_char) -> *const std::ffi::c_char;
    }

    #[used]
    #[unsafe(link_section = ".init_array.00101")]
    static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;
}

fn main() -> ExitCode {
    match b24_host::cmd::run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("b24-host: {e:#}");
            ExitCode::FAILURE
        }
    }
}
