//! `reel token create|list|revoke`: API tokens, kept in the store (`$tokens`).

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use reel_server::scopes::Scope;
use reel_server::tokens;

use crate::exit::InvalidInput;
use crate::Cli;

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print it (it is shown only this once).
    Create {
        /// admin, read:<stream or prefix*>, write:<stream or prefix*>; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// A name to recognise it by.
        #[arg(long, default_value = "token")]
        name: String,
    },
    /// List tokens (never their secrets) as JSON lines.
    List,
    /// Revoke a token by id; servers stop accepting it within about a second.
    Revoke {
        /// The id shown by `reel token list`.
        id: String,
    },
}

pub async fn run(cli: &Cli, args: &TokenArgs) -> Result<()> {
    let store = crate::store::open(cli).await?;
    match &args.command {
        TokenCommand::Create { scopes, name } => {
            let scopes = scopes
                .iter()
                .map(|s| s.parse::<Scope>().map_err(|e| anyhow!(InvalidInput(e.to_string()))))
                .collect::<Result<Vec<_>>>()?;
            let created = tokens::create(&*store, name, &scopes).await?;
            println!(
                "{}",
                serde_json::json!({ "token": created.token, "id": created.record.id, "name": created.record.name, "scopes": created.record.scopes })
            );
            eprintln!("store the token now: it is not shown again");
        }
        TokenCommand::List => {
            for record in tokens::list(&*store).await? {
                println!("{}", serde_json::to_string(&record)?);
            }
        }
        TokenCommand::Revoke { id } => {
            tokens::revoke(&*store, id).await?;
            println!("{}", serde_json::json!({ "revoked": id }));
        }
    }
    Ok(())
}
