//! Decisions as pure functions: who is master, how many slaves, what to start and stop.
//! The async drivers (worker, orchestrator) only gather inputs and carry out the result.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// A live worker as the coordinator shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub pid: u32,
}

/// The contract's election: the current master stays while it lives; when it is gone, the live
/// worker with the lowest pid (ties broken by id) becomes master.
pub fn elect<'a>(members: &'a [Member], current_master: Option<&str>) -> Option<&'a Member> {
    if let Some(current) = current_master {
        if let Some(m) = members.iter().find(|m| m.id == current) {
            return Some(m);
        }
    }
    members
        .iter()
        .min_by(|a, b| (a.pid, &a.id).cmp(&(b.pid, &b.id)))
}

/// How read load maps to slaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalePolicy {
    /// Reads per window one slave is meant for (the contract's 20).
    pub reads_per_slave: u64,
    /// Upper bound on slaves, whatever the load.
    pub max_slaves: u64,
}

impl Default for ScalePolicy {
    fn default() -> Self {
        ScalePolicy {
            reads_per_slave: 20,
            max_slaves: 16,
        }
    }
}

/// `max(1, ceil(reads / reads_per_slave))`, at most `max_slaves`.
pub fn target_slaves(policy: ScalePolicy, reads: u64) -> u64 {
    let per = policy.reads_per_slave.max(1);
    reads.div_ceil(per).max(1).min(policy.max_slaves.max(1))
}

/// What the orchestrator should do to reach one master and `target` slaves.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Plan {
    /// Workers to start.
    pub start: usize,
    /// Slaves to stop (scale in): highest pids first, never the master.
    pub stop: Vec<String>,
}

/// Compares what runs with what should run. `starting` counts running workers not (yet)
/// registered; they count as present, so a slow start is not answered with another start.
/// `launching` is the part of them this orchestrator started itself (the rest it found without
/// a node: paused, or their session ended).
///
/// Without a master, workers start one at a time: an empty cluster gets one worker, which elects
/// itself, and the slaves follow once it is master; a cluster whose master died first lets the
/// election promote a slave ("elect, then start a slave"). Starting several workers into a
/// masterless cluster would let whichever registers first win, not the lowest pid. Workers found
/// without a node do not hold that one start back: they may never come back.
pub fn reconcile(
    target_slaves: u64,
    members: &[Member],
    master: Option<&str>,
    starting: usize,
    launching: usize,
) -> Plan {
    let desired = usize::try_from(target_slaves)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    let present = members.len() + starting;
    if present < desired && master.is_none() {
        return Plan {
            start: usize::from(members.is_empty() && launching == 0),
            stop: vec![],
        };
    }
    if present < desired {
        return Plan {
            start: desired - present,
            stop: vec![],
        };
    }
    if starting == 0 && members.len() > desired {
        let mut slaves: Vec<&Member> = members
            .iter()
            .filter(|m| Some(m.id.as_str()) != master)
            .collect();
        slaves.sort_by(|a, b| (b.pid, &b.id).cmp(&(a.pid, &a.id)));
        // Without a known master keep one extra: the election needs a worker to promote.
        let excess = members.len() - desired;
        let keep_for_master = usize::from(master.is_none());
        let stop = slaves
            .into_iter()
            .take(excess.saturating_sub(keep_for_master))
            .map(|m| m.id.clone())
            .collect();
        return Plan { start: 0, stop };
    }
    Plan::default()
}

/// The running workers without a member node, and since when: what tells a slow start from a
/// stuck worker. The supervisor shows it what runs and what is registered on every reconcile;
/// it remembers, and decides, without doing anything itself.
#[derive(Clone, Debug, Default)]
pub struct Unregistered {
    waiting: BTreeMap<String, Waiting>,
}

#[derive(Clone, Copy, Debug)]
struct Waiting {
    /// When it was started, or first seen without a node.
    since: Instant,
    /// Started by this orchestrator (not merely found: paused, or its session ended).
    launched: bool,
}

/// The unregistered workers sorted by the grace period, for [`reconcile`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unregistering {
    /// Running, not registered, within the grace period: they count as present.
    pub starting: usize,
    /// The part of `starting` this orchestrator started itself.
    pub launching: usize,
    /// Past the grace period without a node: to be killed (and, if need be, replaced).
    pub stuck: Vec<String>,
}

impl Unregistered {
    /// This orchestrator started `id` at `now`.
    pub fn launched(&mut self, id: impl Into<String>, now: Instant) {
        self.waiting.insert(
            id.into(),
            Waiting {
                since: now,
                launched: true,
            },
        );
    }

    /// Forgets what no longer runs or has registered, and sorts the others. Grace counts from
    /// the start, or from when the worker was first seen without a node (paused, or its
    /// session just expired): it may come back, or exit.
    pub fn sort(
        &mut self,
        running: &[&str],
        registered: &[&str],
        now: Instant,
        grace: Duration,
    ) -> Unregistering {
        self.waiting
            .retain(|id, _| running.contains(&id.as_str()) && !registered.contains(&id.as_str()));
        let mut sorted = Unregistering::default();
        for id in running.iter().filter(|id| !registered.contains(id)) {
            let seen = *self.waiting.entry((*id).to_owned()).or_insert(Waiting {
                since: now,
                launched: false,
            });
            if now.duration_since(seen.since) < grace {
                sorted.starting += 1;
                sorted.launching += usize::from(seen.launched);
            } else {
                sorted.stuck.push((*id).to_owned());
            }
        }
        sorted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, pid: u32) -> Member {
        Member { id: id.into(), pid }
    }

