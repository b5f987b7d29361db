//! The `--report FILE.html` page: one self-contained file (inline SVG drawn here, inline
//! CSS, a few lines of inline script, no fetches) with throughput and latency per second,
//! the percentile curve on a 1/(1−p) log axis, status and error counts, and the options.
//! Every plotted point carries `data-series`/`data-x`/`data-v` attributes, and the data
//! behind the page is embedded as `<script type="application/json" id="data">`.

use std::fmt::Write as _;

use serde::Serialize;

use super::report::LoadReport;

/// What the page shows, as plain values (filled from a [`crate::client::LoadReport`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PageData {
    /// The report's first line: connections, workload, duration.
    pub title: String,
    pub seconds: Vec<SecondPoint>,
    pub percentiles: Vec<PercentilePoint>,
    /// Answers by status code (HTTP), then errors by kind, each `(name, count)`.
    pub statuses: Vec<(String, u64)>,
    pub errors: Vec<(String, u64)>,
    /// The run's options and totals, `(name, value)` in display order.
    pub options: Vec<(String, String)>,
}

/// One second of the measured time.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SecondPoint {
    /// Seconds from the start of the measured time (the second `[t, t + 1)`).
    pub t: u64,
    /// Answers in that second (the achieved throughput).
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// With a rate: slots the plan put in that second, requests sent, and late sends.
    pub intended: Option<u64>,
    pub sent: Option<u64>,
    pub late: Option<u64>,
}

/// A point of the latency distribution: `percentile` (0 to 100, below 100) of answers
/// took at most `latency_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PercentilePoint {
    pub percentile: f64,
    pub latency_ms: f64,
}

impl PageData {
    /// What the page shows of a run's report.
    pub fn from_report(report: &LoadReport) -> PageData {
        let text = report.to_string();
        let title = text
            .lines()
            .find(|l| !l.starts_with("INTERRUPTED"))
            .unwrap_or_default()
            .to_string();
        let seconds = report
            .per_second
            .iter()
            .map(|i| SecondPoint {
                t: i.t,
                requests: i.requests,
                errors: i.errors,
                p50_ms: i.p50_ms,
                p99_ms: i.p99_ms,
                max_ms: i.max_ms,
                intended: i.intended,
                sent: i.sent,
                late: i.late,
            })
            .collect();
        let percentiles = report
            .percentile_curve
            .iter()
            .map(|&(percentile, latency_ms)| PercentilePoint {
                percentile,
                latency_ms,
            })
            .collect();
        let statuses = report
            .status
            .iter()
            .flatten()
            .map(|(code, n)| (code.clone(), *n))
            .collect();
        let e = &report.errors;
        let errors = [
            ("total", e.total),
            ("connect", e.connect),
            ("tls", e.tls),
            ("reset", e.reset),
            ("closed mid-response", e.closed),
            ("timeout", e.timeout),
            ("mismatched", e.mismatched),
            ("status", e.status),
        ]
        .into_iter()
        .map(|(kind, n)| (kind.to_string(), n))
        .chain([("requests lost".to_string(), report.requests.failed)])
        .collect();
        let mut options: Vec<(String, String)> = Vec::new();
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&report.options) {
            for (name, value) in fields {
                match value {
                    serde_json::Value::Null => {}
                    serde_json::Value::String(s) => options.push((name, s)),
                    other => options.push((name, other.to_string())),
                }
            }
        }
        let latency = &report.latency_us;
        let ms = |us: u64| trim_float(us as f64 / 1000.0, 3);
        options.extend(
            [
                ("measured seconds", report.elapsed_s.to_string()),
                ("requests completed", report.requests.completed.to_string()),
                (
                    "requests per second",
                    report.requests.per_second.to_string(),
                ),
                ("latency p50 ms", ms(latency.p50)),
                ("latency p99 ms", ms(latency.p99)),
                ("latency p99.9 ms", ms(latency.p99_9)),
                ("latency max ms", ms(latency.max)),
            ]
            .map(|(name, value)| (name.to_string(), value)),
        );
        if let Some(pace) = &report.pace {
            options.extend(
                [
                    ("intended", pace.intended.to_string()),
                    ("sent", pace.sent.to_string()),
                    (
                        "late (ms behind the slot)",
                        format!("{} (> {})", pace.late, pace.late_after_ms),
                    ),
                ]
                .map(|(name, value)| (name.to_string(), value)),
            );
        }
        if report.partial {
            options.push(("partial".into(), "interrupted: figures so far".into()));
        }
        PageData {
            title,
            seconds,
            percentiles,
            statuses,
            errors,
            options,
        }
    }
}

