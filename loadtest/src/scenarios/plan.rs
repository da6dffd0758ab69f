//! `--dry-run`: what a run would do, without connecting anywhere: the population by kind, the
//! number of events and the deliveries the routing model expects, so that mix, tenants and
//! branches can be tuned to a target fan-out before a long run.

use super::Scenario;
use crate::cli::RunArgs;
use crate::events::Generator;
use crate::expectations::Index;
use crate::population::{Kind, Mix, Population, PopulationParams};
use std::fmt::Write;

pub fn render(scenario: Scenario, args: &RunArgs) -> anyhow::Result<String> {
    let pop = Population::new(PopulationParams {
        connections: args.population.connections,
        tenants: args.population.tenants,
        branches: args.population.branches,
        mix: Mix::parse(&args.population.mix)?,
        diners_per_session: args.population.diners_per_session,
    })?;
    let generator = Generator::new(scenario.traffic(), pop.clone(), args.publish.seed);
    let rate = args.publish.rate.unwrap_or(scenario.default_rate());
    let events = match scenario {
        Scenario::Idle => generator.probe_len(),
        _ => (rate * args.publish.duration.unwrap_or(scenario.default_duration())).round() as u64,
    };
    let index = Index::build(&pop, 0..pop.len());
    let (mut deliveries, mut copies, mut max) = (0u64, 0u64, 0u64);
    let mut by_type: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for id in 0..events {
        let event = generator.event(id as u32);
        let n = index.recipients(&event).count() as u64;
        deliveries += n;
        copies += event.copies() as u64;
        max = max.max(n);
        let entry = by_type.entry(event.event_type).or_default();
        entry.0 += 1;
        entry.1 += n;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} connections over {} tenants x {} branches, {} table sessions:",
        pop.len(),
        args.population.tenants,
        args.population.branches,
        pop.sessions()
    );
    for kind in Kind::ALL {
        let _ = writeln!(out, "  {:<8} {}", kind.name(), pop.count(kind, pop.len()));
    }
    let _ = writeln!(out, "{} {} events at {rate}/s ({copies} channel/stream copies)", events, scenario.name());
    let _ = writeln!(
        out,
        "{deliveries} expected deliveries: {:.1} per event on average, {max} at most",
        deliveries as f64 / events.max(1) as f64
    );
    for (ty, (n, d)) in by_type {
        let _ = writeln!(out, "  {ty:<30} {n:>8} events  {:>8.1} per event", d as f64 / n as f64);
    }
    Ok(out)
}
