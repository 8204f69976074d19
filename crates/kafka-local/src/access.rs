//! Who may do what on Kafka: one principal per service with the ACLs it needs and no more.
//! `kafka-local access` applies them to any cluster (with an admin's credentials) or prints
//! them as Kafka's own `kafka-configs.sh` / `kafka-acls.sh` commands; the secure test cluster
//! and docs/security.md use the same table.

use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::AdminClient;
use rdkafka::ClientConfig;

use crate::topics::TopicNames;

/// A service that talks to Kafka, as a principal.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// The SASL user name (the principal is `User:<user>`).
    pub user: &'static str,
    pub what: &'static str,
}

/// Every principal of the pipeline.
pub const SERVICES: &[Service] = &[
    Service { user: "receiver", what: "writes raw positions and receiver dead letters" },
    Service { user: "processor", what: "reads raw, writes positions, vehicle-latest, events and dead letters in transactions" },
    Service { user: "tracker", what: "reads positions, vehicle-latest, events and geofences; writes geofences and vehicle-latest tombstones (admin API)" },
    Service { user: "dlq", what: "the dlq tool: reads dead letters, redrives them to raw" },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Topic,
    Group,
    TransactionalId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Literal,
    Prefixed,
}

/// Read and Write imply Describe in Kafka's authorizer; Describe alone is what a reader of
/// metadata needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Read,
    Write,
    Describe,
}

/// One allow rule: `principal` may do `operation` on the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    pub principal: String,
    pub resource: Resource,
    pub pattern: Pattern,
    pub name: String,
    pub operation: Operation,
}

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} on {:?} {} ({:?})", self.principal, self.operation, self.resource, self.name, self.pattern)
    }
}

/// The consumer groups and transactional ids the services use (their defaults; each service
/// takes them as flags). Group and transactional-id ACLs are prefixed: a service's helper
/// readers (`<group>-restore`, `<group>-geofences`, ...) and its instances' transactional ids
/// (`<group>-<host>-<port>`) all start with its group.
#[derive(Debug, Clone, clap::Args)]
pub struct Groups {
    /// The processor's consumer group (and transactional id prefix).
    #[arg(id = "processor_group", long = "processor-group", env = "PROCESSOR_GROUP_ID", default_value = "fleetstream-processor")]
    pub processor: String,
    /// The tracker's consumer group.
    #[arg(id = "tracker_group", long = "tracker-group", env = "TRACKER_GROUP_ID", default_value = "fleetstream-tracker")]
    pub tracker: String,
    /// The dlq tool's reader group prefix.
    #[arg(id = "dlq_group", long = "dlq-group", env = "DLQ_GROUP_ID", default_value = "fleetstream-dlq")]
    pub dlq: String,
}

/// Every ACL of every service.
pub fn acls(topics: &TopicNames, groups: &Groups) -> Vec<Acl> {
    let mut all = Vec::new();
    let mut allow = |user: &str, resource: Resource, pattern: Pattern, names: &[&str], operations: &[Operation]| {
        for name in names {
            for op in operations {
                all.push(Acl { principal: format!("User:{user}"), resource, pattern, name: name.to_string(), operation: *op });
            }
        }
    };
    use Operation::*;
    use Pattern::*;
    use Resource::*;
    let t = topics;
    allow("receiver", Topic, Literal, &[&t.raw, &t.dlq], &[Write, Describe]);

    // The processor rebuilds its state from what it wrote (vehicle-latest, the output tails),
    // so it reads its outputs too.
    allow("processor", Topic, Literal, &[&t.raw, &t.geofences], &[Read, Describe]);
    allow("processor", Topic, Literal, &[&t.positions, &t.latest, &t.events, &t.dlq], &[Write, Read, Describe]);
    allow("processor", Group, Prefixed, &[&groups.processor], &[Read]);
    allow("processor", TransactionalId, Prefixed, &[&groups.processor], &[Write, Describe]);

    allow("tracker", Topic, Literal, &[&t.positions, &t.events], &[Read, Describe]);
    // The admin API writes geofences, and tombstones to vehicle-latest (decommissioning).
    allow("tracker", Topic, Literal, &[&t.latest, &t.geofences], &[Read, Write, Describe]);
    allow("tracker", Group, Prefixed, &[&groups.tracker], &[Read]);

    allow("dlq", Topic, Literal, &[&t.dlq], &[Read, Describe]);
    allow("dlq", Topic, Literal, &[&t.raw], &[Write, Describe]);
    allow("dlq", Group, Prefixed, &[&groups.dlq], &[Read]);
    all
}