/// Chart size in SVG user units, and the margins the axes' labels take.
const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 45.0;
/// The percentile axis ends at 99.9999% (1/(1−p) = 10⁶): past that a run of a few
/// million answers has no samples to say anything.
const MAX_NINES: u32 = 6;

/// How the x axis maps values.
#[derive(Clone, Copy)]
enum XAxis {
    /// Seconds from the start, linear.
    Seconds,
    /// A percentile p, placed at log10(1 / (1 − p/100)).
    Percentile,
}

impl XAxis {
    fn position(self, x: f64) -> f64 {
        match self {
            XAxis::Seconds => x,
            XAxis::Percentile => (1.0 / (1.0 - x / 100.0).max(1e-12)).log10(),
        }
    }
}

/// One line of a chart.
struct Line<'a> {
    series: &'a str,
    label: &'a str,
    color: &'a str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// Renders the whole page.
pub fn render(data: &PageData) -> String {
    let mut page = String::with_capacity(64 * 1024);
    page.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>multiconn-client report</title>\n",
    );
    // First in the page, so an error anywhere after it is recorded where a headless
    // browser's DOM dump (and a person's inspector) shows it.
    page.push_str(
        "<script>window.onerror = function (message) {\n  var root = document.documentElement;\n  \
         root.setAttribute('data-errors', (root.getAttribute('data-errors') || '') + message + '\\n');\n};\
         </script>\n",
    );
    page.push_str(STYLE);
    page.push_str("</head>\n<body>\n");
    let _ = writeln!(page, "<h1>{}</h1>", escape(&data.title));

    let rated = data.seconds.iter().any(|s| s.intended.is_some());
    let t_of = |s: &SecondPoint| s.t as f64;
    let mut throughput = vec![Line {
        series: "throughput",
        label: "answers/s",
        color: "#1f77b4",
        dashed: false,
        points: data
            .seconds
            .iter()
            .map(|s| (t_of(s), s.requests as f64))
            .collect(),
    }];
    if rated {
        let of = |f: fn(&SecondPoint) -> Option<u64>| -> Vec<(f64, f64)> {
            data.seconds
                .iter()
                .map(|s| (t_of(s), f(s).unwrap_or(0) as f64))
                .collect()
        };
        throughput.push(Line {
            series: "sent",
            label: "sent/s",
            color: "#2ca02c",
            dashed: false,
            points: of(|s| s.sent),
        });
        throughput.push(Line {
            series: "late",
            label: "late sends/s",
            color: "#ff7f0e",
            dashed: false,
            points: of(|s| s.late),
        });
    }
    throughput.push(Line {
        series: "errors",
        label: "errors/s",
        color: "#d62728",
        dashed: false,
        points: data
            .seconds
            .iter()
            .map(|s| (t_of(s), s.errors as f64))
            .collect(),
    });
    if rated {
        // Last, so the dashed plan is drawn over the lines that follow it.
        throughput.push(Line {
            series: "intended",
            label: "intended/s",
            color: "#7f7f7f",
            dashed: true,
            points: data
                .seconds
                .iter()
                .map(|s| (t_of(s), s.intended.unwrap_or(0) as f64))
                .collect(),
        });
    }
    let title = if rated {
        "Throughput per second: answers, and intended vs sent requests"
    } else {
        "Throughput per second"
    };
    chart(
        &mut page,
        "throughput",
        title,
        "per second",
        XAxis::Seconds,
        &throughput,
    );

    let latency_line = |series, label, color, f: fn(&SecondPoint) -> f64| Line {
        series,
        label,
        color,
        dashed: false,
        points: data.seconds.iter().map(|s| (t_of(s), f(s))).collect(),
    };
    let latency = [
        latency_line("p50", "p50", "#1f77b4", |s| s.p50_ms),
        latency_line("p99", "p99", "#ff7f0e", |s| s.p99_ms),
        latency_line("max", "max", "#d62728", |s| s.max_ms),
    ];
    chart(
        &mut page,
        "latency",
        "Latency per second",
        "ms",
        XAxis::Seconds,
        &latency,
    );

    let curve = [Line {
        series: "percentile",
        label: "latency",
        color: "#9467bd",
        dashed: false,
        points: data
            .percentiles
            .iter()
            .map(|p| (p.percentile, p.latency_ms))
            .collect(),
    }];
    chart(
        &mut page,
        "percentiles",
        "Latency by percentile (from intended send time)",
        "ms",
        XAxis::Percentile,
        &curve,
    );

    page.push_str("<div class=\"tables\">\n");
    table(&mut page, "counts", "Statuses and errors", &counts(data));
    table(&mut page, "options", "Run", &data.options);
    page.push_str("</div>\n");

    // The data behind the charts, for tools and tests; `<` is escaped (JSON reads
    // \u003c back as `<`) so no text in it can close the script element.
    let json = serde_json::to_string(data)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c");
    let _ = writeln!(
        page,
        "<script type=\"application/json\" id=\"data\">{json}</script>"
    );
    page.push_str(
        "<script>document.body.setAttribute('data-points', \
         document.querySelectorAll('circle[data-series]').length);</script>\n",
    );
    page.push_str("</body>\n</html>\n");
    page
}

