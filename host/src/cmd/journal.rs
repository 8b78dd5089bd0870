//! `b24-host journal ...`: inspect and repair the journal of a stopped host (by opening the file)
//! or of a running one (through its control socket). On the NATS backend the command opens the
//! shared log itself, which no host locks, whether hosts run or not (runner states, which only
//! a running host knows, are then not shown).

use std::process::ExitCode;

use crate::{
    cli::JournalCommand,
    config::Config,
    control::{self, AdminRequest as Request, AdminResponse as Response},
    journal::{Operator, Selection, StoreError, now_ms},
};

/// Runs the `journal` subcommand `command` (its request, then [`run`]).
pub fn command(config: &Config, command: JournalCommand, json: bool) -> anyhow::Result<ExitCode> {
    let request = match command {
        JournalCommand::Verify => {
            let report = crate::journal::verify(&config.state_dir, &config.journal)?;
            return print_repair(&report, json);
        }
        JournalCommand::Salvage { to } => {
            let report = crate::journal::salvage(&config.state_dir, &config.journal, &to)?;
            return print_repair(&report, json);
        }
        JournalCommand::Stats => Request::Stats { enabled: config.plugins.enabled.clone() },
        JournalCommand::List { limit } => Request::List { limit },
        JournalCommand::Show { id } => Request::Show { id },
        JournalCommand::Dead { plugin } => Request::Dead { plugin },
        JournalCommand::Replay { plugin, since, ids } => {
            Request::Replay(Selection { plugin, ids, since_ms: since })
        }
        JournalCommand::Purge { plugin, since, ids } => {
            Request::Purge(Selection { plugin, ids, since_ms: since })
        }
        JournalCommand::Skip { plugin, ids } => Request::Skip { plugin, ids },
    };
    run(config, request, json)
}

/// Runs `request` against the journal of `config`'s host and prints the answer.
pub fn run(config: &Config, request: Request, json: bool) -> anyhow::Result<ExitCode> {
    output(&ask(config, request)?, json)
}

/// Runs `request` against the journal of `config`'s host: the stopped host's journal opened
/// here, else the running host's through its control socket (the NATS log: always here).
pub fn ask(config: &Config, request: Request) -> anyhow::Result<Response> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if matches!(
        request,
        Request::OfflineStatus | Request::OfflineBind { .. } | Request::Bind { .. }
    ) {
        // The pollers, tokens and REST client live in the running host, on either backend (on
        // NATS this command could open the shared log itself, but the log is not the host).
        let response =
            runtime.block_on(control::ask(&config.state_dir, &request)).map_err(|e| {
                anyhow::anyhow!(
                    "offline status and binding need the running host (its pollers, tokens and \
                 REST client), and {e}"
                )
            })?;
        return Ok(response);
    }
    let response = match runtime.block_on(Operator::open(&config.state_dir, &config.journal)) {
        Ok((journal, writer)) => {
            let response = runtime.block_on(control::answer_journal(&journal, request));
            drop(journal);
            let _ = writer.join();
            response
        }
        Err(StoreError::InUse { path }) => {
            runtime.block_on(control::ask(&config.state_dir, &request)).map_err(|e| {
                anyhow::anyhow!("the journal {path} is locked by a running host, and {e}")
            })?
        }
        Err(e) => return Err(e.into()),
    };
    Ok(response)
}

/// Prints `response` as JSON or for people.
fn output(response: &Response, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(response)?);
        // A binding report that needs attention fails the command in either form.
        let failed = match response {
            Response::Bindings { portals, .. } => portals.iter().any(|p| p.needs_attention()),
            Response::Error { .. } => true,
            _ => false,
        };
        return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    }
    print(response)
}

fn age(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{}h", secs / 86400, (secs % 86400) / 3600),
    }
}

