//! Packet capture of one partition (`ctl capture`): a copy of every frame its driver sends and
//! every frame delivered to it, handed to whoever asked. Off, it costs one relaxed load per TX
//! batch and per RX run; on, each frame is copied once into a bounded queue (a slow reader
//! loses frames, counted, never slows the data path down).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::SystemTime;

/// Frames queued for the reader before new ones are dropped.
pub const QUEUE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sent by the partition's driver.
    Tx,
    /// Delivered to it.
    Rx,
}

pub struct Captured {
    pub dir: Direction,
    pub at: SystemTime,
    pub frame: Vec<u8>,
}

#[derive(Default)]
pub struct Capture {
    on: AtomicBool,
    tap: Mutex<Option<SyncSender<Captured>>>,
    dropped: AtomicU64,
}

impl Capture {
    /// Whether frames are to be recorded: the data path's only cost while nobody captures.
    #[inline]
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Starts a capture; a capture already running ends (its reader sees the end).
    pub fn start(&self) -> Receiver<Captured> {
        let (tx, rx) = sync_channel(QUEUE);
        *self.tap.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        self.dropped.store(0, Ordering::Relaxed);
        self.on.store(true, Ordering::Relaxed);
        rx
    }

    pub fn stop(&self) {
        self.on.store(false, Ordering::Relaxed);
        *self.tap.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Frames lost because the reader fell behind, in the current capture.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records one frame (its bytes are produced only if a capture runs).
    pub fn record(&self, dir: Direction, fill: impl FnOnce(&mut Vec<u8>)) {
        let guard = self.tap.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = guard.as_ref() else {
            return;
        };
        let mut frame = Vec::new();
        fill(&mut frame);
        let c = Captured {
            dir,
            at: SystemTime::now(),
            frame,
        };
        match tx.try_send(c) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The reader went away: stop paying for copies.
            Err(TrySendError::Disconnected(_)) => {
                drop(guard);
                self.stop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_while_on_drops_when_full_stops_when_the_reader_leaves() {
        let c = Capture::default();
        assert!(!c.on());
        c.record(Direction::Tx, |_| panic!("no copy while off"));
        let rx = c.start();
        assert!(c.on());
        for i in 0..QUEUE + 3 {
            c.record(Direction::Rx, |v| v.push(i as u8));
        }
        assert_eq!(c.dropped(), 3);
        let first = rx.recv().unwrap();
        assert_eq!((first.dir, first.frame), (Direction::Rx, vec![0]));
        drop(rx);
        c.record(Direction::Tx, |v| v.push(1));
        assert!(!c.on(), "a departed reader ends the capture");
    }
}
