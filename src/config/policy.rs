//! The agent's authorization policy: the `[[policy]]` tables of its config,
//! compiled into a [`Policy`] that decides which keys may run which commands
//! on which services.

use crate::security::{check_name, AuthError, PublicKey};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

/// Why a policy was refused; the text names the rule and the field.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy rule {rule:?}: invalid pattern {pattern:?} in `{field}`")]
    Pattern {
        rule: String,
        field: &'static str,
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("policy rule {rule:?}: invalid `{field}`")]
    Patterns {
        rule: String,
        field: &'static str,
        #[source]
        source: globset::Error,
    },
    #[error("policy rule {rule:?}: invalid key")]
    Key {
        rule: String,
        #[source]
        source: AuthError,
    },
    #[error("policy rule {rule:?}: `keys` entry is not a key, fingerprint, name or \"*\"")]
    KeyEntry {
        rule: String,
        #[source]
        source: AuthError,
    },
    /// The TOML does not hold `[[policy]]` tables (the parser's text says where).
    #[error("{}", .0.to_string().trim_end())]
    Toml(toml::de::Error),
}

/// One `[[policy]]` table of the agent's config: which keys may run which
/// commands on which services. `keys` entries are a public key line, a
/// fingerprint (16 hex digits), a key name, or `"*"`; `commands` and `services`
/// are globs. A name is only as trustworthy as the review that accepted the
/// key: check fingerprints before accepting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    pub name: String,
    pub keys: Vec<String>,
    pub commands: Vec<String>,
    pub services: Vec<String>,
    /// Exceptions that win over this rule's allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<DenyRule>,
}

/// An exception inside a rule; a missing field means `["*"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    #[serde(default = "any")]
    pub commands: Vec<String>,
    #[serde(default = "any")]
    pub services: Vec<String>,
}

fn any() -> Vec<String> {
    vec!["*".to_owned()]
}

/// The `[[policy]]` tables on their own (a standalone file, or tests).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    pub policy: Vec<PolicyRule>,
}

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow { rule: String },
    Deny { reason: String },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

#[derive(Debug)]
enum KeyMatch {
    Any,
    Id(String),
    Fingerprint(String),
    Name(String),
}

#[derive(Debug)]
struct CompiledRule {
    name: String,
    keys: Vec<KeyMatch>,
    commands: GlobSet,
    services: GlobSet,
    deny: Vec<(GlobSet, GlobSet)>,
}

/// Compiled policy. Rules are tried in order; the first whose keys, commands
/// and services match, and none of whose `deny` entries match, allows. A rule's
/// deny entries only cancel that rule's allows; a later rule may still allow.
/// No matching rule, or no rules at all, denies.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<CompiledRule>,
}

fn globs(rule: &str, field: &'static str, patterns: &[String]) -> Result<GlobSet, PolicyError> {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p).map_err(|source| PolicyError::Pattern {
            rule: rule.to_owned(),
            field,
            pattern: p.clone(),
            source,
        })?;
        set.add(glob);
    }
    set.build().map_err(|source| PolicyError::Patterns {
        rule: rule.to_owned(),
        field,
        source,
    })
}

fn key_match(rule: &str, entry: &str) -> Result<KeyMatch, PolicyError> {
    let entry = entry.trim();
    if entry == "*" {
        Ok(KeyMatch::Any)
    } else if entry.contains(char::is_whitespace) {
        let key: PublicKey = entry.parse().map_err(|source| PolicyError::Key {
            rule: rule.to_owned(),
            source,
        })?;
        Ok(KeyMatch::Id(key.key_id()))
    } else if entry.len() == 16 && entry.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(KeyMatch::Fingerprint(entry.to_ascii_lowercase()))
    } else {
        check_name(entry).map_err(|source| PolicyError::KeyEntry {
            rule: rule.to_owned(),
            source,
        })?;
        Ok(KeyMatch::Name(entry.to_owned()))
    }
}

impl Policy {
    pub fn new(rules: &[PolicyRule]) -> Result<Policy, PolicyError> {
        let compile = |r: &PolicyRule| -> Result<CompiledRule, PolicyError> {
            Ok(CompiledRule {
                name: r.name.clone(),
                keys: r
                    .keys
                    .iter()
                    .map(|k| key_match(&r.name, k))
                    .collect::<Result<_, PolicyError>>()?,
                commands: globs(&r.name, "commands", &r.commands)?,
                services: globs(&r.name, "services", &r.services)?,
                deny: r
                    .deny
                    .iter()
                    .map(|d| {
                        let commands = globs(&r.name, "deny.commands", &d.commands)?;
                        Ok((commands, globs(&r.name, "deny.services", &d.services)?))
                    })
                    .collect::<Result<_, PolicyError>>()?,
            })
        };
        Ok(Policy {
            rules: rules
                .iter()
                .map(compile)
                .collect::<Result<_, PolicyError>>()?,
        })
    }

