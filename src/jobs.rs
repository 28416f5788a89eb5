//! `sluice jobs`: recent jobs from `GET /v1/jobs`, newest first, with the same filters as
//! the console's jobs page; `--all` follows the cursor to the end.

use std::fmt::Write as _;

use serde_json::Value;

use crate::client::Client;

#[derive(clap::Args)]
pub struct JobsArgs {
    /// queued, running, succeeded, failed, cancelled or expired.
    #[arg(long)]
    status: Option<String>,
    /// Model group.
    #[arg(long, short)]
    model: Option<String>,
    /// `master` or a virtual key's id (a virtual key sees only its own jobs anyway).
    #[arg(long = "key-id")]
    key_id: Option<String>,
    /// critical, high, normal or low.
    #[arg(long, short)]
    priority: Option<String>,
    /// Jobs per page (1-100).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Start after this job id (the previous page's `last_id`).
    #[arg(long)]
    after: Option<String>,
    /// Follow the pages to the oldest job.
    #[arg(long)]
    all: bool,
    /// Print the API's JSON pages instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(client: &Client, args: JobsArgs) -> anyhow::Result<()> {
    let mut after = args.after.clone();
    let mut first = true;
    loop {
        let mut query: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
        for (name, value) in [
            ("status", &args.status),
            ("model", &args.model),
            ("key", &args.key_id),
            ("priority", &args.priority),
            ("after", &after),
        ] {
            if let Some(v) = value {
                query.push((name, v.clone()));
            }
        }
        let page = client.list_jobs(&query).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&page)?);
        } else {
            print!("{}", table(&page, first));
        }
        first = false;
        let more = page["has_more"].as_bool().unwrap_or(false);
        after = page["last_id"].as_str().map(str::to_string);
        if !args.all || !more || after.is_none() {
            if more && !args.all && !args.json {
                if let Some(last) = &after {
                    eprintln!("more jobs: --after {last}");
                }
            }
            return Ok(());
        }
    }
}

/// One page as text; `header` on the first page only.
fn table(page: &Value, header: bool) -> String {
    let mut out = String::new();
    if header {
        let _ = writeln!(
            out,
            "{:<36} {:<10} {:<16} {:<8} {:<38} {:>3} {:>12} {:<19} error",
            "id", "status", "model", "priority", "key", "att", "cost USD", "created (UTC)"
        );
    }
    for j in page["data"].as_array().into_iter().flatten() {
        let cost = match j["cost"].as_f64() {
            Some(c) => format!("{c:.6}"),
            None if j["pricing_missing"].as_bool() == Some(true) => "unpriced".into(),
            None => "-".into(),
        };
        let created = j["created_at"]
            .as_i64()
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<36} {:<10} {:<16} {:<8} {:<38} {:>3} {:>12} {:<19} {}",
            j["id"].as_str().unwrap_or(""),
            j["status"].as_str().unwrap_or(""),
            j["model"].as_str().unwrap_or(""),
            j["priority"].as_str().unwrap_or(""),
            j["key"].as_str().unwrap_or(""),
            j["attempts"],
            cost,
            created,
            j["error_class"].as_str().unwrap_or(""),
        );
    }
    out
}
