use clap::{Args, Subcommand};
use strata_query_api::{new_token, Scope};

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a new API token: prints the token (give it to the caller) and the line to configure
    /// (--token / STRATA_TOKENS), which holds only its SHA-256 hash.
    New(NewArgs),
}

#[derive(Args, Debug)]
pub struct NewArgs {
    /// A name for the token (shown in logs and 403 messages).
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Scopes: panels, sql, gdpr, ai, admin (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "panels")]
    pub scopes: Vec<String>,
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::New(a) => {
            if a.name.contains(':') || a.name.contains(',') {
                anyhow::bail!("--name must not contain `:` or `,`");
            }
            let scopes = a
                .scopes
                .iter()
                .map(|s| s.parse::<Scope>().map_err(|e| anyhow::anyhow!(e)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (token, line) = new_token(&a.name, &scopes);
            println!("token: {token}");
            println!("config: {line}");
            Ok(())
        }
    }
}