    /// Parse TOML holding `[[policy]]` tables.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let config: PolicyConfig = toml::from_str(text).map_err(PolicyError::Toml)?;
        Policy::new(&config.policy)
    }

    pub fn decide(&self, key: &PublicKey, cmd: &str, service: &str) -> Decision {
        let mut denied_by = None;
        for r in &self.rules {
            let key_ok = r.keys.iter().any(|m| match m {
                KeyMatch::Any => true,
                KeyMatch::Id(id) => *id == key.key_id(),
                KeyMatch::Fingerprint(fp) => *fp == key.fingerprint(),
                KeyMatch::Name(n) => n == key.name(),
            });
            if !(key_ok && r.commands.is_match(cmd) && r.services.is_match(service)) {
                continue;
            }
            if r.deny
                .iter()
                .any(|(c, s)| c.is_match(cmd) && s.is_match(service))
            {
                denied_by.get_or_insert(&r.name);
                continue;
            }
            return Decision::Allow {
                rule: r.name.clone(),
            };
        }
        Decision::Deny {
            reason: match denied_by {
                Some(rule) => format!("rule {rule:?} denies {cmd} on {service}"),
                None => "no rule allows it (default deny)".to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::testing::client;
    use crate::security::KeyPair;
    const EXAMPLE: &str = r#"
        [[policy]]
        name = "monitoring"
        keys = ["MON_LINE"]
        commands = ["status"]
        services = ["*"]

        [[policy]]
        name = "ops"
        keys = ["ops"]
        commands = ["*"]
        services = ["*"]
        deny = [{ commands = ["stop"], services = ["sshd"] }]
    "#;

    #[test]
    fn policy_examples() {
        let (mon, ops, eve) = (client("mon"), client("ops"), client("eve"));
        let policy =
            Policy::parse(&EXAMPLE.replace("MON_LINE", &mon.public().to_string())).unwrap();
        let decide = |id: &KeyPair, cmd, svc| policy.decide(id.public(), cmd, svc);
        assert_eq!(
            decide(&mon, "status", "nginx"),
            Decision::Allow {
                rule: "monitoring".into()
            }
        );
        assert!(!decide(&mon, "restart", "nginx").is_allowed());
        assert_eq!(
            decide(&ops, "restart", "nginx"),
            Decision::Allow { rule: "ops".into() }
        );
        assert!(decide(&ops, "stop", "nginx").is_allowed());
        assert!(decide(&ops, "status", "sshd").is_allowed());
        assert_eq!(
            decide(&ops, "stop", "sshd"),
            Decision::Deny {
                reason: "rule \"ops\" denies stop on sshd".into()
            }
        );
        assert_eq!(
            decide(&eve, "status", "sshd"),
            Decision::Deny {
                reason: "no rule allows it (default deny)".into()
            }
        );
        assert!(!Policy::new(&[])
            .unwrap()
            .decide(ops.public(), "status", "sshd")
            .is_allowed());
    }

    #[test]
    fn policy_key_forms_and_rule_order() {
        let (alice, bob) = (client("alice"), client("bob"));
        let text = format!(
            "[[policy]]\nname = \"restricted\"\nkeys = [\"{}\"]\ncommands = [\"*\"]\nservices = [\"web-*\"]\n\
             deny = [{{ commands = [\"stop\"] }}]\n\
             [[policy]]\nname = \"all\"\nkeys = [\"*\"]\ncommands = [\"status\", \"stop\"]\nservices = [\"*\"]\n",
            alice.public().fingerprint()
        );
        let policy = Policy::parse(&text).unwrap();
        assert_eq!(
            policy.decide(alice.public(), "restart", "web-1"),
            Decision::Allow {
                rule: "restricted".into()
            }
        );
        assert!(!policy.decide(alice.public(), "restart", "db").is_allowed());
        assert_eq!(
            policy.decide(alice.public(), "status", "web-1"),
            Decision::Allow {
                rule: "restricted".into()
            }
        );
        // A rule's deny only cancels that rule: a later rule may still allow.
        assert_eq!(
            policy.decide(alice.public(), "stop", "web-1"),
            Decision::Allow { rule: "all".into() }
        );
        assert_eq!(
            policy.decide(bob.public(), "stop", "db"),
            Decision::Allow { rule: "all".into() }
        );
        let denied = policy.decide(bob.public(), "restart", "web-1");
        assert_eq!(
            denied,
            Decision::Deny {
                reason: "no rule allows it (default deny)".into()
            }
        );
    }

    #[test]
    fn invalid_policies_are_refused() {
        let base =
            "[[policy]]\nname = \"r\"\nkeys = [\"*\"]\ncommands = [\"*\"]\nservices = [\"*\"]\n";
        assert!(Policy::parse(base).is_ok());
        let err = Policy::parse(&format!("{base}bogus = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err =
            Policy::parse(&base.replace("services = [\"*\"]", "services = [\"[\"]")).unwrap_err();
        assert!(format!("{err:#}").contains("services"), "{err:#}");
        let err =
            Policy::parse(&base.replace("keys = [\"*\"]", "keys = [\"smgr1 client x AAAA\"]"))
                .unwrap_err();
        assert!(format!("{err:#}").contains("invalid key"), "{err:#}");
        assert!(Policy::parse(&base.replace("commands = [\"*\"]\n", "")).is_err());
        // The rules also load as part of a larger config (and re-serialize).
        let config: PolicyConfig = toml::from_str(base).unwrap();
        assert_eq!(
            toml::from_str::<PolicyConfig>(&toml::to_string(&config).unwrap()).unwrap(),
            config
        );
    }
}
