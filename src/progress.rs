//! Progress of long CLI work: a bar on a terminal, plain lines (every 10%) when stderr is not
//! one, so logs of CI and cron stay readable.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    tty: bool,
    last_decile: u64,
    started: Instant,
}

impl Progress {
    /// `total` 0 means unknown (only the final line is printed).
    pub fn new(label: &str, total: u64) -> Self {
        Self {
            label: label.to_string(),
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
            last_decile: 0,
            started: Instant::now(),
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if self.total == 0 {
            return;
        }
        let pct = (self.done.min(self.total) * 100 / self.total) as usize;
        if self.tty {
            let width = 30;
            let filled = pct * width / 100;
            eprint!(
                "\r{} [{}{}] {:>3}% {}/{}",
                self.label,
                "#".repeat(filled),
                " ".repeat(width - filled),
                pct,
                self.done,
                self.total
            );
            let _ = std::io::stderr().flush();
        } else if (pct as u64) / 10 > self.last_decile {
            self.last_decile = pct as u64 / 10;
            eprintln!("{}: {}% ({}/{})", self.label, pct, self.done, self.total);
        }
    }

    pub fn done(&self, msg: &str) {
        if self.tty && self.total > 0 {
            eprintln!();
        }
        eprintln!(
            "{}: {msg} ({:.1} s)",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
    }
}
