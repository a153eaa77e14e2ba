//! `webhook-bench`: how fast the pipeline is, against the physical floor of the same machine.
//!
//! One run, on one machine, measures:
//!
//! - the **floor** ([`floor`]): the durable work alone, in process, without HTTP: per event one
//!   Postgres insert-and-commit plus one confirmed persistent publish to the work queue, at the
//!   same concurrency and with the same pool size as the ingest;
//! - the **ingest** ([`load`]): unique signed `checkout.session.completed` events from the contract
//!   fixture over keep-alive connections, at several concurrencies, at a fixed rate, and re-sent
//!   (the duplicates path), with HDR latency histograms; afterwards every accepted event must be
//!   on the work queue exactly once ([`queue`]);
//! - the **worker** ([`worker`]): jobs per second through the whole pipeline against the sandbox,
//!   at zero downstream latency and at 50 ms per call for several `WORKER_CONCURRENCY`;
//! - the **memory**: peak RSS (`VmHWM`) of the real binaries, run as child processes ([`procs`]).
//!
//! [`run`] orchestrates one run; [`report`] turns runs into medians, a JSON file, the Markdown
//! section of `docs/benchmarks.md` and a latency-against-throughput plot. Every run creates its
//! own database and RabbitMQ name prefix ([`resources`]) and removes them at the end.

pub mod events;
pub mod floor;
pub mod load;
pub mod machine;
pub mod plan;
pub mod procs;
pub mod queue;
pub mod report;
pub mod resources;
pub mod run;
pub mod stats;
pub mod worker;
