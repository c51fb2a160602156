//! The `WatchEvents` stream: live events of the wanted kinds, ended with RESOURCE_EXHAUSTED when
//! the subscriber lags behind the bounded broadcast (naming the last sequence it got, so it knows
//! what it missed), and ended cleanly when the master stops.

use std::pin::Pin;

use futures::Stream;
use ragmesh_proto::v1;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{Event, EventKind};

/// The stream type of `WatchEvents`.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<v1::WatchEventsResponse, Status>> + Send + 'static>>;

/// The status a lagging subscriber gets.
fn lagged(missed: u64, last: u64) -> Status {
    Status::resource_exhausted(format!(
        "this WatchEvents stream fell behind: {missed} event(s) after seq {last} were dropped for it; \
         call WatchEvents again (and read faster, or filter by kind)"
    ))
}

/// Streams `live` events of `kinds` (empty: every kind) until `shutdown`.
pub fn watch(live: broadcast::Receiver<Event>, kinds: Vec<EventKind>, shutdown: CancellationToken) -> EventStream {
    let stream = futures::stream::unfold(Some((live, 0u64)), move |state| {
        let kinds = kinds.clone();
        let shutdown = shutdown.clone();
        async move {
            let (mut live, mut last) = state?;
            loop {
                let received = tokio::select! {
                    () = shutdown.cancelled() => return None,
                    received = live.recv() => received,
                };
                match received {
                    Ok(event) => {
                        last = event.seq;
                        if !kinds.is_empty() && !kinds.contains(&event.kind) {
                            continue;
                        }
                        let response = v1::WatchEventsResponse { event: Some(event.to_wire()) };
                        return Some((Ok(response), Some((live, last))));
                    }
                    Err(RecvError::Closed) => return None,
                    Err(RecvError::Lagged(missed)) => return Some((Err(lagged(missed, last)), None)),
                }
            }
        }
    });
    Box::pin(stream)
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;
    use crate::events::Draft;

    fn event(seq: u64, kind: EventKind) -> Event {
        Event::new(seq, 0, Draft::node(kind, "n", ""))
    }

    #[tokio::test]
    async fn a_subscriber_gets_its_kinds_in_order() {
        let (tx, rx) = broadcast::channel(16);
        let mut stream = watch(rx, vec![EventKind::NodeDown], CancellationToken::new());
        for (seq, kind) in [(1, EventKind::NodeUp), (2, EventKind::NodeDown), (3, EventKind::NodeDown)] {
            tx.send(event(seq, kind)).expect("send");
        }
        drop(tx);
        let mut seqs = Vec::new();
        while let Some(item) = stream.next().await {
            seqs.push(item.expect("ok").event.expect("event").seq);
        }
        assert_eq!(seqs, [2, 3]);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_gets_a_clear_error_not_a_silent_gap() {
        let (tx, rx) = broadcast::channel(2);
        let mut stream = watch(rx, Vec::new(), CancellationToken::new());
        tx.send(event(1, EventKind::NodeUp)).expect("send");
        assert_eq!(stream.next().await.expect("item").expect("ok").event.expect("event").seq, 1);
        for seq in 2..=6 {
            tx.send(event(seq, EventKind::NodeUp)).expect("send");
        }
        let status = stream.next().await.expect("item").expect_err("lagged");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("3 event(s) after seq 1 were dropped"), "{}", status.message());
        assert!(stream.next().await.is_none(), "the stream ends after the error");
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_master_stops() {
        let (_tx, rx) = broadcast::channel::<Event>(2);
        let shutdown = CancellationToken::new();
        let mut stream = watch(rx, Vec::new(), shutdown.clone());
        shutdown.cancel();
        assert!(stream.next().await.is_none());
    }
}