const STYLE: &str = "<style>\n\
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }\n\
h1 { font-size: 1.2em; } h2 { font-size: 1em; margin: 1.2em 0 0.3em; }\n\
svg { display: block; background: #fff; border: 1px solid #ddd; }\n\
.axis { stroke: #444; } .grid { stroke: #eee; } text { font-size: 12px; fill: #444; }\n\
.tables { display: flex; gap: 3em; flex-wrap: wrap; }\n\
table { border-collapse: collapse; margin-top: 0.5em; }\n\
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; font-size: 13px; }\n\
td.n { text-align: right; font-variant-numeric: tabular-nums; }\n\
</style>\n";

/// Status codes first, then errors by kind (all of them, zeros included).
fn counts(data: &PageData) -> Vec<(String, String)> {
    let status = data
        .statuses
        .iter()
        .map(|(code, n)| (format!("status {code}"), n.to_string()));
    let errors = data
        .errors
        .iter()
        .map(|(kind, n)| (format!("errors: {kind}"), n.to_string()));
    status.chain(errors).collect()
}

fn table(page: &mut String, id: &str, title: &str, rows: &[(String, String)]) {
    let _ = writeln!(
        page,
        "<section><h2>{}</h2><table id=\"{id}\">",
        escape(title)
    );
    for (name, value) in rows {
        let numeric = value.parse::<f64>().is_ok();
        let _ = writeln!(
            page,
            "<tr><th>{}</th><td{}>{}</td></tr>",
            escape(name),
            if numeric { " class=\"n\"" } else { "" },
            escape(value)
        );
    }
    page.push_str("</table></section>\n");
}

