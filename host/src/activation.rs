//! systemd integration, both parts no-ops outside systemd: listening sockets handed over by
//! socket activation (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`: a socket named `admin` is
//! the admin listener, the other one the event listener), so that a restart queues connections
//! in the kernel instead of refusing them; and readiness (`NOTIFY_SOCKET`: `READY=1` once the
//! host serves, `STOPPING=1` when it starts to stop) for `Type=notify` units.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use sd_notify::NotifyState;

/// The `LISTEN_FDNAMES` name (systemd's `FileDescriptorName=`) of the admin listener.
pub const ADMIN_NAME: &str = "admin";

/// Listening sockets the service manager handed over.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The event listener.
    pub events: Option<std::net::TcpListener>,
    /// The admin listener (a socket named `admin`).
    pub admin: Option<std::net::TcpListener>,
}

/// Why the handed-over sockets cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_FDS`, `LISTEN_PID` or `LISTEN_FDNAMES` do not parse or do not agree.
    #[error("socket activation: LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES: {0}")]
    Environment(std::io::Error),
    /// A descriptor is not a listening TCP socket.
    #[error("socket activation: fd {fd} (named `{name}`) is not a listening TCP socket: {reason}")]
    NotListening {
        /// The descriptor.
        fd: RawFd,
        /// Its name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More than one socket for one listener.
    #[error(
        "socket activation: {count} sockets passed for the {listener} listener; pass one (name the admin listener's socket `admin` with FileDescriptorName=admin)"
    )]
    TooMany {
        /// `event` or `admin`.
        listener: &'static str,
        /// How many.
        count: usize,
    },
}

/// Takes the sockets passed by socket activation, if any, and removes the `LISTEN_*` variables
/// so that processes the host starts do not see them (the descriptors are close-on-exec).
///
/// # Safety
///
/// Changes the environment: call it while the process has a single thread.
pub unsafe fn take_listeners() -> Result<Inherited, ActivationError> {
    // SAFETY: the caller guarantees that no other thread reads the environment now.
    let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
        .map_err(ActivationError::Environment)?;
    let mut named = Vec::new();
    for (fd, name) in fds {
        // SAFETY: systemd hands these descriptors to this process, and nothing else owns them.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let listener = listening_tcp(owned).map_err(|reason| ActivationError::NotListening {
            fd,
            name: name.clone(),
            reason,
        })?;
        named.push((listener, name));
    }
    by_name(named)
}

/// Tells the listeners apart by their names: `admin`, or anything else for the events.
fn by_name(named: Vec<(std::net::TcpListener, String)>) -> Result<Inherited, ActivationError> {
    let (admin, events): (Vec<_>, Vec<_>) =
        named.into_iter().partition(|(_, name)| name == ADMIN_NAME);
    let events = events.into_iter().map(|(l, _)| l).collect();
    let admin = admin.into_iter().map(|(l, _)| l).collect();
    let one = |mut found: Vec<std::net::TcpListener>, listener| match found.len() {
        0 | 1 => Ok(found.pop()),
        count => Err(ActivationError::TooMany { listener, count }),
    };
    Ok(Inherited { events: one(events, "event")?, admin: one(admin, "admin")? })
}

/// `fd` as a TCP listener, if it is one that listens.
fn listening_tcp(fd: OwnedFd) -> Result<std::net::TcpListener, String> {
    use std::os::fd::AsRawFd;
    let option = |name: libc::c_int| -> Result<libc::c_int, String> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `getsockopt` writes at most `len` bytes into `value`.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                name,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        if r == 0 { Ok(value) } else { Err(std::io::Error::last_os_error().to_string()) }
    };
    let domain = option(libc::SO_DOMAIN)?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err("not an IPv4 or IPv6 socket (use ListenStream=ADDRESS:PORT)".into());
    }
    if option(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err("not a stream socket".into());
    }
    if option(libc::SO_ACCEPTCONN)? == 0 {
        return Err("not listening".into());
    }
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(listener)
}

/// Tells the service manager that the host serves (`READY=1`), with a status line.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager that the host is stopping (`STOPPING=1`).
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_tcp_socket_is_taken_and_others_are_refused_with_the_reason() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let taken = listening_tcp(OwnedFd::from(tcp)).unwrap();
        assert_eq!(taken.local_addr().unwrap(), addr);

        let dir = tempfile::tempdir().unwrap();
        let unix = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        let err = listening_tcp(OwnedFd::from(unix)).unwrap_err();
        assert!(err.contains("not an IPv4 or IPv6 socket"), "{err}");

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(listening_tcp(OwnedFd::from(udp)).unwrap_err(), "not a stream socket");

        let bound = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(listening_tcp(OwnedFd::from(bound)).unwrap_err(), "not listening");
    }

    #[test]
    fn the_socket_named_admin_is_the_admin_listener_and_one_of_each_is_allowed() {
        let socket = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = |l: &Option<std::net::TcpListener>| l.as_ref().unwrap().local_addr().unwrap();
        let (a, b) = (socket(), socket());
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let both = by_name(vec![(a, "admin".into()), (b, "events".into())]).unwrap();
        assert_eq!((port(&both.admin), port(&both.events)), (a_addr, b_addr));

        // systemd's default name (the socket unit's) or none at all: the event listener.
        let one = by_name(vec![(socket(), "unknown".into())]).unwrap();
        assert!(one.events.is_some() && one.admin.is_none());

        let err = by_name(vec![(socket(), "unknown".into()), (socket(), "b24.socket".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 sockets passed for the event listener"), "{err}");
        assert!(err.contains("FileDescriptorName=admin"), "{err}");
    }
}
