//! Offline wake-ups across hosts. An `ONOFFLINEEVENT` (or an install) reaches one host, but
//! the portal's offline poller runs on whichever host holds its lease `offline.<member>`. The
//! host that got the event announces the portal on the core subject
//! `b24.<S>.offline.wake.<member>`; every host listens and wakes its own poller of that portal
//! (one not holding the lease just looks at the lease again). Core NATS, not the log: a lost
//! wake-up costs only the wait until the holder's next poll, never a row.

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::connect::{Link, subject_token};

fn subject(link: &Link, member: &str) -> String {
    format!("b24.{}.offline.wake.{}", link.names.stream, subject_token(member))
}

/// Tells every other host that `member`'s offline queue has rows. The payload is this host's
/// id and the member id (the subject token may have changed it), one a line.
pub(super) async fn announce(link: &Link, member: &str) {
    let payload = format!("{}\n{member}", link.host_id);
    if let Err(e) = link.client.publish(subject(link, member), payload.into()).await {
        tracing::debug!(member_id = %member, "cannot announce offline rows to the other hosts: {e}");
    }
}

/// The members other hosts announced, from now on. The subscription is made again when it
/// ends; the task stops when the receiver is dropped.
pub(super) fn listen(link: &Link) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    let link = link.clone();
    tokio::spawn(async move {
        let all = format!("b24.{}.offline.wake.>", link.names.stream);
        while !tx.is_closed() {
            let mut wakes = match link.client.subscribe(all.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot listen for other hosts' offline wake-ups: {e}");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                let message = tokio::select! {
                    m = wakes.next() => m,
                    () = tx.closed() => return,
                };
                let Some(message) = message else { break };
                let text = String::from_utf8_lossy(&message.payload);
                let Some((from, member)) = text.split_once('\n') else { continue };
                if from != link.host_id && tx.send(member.to_owned()).is_err() {
                    return;
                }
            }
        }
    });
    rx
}