/// Creates each service's SCRAM user (SHA-512 and SHA-256) with its password, then every ACL.
pub fn apply(admin_config: &ClientConfig, users: &[(String, String)], acls: &[Acl]) -> anyhow::Result<()> {
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = admin_config.create().context("cannot create a Kafka admin client")?;
    let timeout = Duration::from_secs(30);
    crate::admin_ffi::upsert_scram_users(&admin, users, timeout).context("creating the users")?;
    crate::admin_ffi::create_acls(&admin, acls, timeout).context("creating the ACLs")
}

/// The same, as the commands of Kafka's own tools (for operators who run them).
pub fn commands(users: &[&str], acls: &[Acl]) -> Vec<String> {
    let mut lines = vec!["# Users (SCRAM-SHA-512; run once per user, with its own password):".to_string()];
    for user in users {
        lines.push(format!(
            "kafka-configs.sh --bootstrap-server \"$KAFKA_BROKERS\" --command-config admin.properties --alter --entity-type users --entity-name {user} --add-config 'SCRAM-SHA-512=[iterations=8192,password=<{user} password>]'"
        ));
    }
    lines.push("# ACLs:".to_string());
    for acl in acls {
        let resource = match acl.resource {
            Resource::Topic => format!("--topic {}", acl.name),
            Resource::Group => format!("--group {}", acl.name),
            Resource::TransactionalId => format!("--transactional-id {}", acl.name),
        };
        let pattern = match acl.pattern {
            Pattern::Literal => "",
            Pattern::Prefixed => " --resource-pattern-type prefixed",
        };
        lines.push(format!(
            "kafka-acls.sh --bootstrap-server \"$KAFKA_BROKERS\" --command-config admin.properties --add --allow-principal {} --operation {:?} {resource}{pattern}",
            acl.principal, acl.operation
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        topics: TopicNames,
        #[command(flatten)]
        groups: Groups,
    }

    fn rules() -> Vec<Acl> {
        let cli = Cli::parse_from(["x"]);
        acls(&cli.topics, &cli.groups)
    }

    fn allowed(rules: &[Acl], user: &str, op: Operation, name: &str) -> bool {
        rules.iter().any(|a| a.principal == format!("User:{user}") && a.operation == op && a.name == name)
    }

    #[test]
    fn each_service_gets_what_it_needs_and_no_more() {
        let rules = rules();
        assert!(allowed(&rules, "receiver", Operation::Write, "gpscoords"));
        assert!(allowed(&rules, "receiver", Operation::Write, "gpscoords-dlq"));
        assert!(!rules.iter().any(|a| a.principal == "User:receiver" && a.operation == Operation::Read), "the receiver reads nothing");
        assert!(!allowed(&rules, "processor", Operation::Write, "gpscoords"), "the processor never writes raw");
        assert!(allowed(&rules, "processor", Operation::Write, "events"));
        assert!(rules.iter().any(|a| a.principal == "User:processor" && a.resource == Resource::TransactionalId && a.pattern == Pattern::Prefixed));
        assert!(!allowed(&rules, "tracker", Operation::Read, "gpscoords"), "the tracker never sees raw input");
        assert!(!allowed(&rules, "tracker", Operation::Write, "positions"));
        assert!(allowed(&rules, "tracker", Operation::Write, "geofences"));
        assert!(allowed(&rules, "tracker", Operation::Read, "vehicle-latest"));
        assert!(allowed(&rules, "tracker", Operation::Write, "vehicle-latest"), "decommissioning writes a tombstone");
        assert!(!allowed(&rules, "tracker", Operation::Write, "events"));
        assert!(!rules.iter().any(|a| a.principal == "User:tracker" && a.resource == Resource::TransactionalId));
        let lines = commands(&["receiver"], &rules);
        assert!(lines.iter().any(|l| l.contains("--allow-principal User:processor --operation Write --transactional-id fleetstream-processor --resource-pattern-type prefixed")), "{lines:?}");
    }
}
