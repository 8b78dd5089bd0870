//! Logging through the host without keeping a [`Host`]: `log::info("...")` anywhere in a call
//! the host makes (`create`, `on_user_field`, `on_event`, `shutdown`) writes into the host's log
//! under the plugin's name, like [`Host::log`].
//!
//! The export macro makes the plugin's host current on the calling thread for the length of each
//! call ([`Host::current`]). On a thread of the plugin's own, outside any call, a line goes to
//! standard error instead, which the host also captures into its log.

use std::cell::RefCell;

use crate::{Host, LogLevel};

thread_local! {
    static CURRENT: RefCell<Option<Host>> = const { RefCell::new(None) };
}

/// Runs `f` with `host` current on this thread, restoring the previous one afterwards.
pub(crate) fn with_host<R>(host: &Host, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Host>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            let _ = CURRENT.try_with(|current| *current.borrow_mut() = previous);
        }
    }
    let previous = CURRENT.with(|current| current.borrow_mut().replace(host.clone()));
    let _restore = Restore(previous);
    f()
}

impl Host {
    /// The host of the call running on this thread, if any: the one passed to `create`.
    pub fn current() -> Option<Host> {
        CURRENT.try_with(|current| current.borrow().clone()).ok().flatten()
    }
}

/// Writes `message` at `level` into the host's log (see the module docs).
pub fn log(level: LogLevel, message: &str) {
    match Host::current() {
        Some(host) => host.log(level, message),
        None => eprintln!("{level:?}: {message}"),
    }
}

/// Logs at [`LogLevel::Error`].
pub fn error(message: &str) {
    log(LogLevel::Error, message);
}

/// Logs at [`LogLevel::Warn`].
pub fn warn(message: &str) {
    log(LogLevel::Warn, message);
}

/// Logs at [`LogLevel::Info`].
pub fn info(message: &str) {
    log(LogLevel::Info, message);
}

/// Logs at [`LogLevel::Debug`].
pub fn debug(message: &str) {
    log(LogLevel::Debug, message);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use abi_stable::{
        sabi_trait::TD_Opaque,
        std_types::{RArc, RStr, RString},
    };

    use super::*;
    use crate::abi::{HostServices, HostServices_TO};

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl HostServices for Recorder {
        fn log(&self, level: LogLevel, message: RStr<'_>) {
            self.0.lock().unwrap().push(format!("{level:?} {message}"));
        }
        fn config_dir(&self) -> RString {
            RString::new()
        }
        fn state_dir(&self) -> RString {
            RString::new()
        }
    }

    #[test]
    fn lines_go_to_the_host_of_the_running_call_and_only_during_it() {
        let recorder = Recorder::default();
        let host = Host::new(HostServices_TO::from_ptr(RArc::new(recorder.clone()), TD_Opaque));
        assert!(Host::current().is_none());
        with_host(&host, || {
            info("inside");
            // A panic inside a call is caught by the export glue; the host is restored anyway.
            let _ = std::panic::catch_unwind(|| with_host(&host, || panic!("boom")));
            warn("still inside");
        });
        assert!(Host::current().is_none());
        info("outside: to stderr");
        assert_eq!(*recorder.0.lock().unwrap(), ["Info inside", "Warn still inside"]);
    }

    #[test]
    fn a_context_shows_its_settings_only_by_length() {
        let host = Host::new(HostServices_TO::from_ptr(RArc::new(Recorder::default()), TD_Opaque));
        let ctx =
            crate::PluginContext { name: "p".into(), settings: "token = \"s3cret\"".into(), host };
        let debug = format!("{ctx:?}");
        assert!(!debug.contains("s3cret") && debug.contains("16 bytes"), "{debug}");
    }
}
