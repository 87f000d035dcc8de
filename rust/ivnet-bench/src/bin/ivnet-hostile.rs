//! `ivnet-hostile`: a hostile peer for tests (see `ivnet_bench::hostile`). It joins a link
//! served by `ivnet server` in place of the host peer, bridged to a TAP, behaves honestly,
//! attacks, then behaves honestly again.
//!
//! The attack starts after `--after` seconds or on SIGUSR1, and ends after `--duration`
//! seconds or on SIGUSR2; with signals, every SIGUSR1 starts another attack. SIGINT/SIGTERM
//! stop the program. It prints `ATTACK start <name>` and
//! `ATTACK end <name>` on stdout when the phases change.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use ivnet_bench::hostile::{self, Attack, Flags, Schedule};
use ivnet_dataplane::client::Client;
use ivnet_dataplane::link::Link;
use ivnet_dataplane::tap::Tap;

#[derive(Parser)]
#[command(
    name = "ivnet-hostile",
    about = "A hostile ivshmem-net peer, for tests"
)]
struct Cli {
    /// The ivnet server's UNIX socket.
    #[arg(long)]
    socket: PathBuf,
    /// TAP device to bridge to while honest (created if needed).
    #[arg(long)]
    tap: String,
    /// The attack.
    #[arg(long, value_enum)]
    attack: Attack,
    /// Seconds of honest behaviour before the attack (default: wait for SIGUSR1).
    #[arg(long)]
    after: Option<f64>,
    /// Seconds the attack lasts (default: until SIGUSR2).
    #[arg(long)]
    duration: Option<f64>,
}

static START: AtomicBool = AtomicBool::new(false);
static END: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    let f = match sig {
        libc::SIGUSR1 => &START,
        libc::SIGUSR2 => &END,
        _ => &STOP,
    };
    f.store(true, Ordering::Relaxed);
}

fn secs(s: Option<f64>, what: &str) -> Result<Option<Duration>, String> {
    s.map(|v| Duration::try_from_secs_f64(v).map_err(|e| format!("--{what} {v}: {e}")))
        .transpose()
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    for sig in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs an async-signal-safe handler that only stores to atomics.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let r = (|| -> Result<(), String> {
        let when = Schedule {
            after: secs(cli.after, "after")?,
            duration: secs(cli.duration, "duration")?,
        };
        let mut tap = Tap::open(&cli.tap).map_err(|e| e.to_string())?;
        let client = Client::connect(&cli.socket, 2).map_err(|e| e.to_string())?;
        let mut link = Link::new(client).map_err(|e| e.to_string())?;
        let flags = Flags {
            start: &START,
            end: &END,
            stop: &STOP,
        };
        hostile::run(&mut link, &mut tap, cli.attack, when, &flags).map_err(|e| e.to_string())
    })();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ivnet-hostile: error: {e}");
            ExitCode::FAILURE
        }
    }
}
