//! A worker's allow-list: which registered tasks it serves.
//!
//! By default a worker serves every task compiled into it except those
//! marked dangerous (`#[multitasking::task(dangerous)]`: they do whatever
//! their input says, as `multitask run`'s `run_shell` does). An explicit
//! list names tasks by their registered name (the module path) or by a
//! suffix of it at a `::` boundary, when one task alone ends so
//! (`is_prime` for `multitask_cli::tasks::is_prime`). Dangerous tasks run
//! only on a worker told so, whether the list names them or not: a worker
//! that merely lists `run_shell` is refused at build time, so the flag
//! that allows a shell is never implied.
//!
//! The names are resolved when the worker is built, so a typo fails at
//! once rather than dead-lettering every task later.

use std::collections::HashSet;

use crate::error::Error;
use crate::task::{self, TaskEntry};

/// What a worker serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allowed {
    /// The registered names it serves; `None` for every task (registered
    /// now or later) that is not dangerous, or also those if `dangerous`.
    names: Option<HashSet<&'static str>>,
    /// True if dangerous tasks may run (those `names` lists, or all).
    dangerous: bool,
}

impl Allowed {
    /// Resolves `names` (registered names or unique suffixes; `None` for
    /// the default) against the registry. Fails naming a name that matches
    /// no task or several, or a dangerous task when `dangerous` is false.
    pub(crate) fn resolve(names: Option<&[String]>, dangerous: bool) -> Result<Allowed, Error> {
        let Some(names) = names else {
            return Ok(Allowed {
                names: None,
                dangerous,
            });
        };
        let registered = task::registered();
        let mut out = HashSet::new();
        for name in names {
            let e = find(&registered, name)?;
            if e.dangerous && !dangerous {
                return Err(Error::Config(format!(
                    "task {} is marked dangerous: a worker runs it only with --allow-shell \
                     (WorkerBuilder::allow_dangerous)",
                    e.name
                )));
            }
            out.insert(e.name);
        }
        Ok(Allowed {
            names: Some(out),
            dangerous,
        })
    }

    /// True if the worker serves `entry`.
    pub(crate) fn admits(&self, entry: &TaskEntry) -> bool {
        match &self.names {
            Some(names) => names.contains(entry.name),
            None => !entry.dangerous || self.dangerous,
        }
    }
}

/// The one registered task `name` means: its full name, or else the one
/// task whose name ends with `::name`.
fn find(registered: &[TaskEntry], name: &str) -> Result<TaskEntry, Error> {
    let name = name.trim();
    if let Some(e) = registered.iter().find(|e| e.name == name) {
        return Ok(*e);
    }
    let tail = format!("::{name}");
    let mut matches: Vec<&TaskEntry> = registered
        .iter()
        .filter(|e| e.name.ends_with(&tail))
        .collect();
    matches.sort_by_key(|e| e.name);
    match matches.as_slice() {
        [one] => Ok(**one),
        [] => {
            let mut known: Vec<&str> = registered.iter().map(|e| e.name).collect();
            known.sort_unstable();
            Err(Error::Config(format!(
                "no registered task is called {name:?}; this program has: {}",
                known.join(", ")
            )))
        }
        many => Err(Error::Config(format!(
            "{name:?} is ambiguous: it could be {}; give the full name",
            many.iter().map(|e| e.name).collect::<Vec<_>>().join(" or ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &'static str, dangerous: bool) -> TaskEntry {
        TaskEntry {
            name,
            signature: 0,
            codec: crate::task::Codec::Postcard,
            dangerous,
            run: |_| Ok(Vec::new()),
            preview: |_| String::new(),
        }
    }

    #[test]
    fn names_resolve_by_full_name_or_unique_suffix() {
        let reg = [
            entry("app::tasks::is_prime", false),
            entry("app::tasks::is_prime_with_pid", false),
            entry("app::a::run", false),
            entry("app::b::run", false),
        ];
        assert_eq!(find(&reg, "is_prime").unwrap().name, "app::tasks::is_prime");
        assert_eq!(
            find(&reg, "tasks::is_prime_with_pid").unwrap().name,
            "app::tasks::is_prime_with_pid"
        );
        assert_eq!(find(&reg, "app::a::run").unwrap().name, "app::a::run");
        let e = find(&reg, "run").unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("app::b::run"), "{e}");
        let e = find(&reg, "prime").unwrap_err().to_string();
        assert!(e.contains("no registered task"), "{e}");
    }

    #[test]
    fn dangerous_tasks_need_their_flag() {
        let shell = entry("app::run_shell", true);
        let safe = entry("app::double", false);
        let default = Allowed::resolve(None, false).unwrap();
        assert!(default.admits(&safe) && !default.admits(&shell));
        let all = Allowed::resolve(None, true).unwrap();
        assert!(all.admits(&safe) && all.admits(&shell));
    }
}
