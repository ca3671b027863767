//! Snapshot requests: the engine thread hands rows over chunk by chunk (never waiting for
//! the network); this task writes them as `rows` frames, then the request's result.

use std::sync::Arc;
use std::time::Duration;

use quinn::SendStream;
use tally_protocol::wire;
use tally_protocol::{Command, Reason, SnapshotRows};
use tokio::sync::mpsc::error::TrySendError;
use tracing::warn;

use super::{auth, enqueue, write_answer, Peer, Shared, StreamEnd, RESTARTING};
use crate::ingest::Submission;
use crate::snapshot_stream::{Offer, RowSink};

/// Chunks waiting for this task: about 1 MB each. A reader slower than the engine makes the
/// engine keep its chunk and go on with other work. (16 made the snapshot no faster on two
/// cores and took ingestion down to 57%: the reader's work competes with the engine's.)
const CHUNKS_AHEAD: usize = 4;

/// The engine's side of the rows channel.
struct ChannelSink(tokio::sync::mpsc::Sender<SnapshotRows>);

impl RowSink for ChannelSink {
    fn offer(&mut self, rows: SnapshotRows) -> Offer {
        match self.0.try_send(rows) {
            Ok(()) => Offer::Taken,
            Err(TrySendError::Full(rows)) => Offer::Full(rows),
            Err(TrySendError::Closed(_)) => Offer::Closed,
        }
    }
}

/// Serves a request frame that holds a `snapshot` command: it must be alone in its frame
/// and come from an operator. Answers with `rows` frames, then one results frame.
pub(super) async fn serve(
    shared: &Shared,
    peer: &Peer,
    send: &mut SendStream,
    request_id: u64,
    mut commands: Vec<Command>,
) -> Result<(), StreamEnd> {
    if commands.len() != 1 {
        shared.metrics.frames_invalid.add(1);
        let message = "a snapshot request must be the only command in its frame";
        let frame = wire::error_frame(request_id, Reason::Invalid, message);
        return write_answer(shared, send, frame).await;
    }
    let mut command = commands.pop().expect("one command");
    shared.metrics.requests.add(1);
    shared.metrics.commands.add(1);
    if let Err(refusal) = auth::authorize(&peer.identity, &mut command) {
        let identity = &peer.identity;
        warn!(%identity, merchant = %command.merchant, reason = %refusal.reason, "snapshot refused: {}", refusal.message);
        let results = vec![Arc::new(refusal.result(&command))];
        shared.metrics.count_results(&results);
        let frame = wire::results_frame(request_id, results);
        return write_answer(shared, send, frame).await;
    }
    let queue_wait = Duration::from_millis(shared.limits.queue_wait_ms);
    let Ok(Ok(_permit)) = tokio::time::timeout(queue_wait, shared.commands.acquire_many(1)).await
    else {
        return overloaded(shared, send, request_id, Reason::Overloaded.message()).await;
    };
    let (rows, mut chunks) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
    let (reply, answered) = tokio::sync::oneshot::channel();
    let submission = Submission::snapshot(
        command,
        Box::new(move |results| {
            let _ = reply.send(results);
        }),
        Box::new(ChannelSink(rows)),
    );
    if let Err(message) = enqueue(shared, submission) {
        return overloaded(shared, send, request_id, message).await;
    }
    // The engine drops its side once the snapshot is finished or abandoned.
    while let Some(chunk) = chunks.recv().await {
        write_answer(shared, send, wire::rows_frame(request_id, &chunk)).await?;
    }
    match answered.await {
        Ok(results) => {
            shared.metrics.count_results(&results);
            write_answer(shared, send, wire::results_frame(request_id, results)).await
        }
        Err(_) => overloaded(shared, send, request_id, RESTARTING).await,
    }
}

async fn overloaded(
    shared: &Shared,
    send: &mut SendStream,
    request_id: u64,
    message: &str,
) -> Result<(), StreamEnd> {
    shared.metrics.requests_overloaded.add(1);
    let frame = wire::error_frame(request_id, Reason::Overloaded, message);
    write_answer(shared, send, frame).await
}