/// One chart: axes with ticks, a polyline and a circle per point for each line, and a
/// legend. `data-x` is the point's own value (a second, or a percentile), not its position.
fn chart(page: &mut String, id: &str, title: &str, unit: &str, axis: XAxis, lines: &[Line<'_>]) {
    let _ = writeln!(page, "<h2>{}</h2>", escape(title));
    let _ = writeln!(
        page,
        "<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         width=\"{WIDTH}\" height=\"{HEIGHT}\">"
    );
    let all = || lines.iter().flat_map(|l| l.points.iter());
    let (x_min, x_max) = match axis {
        XAxis::Seconds => (0.0, all().map(|p| p.0 + 1.0).fold(1.0, f64::max)),
        XAxis::Percentile => {
            let top = all().map(|p| axis.position(p.0)).fold(1.0, f64::max);
            (0.0, top.ceil().clamp(1.0, f64::from(MAX_NINES)))
        }
    };
    let y_max = nice_ceiling(all().map(|p| p.1).fold(0.0, f64::max));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (axis.position(x) - x_min) / (x_max - x_min) * plot_w;
    let sy = |y: f64| TOP + plot_h - y / y_max * plot_h;

    // Horizontal grid and y labels: five steps.
    for i in 0..=5 {
        let y = y_max * f64::from(i) / 5.0;
        let py = sy(y);
        let _ = writeln!(
            page,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            tick_label(y)
        );
    }
    // x ticks: whole seconds (at most about 12 labels), or 0%, 50%, 90%, 99%, 99.9%...
    let x_ticks: Vec<(f64, String)> = match axis {
        XAxis::Seconds => {
            let step = ((x_max / 12.0).ceil()).max(1.0);
            (0..)
                .map(|i| f64::from(i) * step)
                .take_while(|&t| t <= x_max)
                .map(|t| (t, format!("{t}s")))
                .collect()
        }
        XAxis::Percentile => {
            let mut ticks = vec![(0.0, "0%".to_string()), (50.0, "50%".to_string())];
            for nines in 1..=(x_max as u32) {
                let p = 100.0 * (1.0 - 10f64.powi(-(nines as i32)));
                ticks.push((p, format!("{}%", trim_float(p, 6))));
            }
            ticks
        }
    };
    for (x, label) in &x_ticks {
        let px = sx(*x);
        let _ = writeln!(
            page,
            "<line class=\"grid\" x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{TOP}\" y2=\"{}\"/>\
             <text x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            TOP + plot_h,
            TOP + plot_h + 16.0,
            escape(label)
        );
    }
    let _ = writeln!(
        page,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{0}\"/>\
         <line class=\"axis\" x1=\"{LEFT}\" x2=\"{1}\" y1=\"{0}\" y2=\"{0}\"/>\
         <text x=\"14\" y=\"{2}\" transform=\"rotate(-90 14 {2})\" text-anchor=\"middle\">{3}</text>\
         <text x=\"{4}\" y=\"{5}\" text-anchor=\"middle\">{6}</text>",
        TOP + plot_h,
        WIDTH - RIGHT,
        TOP + plot_h / 2.0,
        escape(unit),
        LEFT + plot_w / 2.0,
        HEIGHT - 6.0,
        match axis {
            XAxis::Seconds => "seconds of measured time",
            XAxis::Percentile => "percentile (log scale of 1/(1\u{2212}p))",
        }
    );
    for (n, line) in lines.iter().enumerate() {
        let path: Vec<String> = line
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let dash = if line.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            page,
            "<g class=\"series\" data-series=\"{}\"><polyline fill=\"none\" stroke=\"{}\" \
             stroke-width=\"1.5\"{dash} points=\"{}\"/>",
            line.series,
            line.color,
            path.join(" ")
        );
        for &(x, y) in &line.points {
            let _ = writeln!(
                page,
                "<circle data-series=\"{}\" data-x=\"{}\" data-v=\"{}\" cx=\"{:.1}\" cy=\"{:.1}\" \
                 r=\"2.5\" fill=\"{}\"><title>{}: {} at {}</title></circle>",
                line.series,
                trim_float(x, 6),
                trim_float(y, 3),
                sx(x),
                sy(y),
                line.color,
                escape(line.label),
                trim_float(y, 3),
                match axis {
                    XAxis::Seconds => format!("{x}s"),
                    XAxis::Percentile => format!("{}%", trim_float(x, 6)),
                }
            );
        }
        page.push_str("</g>\n");
        // The legend, top right, a row per line.
        let ly = TOP + 14.0 * n as f64 + 8.0;
        let lx = WIDTH - RIGHT - 150.0;
        let _ = writeln!(
            page,
            "<line x1=\"{lx}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"2\"{dash}/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            lx + 18.0,
            line.color,
            lx + 24.0,
            ly + 4.0,
            escape(line.label)
        );
    }
    page.push_str("</svg>\n");
}

