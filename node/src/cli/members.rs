//! `apiary members remove`: takes a member out of the cluster, by name or id.

use anyhow::{bail, Result};
use apiary_api_types::{ClusterView, MemberRemoved, MemberStatus};

use super::client::{parse, print_json, Client, ClientArgs};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum MembersCommand {
    /// Remove a member (by name or id) from the cluster: for a machine retired or lost for good.
    Remove { member: String },
}

pub async fn members(args: &ClientArgs, command: &MembersCommand) -> Result<()> {
    let client = Client::new(args)?;
    let MembersCommand::Remove { member } = command;
    let cluster: ClusterView = parse(&client.get("/v1/cluster").await?, "GET /v1/cluster")?;
    let members = cluster.status.members;
    let found: Vec<&MemberStatus> = members
        .iter()
        .filter(|m| m.name == *member || m.id.to_string() == *member)
        .collect();
    let target = match found.as_slice() {
        [one] => *one,
        [] => bail!(
            "no member is called {member:?}: `apiary status` lists the members ({})",
            members
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => bail!("several members are called {member:?}: give the id (`apiary status` shows it)"),
    };
    let id = target.id;
    let answer = client
        .send(reqwest::Method::DELETE, &format!("/v1/members/{id}"), None)
        .await?;
    if args.json {
        return print_json(&answer);
    }
    let removed: MemberRemoved = parse(&answer, "DELETE /v1/members")?;
    println!(
        "removed {} (id {}); stop it and delete its data dir before reusing the machine",
        target.name, removed.removed
    );
    Ok(())
}
