//! `webhook-bench`: see the crate docs and docs/benchmarks.md.

use std::path::PathBuf;

use clap::Parser;
use webhook_bench::machine::Machine;
use webhook_bench::plan::Plan;
use webhook_bench::report::{Report, Summary, plot};
use webhook_bench::run::{self, Binaries};

/// Benchmarks the pipeline against the floor of this machine and writes the results.
#[derive(Debug, Parser)]
#[command(name = "webhook-bench")]
struct Cli {
    /// A run of seconds that proves the machinery works (every phase, tiny); its results go
    /// to the temporary directory unless --doc/--json/--plot say otherwise.
    #[arg(long)]
    smoke: bool,
    /// Number of runs; the report gives medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Only one part: `ingest` (floor, sweep, fixed rate, duplicates) or `worker`; for
    /// measuring one change quickly. The doc's figures then hold only that part.
    #[arg(long, value_parser = ["ingest", "worker"])]
    only: Option<String>,
    /// Seconds per sweep level (overrides the plan).
    #[arg(long)]
    level_secs: Option<f64>,
    /// Directory of the webhook-ingest, webhook-worker and webhook-sandbox binaries
    /// [default: the directory of this binary].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The Markdown document whose generated section is rewritten.
    #[arg(long)]
    doc: Option<PathBuf>,
    /// The JSON results file [default: next to the document, benchmarks.json].
    #[arg(long)]
    json: Option<PathBuf>,
    /// The PNG plot [default: next to the document, benchmarks-latency.png].
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("webhook-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Ok(false) when events were lost or doubled: a benchmark that loses events has failed.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let mut plan = if cli.smoke { Plan::smoke() } else { Plan::full() };
    if let Some(secs) = cli.level_secs {
        plan.level_secs = secs;
    }
    match cli.only.as_deref() {
        Some("worker") => plan.only_worker(),
        Some(_) => plan.worker.clear(),
        None => {}
    }
    let bin_dir = match cli.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
    };
    let tmp = std::env::temp_dir();
    let doc = cli.doc.unwrap_or_else(|| {
        if cli.smoke {
            tmp.join("webhook-bench-smoke.md")
        } else {
            PathBuf::from("docs/benchmarks.md")
        }
    });
    let dir = doc.parent().map(PathBuf::from).unwrap_or_default();
    let stem = if cli.smoke {
        "webhook-bench-smoke"
    } else {
        "benchmarks"
    };
    let json = cli.json.unwrap_or_else(|| dir.join(format!("{stem}.json")));
    let plot_path = cli
        .plot
        .unwrap_or_else(|| dir.join(format!("{stem}-latency.png")));
    let bins = Binaries {
        dir: bin_dir,
        logs: run::log_dir(&tmp)?,
    };
    eprintln!(
        "webhook-bench: {} mode, {} run(s); binaries from {}, their logs in {}",
        plan.mode,
        cli.runs,
        bins.dir.display(),
        bins.logs.display()
    );
    let mut runs = Vec::new();
    for i in 1..=cli.runs.max(1) {
        eprintln!("webhook-bench: run {i} of {}", cli.runs.max(1));
        runs.push(run::run_once(&plan, &bins).await?);
    }
    let machine = Machine::describe(&webhook_bench::resources::admin_database_url()).await;
    let summary = Summary::of(&runs);
    let report = Report {
        machine,
        plan,
        runs,
        summary,
    };
    report.write_json(&json)?;
    if let Err(e) = plot::draw(&report.summary, &plot_path) {
        eprintln!("webhook-bench: the plot could not be drawn: {e}");
    }
    let plot_name = plot_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    report.write_doc(&doc, &plot_name)?;
    println!("{}", report.markdown(&plot_name));
    println!("{}", report.terminal_table());
    println!(
        "written: {}, {}, {}",
        doc.display(),
        json.display(),
        plot_path.display()
    );
    if !report.summary.verification_passed {
        eprintln!("webhook-bench: FAILED: accepted events were lost or doubled (see the JSON file)");
    }
    // A worker case whose jobs did not all succeed measured something else than the worker
    // (a broken build, a stalled queue): a failure, not a figure.
    let failed_cases: Vec<String> = report
        .runs
        .iter()
        .flat_map(|r| &r.worker)
        .filter(|w| w.failed > 0 || w.succeeded < w.jobs)
        .map(|w| {
            format!(
                "{} ms per call, concurrency {}: {} of {} succeeded",
                w.latency_ms, w.concurrency, w.succeeded, w.jobs
            )
        })
        .collect();
    for case in &failed_cases {
        eprintln!(
            "webhook-bench: FAILED: worker case {case} (its logs are in {})",
            bins.logs.display()
        );
    }
    Ok(report.summary.verification_passed && failed_cases.is_empty())
}