/// The smallest 1, 2 or 5 times a power of ten at or above `v` (at least 1).
fn nice_ceiling(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&n| n >= v)
        .unwrap_or(10.0 * magnitude)
}

fn tick_label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}", v.round() as u64)
    } else {
        trim_float(v, 3)
    }
}

/// `x` with at most `decimals` decimals and no trailing zeros: `99.9`, `3`, `0.125`.
fn trim_float(x: f64, decimals: usize) -> String {
    let text = format!("{x:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PageData {
        PageData {
            title: "4 connections, <64>-byte messages".into(),
            seconds: (0..3)
                .map(|t| SecondPoint {
                    t,
                    requests: 100 * (t + 1),
                    errors: t,
                    p50_ms: 0.25,
                    p99_ms: 1.5,
                    max_ms: 2.0 + t as f64,
                    intended: Some(100 * (t + 1)),
                    sent: Some(100 * (t + 1)),
                    late: Some(0),
                })
                .collect(),
            percentiles: vec![
                PercentilePoint {
                    percentile: 0.0,
                    latency_ms: 0.1,
                },
                PercentilePoint {
                    percentile: 99.9,
                    latency_ms: 3.0,
                },
            ],
            statuses: vec![("200".into(), 600)],
            errors: vec![("timeout".into(), 3)],
            options: vec![("rate".into(), "100..300 req/s over 3.00s".into())],
        }
    }

    /// Every point is a circle with its series, x and value; the percentile axis is
    /// labelled in nines; text is escaped; the embedded JSON parses back to the data.
    #[test]
    fn page_holds_every_point_and_its_data() {
        let page = render(&sample());
        for t in 0..3 {
            let v = 100 * (t + 1);
            assert!(
                page.contains(&format!(
                    "<circle data-series=\"throughput\" data-x=\"{t}\" data-v=\"{v}\""
                )),
                "second {t}"
            );
            assert!(page.contains(&format!(
                "data-series=\"max\" data-x=\"{t}\" data-v=\"{}\"",
                2 + t
            )));
        }
        assert!(page.contains("data-series=\"intended\""));
        assert!(page.contains("data-series=\"percentile\" data-x=\"99.9\" data-v=\"3\""));
        for label in [">50%<", ">90%<", ">99%<", ">99.9%<"] {
            assert!(page.contains(label), "{label}");
        }
        assert!(page.contains("&lt;64&gt;-byte") && !page.contains("<64>"));
        let start = page.find("id=\"data\">").unwrap() + "id=\"data\">".len();
        let end = start + page[start..].find("</script>").unwrap();
        let json: serde_json::Value = serde_json::from_str(&page[start..end]).unwrap();
        assert_eq!(json["seconds"][2]["requests"], 300);
        assert_eq!(json["errors"][0][1], 3);
    }

    /// Nothing on the page is fetched: no external src or href, only the SVG namespace.
    #[test]
    fn page_is_self_contained() {
        let page = render(&sample());
        for needle in ["src=", "href=", "@import", "url("] {
            assert!(!page.contains(needle), "{needle}");
        }
        let outside: Vec<&str> = page
            .match_indices("http")
            .map(|(i, _)| &page[i..(i + 30).min(page.len())])
            .filter(|s| !s.starts_with("http://www.w3.org/2000/svg"))
            .collect();
        assert!(outside.is_empty(), "{outside:?}");
    }

    /// An empty run (no seconds, no answers) still renders valid charts.
    #[test]
    fn empty_run_renders() {
        let page = render(&PageData::default());
        assert!(page.contains("<svg id=\"throughput\""));
        assert!(page.ends_with("</html>\n"));
        assert!(!page.contains("NaN") && !page.contains("inf"));
    }

    #[test]
    fn axis_helpers() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(730.0), 1000.0);
        assert_eq!(nice_ceiling(1.2), 2.0);
        assert_eq!(nice_ceiling(5.0), 5.0);
        assert_eq!(trim_float(99.900_000, 6), "99.9");
        assert_eq!(trim_float(3.0, 3), "3");
        assert!((XAxis::Percentile.position(99.0) - 2.0).abs() < 1e-9);
    }
}
