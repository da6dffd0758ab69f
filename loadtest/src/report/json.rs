//! `--report-json`: the whole [`Report`] as pretty JSON.

use super::Report;
use anyhow::Context;
use std::path::Path;

pub fn write(report: &Report, path: &Path) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))
}
