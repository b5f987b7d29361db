//! `multiconn-client --report FILE.html` against the in-process echo server, the page
//! loaded in headless Chromium (Debian's `chromium`, started here with `--dump-dom` and
//! `--screenshot`): no script errors, no fetches, and the plotted points are the run's
//! `--json` figures. The screenshot is kept under target/test-artefacts/.

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{client, json, TestServer};
use multiconn::protocol::echo::Echo;
use serde_json::Value;

/// How long Chromium may take to load a local page and dump or draw it.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// Chromium's binary, or `None` (with a line saying so) if the machine has none.
fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        println!("skipping: chromium is not installed (.ci/run installs it)");
    }
    found
}

/// Runs headless Chromium on `page` with `extra` flags, in a fresh profile and its own
/// process group (killed by id if it overruns); returns its stdout and stderr.
fn run_chromium(binary: &str, dir: &Path, page: &Path, extra: &[String]) -> (String, String) {
    let profile = dir.join(format!("profile-{}", extra.len()));
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start chromium");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let err_tx = tx.clone();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        let _ = tx.send((true, text));
    });
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        let _ = err_tx.send((false, text));
    });
    let (mut stdout, mut stderr) = (None, None);
    while stdout.is_none() || stderr.is_none() {
        match rx.recv_timeout(BROWSER_TIMEOUT) {
            Ok((true, text)) => stdout = Some(text),
            Ok((false, text)) => stderr = Some(text),
            Err(_) => {
                // SAFETY: kill(2) on the process group of the child started above.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                panic!("chromium did not finish within {BROWSER_TIMEOUT:?}");
            }
        }
    }
    let _ = child.wait();
    (stdout.unwrap(), stderr.unwrap())
}

/// A scratch directory of this test's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("multiconn-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `attr="value"` of one tag's text.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = start + tag[start..].find('"')?;
    Some(&tag[start..end])
}

/// The plotted points of the DOM: (series, x, value) of every `<circle data-series>`.
fn points(dom: &str) -> Vec<(String, f64, f64)> {
    dom.match_indices("<circle ")
        .filter_map(|(i, _)| {
            let tag = &dom[i..i + dom[i..].find('>')?];
            Some((
                attribute(tag, "data-series")?.to_string(),
                attribute(tag, "data-x")?.parse().ok()?,
                attribute(tag, "data-v")?.parse().ok()?,
            ))
        })
        .collect()
}

fn series(points: &[(String, f64, f64)], name: &str) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter(|p| p.0 == name)
        .map(|p| (p.1, p.2))
        .collect()
}

