//! What the binaries share: logging set up from `-v`/`-q`/`RUST_LOG`, turning an
//! error into one line on stderr with a non-zero exit code, and the tutorial clients'
//! Ctrl-C line.

use std::fmt::Display;
use std::io::Write;

/// Sets up env_logger. `-q` shows errors only, `-v` debug, `-vv` trace; without either,
/// `RUST_LOG` decides as env_logger users expect, and the default is info. Info lines
/// print bare, like the tutorial's transcripts; other levels carry their level.
pub fn init_logging(verbose: u8, quiet: bool) {
    init_logging_with(verbose, quiet, "info");
}

/// Like [`init_logging`] for the clients: by default the connection core's notes on a
/// connection that timed out are left to `-v`, since the client reports how each of its
/// connections ended in its own words.
pub fn init_client_logging(verbose: u8, quiet: bool) {
    init_logging_with(verbose, quiet, "info,multiconn::connection=warn");
}

fn init_logging_with(verbose: u8, quiet: bool, default: &str) {
    let mut builder = env_logger::Builder::new();
    match (quiet, verbose) {
        (true, _) => builder.parse_filters("error"),
        (false, 0) => match std::env::var("RUST_LOG") {
            Ok(spec) if !spec.is_empty() => builder.parse_filters(&spec),
            _ => builder.parse_filters(default),
        },
        (false, 1) => builder.parse_filters("debug"),
        (false, _) => builder.parse_filters("trace"),
    };
    builder.format(|buf, record| {
        if record.level() == log::Level::Info {
            writeln!(buf, "{}", record.args())
        } else {
            writeln!(
                buf,
                "{}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            )
        }
    });
    // Only fails if a logger is already set (tests calling twice): keep the first.
    let _ = builder.try_init();
}

/// Prints `error: {e}` and exits with `code`.
pub fn die(e: impl Display, code: i32) -> ! {
    eprintln!("error: {e}");
    std::process::exit(code)
}

/// Exit status of a client stopped by Ctrl-C, as shells report a SIGINT death.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Ctrl-C ends a tutorial client as the tutorial's do (`except KeyboardInterrupt`), with
/// its line on stdout rather than the shell's bare `^C`, and exit status 130. A thread
/// waits for the signal, so whatever the main thread is doing (a poll, a blocking
/// connect) is not in the way; stdout must not be held locked by the main thread.
pub fn exit_on_ctrl_c() {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT]) else {
        return; // without the handler, Ctrl-C still ends the process, only silently
    };
    let spawned = std::thread::Builder::new()
        .name("ctrl-c".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                println!("Caught keyboard interrupt, exiting");
                std::process::exit(EXIT_INTERRUPTED);
            }
        });
    if let Err(e) = spawned {
        log::debug!("no Ctrl-C thread ({e}): Ctrl-C ends the process silently");
    }
}