fn print(response: &Response) -> anyhow::Result<ExitCode> {
    let now = now_ms();
    match response {
        Response::Stats { plugins, events } => {
            println!(
                "{:<24} {:>9} {:>9} {:>7} {:>15}",
                "plugin", "backlog", "retrying", "dead", "oldest pending"
            );
            let plugins_runners: Vec<_> = plugins
                .iter()
                .filter_map(|p| Some((p.stats.plugin.clone(), p.runner.clone()?)))
                .collect();
            for p in plugins.iter().map(|line| &line.stats) {
                let oldest = p.oldest_pending_age_ms.map_or("-".to_owned(), age);
                println!(
                    "{:<24} {:>9} {:>9} {:>7} {:>15}",
                    p.plugin, p.backlog, p.retrying, p.dead, oldest
                );
            }
            println!("{events} event(s) in the journal");
            for p in plugins.iter().map(|line| &line.stats) {
                if let Some(pause) = &p.paused {
                    println!(
                        "{} state: paused ({}, {} ago); its backlog waits until `b24-host plugin resume {}`",
                        p.plugin,
                        pause.describe(),
                        age(now - pause.at_ms),
                        p.plugin
                    );
                }
            }
            for p in plugins_runners {
                println!(
                    "runner {}: {}, pid {}, {} restart(s), last exit: {}",
                    p.0,
                    p.1.state,
                    p.1.pid.map_or("-".to_owned(), |pid| pid.to_string()),
                    p.1.restarts,
                    p.1.last_exit.as_deref().unwrap_or("-")
                );
            }
        }
        Response::List { events } => {
            for e in events {
                println!(
                    "{:>8}  {:>8} ago  {:<34} {}  pending [{}]  dead [{}]",
                    e.id,
                    age(now - e.received_at_ms),
                    e.code,
                    e.member_id,
                    e.pending.join(", "),
                    e.dead.join(", ")
                );
            }
        }
        Response::Show { event: Some(detail) } => {
            // The event as JSON, then its attempts as a table per plugin.
            let mut shown = serde_json::to_value(detail)?;
            if let Some(fields) = shown.as_object_mut() {
                fields.remove("attempts");
            }
            println!("{}", serde_json::to_string_pretty(&shown)?);
            for (plugin, attempts) in &detail.attempts {
                println!("attempts of {plugin} (oldest first):");
                for a in attempts {
                    println!(
                        "  {:>4}  {:>8} ago  {:>10.3} ms  {:<9} {}",
                        a.n,
                        age(now - a.at_ms),
                        a.duration_us as f64 / 1000.0,
                        a.outcome,
                        a.error
                    );
                }
            }
        }
        Response::Show { event: None } => {
            eprintln!("no such event");
            return Ok(ExitCode::FAILURE);
        }
        Response::Dead { rows } => {
            for r in rows {
                println!(
                    "{:<20} {:>8}  {:<34} {}  attempts {}  {}",
                    r.plugin, r.id, r.code, r.member_id, r.dead.attempts, r.dead.reason
                );
            }
            println!("{} dead letter(s)", rows.len());
        }
        Response::Changed { rows } => {
            for (plugin, id) in rows {
                println!("{plugin} {id}");
            }
            println!("{} dead letter(s) changed", rows.len());
        }
        Response::Skipped { plugin, skipped, not_pending } => {
            for id in skipped {
                println!("{plugin} {id}");
            }
            println!("{} event(s) of {plugin} moved to its dead letters", skipped.len());
            if !not_pending.is_empty() {
                let ids: Vec<String> = not_pending.iter().map(u64::to_string).collect();
                eprintln!("error: not pending for {plugin}: {}", ids.join(", "));
                return Ok(ExitCode::FAILURE);
            }
        }
        Response::Offline { portals } => {
            if portals.is_empty() {
                println!("no portal has offline polling enabled");
            }
            for p in portals {
                let last = p
                    .last_poll_ms
                    .map_or("never".to_owned(), |at| format!("{} ago", age(now - at)));
                println!(
                    "{}  mode {}  last poll {}  rows {}  duplicates {}  cleared {}  sent back {}  errors {}{}{}",
                    p.member_id,
                    p.mode,
                    last,
                    p.rows_pulled,
                    p.duplicates,
                    p.rows_cleared,
                    p.rows_failed,
                    p.errors,
                    p.poller.as_ref().map(|h| format!("  polled by {h}")).unwrap_or_default(),
                    p.last_error.as_ref().map(|e| format!("  last error: {e}")).unwrap_or_default()
                );
                if let Some(since) = p.oldest_reservation_ms {
                    println!("  oldest reservation held {}", age(now - since));
                }
                if p.lost_batches_resumed > 0 {
                    println!("  lost batches taken over: {}", p.lost_batches_resumed);
                }
                if p.parked_total > 0 {
                    println!(
                        "  parked with event.offline.error: {} row(s) (read them with event.offline.get error=1)",
                        p.parked_total
                    );
                    for row in &p.parked {
                        println!(
                            "    row {}  {}  {}  message {}",
                            row.id, row.event_name, row.timestamp, row.message_id
                        );
                    }
                }
            }
        }
        Response::Paused(paused) => println!("{}", paused.message),
        Response::Bound { events } => println!("bound for offline delivery: {}", events.join(", ")),
        Response::Bindings { handler, portals } => {
            match handler {
                Some(handler) => println!("handler: {handler}"),
                None => println!(
                    "handler: none (bind.handler is not set: the host binds nothing, only the installation is checked)"
                ),
            }
            if portals.is_empty() {
                println!("no portal known: install the app on a portal while the host runs");
            }
            for p in portals {
                print!("{}", p.describe());
            }
            if portals.iter().any(|p| p.needs_attention()) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Response::Error { message } => {
            eprintln!("error: {message}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a `journal verify`/`salvage` report; fails when it found problems.
fn print_repair(
    report: &crate::journal::admin::RepairReport,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