    #[test]
    fn slave_with_lowest_pid_becomes_master_when_master_is_gone() {
        let members = [m("a", 30), m("b", 10), m("c", 20)];
        assert_eq!(elect(&members, None).unwrap().id, "b");
        assert_eq!(elect(&members, Some("dead")).unwrap().id, "b");
    }

    #[test]
    fn live_master_keeps_its_place_even_with_a_lower_pid_slave() {
        let members = [m("a", 30), m("b", 10)];
        assert_eq!(elect(&members, Some("a")).unwrap().id, "a");
        assert!(elect(&[], None).is_none());
    }

    #[test]
    fn scaling_follows_the_contract_table() {
        let p = ScalePolicy::default();
        for (reads, slaves) in [
            (0, 1),
            (1, 1),
            (20, 1),
            (21, 2),
            (40, 2),
            (41, 3),
            (45, 3),
            (60, 3),
            (61, 4),
        ] {
            assert_eq!(target_slaves(p, reads), slaves, "{reads} reads");
        }
        assert_eq!(target_slaves(p, 1_000_000), 16);
        let p5 = ScalePolicy {
            reads_per_slave: 5,
            max_slaves: 100,
        };
        assert_eq!(target_slaves(p5, 11), 3);
    }

    #[test]
    fn dead_workers_are_replaced() {
        // A master and no slave (a slave died, or was just promoted): start one.
        assert_eq!(reconcile(1, &[m("a", 1)], Some("a"), 0, 0).start, 1);
        // Nobody at all: start the future master alone, so the lowest pid wins the election...
        assert_eq!(reconcile(1, &[], None, 0, 0).start, 1);
        assert_eq!(reconcile(1, &[], None, 1, 1), Plan::default());
        // ...and its slave once it is master.
        assert_eq!(reconcile(1, &[m("a", 1)], None, 0, 0), Plan::default());
        assert_eq!(reconcile(1, &[m("a", 1)], Some("a"), 0, 0).start, 1);
        // The master died: the election goes first, the replacement after it.
        assert_eq!(
            reconcile(2, &[m("b", 2), m("c", 3)], None, 0, 0),
            Plan::default()
        );
        assert_eq!(
            reconcile(2, &[m("b", 2), m("c", 3)], Some("b"), 0, 0).start,
            1
        );
        // No master and no member, only a worker found without a node (a paused slave whose
        // session ended): it may never come back, so one start goes ahead.
        assert_eq!(reconcile(1, &[], None, 1, 0).start, 1);
        // A start in flight counts.
        assert_eq!(reconcile(1, &[m("a", 1)], Some("a"), 1, 1), Plan::default());
    }

    #[test]
    fn scaling_in_stops_highest_pid_slaves_never_the_master() {
        let members = [m("a", 50), m("b", 10), m("c", 30), m("d", 40)];
        let plan = reconcile(1, &members, Some("a"), 0, 0);
        assert_eq!(plan.start, 0);
        assert_eq!(plan.stop, vec!["d".to_string(), "c".to_string()]);
        // Not while starts are in flight: the picture is not settled.
        assert!(reconcile(1, &members, Some("a"), 1, 1).stop.is_empty());
    }

    #[test]
    fn scaling_out_starts_the_difference() {
        assert_eq!(
            reconcile(3, &[m("a", 1), m("b", 2)], Some("a"), 0, 0).start,
            2
        );
    }

    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn a_started_worker_is_starting_until_the_grace_ends_then_stuck() {
        let t0 = Instant::now();
        let mut u = Unregistered::default();
        u.launched("a", t0);
        let within = u.sort(&["a"], &[], t0 + Duration::from_secs(29), GRACE);
        assert_eq!(
            within,
            Unregistering {
                starting: 1,
                launching: 1,
                stuck: vec![]
            }
        );
        let after = u.sort(&["a"], &[], t0 + GRACE, GRACE);
        assert_eq!((after.starting, after.stuck), (0, vec!["a".to_string()]));
    }

    #[test]
    fn a_worker_found_without_a_node_gets_the_grace_from_when_it_is_first_seen() {
        let t0 = Instant::now();
        let mut u = Unregistered::default();
        // Registered: nothing to wait for.
        assert_eq!(u.sort(&["a"], &["a"], t0, GRACE), Unregistering::default());
        // Its node went (paused, or its session expired): found, not launched.
        let t1 = t0 + Duration::from_secs(100);
        let found = u.sort(&["a"], &[], t1, GRACE);
        assert_eq!((found.starting, found.launching), (1, 0));
        assert!(u
            .sort(&["a"], &[], t1 + GRACE - Duration::from_millis(1), GRACE)
            .stuck
            .is_empty());
        assert_eq!(u.sort(&["a"], &[], t1 + GRACE, GRACE).stuck, ["a"]);
    }

    #[test]
    fn registering_or_exiting_is_forgotten_and_a_new_absence_starts_over() {
        let t0 = Instant::now();
        let mut u = Unregistered::default();
        u.launched("a", t0);
        u.launched("b", t0);
        // a registers, b exits.
        assert_eq!(u.sort(&["a"], &["a"], t0, GRACE), Unregistering::default());
        // a loses its node long after: a fresh grace, and not as a launch.
        let later = t0 + Duration::from_secs(60);
        let sorted = u.sort(&["a"], &[], later, GRACE);
        assert_eq!((sorted.starting, sorted.launching), (1, 0));
        assert!(sorted.stuck.is_empty());
    }
}