/// Where the screenshot is kept: target/test-artefacts/ (beside target/tmp).
fn artefact_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("test-artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A 2 s ramp against the echo server with --report and --json: the page fetches
/// nothing, loads in Chromium without a script error, and its charts hold every second of
/// the JSON's intervals (answers, intended, sent, late, p50, p99, max) and the summary's
/// percentiles on the curve; a screenshot of it is kept as an artefact.
#[test]
fn report_page_shows_the_run_in_chromium() {
    let server = TestServer::start(Echo, |_| {});
    let dir = TempDir::new();
    let page = dir.0.join("report.html");
    let port = server.addr.port().to_string();
    let out = client(&[
        "127.0.0.1",
        &port,
        "2",
        "--duration",
        "2s",
        "--warmup",
        "0",
        "--rate",
        "100..300",
        "--ramp",
        "2s",
        "--json",
        "--report",
        page.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let report = json(&out);
    let html = std::fs::read_to_string(&page).expect("the page was written");

    // Self-contained: nothing to fetch, whatever the browser.
    for needle in ["src=", "href=", "@import", "url(", "https://"] {
        assert!(!html.contains(needle), "the page has {needle}");
    }
    let http: Vec<&str> = html
        .match_indices("http://")
        .map(|(i, _)| &html[i..(i + 40).min(html.len())])
        .filter(|s| !s.starts_with("http://www.w3.org/2000/svg"))
        .collect();
    assert!(http.is_empty(), "{http:?}");

    let Some(binary) = chromium() else {
        return;
    };
    let (dom, stderr) = run_chromium(binary, &dir.0, &page, &["--dump-dom".to_string()]);
    assert!(dom.contains("<svg id=\"throughput\""), "{dom:.500}");
    // The page's own error handler writes into <html data-errors>; Chromium's log says
    // "Uncaught" for anything that escaped it.
    assert!(!dom.contains("data-errors="), "script errors: {dom:.800}");
    for line in stderr.lines() {
        assert!(
            !line.contains("Uncaught") && !line.contains(":CONSOLE"),
            "console: {line}"
        );
    }
    let plotted = points(&dom);
    let count = attribute(&dom[dom.find("<body").unwrap()..], "data-points");
    assert_eq!(
        count,
        Some(plotted.len().to_string().as_str()),
        "the inline script ran"
    );

    let intervals = report["intervals"].as_array().expect("intervals");
    assert_eq!(intervals.len(), 2, "{intervals:?}");
    let from_json = |key: &str| -> Vec<(f64, f64)> {
        intervals
            .iter()
            .map(|i| (i["t"].as_f64().unwrap(), i[key].as_f64().unwrap()))
            .collect()
    };
    for (chart, key) in [
        ("throughput", "requests"),
        ("intended", "intended"),
        ("sent", "sent"),
        ("late", "late"),
        ("errors", "errors"),
        ("p50", "p50_ms"),
        ("p99", "p99_ms"),
        ("max", "max_ms"),
    ] {
        let drawn = series(&plotted, chart);
        let want = from_json(key);
        assert_eq!(drawn.len(), want.len(), "{chart}: {drawn:?} vs {want:?}");
        for ((dx, dv), (wx, wv)) in drawn.iter().zip(&want) {
            assert_eq!(dx, wx, "{chart}");
            assert!(
                (dv - wv).abs() < 1e-3,
                "{chart} at {dx}s: drew {dv}, JSON {wv}"
            );
        }
    }
    // The ramp's plan: ceil(N(t)) per second, N(t) = 100 t + 50 t²: 150, then 250.
    assert_eq!(from_json("intended"), [(0.0, 150.0), (1.0, 250.0)]);
    let curve = series(&plotted, "percentile");
    let latency = &report["latency_us"];
    for (p, key) in [(50.0, "p50"), (90.0, "p90"), (99.0, "p99")] {
        let ms = latency[key].as_f64().unwrap() / 1000.0;
        assert!(
            curve.iter().any(|&(x, v)| x == p && (v - ms).abs() < 1e-3),
            "{p}% at {ms} ms not on the curve {curve:?}"
        );
    }
    assert!(curve
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    for label in [">50%<", ">90%<", ">99%<"] {
        assert!(dom.contains(label), "the percentile axis has {label}");
    }

    let shot = artefact_dir().join("report.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        binary,
        &dir.0,
        &page,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1200,1600".to_string(),
        ],
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 10_000, "{} bytes: a blank page?", png.len());
    println!("screenshot of the report page: {}", shot.display());
    let embedded: Value = {
        let start = html.find("id=\"data\">").unwrap() + "id=\"data\">".len();
        let end = start + html[start..].find("</script>").unwrap();
        serde_json::from_str(&html[start..end]).unwrap()
    };
    assert_eq!(
        embedded["seconds"][1]["requests"], intervals[1]["requests"],
        "the embedded data is the run's"
    );
}

/// A --report path that cannot be created fails before the run, with one error line.
#[test]
fn unwritable_report_path_is_an_error() {
    let out = client(&[
        "127.0.0.1",
        "9",
        "1",
        "--duration",
        "1s",
        "--report",
        "/nonexistent-dir/r.html",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("error: cannot create /nonexistent-dir/r.html"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}
