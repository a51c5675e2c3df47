//! `strata budgets`: the state of every AI budget now, read from the tables the way
//! `strata serve` reads them (the same spend, overrides, forecast and action), without sending
//! any alert.

use clap::Args;
use strata_engine::budget::BudgetService;
use strata_engine::{Catalog, QueryLimits, Storage};

use crate::config::{BudgetsConfig, StorageConfig};

#[derive(Args, Debug)]
pub struct BudgetsArgs {
    #[command(flatten)]
    pub storage: StorageConfig,
    #[command(flatten)]
    pub budgets: BudgetsConfig,
    /// One JSON object per budget (what `GET /v1/ai/budgets/{name}` answers) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: BudgetsArgs) -> anyhow::Result<()> {
    let budgets = args.budgets.budgets()?;
    if budgets.is_empty() {
        anyhow::bail!(
            "no budgets configured: add [[budgets]] sections to strata.toml (docs/operations/ai-budgets.md) or pass --budgets"
        );
    }
    let storage = Storage::open(&args.storage.options()?).await?;
    let catalog = Catalog::open(&storage).await?;
    let service = BudgetService::new(catalog, budgets, QueryLimits::default(), "strata-budgets")?
        .without_alerts();
    service.refresh(true).await?;
    let now = chrono::Utc::now();
    let reports = service.reports(now).await;
    if args.json {
        for r in &reports {
            println!("{}", strata_query_api::budget_json(r, now));
        }
        return Ok(());
    }
    println!(
        "{:<24} {:>14} {:>14} {:>8} {:>14} {:<22} {:<20}",
        "budget", "spend", "amount", "share", "forecast", "action", "resets at"
    );
    for r in &reports {
        let Some(standing) = &r.standing else {
            continue;
        };
        let amount = standing.budget.amount;
        match &standing.total {
            Some(s) => println!(
                "{:<24} {:>14} {:>14} {:>8} {:>14} {:<22} {:<20}",
                r.configured.name,
                s.spend.to_string(),
                amount.to_string(),
                s.share_text(),
                s.forecast_at_end.to_string(),
                s.action.map_or_else(|| "ok".to_string(), |a| a.to_string()),
                s.resets_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            ),
            None => println!(
                "{:<24} {:>14} {:>14} {:>8} {:>14} {:<22} per user: {} users with spend",
                r.configured.name,
                "-",
                amount.to_string(),
                "-",
                "-",
                "-",
                standing.per_user.len()
            ),
        }
        for o in &r.overrides {
            println!(
                "  override until {}: {}{} (approved by {}: {})",
                o.expires_at.format("%Y-%m-%d %H:%M UTC"),
                o.amount.map(|a| format!("amount {a}")).unwrap_or_default(),
                if o.suspend { " suspended" } else { "" },
                o.approver,
                o.reason
            );
        }
    }
    Ok(())
}
