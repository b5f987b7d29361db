//! The three binaries' first minutes for a newcomer: `--help` grouped under headings,
//! wrapped to the terminal (COLUMNS when there is none), ending with examples; `-V` naming
//! the binary; and zero or nonsense values of the client's flags refused as usage errors.

mod common;

use std::process::Command;
use std::time::Duration;

use common::client;

fn bin(name: &str) -> &'static str {
    match name {
        "multiconn-server" => env!("CARGO_BIN_EXE_multiconn-server"),
        "multiconn-client" => env!("CARGO_BIN_EXE_multiconn-client"),
        "app-client" => env!("CARGO_BIN_EXE_app-client"),
        other => panic!("unknown binary {other}"),
    }
}

/// Runs `name` with `args` and COLUMNS set; (exit code, stdout).
fn run(name: &str, args: &[&str], columns: usize) -> (Option<i32>, String) {
    let out = Command::new(bin(name))
        .args(args)
        .env("COLUMNS", columns.to_string())
        .output()
        .expect("run the binary");
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

/// `-V` prints `NAME VERSION`, for each binary under its own name.
#[test]
fn version_names_the_binary() {
    for name in ["multiconn-server", "multiconn-client", "app-client"] {
        let (code, stdout) = run(name, &["-V"], 80);
        assert_eq!(code, Some(0));
        assert_eq!(
            stdout,
            format!("{name} {}\n", env!("CARGO_PKG_VERSION")),
            "{name} -V"
        );
    }
}

/// `--help` shows the option headings and ends with examples, every line within the
/// terminal's width.
#[test]
fn help_has_headings_examples_and_wraps() {
    let expected: [(&str, &[&str]); 3] = [
        (
            "multiconn-client",
            &[
                "Target:", "Load:", "UDP:", "HTTP:", "File:", "TLS:", "Output:",
            ],
        ),
        ("multiconn-server", &["Protocol options:"]),
        ("app-client", &["Arguments:", "Options:"]),
    ];
    for (name, headings) in expected {
        let (code, help) = run(name, &["--help"], 72);
        assert_eq!(code, Some(0), "{name} --help");
        for heading in headings {
            assert!(
                help.lines().any(|l| l == *heading),
                "{name}: no {heading:?} heading in\n{help}"
            );
        }
        let examples = help
            .lines()
            .position(|l| l.starts_with("Examples"))
            .unwrap_or_else(|| panic!("{name}: no examples in\n{help}"));
        let after: Vec<&str> = help.lines().skip(examples + 1).collect();
        assert!(
            after
                .iter()
                .filter(|l| l.trim_start().starts_with(name))
                .count()
                >= 3,
            "{name}: fewer than 3 example commands after the heading:\n{help}"
        );
        for line in help.lines() {
            assert!(
                line.chars().count() <= 72,
                "{name}: a line longer than COLUMNS=72: {line:?}"
            );
        }
        // A narrower terminal wraps the descriptions again.
        let (_, narrow) = run(name, &["--help"], 60);
        assert!(narrow.lines().count() > help.lines().count(), "{name}");
    }
    let (_, client_help) = run("multiconn-client", &["--help"], 100);
    for example in ["--udp", "http://", "--rate"] {
        assert!(
            client_help
                .lines()
                .any(|l| l.trim_start().starts_with("multiconn-client") && l.contains(example)),
            "no example with {example}:\n{client_help}"
        );
    }
}

/// Zero or nonsense values of the client's flags: exit 2 and stderr starting `error:`,
/// at once (nothing is connected).
#[test]
fn zero_and_nonsense_values_are_usage_errors() {
    let load = ["127.0.0.1", "9", "1", "--requests", "1"];
    let cases: &[&[&str]] = &[
        &["127.0.0.1", "9", "1", "--duration", "0s"],
        &["127.0.0.1", "9", "1", "--duration", "0"],
        &["127.0.0.1", "9", "1", "--timeout", "0"],
        &["127.0.0.1", "9", "1", "--timeout", "0s", "--duration", "1s"],
        &["127.0.0.1", "9", "0"],
        &["127.0.0.1", "9", "-3"],
        &["127.0.0.1", "99999", "1"],
        &["127.0.0.1", "9", "1", "--requests", "0"],
        &["127.0.0.1", "9", "1", "--duration", "-1s"],
        &["127.0.0.1", "9", "1", "--duration", "soon"],
    ];
    let with_load: &[&[&str]] = &[
        &["--connect-rate", "0"],
        &["--connect-rate", "-1"],
        &["--rate", "0"],
        &["--rate", "NaN"],
        &["--connect-timeout", "0"],
        &["--threads", "0"],
        &["--pipeline", "0"],
        &["--size", "0"],
    ];
    let mut all: Vec<Vec<&str>> = cases.iter().map(|c| c.to_vec()).collect();
    for extra in with_load {
        let mut args = load.to_vec();
        args.extend_from_slice(extra);
        all.push(args);
    }
    for args in all {
        let out = client(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("error:"), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
        assert!(out.elapsed < Duration::from_secs(5), "{args:?}");
    }
    // Our own checks say it in one line.
    let out = client(&["127.0.0.1", "9", "1", "--duration", "0s"]);
    assert_eq!(out.stderr, "error: --duration must be longer than 0\n");
    let out = client(&["127.0.0.1", "9", "1", "--timeout", "0"]);
    assert_eq!(out.stderr, "error: --timeout must be longer than 0\n");
}
