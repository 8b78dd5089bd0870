//! The listeners' limits against hostile clients (issue 20): idle admin connections past the
//! open-file limit leave events answered and the host idle; one client address holding its
//! cap with slow bodies leaves other clients served; a guessed admin bearer token is slowed,
//! counted and logged while the right one is answered at once. Each test prints its figures.

use std::{
    io::{Read, Write},
    net::{IpAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::support::*;

/// CPU time (user + system) the process `pid` has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // After the command name (in parentheses, which may hold spaces): state is field 3.
    let fields: Vec<&str> =
        stat.rsplit_once(')').expect("a stat line").1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// Posts a valid event and returns how long the 200 took; fails the test on another answer.
fn post_timed(host: &RunningHost, field: u64) -> Duration {
    let sent = Instant::now();
    let answer = host.post_form(&field_event(field, "UF_CRM_LIMITS"));
    let took = sent.elapsed();
    assert_eq!(answer.status, 200, "{answer:?}");
    took
}

#[test]
fn idle_admin_connections_past_the_open_file_limit_leave_events_answered_and_the_host_idle() {
    let test = "listeners::idle_admin";
    // This process holds every connection it opens: it needs more descriptors than the host.
    let _ = b24_host::conn::raise_fd_limit();
    let idle = 2_000;
    let limit = 1_024;
    let dir = HostDir::new(&["audit-log"]);
    let text = config(&["audit-log"], "").replace(
        "shutdown_grace_ms = 5000",
        "shutdown_grace_ms = 5000\nheader_read_timeout_ms = 3000",
    );
    dir.write_config(&text);
    let host = dir
        .start_with(Launch { open_files: Some(limit), ..Launch::default() })
        .unwrap_or_else(|e| panic!("{e}"));
    let admin = host.admin.clone().expect("an admin listener");
    assert!(host.wait_log("open-file limit shared", PATIENCE), "{}", host.log_text());
    // More idle connections than the host may open files: before admin.max_connections and
    // the deadlines, these took every descriptor and events went unanswered.
    let connecting = Instant::now();
    let mut held = Vec::with_capacity(idle);
    let mut refused_connects = 0;
    for _ in 0..idle {
        match TcpStream::connect_timeout(&admin.parse().unwrap(), Duration::from_secs(2)) {
            Ok(stream) => held.push(stream),
            // A listener that stopped accepting: its backlog is full (what happened before).
            Err(_) if refused_connects >= 20 => break,
            Err(_) => refused_connects += 1,
        }
    }
    let connected = connecting.elapsed();
    // Past the cap, the admin listener says why: a connection it has no slot for is answered
    // 503 and closed. The answer is looked for on the held connections past the cap, not on a
    // fresh request: on a loaded machine opening them all can outlast the header deadline,
    // which frees the first slots, and a fresh request would then rightly be served.
    let cap = 64; // admin.max_connections by default
    let busy = held.iter_mut().skip(cap).find_map(|stream| {
        stream.set_read_timeout(Some(PATIENCE)).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        answer.starts_with("HTTP/1.1 503").then_some(answer)
    });
    let busy = busy.expect("no 503 from the admin listener past its cap");
    assert!(busy.contains("too many open connections"), "{busy}");
    // Valid events are answered, each within a second, while the idle connections sit there.
    let worst = (1..=10).map(|field| post_timed(&host, field)).max().unwrap();
    assert!(worst < Duration::from_secs(1), "a valid event took {worst:?}");
    // The host is idle meanwhile: no accept loop spinning on a full descriptor table.
    let (cpu_before, wall) = (cpu_time(host.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let cpu = cpu_time(host.pid()) - cpu_before;
    let share = cpu.as_secs_f64() / wall.elapsed().as_secs_f64();
    // A busy loop takes a whole core (120% before); a loaded machine only lowers the figure.
    assert!(
        share < 0.5,
        "the host used {:.0}% of a core while idle connections sat",
        share * 100.0
    );
    // An idle admin connection is closed by the header deadline.
    let mut first = held.swap_remove(0);
    first.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut sink = [0u8; 64];
    assert!(matches!(first.read(&mut sink), Ok(0)), "an idle admin connection was kept open");
    // Once the deadline has freed the slots, the admin listener answers again.
    let ok = eventually(PATIENCE, || {
        b24_tests::http::request(&admin, "GET", "/healthz", &[], b"")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(ok.is_some(), "the admin listener did not answer again");
    println!(
        "{test}: {} idle admin connections ({refused_connects} connects refused) opened in \
         {connected:?} against an open-file limit of {limit}; 10 events answered 200, the \
         slowest in {worst:?}; the host used {:.1}% of a core over 3 s",
        held.len() + 1,
        share * 100.0
    );
    drop(held);
    assert!(host.stop());
}

#[test]
fn one_address_holding_its_cap_with_slow_bodies_leaves_other_clients_served() {
    let test = "listeners::per_address";
    let dir = HostDir::new(&[]);
    let (cap, per_address, clients) = (40, 10, 30);
    let text = config(&[], "").replace(
        "shutdown_grace_ms = 5000",
        &format!(
            "shutdown_grace_ms = 5000\nrequest_read_timeout_ms = 60000\nmax_connections = {cap}\n\
             max_connections_per_address = {per_address}"
        ),
    );
    dir.write_config(&text);
    let host = start(&dir);
    // One client opens as many connections as the host takes in all, each sending a body a
    // little at a time (it never finishes within the test).
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: 60000\r\n\r\nevent=ONCRM",
        host.path
    );
    let mut slow = Vec::new();
    for _ in 0..cap {
        let mut s = TcpStream::connect(&host.addr).expect("connect");
        s.write_all(head.as_bytes()).expect("head");
        slow.push(s);
    }
    // The host answers the ones past this address's cap at once.
    let mut refused = 0;
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut answer = [0u8; 256];
        if let Ok(n) = s.read(&mut answer)
            && n > 0
        {
            let text = String::from_utf8_lossy(&answer[..n]);
            assert!(text.contains("503") && text.contains("from your address"), "{text}");
            refused += 1;
        }
    }
    assert_eq!(refused, cap - per_address, "the connections past the cap per address");
    // Other clients, each from an address of its own, are served meanwhile.
    let mut answered = 0;
    for n in 0..clients {
        let source = IpAddr::from([127, 0, 0, 2 + n as u8]);
        let body = field_event(n as u64 + 1, "UF_CRM_OTHER");
        let headers = [("Content-Type", "application/x-www-form-urlencoded")];
        let answer = b24_tests::http::request_from(
            source,
            &host.addr,
            "POST",
            &host.path,
            &headers,
            body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{source}: {e}"));
        assert_eq!(answer.status, 200, "{source}: {answer:?}");
        answered += 1;
        // The slow client keeps its connections busy.
        for s in &mut slow {
            let _ = s.write_all(b"X");
        }
    }
    println!(
        "{test}: one address held {per_address} of {cap} connections with slow bodies, \
         {refused} more refused; {answered} of {clients} clients from other addresses got 200"
    );
    drop(slow);
    assert!(host.stop());
}

/// A config whose admin listener asks for `token`.
fn with_admin_token(token: &str) -> String {
    format!("{}\n[admin]\ntoken = \"{token}\"\n", config(&[], ""))
}

/// GET `path` on the admin listener with `Authorization: Bearer token`.
fn bearer(admin: &str, path: &str, token: &str) -> b24_tests::http::Response {
    let value = format!("Bearer {token}");
    b24_tests::http::request(admin, "GET", path, &[("Authorization", &value)], b"")
        .expect("an answer from the admin listener")
}

#[test]
fn guessed_bearer_tokens_are_slowed_counted_and_logged_and_the_right_one_never_waits() {
    let test = "listeners::bearer";
    let dir = HostDir::new(&[]);
    let token = "the-right-admin-token-0123456789";
    dir.write_config(&with_admin_token(token));
    let host = start(&dir);
    let admin = host.admin.clone().expect("an admin listener");
    // One guess after another: each wrong token waits its turn and the delay.
    let sequential = 5;
    let started = Instant::now();
    for _ in 0..sequential {
        let sent = Instant::now();
        let answer = bearer(&admin, "/metrics", "guess");
        assert_eq!(answer.status, 401, "{answer:?}");
        assert!(
            sent.elapsed() >= Duration::from_millis(400),
            "a wrong token took {:?}",
            sent.elapsed()
        );
    }
    let rate = sequential as f64 / started.elapsed().as_secs_f64();
    assert!(
        host.wait_log("wrong admin token (a bearer token)", PATIENCE),
        "no log line for wrong tokens:\n{}",
        host.log_text()
    );
    // A flood of guesses at once, bearer and login form alike: some wait their turn, the rest
    // are refused at once; the right token is answered while they wait.
    let flood = 60;
    let answered = Arc::new(AtomicUsize::new(0));
    let guesses: Vec<_> = (0..flood)
        .map(|i| {
            let (admin, answered) = (admin.clone(), answered.clone());
            std::thread::spawn(move || {
                let answer = if i % 2 == 0 {
                    bearer(&admin, "/readyz", "guess").status
                } else {
                    let headers = [("Content-Type", "application/x-www-form-urlencoded")];
                    b24_tests::http::request(&admin, "POST", "/login", &headers, b"token=guess")
                        .expect("an answer")
                        .status
                };
                answered.fetch_add(1, Ordering::SeqCst);
                answer
            })
        })
        .collect();
    // Wait until the queue is full: some guess was refused at once.
    let metric = |name: &str| -> u64 {
        let body = bearer(&admin, "/metrics", token).body;
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        eventually(PATIENCE, || answered.load(Ordering::SeqCst) > 0),
        "no guess was refused at once"
    );
    let sent = Instant::now();
    let right = bearer(&admin, "/readyz", token);
    let right_took = sent.elapsed();
    let pending_then = flood - answered.load(Ordering::SeqCst);
    assert_eq!(right.status, 200, "{right:?}");
    assert!(pending_then > 0, "the right token was answered after every wrong one");
    let headers = [("Content-Type", "application/x-www-form-urlencoded")];
    let login = format!("token={token}");
    let session =
        b24_tests::http::request(&admin, "POST", "/login", &headers, login.as_bytes()).unwrap();
    assert_eq!(session.status, 303, "{session:?}");
    assert!(answered.load(Ordering::SeqCst) < flood, "the right login waited for every wrong one");
    let statuses: Vec<u16> = guesses.into_iter().map(|t| t.join().unwrap()).collect();
    let too_many = statuses.iter().filter(|s| **s == 429).count();
    let waited = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(too_many + waited, flood, "{statuses:?}");
    assert!(too_many > 0 && waited > 0, "{statuses:?}");
    let failures = metric("b24_admin_auth_failures_total");
    assert_eq!(failures, (sequential + flood) as u64);
    println!(
        "{test}: {sequential} sequential wrong bearer tokens at {rate:.2}/s; of {flood} at once \
         {waited} waited their turn and {too_many} got 429; the right token answered in \
         {right_took:?} with {pending_then} wrong ones still waiting; {failures} failures counted"
    );
    assert!(host.stop());
}
